//! Tidepool's user-space NVMe over Fabrics initiator: NVMe/TCP, and
//! NVMe/RDMA with the `rdma` feature ([`ConnectOpts::transport`]). The
//! file system reads and writes its volumes through it; `tidepool nvme`
//! drives it by hand.
//!
//! [`Controller::connect`] sets up an admin queue and I/O queues;
//! each [`QueuePair`] keeps many commands in flight (command IDs are
//! allocated from a free list and matched on completion) and can poll its
//! socket or completion queue instead of sleeping. A synchronous API (`read`, `write`, ...)
//! sits on top for simple callers; the file system and the benchmark use
//! `submit` / `poll`.
//!
//! ```no_run
//! use nvmf::{Controller, ConnectOpts};
//! let ctrl = Controller::connect("127.0.0.1:4420", "nqn.2026-11.io.tidepool:vol0", &ConnectOpts::default())?;
//! let ns = ctrl.identify_ns(1)?;
//! let mut buf = vec![0u8; 4096];
//! ctrl.read(1, 0, &mut buf)?;
//! # Ok::<(), nvmf::NvmfError>(())
//! ```

mod ctrl;
mod queue;
#[cfg(feature = "rdma")]
mod rdma;
mod tcp;

pub use ctrl::{discover, io_sqe, ConnectOpts, Controller, NsInfo};
pub use queue::{Completed, DataDir, QueuePair, QueueParams, QueueTransport, Transport};

use nvme_wire::status::Status;

#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("controller terminated the connection: fatal error status {fes:#x}")]
    Terminated { fes: u16 },
    #[error("command failed: {status}")]
    Status { status: Status, result: u64 },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("bad argument: {0}")]
    Invalid(String),
    /// The transport below the queue failed (RDMA CM, verbs) or is missing.
    #[error("transport: {0}")]
    Transport(String),
}

impl NvmfError {
    /// The errno a POSIX caller should see, following Linux's block layer.
    pub fn errno(&self) -> i32 {
        match self {
            NvmfError::Status { status, .. } => match status.code() {
                0x083 => libc::EBADE,              // reservation conflict
                0x080 | 0x081 => libc::ENOSPC,     // LBA out of range / capacity exceeded
                0x00b => libc::ENXIO,              // invalid namespace
                0x001 | 0x002 => libc::EOPNOTSUPP, // invalid opcode / field
                0x285 => libc::EILSEQ,             // compare failure
                _ => libc::EIO,
            },
            NvmfError::Timeout(_) => libc::ETIMEDOUT,
            NvmfError::Invalid(_) => libc::EINVAL,
            _ => libc::EIO,
        }
    }

    pub fn status(&self) -> Option<Status> {
        match self {
            NvmfError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NvmfError>;
