//! Starts a real `storage-node` process for integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NQN: &str = "nqn.2026-11.io.tidepool:test";

pub struct Node {
    pub child: Child,
    pub addr: String,
    pub discovery: Option<String>,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// Starts storage-node on an ephemeral loopback port with a file-backed
    /// namespace of `size` in a fresh temp dir, plus `extra` flags.
    pub fn start(size: &str, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol.img");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--discovery-listen".into(),
            "127.0.0.1:0".into(),
            "--nqn".into(),
            NQN.into(),
            "--file".into(),
            vol.display().to_string(),
            "--size".into(),
            size.into(),
            "--create".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_storage-node"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start storage-node");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let (mut addr, mut discovery) = (None, None);
        let t0 = Instant::now();
        while addr.is_none() || discovery.is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20), "storage-node did not start");
            let Some(Ok(l)) = lines.next() else { panic!("storage-node exited early") };
            if let Some(a) = l.strip_prefix("storage-node: NVMe/TCP listening on ") {
                addr = Some(a.trim().to_string());
            }
            if let Some(a) = l.strip_prefix("storage-node: discovery controller on ") {
                discovery = Some(a.trim().to_string());
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Node { child, addr: addr.unwrap(), discovery, dir }
    }

    pub fn volume(&self) -> std::path::PathBuf {
        self.dir.path().join("vol.img")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A port for a server that may be restarted on it (see
/// `test_support::listen_port`).
pub fn listen_port() -> u16 {
    test_support::listen_port("127.0.0.1")
}

#[allow(unused_imports)] // each test binary uses a different subset
pub use test_support::{fuse_available, have_tool};
