//! The crate's error type: every verbs or CM failure carries the call that
//! failed and the OS error, so a log line is enough to diagnose it.

use std::time::Duration;

/// Errors from the RDMA layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("built without the `rdma` cargo feature")]
    NotBuilt,
    #[error("no RDMA device: {0}")]
    NoDevice(String),
    #[error("{op} failed: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} failed after the first {posted} work requests of the list were posted: {source}")]
    PartlyPosted {
        op: &'static str,
        posted: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("connection rejected by the peer (status {status}, {} bytes of private data)", private_data.len())]
    Rejected { status: i32, private_data: Vec<u8> },
    #[error("RDMA CM: got {got} (status {status}) while waiting for {want}")]
    UnexpectedEvent { want: &'static str, got: String, status: i32 },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { after: Duration, what: &'static str },
    #[error("private data of {len} bytes exceeds the {max} bytes RDMA CM carries here")]
    PrivateDataTooLong { len: usize, max: usize },
    #[error("range {start}..{end} is outside a region of {len} bytes")]
    OutOfRange { start: usize, end: usize, len: usize },
    #[error("{queue} queue full ({depth} work requests outstanding)")]
    QueueFull { queue: &'static str, depth: usize },
    #[error("invalid argument: {0}")]
    Invalid(String),
}

// Only the verbs and CM modules (behind the feature) make OS errors.
#[cfg(feature = "rdma")]
impl Error {
    /// The last OS error, for calls that return NULL or -1 and set errno.
    pub(crate) fn last_os(op: &'static str) -> Error {
        Error::Os { op, source: std::io::Error::last_os_error() }
    }

    /// An errno returned as the value (ibv_post_send, ibv_dealloc_pd...).
    pub(crate) fn errno(op: &'static str, code: i32) -> Error {
        Error::Os { op, source: std::io::Error::from_raw_os_error(code.abs()) }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
