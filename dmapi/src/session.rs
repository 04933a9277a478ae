//! The session side of one node: sessions, their event queues and tokens, and the
//! XDSM session and event functions. No networking: the node daemon feeds events in
//! with [`SessionEngine::deliver`] / [`SessionEngine::deliver_batch`] and carries what
//! the engine emits through its [`SessionOutbound`] hook (responses and `dm_pending`
//! notices to source nodes, session announcements to the session manager).
//!
//! Calls that change a session or its events must be made on the session's node; on
//! another node they fail with [`DmError::NotSessionNode`] (EINVAL). Queries about a
//! remote session are answered from the registry mirror the daemon maintains with
//! [`SessionEngine::register_remote_session`] (B13). Read-only calls that need the
//! session's events (`dm_find_eventmsg`, `dm_getall_tokens`) return
//! `NotSessionNode` for a remote session, and the daemon forwards them to its node.
//!
//! ```
//! use std::sync::Arc;
//! use dmapi::event::{parse_eventmsgs, DmEvent, EventBody};
//! use dmapi::session::{Caller, Outbound, SessionConfig, SessionEngine};
//! use dmapi::types::*;
//!
//! let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
//! let s2 = sent.clone();
//! let engine = SessionEngine::new(NodeId(1), SessionConfig::default(),
//!     Arc::new(move |o: Outbound| s2.lock().unwrap().push(o)));
//! let sid = engine.dm_create_session(&Caller::root(), DM_NO_SESSION, b"hsm").unwrap();
//! let ev = DmEvent::new(EventType::Read, NodeId(2), EventBody::Data {
//!     handle: DmHandle::file(FsId(1), 9, 0), offset: 0, length: 10 }).unwrap();
//! engine.deliver(sid, 1, true, ev).unwrap();          // from node 2, its sequence 1
//! let buf = engine.dm_get_events(sid, 10, DM_EV_WAIT, 4096).unwrap();
//! let msgs = parse_eventmsgs(&buf).unwrap();
//! assert_eq!(msgs[0].source, NodeId(2));               // B12
//! engine.dm_respond_event(sid, msgs[0].token, DmResponse::Continue, &[]).unwrap();
//! assert!(sent.lock().unwrap().iter().any(|o| matches!(o, Outbound::Response { to: NodeId(2), .. })));
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use tracing::{debug, info, warn};

use crate::error::{DmError, DmResult};
use crate::event::{encode_chain, DmEvent, EventBody};
use crate::proto::{Frame, Message};
use crate::types::{
    DmMsgType, DmResponse, DmSessId, DmToken, EventType, NodeId, DM_EV_WAIT, DM_MAX_MESSAGE_DATA, DM_NO_SESSION,
    DM_SESSION_INFO_LEN,
};

/// What the engine asks the node daemon to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// The response to a synchronous event from node `to`, whose sequence was `ref_seq`.
    Response {
        /// The source node.
        to: NodeId,
        /// The session that responded.
        sid: DmSessId,
        /// The source's sequence number of the event.
        ref_seq: u64,
        /// The token the event had here.
        token: DmToken,
        /// The response.
        response: DmResponse,
        /// `respbufp` data (carried, not interpreted).
        data: Vec<u8>,
    },
    /// `dm_pending`: the source must wait at least `delay` more for this event.
    Pending {
        /// The source node.
        to: NodeId,
        /// The session.
        sid: DmSessId,
        /// The source's sequence number of the event.
        ref_seq: u64,
        /// The event's token here.
        token: DmToken,
        /// The delay the DM application asked for.
        delay: Duration,
    },
    /// A session was created here: tell the session manager (B10).
    SessionCreated {
        /// The new session.
        sid: DmSessId,
        /// Its info string.
        info: Vec<u8>,
    },
    /// A session was reclaimed here by a restarted DM application: tell the session
    /// manager, which tells the sources to re-send the session's pending events.
    SessionReclaimed {
        /// The session.
        sid: DmSessId,
        /// Its (new) info string.
        info: Vec<u8>,
    },
    /// A session was destroyed here.
    SessionDestroyed {
        /// The session.
        sid: DmSessId,
    },
}

/// Where the engine's [`Outbound`] messages go. Called without engine locks held
/// for session announcements; responses are emitted while no session lock is held.
pub trait SessionOutbound: Send + Sync {
    /// Sends one message.
    fn send(&self, msg: Outbound);
}

impl<F: Fn(Outbound) + Send + Sync> SessionOutbound for F {
    fn send(&self, msg: Outbound) {
        self(msg)
    }
}

/// Who is calling (for the privilege check of `dm_create_session`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Group ids (effective and supplementary).
    pub gids: Vec<u32>,
}

impl Caller {
    /// The superuser.
    pub fn root() -> Caller {
        Caller { uid: 0, gids: vec![0] }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Besides root, members of this group may create sessions.
    pub dm_admin_gid: Option<u32>,
    /// Recent (source, sequence) pairs remembered per source node and session for
    /// de-duplication of re-sent events.
    pub dedup_window: usize,
    /// Most events one session may hold queued; beyond it `deliver` is `ENOMEM`
    /// (the transport keeps the event and retries).
    pub max_queued: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { dm_admin_gid: None, dedup_window: 1 << 16, max_queued: 1 << 24 }
    }
}

/// What `deliver` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Queued for `dm_get_events`.
    Queued,
    /// Seen before (same source and sequence): dropped. If it had been answered, the
    /// answer was sent again.
    Duplicate,
}

/// A summary of one session for `dm_getall_sessions`-style listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session.
    pub sid: DmSessId,
    /// Its node.
    pub node: NodeId,
    /// Its info string.
    pub info: Vec<u8>,
}

struct LocalWaiter {
    slot: Mutex<Option<DmResult<DmResponse>>>,
    cv: Condvar,
}

impl LocalWaiter {
    fn complete(&self, r: DmResult<DmResponse>) {
        let mut s = self.slot.lock();
        if s.is_none() {
            *s = Some(r);
        }
        self.cv.notify_all();
    }
}

enum Origin {
    /// From a source node (possibly this one), answered over the transport.
    Remote { node: NodeId, seq: u64 },
    /// `dm_send_msg(DM_MSGTYPE_SYNC)` on this node: a thread waits here.
    Local(Arc<LocalWaiter>),
    /// `dm_create_userevent` or an asynchronous local message: nobody waits.
    None,
}

struct Entry {
    event: DmEvent,
    sync: bool,
    origin: Origin,
}

/// Recently seen sequences of one source, and the answers given to them.
#[derive(Default)]
struct Window {
    seen: HashMap<u64, Option<DmResponse>, BuildHasherDefault<SeqHasher>>,
    order: VecDeque<u64>,
}

/// Sequences are already well spread; a multiply is all the hashing they need.
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Window {
    /// Records `seq`; returns `Err(previous answer)` if it was already seen.
    fn admit(&mut self, seq: u64, cap: usize) -> Result<(), Option<DmResponse>> {
        if let Some(prev) = self.seen.get(&seq) {
            return Err(*prev);
        }
        self.seen.insert(seq, None);
        self.order.push_back(seq);
        if self.order.len() > cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        Ok(())
    }
}

struct State {
    info: Vec<u8>,
    queue: VecDeque<Entry>,
    outstanding: BTreeMap<DmToken, Entry>,
    next_seq: u32,
    windows: HashMap<NodeId, Window>,
    destroyed: bool,
    orphaned: bool,
    interrupts: u64,
    /// `dm_get_events` calls waiting here with no thread of theirs (see
    /// [`SessionEngine::get_events_or_park`]), served first, oldest first.
    parked: VecDeque<Parked>,
}

/// A `dm_get_events` caller that is not a thread of this process (a DM application
/// behind the node's local channel). The thread that queues the next event takes
/// the events off the queue and hands them over through this, so the application is
/// woken by that thread's own send and no other thread in between. It gets the
/// events (or the error the call ends with) and gives back the events it could not
/// pass on (its application went away): they return to the head of the queue.
pub type EventsWaiter = Box<dyn FnOnce(DmResult<Vec<DmEvent>>) -> Result<(), Vec<DmEvent>> + Send>;

struct Parked {
    id: u64,
    maxmsgs: u32,
    buflen: usize,
    waiter: EventsWaiter,
}

/// What [`SessionEngine::get_events_or_park`] did.
pub enum GetEvents {
    /// Events were queued: here they are (the waiter was not kept).
    Ready(Vec<DmEvent>),
    /// None were: the waiter is parked under this id (see [`SessionEngine::unpark`]).
    Parked(u64),
}

/// Parked waiters to call once the session lock is released, each with its result.
type Handoffs = Vec<(EventsWaiter, DmResult<Vec<DmEvent>>)>;

struct Session {
    sid: DmSessId,
    state: Mutex<State>,
    cv: Condvar,
}

