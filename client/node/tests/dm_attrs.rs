//! The DMAPI attribute functions on a real mount: `dm_get_fileattr`,
//! `dm_set_fileattr` (also under the caller's exclusive right),
//! `dm_get_dirattrs` and `dm_get_bulkattr` paged with cookies, checked
//! against what `stat` on the FUSE mount shows; bad arguments get errors.

use dmapi::types::{dm_at, DmRight, DmSessId, DmStat, DmToken, FsId, DM_NO_TOKEN};
use node::dm::files::{DmFs, Holder};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use tpfs::blockdev::{BlockDev, MemDev};
use tpfs::format::{region_flags, Region};
use tpfs::fuse::spawn_mount;

fn all_pages(mut f: impl FnMut(u64) -> (Vec<DmStat>, u64)) -> Vec<DmStat> {
    let (mut out, mut cookie, mut calls) = (Vec::new(), 0u64, 0);
    loop {
        let (page, next) = f(cookie);
        assert!(page.len() <= 2, "a page holds at most what was asked for");
        out.extend(page);
        calls += 1;
        if next == 0 {
            break;
        }
        cookie = next;
    }
    assert!(calls > 1, "small pages: the cookie was used");
    out
}

/// A file system made on a fresh 32 MiB memory volume, and its mount (the
/// mount is dropped first, the directory under it after).
fn fresh_mount() -> (Arc<dyn BlockDev>, tempfile::TempDir, tpfs::fuse::Mounted) {
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new(4096, 32 << 20));
    tpfs::mkfs::mkfs(&*dev, &Default::default()).unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mount = spawn_mount(dev.clone(), mnt.path(), None).unwrap();
    (dev, mnt, mount)
}

