# shellcheck shell=bash
# Guest half of hw-tests dm_events_over_rdma (issue 5 case c): the client's
# multi-process DM cluster tests (real `tidepool node run` daemons, the
# `tidepool dm` CLI as the DM application, the event-source test driver)
# run unchanged inside the guest with the nodes' DM transport on the
# soft-RoCE device's address, so node-to-node frames travel as RDMA SENDs.
# TIDEPOOL_TEST_DM_RDMA=1 makes each cluster wait until every node reaches
# every peer over RDMA, so a fall back to TCP fails instead of passing.
set -u
. "$TP_REPO/scripts/vm/guest-lib.sh"
: "${EVENTS_TEST:?path of the cluster_events test binary}"
: "${FAILURES_TEST:?path of the cluster_failures test binary}"

step "soft-RoCE"
. "$TP_REPO/hw-tests/guest/rdma_setup.sh"
export TIDEPOOL_TEST_DM_IP=$RDMA_IP TIDEPOOL_TEST_DM_RDMA=1
cd /scratch || exit 1

# run_tests BINARY TEST...: each named test alone (exact match), one check
# each; a name that matches no test (a renamed test) fails, not passes.
run_tests() {
    local bin=$1 t rc
    shift
    for t in "$@"; do
        step "$t"
        timeout 120 "$bin" --exact "$t" --test-threads 1 > "/scratch/$t.out" 2>&1
        rc=$?
        grep -v " INFO " "/scratch/$t.out" | tail -n 40
        check "over RDMA: $t" test "$rc" = 0
        check "$t ran (exactly one test)" test "$(grep -c '^test result: ok. 1 passed' "/scratch/$t.out")" = 1
    done
}

run_tests "$EVENTS_TEST" \
    events_from_several_nodes_reach_one_session_with_their_source_id \
    sync_events_block_until_the_response_and_async_never_block \
    dispositions_flow_through_session_and_fs_managers_to_mounting_nodes
run_tests "$FAILURES_TEST" \
    session_node_killed_then_reclaimed_loses_nothing \
    unreclaimed_session_fails_blocked_operations_after_the_timeout \
    source_node_killed_with_event_outstanding_is_cleaned_up

exit "$TP_FAILS"
