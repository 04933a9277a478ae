#!/usr/bin/env bash
# The cost of DM events on the data path, all in one run: fio 4 KiB random
# reads (psync, one job) of one file through three mounts of the same file
# system on a storage-node volume:
#  - plain: a mount with no DM link (the baseline);
#  - dm-idle: the mount node 2's daemon hosts (`tidepool mount --node`),
#    with no disposition for read events (what every DMAPI-enabled mount
#    pays);
#  - dm-sync: the same mount while a DM application on node 1 holds a read
#    disposition and waits in dm_get_events: every read is a synchronous
#    event from the FUSE thread into node 2's source engine, over TCP to
#    node 1 and back, answered CONTINUE before the read runs (a whole file
#    managed, as an HSM's unmigrated-region check would be).
# And the metadata side: creates per second through node 2's hosted mount
# with no disposition, then while the same DM application holds an
# asynchronous postcreate disposition (an event per create, never waited
# for), beside the plain mount in the same rounds.
# Node 1 is the session manager, the file system's DM manager and the
# session node; node 2 mounts; the file system's metadata is served by a
# `tidepool fs-manager` process. Prints IOPS, the ratios to the baseline,
# and the added time per read beside a raw TCP ping-pong of the same sizes
# (`tidepool-dm-bench ping-pong`), measured in the same run.
# Usage: scripts/bench/dm-data.sh [seconds per point, default 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
# shellcheck disable=SC2046
cargo build --release -q $(scripts/features.sh) --bin tidepool --bin storage-node --bin tidepool-dm-testdriver --bin tidepool-dm-bench
. scripts/bench/lib.sh
bench_fs dmbench 512M
key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
for id in 1 2; do
    {
        echo "node_id = $id"
        echo "listen = \"127.0.0.1:$((BENCH_DM_PORT + id))\""
        echo "api_socket = \"$work/node$id.sock\""
        echo "cluster_key = \"$key\""
        echo "session_manager = 1"
        echo "mounts = [1]"
        echo "dm_admin_gid = $(id -g)"
        other=$((3 - id))
        printf '[[peers]]\nid = %s\naddr = "127.0.0.1:%s"\n' $other $((BENCH_DM_PORT + other))
        printf '[[filesystems]]\nid = 1\nmanager = 1\n'
        # Node 2 mounts: it names the volume and the metadata service.
        [ "$id" = 2 ] && printf 'addr = "%s"\nnqn = "%s"\nmeta_addr = "%s"\n' "${A[1]}" "${A[3]}" "$MGR"
    } >"$work/node$id.toml"
    $bin/tidepool node run --config "$work/node$id.toml" 2>"$work/node$id.log" >/dev/null &
    pids+=($!)
done
for id in 1 2; do
    for _ in $(seq 100); do [ -S "$work/node$id.sock" ] && break; sleep 0.1; done
done

bench_mount "$work/mnt-plain"
mkdir -p "$work/mnt-dm"
$bin/tidepool mount --node "$work/node2.sock" --fs 1 "$work/mnt-dm" >/dev/null
dd if=/dev/urandom of="$work/mnt-plain/data" bs=1M count=64 status=none
sum=$(sha256sum <"$work/mnt-plain/data" | cut -d' ' -f1)

iops() { # dir
    fio --name=r --filename="$1/data" --rw=randread --bs=4k --ioengine=psync --numjobs=1 --time_based \
        --runtime="$SECS" --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}
