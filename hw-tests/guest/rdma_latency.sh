# shellcheck shell=bash
# Guest half of hw-tests rdma_latency (and a benchmark by itself): 64-byte
# ping-pong round trips over soft-RoCE, measured in one guest run for
#   rdma-lat      Tidepool's RDMA layer, send/recv, busy-polled CQ
#   ibv_rc_pingpong   rdma-core's verbs example (same message size)
#   ib_send_lat   perftest (one-way figures; their doubles are labelled derived)
#   rdma-lat --tcp    TCP ping-pong of the same size, same guest
# With DM_BENCH (the tidepool-dm-bench binary) it first measures DM events
# between node processes over RDMA and over TCP on the RDMA device's
# address (`tidepool-dm-bench transports`), and the ping-pongs then use the
# DM request frame's size unless BENCH_SIZE is set.
# Rounds alternate the tools so drift in the emulator hits all alike. Prints
# `BENCH tool=... round=... rtt_p50_us=... rtt_p99_us=... rtt_avg_us=...`.
set -u
. "$TP_REPO/scripts/vm/guest-lib.sh"
step "soft-RoCE"
. "$TP_REPO/hw-tests/guest/rdma_setup.sh"
: "${RDMA_LAT:?path of the rdma-lat binary}"
SIZE=${BENCH_SIZE:-64}
ITERS=${BENCH_ITERS:-2000}
ROUNDS=${BENCH_ROUNDS:-2}
ip=$RDMA_IP
if [ -n "${DM_BENCH:-}" ]; then
    step "DM events over RDMA and TCP (tidepool-dm-bench transports)"
    "$DM_BENCH" transports --ip "$ip" --events "${DM_EVENTS:-2000}" --tput-events "${DM_TPUT:-20000}" \
        > /scratch/dm.out 2> /scratch/dm.err
    rc=$?
    cat /scratch/dm.out
    grep '^BENCH ' /scratch/dm.err
    [ "$rc" = 0 ] || tail -n 30 /scratch/dm.err
    check "tidepool-dm-bench transports: RDMA and TCP paths measured, no event lost" test "$rc" = 0
    req=$(sed -n 's/.*; request \([0-9]*\) B.*/\1/p' /scratch/dm.out | head -n 1)
    [ -z "${BENCH_SIZE:-}" ] && [ -n "$req" ] && SIZE=$req
fi
gid=$(for i in 0 1 2 3; do
    [ "$(cat /sys/class/infiniband/$RDMA_DEV/ports/1/gid_attrs/types/$i 2>/dev/null)" = "RoCE v2" ] &&
        grep -q "ffff:0a00" /sys/class/infiniband/$RDMA_DEV/ports/1/gids/$i && echo "$i" && break
done)
gid=${gid:-1}
echo "RoCE v2 IPv4 GID index: $gid"

# retry CMD...: clients may start before their server listens.
retry() { for _ in $(seq 50); do "$@" && return 0; sleep 0.2; done; return 1; }

run_rc_pingpong() {
    ibv_rc_pingpong -d "$RDMA_DEV" -g "$gid" -s "$SIZE" -n "$ITERS" > /scratch/rcp.srv 2>&1 &
    local srv=$!
    retry ibv_rc_pingpong -d "$RDMA_DEV" -g "$gid" -s "$SIZE" -n "$ITERS" "$ip" > /scratch/rcp.cli 2>&1
    wait "$srv"
    local us
    us=$(sed -n 's/.*iters in .* seconds = \([0-9.]*\) usec\/iter.*/\1/p' /scratch/rcp.cli)
    [ -n "$us" ] || { cat /scratch/rcp.cli /scratch/rcp.srv; return 1; }
    echo "BENCH tool=ibv_rc_pingpong round=$1 size=$SIZE iters=$ITERS rtt_avg_us=$us"
}

run_send_lat() {
    ib_send_lat -d "$RDMA_DEV" -x "$gid" -s "$SIZE" -n "$ITERS" -F > /scratch/sl.srv 2>&1 &
    local srv=$!
    sleep 0.5
    retry ib_send_lat -d "$RDMA_DEV" -x "$gid" -s "$SIZE" -n "$ITERS" -F "$ip" > /scratch/sl.cli 2>&1
    wait "$srv"
    # Data line: bytes iters t_min t_max t_typical t_avg t_stdev p99 p99.9 (one-way µs).
    local line
    line=$(awk -v s="$SIZE" '$1 == s && NF >= 8 { print; exit }' /scratch/sl.cli)
    [ -n "$line" ] || { cat /scratch/sl.cli /scratch/sl.srv; return 1; }
    # Under emulation perftest sometimes cannot calibrate its cycle
    # counter and prints inf; that is no figure, not a slow one.
    if echo "$line" | grep -qE 'inf|nan'; then
        echo "NOTE: ib_send_lat round $1 could not calibrate its clock: $line"
        return 0
    fi
    echo "$line" | awk -v r="$1" -v s="$SIZE" -v n="$ITERS" \
        '{ printf "BENCH tool=ib_send_lat round=%s size=%s iters=%s oneway_typical_us=%s oneway_p99_us=%s oneway_avg_us=%s derived_rtt_p50_us=%.1f derived_rtt_p99_us=%.1f derived_rtt_avg_us=%.1f (derived = 2 x one-way, not measured round trips)\n", r, s, n, $5, $8, $6, 2*$5, 2*$8, 2*$6 }'
}

run_rdma_lat() {
    local tcp=$2 name=rdma-lat
    [ -n "$tcp" ] && name=tcp
    "$RDMA_LAT" server --bind "$ip:7472" --size "$SIZE" $tcp > /scratch/lat.srv 2>&1 &
    local srv=$!
    sleep 0.3
    retry "$RDMA_LAT" client --connect "$ip:7472" --size "$SIZE" --iters "$ITERS" $tcp > /scratch/lat.cli 2>&1
    wait "$srv"
    local line
    line=$(grep '^LAT ' /scratch/lat.cli)
    [ -n "$line" ] || { cat /scratch/lat.cli /scratch/lat.srv; return 1; }
    echo "$line" | sed "s/^LAT transport=[a-z]*/BENCH tool=$name round=$1/; s/p50_us/rtt_p50_us/; s/p99_us/rtt_p99_us/; s/avg_us/rtt_avg_us/"
}

# Round 0 is a short warm-up (the emulator translates each tool's hot loop
# the first time it runs); its figures are printed but are not the result.
measured=$ITERS
for r in $(seq 0 "$ROUNDS"); do
    if [ "$r" = 0 ]; then ITERS=200; else ITERS=$measured; fi
    step "round $r ($ITERS iterations)"
    check "ibv_rc_pingpong round $r" run_rc_pingpong "$r"
    if command -v ib_send_lat > /dev/null; then
        # A baseline, not the code under test: its failure is noted, not failed.
        run_send_lat "$r" || echo "NOTE: ib_send_lat round $r failed"
    else
        echo "NOTE: ib_send_lat not installed (perftest); skipped"
    fi
    check "rdma-lat (Tidepool RDMA) round $r" run_rdma_lat "$r" ""
    check "rdma-lat --tcp round $r" run_rdma_lat "$r" --tcp
done
exit "$TP_FAILS"
