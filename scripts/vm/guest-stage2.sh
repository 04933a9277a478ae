#!/bin/bash
# Second stage of the Tidepool test guest, run by guest-init.sh inside the
# host's (overlaid) root: network, modules, then the user's script. Its output
# goes to ttyS1 only, so kernel console messages never mix into it.
set -u
run="$1"
MARKER="@@TIDEPOOL-GUEST-EXIT@@"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8 TP_OUT=/run/tp-out TP_SCRATCH=/scratch
export TP_GUEST_IP=10.0.2.15 TP_HOST_IP=10.0.2.2
out=/dev/ttyS1
# Raw mode: no CR added to each LF and no echo of anything qemu might send.
stty -F "$out" raw -echo 115200 2>/dev/null

fail() {
    echo "tidepool-guest: $*" > "$out"
    echo "$MARKER 125" > "$out"
    exit 0
}

# Tells a waiting host (hw_tests::guest::Guest::spawn) that the guest is up.
touch "$TP_OUT/.tp-booted" 2>/dev/null
cd /root 2>/dev/null || cd /
hostname tidepool-guest 2>/dev/null

# QEMU user networking: the host's 127.0.0.1 is 10.0.2.2 from here.
modprobe virtio_net || fail "modprobe virtio_net"
ip link set lo up
for _ in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set eth0 up || fail "no eth0"
ip addr add "$TP_GUEST_IP/24" dev eth0
ip route add default via "$TP_HOST_IP"

while read -r m; do
    [ -n "$m" ] || continue
    modprobe "$m" || fail "modprobe $m"
done < "$run/modules"
# configfs is a module here; mount it only once something (nvmet) loaded it.
if grep -qw configfs /proc/filesystems; then
    mount -t configfs configfs /sys/kernel/config
fi

bash "$run/script.sh" < /dev/null > "$out" 2>&1
rc=$?
sync
echo "$MARKER $rc" > "$out"
