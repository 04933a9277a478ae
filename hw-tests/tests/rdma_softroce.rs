//! Tidepool's RDMA layer (`rdma` crate) on soft-RoCE in the guest, all in
//! one boot (guest half: `guest/rdma_check.sh`; both processes are
//! `rdma-check`):
//! - device opened by name (`TIDEPOOL_RDMA_DEV`), memory region bounds, an
//!   idle completion-channel wait; an unknown device fails cleanly;
//! - an idle server sleeps instead of spinning;
//! - a connect to a port nobody listens on fails cleanly;
//! - RDMA CM reject with private data; accept with private data carrying an
//!   rkey; oversized private data refused;
//! - send/recv ping-pong with every byte checked; receive queue depth and
//!   flush accounting;
//! - RDMA READ and WRITE checked on both sides; a bad rkey fails with a
//!   remote access error and the rest flushes;
//! - a killed client: the server drains its flushes, leaks no kernel object
//!   and keeps serving; a killed server: the client sees the disconnect and
//!   drains.

mod common;

use hw_tests::guest::Guest;
use hw_tests::{host, or_skip};

#[test]
fn rdma_cm_and_verbs_on_soft_roce() -> anyhow::Result<()> {
    common::init_tracing();
    let bin = or_skip!(host::rdma_binary("rdma-check"));
    let run = or_skip!(Guest::new()
        .env("RDMA_CHECK", bin.display())
        .timeout(common::GUEST_TIMEOUT)
        .run(include_str!("../guest/rdma_check.sh"))?
        .into_result());
    eprintln!("{}", run.transcript());
    // Every scenario's PASS line (see rdma_check.sh): a script that stopped
    // early or skipped a scenario cannot pass.
    run.assert_checks(21);
    Ok(())
}
