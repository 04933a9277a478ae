#!/usr/bin/env bash
# Tidepool's main job on one machine, with embedded defaults: a storage
# node exports a file-backed volume over NVMe/TCP on loopback and the
# client's user-space initiator drives it (discovery, identify, data
# written and read back, reservations between two hosts, a short
# benchmark). Later stages add the file system, client nodes and DM events.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${TIDEPOOL_PORT:-4420}
DPORT=${TIDEPOOL_DISCOVERY_PORT:-8009}

scripts/setup.sh
echo "== building (release)"
cargo build --release --bins -q
bin=target/release
work=$(mktemp -d /tmp/tidepool-demo.XXXXXX)
node_pid=""
cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
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
echo; echo "== done; storage-node log:"
sed 's/\x1b\[[0-9;]*m//g' "$work/node.log" | tail -5
