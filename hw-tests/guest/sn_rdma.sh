# shellcheck shell=bash
# Guest half of hw-tests storage_node_rdma (issue 5 case a): the guest
# kernel's NVMe/RDMA initiator against storage-node's RDMA transport, both
# in the guest, over soft-RoCE (rxe0 on eth0). storage-node also listens on
# NVMe/TCP (guest loopback) so the discovery log must list both transports.
# Every step is a check; the run goes on after a failed check so one report
# shows everything that is wrong. The only process killed is the
# storage-node this script started, by its PID.
set -u
. "$TP_REPO/scripts/vm/guest-lib.sh"
: "${SN:?path of the storage-node binary built with the rdma feature}"
: "${NQN:?subsystem NQN}"
: "${PROBE:?path of the nvmf-rdma-probe binary}"
H1=nqn.2014-08.org.nvmexpress:uuid:7f1c3a52-0000-4000-8000-00000000a001
ID1=7f1c3a52-0000-4000-8000-00000000a001
PORT=4420
TCP_PORT=4421
out=$TP_OUT
die() { echo "FAIL: $*"; dmesg | tail -n 30; tail -n 40 "$out/storage-node.log"; exit 1; }
wait_for() { for _ in $(seq 150); do "$@" && return 0; sleep 0.1; done; return 1; }
# sn_counts: kernel RDMA objects owned by storage-node (the kernel host's
# own CQ pool outlives its connections, so device totals do not compare).
# The kernel names the creating thread, so match storage-node's threads.
SN_COMM='comm (storage-node|rdma-accept|nvme-rdma-q)'
sn_counts() {
    local r
    for r in pd cq qp mr cm_id; do
        printf '%s=%s ' "$r" "$(rdma resource show "$r" 2>/dev/null | grep -cE "$SN_COMM")"
    done
}

step "soft-RoCE"
. "$TP_REPO/hw-tests/guest/rdma_setup.sh"
modprobe nvme-rdma || die "modprobe nvme-rdma"
A=$RDMA_IP

step "storage-node: RDMA on $A:$PORT, TCP on 127.0.0.1:$TCP_PORT"
RUST_LOG=info "$SN" --rdma "$A:$PORT" --listen "127.0.0.1:$TCP_PORT" --discovery-listen "" \
    --nqn "$NQN" --file /scratch/vol.img --size 256M --create --block-size 512 --allow-any-host \
    > "$out/storage-node.log" 2>&1 &
sn=$!
check "storage-node announces its RDMA listener" wait_for grep -q "NVMe/RDMA listening on $A:$PORT" "$out/storage-node.log"
kill -0 "$sn" 2>/dev/null || die "storage-node exited"
idle=$(sn_counts)
echo "storage-node's RDMA objects while only listening: $idle"

step "discover over RDMA"
nvme discover -t rdma -a "$A" -s "$PORT" --hostnqn "$H1" --hostid "$ID1" > /scratch/disc 2>&1
rc=$?
cat /scratch/disc
check "nvme discover -t rdma succeeds" test "$rc" = 0
check "discovery log lists $NQN" grep -q "subnqn: *$NQN\$" /scratch/disc
check "discovery log has an rdma entry for $A:$PORT" \
    awk -v a="$A" -v p="$PORT" -v n="$NQN" '/^=====Discovery Log Entry/ { t=""; s=""; q="" }
        /^trtype:/ { t=$2 } /^trsvcid:/ { s=$2 } /^subnqn:/ { q=$2 }
        /^traddr:/ && t=="rdma" && s==p && q==n && $2==a { ok=1 } END { exit !ok }' /scratch/disc
check "rdma entry: connected QPs through RDMA CM (TSAS)" \
    sh -c "grep -q 'rdma_qptype: *connected' /scratch/disc && grep -q 'rdma_cms: *rdma-cm' /scratch/disc"
check "discovery log also lists the tcp listener" grep -q "trtype: *tcp" /scratch/disc

step "connect over RDMA"
nvme connect -t rdma -a "$A" -s "$PORT" -n "$NQN" --hostnqn "$H1" --hostid "$ID1" || die "nvme connect -t rdma"
ctrl=$(nvme_ctrls_for_nqn "$NQN" | head -n 1)
dev=$(nvme_ns_dev "$NQN") || die "no namespace device"
echo "controller $ctrl namespace $dev"
check "controller transport is rdma" test "$(cat "/sys/class/nvme/$ctrl/transport")" = rdma
nvme id-ctrl "/dev/$ctrl" -o json > /scratch/idctrl || die "id-ctrl"
check "id-ctrl subnqn is $NQN" test "$(jq -r .subnqn /scratch/idctrl)" = "$NQN"
check "id-ctrl ioccsz is 64 B + 16 KiB in-capsule data" test "$(jq .ioccsz /scratch/idctrl)" = $(((64 + 16384) / 16))
check "id-ctrl sgls has keyed SGL data blocks" test $(($(jq .sgls /scratch/idctrl) & 4)) = 4
check "block device is 256 MiB" test "$(blockdev --getsize64 "$dev")" = $((256 * 1024 * 1024))
# Admin + I/O queues: the leak checks below count what this shows.
sn_counts; echo
check "storage-node owns a QP per queue while connected" \
    test "$(rdma resource show qp | grep -cE "$SN_COMM")" -ge 2

