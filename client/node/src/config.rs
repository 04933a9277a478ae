//! The node daemon's static configuration: one TOML file per node (`tidepool node
//! run --config node.toml`), every field optional with defaults that run a one-node
//! cluster on this machine.
//!
//! ```toml
//! node_id = 3                      # unique in the cluster, 1..=2047
//! listen = "127.0.0.1:7103"        # node-to-node DM transport (TCP)
//! api_socket = "/tmp/tidepool-node-3.sock"
//! cluster_key = "change me"        # or cluster_key_file = "/etc/tidepool/key"
//! session_manager = 1              # the node holding sessions and dispositions (B10)
//! mounts = [1]                     # file systems mounted at start
//! [[peers]]
//! id = 1
//! addr = "127.0.0.1:7101"
//! [[filesystems]]
//! id = 1
//! manager = 2                      # the file system's manager node (B11)
//! # Its volume and metadata service, for nodes that mount it through FUSE:
//! addr = "127.0.0.1:4420"          # the storage node exporting the volume
//! nqn = "nqn.2026-11.io.tidepool:vol0"
//! nsid = 1
//! meta_addr = "127.0.0.1:7602"     # where the manager node serves metadata
//! [[fuse_mounts]]                  # FUSE mounts this daemon hosts
//! fs = 1
//! path = "/mnt/tidepool"
//! [etcd]                           # optional: membership through etcd leases
//! endpoints = ["http://127.0.0.1:2379"]
//! cluster = "tidepool"             # the key prefix /tidepool/<cluster>/
//! lease_ttl_ms = 3000              # a node silent to etcd this long is out
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dmapi::types::{FsId, NodeId};
use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        err: std::io::Error,
    },
    /// The TOML does not match the schema.
    #[error("parsing the node configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// The values contradict each other.
    #[error("invalid node configuration: {0}")]
    Invalid(String),
}

/// Another node of the cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its node id.
    pub id: u32,
    /// Where its DM transport listens.
    pub addr: SocketAddr,
}

/// A file system of the cluster and its manager node.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The file-system id (what `DmHandle::fs` carries).
    pub id: u64,
    /// The node that manages it: distributes its dispositions (B11) and, when
    /// the volume is named below, serves its metadata at `meta_addr`.
    pub manager: u32,
    /// The storage node exporting its volume (`host:port`); without it the
    /// file system exists for DM events only and nothing mounts it through FUSE.
    #[serde(default)]
    pub addr: Option<String>,
    /// The volume's subsystem NQN.
    #[serde(default)]
    pub nqn: Option<String>,
    /// The volume's namespace. Default 1.
    #[serde(default = "one")]
    pub nsid: u32,
    /// NVMe-oF transport to the volume, `tcp` or `rdma`. Default `tcp`.
    #[serde(default = "tcp")]
    pub transport: String,
    /// Where the manager node serves the file system's metadata (tokens,
    /// journal) to every mounting node.
    #[serde(default)]
    pub meta_addr: Option<SocketAddr>,
    /// How long the metadata service waits for a node to give a token back
    /// (or to say a DM right holds it, which it repeats) before it expels
    /// the node as dead. Default 30.
    #[serde(default = "thirty")]
    pub token_timeout_secs: u64,
    /// With `[etcd]`: the nodes that may serve its metadata, elected through
    /// etcd (one at a time, each term fencing the last with an NVMe
    /// reservation); mounts find the holder through etcd. Default: `manager`
    /// alone.
    #[serde(default)]
    pub managers: Vec<u32>,
}

fn thirty() -> u64 {
    30
}

fn one() -> u32 {
    1
}

fn tcp() -> String {
    "tcp".into()
}

impl FsConfig {
    /// A file system known to the DM path only (no volume).
    pub fn dm_only(id: u64, manager: u32) -> FsConfig {
        FsConfig {
            id,
            manager,
            addr: None,
            nqn: None,
            nsid: 1,
            transport: tcp(),
            meta_addr: None,
            token_timeout_secs: thirty(),
            managers: Vec::new(),
        }
    }

    /// The nodes that may serve its metadata.
    pub fn candidates(&self) -> Vec<u32> {
        if self.managers.is_empty() {
            vec![self.manager]
        } else {
            self.managers.clone()
        }
    }

    /// The etcd role of its metadata service.
    pub fn role(&self) -> String {
        format!("fs-{}", self.id)
    }

    /// Whether its volume and metadata service are named, so it can be mounted.
    pub fn mountable(&self) -> bool {
        self.addr.is_some() && self.nqn.is_some() && self.meta_addr.is_some()
    }
}

