//! Issue 5 case b: Tidepool's user-space NVMe/RDMA initiator over soft-RoCE
//! in the guest, against the guest kernel's nvmet-rdma target (the
//! reference) and then against storage-node's RDMA transport (guest half:
//! `guest/tidepool_rdma_initiator.sh`): discovery, Identify, in-capsule,
//! slot and large-region writes read back and found in the backing file,
//! and a depth-32 benchmark run on each.

mod common;

use std::time::Duration;

use common::{GUEST_TIMEOUT, NQN};
use hw_tests::guest::Guest;
use hw_tests::{host, or_skip};

#[test]
fn tidepool_rdma_initiator_vs_kernel_target_and_storage_node() -> anyhow::Result<()> {
    common::init_tracing();
    let tp = or_skip!(host::binary_with_rdma("tidepool")?);
    let sn = or_skip!(host::binary_with_rdma("storage-node")?);
    let run = or_skip!(Guest::new()
        // Loaded before boot's configfs mount; nvmet-rdma binds to rxe0
        // once the script makes it.
        .module("nvmet")
        .module("nvmet-rdma")
        .env("TP", tp.display())
        .env("SN", sn.display())
        .env("NQN", NQN)
        .timeout(GUEST_TIMEOUT.max(Duration::from_secs(240)))
        .run(include_str!("../guest/tidepool_rdma_initiator.sh"))?
        .into_result());
    eprintln!("{}", run.transcript());
    // soft-RoCE (2), discovery (2), identify (2), 3 sizes x 3 checks on
    // each target (18), two kernel bench runs, storage-node: listener,
    // identify, bench, no panic (4), kernel log (1).
    run.assert_checks(31);
    Ok(())
}
