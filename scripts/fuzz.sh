#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs the nightly toolchain and cargo-fuzz (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}; shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build
for t in "${targets[@]}"; do
    echo "== $t for ${secs}s"
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 | grep -E "^(Done|#[0-9]+ *DONE)|ERROR|panicked|SUMMARY" || true
    ls artifacts/"$t" 2>/dev/null | grep . >/dev/null && { echo "$t: crash artifacts in fuzz/artifacts/$t"; exit 1; }
done
echo "fuzz: no crashes"