/// A FUSE mount the daemon hosts.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FuseMountConfig {
    /// The file system (an `id` of `[[filesystems]]` with a volume).
    pub fs: u64,
    /// The mount point (an existing directory).
    pub path: PathBuf,
    /// FUSE worker threads. Default 4.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Serve only the daemon's user (no `allow_other`).
    #[serde(default)]
    pub owner_only: bool,
}

fn default_threads() -> usize {
    4
}

/// The etcd cluster that decides membership (and, to come, elects roles).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`http://host:port`).
    pub endpoints: Vec<String>,
    /// The cluster's name, the key prefix `/tidepool/<cluster>/`. Default `tidepool`.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// The membership lease: a node that could not renew it this long is
    /// out of the cluster. etcd counts whole seconds, at least 2. Default 3000.
    #[serde(default = "default_ttl")]
    pub lease_ttl_ms: u64,
}

fn default_cluster() -> String {
    "tidepool".into()
}

fn default_ttl() -> u64 {
    3000
}

impl EtcdConfig {
    /// The lease TTL, as etcd will keep it (whole seconds, at least 2).
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_ms.div_ceil(1000).max(2))
    }
}

/// One node daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's unique id (1..=2047, so session ids can name it). Default 1.
    pub node_id: u32,
    /// Address of the node-to-node DM transport. Default `127.0.0.1:7101`.
    pub listen: SocketAddr,
    /// Unix socket of the local API that DM applications and the file system use.
    /// Default `/tmp/tidepool-node-<node_id>.sock`.
    pub api_socket: Option<PathBuf>,
    /// Pre-shared key authenticating node-to-node connections. Default: a fixed
    /// development key (a warning is logged); set it, or `cluster_key_file`, on any
    /// real cluster.
    pub cluster_key: Option<String>,
    /// File holding the cluster key (takes precedence over `cluster_key`).
    pub cluster_key_file: Option<PathBuf>,
    /// The session manager node (B10). Default 1.
    pub session_manager: u32,
    /// The cluster's other nodes.
    pub peers: Vec<PeerConfig>,
    /// The cluster's file systems. Default: file system 1 managed by node 1.
    pub filesystems: Vec<FsConfig>,
    /// File systems this node tells their managers it mounts at start, for DM
    /// events only (a FUSE mount in `fuse_mounts` is announced without this).
    /// Default `[1]`.
    pub mounts: Vec<u64>,
    /// FUSE mounts this daemon hosts from the start; more come and go with
    /// `tidepool mount --node`.
    pub fuse_mounts: Vec<FuseMountConfig>,
    /// The NQN this node connects to volumes with. Default: one derived from
    /// the node id (`nqn.2026-11.io.tidepool:node-<id>`), stable across restarts.
    pub host_nqn: Option<String>,
    /// Besides root, members of this group may create DM sessions.
    pub dm_admin_gid: Option<u32>,
    /// How often heartbeats go to every peer, in milliseconds. Default 200.
    pub heartbeat_interval_ms: u64,
    /// A peer silent this long is declared failed, in milliseconds. Default 1500.
    pub failure_timeout_ms: u64,
    /// How long synchronous events wait for a failed session node's session to be
    /// reclaimed before the operations fail with EIO (GPFS
    /// `dmapiSessionFailureTimeout`), in milliseconds. Default 60000.
    pub session_failure_timeout_ms: u64,
    /// Transport readers spin on their sockets while traffic is recent instead of
    /// sleeping in the kernel (lowest latency; a core per busy connection).
    pub busy_poll: bool,
    /// A file-system thread waiting for a synchronous event's answer polls for it
    /// this long before sleeping, in microseconds. Default 0 (sleep at once).
    pub spin_wait_us: u64,
    /// Carry DM events over RDMA to peers that have it too (RDMA CM on the
    /// `listen` address), TCP to the others. Needs a build with the `rdma`
    /// feature and an RDMA device on `listen`'s IP. Default true.
    pub rdma: bool,
    /// Membership through etcd leases instead of the configuration alone.
    pub etcd: Option<EtcdConfig>,
    /// With `[etcd]`: where this node serves the metadata of a file system
    /// whose election it wins. Default: the file system's `meta_addr`.
    pub meta_listen: Option<SocketAddr>,
    /// With `[etcd]`: the nodes that may be the session manager, elected
    /// through etcd, its registry and table kept there. Default:
    /// `session_manager` alone, fixed.
    pub session_managers: Vec<u32>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            api_socket: None,
            cluster_key: None,
            cluster_key_file: None,
            session_manager: 1,
            peers: Vec::new(),
            filesystems: vec![FsConfig::dm_only(1, 1)],
            mounts: vec![1],
            fuse_mounts: Vec::new(),
            host_nqn: None,
            dm_admin_gid: None,
            heartbeat_interval_ms: 200,
            failure_timeout_ms: 1500,
            session_failure_timeout_ms: 60_000,
            busy_poll: false,
            spin_wait_us: 0,
            rdma: true,
            etcd: None,
            meta_listen: None,
            session_managers: Vec::new(),
        }
    }
}