#[test]
fn file_dir_and_bulk_attributes_match_the_mount() {
    if !test_support::fuse_available() {
        return;
    }
    let (dev, mnt, mount) = fresh_mount();
    let d = mnt.path().join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("a"), vec![1u8; 100]).unwrap();
    std::fs::write(d.join("b"), vec![2u8; 5000]).unwrap();
    std::os::unix::fs::symlink("a", d.join("s")).unwrap();

    let dm = DmFs::connect(mount.manager_addr().unwrap(), dev.clone(), FsId(1), "dm-app", &Default::default(), None)
        .unwrap();
    let who = Holder::new(DmSessId(1 << 20 | 1), DmToken(5));
    let fsh = dm.path_to_fshandle(mnt.path()).unwrap();
    let (ha, hb, hd) = (
        dm.path_to_handle(&d.join("a")).unwrap(),
        dm.path_to_handle(&d.join("b")).unwrap(),
        dm.path_to_handle(&d).unwrap(),
    );

    // dm_get_bulkattr: every file of the file system, as stat shows it.
    let bulk = all_pages(|c| dm.get_bulkattr(&fsh, c, 2).unwrap());
    let by_ino: BTreeMap<u64, &DmStat> = bulk.iter().map(|s| (s.ino, s)).collect();
    assert_eq!(by_ino.len(), bulk.len(), "each file once");
    for p in [mnt.path().to_path_buf(), d.clone(), d.join("a"), d.join("b"), d.join("s")] {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let s = by_ino.get(&md.ino()).unwrap_or_else(|| panic!("{} missing from the bulk scan", p.display()));
        assert_eq!((s.size, s.mode, s.nlink as u64, s.mtime), (md.size(), md.mode(), md.nlink(), md.mtime()), "{p:?}");
        assert_eq!(s.handle.unwrap().ino().unwrap(), md.ino());
    }
    assert_eq!(bulk.len(), 5);

    // dm_get_bulkall: the same scan with one DM attribute of each file.
    dm.set_dmattr(&hb, b"hsm", b"obj-b").unwrap();
    let mut all = Vec::new();
    let mut cookie = 0;
    loop {
        let (page, next) = dm.get_bulkall(&fsh, b"hsm", cookie, 2).unwrap();
        all.extend(page);
        if next == 0 {
            break;
        }
        cookie = next;
    }
    assert_eq!(all.len(), 5);
    let with: Vec<(u64, &[u8])> = all.iter().filter_map(|(s, a)| a.as_deref().map(|a| (s.ino, a))).collect();
    assert_eq!(with, [(hb.ino().unwrap(), &b"obj-b"[..])], "only b has the attribute");
    assert_eq!(dm.get_bulkall(&fsh, b"", 0, 2).unwrap_err().errno(), libc::EINVAL);

    // dm_get_dirattrs: the directory's entries with names.
    let entries = all_pages(|c| dm.get_dirattrs(&hd, c, 2).unwrap());
    let names: Vec<&[u8]> = entries.iter().map(|s| s.compname.as_slice()).collect();
    assert_eq!(names, [&b"a"[..], b"b", b"s"]);
    assert_eq!(entries[1].size, 5000);
    assert_eq!(entries[2].mode & libc::S_IFMT, libc::S_IFLNK);

    // dm_get_fileattr and managed regions.
    let sb = dm.get_fileattr(&hb).unwrap();
    assert_eq!((sb.size, sb.pmanreg, sb.blocks), (5000, false, 16));
    // dt_change: the same until the file is written, then another.
    assert_eq!(dm.get_fileattr(&hb).unwrap().change, sb.change);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(d.join("b")).unwrap();
        f.write_all_at(&[2u8; 10], 0).unwrap();
    }
    let after = dm.get_fileattr(&hb).unwrap();
    assert_ne!(after.change, sb.change, "a write of the same size changes dt_change");
    assert_eq!(after.size, 5000);
    dm.set_region(&hb, &[Region { offset: 0, size: 0, flags: region_flags::READ }]).unwrap();
    assert!(dm.get_fileattr(&hb).unwrap().pmanreg);

    // dm_set_fileattr: what the mask names, nothing else.
    let want = DmStat { mode: 0o600, mtime: 1_000_000_000, size: 10, uid: 4242, ..Default::default() };
    dm.set_fileattr(&ha, dm_at::MODE | dm_at::MTIME | dm_at::SIZE, &want).unwrap();
    let md = std::fs::metadata(d.join("a")).unwrap();
    assert_eq!((md.permissions().mode() & 0o7777, md.mtime(), md.len(), md.uid()), (0o600, 1_000_000_000, 10, 0));
    assert_eq!(std::fs::read(d.join("a")).unwrap(), vec![1u8; 10]);
    // Grown again, the bytes past the old end read as zeroes (POSIX).
    let f = std::fs::OpenOptions::new().write(true).open(d.join("b")).unwrap();
    f.set_len(10).unwrap();
    f.set_len(5000).unwrap();
    drop(f);
    let back = std::fs::read(d.join("b")).unwrap();
    assert_eq!((&back[..10], back[10..].iter().all(|&x| x == 0)), (&[2u8; 10][..], true));
    // Under its own exclusive right (a recall restoring attributes).
    dm.request_right(who, &ha, DmRight::Excl, true).unwrap();
    dm.set_fileattr(&ha, dm_at::UID | dm_at::ATIME, &DmStat { uid: 4242, atime: 7, ..want.clone() }).unwrap();
    assert_eq!(dm.get_fileattr(&ha).unwrap().uid, 4242);
    dm.release_right(who, &ha).unwrap();
    let md = std::fs::metadata(d.join("a")).unwrap();
    assert_eq!((md.uid(), md.atime()), (4242, 7), "the mount sees it after the right is released");

    // Bad arguments: a clear error, nothing changed.
    assert_eq!(dm.set_fileattr(&ha, dm_at::CTIME, &want).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(dm.set_fileattr(&ha, 0x8000, &want).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(dm.get_dirattrs(&ha, 0, 8).unwrap_err().errno(), libc::EINVAL, "not a directory");
    assert_eq!(dm.get_bulkattr(&ha, 0, 8).unwrap_err().errno(), libc::EBADF, "a file handle is not a file system");
    assert_eq!(std::fs::metadata(d.join("a")).unwrap().len(), 10);
    drop(dm);
    drop(mount);
}

/// A memory volume that counts cache flushes, to see what
/// `dm_sync_by_handle` asks of the device.
struct CountingDev {
    inner: MemDev,
    flushes: std::sync::atomic::AtomicU64,
}

impl BlockDev for CountingDev {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn blocks(&self) -> u64 {
        self.inner.blocks()
    }
    fn read(&self, block: u64, buf: &mut [u8]) -> tpfs::Result<()> {
        self.inner.read(block, buf)
    }
    fn write(&self, block: u64, data: &[u8], fua: bool) -> tpfs::Result<()> {
        self.inner.write(block, data, fua)
    }
    fn flush(&self) -> tpfs::Result<()> {
        self.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.flush()
    }
}

/// Handles from descriptors, regions, the whole DM attribute list, rights
/// upgraded and downgraded, and `dm_sync_by_handle` making what was written
/// invisibly durable and known to the manager.
#[test]
fn handles_regions_dmattrs_rights_and_sync() {
    if !test_support::fuse_available() {
        return;
    }
    let counting = Arc::new(CountingDev { inner: MemDev::new(4096, 32 << 20), flushes: Default::default() });
    let dev: Arc<dyn BlockDev> = counting.clone();
    tpfs::mkfs::mkfs(&*dev, &Default::default()).unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mount = spawn_mount(dev.clone(), mnt.path(), None).unwrap();
    let f = mnt.path().join("f");
    std::fs::write(&f, vec![7u8; 10_000]).unwrap();
    let dm = DmFs::connect(mount.manager_addr().unwrap(), dev.clone(), FsId(1), "dm-app", &Default::default(), None)
        .unwrap();
    let h = dm.path_to_handle(&f).unwrap();
    let (who, other) = (Holder::new(DmSessId(1 << 20 | 1), DmToken(5)), Holder::new(DmSessId(1 << 20 | 1), DmToken(6)));
    let no_token = Holder::new(DmSessId(1 << 20 | 1), DM_NO_TOKEN);

    // dm_fd_to_handle: the same handle as the path's.
    assert_eq!(dm.fd_to_handle(&std::fs::File::open(&f).unwrap()).unwrap(), h);

    // dm_get_region: none set is the whole file for read, write, truncate;
    // then exactly what dm_set_region kept.
    use region_flags::{READ, TRUNCATE, WRITE};
    assert_eq!(dm.get_region(&h).unwrap(), vec![Region { offset: 0, size: 0, flags: READ | WRITE | TRUNCATE }]);
    let regions = vec![Region { offset: 0, size: 4096, flags: READ }, Region { offset: 8192, size: 0, flags: WRITE }];
    assert!(dm.set_region(&h, &regions).unwrap(), "exactflag");
    assert_eq!(dm.get_region(&h).unwrap(), regions);
    dm.set_region(&h, &[]).unwrap();
    assert_eq!(dm.get_region(&h).unwrap(), vec![], "no regions: no events");

    // dm_getall_dmattr: every attribute, as set; removal shows.
    dm.set_dmattr(&h, b"hsm", b"obj-1").unwrap();
    dm.set_dmattr(&h, b"tier", b"s3").unwrap();
    dm.set_dmattr(&h, b"hsm", b"obj-2").unwrap();
    let mut all = dm.getall_dmattr(&h).unwrap();
    all.sort();
    assert_eq!(all, vec![(b"hsm".to_vec(), b"obj-2".to_vec()), (b"tier".to_vec(), b"s3".to_vec())]);
    dm.remove_dmattr(&h, b"tier").unwrap();
    assert_eq!(dm.getall_dmattr(&h).unwrap(), vec![(b"hsm".to_vec(), b"obj-2".to_vec())]);

    // Rights are a token's (an event's or a user event's): DM_NO_TOKEN holds
    // none, another token's right is not this one's, and a token's rights go
    // together when its event is answered.
    assert_eq!(dm.request_right(no_token, &h, DmRight::Shared, true).unwrap_err().errno(), libc::EINVAL);
    dm.request_right(other, &h, DmRight::Excl, true).unwrap();
    assert_eq!(dm.write_invis(who, &h, 0, b"x", false).unwrap_err().errno(), libc::EACCES);
    assert_eq!(dm.query_right(who, &h).unwrap(), DmRight::Null);
    assert_eq!(dm.release_token(other).0, 1);
    assert_eq!(dm.query_right(other, &h).unwrap(), DmRight::Null);
    // With DM_NO_TOKEN a call takes the right it needs for its own duration.
    assert_eq!(dm.write_invis(no_token, &h, 0, &[7u8], false).unwrap(), 1);

    // Rights: upgrade needs shared, downgrade needs exclusive.
    assert_eq!(dm.upgrade_right(who, &h).unwrap_err().errno(), libc::EINVAL);
    dm.request_right(who, &h, DmRight::Shared, true).unwrap();
    assert_eq!(dm.query_right(who, &h).unwrap(), DmRight::Shared);
    assert_eq!(dm.downgrade_right(who, &h).unwrap_err().errno(), libc::EINVAL);
    dm.upgrade_right(who, &h).unwrap();
    assert_eq!(dm.query_right(who, &h).unwrap(), DmRight::Excl);
    dm.downgrade_right(who, &h).unwrap();
    assert_eq!(dm.query_right(who, &h).unwrap(), DmRight::Shared);
    dm.release_right(who, &h).unwrap();
    assert_eq!(dm.query_right(who, &h).unwrap(), DmRight::Null);
    assert_eq!(dm.release_right(who, &h).unwrap_err().errno(), libc::EACCES);

    // dm_sync_by_handle: a write past the end under the DM application's
    // token is durable on the device and its size is the manager's (the
    // bulk scan reads the manager's copies, taking no token back).
    dm.request_right(who, &h, DmRight::Excl, true).unwrap();
    assert_eq!(dm.write_invis(who, &h, 10_000, b"tail", false).unwrap(), 4);
    let fsh = dm.path_to_fshandle(mnt.path()).unwrap();
    let manager_size = |dm: &DmFs| {
        let (page, _) = dm.get_bulkattr(&fsh, 0, 64).unwrap();
        page.iter().find(|s| s.ino == h.ino().unwrap()).map(|s| s.size)
    };
    assert_eq!(manager_size(&dm), Some(10_000), "not synced yet: the size is still this node's");
    let before = counting.flushes.load(std::sync::atomic::Ordering::Relaxed);
    dm.sync_by_handle(&h).unwrap();
    assert!(counting.flushes.load(std::sync::atomic::Ordering::Relaxed) > before, "the device was flushed");
    assert_eq!(manager_size(&dm), Some(10_004), "synced: the manager has the size");
    dm.release_right(who, &h).unwrap();
    let back = std::fs::read(&f).unwrap();
    assert_eq!((back.len(), &back[10_000..]), (10_004, &b"tail"[..]));
    drop(dm);
    drop(mount);
}

/// Two DM applications on different nodes (two `DmFs` clients of the one
/// manager) setting DM attributes and regions of one file at once, while
/// the mount sets an extended attribute: no change is lost, as each goes to
/// the manager as a change rather than as the whole block its sender read.
#[test]
fn concurrent_dm_setters_on_two_nodes_lose_nothing() {
    if !test_support::fuse_available() {
        return;
    }
    let (dev, mnt, mount) = fresh_mount();
    let f = mnt.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let node = |n: &str| {
        Arc::new(
            DmFs::connect(mount.manager_addr().unwrap(), dev.clone(), FsId(1), n, &Default::default(), None).unwrap(),
        )
    };
    let (a, b) = (node("node-a"), node("node-b"));
    let h = a.path_to_handle(&f).unwrap();
    const N: usize = 40;
    let writers: Vec<_> = [(a.clone(), 'a'), (b.clone(), 'b')]
        .into_iter()
        .map(|(dm, tag)| {
            std::thread::spawn(move || {
                for i in 0..N {
                    let name = format!("{tag}{i}");
                    dm.set_dmattr(&h, name.as_bytes(), name.as_bytes()).unwrap();
                    if tag == 'b' && i % 10 == 0 {
                        let r = Region { offset: i as u64, size: 1, flags: region_flags::READ };
                        assert!(dm.set_region(&h, &[r]).unwrap(), "exactflag: kept as given");
                    }
                }
            })
        })
        .collect();
    for i in 0..10 {
        xattr_set(&f, &format!("user.m{i}"));
    }
    for w in writers {
        w.join().unwrap();
    }
    let all = a.getall_dmattr(&h).unwrap();
    assert_eq!(all.len(), 2 * N, "every attribute from both nodes: {all:?}");
    assert_eq!(b.get_dmattr(&h, b"a17").unwrap(), b"a17");
    assert_eq!(a.get_dmattr(&h, b"b39").unwrap(), b"b39");
    assert_eq!(a.get_region(&h).unwrap(), vec![Region { offset: 30, size: 1, flags: region_flags::READ }]);
    for i in 0..10 {
        assert_eq!(xattr_get(&f, &format!("user.m{i}")), Some(b"v".to_vec()), "the mount's xattr {i} stayed");
    }
}

fn xattr_set(p: &std::path::Path, name: &str) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a 1-byte value for the call.
    let r = unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

fn xattr_get(p: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

/// Rights between tokens and nodes: an exclusive right keeps a reader on
/// another node (the mount) waiting; `dm_downgrade_right` lets it in while
/// the token keeps the right shared, and a writer there still waits until
/// the right is released. On this node, another token's conflicting request
/// fails with EAGAIN without DM_RR_WAIT and waits with it.
#[test]
fn downgrade_lets_readers_in_and_local_tokens_conflict() {
    if !test_support::fuse_available() {
        return;
    }
    let (dev, mnt, mount) = fresh_mount();
    let f = mnt.path().join("f");
    std::fs::write(&f, b"before").unwrap();
    let dm = Arc::new(
        DmFs::connect(mount.manager_addr().unwrap(), dev.clone(), FsId(1), "dm-app", &Default::default(), None)
            .unwrap(),
    );
    let h = dm.path_to_handle(&f).unwrap();
    let sid = DmSessId(1 << 20 | 1);
    let (who, other) = (Holder::new(sid, DmToken(5)), Holder::new(sid, DmToken(6)));
    let t = std::time::Duration::from_secs(20);

    dm.request_right(who, &h, DmRight::Excl, true).unwrap();
    assert_eq!(dm.write_invis(who, &h, 0, b"during", false).unwrap(), 6);
    let (tx, rx) = std::sync::mpsc::channel();
    let path = f.clone();
    std::thread::spawn(move || tx.send(std::fs::read(&path).unwrap()).unwrap());
    dm.downgrade_right(who, &h).unwrap();
    assert_eq!(dm.query_right(who, &h).unwrap(), DmRight::Shared);
    assert_eq!(rx.recv_timeout(t).unwrap(), b"during", "the reader got in after the downgrade, and sees the write");
    assert_eq!(dm.write_invis(who, &h, 0, b"x", false).unwrap_err().errno(), libc::EACCES, "shared now");

    // A writer on the mount waits for the shared right.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = f.clone();
    std::thread::spawn(move || tx.send(std::fs::write(&path, b"after!").is_ok()).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "the writer waits while the token holds the right shared");

    // Another token here: shared is compatible, exclusive is not.
    dm.request_right(other, &h, DmRight::Shared, false).unwrap();
    dm.release_right(other, &h).unwrap();
    let e = dm.request_right(other, &h, DmRight::Excl, false).unwrap_err();
    assert_eq!(e.errno(), libc::EAGAIN, "without DM_RR_WAIT");
    let (dm2, h2) = (dm.clone(), h);
    let waiter = std::thread::spawn(move || dm2.request_right(other, &h2, DmRight::Excl, true));
    dm.release_right(who, &h).unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(dm.query_right(other, &h).unwrap(), DmRight::Excl);
    dm.release_right(other, &h).unwrap();
    assert!(rx.recv_timeout(t).unwrap(), "the writer went on once the rights were released");
    assert_eq!(std::fs::read(&f).unwrap(), b"after!");
}
