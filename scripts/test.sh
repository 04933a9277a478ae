#!/usr/bin/env bash
# The whole test suite: lint gates, unit and integration tests (real
# storage-node processes on loopback), and the hardware tests, which run a
# QEMU guest where qemu can start and skip with a reason where it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build binaries the integration and hardware tests drive"
cargo build --workspace --bins --locked
echo "== doc tests"
cargo test --workspace --doc --locked -q
echo "== tests"
if command -v cargo-nextest >/dev/null; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
