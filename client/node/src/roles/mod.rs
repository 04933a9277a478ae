//! Cluster roles a node daemon can play, from the static configuration:
//!
//! | module | role |
//! |--------|------|
//! | [`membership`] | every node: heartbeats, peer liveness and restarts |
//! | [`session_manager`] | one node: the session registry and the master disposition table (B10) |
//! | [`fs_manager`] | one node per file system: sends the dispositions to every node that mounts it (B11) |
//!
//! Roles are state machines: they take what arrived and return the frames to send;
//! the daemon (`crate::daemon`) numbers and sends them. With roles elected
//! through etcd, what the session manager distributes is stamped with its term
//! ([`Frame::epoch`]) and [`Terms`] refuses what a deposed one sends.

pub mod fs_manager;
pub mod membership;
pub mod session_manager;

use std::sync::atomic::{AtomicU64, Ordering};

use dmapi::proto::Frame;
use dmapi::types::NodeId;

/// Frames a role wants sent, each with its destination. Sequence numbers are set by
/// the daemon when it sends them.
pub type Sends = Vec<(NodeId, Frame)>;

/// The latest session-manager term a node has heard of, from the frames
/// stamped with it and from etcd. A frame stamped with an older term was
/// sent by a manager that has been deposed (it may not know yet: a
/// partition, a pause) or was delayed past its term; acting on it could
/// undo what the new manager distributed, so it is refused.
#[derive(Debug, Default)]
pub struct Terms {
    sm: AtomicU64,
}

impl Terms {
    /// Whether a frame stamped `epoch` may be acted on, raising the mark to
    /// it if it is newer. 0 is the stamp of static roles and of frames no
    /// role sends: always admitted.
    pub fn admit(&self, epoch: u64) -> bool {
        epoch == 0 || self.sm.fetch_max(epoch, Ordering::AcqRel) <= epoch
    }

    /// The latest term heard of (0: none).
    pub fn latest(&self) -> u64 {
        self.sm.load(Ordering::Acquire)
    }
}

/// A term's epoch as frames carry it: etcd revisions are positive.
pub fn epoch_of(rev: coord::Rev) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Terms;

    #[test]
    fn older_terms_are_refused_and_newer_raise_the_mark() {
        let t = Terms::default();
        assert!(t.admit(0) && t.admit(7) && t.admit(7), "unstamped, a first term, the same term again");
        assert!(t.admit(9));
        assert!(!t.admit(7), "a deposed manager's frame");
        assert!(t.admit(0), "unstamped frames are not role frames");
        assert_eq!(t.latest(), 9);
    }
}
