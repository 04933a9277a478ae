# shellcheck shell=bash
# Guest half of hw-tests kernel_initiator_vs_storage_node (data path): the
# guest kernel's NVMe/TCP initiator against storage-node on the host
# ($TP_HOST_IP:$PORT, discovery on $DPORT). Every step is a check; the run
# goes on after a failed check so one report shows everything that is wrong.
set -u
. "$TP_REPO/scripts/vm/guest-lib.sh"
A=$TP_HOST_IP
H1=nqn.2014-08.org.nvmexpress:uuid:7f1c3a52-0000-4000-8000-00000000a001
ID1=7f1c3a52-0000-4000-8000-00000000a001
die() { echo "FAIL: $*"; dmesg | tail -n 20; exit 1; }

step "discover $A:$DPORT"
nvme discover -t tcp -a "$A" -s "$DPORT" --hostnqn "$H1" --hostid "$ID1" > /scratch/disc 2>&1
cat /scratch/disc
check "discovery log lists $NQN" grep -q "subnqn: *$NQN\$" /scratch/disc
check "discovery entry is NVMe/TCP" grep -q "trtype: *tcp" /scratch/disc

step "connect without digests"
nvme connect -t tcp -a "$A" -s "$PORT" -n "$NQN" --hostnqn "$H1" --hostid "$ID1" || die "nvme connect"
ctrl=$(nvme_ctrls_for_nqn "$NQN" | head -n 1)
dev=$(nvme_ns_dev "$NQN") || die "no namespace device"
echo "controller $ctrl namespace $dev"

nvme id-ctrl "/dev/$ctrl" -o json > /scratch/idctrl || die "id-ctrl"
check "id-ctrl subnqn is $NQN" test "$(jq -r .subnqn /scratch/idctrl)" = "$NQN"
check "id-ctrl reports at least one namespace" test "$(jq .nn /scratch/idctrl)" -ge 1
check "id-ctrl serial number is set" test -n "$(jq -r '.sn | gsub(" "; "")' /scratch/idctrl)"
check "id-ctrl ioccsz covers a 64-byte SQE" test "$(jq .ioccsz /scratch/idctrl)" -ge 4
check "id-ctrl iorcsz covers a 16-byte CQE" test "$(jq .iorcsz /scratch/idctrl)" -ge 1
nvme id-ns "$dev" -o json > /scratch/idns || die "id-ns"
lbads=$(jq '.lbafs[.flbas % 16].ds' /scratch/idns)
nsze=$(jq .nsze /scratch/idns)
check "id-ns LBA size is 512 (lbads 9)" test "$lbads" = 9
check "id-ns nsze is 256 MiB in LBAs" test "$nsze" = $((256 * 1024 * 1024 / 512))
check "id-ns ncap <= nsze" test "$(jq .ncap /scratch/idns)" -le "$nsze"
check "block device is 256 MiB" test "$(blockdev --getsize64 "$dev")" = $((256 * 1024 * 1024))

step "mkfs.ext4 and write files"
mkfs.ext4 -q -F -E nodiscard "$dev" || die "mkfs.ext4"
mkdir -p /mnt/tp
mount "$dev" /mnt/tp || die "mount"
head -c 3M /dev/urandom > /mnt/tp/random.bin
head -c 8191 /dev/urandom > /mnt/tp/odd-size.bin
mkdir -p /mnt/tp/tree && cp -r /usr/share/doc/fio /usr/share/doc/nvme-cli /mnt/tp/tree/ 2>/dev/null
(cd /mnt/tp && find . -type f ! -name sums -print0 | sort -z | xargs -0 sha256sum > /scratch/sums)
echo "$(wc -l < /scratch/sums) files written"
umount /mnt/tp || die "umount"
nvme disconnect -n "$NQN" || die "disconnect"
check "controller gone after disconnect" test -z "$(nvme_ctrls_for_nqn "$NQN")"

step "reconnect with header and data digests, read files back"
nvme connect -t tcp -a "$A" -s "$PORT" -n "$NQN" --hostnqn "$H1" --hostid "$ID1" \
    --hdr-digest --data-digest || die "nvme connect with digests"
dev=$(nvme_ns_dev "$NQN") || die "no namespace device after reconnect"
mount "$dev" /mnt/tp || die "mount after reconnect"
check "all files read back identical (sha256)" sh -c "cd /mnt/tp && sha256sum --quiet -c /scratch/sums"
umount /mnt/tp
check "fsck clean" fsck.ext4 -n -f "$dev"

step "fio randwrite + crc32c verify (digests on)"
fio --name=verify --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --size=24M --offset=128M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --verify_backlog=0 --output-format=terse > /scratch/fio1 2>&1
check "fio randwrite+verify" test $? = 0 -a -s /scratch/fio1
nvme disconnect -n "$NQN" >/dev/null

step "fio verify-only pass after reconnect without digests"
nvme connect -t tcp -a "$A" -s "$PORT" -n "$NQN" --hostnqn "$H1" --hostid "$ID1" || die "reconnect"
dev=$(nvme_ns_dev "$NQN") || die "no namespace device"
fio --name=verify --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --size=24M --offset=128M --verify=crc32c --verify_only --verify_fatal=1 \
    --output-format=terse > /scratch/fio2 2>&1
check "fio verify-only over a new connection" test $? = 0
nvme disconnect -n "$NQN" >/dev/null

step "kernel log"
dmesg | grep -iE 'nvme|digest' | tail -n 20
check "no digest errors in kernel log" sh -c "! dmesg | grep -qi 'digest error'"
check "no I/O errors in kernel log" sh -c "! dmesg | grep -qiE 'I/O error|critical medium|blk_update_request'"
exit "$TP_FAILS"
