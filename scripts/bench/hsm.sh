#!/usr/bin/env bash
# The HSM on a three-node `tidepool cluster` (release builds), a local
# directory tier: per file size, migrate against a plain copy of the same
# file into the same tier directory, and the first read of the migrated file
# on another node (the recall) against reading its object straight from the
# tier; each pair measured in this run. Caches are not dropped (the tier is
# a local directory: its object is as warm as the plain copy).
# Then: 1,000 small files migrated and read back at once on another node
# (the recall rate) against reading their objects straight from the tier;
# and the watermark policy freeing 1 GiB against a plain copy of the files
# it migrated to a tier directory.
# TIER=s3: the per-size pairs against moto's S3 server on loopback instead
# (the plain copy a PUT of the file with curl, the tier read a GET of its
# object), nothing else.
# Usage: scripts/bench/hsm.sh [sizes in MiB, default "1 64"] (SMALL=0 or
# FREE=0 leave those parts out)
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZES=${1:-"1 64"}
# shellcheck disable=SC2046,SC2086
cargo build --release -q $(scripts/features.sh) --bin tidepool --bin storage-node
work=$(mktemp -d /tmp/tidepool-hsmbench.XXXXXX)
bin=$PWD/target/release
hsm_pid=""
moto_pid=""
cleanup() {
    [ -n "$hsm_pid" ] && kill "$hsm_pid" 2>/dev/null
    [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null
    "$bin/tidepool" cluster down --dir "$work/cluster" >/dev/null 2>&1 || true
    [ -n "${HSM_LOG:-}" ] && cp "$work/hsm.log" "$HSM_LOG"
    rm -rf "$work"
}
trap cleanup EXIT
# The HSM's log (recall and migration times per file) kept: HSM_LOG=path.
"$bin/tidepool" cluster up --nodes 3 --dir "$work/cluster" --size 3G >/dev/null
. "$work/cluster/cluster.env"
tier_url="file://$work/tier"
if [ "${TIER:-file}" = s3 ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
    moto_pid=$!
    s3=http://127.0.0.1:$port
    # (Signed as the HSM signs: moto serves objects to their owner only.)
    sig="--aws-sigv4 aws:amz:us-east-1:s3 --user bench:bench"
    until curl -sf $sig -X PUT "$s3/tpbench" >/dev/null; do sleep 0.2; done
    export AWS_ENDPOINT_URL=$s3 AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
    tier_url=s3://tpbench/hsm
    SMALL=0 FREE=0
fi
RUST_LOG=${RUST_LOG:-info} "$bin/tidepool" hsm --socket "$TIDEPOOL_NODE3_DM_SOCKET" run --tier "$tier_url" 2>"$work/hsm.log" &
hsm_pid=$!
for _ in $(seq 100); do
    "$bin/tidepool" dm --socket "$TIDEPOOL_NODE1_DM_SOCKET" sessions | grep -q info=tidepool-hsm && break
    sleep 0.1
done
now() { date +%s%N; }
ms() { echo "scale=1; ($2 - $1) / 1000000" | bc; }
printf "%-8s %12s %12s %7s %14s %14s %7s %14s\n" size "migrate ms" "copy ms" ratio "recall read ms" "tier read ms" ratio \
    "resident read"
for mib in $SIZES; do
    f=$TIDEPOOL_NODE3_MOUNT/f$mib
    head -c "${mib}M" /dev/urandom >"$f"
    sync
    if [ -n "$moto_pid" ]; then
        t0=$(now); curl -sf $sig -T "$f" "$s3/tpbench/plain-$mib" >/dev/null; t1=$(now)
        cp "$f" "$work/plain-$mib"
    else
        t0=$(now); cp "$f" "$work/plain-$mib"; sync "$work/plain-$mib"; t1=$(now)
    fi
    "$bin/tidepool" hsm --socket "$TIDEPOOL_NODE2_DM_SOCKET" migrate "$TIDEPOOL_NODE2_MOUNT/f$mib" >/dev/null
    t2=$(now)
    key=$("$bin/tidepool" hsm --socket "$TIDEPOOL_NODE2_DM_SOCKET" ls "$TIDEPOOL_NODE2_MOUNT/f$mib" | sed 's/.* key=\([^ ]*\).*/\1/')
    if [ -n "$moto_pid" ]; then
        t3=$(now); curl -sf $sig "$s3/tpbench/hsm/$key" >/dev/null; t4=$(now)
    else
        t3=$(now); cat "$work/tier/$key" >/dev/null; t4=$(now)
    fi
    cat "$TIDEPOOL_NODE2_MOUNT/f$mib" >/dev/null; t5=$(now)
    # The same read again, the data resident: what the mount itself costs.
    cat "$TIDEPOOL_NODE2_MOUNT/f$mib" >/dev/null; t6=$(now)
    cmp -s "$TIDEPOOL_NODE2_MOUNT/f$mib" "$work/plain-$mib" || { echo "recalled data differs"; exit 1; }
    printf "%-8s %12s %12s %7s %14s %14s %7s %14s\n" "${mib}MiB" "$(ms "$t1" "$t2")" "$(ms "$t0" "$t1")" \
        "$(echo "scale=2; ($t2 - $t1) / ($t1 - $t0)" | bc)x" "$(ms "$t4" "$t5")" "$(ms "$t3" "$t4")" \
        "$(echo "scale=2; ($t5 - $t4) / ($t4 - $t3)" | bc)x" "$(ms "$t5" "$t6")"
done

if [ "${SMALL:-1}" != 0 ]; then
    n=1000
    mkdir "$TIDEPOOL_NODE3_MOUNT/small"
    for i in $(seq -w 1 $n); do head -c 8192 /dev/urandom >"$TIDEPOOL_NODE3_MOUNT/small/s$i"; done
    ls -d "$TIDEPOOL_NODE2_MOUNT"/small/* | xargs "$bin/tidepool" hsm --socket "$TIDEPOOL_NODE2_DM_SOCKET" migrate >/dev/null
    objs=$(mktemp -d /tmp/tidepool-hsmbench-objs.XXXXXX)
    find "$work/tier/fs1" -size 8k -type f | head -n $n | xargs cp -t "$objs"
    t0=$(now); ls -d "$objs"/* | xargs -P 8 -n 50 cat >/dev/null; t1=$(now)
    ls -d "$TIDEPOOL_NODE2_MOUNT"/small/* | xargs -P 8 -n 50 cat >/dev/null; t2=$(now)
    rm -rf "$objs"
    printf "\n%s small files (8 KiB), 8 readers: recall %s ms (%s files/s), reading the objects %s ms, ratio %sx\n" \
        $n "$(ms "$t1" "$t2")" "$(echo "$n * 1000000000 / ($t2 - $t1)" | bc)" "$(ms "$t0" "$t1")" \
        "$(echo "scale=2; ($t2 - $t1) / ($t1 - $t0)" | bc)"
fi

if [ "${FREE:-1}" != 0 ]; then
    # 40 cold files of 32 MiB (1.25 GiB); the policy is to free 1 GiB.
    mkdir "$TIDEPOOL_NODE3_MOUNT/cold"
    for i in $(seq -w 1 40); do
        head -c 32M /dev/urandom >"$TIDEPOOL_NODE3_MOUNT/cold/c$i"
        touch -d "$((100 - 10#$i)) hours ago" "$TIDEPOOL_NODE3_MOUNT/cold/c$i"
    done
    sync
    used() { df -B1 --output=used "$TIDEPOOL_NODE3_MOUNT" | tail -1; }
    total=$(df -B1 --output=size "$TIDEPOOL_NODE3_MOUNT" | tail -1)
    u0=$(used)
    pct=$((u0 * 100 / total))
    low=$(((u0 - (1 << 30)) * 100 / total))
    # The baseline: the 32 oldest files (1 GiB) copied to a plain directory.
    t0=$(now); cp "$TIDEPOOL_NODE3_MOUNT"/cold/c{01..32} "$work/" && sync; t1=$(now)
    kill "$hsm_pid"; wait "$hsm_pid" 2>/dev/null || true
    printf '[tier]\nurl = "file://%s"\n[policy]\nhigh_watermark = %s\nlow_watermark = %s\ninterval_secs = 1\n' \
        "$work/tier" $((pct - 1)) "$low" >"$work/hsm.toml"
    t2=$(now)
    RUST_LOG=${RUST_LOG:-info} "$bin/tidepool" hsm --socket "$TIDEPOOL_NODE3_DM_SOCKET" run --config "$work/hsm.toml" 2>>"$work/hsm.log" &
    hsm_pid=$!
    until [ $((u0 - $(used))) -ge $((1 << 30)) ]; do sleep 0.05; done
    t3=$(now)
    printf "freeing 1 GiB (watermarks %s%%..%s%%, from the HSM's start): %s ms; plain cp of 1 GiB of the files: %s ms; ratio %sx\n" \
        $((pct - 1)) "$low" "$(ms "$t2" "$t3")" "$(ms "$t0" "$t1")" "$(echo "scale=2; ($t3 - $t2) / ($t1 - $t0)" | bc)"
fi
