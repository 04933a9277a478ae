//! Cluster roles a node daemon can play, from the static configuration:
//!
//! | module | role |
//! |--------|------|
//! | [`membership`] | every node: heartbeats, peer liveness and restarts |
//! | [`session_manager`] | one node: the session registry and the master disposition table (B10) |
//! | [`fs_manager`] | one node per file system: sends the dispositions to every node that mounts it (B11) |
//!
//! Roles are state machines: they take what arrived and return the frames to send;
//! the daemon (`crate::daemon`) numbers and sends them.

pub mod fs_manager;
pub mod membership;
pub mod session_manager;

use dmapi::proto::Frame;
use dmapi::types::NodeId;

/// Frames a role wants sent, each with its destination. Sequence numbers are set by
/// the daemon when it sends them.
pub type Sends = Vec<(NodeId, Frame)>;
