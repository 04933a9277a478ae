//! POSIX for every user of a mount: a mount made by root serves other
//! users (uid 65534 here, through `setpriv`), the kernel checking
//! permissions against the inodes, and behaves as Linux file systems do for
//! them: EACCES without search or write permission, EPERM for chmod, chown
//! and explicit times by a non-owner, sticky directories, SUID/SGID cleared
//! by a non-owner's write and by chown, ctime and mtime updated by every
//! operation that updates them, names past 255 bytes refused, readdir
//! `d_type` for every kind of file. `--owner-only` keeps a mount to its owner.

mod common;

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tpfs::blockdev::{BlockDev, MemDev};
use tpfs::fuse::{mount, spawn_mount, MountOpts, Mounted};

const NOBODY: u32 = 65534;

/// Runs `script` with `sh` as uid/gid 65534 with no supplementary groups:
/// (exit status 0, stdout+stderr).
fn as_nobody(dir: &Path, script: &str) -> (bool, String) {
    let o = Command::new("setpriv")
        .args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups", "--"])
        .args(["sh", "-c", script])
        .current_dir(dir)
        .output()
        .expect("setpriv runs");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

/// `script` as nobody must succeed.
fn ok(dir: &Path, script: &str) -> String {
    let (good, out) = as_nobody(dir, script);
    assert!(good, "as uid {NOBODY}: `{script}` failed: {out}");
    out
}

/// `script` as nobody must fail, saying `why` (strerror of the errno).
fn refused(dir: &Path, script: &str, why: &str) {
    let (good, out) = as_nobody(dir, script);
    assert!(!good && out.contains(why), "as uid {NOBODY}: `{script}` should fail with {why:?}: {out}");
}

fn fresh() -> Option<(Mounted, tempfile::TempDir)> {
    if !common::fuse_available() || !test_support::is_root() || !test_support::have_tool("setpriv") {
        return None;
    }
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new(4096, 32 << 20));
    tpfs::mkfs::mkfs(&*dev, &Default::default()).unwrap();
    let mp = tempfile::tempdir().unwrap();
    let m = spawn_mount(dev, mp.path(), None).unwrap();
    Some((m, mp))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

#[test]
fn other_users_get_the_permissions_the_modes_say() {
    let Some((_m, mp)) = fresh() else { return };
    let d = mp.path();
    std::fs::write(d.join("rootfile"), b"root's\n").unwrap();
    std::fs::set_permissions(d.join("rootfile"), PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::create_dir(d.join("private")).unwrap();
    std::fs::set_permissions(d.join("private"), PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(d.join("private/secret"), b"s").unwrap();
    std::fs::create_dir(d.join("pub")).unwrap();
    std::fs::set_permissions(d.join("pub"), PermissionsExt::from_mode(0o777)).unwrap();

    // Reading what the mode allows, and nothing else.
    assert_eq!(ok(d, "cat rootfile"), "root's\n");
    ok(d, "ls pub");
    refused(d, "echo x >> rootfile", "Permission denied");
    refused(d, "ls private", "Permission denied");
    refused(d, "cat private/secret", "Permission denied");
    refused(d, "touch newfile", "Permission denied");
    refused(d, "rm rootfile", "Permission denied");
    // A non-owner changes no attribute; `touch` to now needs write permission.
    refused(d, "chmod 666 rootfile", "Operation not permitted");
    refused(d, &format!("chown {NOBODY} rootfile"), "Operation not permitted");
    // (-c: no open for writing first, so the errors are utimensat's own.)
    refused(d, "touch -c -d 2001-01-01 rootfile", "Operation not permitted");
    refused(d, "touch -c rootfile", "Permission denied");
    assert_eq!(mode(&d.join("rootfile")), 0o644);
    assert_eq!(std::fs::read(d.join("rootfile")).unwrap(), b"root's\n");

    // What a user makes is theirs, and theirs to change.
    ok(d, "echo mine > pub/mine && chmod 600 pub/mine && touch -d 2001-01-01 pub/mine && mkdir pub/sub");
    let md = std::fs::metadata(d.join("pub/mine")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (NOBODY, NOBODY, 0o600));
    assert_eq!(md.mtime(), 978_307_200, "2001-01-01T00:00:00Z");
    assert_eq!(std::fs::metadata(d.join("pub/sub")).unwrap().uid(), NOBODY);
    // Root still reads it (root bypasses modes), and the user can give it away only as root could.
    assert_eq!(std::fs::read(d.join("pub/mine")).unwrap(), b"mine\n");
    refused(d, "chown 0 pub/mine", "Operation not permitted");
    ok(d, "rm pub/mine && rmdir pub/sub");
}

#[test]
fn sticky_directories_keep_others_names() {
    let Some((_m, mp)) = fresh() else { return };
    let d = mp.path();
    std::fs::create_dir(d.join("tmp")).unwrap();
    std::fs::set_permissions(d.join("tmp"), PermissionsExt::from_mode(0o1777)).unwrap();
    assert_eq!(mode(&d.join("tmp")), 0o1777);
    std::fs::write(d.join("tmp/roots"), b"r").unwrap();
    std::fs::set_permissions(d.join("tmp/roots"), PermissionsExt::from_mode(0o666)).unwrap();
    refused(d, "rm -f tmp/roots", "Operation not permitted");
    refused(d, "mv tmp/roots tmp/taken", "Operation not permitted");
    // Writable by all, so the data may change, only the name is kept.
    ok(d, "echo changed > tmp/roots");
    ok(d, "echo mine > tmp/mine && mv tmp/mine tmp/mine2 && rm tmp/mine2");
    assert!(d.join("tmp/roots").exists());
    // Without the sticky bit the same removal is allowed.
    std::fs::set_permissions(d.join("tmp"), PermissionsExt::from_mode(0o777)).unwrap();
    ok(d, "rm -f tmp/roots");
    assert!(!d.join("tmp/roots").exists());
}

#[test]
fn suid_and_sgid_are_cleared_by_a_non_owners_write_and_by_chown() {
    let Some((_m, mp)) = fresh() else { return };
    let d = mp.path();
    let f = d.join("prog");
    std::fs::write(&f, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&f, PermissionsExt::from_mode(0o6777)).unwrap();
    assert_eq!(mode(&f), 0o6777);
    ok(d, "echo appended >> prog");
    assert_eq!(mode(&f), 0o0777, "a write by another user clears SUID and SGID");
    assert_eq!(std::fs::read(&f).unwrap(), b"#!/bin/sh\nappended\n");

    std::fs::set_permissions(&f, PermissionsExt::from_mode(0o4755)).unwrap();
    chown(&f, NOBODY, NOBODY);
    assert_eq!(mode(&f), 0o0755, "chown clears SUID");
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), NOBODY);

    // A directory's SGID is inherited by what is made inside it.
    let g = d.join("group");
    std::fs::create_dir(&g).unwrap();
    chown(&g, 0, 4242);
    std::fs::set_permissions(&g, PermissionsExt::from_mode(0o2777)).unwrap();
    ok(d, "echo x > group/f && mkdir group/sub");
    assert_eq!(std::fs::metadata(g.join("f")).unwrap().gid(), 4242);
    let sub = std::fs::metadata(g.join("sub")).unwrap();
    assert_eq!((sub.gid(), sub.mode() & 0o2000), (4242, 0o2000), "subdirectories inherit SGID");
}

/// (mtime, ctime) in nanoseconds.
fn times(p: &Path) -> (i128, i128) {
    let m = std::fs::symlink_metadata(p).unwrap();
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()))
}

