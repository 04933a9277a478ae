# shellcheck shell=bash
# Guest half of hw-tests tidepool_initiator_vs_kernel_target: serve a kernel
# nvmet-tcp target on the guest's port 4420 (forwarded from the host), tell
# the host its parameters through $TP_OUT, wait for the host's initiator to
# finish, then check the host's write really landed in the backing file.
set -u
. "$TP_REPO/scripts/vm/guest-lib.sh"
die() { echo "FAIL: $*"; exit 1; }
nvmet_tcp_file_target "$NQN" /scratch/vol.img 64M 0.0.0.0 4420 || die "nvmet setup"
s=$NVMET_CFG/subsystems/$NQN
# The file backend's LBA size is the backing file's block size, capped at 4 KiB.
bs=$(stat -c %o /scratch/vol.img); [ "$bs" -gt 4096 ] && bs=4096
echo "$bs" > "$TP_OUT/lba_size"
cat "$s/attr_serial" > "$TP_OUT/serial"
# Reservations arrived in nvmet in Linux 6.13; older kernels lack resv_enable.
if [ -e "$s/namespaces/1/resv_enable" ]; then
    echo 0 > "$s/namespaces/1/enable"
    echo 1 > "$s/namespaces/1/resv_enable"
    echo 1 > "$s/namespaces/1/enable"
    touch "$TP_OUT/resv_supported"
fi
echo "nvmet ready: lba size $bs, serial $(cat "$TP_OUT/serial"), kernel $(uname -r)"
touch "$TP_OUT/ready"

for _ in $(seq 600); do [ -e "$TP_OUT/done" ] && break; sleep 0.2; done
[ -e "$TP_OUT/done" ] || die "host never signalled done"
sync
lba=$(cat "$TP_OUT/lba")
len=$(stat -c %s "$TP_OUT/pattern.bin")
check "host's write is in the backing file at LBA $lba" \
    cmp -n "$len" "$TP_OUT/pattern.bin" <(tail -c +$((lba * bs + 1)) /scratch/vol.img)
dmesg | grep -E 'nvmet' | tail -n 10
exit "$TP_FAILS"
