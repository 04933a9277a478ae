#!/usr/bin/env bash
# Installs what building and running Tidepool needs on Debian 12: a C
# toolchain for -sys crates, FUSE, etcd, moto's S3 server (pip) for the S3
# tier tests, and the Rust toolchain check. With
# --all it also installs the VM/hardware-test tools (scripts/vm/setup.sh).
# Idempotent and non-interactive.
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd-server: the coordination tests start a real etcd; protobuf-compiler:
# etcd-client's build generates its gRPC stubs with protoc.
# iproute2: `tidepool cluster up --netns` and its tests make network namespaces with ip.
pkgs=(build-essential pkg-config fuse3 libfuse3-dev fio stress-ng bindfs etcd-server protobuf-compiler iproute2)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The S3 tier's tests run against moto's S3 server (loopback only).
if ! command -v moto_server >/dev/null || ! python3 -c "import moto.server, flask_cors" 2>/dev/null; then
    python3 -m pip install -q --disable-pip-version-check 'moto[server]>=5,<6'
fi
if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found. Install Rust (https://rustup.rs) and re-run." >&2
    exit 1
fi
if [ "${1:-}" = "--all" ]; then
    scripts/vm/setup.sh
    command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
fi
echo "setup: ready"
