# shellcheck shell=bash
# Guest half of hw-tests tidepool_rdma_initiator (issue 5 case b): Tidepool's
# user-space initiator (`tidepool nvme ... -t rdma`) over soft-RoCE against
# the guest kernel's nvmet-rdma target, the reference server: discovery,
# Identify, writes of three sizes (in-capsule data, RDMA READ from a
# command's registered slot, RDMA READ from a region registered for a
# large command) read back identical and found in the backing file, and a
# queue-depth run of the initiator's benchmark. Then the same initiator
# against storage-node's RDMA transport, so both ends are Tidepool's.
# Every step is a check; the run goes on after a failed check so one
# report shows everything that is wrong.
set -u
. "$TP_REPO/scripts/vm/guest-lib.sh"
: "${TP:?path of the tidepool binary built with the rdma feature}"
: "${SN:?path of the storage-node binary built with the rdma feature}"
: "${NQN:?subsystem NQN}"
KNQN=nqn.2026-11.io.tidepool:kernel
PORT=4420
SN_PORT=4430
out=$TP_OUT
die() { echo "FAIL: $*"; dmesg | tail -n 30; exit 1; }
wait_for() { for _ in $(seq 150); do "$@" && return 0; sleep 0.1; done; return 1; }

step "soft-RoCE"
. "$TP_REPO/hw-tests/guest/rdma_setup.sh"
A=$RDMA_IP
[ -d "$NVMET_CFG" ] || die "configfs: no $NVMET_CFG"

step "kernel nvmet-rdma target on $A:$PORT"
nvmet_file_target rdma "$KNQN" /scratch/kvol.img 64M "$A" "$PORT" || die "nvmet rdma setup"
bs=$(stat -c %o /scratch/kvol.img); [ "$bs" -gt 4096 ] && bs=4096
serial=$(cat "$NVMET_CFG/subsystems/$KNQN/attr_serial")
echo "nvmet-rdma ready: lba size $bs, serial $serial, kernel $(uname -r)"

tp() { "$TP" nvme "$@"; }

# rw_checks NAME NQN ADDR BS BACKING: write three sizes through Tidepool's
# initiator, read each back, and find each in BACKING.
rw_checks() {
    local name=$1 nqn=$2 addr=$3 lbs=$4 backing=$5 size lba
    for size in 4096 65536 524288; do
        lba=$((size / lbs * 3))
        head -c "$size" /dev/urandom > "/scratch/w$size"
        tp write -t rdma --addr "$addr" --nqn "$nqn" --lba "$lba" --input "/scratch/w$size" > /dev/null 2> "/scratch/werr$size"
        check "$name: $size-byte write succeeds" test $? = 0
        [ -s "/scratch/werr$size" ] && cat "/scratch/werr$size"
        tp read -t rdma --addr "$addr" --nqn "$nqn" --lba "$lba" --blocks $((size / lbs)) --output "/scratch/r$size"
        check "$name: $size-byte read returns what was written" cmp "/scratch/w$size" "/scratch/r$size"
        sync
        check "$name: $size-byte write is in the backing file" \
            cmp -n "$size" "/scratch/w$size" <(tail -c +$((lba * lbs + 1)) "$backing")
    done
}

step "discover over RDMA (Tidepool initiator)"
tp discover -t rdma --addr "$A:$PORT" > /scratch/disc 2>&1
rc=$?
cat /scratch/disc
check "tidepool nvme discover -t rdma succeeds" test "$rc" = 0
check "discovery log lists $KNQN over rdma" \
    awk -v n="$KNQN" '/^trtype:/ { t=$2 } /^subnqn:/ && t=="rdma" && $2==n { ok=1 } END { exit !ok }' /scratch/disc

step "identify over RDMA"
tp identify -t rdma --addr "$A:$PORT" --nqn "$KNQN" > /scratch/id 2>&1
rc=$?
cat /scratch/id
check "identify succeeds" test "$rc" = 0
check "identify reports the target's serial number" grep -q "$serial" /scratch/id

step "writes and reads through the kernel target"
rw_checks kernel "$KNQN" "$A:$PORT" "$bs" /scratch/kvol.img

step "queue-depth run (32 in flight, random 4 KiB reads and writes)"
for rw in randwrite randread; do
    tp bench -t rdma --addr "$A:$PORT" --nqn "$KNQN" --rw "$rw" --qd 32 --seconds 2 --span 33554432 > "/scratch/bench-$rw" 2>&1
    rc=$?
    cat "/scratch/bench-$rw"
    check "bench $rw at depth 32 against the kernel target" test "$rc" = 0
done

step "storage-node's RDMA transport on $A:$SN_PORT"
RUST_LOG=info "$SN" --rdma "$A:$SN_PORT" --listen 127.0.0.1:4431 --discovery-listen "" \
    --nqn "$NQN" --file /scratch/snvol.img --size 64M --create --block-size 512 --allow-any-host \
    > "$out/storage-node.log" 2>&1 &
sn=$!
check "storage-node announces its RDMA listener" wait_for grep -q "NVMe/RDMA listening on $A:$SN_PORT" "$out/storage-node.log"
tp identify -t rdma --addr "$A:$SN_PORT" --nqn "$NQN" > /scratch/id2 2>&1
check "identify storage-node over RDMA" test $? = 0
rw_checks storage-node "$NQN" "$A:$SN_PORT" 512 /scratch/snvol.img
tp bench -t rdma --addr "$A:$SN_PORT" --nqn "$NQN" --rw randread --qd 32 --seconds 2 --span 33554432 > /scratch/bench-sn 2>&1
rc=$?
cat /scratch/bench-sn
check "bench randread at depth 32 against storage-node" test "$rc" = 0
kill "$sn"
wait "$sn"
check "storage-node never panicked" sh -c "! grep -q panicked $out/storage-node.log"

step "logs"
dmesg | grep -iE 'nvmet|rdma' | tail -n 20
check "kernel target logged no transport errors" sh -c "! dmesg | grep -qiE 'nvmet_rdma.*(error|failed)'"
exit "$TP_FAILS"
