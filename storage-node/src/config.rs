//! Storage-node configuration: one TOML schema, also buildable from flags.
//!
//! ```toml
//! [target]
//! listen = ["127.0.0.1:4420"]          # NVMe/TCP I/O listeners
//! rdma_listen = []                     # NVMe/RDMA listeners, e.g. ["10.0.2.15:4420"]
//!                                      # (an RDMA device's IP; needs the `rdma` feature)
//! discovery_listen = "127.0.0.1:8009"  # discovery controller; "" disables
//! max_transfer = 131072                # MDTS in bytes
//! inline_data_size = 16384             # in-capsule data on I/O queues
//! max_io_queues = 8
//! max_queue_depth = 128
//! busy_poll_us = 0                     # poll mode: spin before sleeping
//!
//! [[subsystem]]
//! nqn = "nqn.2026-11.io.tidepool:vol0"
//! serial = "TP0001"
//! model = "Tidepool volume"
//! allow_any_host = false               # default: deny unless listed
//! allowed_hosts = ["nqn.2014-08.org.nvmexpress:uuid:..."]
//!
//! [[subsystem.namespace]]
//! nsid = 1
//! path = "/var/lib/tidepool/vol0.img"  # file or block device; omit with memory = true
//! size = "1G"                          # for a new file or to grow one
//! create = true
//! block_size = 512                     # 512 or 4096
//! direct = false                       # O_DIRECT for aligned I/O
//! ```

use crate::backend::file::{FileBackend, FileOpts};
use crate::backend::mem::MemBackend;
use crate::backend::Backend;
use crate::namespace::Namespace;
use crate::subsystem::Subsystem;
use crate::target::TargetOpts;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub target: TargetSection,
    #[serde(default)]
    pub subsystem: Vec<SubsystemCfg>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSection {
    /// NVMe/TCP listen addresses.
    pub listen: Vec<String>,
    /// NVMe/RDMA listen addresses: the IP of an RDMA device (soft-RoCE's
    /// netdev, a RoCE NIC). Empty by default: TCP is the default transport.
    pub rdma_listen: Vec<String>,
    pub discovery_listen: Option<String>,
    pub max_transfer: u32,
    pub inline_data_size: u32,
    pub max_io_queues: u16,
    pub max_queue_depth: u16,
    pub busy_poll_us: u32,
    /// Keep-alive timeout (ms) for hosts that ask for none; 0 keeps none.
    pub default_kato_ms: u32,
}

