#!/usr/bin/env bash
# DMAPI from a C program built against the installed dmapi.h/libdmapi.so, on
# a two-node `tidepool cluster` (release builds): a local call, an event
# round trip and 1 MiB invisible reads, each beside its baseline measured in
# the same run (scripts/bench/c/dm_bench.c says which).
# Usage: scripts/bench/dm-c.sh [calls per figure, default 20000]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
# shellcheck disable=SC2046
cargo build --release -q $(scripts/features.sh) --bin tidepool --bin storage-node
cargo build --release -q -p libdmapi --lib
work=$(mktemp -d /tmp/tidepool-dmc.XXXXXX)
bin=$PWD/target/release
cleanup() {
    "$bin/tidepool" cluster down --dir "$work/cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
scripts/install-dmapi.sh "$work/prefix" --lib target/release/liblibdmapi.so >/dev/null
export PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig
# shellcheck disable=SC2046
cc -O2 -Wall -o "$work/dm_bench" scripts/bench/c/dm_bench.c $(pkg-config --cflags --libs dmapi) -lpthread
"$bin/tidepool" cluster up --nodes 2 --dir "$work/cluster" >/dev/null
. "$work/cluster/cluster.env"
export TIDEPOOL_DM_SOCKET=$TIDEPOOL_NODE1_DM_SOCKET
dd if=/dev/urandom of="$TIDEPOOL_NODE1_MOUNT/big" bs=1M count=4 status=none
"$work/dm_bench" query "$N"
"$work/dm_bench" events "$N"
"$work/dm_bench" readinvis "$TIDEPOOL_NODE1_MOUNT/big" $((N / 100 > 20 ? N / 100 : 20))
