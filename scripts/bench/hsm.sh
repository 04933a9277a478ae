#!/usr/bin/env bash
# The HSM on a three-node `tidepool cluster` (release builds), a local
# directory tier: per file size, migrate against a plain copy of the same
# file into the same tier directory, and the first read of the migrated file
# on another node (the recall) against reading its object straight from the
# tier; each pair measured in this run. Caches are not dropped (the tier is
# a local directory: its object is as warm as the plain copy).
# Usage: scripts/bench/hsm.sh [sizes in MiB, default "1 64"]
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZES=${1:-"1 64"}
# shellcheck disable=SC2046
cargo build --release -q $(scripts/features.sh) --bin tidepool --bin storage-node
work=$(mktemp -d /tmp/tidepool-hsmbench.XXXXXX)
bin=$PWD/target/release
hsm_pid=""
cleanup() {
    [ -n "$hsm_pid" ] && kill "$hsm_pid" 2>/dev/null
    "$bin/tidepool" cluster down --dir "$work/cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
"$bin/tidepool" cluster up --nodes 3 --dir "$work/cluster" --size 1G >/dev/null
. "$work/cluster/cluster.env"
"$bin/tidepool" hsm --socket "$TIDEPOOL_NODE3_DM_SOCKET" run --tier "file://$work/tier" 2>"$work/hsm.log" &
hsm_pid=$!
for _ in $(seq 100); do
    "$bin/tidepool" dm --socket "$TIDEPOOL_NODE1_DM_SOCKET" sessions | grep -q info=tidepool-hsm && break
    sleep 0.1
done
now() { date +%s%N; }
ms() { echo "scale=1; ($2 - $1) / 1000000" | bc; }
printf "%-8s %12s %12s %7s %14s %14s %7s\n" size "migrate ms" "copy ms" ratio "recall read ms" "tier read ms" ratio
for mib in $SIZES; do
    f=$TIDEPOOL_NODE3_MOUNT/f$mib
    head -c "${mib}M" /dev/urandom >"$f"
    sync
    t0=$(now); cp "$f" "$work/plain-$mib"; sync "$work/plain-$mib"; t1=$(now)
    "$bin/tidepool" hsm --socket "$TIDEPOOL_NODE2_DM_SOCKET" migrate "$TIDEPOOL_NODE2_MOUNT/f$mib" >/dev/null
    t2=$(now)
    obj=$(ls "$work/tier/fs1/" | while read -r o; do [ "$(stat -c %s "$work/tier/fs1/$o")" = $((mib << 20)) ] && echo "$o"; done | tail -1)
    t3=$(now); cat "$work/tier/fs1/$obj" >/dev/null; t4=$(now)
    cat "$TIDEPOOL_NODE2_MOUNT/f$mib" >/dev/null; t5=$(now)
    cmp -s "$TIDEPOOL_NODE2_MOUNT/f$mib" "$work/plain-$mib" || { echo "recalled data differs"; exit 1; }
    printf "%-8s %12s %12s %7s %14s %14s %7s\n" "${mib}MiB" "$(ms "$t1" "$t2")" "$(ms "$t0" "$t1")" \
        "$(echo "scale=2; ($t2 - $t1) / ($t1 - $t0)" | bc)x" "$(ms "$t4" "$t5")" "$(ms "$t3" "$t4")" \
        "$(echo "scale=2; ($t5 - $t4) / ($t4 - $t3)" | bc)x"
done
