//! A controller: one host's association with a subsystem, made by an
//! admin-queue Connect and joined by I/O-queue Connects.

use crate::subsystem::Subsystem;
use nvme_wire::fabrics::{cc, csts};
use nvme_wire::log::aen;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// What the core needs from a transport's queue: to tear it down (keep-alive
/// expiry, controller shutdown) and, for the admin queue, to send a
/// completion that no command in hand triggered (asynchronous events).
pub trait QueueHandle: Send + Sync {
    fn qid(&self) -> u16;
    /// Closes the connection; the queue's thread exits.
    fn kill(&self);
    /// Sends a completion for `cid` from outside the queue's own thread.
    fn complete_async(&self, cid: u16, status: nvme_wire::status::Status, result: u64);
}

pub struct Ctrl {
    pub cntlid: u16,
    pub subsys: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Keep-alive timeout in ms; 0 disables it.
    pub kato_ms: AtomicU32,
    /// Milliseconds since the target's epoch of the last command seen.
    pub last_seen: AtomicU64,
    pub cc: AtomicU32,
    pub csts: AtomicU32,
    /// I/O queues granted by Set Features (Number of Queues); 0-based pair.
    pub io_queues: AtomicU16,
    pub max_io_queues: u16,
    pub async_event_cfg: AtomicU32,
    pub aer: Mutex<AerState>,
    pub queues: Mutex<Vec<Weak<dyn QueueHandle>>>,
    pub dead: AtomicBool,
    pub created: Instant,
    pub err_count: AtomicU64,
    /// The newest failed commands, newest last, for the Error Information log.
    pub errors: Mutex<VecDeque<ErrorRecord>>,
    /// Reservation notifications not yet read, oldest first, and how many
    /// were ever queued (the log page's count).
    pub resv_log: Mutex<(VecDeque<(u8, u32)>, u64)>,
    /// Reservation Notification Mask (feature 82h): bit n masks log type n.
    pub resv_mask: AtomicU32,
}

/// One failed command, as the Error Information log page reports it.
#[derive(Debug, Clone, Copy)]
pub struct ErrorRecord {
    pub count: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status: nvme_wire::status::Status,
    pub nsid: u32,
}

/// Entries kept for the Error Information log (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 64;

#[derive(Default)]
pub struct AerState {
    pub pending_cids: Vec<u16>,
    pub events: VecDeque<u32>,
    pub changed_ns: Vec<u32>,
    /// Events are masked once reported until the host reads the log page.
    pub masked_ns_changed: bool,
}

/// How many Asynchronous Event Requests a host may have outstanding (AERL + 1).
pub const AER_LIMIT: usize = 4;

impl Ctrl {
    pub fn new(
        cntlid: u16,
        subsys: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
        max_io_queues: u16,
        now_ms: u64,
    ) -> Self {
        Self {
            cntlid,
            subsys,
            hostnqn,
            hostid,
            kato_ms: AtomicU32::new(kato_ms),
            last_seen: AtomicU64::new(now_ms),
            cc: AtomicU32::new(0),
            csts: AtomicU32::new(0),
            io_queues: AtomicU16::new(max_io_queues),
            max_io_queues,
            async_event_cfg: AtomicU32::new(aen::CFG_NS_ATTR),
            aer: Mutex::new(AerState::default()),
            queues: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
            created: Instant::now(),
            err_count: AtomicU64::new(0),
            errors: Mutex::new(VecDeque::with_capacity(ERROR_LOG_ENTRIES)),
            resv_log: Mutex::new((VecDeque::new(), 0)),
            resv_mask: AtomicU32::new(0),
        }
    }

    /// Applies a CC write and derives CSTS as a real controller would:
    /// enabling checks the queue entry sizes and page size, a shutdown
    /// notification completes at once (no volatile state to save here).
    pub fn set_cc(&self, new: u32) {
        let old = self.cc.swap(new, Ordering::AcqRel);
        let mut st = self.csts.load(Ordering::Acquire);
        if new & cc::EN != 0 && old & cc::EN == 0 {
            let ok = cc::iosqes(new) == 6
                && cc::iocqes(new) == 4
                && cc::mps(new) == 0
                && cc::ams(new) == 0
                && cc::css(new) == 0;
            if ok {
                st |= csts::RDY;
            } else {
                tracing::error!(
                    cntlid = self.cntlid,
                    cc = format_args!("{new:#x}"),
                    "CC enable with unsupported settings; controller fatal status"
                );
                st |= csts::CFS;
            }
        }
        if new & cc::EN == 0 && old & cc::EN != 0 {
            st &= !(csts::RDY | csts::SHST_MASK);
        }
        if cc::shn(new) != 0 && cc::shn(old) == 0 {
            st = (st & !csts::SHST_MASK) | csts::SHST_COMPLETE;
        }
        self.csts.store(st, Ordering::Release);
    }

