//! Helpers the client and storage-node integration tests share (each
//! crate's `tests/common` module re-exports what it uses), and [`skip`], the
//! one place that decides whether a test may skip.

pub mod etcd;
pub mod skip;

pub use skip::{fuse_available, have_tool, is_root};

use std::sync::atomic::{AtomicU32, Ordering};

/// A port on `ip` for a server that may be restarted on it: below the
/// kernel's ephemeral range (32768 up), where outgoing connections take
/// their local ports and could take a killed server's port before it comes
/// back; spread by process id, and free when chosen.
pub fn listen_port(ip: &str) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = 20_000 + base.wrapping_add(n.wrapping_mul(104_729)) % 12_000;
        if std::net::TcpListener::bind((ip, p as u16)).is_ok() {
            return p as u16;
        }
    }
}
