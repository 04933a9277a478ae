//! The source side of one node: the entry point the file system calls when an
//! operation may generate a DM event.
//!
//! [`SourceEngine::generate`] consults the node's copy of the disposition table.
//! Asynchronous events are handed to the outbound hook and the call returns at once;
//! synchronous events get a sequence number, are handed to the hook, and the calling
//! thread blocks until the session's response arrives ([`SourceEngine::on_response`]).
//! Waiting is unbounded while the session node is alive (an HSM recall may take
//! minutes); once the node daemon reports the session node failed
//! ([`SourceEngine::on_session_node_failed`]), the event fails with `EIO` unless the
//! session is reclaimed within `session_failure_timeout` (GPFS's
//! `dmapiSessionFailureTimeout`). Pending events are kept and re-sent on reclaim.
//! Asynchronous events are kept per session node until that node acknowledges them
//! ([`SourceEngine::on_ack`], cumulative) and can be re-sent after a reconnect
//! ([`SourceEngine::resend_unacked_to`]): delivery is at-least-once, and the session
//! side drops duplicates by (source node, sequence).
//!
//! ```
//! use std::sync::Arc;
//! use dmapi::disp::DispositionTable;
//! use dmapi::event::{DmEvent, EventBody};
//! use dmapi::source::{OutEvent, SourceConfig, SourceEngine};
//! use dmapi::types::*;
//!
//! let src = Arc::new(SourceEngine::new(NodeId(2), SourceConfig::default(),
//!     Arc::new(|_ev: &OutEvent| Ok(()))));
//! let ev = DmEvent::new(EventType::Read, NodeId(2), EventBody::Data {
//!     handle: DmHandle::file(FsId(1), 9, 0), offset: 0, length: 10 }).unwrap();
//! // No disposition: no event, the operation proceeds.
//! assert_eq!(src.generate(FsId(1), ev).unwrap(), DmResponse::DontCare);
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use tracing::{debug, info, warn};

use crate::disp::{DispEntry, DispositionTable};
use crate::error::{DmError, DmResult};
use crate::event::{DmEvent, EventBody};
use crate::proto::{Frame, Message};
use crate::types::{DmMsgType, DmResponse, DmSessId, DmToken, EventSet, EventType, FsId, NodeId, DM_MAX_MESSAGE_DATA};
use crate::wire::FLAG_RESEND;

/// An event on its way to a session node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutEvent {
    /// The session's node.
    pub to: NodeId,
    /// The session.
    pub sid: DmSessId,
    /// This node's sequence number for the event (the de-duplication key with the
    /// source node id).
    pub seq: u64,
    /// Whether the source waits for a response.
    pub sync: bool,
    /// The file system the event is about (0 for user events).
    pub fs: FsId,
    /// The event; `event.source` is this node.
    pub event: DmEvent,
    /// Whether this is a re-send.
    pub resend: bool,
}

/// Where the engine hands events to the transport. An error means the event could
/// not be sent now; a synchronous event then stays pending for re-send.
pub trait SourceOutbound: Send + Sync {
    /// Sends one event.
    fn send_event(&self, ev: &OutEvent) -> DmResult<()>;
}

impl<F: Fn(&OutEvent) -> DmResult<()> + Send + Sync> SourceOutbound for F {
    fn send_event(&self, ev: &OutEvent) -> DmResult<()> {
        self(ev)
    }
}

/// Source engine settings.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// How long a synchronous event waits for its session to be reclaimed after the
    /// session node failed (GPFS `dmapiSessionFailureTimeout`).
    pub session_failure_timeout: Duration,
    /// Optional bound on every synchronous wait (GPFS `dmapiEventTimeout`); `dm_pending`
    /// extends it. `None`: wait as long as the session node lives.
    pub event_timeout: Option<Duration>,
    /// Most asynchronous events kept per session node until acknowledged; beyond it
    /// `generate` returns `EAGAIN` rather than lose events.
    pub max_unacked_async: usize,
    /// Before sleeping, a thread waiting for a response polls for it this long
    /// (yielding the CPU between polls): on a busy node the answer often comes
    /// sooner than a sleep-and-wake-up costs. Zero: sleep at once.
    pub spin_wait: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            session_failure_timeout: Duration::from_secs(60),
            event_timeout: None,
            max_unacked_async: 1 << 20,
            spin_wait: Duration::ZERO,
        }
    }
}

