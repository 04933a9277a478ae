#!/usr/bin/env bash
# File-system manager failover on a three-node `tidepool cluster up --etcd`
# (release builds; nodes 2 and 3 are the candidates), per lease TTL: the
# manager is killed with SIGKILL and the time to the first create that
# completes on node 1's mount is measured, beside the TTL itself (the
# baseline: a failover cannot come before the dead node's lease ends).
# Then fio randwrite 4k from node 1's mount for 6 s at rest and 6 s across
# a kill of the manager (IOPS per second), the IOPS after against before.
# A renewal goes every third of the TTL, so a kill lands between two and
# the dead lease ends 2/3 to 3/3 of a TTL later: expect 0.67-1.0x the TTL
# and a little more.
# Then the same for the session manager (nodes 1 and 3 are its candidates):
# kill -9 of it to the first disposition change from node 2 that a new
# one accepts, per TTL.
# Usage: scripts/bench/failover.sh [TTLs in ms, default "2000 3000 5000"]
set -euo pipefail
cd "$(dirname "$0")/../.."
TTLS=${1:-"2000 3000 5000"}
# shellcheck disable=SC2046
cargo build --release -q $(scripts/features.sh) --bin tidepool --bin storage-node
bin=$PWD/target/release
work=$(mktemp -d /tmp/tidepool-failover.XXXXXX)
cleanup() {
    "$bin/tidepool" cluster down --dir "$work/c" >/dev/null 2>&1 || true
    # A killed node's mount is detached lazily: what is left goes with the next boot.
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

manager() { # the node holding fs-manager:1
    "$bin/tidepool" cluster status --dir "$work/c" --json |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print([n["id"] for n in s["nodes"] if "fs-manager:1" in n["roles"]][0])'
}
pid_of() {
    "$bin/tidepool" cluster status --dir "$work/c" --json |
        python3 -c "import json,sys; s=json.load(sys.stdin); print(s['nodes'][$1-1]['pid'])"
}
ms() { date +%s%3N; }

printf "%-8s %-12s %-10s\n" "ttl_ms" "failover_ms" "x_ttl"
for ttl in $TTLS; do
    "$bin/tidepool" cluster up --etcd --lease-ttl-ms "$ttl" --nodes 3 --dir "$work/c" --size 256M >/dev/null
    # shellcheck disable=SC1091
    . "$work/c/cluster.env"
    m=$(manager)
    echo before >"$TIDEPOOL_NODE1_MOUNT/before" && sync
    kill -9 "$(pid_of "$m")"
    t0=$(ms)
    echo after >"$TIDEPOOL_NODE1_MOUNT/after"
    t1=$(ms)
    # etcd counts whole seconds, at least 2.
    eff=$(( (ttl + 999) / 1000 * 1000 )); [ "$eff" -lt 2000 ] && eff=2000
    printf "%-8s %-12s %-10s\n" "$eff" "$((t1 - t0))" "$(python3 -c "print(f'{($t1-$t0)/$eff:.2f}')")"
    "$bin/tidepool" cluster down --dir "$work/c" >/dev/null 2>&1
    mv "$work/c" "$work/c.$ttl"
done

sm_of() { # the node holding session-manager
    "$bin/tidepool" cluster status --dir "$work/c" --json |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print([n["id"] for n in s["nodes"] if "session-manager" in n["roles"]][0])'
}
printf "\nsession manager\n%-8s %-12s %-10s %-8s\n" "ttl_ms" "failover_ms" "x_ttl" "tries"
for ttl in $TTLS; do
    "$bin/tidepool" cluster up --etcd --lease-ttl-ms "$ttl" --nodes 3 --dir "$work/c" --size 64M >/dev/null
    # shellcheck disable=SC1091
    . "$work/c/cluster.env"
    s2=$TIDEPOOL_NODE2_DM_SOCKET
    sid=$("$bin/tidepool" dm --socket "$s2" create-session --info bench | sed 's/.*sid=\([0-9]*\).*/\1/')
    "$bin/tidepool" dm --socket "$s2" set-disp --sid "$sid" --fs 1 --events remove >/dev/null
    kill -9 "$(pid_of "$(sm_of)")"
    t0=$(ms)
    tries=0
    until "$bin/tidepool" dm --socket "$s2" set-disp --sid "$sid" --fs 1 --events remove,rename >/dev/null 2>&1; do
        tries=$((tries + 1))
    done
    t1=$(ms)
    eff=$(( (ttl + 999) / 1000 * 1000 )); [ "$eff" -lt 2000 ] && eff=2000
    printf "%-8s %-12s %-10s %-8s\n" "$eff" "$((t1 - t0))" "$(python3 -c "print(f'{($t1-$t0)/$eff:.2f}')")" "$tries"
    "$bin/tidepool" cluster down --dir "$work/c" >/dev/null 2>&1
    mv "$work/c" "$work/c.sm.$ttl"
done

if command -v fio >/dev/null; then
    "$bin/tidepool" cluster up --etcd --nodes 3 --dir "$work/c" --size 512M >/dev/null
    # shellcheck disable=SC1091
    . "$work/c/cluster.env"
    m=$(manager)
    run() { fio --name=w --directory="$TIDEPOOL_NODE1_MOUNT" --rw=randwrite --bs=4k --size=64M \
        --ioengine=psync --time_based --runtime="$1" --write_iops_log="$work/$2" --log_avg_msec=1000 \
        --output-format=json >"$work/$2.json"; }
    run 6 rest
    ( sleep 2; kill -9 "$(pid_of "$m")" ) &
    run 12 across
    wait
    python3 - "$work" <<'PY'
import json, sys, glob
w = sys.argv[1]
def iops(name):
    return json.load(open(f"{w}/{name}.json"))["jobs"][0]["write"]["iops"]
def per_sec(name):
    f = glob.glob(f"{w}/{name}_iops*.log")[0]
    return [int(l.split(",")[1]) for l in open(f)]
rest, across = iops("rest"), per_sec("across")
print(f"fio randwrite 4k at rest: {rest:.0f} IOPS")
print("across a manager kill at 2 s, IOPS per second:", across)
after = across[-4:]
print(f"last 4 s after the failover: {sum(after)/len(after):.0f} IOPS = {sum(after)/len(after)/rest:.2f}x at rest")
PY
fi
