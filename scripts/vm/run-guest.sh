#!/usr/bin/env bash
# Boot a throw-away QEMU guest that runs the host's own root file system
# (read-only over 9p, with a tmpfs overlay for writes), run one shell script in
# it as root, print the script's output and exit with the script's exit code.
#
# Why a guest at all: the host kernel has no NVMe-oF/RDMA modules and cannot
# load any, so kernel initiators/targets and soft-RoCE only exist in here.
#
# Usage:
#   scripts/vm/run-guest.sh [options] -- 'script text'
#   scripts/vm/run-guest.sh [options] --script-file FILE
# Options:
#   --fwd HOSTPORT:GUESTPORT  forward 127.0.0.1:HOSTPORT on the host to the guest (repeatable)
#   --modules a,b,c           modprobe these in the guest before the script
#   --timeout SECONDS         whole-run bound, boot included (default 300)
#   --out DIR                 host dir shared writable as $TP_OUT in the guest
#                             (default: a fresh temp dir, removed unless kept)
#   --mem MB, --smp N         guest size (default 2048, 2)
#   --env NAME=VALUE          export into the script's environment (repeatable)
#   --console                 print the kernel console log afterwards
#   -v                        echo harness progress to stderr
# Environment:
#   TP_VM_CACHE   initramfs cache dir (default /var/tmp/tidepool-vm)
#   TP_VM_KERNEL  kernel image (default: newest /boot/vmlinuz-* with modules)
#   TP_VM_ACCEL   tcg (default; this CI's paravirtual KVM cannot run the kernel) or kvm
#   TP_VM_KEEP=1  keep the run dir (console log, script, output) for debugging
#   TP_VM_LOGLEVEL  guest kernel console loglevel (default 4; 7 shows nvme connects)
#
# Exit codes: the script's own code, or
#   77  qemu/kernel/busybox missing or qemu could not start  (tests skip)
#   124 timeout (qemu killed)
#   125 harness/guest failure before the script reported a result
#   2   usage error
set -uo pipefail

readonly EXIT_SKIP=77 EXIT_TIMEOUT=124 EXIT_HARNESS=125
readonly MARKER="@@TIDEPOOL-GUEST-EXIT@@"

fwds=() modules="" timeout_s=300 out_dir="" mem=2048 smp=2 script="" script_file=""
envs=() show_console=0 verbose=0

die() { echo "run-guest: $*" >&2; exit "$EXIT_HARNESS"; }
skip() { echo "run-guest: SKIP: $*" >&2; exit "$EXIT_SKIP"; }
log() { if [ "$verbose" = 1 ]; then echo "run-guest: $*" >&2; fi; }
usage() { sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --fwd) fwds+=("$2"); shift 2 ;;
        --modules) modules="${modules:+$modules,}$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --out) out_dir="$2"; shift 2 ;;
        --mem) mem="$2"; shift 2 ;;
        --smp) smp="$2"; shift 2 ;;
        --env) envs+=("$2"); shift 2 ;;
        --script-file) script_file="$2"; shift 2 ;;
        --console) show_console=1; shift ;;
        -v) verbose=1; shift ;;
        -h|--help) usage ;;
        --) shift; script="$*"; break ;;
        *) echo "run-guest: unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$script" ] || [ -n "$script_file" ] || { echo "run-guest: no script given" >&2; usage; }
[[ "$timeout_s" =~ ^[0-9]+$ ]] || { echo "run-guest: bad --timeout" >&2; exit 2; }
for f in "${fwds[@]}"; do
    [[ "$f" =~ ^[0-9]+:[0-9]+$ ]] || { echo "run-guest: bad --fwd $f (want HOSTPORT:GUESTPORT)" >&2; exit 2; }
done
for e in "${envs[@]}"; do
    [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "run-guest: bad --env $e" >&2; exit 2; }
done

# ---- prerequisites: anything missing here is "cannot run", not "failed" ----
qemu=$(command -v qemu-system-x86_64) || skip "qemu-system-x86_64 not installed (run scripts/vm/setup.sh)"
busybox=$(command -v busybox) || skip "busybox not installed (run scripts/vm/setup.sh)"
"$busybox" --list 2>/dev/null | grep -x insmod >/dev/null \
    || skip "$busybox is not a full busybox (install busybox-static)"
