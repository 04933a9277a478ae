//! Issue 5 case a: the guest kernel's NVMe/RDMA initiator (`nvme-rdma`)
//! against storage-node's RDMA transport over soft-RoCE, both inside one
//! guest (guest half: `guest/sn_rdma.sh`): discovery lists the RDMA entry
//! (and the TCP one), connect, Identify, ext4 across disconnect/reconnect
//! with checksums, fio crc32c verify through both the in-capsule and the
//! RDMA READ write paths, a disconnect with I/O in flight, malformed
//! capsules and a host that dies with RDMA READs in flight
//! (`nvmf-rdma-probe`), and no RDMA kernel object of storage-node left
//! behind afterwards.

mod common;

use std::time::Duration;

use common::{GUEST_TIMEOUT, NQN};
use hw_tests::guest::Guest;
use hw_tests::{host, or_skip};

#[test]
fn kernel_rdma_initiator_vs_storage_node() -> anyhow::Result<()> {
    common::init_tracing();
    let bin = or_skip!(host::binary_with_rdma("storage-node")?);
    let probe = or_skip!(host::rdma_binary("nvmf-rdma-probe"));
    let run = or_skip!(Guest::new()
        .env("SN", bin.display())
        .env("PROBE", probe.display())
        .env("NQN", NQN)
        .timeout(GUEST_TIMEOUT.max(Duration::from_secs(300)))
        .run(include_str!("../guest/sn_rdma.sh"))?
        .into_result());
    let log = std::fs::read_to_string(run.out_dir().join("storage-node.log")).unwrap_or_default();
    eprintln!("{}\n----- storage-node log (tail) -----\n{}", run.transcript(), tail(&log, 60));
    run.assert_checks(31);
    Ok(())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