struct PState {
    ev: OutEvent,
    result: Option<DmResult<DmResponse>>,
    deadline: Option<Instant>,
    /// Why the deadline is set (for the error and log line).
    failed_node: Option<NodeId>,
}

struct PendingEvent {
    state: Mutex<PState>,
    cv: Condvar,
}

/// The source-side engine of one node.
pub struct SourceEngine {
    node: NodeId,
    cfg: SourceConfig,
    disp: RwLock<Arc<DispositionTable>>,
    next_seq: AtomicU64,
    pending: Mutex<HashMap<u64, Arc<PendingEvent>>>,
    /// Per session node: asynchronous events sent and not yet acknowledged.
    unacked: Mutex<HashMap<NodeId, Arc<Mutex<VecDeque<OutEvent>>>>>,
    shutdown: AtomicBool,
    outbound: Arc<dyn SourceOutbound>,
}

impl SourceEngine {
    /// An engine for node `node`. Sequence numbers start from the wall clock in
    /// microseconds so that a restarted node does not reuse recent ones (the session
    /// side de-duplicates by (node, sequence)).
    pub fn new(node: NodeId, cfg: SourceConfig, outbound: Arc<dyn SourceOutbound>) -> Self {
        let start =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64);
        SourceEngine {
            node,
            cfg,
            disp: RwLock::new(Arc::new(DispositionTable::default())),
            next_seq: AtomicU64::new(start.max(1)),
            pending: Mutex::new(HashMap::new()),
            unacked: Mutex::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
            outbound,
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Installs a disposition table received from the file-system manager if it is
    /// newer than the current one. Returns whether it was installed.
    pub fn install_dispositions(&self, t: Arc<DispositionTable>) -> bool {
        let mut cur = self.disp.write();
        if t.version() > cur.version() {
            info!(version = t.version(), "dispositions installed");
            *cur = t;
            true
        } else {
            false
        }
    }

    /// The disposition table in force here.
    pub fn dispositions(&self) -> Arc<DispositionTable> {
        self.disp.read().clone()
    }

    /// Generates `event` for file system `fs` if the dispositions ask for it.
    ///
    /// Returns `DontCare` if no event was generated or the event is asynchronous;
    /// for a synchronous event, the session's `Continue` or `DontCare`, or
    /// [`DmError::Aborted`] with the errno the operation must fail with. `EIO` if the
    /// session node failed and the session was not reclaimed in time; `EINTR` on
    /// shutdown.
    pub fn generate(&self, fs: FsId, event: DmEvent) -> DmResult<DmResponse> {
        self.generate_with_filelist(fs, event, EventSet::EMPTY)
    }

    /// [`generate`](Self::generate) with the per-file event list of the object the
    /// event is about (kept by the file system), which also enables events.
    pub fn generate_with_filelist(&self, fs: FsId, mut event: DmEvent, file_events: EventSet) -> DmResult<DmResponse> {
        let Some(route) = self.disp.read().route_with_filelist(fs, event.ev_type, file_events) else {
            return Ok(DmResponse::DontCare);
        };
        event.source = self.node;
        event.validate()?;
        let sync = event.ev_type.is_synchronous();
        self.send(route, fs, event, sync)
    }

    /// `dm_send_msg` to a session on any node (`to` is the session's node).
    pub fn send_msg(&self, to: NodeId, sid: DmSessId, msgtype: DmMsgType, data: &[u8]) -> DmResult<DmResponse> {
        if data.len() > DM_MAX_MESSAGE_DATA {
            return Err(DmError::TooBig { needed: DM_MAX_MESSAGE_DATA });
        }
        let event = DmEvent::new(EventType::User, self.node, EventBody::User { data: data.to_vec() })?;
        self.send(DispEntry { node: to, sid }, FsId(0), event, msgtype == DmMsgType::Sync)
    }

    fn dest(&self, node: NodeId) -> Arc<Mutex<VecDeque<OutEvent>>> {
        self.unacked.lock().entry(node).or_default().clone()
    }

    fn send(&self, route: DispEntry, fs: FsId, event: DmEvent, sync: bool) -> DmResult<DmResponse> {
        if self.shutdown.load(Ordering::Acquire) {
            return Err(DmError::Intr("source engine shutting down"));
        }
        // Sequence allocation and hand-off happen under the destination's lock, so
        // each session node sees this node's sequences in increasing order and a
        // cumulative ack ("everything up to N") is exact.
        let dest = self.dest(route.node);
        let mut unacked = dest.lock();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let ev = OutEvent { to: route.node, sid: route.sid, seq, sync, fs, event, resend: false };
        if !sync {
            if unacked.len() >= self.cfg.max_unacked_async {
                warn!(to = %route.node, "too many unacknowledged asynchronous events");
                return Err(DmError::Again("too many unacknowledged asynchronous events"));
            }
            debug_assert!(unacked.back().is_none_or(|b| b.seq < seq), "per-node order");
            unacked.push_back(ev.clone());
            if let Err(e) = self.outbound.send_event(&ev) {
                // Kept for resend_unacked_to once the node is reachable again.
                debug!(to = %ev.to, seq, error = %e, "asynchronous event kept for re-send");
            }
            return Ok(DmResponse::DontCare);
        }
        let p = Arc::new(PendingEvent {
            state: Mutex::new(PState {
                ev: ev.clone(),
                result: None,
                deadline: self.cfg.event_timeout.map(|t| Instant::now() + t),
                failed_node: None,
            }),
            cv: Condvar::new(),
        });
        let clash = self.pending.lock().insert(seq, p.clone());
        debug_assert!(clash.is_none(), "sequence numbers are never reused");
        let sent = self.outbound.send_event(&ev);
        drop(unacked);
        if let Err(e) = sent {
            // The session node is unreachable: keep the event for re-send and let the
            // session-failure timeout decide.
            warn!(to = %ev.to, sid = %ev.sid, seq, error = %e, "event send failed; waiting for reclaim");
            let mut st = p.state.lock();
            st.failed_node = Some(ev.to);
            let d = Instant::now() + self.cfg.session_failure_timeout;
            st.deadline = Some(st.deadline.map_or(d, |x| x.min(d)));
        }
        debug!(seq, sid = %route.sid, ty = ?ev.event.ev_type, "synchronous event sent");
        let r = self.wait(&p);
        self.pending.lock().remove(&seq);
        r
    }

    /// Node `from` acknowledged every event this node sent it up to sequence `upto`
    /// (the session side acks only what it queued, and never past an event it could
    /// not queue). Returns how many asynchronous events were released.
    pub fn on_ack(&self, from: NodeId, upto: u64) -> usize {
        let dest = self.dest(from);
        let mut q = dest.lock();
        let mut n = 0;
        while q.front().is_some_and(|e| e.seq <= upto) {
            q.pop_front();
            n += 1;
        }
        n
    }

    /// Re-sends, in order, every asynchronous event not yet acknowledged by `node`
    /// (after the transport reconnected or the session was reclaimed there).
    pub fn resend_unacked_to(&self, node: NodeId) -> usize {
        let dest = self.dest(node);
        let q = dest.lock();
        for ev in q.iter() {
            let ev = OutEvent { resend: true, ..ev.clone() };
            if let Err(e) = self.outbound.send_event(&ev) {
                warn!(%node, seq = ev.seq, error = %e, "re-send failed");
                break;
            }
        }
        q.len()
    }

    /// Asynchronous events sent to `node` and not yet acknowledged.
    pub fn unacked_count(&self, node: NodeId) -> usize {
        self.dest(node).lock().len()
    }

    fn wait(&self, p: &PendingEvent) -> DmResult<DmResponse> {
        if !self.cfg.spin_wait.is_zero() {
            let until = Instant::now() + self.cfg.spin_wait;
            while Instant::now() < until && p.state.lock().result.is_none() {
                std::thread::yield_now();
            }
        }
        let mut st = p.state.lock();
        loop {
            if let Some(r) = st.result.take() {
                return match r? {
                    DmResponse::Abort(e) => Err(DmError::Aborted(e)),
                    ok => Ok(ok),
                };
            }
            if self.shutdown.load(Ordering::Acquire) {
                return Err(DmError::Intr("source engine shutting down"));
            }
            match st.deadline {
                Some(d) if Instant::now() >= d => {
                    let msg = match st.failed_node {
                        Some(n) => format!(
                            "session {} on node {n} failed and was not reclaimed within {:?}",
                            st.ev.sid, self.cfg.session_failure_timeout
                        ),
                        None => format!("no response from session {} in time", st.ev.sid),
                    };
                    warn!(seq = st.ev.seq, "{msg}");
                    return Err(DmError::Io(msg));
                }
                Some(d) => {
                    p.cv.wait_until(&mut st, d);
                }
                None => p.cv.wait(&mut st),
            }
        }
    }

    /// A response arrived for our event `ref_seq`. Returns false if no thread waits
    /// for it (already answered, timed out, or a duplicate).
    pub fn on_response(&self, from: NodeId, ref_seq: u64, response: DmResponse) -> bool {
        let Some(p) = self.pending.lock().get(&ref_seq).cloned() else {
            debug!(%from, ref_seq, "response for no pending event");
            return false;
        };
        let mut st = p.state.lock();
        if st.result.is_some() {
            return false;
        }
        st.result = Some(Ok(response));
        p.cv.notify_all();
        true
    }

    /// `dm_pending` from the session: wait at least `delay` more for `ref_seq`.
    pub fn on_pending(&self, ref_seq: u64, delay: Duration) -> bool {
        let Some(p) = self.pending.lock().get(&ref_seq).cloned() else {
            return false;
        };
        let mut st = p.state.lock();
        if let Some(d) = st.deadline {
            st.deadline = Some(d.max(Instant::now() + delay));
        }
        true
    }

    /// The node daemon saw `node` fail: every event waiting on a session there now
    /// has `session_failure_timeout` to be reclaimed. Returns how many are affected.
    pub fn on_session_node_failed(&self, node: NodeId) -> usize {
        let limit = Instant::now() + self.cfg.session_failure_timeout;
        let mut n = 0;
        for p in self.pending.lock().values() {
            let mut st = p.state.lock();
            if st.ev.to == node && st.result.is_none() {
                st.failed_node = Some(node);
                st.deadline = Some(st.deadline.map_or(limit, |d| d.min(limit)));
                p.cv.notify_all();
                n += 1;
            }
        }
        if n > 0 {
            warn!(%node, events = n, timeout = ?self.cfg.session_failure_timeout,
                "session node failed; events wait for reclaim");
        }
        n
    }

    /// Session `sid` was reclaimed on `node`: its pending events are re-sent there
    /// and wait without the failure deadline again. Returns how many were re-sent.
    pub fn on_session_reclaimed(&self, sid: DmSessId, node: NodeId) -> usize {
        let ps: Vec<Arc<PendingEvent>> = self.pending.lock().values().cloned().collect();
        let mut n = 0;
        for p in ps {
            let ev = {
                let mut st = p.state.lock();
                if st.ev.sid != sid || st.result.is_some() {
                    continue;
                }
                st.ev.to = node;
                st.ev.resend = true;
                st.failed_node = None;
                st.deadline = self.cfg.event_timeout.map(|t| Instant::now() + t);
                p.cv.notify_all();
                st.ev.clone()
            };
            if let Err(e) = self.outbound.send_event(&ev) {
                warn!(seq = ev.seq, error = %e, "re-send after reclaim failed");
            }
            n += 1;
        }
        if n > 0 {
            info!(%sid, %node, events = n, "pending events re-sent to reclaimed session");
        }
        n
    }

    /// Re-sends every pending event bound for `node` (after the transport
    /// reconnected; the session side drops duplicates).
    pub fn resend_pending_to(&self, node: NodeId) -> usize {
        let evs: Vec<OutEvent> = self
            .pending
            .lock()
            .values()
            .filter_map(|p| {
                let st = p.state.lock();
                (st.ev.to == node && st.result.is_none()).then(|| OutEvent { resend: true, ..st.ev.clone() })
            })
            .collect();
        for ev in &evs {
            if let Err(e) = self.outbound.send_event(ev) {
                warn!(seq = ev.seq, error = %e, "re-send failed");
            }
        }
        evs.len()
    }

    /// The synchronous events now waiting.
    pub fn pending_events(&self) -> Vec<OutEvent> {
        self.pending.lock().values().map(|p| p.state.lock().ev.clone()).collect()
    }

    /// Cancels every waiter with `EINTR`; later calls fail at once.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        for p in self.pending.lock().values() {
            let mut st = p.state.lock();
            if st.result.is_none() {
                st.result = Some(Err(DmError::Intr("source engine shutting down")));
            }
            p.cv.notify_all();
        }
    }
}