# A dynamically linked busybox would need its libraries in the initramfs too.
if ldd "$busybox" >/dev/null 2>&1; then
    skip "$busybox is dynamically linked (install busybox-static)"
fi
command -v modprobe >/dev/null || skip "modprobe (kmod) not installed"
command -v cpio >/dev/null || skip "cpio not installed"

kernel="${TP_VM_KERNEL:-}"
if [ -z "$kernel" ]; then
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
        if [ -d "/lib/modules/${k#/boot/vmlinuz-}/kernel" ]; then kernel=$k; break; fi
    done
fi
{ [ -n "$kernel" ] && [ -r "$kernel" ]; } || skip "no guest kernel in /boot with modules (install linux-image-amd64)"
kver="${kernel##*/vmlinuz-}"
[ -d "/lib/modules/$kver" ] || skip "no /lib/modules/$kver for $kernel"

accel="${TP_VM_ACCEL:-tcg}"
case "$accel" in
    tcg) cpu=max ;;
    kvm) [ -w /dev/kvm ] || skip "TP_VM_ACCEL=kvm but /dev/kvm is not usable"; cpu=host ;;
    *) echo "run-guest: TP_VM_ACCEL must be tcg or kvm" >&2; exit 2 ;;
esac

# ---- initramfs: busybox + the few modules needed to reach the host root ----
cache="${TP_VM_CACHE:-/var/tmp/tidepool-vm}"
mkdir -p "$cache" || die "cannot create cache dir $cache"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
init_src="$here/guest-init.sh"
stage2_src="$here/guest-stage2.sh"
{ [ -r "$init_src" ] && [ -r "$stage2_src" ]; } || die "missing $init_src or $stage2_src"
# Rebuild whenever the init scripts, busybox or kernel change.
key=$(cat "$init_src" "$stage2_src" "$busybox" "/lib/modules/$kver/modules.dep" | sha256sum | cut -c1-16)
initrd="$cache/initramfs-$kver-$key.cpio.gz"

build_initramfs() {
    local tmp
    tmp=$(mktemp -d "$cache/build.XXXXXX") || return 1
    (
        set -e
        root="$tmp/root"
        mkdir -p "$root"/{bin,dev,proc,sys,newroot,lower,rw,mod}
        cp "$busybox" "$root/bin/busybox"
        cp "$init_src" "$root/init"
        cp "$stage2_src" "$root/stage2.sh"
        chmod 755 "$root/init" "$root/stage2.sh"
        : > "$root/mod/order"
        for m in virtio_pci 9pnet_virtio 9p overlay; do
            modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
        done | awk '!seen[$0]++' | while read -r ko; do
            case "$ko" in
                *.ko) cp "$ko" "$root/mod/" ;;
                *.ko.xz) xz -dc "$ko" > "$root/mod/$(basename "${ko%.xz}")" ;;
                *.ko.zst) zstd -qdc "$ko" > "$root/mod/$(basename "${ko%.zst}")" ;;
                *) echo "unexpected module file $ko" >&2; exit 1 ;;
            esac
            basename "${ko%.*}" | sed 's/\.ko$//' >> "$root/mod/order"
        done
        [ -s "$root/mod/order" ]
        (cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 > "$tmp/initrd"
    ) || { rm -rf "$tmp"; return 1; }
    # rename(2) is atomic, so concurrent runs never see a half-written image.
    mv -f "$tmp/initrd" "$initrd" && rm -rf "$tmp"
    # Images for older init scripts of this kernel are dead weight now.
    find "$cache" -maxdepth 1 -name "initramfs-$kver-*.cpio.gz" ! -name "${initrd##*/}" -delete
}
if [ ! -s "$initrd" ]; then
    log "building $initrd"
    build_initramfs || die "initramfs build failed"
fi

# ---- per-run directory ----
run=$(mktemp -d "${TMPDIR:-/tmp}/tidepool-vm-run.XXXXXX") || die "mktemp failed"
# The guest reads the run dir through the read-only host root, so it must be
# world-readable.
chmod 755 "$run"
if [ -z "$out_dir" ]; then out_dir="$run/out"; fi
mkdir -p "$out_dir" || die "cannot create $out_dir"
out_dir="$(cd "$out_dir" && pwd)"
{
    for e in "${envs[@]}"; do printf 'export %q\n' "$e"; done
    if [ -n "$script_file" ]; then cat "$script_file" || exit 2; else printf '%s\n' "$script"; fi
} > "$run/script.sh" || die "cannot read script"
tr ',' '\n' <<<"$modules" | sed '/^$/d' > "$run/modules"

