# shellcheck shell=bash
# Guest half of hw-tests storage_node_shared_namespace_and_reservations: two
# host NQNs (two controllers, one per "host") on the same namespace of
# storage-node ($TP_HOST_IP:$PORT): each sees the other's writes, and NVMe
# reservations fence a non-holder per the spec.
# nvme_core multipath=N gives each controller its own /dev/nvmeXn1, which is
# how one guest plays two hosts.
set -u
. "$TP_REPO/scripts/vm/guest-lib.sh"
A=$TP_HOST_IP
# H1/ID1, H2/ID2 (the storage-node's allow-list) and H3/ID3 (not on it)
# come from the test.
K1=0xa1a1 K2=0xb2b2
die() { echo "FAIL: $*"; dmesg | tail -n 20; exit 1; }

modprobe nvme_core multipath=N || die "modprobe nvme_core multipath=N"
modprobe nvme-tcp || die "modprobe nvme-tcp"

step "a host NQN missing from the allow-list is refused"
not() { ! "$@"; }
check "host 3 (not allowed) cannot connect" \
    not nvme connect -t tcp -a "$A" -s "$PORT" -n "$NQN" --hostnqn "$H3" --hostid "$ID3"
check "no controller left behind by the refused connect" test -z "$(nvme_ctrls_for_nqn "$NQN")"

step "connect host 1 (digests on) and host 2 (digests off)"
nvme connect -t tcp -a "$A" -s "$PORT" -n "$NQN" --hostnqn "$H1" --hostid "$ID1" \
    --hdr-digest --data-digest || die "connect host 1"
# Not nvme-cli: see nvme_raw_connect for why.
nvme_raw_connect "transport=tcp,traddr=$A,trsvcid=$PORT,nqn=$NQN,hostnqn=$H2,hostid=$ID2" \
    || die "connect host 2"
c1=$(nvme_ctrl_for_host "$NQN" "$H1"); c2=$(nvme_ctrl_for_host "$NQN" "$H2")
d1=$(nvme_ctrl_ns_dev "$c1") || die "no namespace on $c1"
d2=$(nvme_ctrl_ns_dev "$c2") || die "no namespace on $c2"
echo "host 1: $c1 $d1   host 2: $c2 $d2"
check "two distinct controllers" test -n "$c1" -a -n "$c2" -a "$c1" != "$c2"
check "distinct controller IDs" test "$(cat /sys/class/nvme/"$c1"/cntlid)" != "$(cat /sys/class/nvme/"$c2"/cntlid)"

step "each host sees the other's writes"
head -c 1M /dev/urandom > /scratch/p1; head -c 1M /dev/urandom > /scratch/p2
dd if=/scratch/p1 of="$d1" bs=1M seek=4 oflag=direct status=none
check "host 2 reads host 1's write" cmp /scratch/p1 <(dd if="$d2" bs=1M skip=4 count=1 iflag=direct status=none)
dd if=/scratch/p2 of="$d2" bs=1M seek=5 oflag=direct status=none
check "host 1 reads host 2's write" cmp /scratch/p2 <(dd if="$d1" bs=1M skip=5 count=1 iflag=direct status=none)
dd if=/scratch/p2 of="$d2" bs=1M seek=4 oflag=direct status=none
check "host 1 sees host 2 overwrite its data" cmp /scratch/p2 <(dd if="$d1" bs=1M skip=4 count=1 iflag=direct status=none)

# report DEV: reservation status (extended data structure) as JSON.
report() { nvme resv-report "$1" -n 1 --eds -o json; }
# rkeys DEV: sorted registrant keys.
rkeys() { report "$1" | jq -r '[.regctlext[].rkey] | sort | map(tostring) | join(",")'; }
# io DEV read|write: one-block passthrough I/O at LBA 0; prints nvme-cli's
# status text (the NVMe status, not a block-layer errno).
head -c 512 /dev/urandom > /scratch/blk
io() {
    local f=/scratch/blk
    if [ "$2" = read ]; then f=/scratch/blk.in; fi
    nvme "$2" "$1" -n 1 -s 0 -c 0 -z 512 -d "$f" 2>&1
}

