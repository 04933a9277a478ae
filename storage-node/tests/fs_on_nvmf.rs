//! The file system's format and journal on a real shared volume: mkfs and
//! metadata transactions from one host, a crash before anything is written
//! home, and a second host (the next manager) replaying the journal.

mod common;

use client::fs::blockdev::{BlockDev, NvmfDev};
use client::fs::journal::Journal;
use client::fs::mkfs;
use client::nvmf::{ConnectOpts, Controller};
use common::{Node, NQN};
use std::sync::Arc;

#[test]
fn a_second_host_replays_the_first_host_s_journal() {
    let node = Node::start("64M", &["--allow-any-host"]);
    let host =
        |n: &str| Arc::new(Controller::connect(&node.addr, NQN, &ConnectOpts::default().with_hostnqn(n)).unwrap());
    let a = host("nqn.2026-11.io.tidepool:mgr-1");
    let dev: Arc<dyn BlockDev> = Arc::new(NvmfDev::new(a.clone(), 1, 4096).unwrap());
    let sb = mkfs::mkfs(&*dev, &mkfs::MkfsOpts { label: "shared".into(), ..Default::default() }).unwrap();
    let (js, jn, data) = (sb.journal_start.get(), sb.journal_blocks.get(), sb.data_start.get());
    let (mut j, n) = Journal::open(dev.clone(), js, jn).unwrap();
    assert_eq!(n, 0);
    for i in 0..3u8 {
        j.commit(&[(data + i as u64, &vec![i + 1; 4096]), (data + 10, &vec![0xe0 + i; 4096])]).unwrap();
    }
    // Manager 1 dies with its transactions only in the journal.
    drop(j);
    drop(dev);
    drop(a);

    let b = host("nqn.2026-11.io.tidepool:mgr-2");
    let dev: Arc<dyn BlockDev> = Arc::new(NvmfDev::new(b, 1, 4096).unwrap());
    assert_eq!(mkfs::read_superblock(&*dev).unwrap().fsid, sb.fsid);
    let (_, n) = Journal::open(dev.clone(), js, jn).unwrap();
    assert_eq!(n, 3);
    let mut buf = vec![0u8; 4096];
    for i in 0..3u64 {
        dev.read(data + i, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == i as u8 + 1));
    }
    dev.read(data + 10, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0xe2), "the last transaction wins");
}
