//! `open_by_handle_at(2)` on a Tidepool FUSE mount, for `dm_open_by_handle`.
//!
//! The kernel's FUSE file handle (`fuse_encode_fh`) is the node id in two
//! 32-bit halves and the inode generation, of type `FILEID_INO64_GEN`; a
//! Tidepool mount's node ids are the file system's inode numbers, and its
//! generations the inodes' (what a DM handle holds). The mount announces
//! `FUSE_EXPORT_SUPPORT`, so the kernel can decode a handle of an inode it
//! has forgotten by asking the mount for "." in it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

/// `FILEID_INO64_GEN` (include/linux/exportfs.h).
const FILEID_INO64_GEN: libc::c_int = 0x81;

/// `struct file_handle` with room for the FUSE handle's three words.
#[repr(C)]
struct FuseFileHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u32; 3],
}

/// Opens inode `ino` of generation `igen` under `mount` with `flags`.
pub fn open(mount: &Path, ino: u64, igen: u32, flags: i32) -> std::io::Result<File> {
    let dir = File::open(mount)?;
    let mut fh = FuseFileHandle {
        handle_bytes: 12,
        handle_type: FILEID_INO64_GEN,
        f_handle: [(ino >> 32) as u32, ino as u32, igen],
    };
    // SAFETY: `fh` is a valid `struct file_handle` whose `handle_bytes`
    // (12) is the size of the `f_handle` array that follows it, and it
    // lives across the call; `dir` is an open descriptor on the mount.
    let fd = unsafe {
        libc::open_by_handle_at(dir.as_raw_fd(), (&raw mut fh).cast::<libc::file_handle>(), flags | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}
