//! A node's transport: RDMA to every peer reachable over RDMA, TCP to the
//! rest. Both listen on the node's DM address (RDMA CM has its own port
//! space). The first send to a peer tries to connect over RDMA; if that
//! fails (no device on either end, the peer runs without RDMA or has not
//! started yet, no route) the peer is reached over TCP and RDMA is tried
//! again after a back-off that doubles from [`RDMA_RETRY_MIN`] to
//! [`RDMA_RETRY`], or at once when the peer connects to us over RDMA.
//! Each choice is logged once per change. Frames arriving on either
//! transport go to the same handler.
//!
//! ```no_run
//! use dmapi::transport::auto::NodeTransport;
//! use dmapi::transport::tcp::TcpConfig;
//! use dmapi::types::NodeId;
//! let t = NodeTransport::start(TcpConfig::new(NodeId(1), "127.0.0.1:7101".parse().unwrap(), b"key"), true).unwrap();
//! println!("RDMA: {}", t.rdma_enabled());
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tracing::info;

use super::tcp::{FrameHandler, TcpConfig, TcpTransport};
use super::{Transport, TransportError};
use crate::proto::Frame;
use crate::types::NodeId;

/// Longest a peer stays on TCP after RDMA failed before RDMA is tried again.
pub const RDMA_RETRY: Duration = Duration::from_secs(30);
/// The first back-off (a peer that is still starting).
pub const RDMA_RETRY_MIN: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "rdma"), allow(dead_code))] // without RDMA every peer is on TCP
enum Via {
    Rdma,
    Tcp { retry_at: Instant, backoff: Duration },
}

struct Shared {
    handler: RwLock<Option<FrameHandler>>,
    tx: SyncSender<(NodeId, Frame)>,
}

/// TCP always, RDMA where both ends have it.
pub struct NodeTransport {
    tcp: TcpTransport,
    #[cfg(feature = "rdma")]
    rdma: Option<super::rdma::RdmaTransport>,
    via: Mutex<HashMap<NodeId, Via>>,
    shared: Arc<Shared>,
    rx: Mutex<Receiver<(NodeId, Frame)>>,
    closed: AtomicBool,
}

impl NodeTransport {
    /// Starts TCP on `tcp.listen` and, with `try_rdma` in a build with the
    /// `rdma` feature, RDMA on the same address; says in the log which.
    pub fn start(tcp: TcpConfig, try_rdma: bool) -> Result<NodeTransport, TransportError> {
        #[cfg(feature = "rdma")]
        let rdma_cfg = {
            let mut c = super::rdma::RdmaConfig::new(tcp.node, tcp.listen, &tcp.cluster_key);
            // Pollers spin only where TCP readers would: otherwise they
            // sleep on the completion channel at once, like a blocking read.
            c.spin = if tcp.busy_poll { tcp.busy_poll_window } else { Duration::ZERO };
            // As long as TCP's: a loaded peer may take seconds to finish
            // the handshake, and heartbeats connect in the background.
            c.handshake_timeout = tcp.handshake_timeout;
            c
        };
        let node = tcp.node;
        let t = TcpTransport::start(tcp)?;
        #[cfg(feature = "rdma")]
        let rdma = if try_rdma {
            // The TCP port was 0 maybe: RDMA takes the one TCP got.
            let mut c = rdma_cfg;
            c.listen = t.local_addr();
            match super::rdma::RdmaTransport::start(c) {
                Ok(r) => {
                    info!(%node, addr = %r.local_addr(), "DM transport: RDMA where peers have it, TCP otherwise");
                    Some(r)
                }
                Err(e) => {
                    info!(%node, reason = %e, "DM transport: TCP only");
                    None
                }
            }
        } else {
            info!(%node, "DM transport: TCP only (RDMA turned off)");
            None
        };
        #[cfg(not(feature = "rdma"))]
        info!(%node, try_rdma, "DM transport: TCP only (built without the `rdma` feature)");
        let (tx, rx) = mpsc::sync_channel(4096);
        let shared = Arc::new(Shared { handler: RwLock::new(None), tx });
        let fwd = |s: Arc<Shared>| -> FrameHandler {
            Arc::new(move |from, f| {
                let h = s.handler.read().clone();
                match h {
                    Some(h) => h(from, f),
                    None => {
                        let _ = s.tx.send((from, f));
                    }
                }
            })
        };
        t.set_handler(fwd(shared.clone()));
        #[cfg(feature = "rdma")]
        if let Some(r) = &rdma {
            r.set_handler(fwd(shared.clone()));
        }
        Ok(NodeTransport {
            tcp: t,
            #[cfg(feature = "rdma")]
            rdma,
            via: Mutex::new(HashMap::new()),
            shared,
            rx: Mutex::new(rx),
            closed: AtomicBool::new(false),
        })
    }

