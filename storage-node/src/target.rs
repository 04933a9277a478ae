//! The target: subsystems, controllers, listeners and the keep-alive
//! watchdog. Transports hand it parsed commands; it never touches sockets.

use crate::ctrlr::Ctrl;
use crate::subsystem::Subsystem;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits the target advertises to hosts.
#[derive(Debug, Clone)]
pub struct TargetOpts {
    /// Maximum data transfer size in bytes (a power of two, >= 4 KiB).
    pub max_transfer: u32,
    /// In-capsule data a host may send with a command on I/O queues.
    pub inline_data_size: u32,
    /// I/O queues per controller.
    pub max_io_queues: u16,
    /// Entries per queue (MQES + 1).
    pub max_queue_depth: u16,
    /// Keep-alive timeout to apply when a host asks for none on an I/O
    /// controller; 0 keeps "none".
    pub default_kato_ms: u32,
}

impl Default for TargetOpts {
    fn default() -> Self {
        Self {
            max_transfer: 128 * 1024,
            inline_data_size: 16 * 1024,
            max_io_queues: 8,
            max_queue_depth: 128,
            default_kato_ms: 0,
        }
    }
}

/// A listening address, as the discovery log page reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub trtype: u8,
    pub addr: SocketAddr,
    pub portid: u16,
    /// Serves only the discovery subsystem (the well-known port 8009).
    pub discovery_only: bool,
    /// Transport-specific address subtype for the discovery log entry
    /// (RDMA: QP service type, provider type, connection management).
    pub tsas: [u8; 256],
}

pub struct Target {
    pub opts: TargetOpts,
    subsystems: RwLock<Vec<Arc<Subsystem>>>,
    ctrls: Mutex<HashMap<u16, Arc<Ctrl>>>,
    next_cntlid: AtomicU16,
    pub ports: RwLock<Vec<PortInfo>>,
    pub discovery_genctr: AtomicU64,
    epoch: Instant,
    stopping: AtomicBool,
}

