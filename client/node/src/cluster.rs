//! The node's link to the cluster's coordination service (etcd, through
//! the `coord` crate), when `[etcd]` is configured: the node joins with a
//! lease it renews, and follows who else is in. etcd decides membership:
//! a peer whose lease expired is failed at once, even if its heartbeats
//! still arrive (it may be cut off from etcd only), and only members may
//! use the file-system managers this node hosts. Without `[etcd]` the
//! configuration's nodes are the members.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::etcd::EtcdStore;
use coord::{Member, Store, StoreError};
use parking_lot::{Mutex, RwLock};
use tracing::{error, info, warn};

use crate::config::EtcdConfig;

/// How long a starting daemon waits for etcd to answer.
pub const ETCD_PATIENCE: Duration = Duration::from_secs(30);

/// What a node publishes of itself in its member key: its DM address and
/// the reservation key it registers on volumes with.
pub fn member_value(dm_addr: std::net::SocketAddr, rkey: u64) -> Vec<u8> {
    format!("dm={dm_addr} rkey={rkey:#x}").into_bytes()
}

/// The value of `name=` in a member or role value.
pub fn field(value: &[u8], name: &str) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?;
    s.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')).map(str::to_string)
}

fn rkey_in(value: &[u8]) -> Option<u64> {
    u64::from_str_radix(field(value, "rkey")?.trim_start_matches("0x"), 16).ok()
}

/// This node in the cluster: its membership and the members it sees.
pub struct ClusterLink {
    store: Arc<dyn Store>,
    cluster: String,
    node: u32,
    member: Mutex<Option<Member>>,
    members: RwLock<BTreeMap<u32, Vec<u8>>>,
    /// For joining again after the lease was lost.
    dm_addr: std::net::SocketAddr,
    ttl: Duration,
    /// (volume, key) this node registered on, so that it registers once per
    /// membership: registering again after a fence would undo it.
    registered: Mutex<std::collections::HashSet<(String, u64)>>,
}