    /// The DM address (TCP; RDMA listens on the same).
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr()
    }

    /// Whether this node accepts and makes RDMA connections.
    pub fn rdma_enabled(&self) -> bool {
        #[cfg(feature = "rdma")]
        return self.rdma.is_some();
        #[cfg(not(feature = "rdma"))]
        false
    }

    /// Whether frames to `peer` currently go over RDMA.
    pub fn uses_rdma(&self, peer: NodeId) -> bool {
        self.via.lock().get(&peer) == Some(&Via::Rdma)
    }

    /// Sets (or changes) where `node` listens, for both transports.
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) {
        self.tcp.add_peer(node, addr);
        #[cfg(feature = "rdma")]
        if let Some(r) = &self.rdma {
            r.add_peer(node, addr);
        }
    }

    /// Hands every received frame, from either transport, to `h` on the
    /// thread that received it (see [`TcpTransport::set_handler`]).
    pub fn set_handler(&self, h: FrameHandler) {
        *self.shared.handler.write() = Some(h);
    }

    /// Sends a small control frame unless the connection to `peer` is busy;
    /// returns whether it was sent.
    pub fn send_if_idle(&self, peer: NodeId, frame: &Frame) -> Result<bool, TransportError> {
        #[cfg(feature = "rdma")]
        if let Some(r) = self.rdma_for(peer) {
            match r.send_if_idle(peer, frame) {
                Ok(sent) => return Ok(sent),
                Err(e) => self.rdma_failed(peer, &e),
            }
        }
        self.tcp.send_if_idle(peer, frame)
    }

    /// Whether a send to `peer` would go out at once on an open connection,
    /// with no connect or RDMA retry first (which can take up to a connect
    /// timeout when the peer's host is gone).
    pub fn settled(&self, peer: NodeId) -> bool {
        #[cfg(feature = "rdma")]
        if let Some(r) = &self.rdma {
            return match self.via.lock().get(&peer) {
                Some(Via::Rdma) => r.is_connected(peer),
                Some(Via::Tcp { retry_at, .. }) => Instant::now() < *retry_at && self.tcp.is_connected(peer),
                None => false,
            };
        }
        self.tcp.is_connected(peer)
    }

    /// Whether a connection to `node` is open on either transport.
    pub fn is_connected(&self, node: NodeId) -> bool {
        #[cfg(feature = "rdma")]
        if self.rdma.as_ref().is_some_and(|r| r.is_connected(node)) {
            return true;
        }
        self.tcp.is_connected(node)
    }

    /// Closes every connection on both transports.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.tcp.shutdown();
        #[cfg(feature = "rdma")]
        if let Some(r) = &self.rdma {
            r.shutdown();
        }
    }

    /// The RDMA transport if `peer` is (or may now be) reached over it.
    #[cfg(feature = "rdma")]
    fn rdma_for(&self, peer: NodeId) -> Option<&super::rdma::RdmaTransport> {
        let r = self.rdma.as_ref()?;
        match self.via.lock().get(&peer) {
            Some(Via::Rdma) => return Some(r),
            // Unless the peer has meanwhile connected to us over RDMA.
            Some(Via::Tcp { retry_at, .. }) if Instant::now() < *retry_at && !r.is_connected(peer) => return None,
            _ => {}
        }
        match r.ensure_connected(peer) {
            Ok(()) => {
                let dev = r.device(peer).unwrap_or_default();
                info!(%peer, device = %dev, "DM peer reached over RDMA");
                self.via.lock().insert(peer, Via::Rdma);
                Some(r)
            }
            Err(e) => {
                self.rdma_failed(peer, &e);
                None
            }
        }
    }

    #[cfg(feature = "rdma")]
    fn rdma_failed(&self, peer: NodeId, e: &TransportError) {
        let mut via = self.via.lock();
        let backoff = match via.get(&peer) {
            Some(Via::Tcp { backoff, .. }) => (*backoff * 2).min(RDMA_RETRY),
            _ => RDMA_RETRY_MIN,
        };
        let was = via.insert(peer, Via::Tcp { retry_at: Instant::now() + backoff, backoff });
        drop(via);
        if !matches!(was, Some(Via::Tcp { .. })) {
            info!(%peer, reason = %e, "DM peer reached over TCP (RDMA is tried again later)");
        }
    }
}