impl Target {
    pub fn new(opts: TargetOpts) -> Arc<Self> {
        let t = Arc::new(Self {
            opts,
            subsystems: RwLock::new(vec![Arc::new(Subsystem::discovery())]),
            ctrls: Mutex::new(HashMap::new()),
            next_cntlid: AtomicU16::new(1),
            ports: RwLock::new(Vec::new()),
            discovery_genctr: AtomicU64::new(1),
            epoch: Instant::now(),
            stopping: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&t);
        std::thread::Builder::new()
            .name("kato-watchdog".into())
            .spawn(move || {
                while let Some(t) = weak.upgrade() {
                    if t.stopping.load(Ordering::Acquire) {
                        break;
                    }
                    t.check_keep_alive();
                    drop(t);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .expect("spawn keep-alive watchdog");
        t
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn add_subsystem(&self, s: Subsystem) -> Result<Arc<Subsystem>, String> {
        let mut subs = self.subsystems.write();
        if subs.iter().any(|x| x.nqn == s.nqn) {
            return Err(format!("subsystem {} already exists", s.nqn));
        }
        let s = Arc::new(s);
        subs.push(s.clone());
        self.discovery_genctr.fetch_add(1, Ordering::AcqRel);
        Ok(s)
    }

    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems.read().iter().find(|s| s.nqn == nqn).cloned()
    }

    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems.read().clone()
    }

    pub fn add_port(&self, trtype: u8, addr: SocketAddr) {
        let mut p = self.ports.write();
        let portid = p.len() as u16 + 1;
        let mut tsas = [0u8; 256];
        if trtype == nvme_wire::log::trtype::RDMA {
            use nvme_wire::zerocopy::IntoBytes;
            tsas.copy_from_slice(nvme_wire::rdma::Tsas::rdma_cm().as_bytes());
        }
        p.push(PortInfo { trtype, addr, portid, discovery_only: false, tsas });
        self.discovery_genctr.fetch_add(1, Ordering::AcqRel);
    }

    pub fn mark_discovery_only(&self, addr: SocketAddr) {
        for p in self.ports.write().iter_mut().filter(|p| p.addr == addr) {
            p.discovery_only = true;
        }
    }

    /// Creates a controller for an admin-queue Connect.
    pub fn create_ctrl(
        &self,
        subsys: Arc<Subsystem>,
        hostnqn: &str,
        hostid: [u8; 16],
        kato_ms: u32,
    ) -> Option<Arc<Ctrl>> {
        let mut ctrls = self.ctrls.lock();
        // Controller IDs 0xFFF0 and above are reserved; wrap around and skip live ones.
        for _ in 0..0xffef {
            let id = self.next_cntlid.fetch_add(1, Ordering::Relaxed);
            let id = (id % 0xffef).max(1);
            if ctrls.contains_key(&id) {
                continue;
            }
            let max_q = if subsys.is_discovery { 0 } else { self.opts.max_io_queues };
            let c = Arc::new(Ctrl::new(id, subsys, hostnqn.to_owned(), hostid, kato_ms, max_q, self.now_ms()));
            c.subsys.add_ctrl(&c);
            ctrls.insert(id, c.clone());
            return Some(c);
        }
        None
    }

    pub fn ctrl(&self, cntlid: u16) -> Option<Arc<Ctrl>> {
        self.ctrls.lock().get(&cntlid).cloned()
    }

    pub fn ctrls(&self) -> Vec<Arc<Ctrl>> {
        self.ctrls.lock().values().cloned().collect()
    }

    /// Removes a controller and closes all its queues.
    pub fn destroy_ctrl(&self, cntlid: u16) {
        let c = self.ctrls.lock().remove(&cntlid);
        if let Some(c) = c {
            tracing::info!(cntlid, host = %c.hostnqn, subsys = %c.subsys.nqn, "controller destroyed");
            c.kill();
        }
    }

    fn check_keep_alive(&self) {
        let now = self.now_ms();
        let expired: Vec<u16> = self
            .ctrls
            .lock()
            .values()
            .filter(|c| {
                let kato = c.kato_ms.load(Ordering::Relaxed) as u64;
                // Allow one extra KATO of slack for transport delay, as Linux does.
                kato > 0 && now.saturating_sub(c.last_seen.load(Ordering::Relaxed)) > kato * 2
            })
            .map(|c| c.cntlid)
            .collect();
        for id in expired {
            tracing::error!(cntlid = id, "keep-alive timer expired; tearing the controller down");
            self.destroy_ctrl(id);
        }
    }

    /// Adds a namespace at run time and tells every connected controller.
    pub fn add_namespace(&self, subsys: &Arc<Subsystem>, ns: crate::namespace::Namespace) -> Result<(), String> {
        let nsid = ns.nsid;
        subsys.add_namespace(ns)?;
        for c in self.ctrls().into_iter().filter(|c| Arc::ptr_eq(&c.subsys, subsys)) {
            c.namespace_changed(nsid);
        }
        Ok(())
    }

    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        let ids: Vec<u16> = self.ctrls.lock().keys().copied().collect();
        for id in ids {
            self.destroy_ctrl(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_wire::log::trtype;
    use nvme_wire::zerocopy::FromBytes;

    /// Discovery entries of RDMA ports carry the RDMA TSAS (connected QPs
    /// through RDMA CM); TCP entries leave it zero.
    #[test]
    fn rdma_ports_advertise_their_tsas() {
        let t = Target::new(TargetOpts::default());
        t.add_port(trtype::TCP, "127.0.0.1:4420".parse().unwrap());
        t.add_port(trtype::RDMA, "10.0.2.15:4420".parse().unwrap());
        let ports = t.ports.read().clone();
        assert_eq!(ports[0].tsas, [0; 256]);
        assert_eq!((ports[1].trtype, ports[1].portid), (trtype::RDMA, 2));
        let tsas = nvme_wire::rdma::Tsas::read_from_bytes(&ports[1].tsas[..]).unwrap();
        assert_eq!(tsas, nvme_wire::rdma::Tsas::rdma_cm());
        t.shutdown();
    }
}
