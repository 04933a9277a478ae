//! Peer liveness from heartbeats: every node sends `Heartbeat` to every peer each
//! `heartbeat_interval`; a peer silent for `failure_timeout` is failed. A heartbeat
//! carries the sender's incarnation (its start time), so a peer that restarted
//! faster than the failure timeout is still seen as failed-then-alive and nothing it
//! held (tokens, pending events) is left behind.
//!
//! With membership by etcd, heartbeats only detect: a silent peer is
//! *suspected* (not sent to as if alive, re-sent to when heard again), and it
//! is failed (its events cancelled, sessions waiting on it timed) only when
//! etcd says its lease is gone ([`Membership::declare_failed`]), so a pause
//! or a lost packet shorter than the lease costs nothing, and every node
//! agrees on who failed when.

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
    /// Silent too long, and etcd has not said it left (etcd decides).
    suspected: bool,
}

/// Liveness of this node's peers.
pub struct Membership {
    failure_timeout: Duration,
    /// Silence only suspects a peer; etcd fails it.
    etcd_decides: bool,
    peers: Mutex<HashMap<NodeId, PeerState>>,
}

impl Membership {
    /// Peers silent for `failure_timeout` are failed or, if `etcd_decides`,
    /// suspected until [`Membership::declare_failed`].
    pub fn new(failure_timeout: Duration, etcd_decides: bool) -> Self {
        Membership { failure_timeout, etcd_decides, peers: Mutex::new(HashMap::new()) }
    }

    /// Something arrived from `from`; `incarnation` if it was a heartbeat.
    pub fn heard(&self, from: NodeId, incarnation: Option<u64>) -> Option<PeerChange> {
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let p = peers.entry(from).or_insert(PeerState {
            last: now,
            incarnation: 0,
            up: false,
            failed: false,
            suspected: false,
        });
        p.last = now;
        let mut change = None;
        if let Some(inc) = incarnation {
            // A suspected peer is still the incarnation it was: a new one
            // restarted, and what the old one held must go.
            if p.incarnation != 0 && p.incarnation != inc && (p.up || p.suspected) {
                change = Some(PeerChange::Restarted(from));
            }
            p.incarnation = inc;
        }
        // Only a heartbeat makes a peer alive: its incarnation must be known first.
        if !p.up && incarnation.is_some() {
            p.up = true;
            // Back from suspicion: what was sent in the silence may be lost.
            let back = p.failed || std::mem::take(&mut p.suspected);
            change = change.or(Some(if back { PeerChange::Recovered(from) } else { PeerChange::Alive(from) }));
        }
        change
    }

    /// Peers that just went silent for too long, each reported once: failed,
    /// or only suspected if etcd decides.
    pub fn sweep(&self) -> Vec<NodeId> {
        let now = Instant::now();
        let mut silent = Vec::new();
        for (n, p) in self.peers.lock().iter_mut() {
            if p.up && now.duration_since(p.last) > self.failure_timeout {
                p.up = false;
                match self.etcd_decides {
                    true => p.suspected = true,
                    false => p.failed = true,
                }
                silent.push(*n);
            }
        }
        silent
    }

    /// Declares `n` failed now (etcd says it left); whether it was up or
    /// suspected, that is, not failed already.
    pub fn declare_failed(&self, n: NodeId) -> bool {
        let mut peers = self.peers.lock();
        match peers.get_mut(&n) {
            Some(p) if p.up || p.suspected => {
                p.up = false;
                p.suspected = false;
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
        let m = Membership::new(Duration::from_millis(20), false);
        assert_eq!(m.heard(NodeId(2), None), None);
        assert_eq!(m.heard(NodeId(2), Some(5)), Some(PeerChange::Alive(NodeId(2))));
        assert_eq!(m.heard(NodeId(2), Some(5)), None);
        assert_eq!(m.heard(NodeId(2), Some(6)), Some(PeerChange::Restarted(NodeId(2))));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(m.sweep(), vec![NodeId(2)]);
        assert!(m.sweep().is_empty());
        assert!(!m.is_up(NodeId(2)));
        assert_eq!(m.heard(NodeId(2), Some(6)), Some(PeerChange::Recovered(NodeId(2))));
        assert!(!m.declare_failed(NodeId(3)), "never heard of");
    }

    #[test]
    fn with_etcd_silence_suspects_and_etcd_fails() {
        let m = Membership::new(Duration::from_millis(20), true);
        assert_eq!(m.heard(NodeId(2), Some(5)), Some(PeerChange::Alive(NodeId(2))));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(m.sweep(), vec![NodeId(2)], "reported once, as suspected");
        assert!(m.sweep().is_empty() && !m.is_up(NodeId(2)));
        // Heard again before etcd decided: back, and re-sent to.
        assert_eq!(m.heard(NodeId(2), Some(5)), Some(PeerChange::Recovered(NodeId(2))));
        std::thread::sleep(Duration::from_millis(40));
        m.sweep();
        // etcd says it left: failed now, once.
        assert!(m.declare_failed(NodeId(2)));
        assert!(!m.declare_failed(NodeId(2)));
        // Suspected, then heard as a new incarnation: it restarted.
        assert_eq!(m.heard(NodeId(3), Some(1)), Some(PeerChange::Alive(NodeId(3))));
        std::thread::sleep(Duration::from_millis(40));
        m.sweep();
        assert_eq!(m.heard(NodeId(3), Some(2)), Some(PeerChange::Restarted(NodeId(3))));
        assert!(m.is_up(NodeId(3)));
    }
}