    /// Records a failed command for the Error Information log.
    pub fn record_error(&self, sqid: u16, cid: u16, status: nvme_wire::status::Status, nsid: u32) {
        let count = self.err_count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut e = self.errors.lock();
        if e.len() == ERROR_LOG_ENTRIES {
            e.pop_front();
        }
        e.push_back(ErrorRecord { count, sqid, cid, status, nsid });
    }

    pub fn is_ready(&self) -> bool {
        self.csts.load(Ordering::Acquire) & csts::RDY != 0
    }

    pub fn add_queue(&self, q: Weak<dyn QueueHandle>) {
        let mut qs = self.queues.lock();
        qs.retain(|w| w.strong_count() > 0);
        qs.push(q);
    }

    /// Tears every queue of this controller down.
    pub fn kill(&self) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        let qs: Vec<_> = self.queues.lock().drain(..).filter_map(|w| w.upgrade()).collect();
        for q in qs {
            q.kill();
        }
    }

    fn admin_queue(&self) -> Option<Arc<dyn QueueHandle>> {
        self.queues.lock().iter().filter_map(|w| w.upgrade()).find(|q| q.qid() == 0)
    }

    /// Queues an asynchronous event and completes a waiting request if there is one.
    pub fn raise_event(&self, result: u32) {
        let cid = {
            let mut a = self.aer.lock();
            a.events.push_back(result);
            if a.pending_cids.is_empty() {
                return;
            }
            a.pending_cids.remove(0)
        };
        self.deliver_event(cid);
    }

    /// Records an Asynchronous Event Request; completes it at once if an
    /// event is already queued. Returns false past the limit.
    pub fn push_aer(&self, cid: u16) -> bool {
        {
            let mut a = self.aer.lock();
            if a.pending_cids.len() >= AER_LIMIT {
                return false;
            }
            a.pending_cids.push(cid);
            if a.events.is_empty() {
                return true;
            }
            a.pending_cids.pop();
        }
        self.deliver_event(cid);
        true
    }

    fn deliver_event(&self, cid: u16) {
        let ev = self.aer.lock().events.pop_front();
        match (ev, self.admin_queue()) {
            (Some(ev), Some(q)) => q.complete_async(cid, nvme_wire::status::Status::SUCCESS, ev as u64),
            (Some(ev), None) => {
                let mut a = self.aer.lock();
                a.events.push_front(ev);
                a.pending_cids.push(cid);
            }
            (None, _) => self.aer.lock().pending_cids.push(cid),
        }
    }

    /// Queues a reservation notification (log page 80h) for this host and
    /// raises the asynchronous event unless the type is masked. A host that
    /// was preempted learns it at once: the fence is visible, not silent.
    pub fn reservation_notice(&self, log_type: u8, nsid: u32) {
        if self.resv_mask.load(Ordering::Relaxed) & (1 << log_type) != 0 {
            return;
        }
        let first = {
            let mut l = self.resv_log.lock();
            if l.0.len() >= 255 {
                l.0.pop_front();
            }
            l.0.push_back((log_type, nsid));
            l.1 += 1;
            l.0.len() == 1
        };
        // One event until the host drains the log, as for other log pages.
        if first {
            self.raise_event(nvme_wire::log::aen_result(
                aen::TYPE_IO_CMD_SPECIFIC,
                aen::IO_RESV_LOG_AVAIL,
                nvme_wire::nvme::lid::RESV_NOTIFICATION,
            ));
        }
    }

    /// A namespace was added or removed: report it once until the host
    /// reads the Changed Namespace List.
    pub fn namespace_changed(&self, nsid: u32) {
        let raise = {
            let mut a = self.aer.lock();
            if !a.changed_ns.contains(&nsid) {
                a.changed_ns.push(nsid);
            }
            let enabled = self.async_event_cfg.load(Ordering::Relaxed) & aen::CFG_NS_ATTR != 0;
            let r = enabled && !a.masked_ns_changed;
            if r {
                a.masked_ns_changed = true;
            }
            r
        };
        if raise {
            self.raise_event(nvme_wire::log::aen_result(
                aen::TYPE_NOTICE,
                aen::NOTICE_NS_CHANGED,
                nvme_wire::nvme::lid::CHANGED_NS,
            ));
        }
    }
}