impl Drop for NodeTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for NodeTransport {
    fn local_node(&self) -> NodeId {
        self.tcp.local_node()
    }

    fn send(&self, peer: NodeId, frame: &Frame) -> Result<(), TransportError> {
        #[cfg(feature = "rdma")]
        if let Some(r) = self.rdma_for(peer) {
            match r.send(peer, frame) {
                Ok(()) => return Ok(()),
                Err(TransportError::Closed) => return Err(TransportError::Closed),
                Err(e) => self.rdma_failed(peer, &e),
            }
        }
        self.tcp.send(peer, frame)
    }

    fn recv(&self, timeout: Option<Duration>) -> Result<(NodeId, Frame), TransportError> {
        super::recv_queued(&self.rx.lock(), &self.closed, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Message;

    /// Asked for RDMA where the peers' address is on no RDMA device
    /// (loopback; builds without the feature have no RDMA at all), two
    /// nodes still talk, over TCP, and say so. The same holds on a machine
    /// with RDMA devices, except that RDMA CM may carry loopback over one
    /// of them, so which transport carried the frames is checked only where
    /// RDMA is off.
    #[test]
    fn without_rdma_peers_talk_over_tcp() {
        let start = |n| NodeTransport::start(TcpConfig::new(NodeId(n), "127.0.0.1:0".parse().unwrap(), b"k"), true);
        let (a, b) = (start(1).unwrap(), start(2).unwrap());
        a.add_peer(NodeId(2), b.local_addr());
        b.add_peer(NodeId(1), a.local_addr());
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        b.set_handler(Arc::new(move |from, f: Frame| {
            let _ = tx.lock().send((from, f.seq));
        }));
        for seq in 1..=3 {
            a.send(NodeId(2), &Frame::new(NodeId(1), seq, Message::Heartbeat { now_ns: seq })).unwrap();
        }
        for seq in 1..=3 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (NodeId(1), seq));
        }
        if !a.rdma_enabled() {
            assert!(!a.uses_rdma(NodeId(2)));
        }
        assert!(a.is_connected(NodeId(2)));
        // The reply way, without a handler: through recv.
        b.send(NodeId(1), &Frame::new(NodeId(2), 9, Message::Heartbeat { now_ns: 9 })).unwrap();
        let (from, f) = a.recv(Some(Duration::from_secs(5))).unwrap();
        assert_eq!((from, f.seq), (NodeId(2), 9));
        a.shutdown();
        assert_eq!(a.recv(None).unwrap_err(), TransportError::Closed);
    }
}
