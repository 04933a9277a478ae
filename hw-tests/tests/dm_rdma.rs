//! Issue 5 case c: DM events between node processes over RDMA. The client
//! crate's own multi-process cluster tests (synchronous events answered
//! CONTINUE and ABORT, events from several nodes into one session,
//! dispositions distributed, a session node killed and reclaimed or not, a
//! source node killed with its event outstanding) run unchanged inside the
//! soft-RoCE guest with every node's DM transport on the RDMA device's
//! address, and each cluster must reach every peer over RDMA before the
//! test starts (guest half: `guest/dm_rdma.sh`). On a machine with a real
//! RDMA NIC the same tests run outside the guest with `TIDEPOOL_TEST_DM_IP`
//! set to its address and `TIDEPOOL_TEST_DM_RDMA=1`.

mod common;

use std::time::Duration;

use hw_tests::guest::Guest;
use hw_tests::{host, or_skip};

#[test]
fn dm_events_over_rdma_between_node_processes() -> anyhow::Result<()> {
    common::init_tracing();
    // The test binaries start this one (the cluster harness's `tidepool`).
    or_skip!(host::binary_with_rdma("tidepool")?);
    let events = or_skip!(host::test_binary("cluster_events"));
    let failures = or_skip!(host::test_binary("cluster_failures"));
    let run = or_skip!(Guest::new()
        .env("EVENTS_TEST", events.display())
        .env("FAILURES_TEST", failures.display())
        .timeout(common::GUEST_TIMEOUT.max(Duration::from_secs(300)))
        .run(include_str!("../guest/dm_rdma.sh"))?
        .into_result());
    eprintln!("{}", run.transcript());
    // soft-RoCE (2) and six cluster tests.
    run.assert_checks(8);
    Ok(())
}
