#!/usr/bin/env bash
# File-system benchmarks, every figure beside its baselines from the same run:
#  - fio (psync, one job) 4 KiB random read/write and 1 MiB sequential
#    read/write on: the Tidepool mount (storage node on loopback, separate
#    fs-manager process), a bindfs passthrough FUSE mount of a local
#    directory, and the local directory itself; page cache dropped first;
#  - metadata: creates, stats and unlinks per second, one node and two
#    nodes at once (two mounts of the same file system), beside a local
#    directory.
# Usage: scripts/bench/fs.sh [seconds per fio point, default 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
# shellcheck disable=SC2046
cargo build --release -q $(scripts/features.sh) --bin tidepool --bin storage-node
. scripts/bench/lib.sh
bench_fs fsbench 1G
# TIDEPOOL_BENCH_MOUNT_ARGS: extra `tidepool mount` options (e.g. --poll).
for n in 1 2; do bench_mount "$work/mnt$n" ${TIDEPOOL_BENCH_MOUNT_ARGS:-}; done
mkdir -p "$work/local" "$work/bind"
bindfs "$work/local" "$work/bind"

fio_iops() { # dir rw bs -> "iops bw_MiB/s"
    sync; echo 3 >/proc/sys/vm/drop_caches
    fio --name=b --directory="$1" --filename=bench.dat --size=64M --rw="$2" --bs="$3" --ioengine=psync \
        --numjobs=1 --time_based --runtime="$SECS" --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; r=j["read"] if j["read"]["io_bytes"] else j["write"]; print("%d %.1f" % (r["iops"], r["bw"]/1024))'
}
ROUNDS=${TIDEPOOL_BENCH_ROUNDS:-3}
echo "fio psync, 1 job, 64 MiB file, ${SECS}s per point, page cache dropped first;"
echo "median IOPS (MiB/s) of $ROUNDS interleaved rounds, this machine's speed drifts between points"
printf "%-12s %16s %16s %16s %10s %10s\n" workload local bindfs tidepool "tp/bindfs" "tp/local"
# Lay the files out first so reads read data.
for d in "$work/local" "$work/bind" "$work/mnt1"; do
    dd if=/dev/urandom of="$d/bench.dat" bs=1M count=64 status=none
done
# TIDEPOOL_BENCH_WORKLOADS="randread:4k ..." picks points; TIDEPOOL_BENCH_META=0 skips metadata.
for spec in ${TIDEPOOL_BENCH_WORKLOADS:-randread:4k randwrite:4k read:1M write:1M}; do
    spec=${spec/:/ }
    set -- $spec
    runs=()
    for _ in $(seq "$ROUNDS"); do
        for d in "$work/local" "$work/bind" "$work/mnt1"; do runs+=("$(fio_iops "$d" "$1" "$2")"); done
    done
    python3 - "$1 $2" "${runs[@]}" <<'EOF'
import statistics, sys
w, runs = sys.argv[1], [x.split() for x in sys.argv[2:]]
def med(k):
    pts = sorted(runs[k::3], key=lambda r: int(r[0]))
    return pts[len(pts) // 2]
l, b, t = med(0), med(1), med(2)
print("%-12s %9s (%5s) %9s (%5s) %9s (%5s) %10.2f %10.2f" % (w, l[0], l[1], b[0], b[1], t[0], t[1], int(t[0]) / max(1, int(b[0])), int(t[0]) / max(1, int(l[0]))))
EOF
done

meta() { # N dirs... : creates, stats, unlinks per second, all dirs at once
    python3 - "$@" <<'EOF'
import os, sys, time, multiprocessing as mp
n = int(sys.argv[1]); dirs = sys.argv[2:]
def phase(d, what, q):
    os.makedirs(d, exist_ok=True)
    t = time.perf_counter()
    for i in range(n):
        p = os.path.join(d, "f%d" % i)
        if what == "create": os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
        elif what == "stat": os.stat(p)
        else: os.unlink(p)
    q.put(time.perf_counter() - t)
out = []
for what in ("create", "stat", "unlink"):
    q = mp.Queue(); ps = [mp.Process(target=phase, args=(d, what, q)) for d in dirs]
    [p.start() for p in ps]; [p.join() for p in ps]
    worst = max(q.get() for _ in ps)
    out.append("%d" % (n * len(dirs) / worst))
print(" ".join(out))
EOF
}
[ "${TIDEPOOL_BENCH_META:-1}" = 0 ] && exit 0
N=${TIDEPOOL_META_FILES:-2000}
echo
echo "metadata, $N files per node (ops/s, all nodes together): creates stats unlinks"
echo "local dir        : $(meta $N "$work/local/m1")"
echo "tidepool 1 node  : $(meta $N "$work/mnt1/m1")"
echo "tidepool 2 nodes : $(meta $N "$work/mnt1/m2" "$work/mnt2/m3")"
echo "local 2 procs    : $(meta $N "$work/local/m2" "$work/local/m3")"