/// The session-side engine of one node.
pub struct SessionEngine {
    node: NodeId,
    cfg: SessionConfig,
    sessions: RwLock<HashMap<DmSessId, Arc<Session>>>,
    remote: RwLock<HashMap<DmSessId, (NodeId, Vec<u8>)>>,
    /// Sessions destroyed here whose destruction the session manager has not
    /// echoed yet: its echo of their creation, arriving late, must not bring
    /// them back as sessions of a restart.
    destroyed_here: Mutex<HashSet<DmSessId>>,
    next_sid: AtomicU32,
    next_token: AtomicI32,
    shutdown: AtomicBool,
    local_waiters: Mutex<Vec<std::sync::Weak<LocalWaiter>>>,
    next_park: AtomicU64,
    outbound: Arc<dyn SessionOutbound>,
}

/// The argument checks of `dm_get_events`.
fn check_get_events(maxmsgs: u32, flags: u32) -> DmResult<()> {
    if maxmsgs == 0 {
        return Err(DmError::Inval("maxmsgs is 0"));
    }
    if flags & !DM_EV_WAIT != 0 {
        return Err(DmError::Inval("unknown flags"));
    }
    Ok(())
}

impl SessionEngine {
    /// An engine for node `node` (1..=2047, so session ids can name it).
    pub fn new(node: NodeId, cfg: SessionConfig, outbound: Arc<dyn SessionOutbound>) -> Self {
        SessionEngine {
            node,
            cfg,
            sessions: RwLock::new(HashMap::new()),
            remote: RwLock::new(HashMap::new()),
            destroyed_here: Mutex::new(HashSet::new()),
            next_sid: AtomicU32::new(1),
            next_token: AtomicI32::new(1),
            shutdown: AtomicBool::new(false),
            local_waiters: Mutex::new(Vec::new()),
            next_park: AtomicU64::new(1),
            outbound,
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Looks up a session that must live here for a state-changing call.
    fn local(&self, sid: DmSessId) -> DmResult<Arc<Session>> {
        if let Some(s) = self.sessions.read().get(&sid) {
            return Ok(s.clone());
        }
        if let Some((node, _)) = self.remote.read().get(&sid) {
            return Err(DmError::NotSessionNode { sid, node: *node });
        }
        Err(DmError::Inval("invalid session id"))
    }

    fn alloc_token(&self) -> DmToken {
        DmToken(self.next_token.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether `t` was issued by this engine (for ESRCH versus EINVAL).
    fn token_was_issued(&self, t: DmToken) -> bool {
        t.0 > 0 && t.0 < self.next_token.load(Ordering::Relaxed)
    }

    // ---- sessions ----

    /// `dm_create_session`. With `oldsid` = `DM_NO_SESSION`, a new session; with the
    /// id of a session of this node (for example one restored with
    /// [`restore_session`](Self::restore_session) after a restart, or one whose DM
    /// application died), that session is reclaimed with its queued and outstanding
    /// events, and `oldsid` is returned.
    ///
    /// Errors: `EPERM` unless root or in `dm_admin_gid`; `E2BIG` if `info` is longer
    /// than `DM_SESSION_INFO_LEN`; `EINVAL` for an unknown `oldsid`.
    pub fn dm_create_session(&self, caller: &Caller, oldsid: DmSessId, info: &[u8]) -> DmResult<DmSessId> {
        let privileged = caller.uid == 0 || self.cfg.dm_admin_gid.is_some_and(|g| caller.gids.contains(&g));
        if !privileged {
            return Err(DmError::Perm("creating a DM session needs privilege"));
        }
        if info.len() > DM_SESSION_INFO_LEN {
            return Err(DmError::TooBig { needed: DM_SESSION_INFO_LEN });
        }
        if self.shutdown.load(Ordering::Acquire) {
            return Err(DmError::Intr("engine shutting down"));
        }
        if oldsid != DM_NO_SESSION {
            let s = self.local(oldsid)?;
            let mut st = s.state.lock();
            if st.destroyed {
                return Err(DmError::Inval("invalid session id"));
            }
            st.orphaned = false;
            st.info = info.to_vec();
            let pending = st.queue.len() + st.outstanding.len();
            drop(st);
            info!(sid = %oldsid, pending, "session reclaimed");
            self.outbound.send(Outbound::SessionReclaimed { sid: oldsid, info: info.to_vec() });
            return Ok(oldsid);
        }
        let sid = DmSessId::compose(self.node, self.next_sid.fetch_add(1, Ordering::Relaxed))?;
        self.insert_session(sid, info, false);
        info!(%sid, "session created");
        self.outbound.send(Outbound::SessionCreated { sid, info: info.to_vec() });
        Ok(sid)
    }

    fn insert_session(&self, sid: DmSessId, info: &[u8], orphaned: bool) {
        let s = Arc::new(Session {
            sid,
            state: Mutex::new(State {
                info: info.to_vec(),
                queue: VecDeque::new(),
                outstanding: BTreeMap::new(),
                next_seq: 1,
                windows: HashMap::new(),
                destroyed: false,
                orphaned,
                interrupts: 0,
                parked: VecDeque::new(),
            }),
            cv: Condvar::new(),
        });
        self.sessions.write().insert(sid, s);
        self.remote.write().remove(&sid);
        if sid.node() == Some(self.node) {
            // A restored id must never be handed out again by this node.
            let counter = sid.0 as u32 & 0xf_ffff;
            self.next_sid.fetch_max(counter + 1, Ordering::Relaxed);
        }
    }

    /// Re-creates, orphaned and empty, a session this node owned before a restart (as
    /// the session registry says), so its DM application can reclaim it with
    /// `dm_create_session(oldsid)` and the sources can re-send its pending events.
    pub fn restore_session(&self, sid: DmSessId, info: &[u8]) -> DmResult<()> {
        if sid.node().is_none() {
            return Err(DmError::Inval("invalid session id"));
        }
        if self.sessions.read().contains_key(&sid) {
            return Err(DmError::Exist("session already present"));
        }
        if self.destroyed_here.lock().contains(&sid) {
            return Err(DmError::Inval("the session was destroyed here"));
        }
        self.insert_session(sid, info, true);
        info!(%sid, "session restored, awaiting reclaim");
        Ok(())
    }

    /// Marks a session orphaned (its DM application went away); it keeps its events.
    pub fn orphan_session(&self, sid: DmSessId) -> DmResult<()> {
        let s = self.local(sid)?;
        s.state.lock().orphaned = true;
        Ok(())
    }

    /// `dm_destroy_session`: `EBUSY` while the session has outstanding tokens or
    /// queued synchronous events; queued asynchronous events are discarded.
    pub fn dm_destroy_session(&self, sid: DmSessId) -> DmResult<()> {
        let s = self.local(sid)?;
        let parked = {
            let mut st = s.state.lock();
            if !st.outstanding.is_empty() || st.queue.iter().any(|e| e.sync) {
                return Err(DmError::Busy("session has outstanding events"));
            }
            st.destroyed = true;
            st.queue.clear();
            std::mem::take(&mut st.parked)
        };
        s.cv.notify_all();
        for p in parked {
            let _ = (p.waiter)(Err(DmError::Inval("session destroyed")));
        }
        self.destroyed_here.lock().insert(sid);
        self.sessions.write().remove(&sid);
        info!(%sid, "session destroyed");
        self.outbound.send(Outbound::SessionDestroyed { sid });
        Ok(())
    }

    /// `dm_query_session`: the session's info string, here or (from the registry
    /// mirror) on another node. `EINVAL` for an unknown session.
    pub fn dm_query_session(&self, sid: DmSessId) -> DmResult<Vec<u8>> {
        if let Some(s) = self.sessions.read().get(&sid) {
            return Ok(s.state.lock().info.clone());
        }
        if let Some((_, info)) = self.remote.read().get(&sid) {
            return Ok(info.clone());
        }
        Err(DmError::Inval("invalid session id"))
    }

    /// `dm_getall_sessions`: every session of the cluster known here, sorted.
    /// `E2BIG` with the count if there are more than `nelem`.
    pub fn dm_getall_sessions(&self, nelem: usize) -> DmResult<Vec<DmSessId>> {
        let mut v: Vec<DmSessId> = self.sessions.read().keys().copied().collect();
        v.extend(self.remote.read().keys().copied());
        v.sort_unstable();
        v.dedup();
        if v.len() > nelem {
            return Err(DmError::TooBig { needed: v.len() });
        }
        Ok(v)
    }

    /// Every session known here with its node and info (for the daemon and tools).
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .sessions
            .read()
            .values()
            .map(|s| SessionInfo { sid: s.sid, node: self.node, info: s.state.lock().info.clone() })
            .collect();
        v.extend(self.remote.read().iter().map(|(sid, (node, info))| SessionInfo {
            sid: *sid,
            node: *node,
            info: info.clone(),
        }));
        v.sort_by_key(|s| s.sid);
        v
    }

    /// Records a session of another node (from the session manager's registry).
    pub fn register_remote_session(&self, sid: DmSessId, node: NodeId, info: &[u8]) {
        if node == self.node {
            return;
        }
        self.remote.write().insert(sid, (node, info.to_vec()));
    }

    /// Forgets a destroyed session: another node's, or the session manager's
    /// echo of the destruction of one of this node's.
    pub fn forget_remote_session(&self, sid: DmSessId) {
        self.remote.write().remove(&sid);
        self.destroyed_here.lock().remove(&sid);
    }

    // ---- events in ----

    /// Queues one event from the transport for session `sid`. `source_seq` is the
    /// source node's sequence number of the event (with `event.source`, the
    /// de-duplication key); `sync` says whether the source waits for a response.
    pub fn deliver(&self, sid: DmSessId, source_seq: u64, sync: bool, event: DmEvent) -> DmResult<Delivered> {
        let out = self.deliver_batch(sid, vec![(source_seq, sync, event)])?;
        Ok(out[0])
    }

    /// Queues many `(source_seq, sync, event)` for one session under one lock
    /// acquisition (the transport hands over whatever a receive produced). All or
    /// nothing: if the batch would overflow `max_queued`, nothing is queued and the
    /// result is `ENOMEM` (the transport keeps the batch and retries). Returns what
    /// happened to each event, in order.
    pub fn deliver_batch(&self, sid: DmSessId, events: Vec<(u64, bool, DmEvent)>) -> DmResult<Vec<Delivered>> {
        let s = self.local(sid)?;
        let mut resend = Vec::new();
        let mut out = Vec::with_capacity(events.len());
        let handoffs;
        {
            let mut st = s.state.lock();
            if st.destroyed {
                return Err(DmError::Inval("invalid session id"));
            }
            if st.queue.len() + events.len() > self.cfg.max_queued {
                warn!(%sid, queued = st.queue.len(), "session queue full");
                return Err(DmError::NoMem("session queue full"));
            }
            let was_empty = st.queue.is_empty();
            for (seq, sync, mut event) in events {
                let source = event.source;
                match st.windows.entry(source).or_default().admit(seq, self.cfg.dedup_window) {
                    Ok(()) => {
                        event.sequence = st.next_seq;
                        st.next_seq = st.next_seq.wrapping_add(1);
                        st.queue.push_back(Entry { event, sync, origin: Origin::Remote { node: source, seq } });
                        out.push(Delivered::Queued);
                    }
                    Err(answer) => {
                        debug!(%sid, %source, seq, "duplicate event dropped");
                        if let Some(response) = answer {
                            resend.push((source, seq, response));
                        }
                        out.push(Delivered::Duplicate);
                    }
                }
            }
            handoffs = self.hand_off(&mut st);
            // Waiters sleep only on an empty queue, so waking them on the transition
            // from empty is enough.
            if was_empty && !st.queue.is_empty() {
                s.cv.notify_all();
            }
        }
        self.finish_handoffs(&s, handoffs);
        for (to, ref_seq, response) in resend {
            self.outbound.send(Outbound::Response { to, sid, ref_seq, token: DmToken(0), response, data: Vec::new() });
        }
        Ok(out)
    }

    // ---- events out ----

    /// `dm_get_events`: up to `maxmsgs` events that fit in `buflen` bytes, as the
    /// chained `dm_eventmsg_t` buffer. Synchronous events become outstanding and get
    /// their token now. Without `DM_EV_WAIT` and nothing queued: `EAGAIN`. With it,
    /// blocks until an event arrives, the session is destroyed (`EINVAL`) or the wait
    /// is interrupted (`EINTR`). If the first event does not fit: `E2BIG` with its
    /// length, and it stays queued. `maxmsgs` 0 or unknown flags: `EINVAL`.
    pub fn dm_get_events(&self, sid: DmSessId, maxmsgs: u32, flags: u32, buflen: usize) -> DmResult<Vec<u8>> {
        let evs = self.get_events_typed(sid, maxmsgs, flags, buflen)?;
        let (buf, n) = encode_chain(evs.iter(), evs.len(), buflen)?;
        debug_assert_eq!(n, evs.len(), "events were chosen to fit the buffer");
        Ok(buf)
    }

    /// `dm_get_events` returning typed events (the Rust DM application's path).
    pub fn get_events_typed(&self, sid: DmSessId, maxmsgs: u32, flags: u32, buflen: usize) -> DmResult<Vec<DmEvent>> {
        check_get_events(maxmsgs, flags)?;
        let s = self.local(sid)?;
        let mut st = s.state.lock();
        let start_interrupts = st.interrupts;
        loop {
            self.check_waitable(&st)?;
            if st.interrupts != start_interrupts {
                return Err(DmError::Intr("dm_get_events interrupted"));
            }
            if !st.queue.is_empty() {
                break;
            }
            if flags & DM_EV_WAIT == 0 {
                return Err(DmError::Again("no events queued"));
            }
            s.cv.wait(&mut st);
        }
        self.take(&mut st, maxmsgs, buflen)
    }

    /// `dm_get_events` for a caller that waits somewhere else (a DM application
    /// behind the local channel, whose daemon thread goes back to reading its
    /// socket): the events if some are queued, else, with `DM_EV_WAIT`, `waiter`
    /// is parked and called by the thread that queues the next event, or with the
    /// error the call ends with (`EINVAL` when the session is destroyed, `EINTR`
    /// when interrupted or at shutdown). Errors as for [`dm_get_events`](Self::dm_get_events).
    pub fn get_events_or_park(
        &self,
        sid: DmSessId,
        maxmsgs: u32,
        flags: u32,
        buflen: usize,
        waiter: EventsWaiter,
    ) -> DmResult<GetEvents> {
        check_get_events(maxmsgs, flags)?;
        let s = self.local(sid)?;
        let mut st = s.state.lock();
        self.check_waitable(&st)?;
        if !st.queue.is_empty() {
            return self.take(&mut st, maxmsgs, buflen).map(GetEvents::Ready);
        }
        if flags & DM_EV_WAIT == 0 {
            return Err(DmError::Again("no events queued"));
        }
        let id = self.next_park.fetch_add(1, Ordering::Relaxed);
        st.parked.push_back(Parked { id, maxmsgs, buflen, waiter });
        Ok(GetEvents::Parked(id))
    }

    /// Withdraws parked waiter `id` of `sid` (its caller went away or asked
    /// something else). `false` if it is no longer parked: it was called, or is
    /// being called, with a result.
    pub fn unpark(&self, sid: DmSessId, id: u64) -> bool {
        let Ok(s) = self.local(sid) else { return false };
        let mut st = s.state.lock();
        let before = st.parked.len();
        st.parked.retain(|p| p.id != id);
        st.parked.len() != before
    }

    fn check_waitable(&self, st: &State) -> DmResult<()> {
        if self.shutdown.load(Ordering::Acquire) {
            return Err(DmError::Intr("engine shutting down"));
        }
        if st.destroyed {
            return Err(DmError::Inval("session destroyed"));
        }
        Ok(())
    }

    /// Takes up to `maxmsgs` queued events that fit `buflen` off the queue;
    /// synchronous ones become outstanding with a fresh token. `E2BIG` (the first
    /// event's length) if the first does not fit; it stays queued.
    fn take(&self, st: &mut State, maxmsgs: u32, buflen: usize) -> DmResult<Vec<DmEvent>> {
        debug_assert!(st.queue.len() <= self.cfg.max_queued, "queue depth bound");
        let mut total = 0usize;
        let mut out = Vec::new();
        while out.len() < maxmsgs as usize {
            let Some(front) = st.queue.front() else {
                break;
            };
            let len = front.event.encoded_len();
            if total + len > buflen {
                if out.is_empty() {
                    return Err(DmError::TooBig { needed: len });
                }
                break;
            }
            total += len;
            let Some(mut e) = st.queue.pop_front() else {
                break;
            };
            if e.sync {
                let token = self.alloc_token();
                e.event.token = token;
                out.push(e.event.clone());
                let clash = st.outstanding.insert(token, e);
                debug_assert!(clash.is_none(), "a fresh token is never outstanding");
            } else {
                out.push(e.event);
            }
        }
        Ok(out)
    }

    /// Serves parked waiters from the queue, oldest first, while both last; the
    /// caller calls them with [`finish_handoffs`](Self::finish_handoffs) after
    /// releasing the lock.
    fn hand_off(&self, st: &mut State) -> Handoffs {
        let mut out = Vec::new();
        while !st.queue.is_empty() {
            let Some(p) = st.parked.pop_front() else { break };
            let r = self.take(st, p.maxmsgs, p.buflen);
            out.push((p.waiter, r));
        }
        out
    }

    /// Calls the waiters [`hand_off`](Self::hand_off) chose; events one could not
    /// pass on go back to the head of the queue (see [`requeue`](Self::requeue)).
    fn finish_handoffs(&self, s: &Session, mut handoffs: Handoffs) {
        while !handoffs.is_empty() {
            let mut back = Vec::new();
            for (w, r) in handoffs {
                if let Err(evs) = w(r) {
                    back.extend(evs);
                }
            }
            if back.is_empty() {
                return;
            }
            handoffs = self.give_back(s, back);
        }
    }

    /// Events taken off `sid`'s queue that their reader never received (its DM
    /// application went away) go back to the head of the queue, in order, for the
    /// next reader; a synchronous one's token is retired (nobody holds it) and it
    /// gets a fresh one when read again.
    pub fn requeue(&self, sid: DmSessId, events: Vec<DmEvent>) {
        if let Ok(s) = self.local(sid) {
            let h = self.give_back(&s, events);
            self.finish_handoffs(&s, h);
        }
    }

    fn give_back(&self, s: &Session, events: Vec<DmEvent>) -> Handoffs {
        let mut st = s.state.lock();
        for mut ev in events.into_iter().rev() {
            let entry = match st.outstanding.remove(&ev.token) {
                Some(mut e) if ev.token.0 > 0 => {
                    e.event.token = DmToken(0);
                    e
                }
                _ => {
                    ev.token = DmToken(0);
                    Entry { event: ev, sync: false, origin: Origin::None }
                }
            };
            st.queue.push_front(entry);
        }
        debug!(sid = %s.sid, "events a DM application did not receive were queued again");
        let h = self.hand_off(&mut st);
        s.cv.notify_all();
        h
    }

    /// Wakes every `dm_get_events` waiting on `sid` with `EINTR` (a signal, in C terms).
    pub fn interrupt(&self, sid: DmSessId) -> DmResult<()> {
        let s = self.local(sid)?;
        let parked = {
            let mut st = s.state.lock();
            st.interrupts += 1;
            std::mem::take(&mut st.parked)
        };
        s.cv.notify_all();
        for p in parked {
            let _ = (p.waiter)(Err(DmError::Intr("dm_get_events interrupted")));
        }
        Ok(())
    }

    /// Checks a token for respond/pending: `EINVAL` if it never named an event here,
    /// `ESRCH` if it did but is no longer outstanding in this session.
    fn check_token(&self, st: &State, token: DmToken) -> DmResult<()> {
        if st.outstanding.contains_key(&token) {
            Ok(())
        } else if self.token_was_issued(token) {
            Err(DmError::Srch("token no longer outstanding"))
        } else {
            Err(DmError::Inval("invalid token"))
        }
    }

    /// `dm_respond_event`: answers an outstanding event once; the response goes to the
    /// source node (or wakes the local `dm_send_msg` caller). `data` longer than
    /// `DM_MAX_MESSAGE_DATA` is `E2BIG`; an unknown token `EINVAL`; a token already
    /// answered or moved away `ESRCH`.
    pub fn dm_respond_event(&self, sid: DmSessId, token: DmToken, response: DmResponse, data: &[u8]) -> DmResult<()> {
        let s = self.local(sid)?;
        if data.len() > DM_MAX_MESSAGE_DATA {
            return Err(DmError::TooBig { needed: DM_MAX_MESSAGE_DATA });
        }
        if let DmResponse::Abort(e) = response {
            if e <= 0 {
                return Err(DmError::Inval("DM_RESP_ABORT needs a positive errno"));
            }
        }
        let entry = {
            let mut st = s.state.lock();
            self.check_token(&st, token)?;
            let Some(entry) = st.outstanding.remove(&token) else {
                return Err(DmError::Srch("token no longer outstanding"));
            };
            if let Origin::Remote { node, seq } = entry.origin {
                if let Some(w) = st.windows.get_mut(&node) {
                    if let Some(slot) = w.seen.get_mut(&seq) {
                        *slot = Some(response);
                    }
                }
            }
            entry
        };
        debug!(%sid, %token, ?response, "event answered");
        match entry.origin {
            Origin::Remote { node, seq } => self.outbound.send(Outbound::Response {
                to: node,
                sid,
                ref_seq: seq,
                token,
                response,
                data: data.to_vec(),
            }),
            Origin::Local(w) => w.complete(Ok(response)),
            Origin::None => {}
        }
        Ok(())
    }

    /// `dm_pending`: tells the source the event is being worked on and that it must
    /// wait at least `delay` more. Token errors as for `dm_respond_event`.
    pub fn dm_pending(&self, sid: DmSessId, token: DmToken, delay: Duration) -> DmResult<()> {
        let s = self.local(sid)?;
        let target = {
            let st = s.state.lock();
            self.check_token(&st, token)?;
            match st.outstanding.get(&token).map(|e| &e.origin) {
                Some(Origin::Remote { node, seq }) => Some((*node, *seq)),
                _ => None,
            }
        };
        if let Some((to, ref_seq)) = target {
            self.outbound.send(Outbound::Pending { to, sid, ref_seq, token, delay });
        }
        Ok(())
    }

    /// `dm_move_event`: moves an outstanding event to another session of this node;
    /// returns its token there (tokens are unique per node, so it keeps its token).
    /// `EINVAL` for an invalid session or token, `ENOENT` if the token is not an
    /// outstanding event of `srcsid`.
    pub fn dm_move_event(&self, srcsid: DmSessId, token: DmToken, targetsid: DmSessId) -> DmResult<DmToken> {
        let src = self.local(srcsid)?;
        let dst = self.local(targetsid)?;
        if !self.token_was_issued(token) {
            return Err(DmError::Inval("invalid token"));
        }
        if srcsid == targetsid {
            return if src.state.lock().outstanding.contains_key(&token) {
                Ok(token)
            } else {
                Err(DmError::NoEnt("token not in session"))
            };
        }
        let entry = src.state.lock().outstanding.remove(&token).ok_or(DmError::NoEnt("token not in session"))?;
        let mut d = dst.state.lock();
        if d.destroyed {
            drop(d);
            src.state.lock().outstanding.insert(token, entry);
            return Err(DmError::Inval("target session destroyed"));
        }
        let clash = d.outstanding.insert(token, entry);
        debug_assert!(clash.is_none(), "tokens are unique per node");
        debug!(%srcsid, %targetsid, %token, "event moved");
        Ok(token)
    }

    /// `dm_find_eventmsg`: the message of an outstanding event, as `dm_get_events`
    /// returned it. `EINVAL` if the token is not outstanding here; `E2BIG` with the
    /// length if `buflen` is too small.
    pub fn dm_find_eventmsg(&self, sid: DmSessId, token: DmToken, buflen: usize) -> DmResult<Vec<u8>> {
        let s = self.local(sid)?;
        let ev = s
            .state
            .lock()
            .outstanding
            .get(&token)
            .map(|e| e.event.clone())
            .ok_or(DmError::Inval("token not outstanding in session"))?;
        encode_chain(std::iter::once(&ev), 1, buflen).map(|(b, _)| b)
    }

    /// `dm_getall_tokens`: the outstanding tokens of `sid`; `E2BIG` with the count if
    /// more than `nelem`.
    pub fn dm_getall_tokens(&self, sid: DmSessId, nelem: usize) -> DmResult<Vec<DmToken>> {
        let s = self.local(sid)?;
        let v: Vec<DmToken> = s.state.lock().outstanding.keys().copied().collect();
        if v.len() > nelem {
            return Err(DmError::TooBig { needed: v.len() });
        }
        Ok(v)
    }

    /// `dm_create_userevent`: a token for a user event that is outstanding at once
    /// and never queued, to be answered with `dm_respond_event`.
    pub fn dm_create_userevent(&self, sid: DmSessId, data: &[u8]) -> DmResult<DmToken> {
        if data.len() > DM_MAX_MESSAGE_DATA {
            return Err(DmError::TooBig { needed: DM_MAX_MESSAGE_DATA });
        }
        let s = self.local(sid)?;
        let mut st = s.state.lock();
        if st.destroyed {
            return Err(DmError::Inval("invalid session id"));
        }
        let token = self.alloc_token();
        let seq = st.next_seq;
        st.next_seq = seq.wrapping_add(1);
        let event = DmEvent {
            ev_type: EventType::User,
            source: self.node,
            token,
            sequence: seq,
            body: EventBody::User { data: data.to_vec() },
        };
        st.outstanding.insert(token, Entry { event, sync: true, origin: Origin::None });
        Ok(token)
    }

    /// `dm_send_msg` to a session of this node: queues a user event. With
    /// `DM_MSGTYPE_SYNC`, blocks until it is answered: `Ok` for CONTINUE/DONTCARE,
    /// [`DmError::Aborted`] with the errno for ABORT, `EINTR` on shutdown. Messages to
    /// sessions on other nodes go through [`crate::source::SourceEngine::send_msg`].
    pub fn dm_send_msg(&self, targetsid: DmSessId, msgtype: DmMsgType, data: &[u8]) -> DmResult<()> {
        if data.len() > DM_MAX_MESSAGE_DATA {
            return Err(DmError::TooBig { needed: DM_MAX_MESSAGE_DATA });
        }
        let s = self.local(targetsid)?;
        let event = DmEvent {
            ev_type: EventType::User,
            source: self.node,
            token: DmToken(0),
            sequence: 0,
            body: EventBody::User { data: data.to_vec() },
        };
        let waiter =
            (msgtype == DmMsgType::Sync).then(|| Arc::new(LocalWaiter { slot: Mutex::new(None), cv: Condvar::new() }));
        if let Some(w) = &waiter {
            let mut lw = self.local_waiters.lock();
            lw.retain(|w| w.strong_count() > 0);
            lw.push(Arc::downgrade(w));
        }
        let handoffs = {
            let mut st = s.state.lock();
            if st.destroyed {
                return Err(DmError::Inval("invalid session id"));
            }
            let mut event = event;
            event.sequence = st.next_seq;
            st.next_seq = st.next_seq.wrapping_add(1);
            st.queue.push_back(Entry {
                event,
                sync: waiter.is_some(),
                origin: waiter.as_ref().map_or(Origin::None, |w| Origin::Local(w.clone())),
            });
            let h = self.hand_off(&mut st);
            s.cv.notify_all();
            h
        };
        self.finish_handoffs(&s, handoffs);
        let Some(w) = waiter else {
            return Ok(());
        };
        let mut slot = w.slot.lock();
        loop {
            if let Some(r) = slot.take() {
                return match r? {
                    DmResponse::Abort(e) => Err(DmError::Aborted(e)),
                    _ => Ok(()),
                };
            }
            if self.shutdown.load(Ordering::Acquire) {
                return Err(DmError::Intr("engine shutting down"));
            }
            w.cv.wait(&mut slot);
        }
    }

    // ---- failures and shutdown ----

    /// A source node died: its queued events are dropped and its outstanding events'
    /// tokens retired, each announced to the session with an asynchronous
    /// `DM_EVENT_CANCEL` (carrying the cancelled event's sequence and token).
    /// Returns how many events were removed.
    pub fn source_node_failed(&self, node: NodeId) -> usize {
        let sessions: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        let mut removed = 0;
        for s in sessions {
            let mut st = s.state.lock();
            let before = st.queue.len();
            st.queue.retain(|e| !matches!(e.origin, Origin::Remote { node: n, .. } if n == node));
            removed += before - st.queue.len();
            let gone: Vec<DmToken> = st
                .outstanding
                .iter()
                .filter(|(_, e)| matches!(e.origin, Origin::Remote { node: n, .. } if n == node))
                .map(|(t, _)| *t)
                .collect();
            for t in gone {
                if let Some(e) = st.outstanding.remove(&t) {
                    removed += 1;
                    let seq = st.next_seq;
                    st.next_seq = seq.wrapping_add(1);
                    st.queue.push_back(Entry {
                        event: DmEvent {
                            ev_type: EventType::Cancel,
                            source: node,
                            token: DmToken(0),
                            sequence: seq,
                            body: EventBody::Cancel { sequence: e.event.sequence, token: t },
                        },
                        sync: false,
                        origin: Origin::None,
                    });
                }
            }
            st.windows.remove(&node);
            let h = self.hand_off(&mut st);
            s.cv.notify_all();
            drop(st);
            self.finish_handoffs(&s, h);
        }
        if removed > 0 {
            warn!(%node, removed, "source node failed; its events were cancelled");
        }
        removed
    }

    /// Number of events queued (not yet received) in a local session.
    pub fn queued(&self, sid: DmSessId) -> DmResult<usize> {
        Ok(self.local(sid)?.state.lock().queue.len())
    }

    /// Wakes every blocked call with `EINTR`; later blocking calls fail at once.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        let sessions: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        for s in sessions {
            // Taking the lock orders the flag store before the waiter's re-check.
            let parked = std::mem::take(&mut s.state.lock().parked);
            s.cv.notify_all();
            for p in parked {
                let _ = (p.waiter)(Err(DmError::Intr("engine shutting down")));
            }
        }
        for w in self.local_waiters.lock().drain(..) {
            if let Some(w) = w.upgrade() {
                w.complete(Err(DmError::Intr("engine shutting down")));
            }
        }
    }
}

impl Outbound {
    /// The destination and frame for this message, sent by
    /// node `me` as its frame `seq`. Session announcements go to `session_manager`.
    pub fn to_frame(&self, me: NodeId, seq: u64, session_manager: NodeId) -> (NodeId, Frame) {
        let mut f = Frame::new(me, seq, Message::Ack);
        let to = match self {
            Outbound::Response { to, sid, ref_seq, token, response, data } => {
                (f.sid, f.ref_seq, f.token) = (*sid, *ref_seq, *token);
                f.msg = Message::Response { response: *response, data: data.clone() };
                *to
            }
            Outbound::Pending { to, sid, ref_seq, token, delay } => {
                (f.sid, f.ref_seq, f.token) = (*sid, *ref_seq, *token);
                f.msg = Message::Pending { delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX) };
                *to
            }
            Outbound::SessionCreated { sid, info } => {
                f.sid = *sid;
                f.msg = Message::SessionCreate { node: me, info: info.clone() };
                session_manager
            }
            Outbound::SessionReclaimed { sid, info } => {
                f.sid = *sid;
                f.msg = Message::SessionReclaim { node: me, info: info.clone() };
                session_manager
            }
            Outbound::SessionDestroyed { sid } => {
                f.sid = *sid;
                f.msg = Message::SessionDestroy;
                session_manager
            }
        };
        (to, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_eventmsgs;
    use crate::types::{DmHandle, FsId, DM_INVALID_TOKEN};
    use std::sync::Mutex as StdMutex;
    use std::thread;

    type Sent = Arc<StdMutex<Vec<Outbound>>>;

    fn engine() -> (Arc<SessionEngine>, Sent) {
        let sent: Sent = Arc::default();
        let s2 = sent.clone();
        let e = SessionEngine::new(
            NodeId(1),
            SessionConfig::default(),
            Arc::new(move |o: Outbound| s2.lock().unwrap().push(o)),
        );
        (Arc::new(e), sent)
    }

    fn read_ev(src: u32, off: i64) -> DmEvent {
        DmEvent::new(
            EventType::Read,
            NodeId(src),
            EventBody::Data { handle: DmHandle::file(FsId(1), 5, 1), offset: off, length: 1 },
        )
        .unwrap()
    }

    fn responses(sent: &Sent) -> Vec<(NodeId, u64, DmResponse)> {
        sent.lock()
            .unwrap()
            .iter()
            .filter_map(|o| match o {
                Outbound::Response { to, ref_seq, response, .. } => Some((*to, *ref_seq, *response)),
                _ => None,
            })
            .collect()
    }

    fn new_session(e: &SessionEngine) -> DmSessId {
        e.dm_create_session(&Caller::root(), DM_NO_SESSION, b"test").unwrap()
    }

    #[test]
    fn create_session_checks_privilege_info_and_oldsid() {
        let (e, sent) = engine();
        let user = Caller { uid: 1000, gids: vec![1000] };
        assert_eq!(e.dm_create_session(&user, DM_NO_SESSION, b"x").unwrap_err().errno(), libc::EPERM);
        let long = vec![b'a'; DM_SESSION_INFO_LEN + 1];
        assert_eq!(e.dm_create_session(&Caller::root(), DM_NO_SESSION, &long).unwrap_err().errno(), libc::E2BIG);
        assert_eq!(e.dm_create_session(&Caller::root(), DmSessId(12345), b"x").unwrap_err().errno(), libc::EINVAL);
        let sid = new_session(&e);
        assert_eq!(sid.node(), Some(NodeId(1)));
        assert!(matches!(sent.lock().unwrap()[0], Outbound::SessionCreated { .. }));
        let sid2 = new_session(&e);
        assert_ne!(sid, sid2);
        // A member of the DM admin group may create sessions too.
        let e2 = SessionEngine::new(
            NodeId(2),
            SessionConfig { dm_admin_gid: Some(50), ..SessionConfig::default() },
            Arc::new(|_| {}),
        );
        let admin = Caller { uid: 1000, gids: vec![7, 50] };
        assert!(e2.dm_create_session(&admin, DM_NO_SESSION, b"").is_ok());
    }

    #[test]
    fn reclaim_returns_the_session_with_its_events() {
        let (e, sent) = engine();
        let sid = new_session(&e);
        e.deliver(sid, 1, true, read_ev(2, 0)).unwrap();
        e.deliver(sid, 2, true, read_ev(2, 1)).unwrap();
        let got = e.get_events_typed(sid, 1, 0, 4096).unwrap();
        e.orphan_session(sid).unwrap();
        // The restarted application reclaims: the outstanding token and the queued
        // event are still there.
        let again = e.dm_create_session(&Caller::root(), sid, b"restarted").unwrap();
        assert_eq!(again, sid);
        assert_eq!(e.dm_query_session(sid).unwrap(), b"restarted");
        assert_eq!(e.dm_getall_tokens(sid, 10).unwrap(), vec![got[0].token]);
        assert_eq!(e.queued(sid).unwrap(), 1);
        assert!(sent
            .lock()
            .unwrap()
            .iter()
            .any(|o| matches!(o, Outbound::SessionReclaimed { sid: s, .. } if *s == sid)));
    }

    #[test]
    fn a_late_creation_echo_does_not_bring_back_a_destroyed_session() {
        let (e, _) = engine();
        let sid = new_session(&e);
        e.dm_destroy_session(sid).unwrap();
        assert_eq!(e.restore_session(sid, b"hsm").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(e.dm_query_session(sid).unwrap_err().errno(), libc::EINVAL);
        e.forget_remote_session(sid);
        assert!(e.destroyed_here.lock().is_empty(), "forgotten with the echo of its destruction");
    }

    #[test]
    fn restore_after_restart_then_reclaim_then_resent_events_arrive() {
        let (e, _) = engine();
        let sid = DmSessId::compose(NodeId(1), 7).unwrap();
        e.restore_session(sid, b"old").unwrap();
        assert_eq!(e.restore_session(sid, b"old").unwrap_err().errno(), libc::EEXIST);
        assert_eq!(e.dm_create_session(&Caller::root(), sid, b"new").unwrap(), sid);
        e.deliver(sid, 9, true, read_ev(3, 0)).unwrap();
        assert_eq!(e.get_events_typed(sid, 5, 0, 4096).unwrap().len(), 1);
        // New sessions never collide with the restored id.
        let fresh = new_session(&e);
        assert!(fresh.0 > sid.0);
    }

    #[test]
    fn destroy_session_is_ebusy_while_tokens_are_outstanding() {
        let (e, sent) = engine();
        let sid = new_session(&e);
        let tok = e.dm_create_userevent(sid, b"x").unwrap();
        assert_eq!(e.dm_destroy_session(sid).unwrap_err().errno(), libc::EBUSY);
        e.dm_respond_event(sid, tok, DmResponse::Continue, &[]).unwrap();
        e.deliver(sid, 1, true, read_ev(2, 0)).unwrap();
        assert_eq!(
            e.dm_destroy_session(sid).unwrap_err().errno(),
            libc::EBUSY,
            "queued synchronous events also keep the session"
        );
        let evs = e.get_events_typed(sid, 1, 0, 4096).unwrap();
        e.dm_respond_event(sid, evs[0].token, DmResponse::Continue, &[]).unwrap();
        e.deliver(sid, 2, false, read_ev(2, 0)).unwrap();
        e.dm_destroy_session(sid).unwrap();
        assert_eq!(e.dm_query_session(sid).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(e.dm_destroy_session(sid).unwrap_err().errno(), libc::EINVAL);
        assert!(sent.lock().unwrap().iter().any(|o| matches!(o, Outbound::SessionDestroyed { .. })));
    }

    #[test]
    fn get_events_nowait_is_eagain_and_flags_are_checked() {
        let (e, _) = engine();
        let sid = new_session(&e);
        assert_eq!(e.dm_get_events(sid, 1, 0, 4096).unwrap_err().errno(), libc::EAGAIN);
        assert_eq!(e.dm_get_events(sid, 0, 0, 4096).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(e.dm_get_events(sid, 1, 0x80, 4096).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(e.dm_get_events(DmSessId(99), 1, 0, 4096).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn get_events_e2big_reports_needed_length_and_keeps_the_event() {
        let (e, _) = engine();
        let sid = new_session(&e);
        let ev = read_ev(2, 0);
        let need = ev.encoded_len();
        e.deliver(sid, 1, true, ev).unwrap();
        assert_eq!(e.dm_get_events(sid, 1, 0, need - 1).unwrap_err(), DmError::TooBig { needed: need });
        assert_eq!(e.queued(sid).unwrap(), 1);
        let buf = e.dm_get_events(sid, 1, 0, need).unwrap();
        assert_eq!(buf.len(), need);
    }

    #[test]
    fn get_events_honours_maxmsgs_and_buflen_and_order() {
        let (e, _) = engine();
        let sid = new_session(&e);
        for i in 0..10 {
            e.deliver(sid, i, false, read_ev(2, i as i64)).unwrap();
        }
        let one = read_ev(2, 0).encoded_len();
        let evs = parse_eventmsgs(&e.dm_get_events(sid, 3, 0, 1 << 16).unwrap()).unwrap();
        assert_eq!(evs.len(), 3);
        let evs2 = parse_eventmsgs(&e.dm_get_events(sid, 100, 0, one * 2 + 1).unwrap()).unwrap();
        assert_eq!(evs2.len(), 2);
        let offs: Vec<i64> = evs
            .iter()
            .chain(&evs2)
            .map(|e| match e.body {
                EventBody::Data { offset, .. } => offset,
                _ => -1,
            })
            .collect();
        assert_eq!(offs, vec![0, 1, 2, 3, 4]);
        let seqs: Vec<u32> = evs.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        // Asynchronous events carry DM_INVALID_TOKEN and are not outstanding.
        assert!(evs.iter().all(|e| e.token == DM_INVALID_TOKEN));
        assert!(e.dm_getall_tokens(sid, 10).unwrap().is_empty());
    }

    #[test]
    fn get_events_wait_blocks_until_delivery() {
        let (e, _) = engine();
        let sid = new_session(&e);
        let e2 = e.clone();
        let t = thread::spawn(move || e2.get_events_typed(sid, 1, DM_EV_WAIT, 4096));
        thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "waits while the queue is empty");
        e.deliver(sid, 1, true, read_ev(2, 0)).unwrap();
        let evs = t.join().unwrap().unwrap();
        assert_eq!(evs[0].source, NodeId(2));
        assert!(evs[0].token.0 > 0);
    }

    /// A parked waiter that records what it got and refuses (gives back) its
    /// events when `refuse` is set.
    type Got = Arc<StdMutex<Option<DmResult<Vec<DmEvent>>>>>;

    fn recorder(refuse: bool) -> (EventsWaiter, Got) {
        let got: Got = Arc::default();
        let g = got.clone();
        let w: EventsWaiter = Box::new(move |r| {
            let back = match (&r, refuse) {
                (Ok(evs), true) => Err(evs.clone()),
                _ => Ok(()),
            };
            *g.lock().unwrap() = Some(r);
            back
        });
        (w, got)
    }

    #[test]
    fn parked_waiter_is_handed_events_by_the_delivering_thread() {
        let (e, _) = engine();
        let sid = new_session(&e);
        // Nothing queued and no DM_EV_WAIT: EAGAIN, nothing parked.
        let (w, got) = recorder(false);
        assert_eq!(e.get_events_or_park(sid, 1, 0, 4096, w).err().map(|x| x.errno()), Some(libc::EAGAIN));
        let (w, got2) = recorder(false);
        let GetEvents::Parked(_) = e.get_events_or_park(sid, 1, DM_EV_WAIT, 4096, w).unwrap() else {
            panic!("an empty queue parks the waiter");
        };
        assert!(got.lock().unwrap().is_none() && got2.lock().unwrap().is_none());
        e.deliver(sid, 1, true, read_ev(2, 0)).unwrap();
        let evs = got2.lock().unwrap().take().unwrap().unwrap();
        assert_eq!((evs.len(), evs[0].source), (1, NodeId(2)));
        assert!(evs[0].token.0 > 0);
        assert_eq!(e.dm_getall_tokens(sid, 8).unwrap(), vec![evs[0].token], "outstanding once handed over");
        assert_eq!(e.queued(sid).unwrap(), 0);
        // Queued already: the events at once, the waiter not kept.
        e.deliver(sid, 2, false, read_ev(2, 1)).unwrap();
        let (w, got3) = recorder(false);
        let GetEvents::Ready(evs) = e.get_events_or_park(sid, 4, DM_EV_WAIT, 4096, w).unwrap() else {
            panic!("a queued event is returned at once");
        };
        assert_eq!(evs.len(), 1);
        drop(e);
        assert!(got3.lock().unwrap().is_none());
    }

    #[test]
    fn events_a_parked_waiter_gives_back_are_queued_again_for_the_next() {
        let (e, _) = engine();
        let sid = new_session(&e);
        let (w, got) = recorder(true);
        e.get_events_or_park(sid, 4, DM_EV_WAIT, 4096, w).unwrap();
        e.deliver(sid, 1, true, read_ev(2, 0)).unwrap();
        let refused = got.lock().unwrap().take().unwrap().unwrap();
        assert!(refused[0].token.0 > 0);
        // Back at the head of the queue, its token retired, and a sync event still.
        assert_eq!(e.queued(sid).unwrap(), 1);
        assert!(e.dm_getall_tokens(sid, 8).unwrap().is_empty());
        let again = e.get_events_typed(sid, 4, 0, 4096).unwrap();
        assert_eq!(again.len(), 1);
        assert!(again[0].token.0 > 0 && again[0].token != refused[0].token);
        assert_eq!(again[0].sequence, refused[0].sequence);
        e.dm_respond_event(sid, again[0].token, DmResponse::Continue, &[]).unwrap();
    }

    #[test]
    fn parked_waiters_end_with_the_wait_and_can_be_withdrawn() {
        let (e, _) = engine();
        let sid = new_session(&e);
        let (w, got) = recorder(false);
        let GetEvents::Parked(id) = e.get_events_or_park(sid, 1, DM_EV_WAIT, 4096, w).unwrap() else {
            panic!("parked")
        };
        assert!(e.unpark(sid, id));
        assert!(!e.unpark(sid, id), "withdrawn once");
        e.deliver(sid, 1, false, read_ev(2, 0)).unwrap();
        assert!(got.lock().unwrap().is_none(), "a withdrawn waiter is never called");
        assert_eq!(e.queued(sid).unwrap(), 1);
        e.get_events_typed(sid, 1, 0, 4096).unwrap();
        // Too small a buffer: E2BIG with the length, the event stays.
        let (w, got) = recorder(false);
        e.get_events_or_park(sid, 1, DM_EV_WAIT, 8, w).unwrap();
        e.deliver(sid, 2, false, read_ev(2, 1)).unwrap();
        let r = got.lock().unwrap().take().unwrap();
        assert_eq!(r.unwrap_err().errno(), libc::E2BIG);
        assert_eq!(e.queued(sid).unwrap(), 1);
        e.get_events_typed(sid, 1, 0, 4096).unwrap();
        for (end, errno) in [(0, libc::EINTR), (1, libc::EINVAL), (2, libc::EINTR)] {
            let sid = new_session(&e);
            let (w, got) = recorder(false);
            e.get_events_or_park(sid, 1, DM_EV_WAIT, 4096, w).unwrap();
            match end {
                0 => e.interrupt(sid).unwrap(),
                1 => e.dm_destroy_session(sid).unwrap(),
                _ => e.shutdown(),
            }
            assert_eq!(got.lock().unwrap().take().unwrap().unwrap_err().errno(), errno);
        }
    }

    #[test]
    fn blocked_get_events_is_interrupted_by_interrupt_and_shutdown() {
        let (e, _) = engine();
        let sid = new_session(&e);
        let e2 = e.clone();
        let t = thread::spawn(move || e2.get_events_typed(sid, 1, DM_EV_WAIT, 4096));
        thread::sleep(Duration::from_millis(30));
        e.interrupt(sid).unwrap();
        assert_eq!(t.join().unwrap().unwrap_err().errno(), libc::EINTR);
        let e2 = e.clone();
        let t = thread::spawn(move || e2.get_events_typed(sid, 1, DM_EV_WAIT, 4096));
        thread::sleep(Duration::from_millis(30));
        e.shutdown();
        assert_eq!(t.join().unwrap().unwrap_err().errno(), libc::EINTR);
        assert_eq!(e.dm_create_session(&Caller::root(), DM_NO_SESSION, b"").unwrap_err().errno(), libc::EINTR);
    }

    #[test]
    fn respond_sends_the_response_to_the_source_once() {
        let (e, sent) = engine();
        let sid = new_session(&e);
        e.deliver(sid, 42, true, read_ev(3, 0)).unwrap();
        let tok = e.get_events_typed(sid, 1, 0, 4096).unwrap()[0].token;
        e.dm_respond_event(sid, tok, DmResponse::Abort(libc::EIO), b"why").unwrap();
        assert_eq!(responses(&sent), vec![(NodeId(3), 42, DmResponse::Abort(libc::EIO))]);
        // Each token once: the second answer is ESRCH and sends nothing.
        assert_eq!(e.dm_respond_event(sid, tok, DmResponse::Continue, &[]).unwrap_err().errno(), libc::ESRCH);
        assert_eq!(responses(&sent).len(), 1);
    }

    #[test]
    fn respond_errnos() {
        let (e, _) = engine();
        let sid = new_session(&e);
        let tok = e.dm_create_userevent(sid, b"m").unwrap();
        let r = |s, t, resp, d: &[u8]| e.dm_respond_event(s, t, resp, d).unwrap_err().errno();
        assert_eq!(r(DmSessId(77), tok, DmResponse::Continue, &[]), libc::EINVAL);
        assert_eq!(r(DM_NO_SESSION, tok, DmResponse::Continue, &[]), libc::EINVAL);
        assert_eq!(r(sid, DmToken(9999), DmResponse::Continue, &[]), libc::EINVAL);
        assert_eq!(r(sid, crate::types::DM_NO_TOKEN, DmResponse::Continue, &[]), libc::EINVAL);
        assert_eq!(r(sid, DM_INVALID_TOKEN, DmResponse::Continue, &[]), libc::EINVAL);
        assert_eq!(r(sid, tok, DmResponse::Abort(0), &[]), libc::EINVAL);
        let big = vec![0u8; DM_MAX_MESSAGE_DATA + 1];
        assert_eq!(r(sid, tok, DmResponse::Continue, &big), libc::E2BIG);
        e.dm_respond_event(sid, tok, DmResponse::Continue, &[]).unwrap();
    }

    #[test]
    fn duplicates_are_dropped_and_answered_again() {
        let (e, sent) = engine();
        let sid = new_session(&e);
        assert_eq!(e.deliver(sid, 5, true, read_ev(2, 0)).unwrap(), Delivered::Queued);
        assert_eq!(e.deliver(sid, 5, true, read_ev(2, 0)).unwrap(), Delivered::Duplicate);
        // Same sequence from another node is a different event.
        assert_eq!(e.deliver(sid, 5, true, read_ev(3, 0)).unwrap(), Delivered::Queued);
        assert_eq!(e.queued(sid).unwrap(), 2);
        let evs = e.get_events_typed(sid, 1, 0, 4096).unwrap();
        e.dm_respond_event(sid, evs[0].token, DmResponse::Continue, &[]).unwrap();
        // The source re-sends because the response was lost: it gets it again.
        assert_eq!(e.deliver(sid, 5, true, read_ev(2, 0)).unwrap(), Delivered::Duplicate);
        assert_eq!(responses(&sent), vec![(NodeId(2), 5, DmResponse::Continue), (NodeId(2), 5, DmResponse::Continue)]);
    }

    #[test]
    fn dedup_window_is_bounded() {
        let e = SessionEngine::new(
            NodeId(1),
            SessionConfig { dedup_window: 4, ..SessionConfig::default() },
            Arc::new(|_| {}),
        );
        let sid = new_session(&e);
        for i in 0..10 {
            e.deliver(sid, i, false, read_ev(2, 0)).unwrap();
        }
        assert_eq!(e.deliver(sid, 9, false, read_ev(2, 0)).unwrap(), Delivered::Duplicate);
        assert_eq!(e.deliver(sid, 0, false, read_ev(2, 0)).unwrap(), Delivered::Queued);
    }

    #[test]
    fn queue_limit_is_enomem() {
        let e = SessionEngine::new(
            NodeId(1),
            SessionConfig { max_queued: 2, ..SessionConfig::default() },
            Arc::new(|_| {}),
        );
        let sid = new_session(&e);
        e.deliver(sid, 1, false, read_ev(2, 0)).unwrap();
        let batch = vec![(2, false, read_ev(2, 0)), (3, false, read_ev(2, 0))];
        assert_eq!(e.deliver_batch(sid, batch).unwrap_err().errno(), libc::ENOMEM);
        assert_eq!(e.queued(sid).unwrap(), 1, "all or nothing");
        e.deliver(sid, 2, false, read_ev(2, 0)).unwrap();
        assert_eq!(e.deliver(sid, 3, false, read_ev(2, 0)).unwrap_err().errno(), libc::ENOMEM);
    }

    #[test]
    fn pending_is_forwarded_and_checks_tokens() {
        let (e, sent) = engine();
        let sid = new_session(&e);
        e.deliver(sid, 8, true, read_ev(4, 0)).unwrap();
        let tok = e.get_events_typed(sid, 1, 0, 4096).unwrap()[0].token;
        e.dm_pending(sid, tok, Duration::from_secs(30)).unwrap();
        assert!(sent.lock().unwrap().iter().any(|o| matches!(
            o,
            Outbound::Pending { to: NodeId(4), ref_seq: 8, delay, .. } if *delay == Duration::from_secs(30)
        )));
        assert_eq!(e.dm_pending(sid, DmToken(5000), Duration::ZERO).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(e.dm_pending(DM_NO_SESSION, tok, Duration::ZERO).unwrap_err().errno(), libc::EINVAL);
        e.dm_respond_event(sid, tok, DmResponse::Continue, &[]).unwrap();
        assert_eq!(e.dm_pending(sid, tok, Duration::ZERO).unwrap_err().errno(), libc::ESRCH);
    }

    #[test]
    fn move_event_between_sessions() {
        let (e, sent) = engine();
        let a = new_session(&e);
        let b = new_session(&e);
        e.deliver(a, 3, true, read_ev(2, 0)).unwrap();
        let tok = e.get_events_typed(a, 1, 0, 4096).unwrap()[0].token;
        assert_eq!(e.dm_move_event(a, tok, a).unwrap(), tok);
        assert_eq!(e.dm_move_event(b, tok, a).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(e.dm_move_event(a, tok, DM_NO_SESSION).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(e.dm_move_event(a, DmToken(0), b).unwrap_err().errno(), libc::EINVAL);
        let rtok = e.dm_move_event(a, tok, b).unwrap();
        assert_eq!(e.dm_find_eventmsg(a, tok, 4096).unwrap_err().errno(), libc::EINVAL);
        assert!(!e.dm_find_eventmsg(b, rtok, 4096).unwrap().is_empty());
        e.dm_respond_event(b, rtok, DmResponse::Continue, &[]).unwrap();
        // The response still reaches the node that generated the event.
        assert_eq!(responses(&sent), vec![(NodeId(2), 3, DmResponse::Continue)]);
    }

    #[test]
    fn find_eventmsg_and_getall_tokens() {
        let (e, _) = engine();
        let sid = new_session(&e);
        e.deliver(sid, 1, true, read_ev(2, 0)).unwrap();
        e.deliver(sid, 2, true, read_ev(2, 1)).unwrap();
        let evs = e.get_events_typed(sid, 5, 0, 4096).unwrap();
        let buf = e.dm_find_eventmsg(sid, evs[1].token, 4096).unwrap();
        assert_eq!(parse_eventmsgs(&buf).unwrap(), vec![evs[1].clone()]);
        let need = evs[1].encoded_len();
        assert_eq!(e.dm_find_eventmsg(sid, evs[1].token, need - 1).unwrap_err(), DmError::TooBig { needed: need });
        assert_eq!(e.dm_find_eventmsg(sid, DmToken(777), 4096).unwrap_err().errno(), libc::EINVAL);
        let toks = e.dm_getall_tokens(sid, 2).unwrap();
        assert_eq!(toks, vec![evs[0].token, evs[1].token]);
        assert_eq!(e.dm_getall_tokens(sid, 1).unwrap_err(), DmError::TooBig { needed: 2 });
    }

    #[test]
    fn create_userevent_is_outstanding_not_queued() {
        let (e, sent) = engine();
        let sid = new_session(&e);
        let tok = e.dm_create_userevent(sid, b"data").unwrap();
        assert_eq!(e.queued(sid).unwrap(), 0);
        let msg = parse_eventmsgs(&e.dm_find_eventmsg(sid, tok, 4096).unwrap()).unwrap();
        assert_eq!(msg[0].ev_type, EventType::User);
        assert_eq!(msg[0].body, EventBody::User { data: b"data".to_vec() });
        e.dm_respond_event(sid, tok, DmResponse::Continue, &[]).unwrap();
        assert!(responses(&sent).is_empty(), "nobody to answer");
        assert_eq!(e.dm_create_userevent(sid, &vec![0; DM_MAX_MESSAGE_DATA + 1]).unwrap_err().errno(), libc::E2BIG);
    }

    #[test]
    fn send_msg_async_and_sync() {
        let (e, _) = engine();
        let sid = new_session(&e);
        e.dm_send_msg(sid, DmMsgType::Async, b"a").unwrap();
        let evs = e.get_events_typed(sid, 5, 0, 4096).unwrap();
        assert_eq!(evs[0].token, DM_INVALID_TOKEN);
        assert_eq!(evs[0].source, NodeId(1));
        // Sync: the sender blocks until the answer, and sees ABORT's errno.
        let e2 = e.clone();
        let t = thread::spawn(move || e2.dm_send_msg(sid, DmMsgType::Sync, b"s"));
        let ev = e.get_events_typed(sid, 1, DM_EV_WAIT, 4096).unwrap();
        thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished());
        e.dm_respond_event(sid, ev[0].token, DmResponse::Abort(libc::ENOSPC), &[]).unwrap();
        assert_eq!(t.join().unwrap().unwrap_err(), DmError::Aborted(libc::ENOSPC));
        let e2 = e.clone();
        let t = thread::spawn(move || e2.dm_send_msg(sid, DmMsgType::Sync, b"s"));
        let ev = e.get_events_typed(sid, 1, DM_EV_WAIT, 4096).unwrap();
        e.dm_respond_event(sid, ev[0].token, DmResponse::Continue, &[]).unwrap();
        t.join().unwrap().unwrap();
        assert_eq!(e.dm_send_msg(DmSessId(3), DmMsgType::Async, b"").unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn sync_send_msg_is_cancelled_on_shutdown() {
        let (e, _) = engine();
        let sid = new_session(&e);
        let e2 = e.clone();
        let t = thread::spawn(move || e2.dm_send_msg(sid, DmMsgType::Sync, b"s"));
        while e.queued(sid).unwrap() == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        e.shutdown();
        assert_eq!(t.join().unwrap().unwrap_err().errno(), libc::EINTR);
    }

    #[test]
    fn b13_remote_sessions_answer_queries_but_refuse_changes() {
        let (e, _) = engine();
        let remote = DmSessId::compose(NodeId(5), 1).unwrap();
        e.register_remote_session(remote, NodeId(5), b"far");
        assert_eq!(e.dm_query_session(remote).unwrap(), b"far");
        assert_eq!(e.dm_getall_sessions(10).unwrap(), vec![remote]);
        let local = new_session(&e);
        assert_eq!(e.dm_getall_sessions(10).unwrap().len(), 2);
        assert_eq!(e.dm_getall_sessions(1).unwrap_err(), DmError::TooBig { needed: 2 });
        assert_eq!(e.sessions().len(), 2);
        let refused = DmError::NotSessionNode { sid: remote, node: NodeId(5) };
        assert_eq!(e.dm_get_events(remote, 1, 0, 4096).unwrap_err(), refused);
        assert_eq!(e.dm_respond_event(remote, DmToken(1), DmResponse::Continue, &[]).unwrap_err(), refused);
        assert_eq!(e.dm_destroy_session(remote).unwrap_err(), refused);
        assert_eq!(e.dm_move_event(local, DmToken(1), remote).unwrap_err(), refused);
        assert_eq!(refused.errno(), libc::EINVAL);
        e.forget_remote_session(remote);
        assert_eq!(e.dm_query_session(remote).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn source_failure_cancels_its_events() {
        let (e, _) = engine();
        let sid = new_session(&e);
        e.deliver(sid, 1, true, read_ev(2, 0)).unwrap();
        e.deliver(sid, 2, true, read_ev(2, 1)).unwrap();
        e.deliver(sid, 3, true, read_ev(3, 0)).unwrap();
        let first = e.get_events_typed(sid, 1, 0, 4096).unwrap();
        assert_eq!(e.source_node_failed(NodeId(2)), 2);
        assert!(e.dm_getall_tokens(sid, 10).unwrap().is_empty());
        let rest = e.get_events_typed(sid, 10, 0, 4096).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].source, NodeId(3));
        assert_eq!(rest[1].ev_type, EventType::Cancel);
        assert_eq!(rest[1].body, EventBody::Cancel { sequence: first[0].sequence, token: first[0].token });
        assert_eq!(
            e.dm_respond_event(sid, first[0].token, DmResponse::Continue, &[]).unwrap_err().errno(),
            libc::ESRCH
        );
    }

    #[test]
    fn deliver_to_unknown_or_remote_session_fails() {
        let (e, _) = engine();
        assert_eq!(e.deliver(DmSessId(5), 1, false, read_ev(2, 0)).unwrap_err().errno(), libc::EINVAL);
        let sid = new_session(&e);
        let batch = vec![(1, false, read_ev(2, 0)), (1, false, read_ev(2, 0))];
        assert_eq!(e.deliver_batch(sid, batch).unwrap(), vec![Delivered::Queued, Delivered::Duplicate]);
    }

    /// Delivers `total` asynchronous events into one session from `producers`
    /// threads (each a different source node) in batches of `batch`, while a DM
    /// application thread drains; returns (events sent, events drained).
    fn enqueue(total: u64, batch: u64, producers: u32) -> (u64, u64) {
        let e = Arc::new(SessionEngine::new(NodeId(1), SessionConfig::default(), Arc::new(|_| {})));
        let sid = new_session(&e);
        let done = Arc::new(AtomicBool::new(false));
        let drain = {
            let (e, done) = (e.clone(), done.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                loop {
                    // Read `done` before the call: an empty queue only means
                    // the end if every producer had finished before we looked.
                    let finished = done.load(Ordering::Acquire);
                    match e.get_events_typed(sid, 65536, 0, 1 << 24) {
                        Ok(v) => n += v.len() as u64,
                        Err(_) if finished => break,
                        Err(_) => thread::yield_now(),
                    }
                }
                n
            })
        };
        let per = total / producers as u64;
        let threads: Vec<_> = (0..producers)
            .map(|p| {
                let e = e.clone();
                thread::spawn(move || {
                    let proto = read_ev(2 + p, 0);
                    let mut seq = 0u64;
                    while seq < per {
                        if batch == 1 {
                            e.deliver(sid, seq, false, proto.clone()).unwrap();
                            seq += 1;
                        } else {
                            let b = (seq..seq + batch).map(|i| (i, false, proto.clone()));
                            seq += e.deliver_batch(sid, b.collect()).unwrap().len() as u64;
                        }
                    }
                    seq
                })
            })
            .collect();
        let sent: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        done.store(true, Ordering::Release);
        (sent, drain.join().unwrap())
    }

    /// Asynchronous events from several producers, singly and in
    /// batches, all reach the draining DM application, none twice; and a
    /// queued event costs no more than its fixed-size entry. (The rate is
    /// a benchmark's: `tidepool-dm-bench all`, "in-process enqueue".)
    #[test]
    fn async_enqueue_loses_nothing_and_queues_in_fixed_entries() {
        for (batch, producers) in [(1, 1), (1024, 1), (1024, 4)] {
            let total = 40_960; // whole batches per producer
            let (sent, drained) = enqueue(total, batch, producers);
            assert_eq!((sent, drained), (total, total), "batch {batch}, {producers} producers");
        }
        // An entry is a small fixed record: a data event needs no heap.
        assert!(std::mem::size_of::<Entry>() <= 256, "{} B per queued event", std::mem::size_of::<Entry>());
    }
}
