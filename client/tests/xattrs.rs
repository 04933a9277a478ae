//! Extended attributes through FUSE on two mounts of one file system: set
//! on one node, read and listed on the other, XATTR_CREATE / REPLACE
//! honoured, removal seen everywhere, `trusted.*` and `security.*` kept
//! like `user.*`, a full attribute block is ENOSPC,
//! and POSIX ACL names are refused.

mod common;

use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;
use tpfs::blockdev::{BlockDev, MemDev};
use tpfs::fuse::{mount, spawn_mount, MountOpts};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn set(p: &Path, name: &str, v: &[u8], flags: i32) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the length passed.
    let r = unsafe { libc::setxattr(c(p).as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn get(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and a buffer of the length passed.
    let r = unsafe { libc::getxattr(c(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn list(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: a valid C string and a buffer of the length passed.
    let r = unsafe { libc::listxattr(c(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(r as usize);
    let mut v: Vec<String> =
        buf.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into()).collect();
    v.sort();
    v
}

fn remove(p: &Path, name: &str) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings.
    let r = unsafe { libc::removexattr(c(p).as_ptr(), n.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn xattrs_cross_nodes_with_posix_semantics() {
    if !common::fuse_available() {
        return;
    }
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new(4096, 32 << 20));
    tpfs::mkfs::mkfs(&*dev, &Default::default()).unwrap();
    let (ma, mb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn_mount(dev.clone(), ma.path(), None).unwrap();
    let opts = MountOpts { manager: a.manager_addr(), name: "b".into(), ..Default::default() };
    let b = mount(dev.clone(), mb.path(), opts).unwrap();
    std::fs::write(ma.path().join("f"), b"data").unwrap();
    let (fa, fb) = (ma.path().join("f"), mb.path().join("f"));

    assert_eq!(get(&fb, "user.tier"), Err(libc::ENODATA));
    set(&fa, "user.tier", b"tape-7", 0).unwrap();
    set(&fa, "user.empty", b"", 0).unwrap();
    assert_eq!(get(&fb, "user.tier").unwrap(), b"tape-7", "set on A, read on B");
    assert_eq!(list(&fb), ["user.empty", "user.tier"]);
    assert_eq!(set(&fb, "user.tier", b"x", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(set(&fb, "user.new", b"x", libc::XATTR_REPLACE), Err(libc::ENODATA));
    set(&fb, "user.tier", b"disk-2", libc::XATTR_REPLACE).unwrap();
    assert_eq!(get(&fa, "user.tier").unwrap(), b"disk-2", "replaced on B, read on A");
    remove(&fa, "user.empty").unwrap();
    assert_eq!(remove(&fa, "user.empty"), Err(libc::ENODATA));
    assert_eq!(list(&fb), ["user.tier"]);
    // Root's namespaces, trusted.* and security.*, are kept and shared too.
    set(&fa, "trusted.hsm", b"t-1", 0).unwrap();
    set(&fa, "security.label", b"s-1", 0).unwrap();
    assert_eq!(get(&fb, "trusted.hsm").unwrap(), b"t-1", "trusted.* set on A, read on B");
    assert_eq!(get(&fb, "security.label").unwrap(), b"s-1", "security.* set on A, read on B");
    assert_eq!(list(&fb), ["security.label", "trusted.hsm", "user.tier"]);
    remove(&fb, "trusted.hsm").unwrap();
    remove(&fb, "security.label").unwrap();
    assert_eq!(get(&fa, "trusted.hsm"), Err(libc::ENODATA));
    // Directories carry them too; ACLs are not kept.
    set(ma.path(), "user.dir", b"1", 0).unwrap();
    assert_eq!(get(mb.path(), "user.dir").unwrap(), b"1");
    assert_eq!(set(&fa, "system.posix_acl_access", &[2, 0, 0, 0], 0), Err(libc::EOPNOTSUPP));
    // One block holds them all: past that, ENOSPC, and nothing is lost.
    let big = vec![7u8; 3000];
    set(&fa, "user.big", &big, 0).unwrap();
    assert_eq!(set(&fa, "user.big2", &big, 0), Err(libc::ENOSPC));
    assert_eq!(get(&fb, "user.big").unwrap(), big);
    assert_eq!(get(&fb, "user.tier").unwrap(), b"disk-2");
    // The data is untouched by all of it.
    assert_eq!(std::fs::read(&fb).unwrap(), b"data");
    drop(b);
    drop(a);
}
