#!/usr/bin/env bash
# Install what scripts/vm/run-guest.sh, scripts/fio/guest-bench.sh and the
# hw-tests need on a Debian/Ubuntu host. Idempotent and non-interactive:
# packages already present are not touched and apt is not even updated.
#   scripts/vm/setup.sh            install (needs root, or sudo)
#   scripts/vm/setup.sh --check    only report what is missing (exit 1 if any)
set -euo pipefail

# qemu-system-x86: the guest; linux-image-amd64: a kernel with NVMe-oF and
# soft-RoCE modules; busybox-static: the initramfs userland; kmod/cpio: to
# build it; nvme-cli/fio/e2fsprogs: used inside the guest; tshark: PDU checks;
# rdma-core/ibverbs-utils/ibverbs-providers (the rxe user-space driver)/
# iproute2: soft-RoCE setup and ibv_rc_pingpong;
# jq: fio JSON in scripts/fio; libibverbs-dev/librdmacm-dev/libclang-dev:
# building the rdma crate with its `rdma` feature (rdma-sys runs bindgen);
# perftest: ib_send_lat, a baseline of the RDMA latency benchmark.
pkgs=(qemu-system-x86 linux-image-amd64 busybox-static kmod cpio
      nvme-cli fio e2fsprogs util-linux iproute2 tshark
      rdma-core ibverbs-utils ibverbs-providers jq
      libibverbs-dev librdmacm-dev libclang-dev perftest)

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null; then
        missing+=("$p")
    fi
done

if [ "${1:-}" = "--check" ]; then
    if [ ${#missing[@]} -eq 0 ]; then echo "setup: all packages present"; exit 0; fi
    echo "setup: missing: ${missing[*]}"; exit 1
fi
if [ ${#missing[@]} -eq 0 ]; then echo "setup: all packages present"; exit 0; fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer for it.
echo "wireshark-common wireshark-common/install-setuid boolean false" | $sudo debconf-set-selections
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: installed ${missing[*]}"