impl ClusterLink {
    /// Connects to etcd (waiting up to [`ETCD_PATIENCE`] for it) and joins
    /// the cluster as `node`, its DM transport on `dm_addr`.
    pub fn join(cfg: &EtcdConfig, node: u32, dm_addr: std::net::SocketAddr) -> Result<Arc<ClusterLink>, StoreError> {
        let start = Instant::now();
        let store: Arc<dyn Store> = loop {
            match EtcdStore::connect(&cfg.endpoints) {
                Ok(s) => break Arc::new(s),
                Err(e) if start.elapsed() < ETCD_PATIENCE => {
                    info!(error = %e, "etcd not reachable yet; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        };
        let member = Member::join(store.clone(), &cfg.cluster, node, b"", cfg.lease_ttl())?;
        // The reservation key goes with this membership: a later one has another.
        member.publish(&member_value(dm_addr, crate::fencing::key(node, member.lease())))?;
        let link = Arc::new(ClusterLink {
            store,
            cluster: cfg.cluster.clone(),
            node,
            member: Mutex::new(Some(member)),
            members: RwLock::default(),
            dm_addr,
            ttl: cfg.lease_ttl(),
            registered: Mutex::default(),
        });
        link.refresh()?;
        Ok(link)
    }

    /// Joins the cluster again after this node's lease was lost: a new
    /// lease, so a new membership with a new reservation key (the old one
    /// was fenced, and stays so). Only after the node stopped everything it
    /// did under the old one: what it held is others' now.
    pub fn rejoin(&self) -> Result<(), StoreError> {
        let member = Member::join(self.store.clone(), &self.cluster, self.node, b"", self.ttl)?;
        member.publish(&member_value(self.dm_addr, crate::fencing::key(self.node, member.lease())))?;
        *self.member.lock() = Some(member);
        self.refresh()?;
        info!(node = self.node, "joined the cluster again after losing the lease");
        Ok(())
    }

    /// Starts renewing the lease; `on_lost` runs once if it is lost.
    pub fn keep_alive(&self, on_lost: impl FnOnce() + Send + 'static) {
        if let Some(m) = self.member.lock().as_mut() {
            m.keep_alive_in_background(on_lost);
        }
    }

    /// Whether node `n` is a member now (as last seen).
    pub fn is_member(&self, n: u32) -> bool {
        self.members.read().contains_key(&n)
    }

    /// The members now (as last seen), in node order.
    pub fn members(&self) -> Vec<u32> {
        self.members.read().keys().copied().collect()
    }

    /// This node's membership lease.
    pub fn lease(&self) -> Option<coord::LeaseId> {
        self.member.lock().as_ref().map(|m| m.lease())
    }

    /// The reservation key this node registers on volumes with.
    pub fn rkey(&self) -> Option<u64> {
        self.lease().map(|l| crate::fencing::key(self.node, l))
    }

    /// Runs `register` with this membership's reservation key the first
    /// time this membership uses `volume`; refuses once the lease is gone.
    pub fn register_once(
        &self,
        volume: &str,
        register: impl FnOnce(u64) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let key = match self.rkey() {
            Some(k) if !self.lost() => k,
            _ => return Err(std::io::Error::other("this node is out of the cluster")),
        };
        let mut done = self.registered.lock();
        if done.contains(&(volume.to_string(), key)) {
            return Ok(());
        }
        register(key)?;
        info!(volume, key = format_args!("{key:#x}"), "registered on the volume");
        done.insert((volume.to_string(), key));
        Ok(())
    }

    /// Whether this node's lease is known to be gone.
    pub fn lost(&self) -> bool {
        self.member.lock().as_ref().is_none_or(|m| m.lost())
    }

    /// The election of `role`.
    pub fn election(&self, role: &str) -> coord::Election {
        coord::Election::new(self.store.clone(), &self.cluster, role)
    }

    /// This node id.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// The store, for roles that keep records in it.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The cluster's name (its key prefix).
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Reads the member list again; the nodes that left (with what they
    /// had published) and joined since.
    #[allow(clippy::type_complexity)]
    fn refresh(&self) -> Result<(Vec<(u32, Vec<u8>)>, Vec<u32>, coord::Rev), StoreError> {
        let (listed, rev) = Member::list_at(&*self.store, &self.cluster)?;
        let now: BTreeMap<u32, Vec<u8>> = listed.into_iter().map(|m| (m.node, m.value)).collect();
        let mut cur = self.members.write();
        let gone = cur.iter().filter(|(n, _)| !now.contains_key(n)).map(|(n, v)| (*n, v.clone())).collect();
        let new = now.keys().filter(|n| !cur.contains_key(n)).copied().collect();
        *cur = now;
        Ok((gone, new, rev))
    }

    /// Follows membership from a thread: `on_gone(n, rkey)` for every node
    /// whose lease ended (with the reservation key it had), `on_joined(n)`
    /// for every node that (re)joined.
    pub fn follow(
        self: &Arc<Self>,
        on_gone: impl Fn(u32, Option<u64>) + Send + 'static,
        on_joined: impl Fn(u32) + Send + 'static,
    ) -> std::io::Result<()> {
        let me = Arc::downgrade(self);
        let prefix = format!("{}members/", coord::prefix(&self.cluster));
        std::thread::Builder::new().name("cluster-members".into()).spawn(move || {
            let mut rev = 0;
            loop {
                let Some(link) = me.upgrade() else { return };
                match link.refresh() {
                    Ok((gone, new, r)) => {
                        rev = r;
                        for (n, v) in gone.into_iter().filter(|(n, _)| *n != link.node) {
                            warn!(node = n, "node left the cluster (its etcd lease ended)");
                            on_gone(n, rkey_in(&v));
                        }
                        for n in new.into_iter().filter(|n| *n != link.node) {
                            info!(node = n, "node joined the cluster");
                            on_joined(n);
                        }
                    }
                    Err(e) => warn!(error = %e, "reading the cluster's members"),
                }
                let store = link.store.clone();
                drop(link);
                // A short wait, so a dropped link ends this thread soon.
                if let Err(e) = store.wait(&prefix, rev, Duration::from_secs(1)) {
                    warn!(error = %e, "watching the cluster's members");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        })?;
        Ok(())
    }

    /// Leaves the cluster (at a clean shutdown: the others need not wait
    /// for the lease to expire).
    pub fn leave(&self) {
        if let Some(m) = self.member.lock().take() {
            if let Err(e) = m.leave() {
                error!(error = %e, "leaving the cluster");
            }
        }
    }
}
