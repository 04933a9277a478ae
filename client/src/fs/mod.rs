//! The Tidepool file system on shared volumes.
//!
//! This first layer is the on-disk format and its write-ahead metadata
//! journal, over any [`blockdev::BlockDev`] (an NVMe-oF namespace through
//! the initiator, or memory in tests):
//!
//! - [`format`]: superblock, inode and journal record layouts (zerocopy,
//!   size-asserted, CRC32C on every metadata block) and the volume layout.
//! - [`journal`]: physical block journaling: a metadata transaction is
//!   durable in the journal before its blocks are written home, and a
//!   restarted manager replays every committed transaction.
//! - [`mkfs`]: writes a fresh file system.
//!
//! ```
//! use client::fs::{blockdev::MemDev, mkfs};
//! let dev = MemDev::new(4096, 64 << 20);
//! let sb = mkfs::mkfs(&dev, &mkfs::MkfsOpts::default()).unwrap();
//! assert_eq!(mkfs::read_superblock(&dev).unwrap().fsid, sb.fsid);
//! ```

pub mod blockdev;
pub mod data;
pub mod format;
pub mod fuse;
pub mod journal;
pub mod locks;
pub mod manager;
pub mod meta;
pub mod mkfs;
pub mod remote;
pub mod rpc;

/// File-system errors, each with the errno a POSIX caller sees.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("device I/O: {0}")]
    Io(String),
    #[error("no file system here: {0}")]
    NotFormatted(String),
    #[error("metadata block {block} is corrupt: {why}")]
    Corrupt { block: u64, why: String },
    #[error("no space left on the volume")]
    NoSpace,
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Io(_) => libc::EIO,
            FsError::NotFormatted(_) => libc::EINVAL,
            FsError::Corrupt { .. } => libc::EUCLEAN,
            FsError::NoSpace => libc::ENOSPC,
            FsError::Invalid(_) => libc::EINVAL,
        }
    }
}

pub type Result<T> = std::result::Result<T, FsError>;