/// Runs `op`, then says which of (mtime, ctime) of each path moved.
fn moved(paths: &[&Path], op: impl FnOnce()) -> Vec<(bool, bool)> {
    let before: Vec<_> = paths.iter().map(|p| times(p)).collect();
    std::thread::sleep(Duration::from_millis(20));
    op();
    paths.iter().zip(before).map(|(p, (m, c))| (times(p).0 != m, times(p).1 != c)).collect()
}

fn setxattr(p: &Path, name: &str, v: &[u8]) {
    let (p, n) = (CString::new(p.as_os_str().as_encoded_bytes()).unwrap(), CString::new(name).unwrap());
    // SAFETY: valid C strings and a buffer of the length passed.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

#[test]
fn every_operation_updates_the_times_posix_says() {
    let Some((_m, mp)) = fresh() else { return };
    let d = mp.path().to_path_buf();
    let dir = d.join("dir");
    std::fs::create_dir(&dir).unwrap();
    let f = dir.join("f");
    let (both, c_only, none) = ((true, true), (false, true), (false, false));

    assert_eq!(moved(&[&dir], || std::fs::write(&f, b"1").unwrap()), [both], "create: parent");
    assert_eq!(
        moved(&[&f], || {
            use std::io::Write;
            std::fs::OpenOptions::new().append(true).open(&f).unwrap().write_all(b"2").unwrap()
        }),
        [both],
        "write"
    );
    assert_eq!(moved(&[&f], || std::fs::File::options().write(true).open(&f).unwrap().set_len(1).unwrap()), [both]);
    assert_eq!(moved(&[&f], || std::fs::set_permissions(&f, PermissionsExt::from_mode(0o600)).unwrap()), [c_only]);
    assert_eq!(moved(&[&f], || chown(&f, 7, 7)), [c_only], "chown");
    assert_eq!(moved(&[&f], || setxattr(&f, "user.k", b"v")), [c_only], "setxattr");
    let l = d.join("l");
    assert_eq!(moved(&[&f, &d], || std::fs::hard_link(&f, &l).unwrap()), [c_only, both], "link: file, new parent");
    let g = d.join("g");
    let before = times(&f);
    assert_eq!(moved(&[&dir, &d], || std::fs::rename(&f, &g).unwrap()), [both, both], "rename: old and new parent");
    assert_eq!((times(&g).0 == before.0, times(&g).1 == before.1), (true, false), "rename: the moved file's ctime");
    assert_eq!(moved(&[&g, &d], || std::fs::remove_file(&l).unwrap()), [c_only, both], "unlink: the file, parent");
    assert_eq!(moved(&[&d], || std::os::unix::fs::symlink("g", d.join("s")).unwrap()), [both], "symlink: parent");
    assert_eq!(moved(&[&g], || drop(std::fs::read(&g).unwrap())), [none], "a read changes neither");
}

#[test]
fn names_past_255_bytes_are_refused_and_statfs_says_so() {
    let Some((_m, mp)) = fresh() else { return };
    let d = mp.path();
    let long = "n".repeat(256);
    let max = "m".repeat(255);
    for r in [
        std::fs::write(d.join(&long), b"x"),
        std::fs::create_dir(d.join(&long)),
        std::os::unix::fs::symlink("t", d.join(&long)),
        std::fs::metadata(d.join(&long)).map(|_| ()),
    ] {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
    }
    std::fs::write(d.join(&max), b"x").unwrap();
    assert_eq!(std::fs::rename(d.join(&max), d.join(&long)).unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
    assert_eq!(std::fs::hard_link(d.join(&max), d.join(&long)).unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
    assert_eq!(std::fs::read(d.join(&max)).unwrap(), b"x");
    let c = CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and a zeroed statvfs for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_namemax, 255);
}

fn mknod(p: &Path, kind: libc::mode_t, dev: libc::dev_t) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mknod(c.as_ptr(), kind | 0o644, dev) }, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn readdir_types_every_kind_of_file() {
    let Some((_m, mp)) = fresh() else { return };
    let d = mp.path();
    std::fs::write(d.join("file"), b"").unwrap();
    std::fs::create_dir(d.join("dir")).unwrap();
    std::os::unix::fs::symlink("file", d.join("link")).unwrap();
    mknod(&d.join("fifo"), libc::S_IFIFO, 0);
    mknod(&d.join("sock"), libc::S_IFSOCK, 0);
    mknod(&d.join("chr"), libc::S_IFCHR, libc::makedev(1, 3));
    mknod(&d.join("blk"), libc::S_IFBLK, libc::makedev(7, 0));
    let mut seen: Vec<(String, &str)> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            // DirEntry::file_type is d_type from readdir, not a stat.
            let t = e.file_type().unwrap();
            let kind = [
                (t.is_file(), "file"),
                (t.is_dir(), "dir"),
                (t.is_symlink(), "link"),
                (t.is_fifo(), "fifo"),
                (t.is_socket(), "sock"),
                (t.is_char_device(), "chr"),
                (t.is_block_device(), "blk"),
            ]
            .into_iter()
            .find_map(|(y, k)| y.then_some(k))
            .unwrap_or("unknown");
            (e.file_name().into_string().unwrap(), kind)
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, &str)> =
        ["blk", "chr", "dir", "fifo", "file", "link", "sock"].iter().map(|k| (k.to_string(), *k)).collect();
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn an_owner_only_mount_refuses_other_users() {
    if !common::fuse_available() || !test_support::is_root() || !test_support::have_tool("setpriv") {
        return;
    }
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new(4096, 32 << 20));
    tpfs::mkfs::mkfs(&*dev, &Default::default()).unwrap();
    let mp = tempfile::tempdir().unwrap();
    let _m = mount(dev, mp.path(), MountOpts { owner_only: true, ..Default::default() }).unwrap();
    std::fs::write(mp.path().join("f"), b"x").unwrap();
    std::fs::set_permissions(mp.path().join("f"), PermissionsExt::from_mode(0o644)).unwrap();
    let at: PathBuf = "/".into();
    refused(&at, &format!("cat {}/f", mp.path().display()), "Permission denied");
}
