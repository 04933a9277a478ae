# shellcheck shell=bash
# Sourced by the rdma_* guest scripts: make the soft-RoCE device rxe0 on
# eth0 and check libibverbs sees it (needs Debian's ibverbs-providers for
# the rxe user-space driver). Sets RDMA_DEV and RDMA_IP.
RDMA_DEV=rxe0
RDMA_IP=$TP_GUEST_IP
# rdma_rxe needs a crc32 implementation the Debian kernel builds as a module.
modprobe crc32_generic
if ! modprobe rdma_rxe; then
    echo "FAIL: modprobe rdma_rxe"; exit 1
fi
if ! rdma link add "$RDMA_DEV" type rxe netdev eth0; then
    echo "FAIL: rdma link add $RDMA_DEV"; exit 1
fi
for _ in $(seq 50); do
    rdma link show "$RDMA_DEV/1" 2>/dev/null | grep -q "state ACTIVE" && break
    sleep 0.1
done
check "soft-RoCE $RDMA_DEV is ACTIVE on eth0" bash -c "rdma link show $RDMA_DEV/1 | grep -q 'state ACTIVE'"
check "libibverbs lists $RDMA_DEV (ibverbs-providers installed)" bash -c "ibv_devices | grep -qw $RDMA_DEV"
export TIDEPOOL_RDMA_DEV=$RDMA_DEV
