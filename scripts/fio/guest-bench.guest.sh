# shellcheck shell=bash
# Guest half of scripts/fio/guest-bench.sh (runs inside run-guest.sh).
# Both targets run at once on the guest's loopback with the same backing (a
# file on tmpfs) and the kernel initiator connected to both; each region is
# written once first so reads hit data, not holes. Rounds alternate which
# target goes first so slow drift in the (emulated, shared) machine does not
# favour either; the median of the rounds is reported.
# TRANSPORT=rdma: the same over soft-RoCE (rxe0 on eth0, so both targets
# listen on eth0's address rather than loopback) with the kernel's NVMe/RDMA
# initiator; storage-node keeps a TCP listener on loopback beside it.
set -euo pipefail
. "$TP_REPO/scripts/vm/guest-lib.sh"
TRANSPORT=${TRANSPORT:-tcp}

# fio_iops DEV RW: run one job, print its IOPS (integer).
fio_iops() {
    local dev=$1 rw=$2 j
    j=$(fio --name="$rw" --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 \
        --rw="$rw" --bs=4k --iodepth=32 --numjobs=1 --size="${SIZE_MB}M" \
        --time_based --runtime="$RUNTIME" --ramp_time=1 --norandommap --randrepeat=0 \
        --group_reporting --output-format=json) || return 1
    jq -r --arg rw "${rw#rand}" '.jobs[0][$rw].iops | floor' <<<"$j"
}

# one NAME DEV ROUND: one randread and one randwrite run, appended to results.
one() {
    local r w
    r=$(fio_iops "$2" randread)
    w=$(fio_iops "$2" randwrite)
    echo "round $3 $1: randread $r IOPS, randwrite $w IOPS"
    printf '{"target":"%s","round":%s,"randread_iops":%s,"randwrite_iops":%s}\n' "$1" "$3" "$r" "$w" >> /scratch/results
}

vol_mb=$((SIZE_MB + 16))
: > /scratch/results
declare -A dev

case "$TRANSPORT" in
    tcp) addr=127.0.0.1 sn_listen=(--listen 127.0.0.1:4421) ;;
    rdma)
        step "soft-RoCE"
        . "$TP_REPO/hw-tests/guest/rdma_setup.sh"
        addr=$RDMA_IP
        sn_listen=(--rdma "$RDMA_IP:4421" --listen 127.0.0.1:4431)
        ;;
    *) echo "TRANSPORT must be tcp or rdma, not $TRANSPORT"; exit 2 ;;
esac

step "(i) kernel nvmet-$TRANSPORT target on $addr:4420"
knqn=nqn.2026-11.io.tidepool:bench-kernel
nvmet_file_target "$TRANSPORT" "$knqn" /scratch/kernel.img "${vol_mb}M" "$addr" 4420
if ! nvme connect -t "$TRANSPORT" -a "$addr" -s 4420 -n "$knqn" >/dev/null; then
    echo "kernel nvmet-$TRANSPORT: connect failed"; dmesg | tail -n 20; exit 1
fi
dev[kernel-nvmet]=$(nvme_ns_dev "$knqn")
targets=(kernel-nvmet)

if [ -n "$SN" ]; then
    step "(ii) storage-node on $addr:4421 ($SN)"
    snqn=nqn.2026-11.io.tidepool:bench-sn
    # shellcheck disable=SC2086 # SN_EXTRA_ARGS is a word list on purpose
    "$SN" "${sn_listen[@]}" --discovery-listen "" --nqn "$snqn" \
        --file /scratch/sn.img --size "${vol_mb}M" --create --block-size 512 \
        --allow-any-host $SN_EXTRA_ARGS > /scratch/sn.log 2>&1 &
    snpid=$!
    for _ in $(seq 100); do
        if [ "$TRANSPORT" = rdma ]; then
            grep -q "NVMe/RDMA listening on $addr:4421" /scratch/sn.log && break
        else
            (exec 3<>/dev/tcp/127.0.0.1/4421) 2>/dev/null && break
        fi
        kill -0 "$snpid" 2>/dev/null || { cat /scratch/sn.log; exit 1; }
        sleep 0.1
    done
    if ! nvme connect -t "$TRANSPORT" -a "$addr" -s 4421 -n "$snqn" >/dev/null || ! dev[storage-node]=$(nvme_ns_dev "$snqn"); then
        echo "storage-node: connect failed"; tail -n 30 /scratch/sn.log; dmesg | tail -n 20; kill "$snpid"; exit 1
    fi
    targets+=(storage-node)
fi

for t in "${targets[@]}"; do
    step "$t: prefill ${SIZE_MB} MiB on ${dev[$t]}"
    dd if=/dev/urandom of="${dev[$t]}" bs=1M count="$SIZE_MB" oflag=direct status=none
done

for round in $(seq "$ROUNDS"); do
    order=("${targets[@]}")
    if [ $((round % 2)) = 0 ] && [ ${#targets[@]} = 2 ]; then order=("${targets[1]}" "${targets[0]}"); fi
    for t in "${order[@]}"; do one "$t" "${dev[$t]}" "$round"; done
done

nvme disconnect-all >/dev/null 2>&1 || true
if [ -n "${snpid:-}" ]; then kill "$snpid"; wait "$snpid" || true; fi

jq -s '.' /scratch/results > "$TP_OUT/results.json"
step "results (NVMe/${TRANSPORT^^}, kernel $(uname -r), 4 KiB, QD32, ${RUNTIME}s per job, engine $FIO_ENGINE, $(nproc) vCPU, median of $ROUNDS round(s))"
jq -r -s '
  def median: sort | .[(length - 1) / 2 | floor];
  (group_by(.target) | map({target: .[0].target,
      r: (map(.randread_iops) | median), w: (map(.randwrite_iops) | median)})) as $m
  | ($m[] | select(.target == "kernel-nvmet")) as $k
  | $m[] | "\(.target): randread \(.r) IOPS, randwrite \(.w) IOPS"
    + (if .target == "kernel-nvmet" then "  (baseline)" else
         "  ratio vs kernel: read \((.r / $k.r * 100 | round) / 100)x,"
         + " write \((.w / $k.w * 100 | round) / 100)x" end)' /scratch/results