step "register keys"
check "host 1 registers" nvme resv-register "$d1" -n 1 --nrkey=$K1 --rrega=0
check "host 2 registers" nvme resv-register "$d2" -n 1 --nrkey=$K2 --rrega=0
report "$d1" | tee /scratch/r1
check "report lists two registrants" test "$(jq .regctl /scratch/r1)" = 2
check "report shows both keys" test "$(rkeys "$d1")" = "$(printf '%s\n' $((K1)) $((K2)) | sort | paste -sd,)"
check "no reservation held yet" test "$(jq .rtype /scratch/r1)" = 0
check "re-register with another key (no replace) is refused" not nvme resv-register "$d1" -n 1 --nrkey=0x1234 --rrega=0

step "host 1 acquires Write Exclusive"
check "host 1 acquires (rtype 1)" nvme resv-acquire "$d1" -n 1 --crkey=$K1 --rtype=1 --racqa=0
report "$d2" | tee /scratch/r2
check "report: type Write Exclusive" test "$(jq .rtype /scratch/r2)" = 1
check "report: host 1's controller holds it" test "$(jq --argjson c "$(cat /sys/class/nvme/"$c1"/cntlid)" '[.regctlext[] | select(.cntlid == $c) | .rcsts % 2] | .[0]' /scratch/r2)" = 1
check "report: host 2 does not hold it" test "$(jq --argjson c "$(cat /sys/class/nvme/"$c2"/cntlid)" '[.regctlext[] | select(.cntlid == $c) | .rcsts % 2] | .[0]' /scratch/r2)" = 0
check "report: holder's hostid is host 1's" test "$(jq -r '.regctlext[] | select(.rcsts % 2 == 1) | .hostid' /scratch/r2)" = "${ID1//-/}"
out=$(io "$d2" write); echo "host 2 write: $out"
check "host 2 (non-holder) write gets Reservation Conflict" grep -qiE 'reservation.?conflict|0x83' <<<"$out"
out=$(io "$d2" read); echo "host 2 read: $out"
check "host 2 (non-holder) may still read under Write Exclusive" not grep -qi conflict <<<"$out"
check "host 1 (holder) writes" nvme write "$d1" -n 1 -s 0 -c 0 -z 512 -d /scratch/blk
check "host 2 cannot acquire a held reservation" not nvme resv-acquire "$d2" -n 1 --crkey=$K2 --rtype=1 --racqa=0

step "host 2 preempts host 1 (fencing)"
check "host 2 preempts" nvme resv-acquire "$d2" -n 1 --crkey=$K2 --prkey=$K1 --rtype=1 --racqa=1
report "$d2" | tee /scratch/r3
check "after preempt: one registrant" test "$(jq .regctl /scratch/r3)" = 1
check "after preempt: host 2 holds it" test "$(jq -r '.regctlext[] | select(.rcsts % 2 == 1) | .hostid' /scratch/r3)" = "${ID2//-/}"
out=$(io "$d1" write); echo "host 1 write: $out"
check "fenced host 1 write gets Reservation Conflict" grep -qiE 'reservation.?conflict|0x83' <<<"$out"

step "release and unregister"
check "host 2 releases" nvme resv-release "$d2" -n 1 --crkey=$K2 --rtype=1 --rrela=0
check "released: rtype 0" test "$(report "$d2" | jq .rtype)" = 0
check "host 1 writes again after release" nvme write "$d1" -n 1 -s 0 -c 0 -z 512 -d /scratch/blk
check "host 2 unregisters" nvme resv-register "$d2" -n 1 --crkey=$K2 --rrega=1
check "no registrants left" test "$(report "$d2" | jq .regctl)" = 0

nvme disconnect -n "$NQN" >/dev/null
exit "$TP_FAILS"
