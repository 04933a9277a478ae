//! `tpfs`: the Tidepool file system on shared NVMe-oF volumes, mounted on
//! many nodes at once.
//!
//! - [`format`], [`journal`], [`mkfs`]: the on-disk format (zerocopy,
//!   size-asserted, CRC32C on every metadata block), the write-ahead
//!   metadata journal a restarted manager replays, and a fresh file system.
//! - [`meta`]: the metadata store (inodes, bitmap, directories, extent maps,
//!   DM attributes), every operation one journal transaction.
//! - [`manager`] and its protocol [`rpc`]: the file system's manager node,
//!   with per-inode tokens and cluster-wide [`locks`].
//! - [`remote`]: a mounting node's connection to the manager and its token
//!   cache; [`data`]: file data straight between the node and the storage
//!   node ([`blockdev`]: an NVMe-oF namespace through `nvmf`, or memory).
//! - [`fuse`]: the FUSE mount; DM events go into an [`fuse::EventSink`].
//!
//! ```
//! use tpfs::{blockdev::MemDev, mkfs};
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
pub mod tokens;

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
