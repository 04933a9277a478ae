//! Node-to-node message exchange behind one small trait, so the DM event path does not
//! care whether frames travel over TCP ([`tcp`]) or RDMA (`rdma`, with the `rdma`
//! feature); [`auto::NodeTransport`] picks RDMA per peer where both ends have it.
//!
//! ```no_run
//! use std::collections::HashMap;
//! use dmapi::proto::{Frame, Message};
//! use dmapi::transport::{tcp::{TcpConfig, TcpTransport}, Transport};
//! use dmapi::types::NodeId;
//! let a = TcpTransport::start(TcpConfig::new(NodeId(1), "127.0.0.1:0".parse().unwrap(), b"key")).unwrap();
//! a.add_peer(NodeId(2), "127.0.0.1:7002".parse().unwrap());
//! a.send(NodeId(2), &Frame::new(NodeId(1), 1, Message::Heartbeat { now_ns: 0 })).unwrap();
//! let (from, frame) = a.recv(None).unwrap();
//! ```

pub mod auto;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod rdma_wire;
pub mod tcp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::proto::Frame;
use crate::types::NodeId;
use crate::wire::WireError;

/// Why a transport call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Socket error.
    #[error("I/O error: {0}")]
    Io(String),
    /// The peer failed authentication (wrong cluster key or not a Tidepool node).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The peer sent bytes that do not decode.
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    /// No address is known for this node.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// Nothing arrived in time.
    #[error("timed out")]
    Timeout,
    /// The transport was shut down.
    #[error("transport closed")]
    Closed,
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        TransportError::Io(e.to_string())
    }
}

impl From<TransportError> for crate::DmError {
    fn from(e: TransportError) -> Self {
        crate::DmError::Io(e.to_string())
    }
}

/// Framed, authenticated message exchange with the cluster's nodes.
pub trait Transport: Send + Sync {
    /// This node.
    fn local_node(&self) -> NodeId;
    /// Sends one frame to `peer`, connecting and authenticating first if needed.
    fn send(&self, peer: NodeId, frame: &Frame) -> Result<(), TransportError>;
    /// The next frame from any peer, with the (authenticated) peer's id. `None`
    /// waits for ever.
    fn recv(&self, timeout: Option<Duration>) -> Result<(NodeId, Frame), TransportError>;
}

/// Takes the next frame a transport queued for `recv`, waiting at most
/// `timeout` (`None`: for ever), and waking every 100 ms to notice `closed`.
pub(crate) fn recv_queued(
    rx: &Receiver<(NodeId, Frame)>,
    closed: &AtomicBool,
    timeout: Option<Duration>,
) -> Result<(NodeId, Frame), TransportError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let step = Duration::from_millis(100);
        let wait = deadline.map_or(step, |d| d.saturating_duration_since(Instant::now()).min(step));
        match rx.recv_timeout(wait) {
            Ok(x) => return Ok(x),
            Err(RecvTimeoutError::Disconnected) => return Err(TransportError::Closed),
            Err(RecvTimeoutError::Timeout) if deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(TransportError::Timeout)
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}
