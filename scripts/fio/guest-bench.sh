#!/usr/bin/env bash
# Issue benchmark b: 4 KiB random read/write at QD32 through the guest
# kernel's NVMe/TCP initiator against
#   (i)  the kernel's own nvmet-tcp target in the same guest (the baseline), and
#   (ii) Tidepool's storage-node running in the same guest,
# both on 127.0.0.1 inside ONE guest boot, so the ratio (ii)/(i) is meaningful
# even under slow TCG emulation (absolute IOPS are not).
#
# Usage: scripts/fio/guest-bench.sh [--runtime S] [--size MB] [--rounds N] [--kernel-only] [--json FILE]
#   --rounds N   alternate the targets N times and report medians (default 1)
# Environment:
#   TIDEPOOL_BIN_DIR  where storage-node is (default: target/release, then target/debug)
#   SN_EXTRA_ARGS     extra storage-node arguments (e.g. a different backend)
#   FIO_ENGINE        io_uring (default) or libaio
# Exit: 0 ok, 77 qemu cannot run here, other = failure.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
runtime=10 size_mb=128 rounds=1 kernel_only=0 json_out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runtime) runtime="$2"; shift 2 ;;
        --size) size_mb="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --kernel-only) kernel_only=1; shift ;;
        --json) json_out="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "guest-bench: unknown argument $1" >&2; exit 2 ;;
    esac
done

sn=""
if [ "$kernel_only" = 0 ]; then
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
"$repo/scripts/vm/run-guest.sh" --timeout $((150 + 6 * rounds * runtime)) \
    --modules nvmet,nvmet-tcp,nvme-tcp --out "$out" \
    --env TP_REPO="$repo" --env SN="$sn" --env SN_EXTRA_ARGS="${SN_EXTRA_ARGS:-}" \
    --env RUNTIME="$runtime" --env SIZE_MB="$size_mb" --env ROUNDS="$rounds" --env FIO_ENGINE="${FIO_ENGINE:-io_uring}" \
    --script-file "$repo/scripts/fio/guest-bench.guest.sh"
rc=$?
set -e
if [ "$rc" != 0 ]; then echo "guest-bench: guest run failed ($rc)" >&2; exit "$rc"; fi
[ -s "$out/results.json" ] || { echo "guest-bench: guest wrote no results" >&2; exit 1; }
if [ -n "$json_out" ]; then cp "$out/results.json" "$json_out"; fi
