//! tidepool-hsm: hierarchical storage management for Tidepool, a DM
//! application built on the DM application library (`libdmapi`) alone.
//!
//! A file's data moves to an object-store tier ([`tier`]) and back. What the
//! HSM knows of a file is in one DM attribute ([`record`]): the object's key,
//! the data's size and checksum, and the file's state:
//!
//! - *premigrated*: the tier holds a copy and the data is still here; the
//!   file's event list and managed region catch writes and truncates, which
//!   make the copy stale;
//! - *migrated*: the data was punched out (the volume's free space grew);
//!   reads, writes and truncates raise events, and the HSM recalls the data
//!   before the operation goes on, on whichever node it was made;
//! - *stale*: the copy is older than the data; nothing is managed.
//!
//! [`daemon`] is the running HSM: a session on one node, its dispositions,
//! the recall workers, and requests from `tidepool hsm` commands on any node,
//! which arrive as synchronous DM user messages ([`request`]).

pub mod config;
pub mod daemon;
pub mod ops;
pub mod policy;
pub mod record;
pub mod request;
pub mod tier;

use dmapi::DmError;

/// The DM attribute holding a file's [`record::Record`].
pub const ATTR: &[u8] = b"tphsm";

/// The HSM session's info string, by which it is found again (after a
/// restart) and by which commands find it.
pub const SESSION_INFO: &[u8] = b"tidepool-hsm";

/// What goes wrong in the HSM, each with the errno an operation or a
/// command gets for it.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error(transparent)]
    Dm(#[from] DmError),
    #[error("tier: {0}")]
    Tier(String),
    #[error("the tier copy of inode {ino} does not match its record: {why}")]
    Corrupt { ino: u64, why: String },
    #[error("{0}")]
    State(&'static str),
    #[error("cancelled")]
    Cancelled,
    #[error("bad request: {0}")]
    Request(String),
}

impl HsmError {
    /// The errno an operation waiting on the HSM, or a command, fails with.
    pub fn errno(&self) -> i32 {
        match self {
            HsmError::Dm(e) => e.errno(),
            HsmError::Tier(_) | HsmError::Corrupt { .. } => libc::EIO,
            HsmError::State(_) => libc::EALREADY,
            HsmError::Request(_) => libc::EINVAL,
            HsmError::Cancelled => libc::ECANCELED,
        }
    }
}

pub type HsmResult<T> = Result<T, HsmError>;
