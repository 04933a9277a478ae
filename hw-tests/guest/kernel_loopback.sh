# shellcheck shell=bash
# Guest half of hw-tests kernel_loopback_sanity: kernel nvmet-tcp target and
# kernel nvme-tcp initiator in one guest, data written through the initiator
# must come back identical and must really be in the target's backing file.
set -eu
. "$TP_REPO/scripts/vm/guest-lib.sh"
nqn=nqn.2026-11.io.tidepool:loopback
step "configure nvmet-tcp on 127.0.0.1:4420"
nvmet_tcp_file_target "$nqn" /scratch/vol.img 64M 127.0.0.1 4420
step "connect"
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$nqn"
dev=$(nvme_ns_dev "$nqn")
echo "namespace: $dev size $(blockdev --getsize64 "$dev")"
step "write 4 MiB pattern at 1 MiB offset"
head -c 4M /dev/urandom > /scratch/pattern
dd if=/scratch/pattern of="$dev" bs=1M seek=1 oflag=direct conv=fsync status=none
step "read back"
dd if="$dev" of=/scratch/back bs=1M skip=1 count=4 iflag=direct status=none
check "read-back matches pattern" cmp /scratch/pattern /scratch/back
sync
check "target backing file holds pattern" cmp /scratch/pattern <(dd if=/scratch/vol.img bs=1M skip=1 count=4 status=none)
check "device size is 64 MiB" test "$(blockdev --getsize64 "$dev")" = 67108864
step "disconnect"
nvme disconnect -n "$nqn"
nvmet_teardown
echo "sha256 $(sha256sum < /scratch/pattern | cut -c1-64)"
exit "$TP_FAILS"