/// The development key used when none is configured.
pub use dmapi::auth::DEV_CLUSTER_KEY;

impl NodeConfig {
    /// Parses a TOML document and checks it.
    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        let c: NodeConfig = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &std::path::Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read { path: path.to_path_buf(), err })?;
        NodeConfig::from_toml(&text)
    }

    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 || self.node_id > dmapi::types::MAX_SESSION_NODE {
            return bad(format!("node_id {} is outside 1..=2047", self.node_id));
        }
        let known = |n: u32| n == self.node_id || self.peers.iter().any(|p| p.id == n);
        if !known(self.session_manager) {
            return bad(format!("session_manager {} is neither this node nor a peer", self.session_manager));
        }
        for f in &self.filesystems {
            if !known(f.manager) {
                return bad(format!("file system {} has manager {}, which is not a known node", f.id, f.manager));
            }
        }
        for m in &self.mounts {
            if !self.filesystems.iter().any(|f| f.id == *m) {
                return bad(format!("mounts names file system {m}, which is not in [[filesystems]]"));
            }
        }
        for f in &self.filesystems {
            if f.addr.is_some() != f.nqn.is_some() || (f.addr.is_some() && f.meta_addr.is_none()) {
                return bad(format!("file system {}: addr, nqn and meta_addr go together", f.id));
            }
            if f.transport.parse::<nvmf::Transport>().is_err() {
                return bad(format!("file system {}: transport {:?} is neither tcp nor rdma", f.id, f.transport));
            }
        }
        for f in &self.filesystems {
            if let Some(n) = f.managers.iter().find(|n| !known(**n)) {
                return bad(format!("file system {} has manager candidate {n}, which is not a known node", f.id));
            }
            if !f.managers.is_empty() && self.etcd.is_none() {
                return bad(format!("file system {}: managers (elected) needs [etcd]", f.id));
            }
        }
        if let Some(n) = self.session_managers.iter().find(|n| !known(**n)) {
            return bad(format!("session_managers names {n}, which is not a known node"));
        }
        if !self.session_managers.is_empty() && self.etcd.is_none() {
            return bad("session_managers (elected) needs [etcd]".into());
        }
        if let Some(e) = &self.etcd {
            if e.endpoints.is_empty() || e.endpoints.iter().any(|u| !u.starts_with("http://")) {
                return bad(format!("etcd: endpoints must be http:// URLs, and at least one: {:?}", e.endpoints));
            }
            if e.cluster.is_empty() || e.cluster.contains('/') {
                return bad(format!("etcd: cluster {:?} must be a non-empty name without '/'", e.cluster));
            }
        }
        for (i, m) in self.fuse_mounts.iter().enumerate() {
            match self.filesystems.iter().find(|f| f.id == m.fs) {
                Some(f) if f.mountable() => {}
                Some(_) => return bad(format!("fuse_mounts: file system {} has no addr, nqn and meta_addr", m.fs)),
                None => return bad(format!("fuse_mounts names file system {}, which is not in [[filesystems]]", m.fs)),
            }
            if self.fuse_mounts[..i].iter().any(|o| o.path == m.path) {
                return bad(format!("fuse_mounts: {} is mounted twice", m.path.display()));
            }
        }
        if self.peers.iter().any(|p| p.id == self.node_id) {
            return bad("a peer has this node's id".into());
        }
        if self.heartbeat_interval_ms == 0 || self.failure_timeout_ms <= self.heartbeat_interval_ms {
            return bad("failure_timeout_ms must exceed heartbeat_interval_ms > 0".into());
        }
        Ok(())
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        NodeId(self.node_id)
    }

    /// The local API socket path.
    pub fn api_socket_path(&self) -> PathBuf {
        self.api_socket.clone().unwrap_or_else(|| PathBuf::from(format!("/tmp/tidepool-node-{}.sock", self.node_id)))
    }

    /// The cluster key bytes.
    pub fn key(&self) -> Result<Vec<u8>, ConfigError> {
        if let Some(p) = &self.cluster_key_file {
            let k = std::fs::read(p).map_err(|err| ConfigError::Read { path: p.clone(), err })?;
            return Ok(k.trim_ascii().to_vec());
        }
        Ok(self.cluster_key.clone().unwrap_or_else(|| DEV_CLUSTER_KEY.into()).into_bytes())
    }

    /// The host NQN this node connects to volumes with.
    pub fn host_nqn(&self) -> String {
        self.host_nqn.clone().unwrap_or_else(|| format!("nqn.2026-11.io.tidepool:node-{}", self.node_id))
    }

    /// File system `fs`'s configuration.
    pub fn filesystem(&self, fs: FsId) -> Option<&FsConfig> {
        self.filesystems.iter().find(|f| f.id == fs.0)
    }

    /// Whether `f`'s manager is elected through etcd (it has a volume, and
    /// `[etcd]` is configured).
    fn elected(&self, f: &FsConfig) -> bool {
        self.etcd.is_some() && f.mountable()
    }

    /// The file systems whose disposition role (B11) this node may play:
    /// those it is a manager candidate of when elected, else those it manages.
    pub fn dm_managed(&self) -> Vec<FsId> {
        let me = self.node_id;
        let mine = |f: &&FsConfig| if self.elected(f) { f.candidates().contains(&me) } else { f.manager == me };
        self.filesystems.iter().filter(mine).map(|f| FsId(f.id)).collect()
    }

    /// The nodes the session manager sends disposition tables to: every node
    /// that may play a file system's disposition role (an elected role's
    /// candidates all keep the latest table, ready to take over).
    pub fn dm_fs_managers(&self) -> std::collections::BTreeSet<NodeId> {
        let mut s = std::collections::BTreeSet::new();
        for f in &self.filesystems {
            if self.elected(f) {
                s.extend(f.candidates().into_iter().map(NodeId));
            } else {
                s.insert(NodeId(f.manager));
            }
        }
        s
    }

    /// The manager node of file system `fs`.
    pub fn fs_manager(&self, fs: FsId) -> Option<NodeId> {
        self.filesystems.iter().find(|f| f.id == fs.0).map(|f| NodeId(f.manager))
    }

    /// Every node of the cluster, this one included.
    pub fn all_nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.peers.iter().map(|p| NodeId(p.id)).collect();
        v.push(self.node());
        v.sort_unstable();
        v
    }

    /// Heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Silence after which a peer is failed.
    pub fn failure_timeout(&self) -> Duration {
        Duration::from_millis(self.failure_timeout_ms)
    }

    /// GPFS-style session failure timeout.
    pub fn session_failure_timeout(&self) -> Duration {
        Duration::from_millis(self.session_failure_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_a_one_node_cluster() {
        let c = NodeConfig::from_toml("").unwrap();
        assert_eq!((c.node(), c.session_manager, c.fs_manager(FsId(1))), (NodeId(1), 1, Some(NodeId(1))));
        assert_eq!(c.key().unwrap(), DEV_CLUSTER_KEY.as_bytes());
    }

    #[test]
    fn a_full_file_parses_and_contradictions_are_refused() {
        let c = NodeConfig::from_toml(
            "node_id = 3\nsession_manager = 1\nmounts = [1]\n[[peers]]\nid = 1\naddr = \"127.0.0.1:9\"\n\
             [[filesystems]]\nid = 1\nmanager = 1\n",
        )
        .unwrap();
        assert_eq!(c.all_nodes(), vec![NodeId(1), NodeId(3)]);
        assert!(NodeConfig::from_toml("node_id = 3\nsession_manager = 9\n").is_err());
        assert!(NodeConfig::from_toml("mounts = [4]\n").is_err());
        assert!(NodeConfig::from_toml("bogus = 1\n").is_err());
    }

    #[test]
    fn fuse_mounts_need_a_volume_and_a_metadata_service() {
        let fs = "[[filesystems]]\nid = 1\nmanager = 1\naddr = \"127.0.0.1:4420\"\nnqn = \"nqn.x:v\"\n";
        let mnt = "[[fuse_mounts]]\nfs = 1\npath = \"/mnt/a\"\n";
        let err = NodeConfig::from_toml(&format!("{fs}{mnt}")).unwrap_err().to_string();
        assert!(err.contains("meta_addr"), "{err}");
        let ok = NodeConfig::from_toml(&format!("{fs}meta_addr = \"127.0.0.1:7600\"\n{mnt}")).unwrap();
        assert_eq!((ok.fuse_mounts[0].threads, ok.filesystem(FsId(1)).unwrap().nsid), (4, 1));
        assert_eq!(ok.host_nqn(), "nqn.2026-11.io.tidepool:node-1");
        let twice = format!("{fs}meta_addr = \"127.0.0.1:7600\"\n{mnt}{mnt}");
        assert!(NodeConfig::from_toml(&twice).unwrap_err().to_string().contains("twice"));
        let bad_tr = format!("{fs}meta_addr = \"127.0.0.1:7600\"\ntransport = \"udp\"\n");
        assert!(NodeConfig::from_toml(&bad_tr).unwrap_err().to_string().contains("udp"));
        assert!(
            NodeConfig::from_toml("[[fuse_mounts]]\nfs = 1\npath = \"/m\"\n").is_err(),
            "the default fs 1 has no volume"
        );
    }
}
