//! Peer liveness from heartbeats: every node sends `Heartbeat` to every peer each
//! `heartbeat_interval`; a peer silent for `failure_timeout` is failed. A heartbeat
//! carries the sender's incarnation (its start time), so a peer that restarted
//! faster than the failure timeout is still seen as failed-then-alive and nothing it
//! held (tokens, pending events) is left behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dmapi::types::NodeId;
use parking_lot::Mutex;

/// A change of a peer's state, for the daemon to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// First heard of.
    Alive(NodeId),
    /// Heard again after it was declared failed.
    Recovered(NodeId),
    /// Restarted (new incarnation) without us noticing a failure first.
    Restarted(NodeId),
}

struct PeerState {
    last: Instant,
    incarnation: u64,
    up: bool,
    /// Declared failed at least once.
    failed: bool,
}

/// Liveness of this node's peers.
pub struct Membership {
    failure_timeout: Duration,
    peers: Mutex<HashMap<NodeId, PeerState>>,
}

impl Membership {
    /// Peers silent for `failure_timeout` are failed.
    pub fn new(failure_timeout: Duration) -> Self {
        Membership { failure_timeout, peers: Mutex::new(HashMap::new()) }
    }

    /// Something arrived from `from`; `incarnation` if it was a heartbeat.
    pub fn heard(&self, from: NodeId, incarnation: Option<u64>) -> Option<PeerChange> {
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let p = peers.entry(from).or_insert(PeerState { last: now, incarnation: 0, up: false, failed: false });
        p.last = now;
        let mut change = None;
        if let Some(inc) = incarnation {
            if p.incarnation != 0 && p.incarnation != inc && p.up {
                change = Some(PeerChange::Restarted(from));
            }
            p.incarnation = inc;
        }
        // Only a heartbeat makes a peer alive: its incarnation must be known first.
        if !p.up && incarnation.is_some() {
            p.up = true;
            change = Some(if p.failed { PeerChange::Recovered(from) } else { PeerChange::Alive(from) });
        }
        change
    }

    /// Peers that just went silent for too long; each is reported once.
    pub fn sweep(&self) -> Vec<NodeId> {
        let now = Instant::now();
        let mut failed = Vec::new();
        for (n, p) in self.peers.lock().iter_mut() {
            if p.up && now.duration_since(p.last) > self.failure_timeout {
                p.up = false;
                p.failed = true;
                failed.push(*n);
            }
        }
        failed
    }

    /// Declares `n` failed now (etcd says it left); whether it was up.
    pub fn declare_failed(&self, n: NodeId) -> bool {
        let mut peers = self.peers.lock();
        match peers.get_mut(&n) {
            Some(p) if p.up => {
                p.up = false;
                p.failed = true;
                true
            }
            _ => false,
        }
    }

    /// Whether `n` is alive now.
    pub fn is_up(&self, n: NodeId) -> bool {
        self.peers.lock().get(&n).is_some_and(|p| p.up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_failed_alive_and_restart() {
        let m = Membership::new(Duration::from_millis(20));
        assert_eq!(m.heard(NodeId(2), None), None);
        assert_eq!(m.heard(NodeId(2), Some(5)), Some(PeerChange::Alive(NodeId(2))));
        assert_eq!(m.heard(NodeId(2), Some(5)), None);
        assert_eq!(m.heard(NodeId(2), Some(6)), Some(PeerChange::Restarted(NodeId(2))));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(m.sweep(), vec![NodeId(2)]);
        assert!(m.sweep().is_empty());
        assert!(!m.is_up(NodeId(2)));
        assert_eq!(m.heard(NodeId(2), Some(6)), Some(PeerChange::Recovered(NodeId(2))));
    }
}
