//! Starts a real `storage-node` process for integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
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

/// Whether FUSE mounts can be made here; says why not (the test then skips).
pub fn fuse_available() -> bool {
    let fusermount = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join("fusermount3").exists() || d.join("fusermount").exists())
    });
    if !Path::new("/dev/fuse").exists() || !fusermount {
        eprintln!("SKIPPED: /dev/fuse or fusermount3 is missing (apt-get install fuse3)");
        return false;
    }
    true
}

/// A loopback port for a server that may be restarted on it: below the
/// kernel's ephemeral range (32768 up), where outgoing connections take
/// their local ports and could take a killed server's port before it comes
/// back; spread by process id, and free when chosen.
pub fn listen_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = 20_000 + base.wrapping_add(n.wrapping_mul(104_729)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok() {
            return p as u16;
        }
    }
}
