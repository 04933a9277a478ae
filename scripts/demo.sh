#!/usr/bin/env bash
# Tidepool's main job on one machine, with embedded defaults:
#  1. a storage node exports a file-backed volume over NVMe/TCP on loopback
#     and the client's user-space initiator drives it (discovery, identify,
#     data written and read back, reservations between two hosts, a short
#     benchmark);
#  2. four client node daemons form a cluster (session manager, file-system
#     manager, an HSM session node A, a source node B); a DM application
#     opens a session on A and prints the events that file operations on
#     B, on the manager node and on A itself send it, answering CONTINUE,
#     or ABORT for truncate and rename;
#  3. the Tidepool file system is made on the storage node's volume, its
#     manager starts, and three client nodes mount it through FUSE (nodes 2,
#     3 = A and 4 = B, each its own process and mount point); ordinary
#     programs (echo, cat, cp, truncate, mv, rm) run on B and node 2, each
#     sees the other's changes at once, and each operation's DM event
#     reaches the session on A, which decides it (mv is refused with EPERM).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${TIDEPOOL_PORT:-4420}
DPORT=${TIDEPOOL_DISCOVERY_PORT:-8009}
DMPORT=${TIDEPOOL_DM_BASE_PORT:-7100}

scripts/setup.sh
echo "== building (release)"
cargo build --release --bins -q
bin=target/release
work=$(mktemp -d /tmp/tidepool-demo.XXXXXX)
node_pid=""
pids=()
cleanup() {
    for p in $node_pid "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting storage-node: 256 MiB volume at $work/vol0.img"
RUST_LOG=info $bin/storage-node --file "$work/vol0.img" --size 256M --create --allow-any-host \
    --listen 127.0.0.1:$PORT --discovery-listen 127.0.0.1:$DPORT >"$work/node.out" 2>"$work/node.log" &
node_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/node.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/node.out"

A=(--addr 127.0.0.1:$PORT --nqn nqn.2026-11.io.tidepool:vol0)
echo; echo "== tidepool nvme discover"
$bin/tidepool nvme discover --addr 127.0.0.1:$DPORT
echo; echo "== tidepool nvme identify"
$bin/tidepool nvme identify "${A[@]}"
echo; echo "== write README.md at LBA 2048 and read it back"
$bin/tidepool nvme write "${A[@]}" --lba 2048 --input README.md
blocks=$(( ($(stat -c %s README.md) + 511) / 512 ))
$bin/tidepool nvme read "${A[@]}" --lba 2048 --blocks $blocks --output "$work/back"
if cmp -n "$(stat -c %s README.md)" README.md "$work/back"; then echo "read back identical ($blocks blocks)"; else echo "MISMATCH"; exit 1; fi
echo; echo "== reservations: host-a takes Write Exclusive, host-b is fenced off"
HA=(--hostnqn nqn.2026-11.io.tidepool:host-a); HB=(--hostnqn nqn.2026-11.io.tidepool:host-b)
$bin/tidepool nvme resv-register "${A[@]}" "${HA[@]}" --nrkey 0xa
$bin/tidepool nvme resv-register "${A[@]}" "${HB[@]}" --nrkey 0xb
$bin/tidepool nvme resv-acquire "${A[@]}" "${HA[@]}" --crkey 0xa --rtype 1
$bin/tidepool nvme resv-report "${A[@]}"
if $bin/tidepool nvme write "${A[@]}" "${HB[@]}" --lba 0 --input README.md 2>"$work/err"; then
    echo "host-b could write: reservation not enforced"; exit 1
else
    echo "host-b write refused: $(head -1 "$work/err")"
fi
$bin/tidepool nvme resv-release "${A[@]}" "${HA[@]}" --crkey 0xa --rtype 1
echo; echo "== 3 s benchmarks: 4 KiB random read and write, QD 32, 2 queues"
$bin/tidepool nvme bench "${A[@]}" --rw randread --qd 32 --queues 2 --seconds 3
$bin/tidepool nvme bench "${A[@]}" --rw randwrite --qd 32 --queues 2 --seconds 3
echo; echo "== storage-node log (last lines):"
sed 's/\x1b\[[0-9;]*m//g' "$work/node.log" | tail -3

echo; echo "== DM cluster: node 1 session manager, node 2 manager of fs 1, node 3 = A (HSM session), node 4 = B"
for id in 1 2 3 4; do
    {
        echo "node_id = $id"
        echo "listen = \"127.0.0.1:$((DMPORT + id))\""
        echo "api_socket = \"$work/node$id.sock\""
        echo "cluster_key = \"demo-cluster-key\""
        echo "session_manager = 1"
        echo "mounts = [1]"
        echo "dm_admin_gid = $(id -g)"
        for p in 1 2 3 4; do
            [ $p = $id ] || printf '[[peers]]\nid = %s\naddr = "127.0.0.1:%s"\n' $p $((DMPORT + p))
        done
        printf '[[filesystems]]\nid = 1\nmanager = 2\n'
    } >"$work/node$id.toml"
    RUST_LOG=info $bin/tidepool node run --config "$work/node$id.toml" 2>"$work/dmnode$id.log" >/dev/null &
    pids+=($!)
done
for id in 1 2 3 4; do
    for _ in $(seq 100); do [ -S "$work/node$id.sock" ] && break; sleep 0.1; done
done
echo "-- DM application on node 3 opens session 'hsm' for read, write, truncate, create, remove, rename, destroy events"
$bin/tidepool dm --socket "$work/node3.sock" listen --info hsm --events read,write,truncate,create,remove,rename,destroy --abort truncate=1 --abort rename=1 >"$work/hsm.out" 2>"$work/hsm.err" &
pids+=($!)
for _ in $(seq 100); do grep -q READY "$work/hsm.out" 2>/dev/null && break; sleep 0.1; done
head -2 "$work/hsm.out"
drv=$bin/tidepool-dm-testdriver
for id in 4 2 3; do $drv --socket "$work/node$id.sock" wait-route --event truncate --node 3 >/dev/null; done
echo "-- file operations generate events on nodes 4 (B), 2 and 3 (A itself):"
for op in "4 write 1001" "4 read 1001" "2 write 2002" "3 read 3003" "4 truncate 1001"; do
    set -- $op
    printf "node %s %-8s ino %s -> " "$1" "$2" "$3"
    $drv --socket "$work/node$1.sock" generate --event "$2" --ino "$3"
done
sleep 0.3
echo "-- what the DM application on node 3 received:"
grep EVENT "$work/hsm.out" || { echo "no events arrived"; exit 1; }
n=$(grep -c EVENT "$work/hsm.out")
[ "$n" -eq 5 ] || { echo "expected 5 events, got $n"; exit 1; }

echo; echo "== the file system: mkfs on the volume, its manager (node 2), FUSE mounts on nodes 2, 3 (A) and 4 (B)"
$bin/tidepool mkfs "${A[@]}" --label demo
MGR=127.0.0.1:${TIDEPOOL_FS_MANAGER_PORT:-7600}
RUST_LOG=info $bin/tidepool fs-manager "${A[@]}" --listen $MGR >"$work/fsmgr.out" 2>"$work/fsmgr.log" &
pids+=($!)
for _ in $(seq 100); do grep -q serving "$work/fsmgr.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/fsmgr.out"
mount_pids=()
for id in 2 3 4; do
    mkdir -p "$work/mnt$id"
    RUST_LOG=info $bin/tidepool mount "${A[@]}" --manager $MGR --name "node$id" \
        --dm-socket "$work/node$id.sock" --dm-fs 1 "$work/mnt$id" >"$work/mount$id.out" 2>"$work/mount$id.log" &
    mount_pids+=($!)
    for _ in $(seq 100); do grep -q mounted "$work/mount$id.out" 2>/dev/null && break; sleep 0.1; done
    cat "$work/mount$id.out"
done
pids+=("${mount_pids[@]}")
m2=$work/mnt2; m3=$work/mnt3; m4=$work/mnt4
before=$(grep -c EVENT "$work/hsm.out")
run() { echo "\$ $*"; sh -c "$*" 2>&1 | sed 's/^/    /'; }
echo "-- a workload on node 4 (B):"
cd "$m4"
run 'echo hello tidepool > greeting; cat greeting; cp greeting copy'
# refused CMD...: CMD must fail with the errno the DM application answers
# (--abort ...=1, EPERM); any other outcome is no refusal of the DM's.
refused() {
    echo "\$ $*"
    local err
    if err=$("$@" 2>&1); then echo "    $* was allowed, but the DM application aborts it"; exit 1; fi
    echo "$err" | sed 's/^/    /'
    case "$err" in
        *"Operation not permitted"*) echo "    (refused by the DM application with EPERM, as configured)" ;;
        *) echo "    failed, but not with the DM application's EPERM"; exit 1 ;;
    esac
}
refused truncate -s 5 copy
refused mv copy renamed
cd - >/dev/null
echo "-- the same files from node 2, at once (tokens keep the nodes coherent):"
run "cat $m2/greeting; ls $m2"
run "echo appended on node 2 >> $m2/greeting; rm $m2/copy"
echo "-- and back on node 4:"
run "cat $m4/greeting; ls -l $m4"
sleep 0.3
echo "-- events from the mounts, as the DM application on node 3 received them:"
tail -n +$((before + 1)) <(grep EVENT "$work/hsm.out")
grep "type=write.*source_node=4" "$work/hsm.out" >/dev/null || { echo "no write event from node 4"; exit 1; }
grep "type=write.*source_node=2" "$work/hsm.out" >/dev/null || { echo "no write event from node 2"; exit 1; }
grep "type=remove.*source_node=2" "$work/hsm.out" >/dev/null || { echo "no remove event from node 2"; exit 1; }
grep "type=destroy.*source_node=2" "$work/hsm.out" >/dev/null || { echo "no destroy event from node 2"; exit 1; }
[ "$(cat "$m3/greeting")" = "$(printf 'hello tidepool\nappended on node 2')" ] || { echo "node 3 does not see the file"; exit 1; }
for p in "${mount_pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
echo; echo "== done"