impl OutEvent {
    /// The frame carrying this event to its session node.
    pub fn to_frame(&self) -> Frame {
        Frame {
            source: self.event.source,
            seq: self.seq,
            ref_seq: 0,
            sid: self.sid,
            token: DmToken(0),
            flags: if self.resend { FLAG_RESEND } else { 0 },
            epoch: 0,
            msg: Message::Event { fs: self.fs, sync: self.sync, event: self.event.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Caller, Outbound, SessionConfig, SessionEngine};
    use crate::types::{DmHandle, DM_EV_WAIT, DM_NO_SESSION};
    use std::sync::Mutex as StdMutex;
    use std::thread;

    type Log = Arc<StdMutex<Vec<OutEvent>>>;

    fn source(cfg: SourceConfig) -> (Arc<SourceEngine>, Log) {
        let log: Log = Arc::default();
        let l2 = log.clone();
        let s = SourceEngine::new(
            NodeId(2),
            cfg,
            Arc::new(move |e: &OutEvent| {
                l2.lock().unwrap().push(e.clone());
                Ok(())
            }),
        );
        (Arc::new(s), log)
    }

    fn table(sid: DmSessId, node: NodeId, ts: &[EventType]) -> Arc<DispositionTable> {
        let mut t = DispositionTable::default();
        let set: EventSet = ts.iter().copied().collect();
        let fs = DmHandle::fs(FsId(1));
        t.dm_set_disp(sid, node, &fs, set).unwrap();
        t.dm_set_eventlist(&fs, set).unwrap();
        Arc::new(t)
    }

    fn read_ev() -> DmEvent {
        DmEvent::new(
            EventType::Read,
            NodeId(0),
            EventBody::Data { handle: DmHandle::file(FsId(1), 3, 1), offset: 0, length: 5 },
        )
        .unwrap()
    }

    fn sid() -> DmSessId {
        DmSessId::compose(NodeId(1), 1).unwrap()
    }

    /// Waits until `n` events have been handed to the outbound hook.
    fn wait_log(log: &Log, n: usize) {
        while log.lock().unwrap().len() < n {
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_pending(s: &SourceEngine, n: usize) {
        while s.pending_events().len() < n {
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn no_disposition_no_event() {
        let (s, log) = source(SourceConfig::default());
        assert_eq!(s.generate(FsId(1), read_ev()).unwrap(), DmResponse::DontCare);
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn dispositions_install_only_when_newer() {
        let (s, _) = source(SourceConfig::default());
        let t = table(sid(), NodeId(1), &[EventType::Read]);
        assert!(s.install_dispositions(t.clone()));
        assert!(!s.install_dispositions(t.clone()));
        assert!(!s.install_dispositions(Arc::new(DispositionTable::default())));
        assert_eq!(s.dispositions().version(), t.version());
    }

    #[test]
    fn async_events_return_at_once() {
        let (s, log) = source(SourceConfig::default());
        s.install_dispositions(table(sid(), NodeId(1), &[EventType::Postcreate]));
        let ev = DmEvent::new(
            EventType::Postcreate,
            NodeId(0),
            EventBody::Namespace {
                mode: 0o644,
                handle1: Some(DmHandle::file(FsId(1), 2, 1)),
                handle2: None,
                name1: b"f".to_vec(),
                name2: vec![],
                retcode: 0,
            },
        )
        .unwrap();
        assert_eq!(s.generate(FsId(1), ev).unwrap(), DmResponse::DontCare);
        let l = log.lock().unwrap();
        assert_eq!(l.len(), 1);
        assert!(!l[0].sync);
        assert_eq!(l[0].event.source, NodeId(2), "B12: source stamped");
        assert!(s.pending_events().is_empty());
    }

    #[test]
    fn b4_sync_event_blocks_until_continue_or_abort() {
        let (s, log) = source(SourceConfig::default());
        s.install_dispositions(table(sid(), NodeId(1), &[EventType::Read]));
        for (i, (resp, want)) in [
            (DmResponse::Continue, Ok(DmResponse::Continue)),
            (DmResponse::Abort(libc::EDQUOT), Err(DmError::Aborted(libc::EDQUOT))),
        ]
        .into_iter()
        .enumerate()
        {
            let s2 = s.clone();
            let t = thread::spawn(move || s2.generate(FsId(1), read_ev()));
            wait_log(&log, i + 1);
            thread::sleep(Duration::from_millis(20));
            assert!(!t.is_finished(), "the operation's thread blocks");
            let seq = log.lock().unwrap().last().unwrap().seq;
            assert!(s.on_response(NodeId(1), seq, resp));
            assert_eq!(t.join().unwrap(), want);
            assert!(!s.on_response(NodeId(1), seq, resp), "answered once");
        }
    }

    #[test]
    fn session_failure_timeout_fails_with_eio_and_pending_extends() {
        let (s, log) = source(SourceConfig {
            session_failure_timeout: Duration::from_millis(100),
            event_timeout: None,
            ..SourceConfig::default()
        });
        s.install_dispositions(table(sid(), NodeId(1), &[EventType::Read]));
        let s2 = s.clone();
        let t0 = Instant::now();
        let t = thread::spawn(move || s2.generate(FsId(1), read_ev()));
        wait_log(&log, 1);
        assert_eq!(s.on_session_node_failed(NodeId(1)), 1);
        let seq = log.lock().unwrap()[0].seq;
        assert!(s.on_pending(seq, Duration::from_millis(300)));
        let r = t.join().unwrap();
        assert_eq!(r.unwrap_err().errno(), libc::EIO);
        assert!(t0.elapsed() >= Duration::from_millis(300), "dm_pending extended the wait");
    }

    #[test]
    fn reclaim_resends_pending_events_and_they_complete() {
        let (s, log) = source(SourceConfig {
            session_failure_timeout: Duration::from_secs(30),
            event_timeout: None,
            ..SourceConfig::default()
        });
        s.install_dispositions(table(sid(), NodeId(1), &[EventType::Read]));
        let s2 = s.clone();
        let t = thread::spawn(move || s2.generate(FsId(1), read_ev()));
        wait_log(&log, 1);
        s.on_session_node_failed(NodeId(1));
        assert_eq!(s.on_session_reclaimed(sid(), NodeId(5)), 1);
        let l = log.lock().unwrap().clone();
        assert_eq!(l.len(), 2);
        assert!(l[1].resend && l[1].to == NodeId(5) && l[1].seq == l[0].seq);
        assert_eq!(s.resend_pending_to(NodeId(5)), 1);
        assert!(s.on_response(NodeId(5), l[0].seq, DmResponse::Continue));
        assert_eq!(t.join().unwrap().unwrap(), DmResponse::Continue);
    }

    #[test]
    fn send_failure_keeps_the_event_for_reclaim() {
        let s = Arc::new(SourceEngine::new(
            NodeId(2),
            SourceConfig {
                session_failure_timeout: Duration::from_millis(50),
                event_timeout: None,
                ..SourceConfig::default()
            },
            Arc::new(|_: &OutEvent| Err(DmError::Io("down".into()))),
        ));
        s.install_dispositions(table(sid(), NodeId(1), &[EventType::Read]));
        let r = s.generate(FsId(1), read_ev());
        assert_eq!(r.unwrap_err().errno(), libc::EIO);
    }

    #[test]
    fn async_events_are_kept_until_acked_and_resent_in_order() {
        let (s, log) = source(SourceConfig { max_unacked_async: 3, ..SourceConfig::default() });
        s.install_dispositions(table(sid(), NodeId(1), &[EventType::Postcreate]));
        let ev = || {
            DmEvent::new(
                EventType::Postcreate,
                NodeId(0),
                EventBody::Namespace {
                    mode: 0,
                    handle1: None,
                    handle2: None,
                    name1: b"f".to_vec(),
                    name2: vec![],
                    retcode: 0,
                },
            )
            .unwrap()
        };
        for _ in 0..3 {
            s.generate(FsId(1), ev()).unwrap();
        }
        assert_eq!(s.unacked_count(NodeId(1)), 3);
        assert_eq!(s.generate(FsId(1), ev()).unwrap_err().errno(), libc::EAGAIN, "bounded, never silently dropped");
        let seqs: Vec<u64> = log.lock().unwrap().iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s.on_ack(NodeId(1), seqs[1]), 2);
        assert_eq!(s.unacked_count(NodeId(1)), 1);
        assert_eq!(s.resend_unacked_to(NodeId(1)), 1);
        let last = log.lock().unwrap().last().cloned().unwrap();
        assert!(last.resend && last.seq == seqs[2]);
        assert_eq!(s.on_ack(NodeId(1), u64::MAX), 1);
        assert_eq!(s.on_ack(NodeId(1), u64::MAX), 0);
    }

    #[test]
    fn async_send_failure_keeps_the_event() {
        let s = SourceEngine::new(
            NodeId(2),
            SourceConfig::default(),
            Arc::new(|_: &OutEvent| Err(DmError::Io("down".into()))),
        );
        let mut t = DispositionTable::default();
        let fs = DmHandle::fs(FsId(1));
        let set: EventSet = [EventType::Destroy].into_iter().collect();
        t.dm_set_disp(sid(), NodeId(1), &fs, set).unwrap();
        t.dm_set_eventlist(&fs, set).unwrap();
        s.install_dispositions(Arc::new(t));
        let ev = DmEvent::new(
            EventType::Destroy,
            NodeId(0),
            EventBody::Destroy {
                handle: DmHandle::file(FsId(1), 4, 1),
                attrname: Default::default(),
                attrcopy: vec![],
            },
        )
        .unwrap();
        assert_eq!(s.generate(FsId(1), ev).unwrap(), DmResponse::DontCare);
        assert_eq!(s.unacked_count(NodeId(1)), 1);
    }

    #[test]
    fn shutdown_cancels_waiters_cleanly() {
        let (s, _) = source(SourceConfig::default());
        s.install_dispositions(table(sid(), NodeId(1), &[EventType::Read]));
        let s2 = s.clone();
        let t = thread::spawn(move || s2.generate(FsId(1), read_ev()));
        wait_pending(&s, 1);
        s.shutdown();
        assert_eq!(t.join().unwrap().unwrap_err().errno(), libc::EINTR);
        assert_eq!(s.generate(FsId(1), read_ev()).unwrap_err().errno(), libc::EINTR);
    }

    #[test]
    fn event_timeout_bounds_the_wait() {
        let (s, _) = source(SourceConfig {
            session_failure_timeout: Duration::from_secs(60),
            event_timeout: Some(Duration::from_millis(30)),
            ..SourceConfig::default()
        });
        s.install_dispositions(table(sid(), NodeId(1), &[EventType::Read]));
        assert_eq!(s.generate(FsId(1), read_ev()).unwrap_err().errno(), libc::EIO);
    }

    #[test]
    fn send_msg_checks_size_and_waits_for_sync() {
        let (s, log) = source(SourceConfig::default());
        assert_eq!(
            s.send_msg(NodeId(1), sid(), DmMsgType::Async, &vec![0; DM_MAX_MESSAGE_DATA + 1]).unwrap_err().errno(),
            libc::E2BIG
        );
        assert_eq!(s.send_msg(NodeId(1), sid(), DmMsgType::Async, b"x").unwrap(), DmResponse::DontCare);
        let s2 = s.clone();
        let t = thread::spawn(move || s2.send_msg(NodeId(1), sid(), DmMsgType::Sync, b"y"));
        wait_log(&log, 2);
        let seq = log.lock().unwrap()[1].seq;
        s.on_response(NodeId(1), seq, DmResponse::Continue);
        assert_eq!(t.join().unwrap().unwrap(), DmResponse::Continue);
    }

    /// B1/B4/B5/B8 in one process: a source on node 2 and one on node 1 itself feed
    /// the same session on node 1 through hooks standing in for the transport.
    #[test]
    fn source_and_session_engines_round_trip() {
        let sess_slot: Arc<StdMutex<Option<Arc<SessionEngine>>>> = Arc::default();
        let srcs: Arc<StdMutex<HashMap<NodeId, Arc<SourceEngine>>>> = Arc::default();
        let srcs2 = srcs.clone();
        let sess = Arc::new(SessionEngine::new(
            NodeId(1),
            SessionConfig::default(),
            Arc::new(move |o: Outbound| {
                if let Outbound::Response { to, ref_seq, response, .. } = o {
                    let s = srcs2.lock().unwrap().get(&to).cloned().unwrap();
                    s.on_response(NodeId(1), ref_seq, response);
                }
            }),
        ));
        *sess_slot.lock().unwrap() = Some(sess.clone());
        let sid = sess.dm_create_session(&Caller::root(), DM_NO_SESSION, b"hsm").unwrap();
        let mk = |node: u32| {
            let slot = sess_slot.clone();
            Arc::new(SourceEngine::new(
                NodeId(node),
                SourceConfig::default(),
                Arc::new(move |e: &OutEvent| {
                    let sess = slot.lock().unwrap().clone().unwrap();
                    sess.deliver(e.sid, e.seq, e.sync, e.event.clone()).map(|_| ())
                }),
            ))
        };
        for n in [1, 2] {
            let s = mk(n);
            s.install_dispositions(table(sid, NodeId(1), &[EventType::Read]));
            srcs.lock().unwrap().insert(NodeId(n), s);
        }
        let app = {
            let sess = sess.clone();
            thread::spawn(move || {
                let mut from = Vec::new();
                for _ in 0..2 {
                    let evs = sess.get_events_typed(sid, 1, DM_EV_WAIT, 4096).unwrap();
                    from.push(evs[0].source);
                    let resp =
                        if evs[0].source == NodeId(2) { DmResponse::Abort(libc::EAGAIN) } else { DmResponse::Continue };
                    sess.dm_respond_event(sid, evs[0].token, resp, &[]).unwrap();
                }
                from.sort();
                from
            })
        };
        let handles: Vec<_> = [1, 2]
            .into_iter()
            .map(|n| {
                let s = srcs.lock().unwrap().get(&NodeId(n)).cloned().unwrap();
                thread::spawn(move || s.generate(FsId(1), read_ev()))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results[0], Ok(DmResponse::Continue));
        assert_eq!(results[1], Err(DmError::Aborted(libc::EAGAIN)));
        assert_eq!(app.join().unwrap(), vec![NodeId(1), NodeId(2)]);
    }
}
