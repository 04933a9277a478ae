//! An NVM subsystem: an NQN, its namespaces, and who may connect.

use crate::namespace::Namespace;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub is_discovery: bool,
    pub allow_any_host: bool,
    pub allowed_hosts: RwLock<HashSet<String>>,
    namespaces: RwLock<BTreeMap<u32, Arc<Namespace>>>,
    /// Bumped whenever the namespace set changes.
    pub ns_generation: AtomicU64,
    /// Controllers of this subsystem, for notifications (reservations).
    ctrls: parking_lot::Mutex<Vec<std::sync::Weak<crate::ctrlr::Ctrl>>>,
}

impl Subsystem {
    pub fn new(
        nqn: &str,
        serial: &str,
        model: &str,
        allow_any_host: bool,
        hosts: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            nqn: nqn.to_owned(),
            serial: serial.to_owned(),
            model: model.to_owned(),
            is_discovery: false,
            allow_any_host,
            allowed_hosts: RwLock::new(hosts.into_iter().collect()),
            namespaces: RwLock::new(BTreeMap::new()),
            ns_generation: AtomicU64::new(0),
            ctrls: parking_lot::Mutex::new(Vec::new()),
        }
    }

    pub fn discovery() -> Self {
        let mut s = Self::new(nvme_wire::fabrics::DISCOVERY_NQN, "", "Tidepool discovery", true, []);
        s.is_discovery = true;
        s
    }

    pub fn add_ctrl(&self, c: &Arc<crate::ctrlr::Ctrl>) {
        let mut v = self.ctrls.lock();
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(c));
    }

    /// Live controllers of this subsystem.
    pub fn ctrls(&self) -> Vec<Arc<crate::ctrlr::Ctrl>> {
        self.ctrls.lock().iter().filter_map(|w| w.upgrade()).filter(|c| !c.dead.load(Ordering::Acquire)).collect()
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.allowed_hosts.read().contains(hostnqn)
    }

    pub fn add_namespace(&self, ns: Namespace) -> Result<Arc<Namespace>, String> {
        let mut map = self.namespaces.write();
        if map.contains_key(&ns.nsid) {
            return Err(format!("namespace {} already exists in {}", ns.nsid, self.nqn));
        }
        let ns = Arc::new(ns);
        map.insert(ns.nsid, ns.clone());
        self.ns_generation.fetch_add(1, Ordering::Release);
        Ok(ns)
    }

    pub fn remove_namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        let r = self.namespaces.write().remove(&nsid);
        self.ns_generation.fetch_add(1, Ordering::Release);
        r
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.namespaces.read().get(&nsid).cloned()
    }

    pub fn nsids(&self) -> Vec<u32> {
        self.namespaces.read().keys().copied().collect()
    }

    pub fn max_nsid(&self) -> u32 {
        self.namespaces.read().keys().next_back().copied().unwrap_or(0)
    }
}
