//! The node daemon: one per node, wiring the `dmapi` engines to the transport and
//! the roles this node plays.
//!
//! Every frame a peer sends is handled on that connection's reader thread
//! ([`Node::handle`]); frames to this node itself (an event for a session here, the
//! session manager being this node...) go through a loopback queue and thread, so no
//! engine is ever re-entered from its own outbound hook. A heartbeat thread sends
//! `Heartbeat` to every peer and turns silence into failure handling: sessions drop
//! a dead source node's events (a `DM_EVENT_CANCEL` each, tokens retired), and
//! sources start the session-failure timeout for events waiting on a dead session
//! node. A peer coming back gets the session registry (from the session manager), its
//! mounts re-announced, and the events it had not answered or acknowledged re-sent.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dmapi::disp::DispChange;
use dmapi::disp::{DispEntry, DispositionTable, GenerationView};
use dmapi::event::{DmEvent, EventBody};
use dmapi::proto::{Frame, Message, QueryOp};
use dmapi::session::{Outbound, SessionConfig, SessionEngine};
use dmapi::source::SourceConfig;
use dmapi::transport::auto::NodeTransport;
use dmapi::transport::tcp::TcpConfig;
use dmapi::transport::{Transport, TransportError};
use dmapi::types::{DmAttrName, DmHandle, DmResponse, DmSessId, DmToken, EventSet, EventType, FsId, NodeId};
use dmapi::{DmError, DmResult};
use parking_lot::Mutex;
use tracing::{debug, debug_span, error, info, warn};

