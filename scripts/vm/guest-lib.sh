# shellcheck shell=bash
# Shell helpers for scripts that run inside the Tidepool test guest
# (source it: `. scripts/vm/guest-lib.sh`; the guest sees the repo at the
# host's path). They drive the kernel's nvmet target through configfs and the
# kernel initiator through nvme-cli.

NVMET_CFG=/sys/kernel/config/nvmet

# nvmet_file_target TRTYPE NQN FILE SIZE ADDR PORT [PORTID]
# Export FILE (created with SIZE if missing) as namespace 1 of NQN on a
# TRTYPE (tcp, rdma) port, allowing any host. buffered_io=1 because the
# backing file lives on tmpfs, which has no O_DIRECT.
nvmet_file_target() {
    local trtype=$1 nqn=$2 file=$3 size=$4 addr=$5 port=$6 portid=${7:-1}
    local s=$NVMET_CFG/subsystems/$nqn p=$NVMET_CFG/ports/$portid
    [ -e "$file" ] || truncate -s "$size" "$file" || return 1
    mkdir "$s" || return 1
    echo 1 > "$s/attr_allow_any_host"
    mkdir "$s/namespaces/1"
    echo "$file" > "$s/namespaces/1/device_path"
    echo 1 > "$s/namespaces/1/buffered_io"
    echo 1 > "$s/namespaces/1/enable" || return 1
    mkdir -p "$p"
    echo "$trtype" > "$p/addr_trtype"
    echo ipv4 > "$p/addr_adrfam"
    echo "$addr" > "$p/addr_traddr"
    echo "$port" > "$p/addr_trsvcid"
    ln -s "$s" "$p/subsystems/$nqn" || return 1
}

# nvmet_tcp_file_target NQN FILE SIZE ADDR PORT [PORTID]: nvmet_file_target on TCP.
nvmet_tcp_file_target() {
    nvmet_file_target tcp "$@"
}

# nvmet_teardown: undo every nvmet_file_target (order matters to configfs).
nvmet_teardown() {
    local p s
    for p in "$NVMET_CFG"/ports/*; do
        [ -d "$p" ] || continue
        rm -f "$p"/subsystems/* && rmdir "$p"
    done
    for s in "$NVMET_CFG"/subsystems/*; do
        [ -d "$s" ] || continue
        echo 0 > "$s/namespaces/1/enable" 2>/dev/null
        rmdir "$s"/namespaces/* 2>/dev/null
        rmdir "$s"
    done
}

# nvme_ctrl_for_nqn NQN: print the first kernel controller name (nvme0...) of
# NQN. Without udev there are no by-id links, so look it up in sysfs.
nvme_ctrls_for_nqn() {
    local c
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c/subsysnqn" ] || continue
        [ "$(cat "$c/subsysnqn")" = "$1" ] && basename "$c"
    done
}

# nvme_ns_dev NQN [NSID]: wait up to 10 s for the namespace block device of
# NQN to appear and print its /dev path. With native multipath (Debian's
# default), namespaces are named after the subsystem instance, not the
# controller, so search by the subsystem's nqn.
nvme_ns_dev() {
    local nqn=$1 nsid=${2:-1} s b
    for _ in $(seq 100); do
        for s in /sys/class/nvme-subsystem/nvme-subsys*; do
            [ -e "$s/subsysnqn" ] || continue
            [ "$(cat "$s/subsysnqn")" = "$nqn" ] || continue
            for b in "$s"/nvme*n*; do
                [ -e "$b/nsid" ] || continue
                if [ "$(cat "$b/nsid")" = "$nsid" ] && [ -b "/dev/$(basename "$b")" ]; then
                    echo "/dev/$(basename "$b")"
                    return 0
                fi
            done
        done
        sleep 0.1
    done
    echo "nvme_ns_dev: no namespace $nsid for $nqn" >&2
    return 1
}

# nvme_ctrl_for_host NQN HOSTNQN: the controller connected to NQN as HOSTNQN.
nvme_ctrl_for_host() {
    local c
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c/subsysnqn" ] || continue
        [ "$(cat "$c/subsysnqn")" = "$1" ] && [ "$(cat "$c/hostnqn" 2>/dev/null)" = "$2" ] && basename "$c"
    done
}

# nvme_ctrl_ns_dev CTRL [NSID]: the namespace block device of one controller.
# Only meaningful with nvme_core multipath=N, where each controller gets its
# own /dev/nvmeXnY; this is how one guest plays two different hosts.
nvme_ctrl_ns_dev() {
    local ctrl=$1 nsid=${2:-1} b
    for _ in $(seq 100); do
        for b in /sys/class/nvme/"$ctrl"/nvme*n*; do
            [ -e "$b/nsid" ] || continue
            if [ "$(cat "$b/nsid")" = "$nsid" ] && [ -b "/dev/$(basename "$b")" ]; then
                echo "/dev/$(basename "$b")"
                return 0
            fi
        done
        sleep 0.1
    done
    echo "nvme_ctrl_ns_dev: no namespace $nsid on $ctrl" >&2
    return 1
}

# nvme_raw_connect OPTIONS: connect through /dev/nvme-fabrics directly, e.g.
# "transport=tcp,traddr=A,trsvcid=P,nqn=N,hostnqn=H,hostid=I". nvme-cli 2.3
# refuses a second controller to the same port and subsystem as "already
# connected" even with another host NQN and --duplicate-connect; the kernel
# itself compares host NQNs too and accepts it. Prints the kernel's reply.
nvme_raw_connect() {
    local reply
    exec 3<>/dev/nvme-fabrics || return 1
    if ! printf '%s' "$1" >&3; then exec 3>&-; return 1; fi
    read -r reply <&3
    exec 3>&-
    echo "$reply"
}

# step NAME: announce a step so a failing run shows where it stopped.
step() { echo "=== [${SECONDS}s] $*"; }

# check COND-DESCRIPTION CMD...: run CMD, print PASS/FAIL, remember failures.
TP_FAILS=0
check() {
    local what=$1; shift
    if "$@"; then echo "PASS: $what"; else echo "FAIL: $what"; TP_FAILS=$((TP_FAILS + 1)); fi
}
