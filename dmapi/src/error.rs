//! The DMAPI error type: every failure carries the XDSM errno a C caller would see.
//!
//! ```
//! use dmapi::DmError;
//! let e = DmError::TooBig { needed: 96 };
//! assert_eq!(e.errno(), libc::E2BIG);
//! ```

use crate::types::{DmSessId, NodeId};

/// A failed DMAPI call. [`DmError::errno`] gives the XDSM errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmError {
    /// EINVAL: an argument (session id, token, handle, flag...) is not valid.
    #[error("EINVAL: {0}")]
    Inval(&'static str),
    /// EINVAL: the session lives on another node and the call would change it or
    /// its events (B13); only queries may be made away from the session node.
    #[error("EINVAL: session {sid} lives on node {node}; this call must be made there")]
    NotSessionNode {
        /// The session named in the call.
        sid: DmSessId,
        /// The node that owns it.
        node: NodeId,
    },
    /// ESRCH: the token was valid once but its event has been responded to or moved.
    #[error("ESRCH: {0}")]
    Srch(&'static str),
    /// ENOENT: the token is not one of this session's events.
    #[error("ENOENT: {0}")]
    NoEnt(&'static str),
    /// EBADF: the handle does not name a live object.
    #[error("EBADF: {0}")]
    BadF(&'static str),
    /// E2BIG: the caller's buffer is too small; `needed` bytes (or elements) would do.
    #[error("E2BIG: buffer too small, {needed} needed")]
    TooBig {
        /// The length that would have been enough.
        needed: usize,
    },
    /// EACCES: the caller lacks the needed DM right.
    #[error("EACCES: {0}")]
    Acces(&'static str),
    /// EBUSY: the object is in use (for example a session with outstanding tokens).
    #[error("EBUSY: {0}")]
    Busy(&'static str),
    /// EAGAIN: nothing available and the caller asked not to wait.
    #[error("EAGAIN: {0}")]
    Again(&'static str),
    /// EINTR: a blocking call was interrupted (shutdown or an explicit interrupt).
    #[error("EINTR: {0}")]
    Intr(&'static str),
    /// EPERM: the caller is not privileged to make this call.
    #[error("EPERM: {0}")]
    Perm(&'static str),
    /// ENOMEM: a resource limit was reached.
    #[error("ENOMEM: {0}")]
    NoMem(&'static str),
    /// EEXIST: the object already exists.
    #[error("EEXIST: {0}")]
    Exist(&'static str),
    /// EIO: the session failed and was not reclaimed in time, or the transport failed.
    #[error("EIO: {0}")]
    Io(String),
    /// EFAULT: a pointer the caller passed is not usable (the C ABI).
    #[error("EFAULT: {0}")]
    Fault(&'static str),
    /// ENOTSUP: the call or event type is not supported here.
    #[error("ENOTSUP: {0}")]
    NotSup(&'static str),
    /// A synchronous event or message was answered `DM_RESP_ABORT` with this errno.
    #[error("aborted by the DM application: {}", std::io::Error::from_raw_os_error(*.0))]
    Aborted(i32),
}

impl DmError {
    /// The XDSM errno value for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DmError::Inval(_) | DmError::NotSessionNode { .. } => libc::EINVAL,
            DmError::Srch(_) => libc::ESRCH,
            DmError::NoEnt(_) => libc::ENOENT,
            DmError::BadF(_) => libc::EBADF,
            DmError::TooBig { .. } => libc::E2BIG,
            DmError::Acces(_) => libc::EACCES,
            DmError::Busy(_) => libc::EBUSY,
            DmError::Again(_) => libc::EAGAIN,
            DmError::Intr(_) => libc::EINTR,
            DmError::Perm(_) => libc::EPERM,
            DmError::NoMem(_) => libc::ENOMEM,
            DmError::Exist(_) => libc::EEXIST,
            DmError::Io(_) => libc::EIO,
            DmError::NotSup(_) => libc::ENOTSUP,
            DmError::Fault(_) => libc::EFAULT,
            DmError::Aborted(e) => *e,
        }
    }

    /// The error a DMAPI caller gets back from an `errno` that crossed a
    /// process or node boundary: the inverse of [`errno`](Self::errno), so
    /// every place that maps errnos back maps them alike. `detail` is the
    /// text that came with it (for EIO, the reason; for E2BIG, the length
    /// needed); an errno no variant names is what a DM application aborted
    /// with.
    pub fn from_errno(errno: i32, detail: &str) -> DmError {
        match errno {
            libc::EINVAL => DmError::Inval("invalid argument (see the node log)"),
            libc::ESRCH => DmError::Srch("token no longer outstanding"),
            libc::ENOENT => DmError::NoEnt("no such event"),
            libc::EBADF => DmError::BadF("bad handle"),
            libc::EACCES => DmError::Acces("access denied"),
            libc::EBUSY => DmError::Busy("busy"),
            libc::EAGAIN => DmError::Again("nothing available"),
            libc::EINTR => DmError::Intr("interrupted"),
            libc::EPERM => DmError::Perm("not privileged"),
            libc::ENOMEM => DmError::NoMem("resource limit"),
            libc::EEXIST => DmError::Exist("exists"),
            libc::ENOTSUP => DmError::NotSup("not supported"),
            libc::EFAULT => DmError::Fault("bad address"),
            libc::EIO => DmError::Io(detail.to_string()),
            libc::E2BIG => DmError::TooBig { needed: detail.parse().unwrap_or(0) },
            e => DmError::Aborted(e),
        }
    }
}

/// Result of a DMAPI call.
pub type DmResult<T> = Result<T, DmError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_match_libc() {
        let cases: Vec<(DmError, i32)> = vec![
            (DmError::Inval("x"), libc::EINVAL),
            (DmError::NotSessionNode { sid: DmSessId(5), node: NodeId(2) }, libc::EINVAL),
            (DmError::Srch("x"), libc::ESRCH),
            (DmError::NoEnt("x"), libc::ENOENT),
            (DmError::BadF("x"), libc::EBADF),
            (DmError::TooBig { needed: 3 }, libc::E2BIG),
            (DmError::Acces("x"), libc::EACCES),
            (DmError::Busy("x"), libc::EBUSY),
            (DmError::Again("x"), libc::EAGAIN),
            (DmError::Intr("x"), libc::EINTR),
            (DmError::Perm("x"), libc::EPERM),
            (DmError::NoMem("x"), libc::ENOMEM),
            (DmError::Exist("x"), libc::EEXIST),
            (DmError::Io("x".into()), libc::EIO),
            (DmError::NotSup("x"), libc::ENOTSUP),
            (DmError::Fault("x"), libc::EFAULT),
            (DmError::Aborted(libc::EDQUOT), libc::EDQUOT),
        ];
        for (e, n) in cases {
            assert_eq!(e.errno(), n, "{e}");
            // Back from the errno: the same kind of error, the same errno.
            let detail = match &e {
                DmError::TooBig { needed } => needed.to_string(),
                _ => String::new(),
            };
            let back = DmError::from_errno(n, &detail);
            assert_eq!(back.errno(), n, "{e} -> {back}");
            assert_eq!(
                std::mem::discriminant(&back) == std::mem::discriminant(&e),
                !matches!(e, DmError::NotSessionNode { .. }),
                "{e} -> {back}"
            );
        }
        assert_eq!(DmError::from_errno(libc::E2BIG, "96"), DmError::TooBig { needed: 96 });
        assert_eq!(DmError::from_errno(libc::EIO, "peer gone"), DmError::Io("peer gone".into()));
    }

    #[test]
    fn messages_name_the_errno_and_needed_length() {
        assert_eq!(DmError::TooBig { needed: 96 }.to_string(), "E2BIG: buffer too small, 96 needed");
        let e = DmError::NotSessionNode { sid: DmSessId(7), node: NodeId(3) };
        assert!(e.to_string().contains("node 3"));
    }
}
