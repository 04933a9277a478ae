#!/usr/bin/env bash
# The whole test suite: lint gates, unit and integration tests (real
# storage-node and node-daemon processes on loopback, real FUSE mounts),
# and the hardware tests, which run a QEMU guest (kernel NVMe-oF, soft-RoCE).
# A test that cannot run here skips with its reason (test-support/src/skip.rs);
# under CI=true it fails instead, unless .config/skip-allow excuses it. The
# last line says `N passed, N failed, N skipped`, skips inside tests counted.
set -euo pipefail
cd "$(dirname "$0")/.."

# The RDMA layer builds for real where rdma-core's headers and libclang are
# installed (scripts/setup.sh --all installs them); elsewhere, only outside
# CI, it builds as a stub that reports RDMA unavailable.
features=()
if [ -n "$(scripts/features.sh)" ]; then
    read -r -a features <<<"$(scripts/features.sh)"
elif [ "${CI:-}" = true ]; then
    echo "test.sh: CI=true but rdma-core headers (libibverbs-dev, librdmacm-dev) or libclang are missing;" \
        "run scripts/setup.sh --all" >&2
    exit 1
else
    echo "note: rdma-core headers or libclang missing: building the rdma crate without verbs"
fi

skips=$(mktemp)
logs=$(mktemp -d)
trap 'rm -rf "$skips" "$logs"' EXIT
export TIDEPOOL_SKIP_LOG=$skips

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
echo "== build binaries the integration and hardware tests drive"
cargo build --workspace --bins --lib --locked "${features[@]}"

# count LOG WORD: the sum of every "<n> WORD" in LOG's result lines.
count() { grep -oE "[0-9]+ $2" "$1" | awk '{s += $1} END {print s + 0}'; }

echo "== doc tests"
set +e
cargo test --workspace --doc --locked -q "${features[@]}" 2>&1 | tee "$logs/doc"
doc_rc=${PIPESTATUS[0]}
grep -E '^test result:' "$logs/doc" > "$logs/doc.sum"
echo "== tests"
if command -v cargo-nextest >/dev/null; then
    cargo nextest run --workspace --locked --no-fail-fast "${features[@]}" 2>&1 | tee "$logs/run"
    rc=${PIPESTATUS[0]}
    grep -E 'tests? run:' "$logs/run" | tail -n 1 > "$logs/run.sum"
    run_failed=$(( $(count "$logs/run.sum" failed) + $(count "$logs/run.sum" 'timed out') ))
else
    cargo test --workspace --locked --no-fail-fast "${features[@]}" 2>&1 | tee "$logs/run"
    rc=${PIPESTATUS[0]}
    grep -E '^test result:' "$logs/run" > "$logs/run.sum"
    run_failed=$(count "$logs/run.sum" failed)
fi
set -e

# Tests that skipped inside themselves passed as far as the runner knows.
inside=$(cut -f1 "$skips" | sort -u | wc -l)
passed=$(( $(count "$logs/doc.sum" passed) + $(count "$logs/run.sum" passed) - inside ))
failed=$(( $(count "$logs/doc.sum" failed) + run_failed ))
skipped=$(( inside + $(count "$logs/doc.sum" ignored) + $(count "$logs/run.sum" skipped) ))
if [ -s "$skips" ]; then
    echo "== skipped inside the test"
    sort -u "$skips" | awk -F'\t' '{printf "  %s: %s\n", $1, $2}'
fi
if [ "$failed" = 0 ] && { [ "$doc_rc" != 0 ] || [ "$rc" != 0 ]; }; then
    # A build error or a crashed runner fails the run without a failed test.
    echo "test.sh: the test runner failed (doc tests: exit $doc_rc, tests: exit $rc) before any test did; see above"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ] && [ "$doc_rc" = 0 ] && [ "$rc" = 0 ]