use crate::cluster::ClusterLink;
use crate::config::{ConfigError, NodeConfig, DEV_CLUSTER_KEY};
use crate::dm::files::{DmFs, Holder};
use crate::dm::session::DmSession;
use crate::dm::source::EventSource;
use crate::mounts::{MountHost, Mounts};
use crate::roles::fs_manager::FsManager;
use crate::roles::membership::{Membership, PeerChange};
use crate::roles::session_manager::{Durable, SessionManager};
use crate::roles::{epoch_of, Sends, Terms};
use libdmapi::channel::{error_from_errno, NodeStatus};
use tpfs::fuse::EventSink;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport could not start (port in use...).
    #[error("DM transport: {0}")]
    Transport(#[from] TransportError),
    /// A thread or socket could not be created.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// etcd could not be reached, or refused the node.
    #[error("joining the cluster through etcd: {0}")]
    Cluster(#[from] coord::StoreError),
}

/// The etcd role of the session manager.
pub const SESSION_MANAGER_ROLE: &str = "session-manager";

/// How long a call forwarded to another node (a disposition change to the session
/// manager, a query to a session's node) waits for the answer.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a call forwarded to another node.
enum RpcReply {
    /// A disposition change was applied (or refused).
    Done(DmResult<()>),
    /// A query's answer.
    Data(DmResult<Vec<u8>>),
}

/// One running node daemon.
pub struct Node {
    cfg: NodeConfig,
    me: NodeId,
    incarnation: u64,
    transport: Arc<NodeTransport>,
    seq: Arc<AtomicU64>,
    local_tx: Mutex<Sender<Frame>>,
    /// The DM-application API (session side).
    pub dm: Arc<DmSession>,
    /// The event source the file system calls.
    pub source: Arc<EventSource>,
    /// The session-manager role, while this node plays it.
    sm: Mutex<Option<Arc<SessionManager>>>,
    fsm: Option<FsManager>,
    membership: Membership,
    rpcs: Mutex<HashMap<u64, SyncSender<RpcReply>>>,
    mounts: Mutex<BTreeSet<FsId>>,
    /// Peers an event frame could not be sent to since they were last seen alive.
    send_failed: Mutex<BTreeSet<NodeId>>,
    /// Peers a heartbeat is connecting to in the background.
    connecting: Mutex<BTreeSet<NodeId>>,
    stop: AtomicBool,
    /// The metadata services and FUSE mounts this node hosts.
    hosted: Arc<Mounts>,
    /// The DMAPI file functions of each file system, on the node's own
    /// connections, opened at the first call.
    files: Mutex<HashMap<FsId, Arc<DmFs>>>,
    /// Membership through etcd, when configured.
    cluster: Option<Arc<ClusterLink>>,
    /// Where this node announced each of its mounts (the role may move).
    announced: Mutex<HashMap<FsId, NodeId>>,
    /// Session announcements made while no session manager was elected,
    /// in order; the heartbeat sends them once one is.
    unannounced: Mutex<Vec<Outbound>>,
    /// The elected session manager this node last announced a session to.
    announced_sm: Mutex<Option<NodeId>>,
    /// The latest session-manager term heard of: frames of older ones are refused.
    terms: Terms,
}

impl Node {
    /// Starts the daemon: transport, engines, roles, heartbeats, mounts.
    pub fn start(cfg: NodeConfig) -> Result<Arc<Node>, NodeError> {
        cfg.validate()?;
        let me = cfg.node();
        let key = cfg.key()?;
        if key == DEV_CLUSTER_KEY.as_bytes() {
            warn!("no cluster_key configured: using the development key; any local process can join");
        }
        let mut tcfg = TcpConfig::new(me, cfg.listen, &key);
        tcfg.busy_poll = cfg.busy_poll;
        let transport = Arc::new(NodeTransport::start(tcfg, cfg.rdma)?);
        for p in &cfg.peers {
            transport.add_peer(NodeId(p.id), p.addr);
        }
        let cluster = match &cfg.etcd {
            Some(e) => Some(ClusterLink::join(e, me.0, transport.local_addr())?),
            None => None,
        };
        let (local_tx, local_rx) = mpsc::channel::<Frame>();
        let incarnation = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let node = Arc::new_cyclic(|w: &Weak<Node>| {
            let seq = Arc::new(AtomicU64::new(1));
            let w1 = w.clone();
            let send = Arc::new(move |to: NodeId, f: Frame| match w1.upgrade() {
                Some(n) => {
                    let r = n.send_frame(to, f);
                    if r.is_err() {
                        n.send_failed.lock().insert(to);
                    }
                    r
                }
                None => Err(TransportError::Closed),
            });
            let source = EventSource::new(
                me,
                SourceConfig {
                    session_failure_timeout: cfg.session_failure_timeout(),
                    spin_wait: Duration::from_micros(cfg.spin_wait_us),
                    ..SourceConfig::default()
                },
                send,
                seq.clone(),
            );
            let w2 = w.clone();
            let engine = Arc::new(SessionEngine::new(
                me,
                SessionConfig { dm_admin_gid: cfg.dm_admin_gid, ..SessionConfig::default() },
                Arc::new(move |o: Outbound| {
                    if let Some(n) = w2.upgrade() {
                        n.session_outbound(o);
                    }
                }),
            ));
            let (w3, w4, w5) = (w.clone(), w.clone(), w.clone());
            let dm = Arc::new(DmSession::new(
                me,
                engine,
                source.engine().clone(),
                Arc::new(move |sid, ch| match w3.upgrade() {
                    Some(n) => n.disp_rpc(sid, ch),
                    None => Err(DmError::Intr("node shutting down")),
                }),
                Arc::new(move |node, sid, token, q| match w5.upgrade() {
                    Some(n) => n.query_rpc(node, sid, token, q),
                    None => Err(DmError::Intr("node shutting down")),
                }),
                Arc::new(move || w4.upgrade().map_or_else(|| Arc::new(DispositionTable::default()), |n| n.table())),
            ));
            let managed = cfg.dm_managed();
            let fs_managers = cfg.dm_fs_managers();
            Node {
                me,
                incarnation,
                transport: transport.clone(),
                seq,
                local_tx: Mutex::new(local_tx),
                dm,
                source,
                // Elected through etcd (see `campaign_session_manager`), or fixed.
                sm: Mutex::new(
                    (cfg.session_managers.is_empty() && cfg.session_manager == me.0)
                        .then(|| Arc::new(SessionManager::new(me, cfg.all_nodes(), fs_managers))),
                ),
                fsm: (!managed.is_empty()).then(|| FsManager::new(me, managed)),
                membership: Membership::new(cfg.failure_timeout(), cluster.is_some()),
                rpcs: Mutex::new(HashMap::new()),
                mounts: Mutex::new(BTreeSet::new()),
                send_failed: Mutex::new(BTreeSet::new()),
                connecting: Mutex::new(BTreeSet::new()),
                stop: AtomicBool::new(false),
                hosted: Arc::default(),
                files: Mutex::new(HashMap::new()),
                cluster,
                announced: Mutex::new(HashMap::new()),
                unannounced: Mutex::new(Vec::new()),
                announced_sm: Mutex::new(None),
                terms: Terms::default(),
                cfg,
            }
        });
        let w = Arc::downgrade(&node);
        transport.set_handler(Arc::new(move |from, f| {
            if let Some(n) = w.upgrade() {
                n.handle(from, f);
            }
        }));
        let w = Arc::downgrade(&node);
        thread::Builder::new().name(format!("dm-loopback-{me}")).spawn(move || {
            while let Ok(f) = local_rx.recv() {
                match w.upgrade() {
                    Some(n) => n.handle(me, f),
                    None => return,
                }
            }
        })?;
        let w = Arc::downgrade(&node);
        let period = node.cfg.heartbeat_interval();
        thread::Builder::new().name(format!("dm-heartbeat-{me}")).spawn(move || loop {
            match w.upgrade() {
                Some(n) if !n.stop.load(Ordering::Acquire) => {
                    n.heartbeat();
                    n.send_unannounced();
                }
                _ => return,
            }
            thread::sleep(period);
        })?;
        for fs in node.cfg.mounts.clone() {
            node.mount(FsId(fs), true);
        }
        if let Some(link) = &node.cluster {
            node.watch_lease(link);
            let (w1, w2) = (Arc::downgrade(&node), Arc::downgrade(&node));
            link.follow(
                move |n, rkey| {
                    if let Some(node) = w1.upgrade() {
                        node.peer_left(NodeId(n), rkey);
                    }
                },
                move |n| {
                    if let Some(node) = w2.upgrade() {
                        debug!(node = %n, joined = true, members = ?node.cluster.as_ref().map(|l| l.members()), "membership");
                    }
                },
            )?;
        }
        if let (Some(link), true) = (&node.cluster, node.cfg.session_managers.contains(&me.0)) {
            node.campaign_session_manager(link.clone())?;
        }
        node.hosted.start_services(&node, node.fs_members());
        // Each mount in its own thread: one waiting for its manager node does
        // not hold up the others, nor the daemon.
        for m in node.cfg.fuse_mounts.clone() {
            let n = node.clone();
            thread::Builder::new().name(format!("mount-{}", m.fs)).spawn(move || {
                let _ = n.hosted.mount(&n, &m);
            })?;
        }
        info!(node = %me, listen = %transport.local_addr(), sm = node.sm().is_some(), fsm = node.fsm.is_some(),
            "node daemon started");
        Ok(node)
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a frame to `to`, through the loopback queue if `to` is this node.
    pub fn send_frame(&self, to: NodeId, f: Frame) -> Result<(), TransportError> {
        if to == self.me {
            return self.local_tx.lock().send(f).map_err(|_| TransportError::Closed);
        }
        self.transport.send(to, &f)
    }

    fn send_all(&self, sends: Sends) {
        for (to, mut f) in sends {
            f.seq = self.next_seq();
            if let Err(e) = self.send_frame(to, f) {
                debug!(%to, error = %e, "role message not sent; it is repeated when the node is back");
            }
        }
    }

    fn session_outbound(&self, o: Outbound) {
        // Only session announcements go to the session manager: an event's
        // answer must not wait for etcd to say who that is.
        let announce = matches!(
            o,
            Outbound::SessionCreated { .. } | Outbound::SessionReclaimed { .. } | Outbound::SessionDestroyed { .. }
        );
        let sm = match announce {
            true => match self.elected_sm() {
                Some(n) if self.unannounced.lock().is_empty() => n,
                _ => {
                    // Nobody to record it (or older ones still wait): kept, in order.
                    warn!(?o, "no session manager is elected: the announcement waits for one");
                    self.unannounced.lock().push(o);
                    return;
                }
            },
            false => NodeId(self.cfg.session_manager),
        };
        if announce {
            *self.announced_sm.lock() = Some(sm);
        }
        self.send_session(&o, sm);
    }

    fn send_session(&self, o: &Outbound, sm: NodeId) {
        let (to, f) = o.to_frame(self.me, self.next_seq(), sm);
        if let Err(e) = self.send_frame(to, f) {
            warn!(%to, error = %e, ?o, "session message not sent");
        }
    }

    /// The elected session manager this node announced sessions to left the
    /// cluster: it may have died before it recorded the last of them, so
    /// every session of this node is announced again to the next one (a
    /// manager records a session it has already as it is).
    fn announce_sessions_again(&self) {
        let mine: Vec<Outbound> = self
            .dm
            .engine()
            .sessions()
            .into_iter()
            .filter(|s| s.node == self.me)
            .map(|s| Outbound::SessionCreated { sid: s.sid, info: s.info })
            .collect();
        info!(sessions = mine.len(), "the session manager left: this node's sessions go to the next one");
        let mut q = self.unannounced.lock();
        let later = std::mem::take(&mut *q);
        *q = mine;
        q.extend(later.into_iter().filter(|o| !matches!(o, Outbound::SessionCreated { .. })));
    }

    /// Sends the session announcements kept while no session manager was
    /// elected, once one is (from the heartbeat).
    fn send_unannounced(&self) {
        if self.unannounced.lock().is_empty() {
            return;
        }
        let Some(sm) = self.elected_sm() else { return };
        let kept = std::mem::take(&mut *self.unannounced.lock());
        info!(%sm, announcements = kept.len(), "a session manager is elected: sending what waited for it");
        *self.announced_sm.lock() = Some(sm);
        for o in kept {
            self.send_session(&o, sm);
        }
    }

    /// Sends `f` to `to` and waits for the frame that answers it.
    fn rpc(&self, to: NodeId, mut f: Frame) -> DmResult<RpcReply> {
        let seq = self.next_seq();
        f.seq = seq;
        let (tx, rx) = mpsc::sync_channel(1);
        self.rpcs.lock().insert(seq, tx);
        if let Err(e) = self.send_frame(to, f) {
            self.rpcs.lock().remove(&seq);
            return Err(DmError::Io(format!("node {to} unreachable: {e}")));
        }
        let r = rx.recv_timeout(RPC_TIMEOUT);
        self.rpcs.lock().remove(&seq);
        r.map_err(|_| DmError::Io(format!("node {to} did not answer")))
    }

    fn disp_rpc(&self, sid: DmSessId, ch: DispChange) -> DmResult<()> {
        let mut f = Frame::new(self.me, 0, Message::DispChange(ch));
        f.sid = sid;
        match self.rpc(self.sm_node(), f)? {
            RpcReply::Done(r) => r,
            RpcReply::Data(_) => Err(DmError::Io("session manager answered a query".into())),
        }
    }

    fn query_rpc(&self, node: NodeId, sid: DmSessId, token: DmToken, q: QueryOp) -> DmResult<Vec<u8>> {
        let mut f = Frame::new(self.me, 0, Message::Query(q));
        (f.sid, f.token) = (sid, token);
        match self.rpc(node, f)? {
            RpcReply::Data(r) => r,
            RpcReply::Done(_) => Err(DmError::Io(format!("node {node} answered a query with a response"))),
        }
    }

    /// The disposition table this node routes events with (the master copy on the
    /// session manager).
    pub fn table(&self) -> Arc<DispositionTable> {
        match self.sm() {
            Some(sm) => sm.table(),
            None => self.source.engine().dispositions(),
        }
    }

    /// Where an event of type `t` on `fs` generated here would go now.
    pub fn route(&self, fs: FsId, t: EventType) -> Option<DispEntry> {
        self.source.engine().dispositions().route(fs, t)
    }

    /// What a mount of `fs` needs to decide locally whether to generate an
    /// event (a table is installed whole, so the view is never torn).
    pub fn disp_view(&self, fs: FsId) -> GenerationView {
        self.source.engine().dispositions().generation_view(fs)
    }

    /// Mounts (or unmounts) `fs` here: its manager is told and answers with the
    /// dispositions (B11).
    pub fn mount(&self, fs: FsId, mounted: bool) {
        if mounted {
            self.mounts.lock().insert(fs);
        } else {
            self.mounts.lock().remove(&fs);
        }
        if let Some(m) = self.fs_manager_of(fs) {
            self.announced.lock().insert(fs, m);
            let f = Frame::new(self.me, self.next_seq(), Message::Mount { fs, mounted });
            if let Err(e) = self.send_frame(m, f) {
                info!(%fs, manager = %m, error = %e, "fs manager not reachable yet; mount announced when it is");
            }
        }
    }

    /// The metadata services and FUSE mounts this node hosts.
    pub fn mounts(&self) -> &Mounts {
        &self.hosted
    }

    /// The DMAPI file functions of `fs`, connected to its volume and its
    /// manager's metadata service at the first call (`EINVAL` for a file
    /// system without them in the configuration).
    /// An answered event's token gives back every right and object reference
    /// it held (XDSM); a file that was alive only through a reference is
    /// destroyed, with its destroy event.
    pub fn release_rights(&self, who: Holder) {
        let files: Vec<(FsId, Arc<DmFs>)> = self.files.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
        for (fs, f) in files {
            for d in f.release_token(who).1 {
                self.destroyed(fs, d);
            }
        }
    }

    /// The destroy event of a file the DM API's last reference kept (the
    /// mounts raise their own).
    pub fn destroyed(&self, fs: FsId, d: tpfs::rpc::Destroyed) {
        let handle = DmHandle::file(fs, d.ino, d.generation);
        let body = EventBody::Destroy { handle, attrname: DmAttrName::default(), attrcopy: Vec::new() };
        match DmEvent::new(EventType::Destroy, NodeId(0), body) {
            Ok(ev) => {
                if let Err(e) = self.generate_event(fs, ev, EventSet::EMPTY, d.attrs) {
                    warn!(%fs, ino = d.ino, error = %e, "destroy event not generated");
                }
            }
            Err(e) => warn!(error = %e, "destroy event not built"),
        }
    }

    /// A moved event's rights go with it to its new session.
    pub fn move_rights(&self, who: Holder, to: DmSessId) {
        for f in self.files.lock().values() {
            f.move_token(who, to);
        }
    }

    pub fn files(&self, fs: FsId) -> DmResult<Arc<DmFs>> {
        let mut files = self.files.lock();
        if let Some(f) = files.get(&fs) {
            return Ok(f.clone());
        }
        let f = self.cfg.filesystem(fs).filter(|f| f.mountable()).ok_or(DmError::Inval("no such file system here"))?;
        let link = self.cluster.as_deref();
        let meta = crate::mounts::manager_of(f, link).map_err(|e| DmError::Io(format!("metadata service: {e}")))?;
        let (_, dev) = crate::mounts::volume(&self.cfg, f, link).map_err(|e| DmError::Io(e.to_string()))?;
        let name = format!("dm-node-{}", self.me);
        let creds = crate::mounts::fs_creds(&self.cfg).map_err(|e| DmError::Io(e.to_string()))?;
        let dmfs = Arc::new(
            DmFs::connect(meta, dev, fs, &name, &creds, crate::mounts::resolver(f, self.cluster.as_ref()))
                .map_err(|e| DmError::Io(format!("metadata service: {e}")))?,
        );
        files.insert(fs, dmfs.clone());
        Ok(dmfs)
    }

    /// Checks that a file function's session exists and, when a token is
    /// given, that the token is an outstanding event of that session here.
    pub fn check_token(&self, sid: DmSessId, token: DmToken) -> DmResult<()> {
        let engine = self.dm.engine();
        if token == dmapi::types::DM_NO_TOKEN {
            return engine.dm_query_session(sid).map(|_| ());
        }
        match engine.dm_find_eventmsg(sid, token, 0) {
            Ok(_) | Err(DmError::TooBig { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Generates `event` on `fs` here, as the file system does before (or,
    /// for post events, after) an operation, and waits for the answer of a
    /// synchronous event: ABORT comes back as a response, not an error.
    /// `file_events` is the file's own event list; a destroy event takes the
    /// DM attribute `dm_set_return_on_destroy` named from the file's `attrs`.
    pub fn generate_event(
        &self,
        fs: FsId,
        mut event: DmEvent,
        file_events: EventSet,
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> DmResult<DmResponse> {
        if let EventBody::Destroy { attrname, attrcopy, .. } = &mut event.body {
            if let Some(name) = self.table().return_on_destroy(fs) {
                *attrname = name;
                let n = &name.an_chars[..name.an_chars.iter().position(|&c| c == 0).unwrap_or(8)];
                *attrcopy = attrs.into_iter().find(|(a, _)| a == n).map(|(_, v)| v).unwrap_or_default();
            }
        }
        match self.source.generate_with_filelist(fs, event, file_events) {
            Err(DmError::Aborted(e)) => Ok(DmResponse::Abort(e)),
            r => r,
        }
    }

    /// A snapshot for tools and tests.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            node: self.me.0,
            session_manager: self.sm().is_some(),
            // Elected metadata services with etcd; the configured role without.
            fs_managed: match &self.cluster {
                Some(_) => self.hosted.served(),
                None => self.cfg.filesystems.iter().filter(|f| f.manager == self.me.0).map(|f| f.id).collect(),
            },
            mounts: self.mounts.lock().iter().map(|f| f.0).collect(),
            disp_version: self.source.engine().dispositions().version(),
            sessions: self.dm.engine().sessions().into_iter().map(|s| (s.sid.0, s.node.0, s.info)).collect(),
            peers_up: self.cfg.peers.iter().filter(|p| self.membership.is_up(NodeId(p.id))).map(|p| p.id).collect(),
            fuse: self.hosted.status(),
            meta_served: self.hosted.served(),
            peers_rdma: self
                .cfg
                .peers
                .iter()
                .filter(|p| self.transport.uses_rdma(NodeId(p.id)))
                .map(|p| p.id)
                .collect(),
        }
    }

    fn heartbeat(self: &Arc<Self>) {
        for p in &self.cfg.peers {
            let peer = NodeId(p.id);
            let f = Frame::new(self.me, self.next_seq(), Message::Heartbeat { now_ns: self.incarnation });
            if self.transport.settled(peer) {
                if let Err(e) = self.transport.send_if_idle(peer, &f) {
                    debug!(%peer, error = %e, "heartbeat not sent");
                }
                continue;
            }
            // Connecting can take a connect timeout (a peer whose host is
            // gone answers nothing): do it off this thread, one attempt per
            // peer at a time, so heartbeats to every other peer keep time.
            if !self.connecting.lock().insert(peer) {
                continue;
            }
            let n = self.clone();
            let spawned = thread::Builder::new().name(format!("dm-connect-{peer}")).spawn(move || {
                if let Err(e) = n.transport.send_if_idle(peer, &f) {
                    debug!(%peer, error = %e, "heartbeat not sent");
                }
                n.connecting.lock().remove(&peer);
            });
            if spawned.is_err() {
                self.connecting.lock().remove(&peer);
            }
        }
        for n in self.membership.sweep() {
            match &self.cluster {
                // etcd decides: failed when its lease is gone (`peer_left`).
                Some(link) if link.is_member(n.0) => {
                    warn!(node = %n, "peer silent; still a member in etcd, so not failed until its lease ends")
                }
                Some(_) => {
                    if self.membership.declare_failed(n) {
                        self.on_peer_failed(n);
                    }
                }
                None => self.on_peer_failed(n),
            }
        }
        // A send failed to a peer that never stopped answering heartbeats (a
        // connection reset, say): re-send what it may have missed.
        let retry: Vec<NodeId> =
            self.send_failed.lock().iter().copied().filter(|n| self.membership.is_up(*n)).collect();
        for n in retry {
            self.send_failed.lock().remove(&n);
            let src = self.source.engine();
            let (p, u) = (src.resend_pending_to(n), src.resend_unacked_to(n));
            info!(node = %n, pending = p, unacked = u, "events re-sent after a failed send");
        }
    }

    /// `n` is alive: first seen, or `recovered` after a failure or restart.
    fn on_peer_alive(&self, n: NodeId, recovered: bool) {
        info!(node = %n, recovered, "peer alive");
        let src = self.source.engine();
        // Asynchronous events are re-sent only if some may not have arrived: a
        // needless re-send of a long backlog outruns the session's de-duplication
        // window and shows up as duplicates.
        let lost = self.send_failed.lock().remove(&n) || recovered;
        let p = src.resend_pending_to(n);
        let u = if lost { src.resend_unacked_to(n) } else { 0 };
        if p + u > 0 {
            info!(node = %n, pending = p, unacked = u, "events re-sent to peer");
        }
        if let Some(sm) = self.sm() {
            self.send_all(sm.on_node_alive(n));
        }
        let mounts: Vec<FsId> = self.mounts.lock().iter().copied().collect();
        for fs in mounts {
            if self.fs_manager_of(fs) == Some(n) {
                let f = Frame::new(self.me, self.next_seq(), Message::Mount { fs, mounted: true });
                let _ = self.send_frame(n, f);
            }
        }
    }

    /// The node playing `fs`'s disposition role (B11) now: with an elected
    /// metadata manager (etcd, a volume) its holder, else the configured one.
    fn fs_manager_of(&self, fs: FsId) -> Option<NodeId> {
        let f = self.cfg.filesystem(fs)?;
        match &self.cluster {
            Some(link) if f.mountable() => match link.election(&f.role()).leader() {
                Ok(l) => l.map(|l| NodeId(l.holder)),
                Err(e) => {
                    warn!(%fs, error = %e, "cannot ask etcd who manages the file system");
                    None
                }
            },
            _ => Some(NodeId(f.manager)),
        }
    }

    /// Whether this node plays `fs`'s disposition role now.
    fn manages_now(&self, fs: FsId) -> bool {
        match (&self.cluster, self.cfg.filesystem(fs)) {
            (Some(_), Some(f)) if f.mountable() => self.hosted.served().contains(&fs.0),
            _ => true,
        }
    }

    /// A table came from `from`: if it manages a file system mounted here
    /// that was announced to another node (the role moved), announce it.
    fn announce_mounts_to(&self, from: NodeId) {
        if self.cluster.is_none() {
            return;
        }
        let mounts: Vec<FsId> = self.mounts.lock().iter().copied().collect();
        for fs in mounts {
            if self.announced.lock().get(&fs) == Some(&from) || self.fs_manager_of(fs) != Some(from) {
                continue;
            }
            self.announced.lock().insert(fs, from);
            info!(%fs, manager = %from, "mount announced to the new manager");
            let f = Frame::new(self.me, self.next_seq(), Message::Mount { fs, mounted: true });
            let _ = self.send_frame(from, f);
        }
    }

    fn sm(&self) -> Option<Arc<SessionManager>> {
        self.sm.lock().clone()
    }

    /// The session manager node now: the holder of the role in etcd when it
    /// is elected, else the configured one.
    fn sm_node(&self) -> NodeId {
        self.elected_sm().unwrap_or(NodeId(self.cfg.session_manager))
    }

    /// [`Node::sm_node`], but `None` while the role is elected and nobody
    /// holds it (or etcd cannot say).
    fn elected_sm(&self) -> Option<NodeId> {
        if let (Some(link), false) = (&self.cluster, self.cfg.session_managers.is_empty()) {
            return match link.election(SESSION_MANAGER_ROLE).leader() {
                Ok(Some(l)) => {
                    // Heard of from etcd before any frame of its term arrives.
                    self.terms.admit(epoch_of(l.epoch));
                    Some(NodeId(l.holder))
                }
                Ok(None) => {
                    warn!("no session manager is elected now");
                    None
                }
                Err(e) => {
                    warn!(error = %e, "cannot ask etcd who the session manager is");
                    None
                }
            };
        }
        Some(NodeId(self.cfg.session_manager))
    }

    /// Renews this node's lease; when it is lost, [`Node::lease_lost`].
    fn watch_lease(self: &Arc<Self>, link: &Arc<ClusterLink>) {
        let w = Arc::downgrade(self);
        link.keep_alive(move || {
            if let Some(n) = w.upgrade() {
                n.lease_lost();
            }
        });
    }

    /// Out of the cluster: others may fence this node and take its roles
    /// and tokens. It stops serving metadata, its session manager term
    /// ends, its mounts fail at once (and their volume connections close),
    /// and it tries to join again, as GPFS's mmfsd does after an expel.
    fn lease_lost(self: &Arc<Self>) {
        error!("this node's etcd lease is gone: stopping its metadata services");
        self.hosted.stop_services();
        self.hosted.expel_mounts();
        // The DMAPI file functions' connections too; the next call after the
        // node is back connects anew (before that, it is refused).
        for f in std::mem::take(&mut *self.files.lock()).into_values() {
            f.expel();
        }
        if !self.cfg.session_managers.is_empty() && self.sm.lock().take().is_some() {
            // Whatever etcd says later, the term went with the lease.
            warn!("the session manager's term ended with the lease");
        }
        let w = Arc::downgrade(self);
        let spawned = thread::Builder::new().name("cluster-rejoin".into()).spawn(move || loop {
            thread::sleep(Duration::from_secs(1));
            let Some(n) = w.upgrade() else { return };
            if n.stop.load(Ordering::Acquire) {
                return;
            }
            let Some(link) = n.cluster.clone() else { return };
            match link.rejoin() {
                Ok(()) => return n.rejoined(&link),
                Err(e) => debug!(error = %e, "cannot join the cluster again yet"),
            }
        });
        if let Err(e) = spawned {
            error!(error = %e, "cannot start joining the cluster again: restart the node");
        }
    }

    /// Back in the cluster under a new lease: renew it, campaign again for
    /// the roles this node may hold, and mount again what was expelled.
    fn rejoined(self: &Arc<Self>, link: &Arc<ClusterLink>) {
        self.watch_lease(link);
        if self.cfg.session_managers.contains(&self.me.0) {
            if let Err(e) = self.campaign_session_manager(link.clone()) {
                warn!(error = %e, "cannot campaign for the session manager");
            }
        }
        self.hosted.start_services(self, self.fs_members());
        self.hosted.remount_expelled(self);
    }

    /// Campaigns for the session-manager role from a thread: a term's
    /// holder loads the registry and the table from etcd, sends them out
    /// and plays the role until the term ends.
    fn campaign_session_manager(self: &Arc<Self>, link: Arc<ClusterLink>) -> std::io::Result<()> {
        let w = Arc::downgrade(self);
        thread::Builder::new().name("campaign-sm".into()).spawn(move || {
            let election = link.election(SESSION_MANAGER_ROLE);
            // This campaign belongs to one membership: a later one campaigns anew.
            let lease0 = link.lease();
            let over =
                || w.upgrade().is_none_or(|n| n.stop.load(Ordering::Acquire)) || link.lost() || link.lease() != lease0;
            while !over() {
                let Some(lease) = link.lease() else { return };
                let term = match election.campaign(link.node(), b"", lease, Duration::from_millis(200), &over) {
                    Ok(Some(t)) => t,
                    Ok(None) => return,
                    Err(e) => {
                        warn!(error = %e, "campaigning for the session manager");
                        thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                let Some(n) = w.upgrade() else { return };
                let durable = Durable::new(link.store(), link.cluster(), election.key(), term.epoch);
                let fs_managers = n.cfg.dm_fs_managers();
                match SessionManager::elected(n.me, n.cfg.all_nodes(), fs_managers, durable) {
                    Ok(sm) => {
                        let sm = Arc::new(sm);
                        info!(epoch = term.epoch, "elected the session manager");
                        n.terms.admit(epoch_of(term.epoch));
                        *n.sm.lock() = Some(sm.clone());
                        n.send_all(sm.announce());
                    }
                    Err(e) => {
                        error!(error = %e, "cannot take the session manager's role up; giving it back");
                        let _ = election.resign(&term);
                        thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
                drop(n);
                while !over() && election.holds(&term).unwrap_or(true) {
                    thread::sleep(Duration::from_millis(200));
                }
                warn!(epoch = term.epoch, "the session manager's term ended");
                if let Some(n) = w.upgrade() {
                    *n.sm.lock() = None;
                }
            }
        })?;
        Ok(())
    }

    /// Who may use the metadata services this node hosts: etcd's members,
    /// or without etcd the configured nodes.
    fn fs_members(self: &Arc<Self>) -> tpfs::rpc::Members {
        match &self.cluster {
            Some(link) => {
                let link = Arc::downgrade(link);
                Arc::new(move |n| link.upgrade().is_some_and(|l| l.is_member(n)))
            }
            None => {
                let all = self.cfg.all_nodes();
                Arc::new(move |n| all.contains(&NodeId(n)))
            }
        }
    }

    /// etcd says `n` left the cluster: it is failed whatever its heartbeats
    /// say, and the metadata services here drop its connections.
    fn peer_left(&self, n: NodeId, rkey: Option<u64>) {
        if self.membership.declare_failed(n) {
            self.on_peer_failed(n);
        }
        if !self.cfg.session_managers.is_empty() && *self.announced_sm.lock() == Some(n) {
            *self.announced_sm.lock() = None;
            self.announce_sessions_again();
        }
        self.hosted.expel(n.0, rkey);
        // If it managed a file system, its clients here must not wait on a
        // connection that may stay open (a frozen process): find the new holder.
        self.hosted.recheck_managers();
        for f in self.files.lock().values() {
            f.recheck_manager();
        }
    }

    fn on_peer_failed(&self, n: NodeId) {
        warn!(node = %n, "peer failed");
        let cancelled = self.dm.engine().source_node_failed(n);
        let waiting = self.source.engine().on_session_node_failed(n);
        info!(node = %n, cancelled, waiting, "failure handled");
    }

    fn reply_rpc(&self, to: NodeId, ref_seq: u64, r: DmResult<()>) {
        let errno = match r {
            Ok(()) => 0,
            Err(e) => e.errno().max(1),
        };
        let mut f = Frame::new(self.me, self.next_seq(), Message::DispReply { errno });
        f.ref_seq = ref_seq;
        let _ = self.send_frame(to, f);
    }

    fn ack(&self, to: NodeId, upto: u64) {
        let mut f = Frame::new(self.me, self.next_seq(), Message::Ack);
        f.ref_seq = upto;
        if let Err(e) = self.send_frame(to, f) {
            debug!(%to, error = %e, "ack not sent; the source re-sends and we de-duplicate");
        }
    }

    /// Handles one frame from `from` (a peer, or this node through the loopback).
    pub fn handle(&self, from: NodeId, f: Frame) {
        if from != self.me {
            let inc = match f.msg {
                Message::Heartbeat { now_ns } => Some(now_ns),
                _ => None,
            };
            match self.membership.heard(from, inc) {
                Some(PeerChange::Alive(n)) => self.on_peer_alive(n, false),
                Some(PeerChange::Recovered(n)) => self.on_peer_alive(n, true),
                Some(PeerChange::Restarted(n)) => {
                    info!(node = %n, "peer restarted");
                    self.on_peer_failed(n);
                    self.on_peer_alive(n, true);
                }
                None => {}
            }
        }
        let from_sm = matches!(
            f.msg,
            Message::DispSpec(_)
                | Message::SessionCreate { .. }
                | Message::SessionReclaim { .. }
                | Message::SessionDestroy
        );
        if from_sm && !self.terms.admit(f.epoch) {
            warn!(%from, epoch = f.epoch, latest = self.terms.latest(), kind = ?f.msg.msg_type(),
                "a frame of a deposed session manager's term; refused");
            // A newly elected file-system manager makes itself known with the
            // table it has, stamped with the term it came in; that table may
            // be stale, but the election is etcd's, and this node's mounts
            // must still be announced to it or no later table reaches them.
            if matches!(f.msg, Message::DispSpec(_)) {
                self.announce_mounts_to(from);
            }
            return;
        }
        // A stamped session message is a session manager's mirror, never an
        // announcement for this node to record if it is the manager (the
        // stamp is newer than its own term, or it was refused above).
        let epoch = f.epoch;
        let sm_here = || if epoch == 0 { self.sm() } else { None };
        let engine = self.dm.engine();
        let src = self.source.engine();
        match f.msg {
            Message::Event { sync, event, .. } => {
                let _s = debug_span!("event", sid = %f.sid, %from, seq = f.seq).entered();
                match engine.deliver(f.sid, f.seq, sync, event) {
                    Ok(_) if !sync => self.ack(from, f.seq),
                    Ok(_) => {}
                    Err(DmError::NoMem(_)) => warn!("session queue full; the source re-sends"),
                    Err(e) => {
                        debug!(error = %e, "event for no session here");
                        if !sync {
                            self.ack(from, f.seq);
                        }
                    }
                }
            }
            Message::EventBatch(evs) => self.deliver_batch(from, evs),
            Message::Response { response, .. } => {
                src.on_response(from, f.ref_seq, response);
            }
            Message::DispReply { errno } => {
                if let Some(tx) = self.rpcs.lock().remove(&f.ref_seq) {
                    let r = match errno {
                        0 => Ok(()),
                        e => Err(error_from_errno(e, "session manager refused", None)),
                    };
                    let _ = tx.try_send(RpcReply::Done(r));
                }
            }
            Message::Pending { delay_ms } => {
                src.on_pending(f.ref_seq, Duration::from_millis(delay_ms));
            }
            Message::SessionCreate { node, info } => match sm_here() {
                Some(sm) => {
                    engine.register_remote_session(f.sid, node, &info);
                    self.send_all(sm.on_session_create(f.sid, node, &info));
                }
                None if node == self.me => {
                    if engine.queued(f.sid).is_err() {
                        // This node restarted: the session waits for its DM
                        // application to reclaim it, and for the sources' re-sends.
                        if let Err(e) = engine.restore_session(f.sid, &info) {
                            warn!(sid = %f.sid, error = %e, "session not restored");
                        }
                    }
                }
                None => engine.register_remote_session(f.sid, node, &info),
            },
            Message::SessionReclaim { node, info } => {
                engine.register_remote_session(f.sid, node, &info);
                if let Some(sm) = sm_here() {
                    self.send_all(sm.on_session_reclaim(f.sid, node, &info));
                }
                src.on_session_reclaimed(f.sid, node);
            }
            Message::SessionDestroy => {
                engine.forget_remote_session(f.sid);
                if let Some(sm) = sm_here() {
                    self.send_all(sm.on_session_destroy(f.sid));
                }
            }
            Message::DispChange(ch) => match self.sm() {
                Some(sm) => {
                    let r = sm.on_disp_change(f.sid, &ch);
                    match r {
                        Ok(sends) => {
                            self.reply_rpc(from, f.seq, Ok(()));
                            self.send_all(sends);
                        }
                        Err(e) => self.reply_rpc(from, f.seq, Err(e)),
                    }
                }
                None => {
                    warn!(%from, "disposition change sent to a node that is not the session manager");
                    self.reply_rpc(from, f.seq, Err(DmError::Inval("not the session manager")));
                }
            },
            Message::DispSpec(spec) => {
                let t = match DispositionTable::from_spec(&spec) {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(%from, error = %e, "a disposition table that does not hold together; ignored");
                        return;
                    }
                };
                if let Some(fsm) = &self.fsm {
                    self.send_all(fsm.on_spec(&t, f.epoch));
                }
                src.install_dispositions(Arc::new(t));
                self.announce_mounts_to(from);
            }
            Message::Mount { fs, mounted } => match &self.fsm {
                Some(fsm) if fsm.manages(fs) && self.manages_now(fs) => self.send_all(fsm.on_mount(from, fs, mounted)),
                _ => warn!(%from, %fs, "mount notice for a file system this node does not manage"),
            },
            Message::Ack => {
                src.on_ack(from, f.ref_seq);
            }
            Message::Heartbeat { .. } => {}
            Message::Query(q) => {
                // Answered from this node's engine only, never forwarded again.
                let r = match q {
                    QueryOp::FindEventmsg { buflen } => engine.dm_find_eventmsg(f.sid, f.token, buflen as usize),
                    QueryOp::GetallTokens { nelem } => engine
                        .dm_getall_tokens(f.sid, nelem as usize)
                        .map(|v| v.iter().flat_map(|t| t.0.to_le_bytes()).collect()),
                };
                let (errno, needed, data) = match r {
                    Ok(d) => (0, 0, d),
                    Err(DmError::TooBig { needed }) => (libc::E2BIG, needed as u64, Vec::new()),
                    Err(e) => (e.errno(), 0, Vec::new()),
                };
                let mut reply = Frame::new(self.me, self.next_seq(), Message::QueryReply { errno, needed, data });
                reply.ref_seq = f.seq;
                let _ = self.send_frame(from, reply);
            }
            Message::QueryReply { errno, needed, data } => {
                if let Some(tx) = self.rpcs.lock().remove(&f.ref_seq) {
                    let r = match errno {
                        0 => Ok(data),
                        libc::E2BIG => Err(DmError::TooBig { needed: needed as usize }),
                        e => Err(error_from_errno(e, "query refused by the session node", None)),
                    };
                    let _ = tx.try_send(RpcReply::Data(r));
                }
            }
            Message::Hello { .. } | Message::Challenge { .. } | Message::Auth { .. } => {
                error!(%from, "handshake frame after authentication; ignored");
            }
        }
    }

    fn deliver_batch(&self, from: NodeId, evs: Vec<dmapi::proto::BatchedEvent>) {
        let engine = self.dm.engine();
        let mut acked = None;
        let mut it = evs.into_iter().peekable();
        while let Some(first) = it.next() {
            let sid = first.sid;
            let mut run = vec![(first.seq, first.sync, first.event)];
            while let Some(e) = it.next_if(|e| e.sid == sid) {
                run.push((e.seq, e.sync, e.event));
            }
            let last = run.last().map(|r| r.0);
            match engine.deliver_batch(sid, run) {
                Ok(_) => acked = last,
                Err(DmError::NoMem(_)) => {
                    warn!(%sid, %from, "session queue full; batch left for re-send");
                    break;
                }
                Err(e) => {
                    debug!(%sid, error = %e, "batch for no session here; dropped");
                    acked = last;
                }
            }
        }
        if let Some(upto) = acked {
            self.ack(from, upto);
        }
    }

    /// Stops the daemon: blocked callers get EINTR, connections close.
    pub fn shutdown(&self) {
        // Mounts first: their unmount events still go out.
        self.hosted.stop();
        self.files.lock().clear();
        self.stop.store(true, Ordering::Release);
        self.source.shutdown();
        self.dm.engine().shutdown();
        self.transport.shutdown();
        if let Some(link) = &self.cluster {
            link.leave();
        }
    }
}

/// A hosted mount's events go straight into this node's source engine.
impl EventSink for Node {
    fn view(&self, fs: FsId) -> Option<GenerationView> {
        // The node's own table: always current.
        Some(self.disp_view(fs))
    }

    fn generate(
        &self,
        fs: FsId,
        ev: DmEvent,
        file_events: EventSet,
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<DmResponse, String> {
        self.generate_event(fs, ev, file_events, attrs).map_err(|e| e.to_string())
    }

    fn mounted(&self, fs: FsId, yes: bool) -> Result<(), String> {
        self.mount(fs, yes);
        Ok(())
    }
}

impl MountHost for Node {
    fn cfg(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The elected metadata manager plays the file system's disposition
    /// role too: every node gets its table, and answers by announcing its
    /// mounts to it.
    fn elected(&self, fs: FsId) {
        let Some(fsm) = &self.fsm else { return };
        let f = fsm.table_frame();
        let nodes = self.cfg.all_nodes();
        info!(%fs, nodes = nodes.len() - 1, "elected manager: the dispositions go to every node");
        self.send_all(nodes.into_iter().filter(|n| *n != self.me).map(|n| (n, f.clone())).collect());
    }

    fn cluster(&self) -> Option<Arc<ClusterLink>> {
        self.cluster.clone()
    }
}