# Warm the storage node's cache of the volume, so the first point is not the slowest.
cat "$work/mnt-plain/data" >/dev/null
NC=${TIDEPOOL_BENCH_CREATES:-3000}
creates() { # dir: creates per second of NC empty files in a fresh directory
    python3 - "$1/c$RANDOM$RANDOM" "$NC" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
t = time.perf_counter()
for i in range(n):
    os.close(os.open(os.path.join(d, "f%d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
print(int(n / (time.perf_counter() - t)))
# Untimed: the volume has an inode per 64 KiB, and the rounds would use them up.
for i in range(n):
    os.unlink(os.path.join(d, "f%d" % i))
os.rmdir(d)
PY
}
# Interleaved rounds, medians: this machine's speed drifts between points.
ROUNDS=${TIDEPOOL_BENCH_ROUNDS:-3}
plain=(); idle=(); sync_=(); cplain=(); cidle=(); cpost=()
for _ in $(seq "$ROUNDS"); do
    plain+=("$(iops "$work/mnt-plain")")
    idle+=("$(iops "$work/mnt-dm")")
done
for _ in $(seq "$ROUNDS"); do
    cplain+=("$(creates "$work/mnt-plain")")
    cidle+=("$(creates "$work/mnt-dm")")
done
# --quiet: the DM application answers and prints nothing per event.
$bin/tidepool dm --socket "$work/node1.sock" listen --quiet --info bench --events read,postcreate >"$work/hsm.out" 2>"$work/hsm.err" &
hsm=$!
pids+=($hsm)
for _ in $(seq 100); do grep READY "$work/hsm.out" >/dev/null 2>&1 && break; sleep 0.1; done
for ev in read postcreate; do
    $bin/tidepool-dm-testdriver --socket "$work/node2.sock" wait-route --event $ev --node 1 >/dev/null
done
for _ in $(seq "$ROUNDS"); do
    sync_+=("$(iops "$work/mnt-dm")")
    plain+=("$(iops "$work/mnt-plain")")
done
for _ in $(seq "$ROUNDS"); do
    cpost+=("$(creates "$work/mnt-dm")")
    cplain+=("$(creates "$work/mnt-plain")")
done

ping=$($bin/tidepool-dm-bench ping-pong | sed -n 's/^PINGPONG p50_us=//p')
[ "$(sha256sum <"$work/mnt-dm/data" | cut -d' ' -f1)" = "$sum" ] || { echo "data differ" >&2; exit 1; }
# Only now: the session outlives its application (XDSM), so a read after
# this would wait for an answer nobody gives.
kill "$hsm"; wait "$hsm" 2>/dev/null || true
events=$(sed -n 's/^ANSWERED //p' "$work/hsm.out")
[ "${events:-0}" -gt 0 ] || { echo "the DM application answered no events" >&2; exit 1; }
echo "fio 4 KiB randread, psync, 1 job, ${SECS}s per point, 64 MiB file; median IOPS of interleaved rounds [all rounds]; ratio to plain"
python3 - "${plain[*]}" "${idle[*]}" "${sync_[*]}" "$events" "$ping" "${cplain[*]}" "${cidle[*]}" "${cpost[*]}" "$NC" <<'EOF'
import statistics, sys
p, i, s = [[int(x) for x in a.split()] for a in sys.argv[1:4]]
n, ping = int(sys.argv[4]), float(sys.argv[5])
mp, mi, ms = statistics.median(p), statistics.median(i), statistics.median(s)
print("plain mount (no DM link)          %8d  1.00  %s" % (mp, p))
print("DM link, no read disposition      %8d  %.2f  %s" % (mi, mi / mp, i))
print("sync read event per read, node 1  %8d  %.2f  %s  (%d events answered)" % (ms, ms / mp, s, n))
added = 1e6 / ms - 1e6 / mi
print("added per read by the sync event: 1/IOPS(sync) - 1/IOPS(DM link, no disposition) = %.1f us" % added)
print("raw TCP ping-pong of the same sizes, p50 (same run): %.1f us; added / ping-pong = %.2fx" % (ping, added / ping))
cp, ci, cq = [[int(x) for x in a.split()] for a in sys.argv[6:9]]
mcp, mci, mcq = statistics.median(cp), statistics.median(ci), statistics.median(cq)
print("creates/s, %s empty files per round, fresh directory; median [all rounds]; ratio to plain" % sys.argv[9])
print("plain mount (no DM link)             %8d  1.00  %s" % (mcp, cp))
print("DM link, no disposition              %8d  %.2f  %s" % (mci, mci / mcp, ci))
print("async postcreate event per create    %8d  %.2f  %s" % (mcq, mcq / mcp, cq))
print("the postcreate events cost %.1f%% of the hosted mount's create rate" % (100 * (1 - mcq / mci)))
EOF
