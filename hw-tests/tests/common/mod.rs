//! Shared by the hw-tests integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

/// Route the library's tracing to the test's captured output
/// (`RUST_LOG=hw_tests=debug` for more).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "hw_tests=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Guest runs get this much time, boot included; the runs themselves aim
/// for well under a minute of emulated work.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(150);

/// The subsystem NQN the storage-node tests export.
pub const NQN: &str = "nqn.2026-11.io.tidepool:vol0";

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use hw_tests::host::{self, Daemon};
use hw_tests::Skip;

/// A storage-node serving one file-backed 256 MiB namespace (512-byte
/// blocks) on free loopback ports; killed when dropped.
pub struct StorageNode {
    pub daemon: Daemon,
    pub port: u16,
    pub discovery_port: u16,
}

impl StorageNode {
    /// Start storage-node with `extra` arguments (`--allow-any-host` unless
    /// `extra` names hosts). `Err(Ok(skip))` when it is not built.
    pub fn start(dir: &Path, extra: &[&str]) -> Result<std::result::Result<StorageNode, Skip>> {
        let bin = match host::binary("storage-node") {
            Ok(b) => b,
            Err(s) => return Ok(Err(s)),
        };
        let port = host::free_port()?;
        let discovery_port = host::free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--discovery-listen")
            .arg(format!("127.0.0.1:{discovery_port}"))
            .arg("--nqn")
            .arg(NQN)
            .arg("--file")
            .arg(dir.join("vol.img"))
            .args(["--size", "256M", "--create", "--block-size", "512"]);
        if !extra.iter().any(|a| a.starts_with("--allow-host")) {
            cmd.arg("--allow-any-host");
        }
        cmd.args(extra).env("RUST_LOG", "info");
        let mut daemon = Daemon::start("storage-node", cmd, &dir.join("storage-node.log"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        daemon.wait_for_port(addr, Duration::from_secs(20))?;
        Ok(Ok(StorageNode { daemon, port, discovery_port }))
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn discovery_addr(&self) -> String {
        format!("127.0.0.1:{}", self.discovery_port)
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failing compare can
/// be reproduced without storing the data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What one `tidepool` CLI run did.
pub struct Cli {
    pub ok: bool,
    /// Exit code; clap reports usage errors as 2, runtime errors exit 1.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run a tidepool CLI command with a time limit, logging the command and
/// its output for the test transcript.
pub fn tidepool(bin: &Path, args: &[&str]) -> Result<Cli> {
    let mut cmd = Command::new(bin);
    // Backtraces would bury the one-line error in the transcript.
    cmd.args(args).env("RUST_LOG", "warn").env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0");
    let out = host::run_with_timeout(&mut cmd, Duration::from_secs(60))?;
    let cli = Cli {
        ok: out.status.success(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ tidepool {}\n  -> {}\n{}{}", args.join(" "), out.status, cli.stdout, cli.stderr);
    Ok(cli)
}
