//! Transports carry commands, data and completions between hosts and the
//! target. Each is a sibling behind [`Transport`]: it accepts connections,
//! moves bytes, and calls [`crate::cmd::parse`] / [`crate::cmd::execute`];
//! it never interprets commands itself. The core reaches back into a
//! transport only through [`crate::ctrlr::QueueHandle`].

pub mod pair;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod tcp;

use crate::target::Target;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

pub trait Transport: Send + Sync {
    fn name(&self) -> &'static str;
    /// TRTYPE for the discovery log page.
    fn trtype(&self) -> u8;
    /// Binds `addr` and serves connections until the listener is dropped.
    fn listen(&self, target: Arc<Target>, addr: SocketAddr) -> io::Result<Listener>;
}

/// A running listener; dropping it stops accepting (existing connections stay).
pub struct Listener {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The accept loop blocks in accept(2) and needs a connection to see `stop`.
    wake_by_connect: bool,
}

impl Listener {
    /// A listener whose thread blocks in a TCP accept.
    pub fn new(addr: SocketAddr, stop: Arc<AtomicBool>, thread: JoinHandle<()>) -> Self {
        Self { addr, stop, thread: Some(thread), wake_by_connect: true }
    }

    /// A listener whose thread checks `stop` by itself at least every few
    /// hundred milliseconds (RDMA CM waits with a timeout).
    pub fn polling(addr: SocketAddr, stop: Arc<AtomicBool>, thread: JoinHandle<()>) -> Self {
        Self { addr, stop, thread: Some(thread), wake_by_connect: false }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if self.wake_by_connect {
            // Wake the accept loop with a connection of our own.
            let _ = std::net::TcpStream::connect(self.addr);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
