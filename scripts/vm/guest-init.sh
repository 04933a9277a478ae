#!/bin/busybox sh
# shellcheck shell=dash
# PID 1 of the Tidepool test guest (runs from the initramfs that
# scripts/vm/run-guest.sh builds). It joins the host's root file system (9p,
# read-only) with a tmpfs overlay, then hands over to guest-stage2.sh inside
# that root, and powers off whatever happens so qemu always exits.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "tidepool-init: stage1" > /dev/console

MARKER="@@TIDEPOOL-GUEST-EXIT@@"
fail() {
    echo "tidepool-init: FAILED: $*" > /dev/console
    echo "tidepool-init: FAILED: $*" > /dev/ttyS1
    echo "$MARKER 125" > /dev/ttyS1
    poweroff -f
    echo o > /proc/sysrq-trigger
    sleep 60
}

for m in $(cat /mod/order); do
    insmod "/mod/$m.ko" || fail "insmod $m"
done

run="" out=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        tp.run=*) run="${arg#tp.run=}" ;;
        tp.out=*) out="${arg#tp.out=}" ;;
    esac
done
[ -n "$run" ] || fail "no tp.run= on the kernel command line"

# cache=loose: the host root does not change under a short test run, and
# without it every exec and stat is a 9p round trip, which dominates boot time.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower \
    || fail "mount 9p hostroot"
mount -t tmpfs -o mode=755 tmpfs /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "mount overlay"

n=/newroot
mount -t proc proc $n/proc
mount -t sysfs sysfs $n/sys
mount -t devtmpfs devtmpfs $n/dev
mkdir -p $n/dev/pts $n/dev/shm
# devtmpfs lacks the links udev/systemd would add; bash process substitution needs /dev/fd.
ln -sf /proc/self/fd $n/dev/fd
ln -sf /proc/self/fd/0 $n/dev/stdin
ln -sf /proc/self/fd/1 $n/dev/stdout
ln -sf /proc/self/fd/2 $n/dev/stderr
mount -t devpts devpts $n/dev/pts
mount -t tmpfs tmpfs $n/dev/shm
# /run is host state that means nothing here; a fresh tmpfs also gives the
# script a scratch area whose files nvmet can back namespaces with.
mount -t tmpfs -o mode=755 tmpfs $n/run
mkdir -p $n/run/tp $n/run/tp-out $n/scratch
mount -t tmpfs tmpfs $n/scratch
if [ -n "$out" ]; then
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 hostout $n/run/tp-out \
        || fail "mount 9p hostout"
fi
cp /stage2.sh $n/run/tp/stage2.sh
# The kernel runs its module-autoload helper in this (initramfs) root, which
# has no modules; point it into the host root so ext4, crc32c and the like
# load on demand as on a normal system.
printf '#!/bin/busybox sh\necho "$*" >> /tp-modprobe.log\nexec /bin/busybox chroot /newroot /sbin/modprobe "$@" >> /tp-modprobe.log 2>&1\n' > /tp-modprobe
chmod 755 /tp-modprobe
echo /tp-modprobe > /proc/sys/kernel/modprobe

echo "tidepool-init: stage2" > /dev/console
chroot $n /bin/bash /run/tp/stage2.sh "$run" || fail "stage2 exited $?"
sync
poweroff -f
echo o > /proc/sysrq-trigger
sleep 60