impl Default for TargetSection {
    fn default() -> Self {
        let d = TargetOpts::default();
        Self {
            listen: vec!["127.0.0.1:4420".into()],
            rdma_listen: Vec::new(),
            discovery_listen: Some("127.0.0.1:8009".into()),
            max_transfer: d.max_transfer,
            inline_data_size: d.inline_data_size,
            max_io_queues: d.max_io_queues,
            max_queue_depth: d.max_queue_depth,
            busy_poll_us: 0,
            default_kato_ms: d.default_kato_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemCfg {
    pub nqn: String,
    #[serde(default = "default_serial")]
    pub serial: String,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub namespace: Vec<NamespaceCfg>,
}

fn default_serial() -> String {
    "TP0001".into()
}
fn default_model() -> String {
    "Tidepool volume".into()
}
fn default_bs() -> u32 {
    512
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceCfg {
    pub nsid: u32,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub memory: bool,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub create: bool,
    #[serde(default = "default_bs")]
    pub block_size: u32,
    #[serde(default)]
    pub direct: bool,
    /// Namespace UUID; derived from the subsystem NQN and NSID when absent,
    /// so it is the same on every start.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Where reservations persist through restarts (Persist Through Power
    /// Loss, turned on by a host's Register with CPTPL = 3); without it a
    /// host asking for persistence gets Invalid Field.
    #[serde(default)]
    pub ptpl_file: Option<PathBuf>,
}

/// Parses "4096", "64K", "256M", "1G", "2T".
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => anyhow::bail!("size {s:?}: unknown unit {c:?}"),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().map_err(|e| anyhow::anyhow!("size {s:?}: {e}"))?;
    n.checked_mul(mult).ok_or_else(|| anyhow::anyhow!("size {s:?} overflows"))
}

impl Config {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let c: Config = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    /// One subsystem with one memory namespace, any host allowed: for tests.
    pub fn single_memory(nqn: &str, size: u64, listen: &str) -> Self {
        Config {
            target: TargetSection { listen: vec![listen.into()], discovery_listen: None, ..Default::default() },
            subsystem: vec![SubsystemCfg {
                nqn: nqn.into(),
                serial: default_serial(),
                model: default_model(),
                allow_any_host: true,
                allowed_hosts: vec![],
                namespace: vec![NamespaceCfg {
                    nsid: 1,
                    path: None,
                    memory: true,
                    size: Some(size.to_string()),
                    create: false,
                    block_size: 512,
                    direct: false,
                    uuid: None,
                    ptpl_file: None,
                }],
            }],
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let t = &self.target;
        anyhow::ensure!(
            t.max_transfer >= 4096 && t.max_transfer.is_power_of_two(),
            "max_transfer must be a power of two >= 4096"
        );
        anyhow::ensure!(
            t.inline_data_size.is_multiple_of(16) && t.inline_data_size <= 1 << 20,
            "inline_data_size must be a multiple of 16 and at most 1 MiB"
        );
        anyhow::ensure!((2..=1024).contains(&t.max_queue_depth), "max_queue_depth must be 2..=1024");
        anyhow::ensure!((1..=1024).contains(&t.max_io_queues), "max_io_queues must be 1..=1024");
        for a in &t.rdma_listen {
            a.parse::<std::net::SocketAddr>().map_err(|e| anyhow::anyhow!("rdma_listen address {a}: {e}"))?;
        }
        anyhow::ensure!(
            t.rdma_listen.is_empty() || cfg!(feature = "rdma"),
            "rdma_listen needs storage-node built with the `rdma` cargo feature"
        );
        for s in &self.subsystem {
            anyhow::ensure!(
                s.nqn.starts_with("nqn.") && s.nqn.len() <= nvme_wire::fabrics::NQN_MAX,
                "subsystem NQN {:?} is not a valid NQN",
                s.nqn
            );
            anyhow::ensure!(s.nqn != nvme_wire::fabrics::DISCOVERY_NQN, "the discovery NQN is built in");
            if !s.allow_any_host && s.allowed_hosts.is_empty() {
                tracing::warn!(nqn = %s.nqn, "no allowed hosts and allow_any_host = false: every connect will be refused");
            }
            for n in &s.namespace {
                anyhow::ensure!(
                    n.memory != n.path.is_some(),
                    "namespace {} of {}: give exactly one of path or memory = true",
                    n.nsid,
                    s.nqn
                );
                anyhow::ensure!(
                    n.block_size == 512 || n.block_size == 4096,
                    "namespace {}: block_size must be 512 or 4096",
                    n.nsid
                );
                if let Some(sz) = &n.size {
                    parse_size(sz)?;
                }
            }
        }
        Ok(())
    }

    pub fn target_opts(&self) -> TargetOpts {
        let t = &self.target;
        TargetOpts {
            max_transfer: t.max_transfer,
            inline_data_size: t.inline_data_size,
            max_io_queues: t.max_io_queues,
            max_queue_depth: t.max_queue_depth,
            default_kato_ms: t.default_kato_ms,
        }
    }
}

impl SubsystemCfg {
    pub fn build_subsystem(&self) -> Subsystem {
        Subsystem::new(&self.nqn, &self.serial, &self.model, self.allow_any_host, self.allowed_hosts.iter().cloned())
    }
}

impl NamespaceCfg {
    pub fn build(&self, subnqn: &str) -> anyhow::Result<Namespace> {
        let size = self.size.as_deref().map(parse_size).transpose()?;
        let backend: Box<dyn Backend> = match &self.path {
            Some(p) => Box::new(
                FileBackend::open(p, &FileOpts { create: self.create, size, direct: self.direct })
                    .map_err(|e| anyhow::anyhow!("namespace {}: {}: {e}", self.nsid, p.display()))?,
            ),
            None => Box::new(MemBackend::new(
                size.ok_or_else(|| anyhow::anyhow!("memory namespace {} needs a size", self.nsid))?,
            )),
        };
        let uuid = match &self.uuid {
            Some(u) => *uuid::Uuid::parse_str(u)?.as_bytes(),
            None => {
                *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{subnqn}/{}", self.nsid).as_bytes()).as_bytes()
            }
        };
        let ns = Namespace::new(self.nsid, backend, self.block_size, uuid).map_err(anyhow::Error::msg)?;
        match &self.ptpl_file {
            Some(p) => ns.with_ptpl_file(p.clone()).map_err(|e| anyhow::anyhow!("namespace {}: {e}", self.nsid)),
            None => Ok(ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn toml_schema_parses_and_rejects_mistakes() {
        let c = Config::from_toml(
            r#"
            [target]
            listen = ["127.0.0.1:4420"]
            [[subsystem]]
            nqn = "nqn.2026-11.io.tidepool:t"
            allowed_hosts = ["nqn.host1"]
            [[subsystem.namespace]]
            nsid = 1
            memory = true
            size = "16M"
            block_size = 4096
            "#,
        )
        .unwrap();
        assert_eq!(c.subsystem[0].namespace[0].block_size, 4096);
        assert!(!c.subsystem[0].allow_any_host, "deny unless listed is the default");
        let ns = c.subsystem[0].namespace[0].build("nqn.2026-11.io.tidepool:t").unwrap();
        assert_eq!(ns.nblocks, 4096);
        let again = c.subsystem[0].namespace[0].build("nqn.2026-11.io.tidepool:t").unwrap();
        assert_eq!(ns.uuid, again.uuid, "derived UUIDs are stable");
        assert!(Config::from_toml("[target]\nbogus = 1").is_err(), "unknown fields are refused");
        assert!(c.target.rdma_listen.is_empty(), "TCP only unless RDMA is asked for");
        let rdma = Config::from_toml("[target]\nrdma_listen = [\"10.0.2.15:4420\"]");
        assert_eq!(rdma.is_ok(), cfg!(feature = "rdma"), "{rdma:?}");
        assert!(Config::from_toml("[target]\nrdma_listen = [\"nonsense\"]").is_err());
        assert!(Config::from_toml("[[subsystem]]\nnqn = \"bad\"").is_err());
        assert!(Config::from_toml("[[subsystem]]\nnqn = \"nqn.x\"\n[[subsystem.namespace]]\nnsid = 1\nmemory = true\nsize = \"1M\"\nblock_size = 1024").is_err());
    }
}
