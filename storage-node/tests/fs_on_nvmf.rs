//! The file system's format and journal on a real shared volume: mkfs and
//! metadata transactions from one host, a crash before anything is written
//! home, and a second host (the next manager) replaying the journal.

mod common;

use common::{Node, NQN};
use nvmf::{ConnectOpts, Controller};
use std::sync::Arc;
use tpfs::blockdev::{BlockDev, NvmfDev};
use tpfs::journal::Journal;
use tpfs::mkfs;

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

/// The file system mounted through FUSE on a storage-node volume: POSIX
/// calls and ordinary tools work, and the tree is there for the next host
/// that mounts the volume.
#[test]
fn fuse_mount_on_a_shared_volume() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !common::fuse_available() {
        return;
    }
    let node = Node::start("64M", &["--allow-any-host"]);
    let mnt = tempfile::tempdir().unwrap();
    let connect = |n: &str| {
        let c = Arc::new(Controller::connect(&node.addr, NQN, &ConnectOpts::default().with_hostnqn(n)).unwrap());
        Arc::new(NvmfDev::new(c, 1, 4096).unwrap()) as Arc<dyn BlockDev>
    };
    let dev = connect("nqn.2026-11.io.tidepool:fuse-1");
    mkfs::mkfs(&*dev, &mkfs::MkfsOpts::default()).unwrap();
    let session = tpfs::fuse::spawn_mount(dev, mnt.path(), None).unwrap();
    let p = |s: &str| mnt.path().join(s);
    std::fs::create_dir(p("dir")).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(p("dir/big"), &data).unwrap();
    assert_eq!(std::fs::read(p("dir/big")).unwrap(), data);
    // Partial overwrite in the middle of a block, and a sparse extension.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(p("dir/big")).unwrap();
        f.write_all_at(b"hello", 5000).unwrap();
        f.write_all_at(b"tail", 1_000_000).unwrap();
    }
    let back = std::fs::read(p("dir/big")).unwrap();
    assert_eq!(back.len(), 1_000_004);
    assert_eq!(&back[5000..5005], b"hello");
    assert_eq!(&back[..5000], &data[..5000]);
    assert!(back[300_000..1_000_000].iter().all(|&b| b == 0), "the hole reads as zeroes");
    std::fs::rename(p("dir/big"), p("moved")).unwrap();
    std::fs::hard_link(p("moved"), p("dir/link")).unwrap();
    assert_eq!(std::fs::metadata(p("moved")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("moved", p("sym")).unwrap();
    assert_eq!(std::fs::read_link(p("sym")).unwrap().to_str(), Some("moved"));
    std::fs::set_permissions(p("moved"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::OpenOptions::new().write(true).open(p("moved")).unwrap().set_len(10).unwrap();
    assert_eq!(std::fs::read(p("moved")).unwrap(), &back[..10]);
    // Ordinary tools.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("cp -r dir copy && ls copy && cat sym | wc -c")
        .current_dir(mnt.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "link\n10\n");
    assert_eq!(std::fs::remove_dir(p("dir")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    std::fs::remove_file(p("dir/link")).unwrap();
    std::fs::remove_dir(p("dir")).unwrap();
    drop(session);

    // Another host mounts the same volume and finds the tree.
    let dev = connect("nqn.2026-11.io.tidepool:fuse-2");
    let session = tpfs::fuse::spawn_mount(dev, mnt.path(), None).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(mnt.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, vec!["copy", "moved", "sym"]);
    assert_eq!(std::fs::metadata(p("moved")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(p("copy/link")).unwrap(), &back[..10], "cp copied the hard link after the truncate");
    drop(session);
}
