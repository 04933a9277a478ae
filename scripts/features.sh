#!/usr/bin/env bash
# Prints the cargo feature flag that builds Tidepool with RDMA where the
# rdma-core headers and libclang are installed (nothing elsewhere), so every
# script builds the same binaries: hw-tests picks the newest build of a
# binary, and a release build without RDMA would shadow the test suite's.
if [ -e /usr/include/infiniband/verbs.h ] && [ -e /usr/include/rdma/rdma_cma.h ] && ldconfig -p | grep libclang >/dev/null; then
    echo "--features rdma/rdma,storage-node/rdma,client/rdma"
fi