qpid=""
tail_pid=""
cleanup() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill "$qpid" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$qpid" 2>/dev/null
    fi
    if [ -n "$tail_pid" ]; then kill "$tail_pid" 2>/dev/null; wait "$tail_pid" 2>/dev/null; fi
    if [ "${TP_VM_KEEP:-0}" = 1 ]; then
        echo "run-guest: kept run dir $run" >&2
    else
        rm -rf "$run"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

netdev="user,id=n0"
for f in "${fwds[@]}"; do netdev+=",hostfwd=tcp:127.0.0.1:${f%%:*}-:${f##*:}"; done

: > "$run/console.log"
: > "$run/output.log"
# ttyS0 carries the kernel console (kept for diagnosis); ttyS1 carries only the
# script's output and the exit marker, so kernel messages never interleave.
# shellcheck disable=SC2054 # the commas are qemu option syntax
qemu_args=(
    -name tidepool-guest
    -machine q35 -accel "$accel" -cpu "$cpu" -smp "$smp" -m "$mem"
    -nodefaults -display none -no-reboot
    -kernel "$kernel" -initrd "$initrd"
    -append "console=ttyS0,115200 loglevel=${TP_VM_LOGLEVEL:-4} panic=-1 tp.run=$run tp.out=$out_dir"
    -serial "file:$run/console.log"
    -serial "file:$run/output.log"
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$out_dir,mount_tag=hostout,security_model=none,multidevs=remap"
    -netdev "$netdev" -device virtio-net-pci,netdev=n0
)
log "booting $kernel (accel=$accel) run dir $run"
start=$(date +%s)
"$qemu" "${qemu_args[@]}" 2> "$run/qemu.err" &
qpid=$!

# Stream the script's output live; the marker line is filtered out below.
tail -n +1 -f --pid="$qpid" "$run/output.log" 2>/dev/null | grep --line-buffered -v "^$MARKER" &
tail_pid=$!

timed_out=0
while kill -0 "$qpid" 2>/dev/null; do
    if [ $(( $(date +%s) - start )) -ge "$timeout_s" ]; then timed_out=1; break; fi
    sleep 0.5
done
if [ "$timed_out" = 1 ]; then
    kill "$qpid" 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$qpid" 2>/dev/null
fi
wait "$qpid" 2>/dev/null
qrc=$?
qpid=""
# Let tail flush whatever the guest wrote last.
wait "$tail_pid" 2>/dev/null
tail_pid=""
elapsed=$(( $(date +%s) - start ))

booted=0
grep -q "tidepool-init: stage1" "$run/console.log" && booted=1
rc_line=$(grep -a "^$MARKER" "$run/output.log" | tail -n 1 | tr -d '\r')

if [ "$show_console" = 1 ]; then
    echo "----- guest console -----" >&2; cat "$run/console.log" >&2; echo "-------------------------" >&2
fi
if [ "$timed_out" = 1 ]; then
    echo "run-guest: TIMEOUT after ${timeout_s}s; console tail:" >&2
    tail -n 30 "$run/console.log" >&2
    exit "$EXIT_TIMEOUT"
fi
if [ -n "$rc_line" ]; then
    rc="${rc_line#"$MARKER" }"
    log "guest script exited $rc after ${elapsed}s"
    [[ "$rc" =~ ^[0-9]+$ ]] || die "garbled exit marker: $rc_line"
    exit "$rc"
fi
if [ "$booted" = 0 ] && [ "$qrc" != 0 ]; then
    skip "qemu could not start (exit $qrc): $(head -c 2000 "$run/qemu.err")"
fi
echo "run-guest: guest ended without reporting a result (qemu exit $qrc, ${elapsed}s)" >&2
cat "$run/qemu.err" >&2
echo "----- console tail -----" >&2
tail -n 40 "$run/console.log" >&2
exit "$EXIT_HARNESS"
