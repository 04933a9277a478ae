# shellcheck shell=bash
# Guest half of hw-tests tshark_accepts_kernel_session: capture a kernel
# initiator <-> kernel nvmet-tcp session (digests on) on the guest's loopback
# and hand the capture to the host. It is the reference the storage-node
# capture is judged against: what tshark says about the kernel's own traffic
# is tshark's baseline, not a Tidepool problem.
set -eu
. "$TP_REPO/scripts/vm/guest-lib.sh"
nqn=nqn.2026-11.io.tidepool:capture
nvmet_tcp_file_target "$nqn" /scratch/vol.img 64M 127.0.0.1 4420
dumpcap -i lo -f "tcp port 4420" -w /scratch/cap.pcapng -q 2> /scratch/dumpcap.log &
dc=$!
for _ in $(seq 100); do grep -q Capturing /scratch/dumpcap.log && break; sleep 0.1; done
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$nqn" --hdr-digest --data-digest
dev=$(nvme_ns_dev "$nqn")
head -c 256K /dev/urandom > /scratch/p
dd if=/scratch/p of="$dev" bs=64K oflag=direct status=none
dd if="$dev" of=/scratch/q bs=64K count=4 iflag=direct status=none
check "kernel loopback data intact" cmp /scratch/p /scratch/q
nvme disconnect -n "$nqn"
sleep 0.5
kill -INT "$dc"
wait "$dc" || true
cp /scratch/cap.pcapng "$TP_OUT/"
exit "$TP_FAILS"
