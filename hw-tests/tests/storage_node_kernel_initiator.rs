//! The guest kernel's NVMe/TCP initiator (nvme-cli, ext4, fio) against
//! Tidepool's storage-node running on the host, reached from the guest at
//! 10.0.2.2. The kernel initiator is the reference client: anything it
//! rejects or corrupts is a storage-node bug.

mod common;

use common::{StorageNode, GUEST_TIMEOUT, NQN};
use hw_tests::guest::Guest;
use hw_tests::or_skip;

fn guest_for(sn: &StorageNode) -> Guest {
    Guest::new().env("NQN", NQN).env("PORT", sn.port).env("DPORT", sn.discovery_port).timeout(GUEST_TIMEOUT)
}

/// Discovery, identify, ext4 across disconnect/reconnect (with and without
/// header/data digests), fio crc32c verify, and a clean kernel log.
#[test]
fn kernel_initiator_vs_storage_node() -> anyhow::Result<()> {
    common::init_tracing();
    let dir = tempfile::tempdir()?;
    let sn = or_skip!(StorageNode::start(dir.path(), &[])?);
    let run = or_skip!(guest_for(&sn).module("nvme-tcp").run(include_str!("../guest/sn_datapath.sh"))?.into_result());
    eprintln!("{}\n----- storage-node log -----\n{}", run.transcript(), sn.daemon.log());
    run.assert_checks(18);
    Ok(())
}

/// The host allow-list is enforced; two allowed host NQNs on one namespace
/// see each other's writes; reservations
/// (register, acquire Write Exclusive, conflict for the non-holder, preempt,
/// release) behave per the NVMe spec.
#[test]
fn storage_node_shared_namespace_and_reservations() -> anyhow::Result<()> {
    common::init_tracing();
    let dir = tempfile::tempdir()?;
    let [h1, h2, h3] = ["a001", "b002", "c003"].map(|x| format!("7f1c3a52-0000-4000-8000-00000000{x}"));
    let nqn = |id: &str| format!("nqn.2014-08.org.nvmexpress:uuid:{id}");
    let sn = or_skip!(StorageNode::start(dir.path(), &["--allow-host", &nqn(&h1), "--allow-host", &nqn(&h2)])?);
    let run = or_skip!(guest_for(&sn)
        .env("H1", nqn(&h1))
        .env("ID1", &h1)
        .env("H2", nqn(&h2))
        .env("ID2", &h2)
        .env("H3", nqn(&h3))
        .env("ID3", &h3)
        .run(include_str!("../guest/sn_multihost_resv.sh"))?
        .into_result());
    eprintln!("{}\n----- storage-node log -----\n{}", run.transcript(), sn.daemon.log());
    run.assert_checks(31);
    Ok(())
}
