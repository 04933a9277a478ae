#!/usr/bin/env bash
# Benchmark a (issue: storage node): Tidepool's initiator -> storage-node on
# loopback, 4 KiB random read/write at QD 1 and 32 on 1 and 2 queues, beside
# the local limit: fio io_uring O_DIRECT on the same backing file, in the
# same run. Prints a table with ratios. Also storage-node RSS with 64 idle
# queue pairs and under load.
#   scripts/bench/loopback.sh [SECONDS]   (default 5 s per point)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
command -v fio >/dev/null || { echo "fio is needed: apt-get install fio" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is needed: apt-get install jq" >&2; exit 1; }
# shellcheck disable=SC2046
[ -n "${TIDEPOOL_BIN:-}" ] || cargo build --release --bins -q $(scripts/features.sh)
bin=target/release
tp=${TIDEPOOL_BIN:-$bin/tidepool}
work=$(mktemp -d /var/tmp/tidepool-bench.XXXXXX)
vol=$work/vol.img
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# A fully allocated 1 GiB file, so neither side reads holes.
fio --name=fill --filename="$vol" --size=1G --rw=write --bs=1M --ioengine=psync --direct=1 --output=/dev/null

# Every point starts with a cold page cache where we may drop it, so a
# buffered storage node is not flattered by reads the cache already holds.
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
[ -w /proc/sys/vm/drop_caches ] && echo "page cache dropped before every point" || echo "cannot drop the page cache: buffered figures are warm"

local_fio() { # rw qd -> "iops p50_us p99_us"
    cold
    fio --name=local --filename="$vol" --size=1G --ioengine=io_uring --direct=1 --rw="$1" --bs=4k \
        --iodepth="$2" --runtime="$secs" --time_based --output-format=json 2>/dev/null |
        jq -r --arg d "$([ "$1" = randread ] && echo read || echo write)" \
            '.jobs[0][$d] | "\(.iops|floor) \(.clat_ns.percentile["50.000000"]/1000) \(.clat_ns.percentile["99.000000"]/1000)"'
}

start_node() { # extra flags
    $bin/storage-node --file "$vol" --allow-any-host --listen 127.0.0.1:0 --discovery-listen "" "$@" >"$work/out" 2>"$work/log" &
    pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
    addr=$(sed -n 's/.*NVMe\/TCP listening on //p' "$work/out")
}
stop_node() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
rss_kib() { awk '/VmRSS/ {print $2}' /proc/"$pid"/status; }

printf "%-10s %3s %6s | %10s %8s %8s | %10s %8s %8s | %6s\n" rw qd queues "fio IOPS" "p50 us" "p99 us" "tidepool" "p50 us" "p99 us" ratio
for mode in buffered direct; do
    flags=(); [ $mode = direct ] && flags=(--direct)
    start_node "${flags[@]}"
    echo "-- storage-node backend: $mode"
    for rw in randread randwrite; do
        for qd in 1 32; do
            read -r liops lp50 lp99 < <(local_fio $rw $qd)
            for q in 1 2; do
                cold
                j=$($tp nvme bench --addr "$addr" --rw $rw --qd $qd --queues $q --seconds "$secs" --json)
                tiops=$(jq -r .iops <<<"$j"); tp50=$(jq -r .p50_us <<<"$j"); tp99=$(jq -r .p99_us <<<"$j")
                printf "%-10s %3s %6s | %10s %8.1f %8.1f | %10s %8.1f %8.1f | %6.2f\n" $rw $qd $q "$liops" "$lp50" "$lp99" "$tiops" "$tp50" "$tp99" \
                    "$(echo "$tiops / $liops" | bc -l)"
            done
        done
    done
    if [ $mode = buffered ]; then
        # RSS: idle, with 64 idle queue pairs (8 controllers x 8 I/O queues), under load.
        echo "storage-node RSS idle: $(rss_kib) KiB"
        $tp nvme hold --addr "$addr" --controllers 8 --queues 7 --seconds 3 &
        hold=$!
        sleep 2
        echo "storage-node RSS with 64 idle queue pairs: $(rss_kib) KiB"
        wait $hold
        $tp nvme bench --addr "$addr" --rw randread --qd 128 --queues 8 --seconds 3 --bs 131072 >/dev/null &
        b=$!
        sleep 2
        echo "storage-node RSS under load (8 queues x QD128 x 128 KiB): $(rss_kib) KiB"
        wait $b
    fi
    stop_node
done
