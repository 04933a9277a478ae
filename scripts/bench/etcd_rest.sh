#!/usr/bin/env bash
# etcd traffic per node at rest: a `tidepool cluster up --etcd` cluster of N
# nodes (default 3) doing nothing for SECS seconds (default 30); etcd's own
# counters (its /metrics on the client URL) read before and after give the
# gRPC calls per method and the bytes received and sent, per node and per
# second. Baseline beside it, from the same counters: the lease renewals
# alone (one LeaseKeepAlive stream message per node every TTL/3), which no
# lease-based membership can go below.
# Usage: scripts/bench/etcd_rest.sh [nodes] [secs]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-3}
SECS=${2:-30}
# shellcheck disable=SC2046
cargo build --release -q $(scripts/features.sh) --bin tidepool --bin storage-node
bin=$PWD/target/release
work=$(mktemp -d /tmp/tidepool-etcd-rest.XXXXXX)
cleanup() {
    "$bin/tidepool" cluster down --dir "$work/c" >/dev/null 2>&1 || true
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT
"$bin/tidepool" cluster up --etcd --nodes "$N" --dir "$work/c" --size 64M >/dev/null
# shellcheck disable=SC1091
. "$work/c/cluster.env"
sleep 5 # past the start (elections, first lists)
curl -s "$TIDEPOOL_ETCD/metrics" >"$work/m0"
sleep "$SECS"
curl -s "$TIDEPOOL_ETCD/metrics" >"$work/m1"
python3 - "$work/m0" "$work/m1" "$N" "$SECS" <<'PY'
import re, sys
def read(p):
    out = {}
    for l in open(p):
        if l.startswith("#"):
            continue
        m = re.match(r'(\w+)(\{[^}]*\})? ([0-9.e+-]+)$', l.strip())
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out
a, b, n, secs = read(sys.argv[1]), read(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
d = lambda k: b.get(k, 0) - a.get(k, 0)
print(f"{n} nodes at rest for {secs:.0f} s; per node per second:")
calls = {}
for (name, labels) in b:
    if name == "grpc_server_handled_total":
        meth = re.search(r'grpc_method="(\w+)"', labels).group(1)
        calls[meth] = calls.get(meth, 0) + d((name, labels))
    if name == "grpc_server_msg_received_total":
        meth = re.search(r'grpc_method="(\w+)"', labels).group(1)
        calls[meth + " (stream msgs)"] = calls.get(meth + " (stream msgs)", 0) + d((name, labels))
for m, c in sorted(calls.items()):
    if c:
        print(f"  {m:32s} {c / n / secs:8.2f}")
rx = d(("etcd_network_client_grpc_received_bytes_total", ""))
tx = d(("etcd_network_client_grpc_sent_bytes_total", ""))
print(f"  bytes to etcd   {rx / n / secs:10.0f} B/s")
print(f"  bytes from etcd {tx / n / secs:10.0f} B/s")
ka = calls.get("LeaseKeepAlive (stream msgs)", 0)
print(f"  lease renewals alone (the floor): {ka / n / secs:.2f} msgs/s; "
      f"all calls and stream messages against it: {sum(calls.values()) / max(ka, 1):.1f}x")
PY
