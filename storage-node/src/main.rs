//! `storage-node`: serve NVMe volumes over NVMe/TCP and, built with the
//! `rdma` feature, NVMe/RDMA.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use storage_node::config::{Config, NamespaceCfg, SubsystemCfg};

/// `--version` names the transports built in, so scripts and tests can
/// tell an RDMA-capable binary from a TCP-only one.
const VERSION: &str = if cfg!(feature = "rdma") {
    concat!(env!("CARGO_PKG_VERSION"), " (transports: tcp, rdma)")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (transports: tcp)")
};

/// Tidepool storage node: a user-space NVMe-oF target.
///
/// Give a TOML file with --config, or describe one subsystem with one
/// namespace by flags. Flags given with --config override its listeners.
#[derive(Parser, Debug)]
#[command(version = VERSION)]
struct Args {
    /// TOML configuration file (see the `config` module docs for the schema).
    #[arg(long)]
    config: Option<PathBuf>,
    /// NVMe/TCP listen address (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// NVMe/RDMA listen address (repeatable): an RDMA device's IP and a
    /// port, e.g. 10.0.2.15:4420. Needs the `rdma` cargo feature.
    #[arg(long = "rdma")]
    rdma: Vec<String>,
    /// Discovery controller address; "" disables it.
    #[arg(long)]
    discovery_listen: Option<String>,
    /// Subsystem NQN for a flag-built configuration.
    #[arg(long, default_value = "nqn.2026-11.io.tidepool:vol0")]
    nqn: String,
    /// Backing file or block device of namespace 1.
    #[arg(long, conflicts_with = "memory")]
    file: Option<PathBuf>,
    /// Keep namespace 1's reservations in this file through restarts (once a
    /// host registers with Persist Through Power Loss).
    #[arg(long)]
    ptpl_file: Option<PathBuf>,
    /// Back namespace 1 with memory instead of a file.
    #[arg(long)]
    memory: bool,
    /// Namespace size (e.g. 256M, 1G): creates or grows the file.
    #[arg(long)]
    size: Option<String>,
    /// Create the backing file if it does not exist.
    #[arg(long)]
    create: bool,
    /// Logical block size: 512 or 4096.
    #[arg(long, default_value_t = 512)]
    block_size: u32,
    /// Use O_DIRECT for aligned I/O.
    #[arg(long)]
    direct: bool,
    /// Host NQN allowed to connect (repeatable). Default: deny unless listed.
    #[arg(long = "allow-host")]
    allow_host: Vec<String>,
    /// Allow any host to connect.
    #[arg(long)]
    allow_any_host: bool,
    /// Poll mode: spin this many microseconds on a socket before sleeping.
    #[arg(long)]
    busy_poll_us: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = Args::parse();
    let mut cfg = match &a.config {
        Some(p) => Config::from_toml(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?,
        None => {
            anyhow::ensure!(a.file.is_some() || a.memory, "give --config, or --file PATH / --memory for namespace 1");
            Config {
                target: Default::default(),
                subsystem: vec![SubsystemCfg {
                    nqn: a.nqn.clone(),
                    serial: "TP0001".into(),
                    model: "Tidepool volume".into(),
                    allow_any_host: a.allow_any_host,
                    allowed_hosts: a.allow_host.clone(),
                    namespace: vec![NamespaceCfg {
                        nsid: 1,
                        path: a.file.clone(),
                        memory: a.memory,
                        size: a.size.clone(),
                        create: a.create,
                        block_size: a.block_size,
                        direct: a.direct,
                        uuid: None,
                        ptpl_file: a.ptpl_file.clone(),
                    }],
                }],
            }
        }
    };
    if !a.listen.is_empty() {
        cfg.target.listen = a.listen.clone();
    }
    if !a.rdma.is_empty() {
        cfg.target.rdma_listen = a.rdma.clone();
    }
    if let Some(d) = &a.discovery_listen {
        cfg.target.discovery_listen = Some(d.clone());
    }
    if let Some(b) = a.busy_poll_us {
        cfg.target.busy_poll_us = b;
    }
    cfg.validate()?;
    let node = storage_node::start(&cfg)?;
    let (tcp, rdma) = node.listeners.split_at(cfg.target.listen.len());
    for l in tcp {
        println!("storage-node: NVMe/TCP listening on {}", l.addr);
    }
    for l in rdma {
        println!("storage-node: NVMe/RDMA listening on {}", l.addr);
    }
    if let Some(d) = &node.discovery {
        println!("storage-node: discovery controller on {}", d.addr);
    }
    for s in &cfg.subsystem {
        println!("storage-node: subsystem {} ({} namespace(s))", s.nqn, s.namespace.len());
    }
    wait_for_signal();
    tracing::info!("shutting down");
    drop(node);
    Ok(())
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
