#!/usr/bin/env bash
# Issue benchmark b: 4 KiB random read/write at QD32 through the guest
# kernel's NVMe/TCP initiator against
#   (i)  the kernel's own nvmet-tcp target in the same guest (the baseline), and
#   (ii) Tidepool's storage-node running in the same guest,
# both on 127.0.0.1 inside ONE guest boot, so the ratio (ii)/(i) is meaningful
# even under slow TCG emulation (absolute IOPS are not). With --transport rdma
# (issue 5 §5) the same runs go through the kernel's NVMe/RDMA initiator over
# soft-RoCE (rxe0 on the guest's eth0) against nvmet-rdma and storage-node's
# RDMA transport.
#
# Usage: scripts/fio/guest-bench.sh [--transport tcp|rdma] [--runtime S] [--size MB] [--rounds N] [--kernel-only] [--json FILE]
#   --rounds N   alternate the targets N times and report medians (default 1)
#   --transport  tcp (default) or rdma; rdma builds storage-node with its
#                `rdma` feature (cargo build --release -p storage-node
#                --features storage-node/rdma, into $CARGO_TARGET_DIR or
#                target/) unless TIDEPOOL_BIN_DIR is set
# Environment:
#   TIDEPOOL_BIN_DIR  where storage-node is (default: target/release, then target/debug;
#                     with rdma its storage-node must be built with the rdma feature)
#   CARGO_TARGET_DIR  where the rdma build goes (default: target/ in the repo)
#   SN_EXTRA_ARGS     extra storage-node arguments (e.g. a different backend)
#   FIO_ENGINE        io_uring (default) or libaio
# Exit: 0 ok, 77 qemu cannot run here, other = failure.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
runtime=10 size_mb=128 rounds=1 kernel_only=0 json_out="" transport=tcp
while [ $# -gt 0 ]; do
    case "$1" in
        --transport) transport="$2"; shift 2 ;;
        --runtime) runtime="$2"; shift 2 ;;
        --size) size_mb="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --kernel-only) kernel_only=1; shift ;;
        --json) json_out="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "guest-bench: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$transport" in
    tcp) modules=nvmet,nvmet-tcp,nvme-tcp extra_s=0 ;;
    # nvmet must load before boot's configfs mount; nvmet-rdma binds to rxe0
    # once the guest script makes it.
    rdma) modules=nvmet,nvmet-rdma,nvme-rdma extra_s=30 ;;
    *) echo "guest-bench: --transport must be tcp or rdma" >&2; exit 2 ;;
esac

sn=""
if [ "$kernel_only" = 0 ] && [ "$transport" = rdma ]; then
    # storage-node speaks RDMA only with its cargo feature; the default build
    # lacks it, so build (or check) one that has it rather than guess.
    if [ -n "${TIDEPOOL_BIN_DIR:-}" ]; then
        sn="$TIDEPOOL_BIN_DIR/storage-node"
        [ -x "$sn" ] || { echo "guest-bench: no storage-node in TIDEPOOL_BIN_DIR=$TIDEPOOL_BIN_DIR" >&2; exit 1; }
    else
        target_dir="${CARGO_TARGET_DIR:-$repo/target}"
        echo "guest-bench: building storage-node with the rdma feature into $target_dir" >&2
        (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build --release -p storage-node --features storage-node/rdma) >&2 \
            || { echo "guest-bench: rdma build failed (needs libibverbs-dev, librdmacm-dev, libclang-dev); --kernel-only runs the baseline alone" >&2; exit 1; }
        sn="$target_dir/release/storage-node"
    fi
    version=$("$sn" --version) || { echo "guest-bench: $sn --version failed" >&2; exit 1; }
    case "$version" in
        *rdma*) ;;
        *) echo "guest-bench: $sn was built without the rdma feature ($version)" >&2; exit 1 ;;
    esac
    case "$sn" in */debug/*) echo "guest-bench: WARNING: using a debug build: $sn" >&2 ;; esac
elif [ "$kernel_only" = 0 ]; then
    for d in "${TIDEPOOL_BIN_DIR:-}" "$repo/target/release" "$repo/target/debug"; do
        if [ -n "$d" ] && [ -x "$d/storage-node" ]; then sn="$d/storage-node"; break; fi
    done
    if [ -z "$sn" ]; then
        echo "guest-bench: storage-node not built (cargo build --release -p storage-node); running the kernel baseline only" >&2
    else
        case "$sn" in */debug/*) echo "guest-bench: WARNING: using a debug build: $sn" >&2 ;; esac
    fi
fi

out=$(mktemp -d "${TMPDIR:-/tmp}/tidepool-bench.XXXXXX")
trap 'rm -rf "$out"' EXIT
set +e
"$repo/scripts/vm/run-guest.sh" --timeout $((150 + extra_s + 6 * rounds * runtime)) \
    --modules "$modules" --out "$out" \
    --env TP_REPO="$repo" --env SN="$sn" --env TRANSPORT="$transport" --env SN_EXTRA_ARGS="${SN_EXTRA_ARGS:-}" \
    --env RUNTIME="$runtime" --env SIZE_MB="$size_mb" --env ROUNDS="$rounds" --env FIO_ENGINE="${FIO_ENGINE:-io_uring}" \
    --script-file "$repo/scripts/fio/guest-bench.guest.sh"
rc=$?
set -e
if [ "$rc" != 0 ]; then echo "guest-bench: guest run failed ($rc)" >&2; exit "$rc"; fi
[ -s "$out/results.json" ] || { echo "guest-bench: guest wrote no results" >&2; exit 1; }
if [ -n "$json_out" ]; then cp "$out/results.json" "$json_out"; fi