step "mkfs.ext4 (first 96 MiB; fio uses the rest) and write files"
mkfs.ext4 -q -F -E nodiscard "$dev" 96M || die "mkfs.ext4"
mkdir -p /mnt/tp
mount "$dev" /mnt/tp || die "mount"
head -c 3M /dev/urandom > /mnt/tp/random.bin
head -c 8191 /dev/urandom > /mnt/tp/odd-size.bin
head -c 200000 /dev/urandom > /mnt/tp/mid-size.bin
mkdir -p /mnt/tp/tree && cp -r /usr/share/doc/fio /usr/share/doc/nvme-cli /mnt/tp/tree/ 2>/dev/null
(cd /mnt/tp && find . -type f -print0 | sort -z | xargs -0 sha256sum > /scratch/sums)
echo "$(wc -l < /scratch/sums) files written"
umount /mnt/tp || die "umount"
nvme disconnect -n "$NQN" || die "disconnect"
check "controller gone after disconnect" test -z "$(nvme_ctrls_for_nqn "$NQN")"

step "reconnect, read files back"
nvme connect -t rdma -a "$A" -s "$PORT" -n "$NQN" --hostnqn "$H1" --hostid "$ID1" || die "reconnect"
dev=$(nvme_ns_dev "$NQN") || die "no namespace device after reconnect"
echo 3 > /proc/sys/vm/drop_caches
mount "$dev" /mnt/tp || die "mount after reconnect"
check "all files read back identical (sha256)" sh -c "cd /mnt/tp && sha256sum --quiet -c /scratch/sums"
umount /mnt/tp
check "fsck clean" fsck.ext4 -n -f "$dev"

step "fio crc32c verify: 4 KiB (in-capsule writes) and 128 KiB (RDMA READ writes)"
fio --name=small --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --size=8M --offset=128M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --output-format=terse > /scratch/fio1 2>&1
check "fio 4k randwrite + crc32c verify" test $? = 0 -a -s /scratch/fio1
fio --name=big --filename="$dev" --ioengine=libaio --direct=1 --rw=write --bs=128k \
    --iodepth=4 --size=16M --offset=160M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --output-format=terse > /scratch/fio2 2>&1
check "fio 128k write + crc32c verify" test $? = 0 -a -s /scratch/fio2

step "host leaves with I/O in flight"
dmesg > /scratch/dmesg.before
timeout -s KILL 90 fio --name=inflight --filename="$dev" --ioengine=libaio --direct=1 --rw=randrw --bs=4k \
    --iodepth=32 --size=32M --offset=200M --time_based --runtime=30 > /scratch/fio3 2>&1 &
fio_pid=$!
sleep 3
nvme disconnect -n "$NQN" > /dev/null 2>&1
wait "$fio_pid"
echo "fio during disconnect exited $? (errors expected)"
check "storage-node survives a disconnect under I/O" kill -0 "$sn"
# Every queue's QP, CQ, MRs, PD and CM id are released once flushed.
leak_free() { [ "$(sn_counts)" = "$idle" ]; }
check "no RDMA objects of storage-node left behind (back to: $idle)" wait_for leak_free
sn_counts; echo

step "misbehaving host: malformed capsules"
timeout 60 "$PROBE" --connect "$A:$PORT" --nqn "$NQN" --scenario malformed > "$out/probe-malformed.out" 2>&1
rc=$?
cat "$out/probe-malformed.out"
check "bad SGL type, short keyed SGL, bad opcode get NVMe errors; a short capsule ends the queue" \
    sh -c "test $rc = 0 && grep -q '^RESULT malformed ok' $out/probe-malformed.out"

step "host dies with RDMA READs in flight"
timeout 60 "$PROBE" --connect "$A:$PORT" --nqn "$NQN" --scenario die > "$out/probe-die.out" 2>&1
cat "$out/probe-die.out"
check "the dying host posted its writes first" grep -q '^RESULT die ok' "$out/probe-die.out"
check "storage-node survives hosts that misbehave and die" kill -0 "$sn"
check "no RDMA objects of storage-node left after the host died" wait_for leak_free
sn_counts; echo

step "serves again after that"
nvme connect -t rdma -a "$A" -s "$PORT" -n "$NQN" --hostnqn "$H1" --hostid "$ID1" || die "connect after teardown"
dev=$(nvme_ns_dev "$NQN") || die "no namespace device"
mount "$dev" /mnt/tp || die "mount"
check "files still identical after the torn-down connection" sh -c "cd /mnt/tp && sha256sum --quiet -c /scratch/sums"
umount /mnt/tp
nvme disconnect -n "$NQN" > /dev/null
check "no RDMA objects of storage-node left after the last disconnect" wait_for leak_free

step "logs"
kill "$sn"
wait "$sn"
echo "storage-node exited $?"
grep -iE "warn|error" "$out/storage-node.log" | tail -n 20
check "storage-node never panicked" sh -c "! grep -q panicked $out/storage-node.log"
check "no RDMA CM rejects logged" sh -c "! grep -q 'refusing an RDMA connect' $out/storage-node.log"
dmesg | grep -iE 'nvme|rdma' | tail -n 30
check "no I/O errors in kernel log before the forced disconnect" \
    sh -c "! grep -qiE 'I/O error|critical medium|blk_update_request' /scratch/dmesg.before"
check "host never saw a bogus remote invalidation or a transport error" \
    sh -c "! dmesg | grep -qiE 'bogus remote invalidation|RECV for CQE|failed with status'"
exit "$TP_FAILS"
