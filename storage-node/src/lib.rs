//! Tidepool storage node: a user-space NVMe over Fabrics target.
//!
//! The core ([`target`], [`subsystem`], [`namespace`], [`ctrlr`], [`cmd`])
//! knows controllers, namespaces and commands; [`transport`] moves PDUs;
//! [`backend`] stores blocks. [`config`] turns a TOML file or flags into
//! a running target:
//!
//! ```no_run
//! let cfg = storage_node::config::Config::single_memory("nqn.2026-11.io.tidepool:doc", 64 << 20, "127.0.0.1:0");
//! let node = storage_node::start(&cfg).unwrap();
//! println!("listening on {}", node.listeners[0].addr);
//! ```

pub mod backend;
pub mod cmd;
pub mod config;
pub mod ctrlr;
pub mod namespace;
pub mod resv;
pub mod subsystem;
pub mod target;
pub mod transport;

use std::sync::Arc;

/// A started storage node: its target and listeners. Dropping it stops
/// accepting connections and tears every controller down.
pub struct Running {
    pub target: Arc<target::Target>,
    pub listeners: Vec<transport::Listener>,
    pub discovery: Option<transport::Listener>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.listeners.clear();
        self.discovery = None;
        self.target.shutdown();
    }
}

/// Builds the target from `cfg` and starts its listeners.
pub fn start(cfg: &config::Config) -> anyhow::Result<Running> {
    use transport::Transport;
    let target = target::Target::new(cfg.target_opts());
    for s in &cfg.subsystem {
        let sub = target.add_subsystem(s.build_subsystem()).map_err(anyhow::Error::msg)?;
        for n in &s.namespace {
            let ns = n.build(&s.nqn)?;
            tracing::info!(subsys = %s.nqn, nsid = ns.nsid, backend = %ns.backend.describe(), block_size = ns.block_size(), "namespace ready");
            sub.add_namespace(ns).map_err(anyhow::Error::msg)?;
        }
    }
    let tcp = transport::tcp::TcpTransport::new(transport::tcp::TcpOpts { busy_poll_us: cfg.target.busy_poll_us });
    let mut listeners = Vec::new();
    for a in &cfg.target.listen {
        let addr = a.parse().map_err(|e| anyhow::anyhow!("listen address {a}: {e}"))?;
        listeners.push(tcp.listen(target.clone(), addr)?);
    }
    for a in &cfg.target.rdma_listen {
        let addr = a.parse().map_err(|e| anyhow::anyhow!("rdma listen address {a}: {e}"))?;
        listeners.push(listen_rdma(&target, cfg, addr)?);
    }
    let discovery = match cfg.target.discovery_listen.as_deref() {
        Some(a) if !a.is_empty() => {
            let addr = a.parse().map_err(|e| anyhow::anyhow!("discovery address {a}: {e}"))?;
            let l = tcp.listen(target.clone(), addr)?;
            target.mark_discovery_only(l.addr);
            Some(l)
        }
        _ => None,
    };
    Ok(Running { target, listeners, discovery })
}

#[cfg(feature = "rdma")]
fn listen_rdma(
    target: &Arc<target::Target>,
    cfg: &config::Config,
    addr: std::net::SocketAddr,
) -> anyhow::Result<transport::Listener> {
    use transport::Transport;
    let t = transport::rdma::RdmaTransport::new(transport::rdma::RdmaOpts { busy_poll_us: cfg.target.busy_poll_us });
    t.listen(target.clone(), addr).map_err(|e| anyhow::anyhow!("NVMe/RDMA listener on {addr}: {e}"))
}

#[cfg(not(feature = "rdma"))]
fn listen_rdma(
    _target: &Arc<target::Target>,
    _cfg: &config::Config,
    addr: std::net::SocketAddr,
) -> anyhow::Result<transport::Listener> {
    anyhow::bail!("NVMe/RDMA listener on {addr}: storage-node was built without the `rdma` cargo feature")
}
