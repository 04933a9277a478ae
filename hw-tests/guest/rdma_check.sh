# shellcheck shell=bash
# Guest half of hw-tests rdma_softroce: rdma-check server and clients over
# soft-RoCE in one guest. Each scenario is a check; kills are by PID of the
# processes this script started.
set -u
. "$TP_REPO/scripts/vm/guest-lib.sh"
step "soft-RoCE"
. "$TP_REPO/hw-tests/guest/rdma_setup.sh"
: "${RDMA_CHECK:?path of the rdma-check binary}"
export RUST_LOG=info RUST_BACKTRACE=1
addr=$RDMA_IP:7471
out=$TP_OUT
client() { timeout 60 "$RDMA_CHECK" client --connect "$addr" "$@"; }
export -f client
export addr RDMA_CHECK
# wait_for CMD...: up to 15 s for CMD to succeed.
wait_for() { for _ in $(seq 150); do "$@" && return 0; sleep 0.1; done; return 1; }
# counts: the device's kernel object counts (pd, cq, qp, cm_id, mr, ctx).
counts() { rdma resource show "$RDMA_DEV" | sed 's/^[0-9]*: [^:]*: //'; }

step "device checks"
check "verbs: open by TIDEPOOL_RDMA_DEV, PD, MR bounds, idle CQ wait" \
    bash -c "\"$RDMA_CHECK\" verbs | tee -a $out/clients.out | grep -q '^RESULT verbs ok device=$RDMA_DEV '"
check "verbs: an unknown device name fails cleanly" \
    bash -c "! TIDEPOOL_RDMA_DEV=nosuchdev \"$RDMA_CHECK\" verbs > $out/nodev.out 2>&1 && grep -q 'no device named' $out/nodev.out && ! grep -q panicked $out/nodev.out"

base=$(counts)
echo "resources before any process: $base"

step "server"
"$RDMA_CHECK" server --bind "$addr" --ready-file /scratch/server.ready > "$out/server.out" 2> "$out/server.err" &
server=$!
check "server listening" wait_for test -e /scratch/server.ready

step "idle server sleeps"
# The server waits on its CM channel (no connection yet); over 2 s it must
# not spin. CPU ticks (utime+stime, 1/100 s) from /proc.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
t0=$(ticks "$server"); sleep 2; t1=$(ticks "$server")
echo "idle server used $((t1 - t0)) ticks in 2 s"
check "idle server burns no CPU (< 0.3 s over 2 s)" test $((t1 - t0)) -lt 30

step "nobody listening"
timeout 60 "$RDMA_CHECK" client --connect "$RDMA_IP:7999" --scenario pingpong > "$out/nolistener.out" 2>&1
rc=$?
cat "$out/nolistener.out"
check "connect to a port nobody listens on fails cleanly" \
    bash -c "test $rc = 1 && grep -qi 'rejected' $out/nolistener.out && ! grep -q panicked $out/nolistener.out"

step "reject with private data"
check "reject: refused with the server's private data, posted receives flushed" \
    bash -c "client --scenario reject | tee -a $out/clients.out | grep -q '^RESULT reject ok'"

step "send/recv ping-pong"
check "pingpong: 200 x 64 B echoed and checked" \
    bash -c "client --scenario pingpong --iters 200 | tee -a $out/clients.out | grep -q '^RESULT pingpong ok'"
check "server drained the ping-pong connection" wait_for grep -q '^SERVED Pingpong messages=200 .* left=0' "$out/server.out"
before=$(counts)
echo "resources after the first connection: $before"

step "RDMA READ/WRITE"
check "rdma: READ, WRITE, server-side check, read-back, bad rkey fails cleanly" \
    bash -c "client --scenario rdma | tee -a $out/clients.out | grep -q '^RESULT rdma ok'"
check "server saw the rdma connection end" wait_for grep -q '^SERVED Rdma ' "$out/server.out"

step "killed client"
"$RDMA_CHECK" client --connect "$addr" --scenario hang --ready-file /scratch/hang.ready >> "$out/clients.out" 2>&1 &
victim=$!
check "hang client connected" wait_for test -e /scratch/hang.ready
kill -9 "$victim"
wait "$victim" 2>/dev/null
check "server saw the killed client and flushed its 16 receives" \
    wait_for grep -q '^SERVED Hang messages=0 drained flushed=16 succeeded=0 failed=0 left=0' "$out/server.out"
check "server still running after the killed client" kill -0 "$server"
after=$(counts)
echo "resources after rdma + killed client: $after"
check "no verbs or CM objects leaked by the server (device counts unchanged)" test "$before" = "$after"
check "server serves a new connection after the killed client" \
    bash -c "client --scenario pingpong --iters 20 | tee -a $out/clients.out | grep -q '^RESULT pingpong ok'"

step "killed server"
"$RDMA_CHECK" client --connect "$addr" --scenario survive --ready-file /scratch/survive.ready > "$out/survive.out" 2>&1 &
survivor=$!
check "survive client connected" wait_for test -e /scratch/survive.ready
kill -9 "$server"
wait "$server" 2>/dev/null
wait "$survivor"
rc=$?
cat "$out/survive.out"
check "survivor saw the killed server, drained all 16 receives, exited 0" \
    bash -c "test $rc = 0 && grep -q '^RESULT survive ok .*left=0' $out/survive.out"
check "every object released once the processes are gone (device counts back to the start)" \
    wait_for bash -c "[ \"\$(rdma resource show $RDMA_DEV | sed 's/^[0-9]*: [^:]*: //')\" = '$base' ]"

step "logs"
cat "$out/clients.out" "$out/server.out"
check "no panic in any process" bash -c "! grep -l 'panicked' $out/*.out $out/*.err"
echo "resources at the end: $(counts)"
exit "$TP_FAILS"
