//! The session side of a node and the DM-application API.
//!
//! [`DmSession`] hosts the node's `SessionEngine` (sessions, queues, tokens) and
//! offers every session, event and disposition call by its XDSM name. It is the
//! in-process embedding path (a DM application linked into the daemon, as the
//! latency benchmark does); DM applications in other processes reach the same
//! object through the node's local DM channel (`crate::api`).
//!
//! Away from the session node (B13), calls that change neither the session nor its
//! events work (`dm_query_session`, `dm_getall_sessions`, `dm_getall_disp`,
//! `dm_get_eventlist`, `dm_send_msg`; `dm_find_eventmsg` and `dm_getall_tokens` are
//! forwarded to the session's node), and calls that do (`dm_get_events`,
//! `dm_respond_event`, `dm_move_event`, `dm_pending`, `dm_destroy_session`,
//! `dm_set_disp`, ...) fail with `DmError::NotSessionNode` (EINVAL, naming the node).
//! Disposition calls go to the session manager and return once it applied them.

use std::sync::Arc;
use std::time::Duration;

use dmapi::disp::DispChange;
use dmapi::disp::DispositionTable;
use dmapi::event::DmEvent;
use dmapi::proto::QueryOp;
use dmapi::session::{Caller, SessionEngine};
use dmapi::source::SourceEngine;
use dmapi::types::{DmAttrName, DmHandle, DmMsgType, DmResponse, DmSessId, DmToken, EventSet, NodeId};
use dmapi::{DmError, DmResult};
use tracing::{debug_span, info_span};

/// Sends a disposition call of a session to the session manager and waits for it
/// to be applied.
pub type DispRpc = Arc<dyn Fn(DmSessId, DispChange) -> DmResult<()> + Send + Sync>;

/// Asks the session's node a read-only question about the session's events (B13:
/// `dm_find_eventmsg`, `dm_getall_tokens` made away from the session node).
pub type QueryRpc = Arc<dyn Fn(NodeId, DmSessId, DmToken, QueryOp) -> DmResult<Vec<u8>> + Send + Sync>;

/// The disposition table as this node knows it.
pub type TableView = Arc<dyn Fn() -> Arc<DispositionTable> + Send + Sync>;

/// The DM-application API of one node.
pub struct DmSession {
    me: NodeId,
    engine: Arc<SessionEngine>,
    source: Arc<SourceEngine>,
    disp_rpc: DispRpc,
    query_rpc: QueryRpc,
    table: TableView,
}

impl DmSession {
    /// The API over `engine`, with `source` for `dm_send_msg` to other nodes.
    pub fn new(
        me: NodeId,
        engine: Arc<SessionEngine>,
        source: Arc<SourceEngine>,
        disp_rpc: DispRpc,
        query_rpc: QueryRpc,
        table: TableView,
    ) -> Self {
        DmSession { me, engine, source, disp_rpc, query_rpc, table }
    }

    /// The engine (for the daemon's delivery and failure plumbing).
    pub fn engine(&self) -> &Arc<SessionEngine> {
        &self.engine
    }

    /// Fails unless `sid` lives here (B13: the call would change it).
    fn require_local(&self, sid: DmSessId) -> DmResult<()> {
        self.engine.queued(sid).map(|_| ())
    }

    /// `dm_create_session` (privilege checked against `caller`).
    pub fn dm_create_session(&self, caller: &Caller, oldsid: DmSessId, info: &[u8]) -> DmResult<DmSessId> {
        let _s = info_span!("dm_create_session", uid = caller.uid, %oldsid).entered();
        self.engine.dm_create_session(caller, oldsid, info)
    }

    /// `dm_destroy_session`.
    pub fn dm_destroy_session(&self, sid: DmSessId) -> DmResult<()> {
        let _s = info_span!("session", %sid).entered();
        self.engine.dm_destroy_session(sid)
    }

    /// `dm_query_session` (any node).
    pub fn dm_query_session(&self, sid: DmSessId) -> DmResult<Vec<u8>> {
        self.engine.dm_query_session(sid)
    }

    /// `dm_getall_sessions` (any node).
    pub fn dm_getall_sessions(&self, nelem: usize) -> DmResult<Vec<DmSessId>> {
        self.engine.dm_getall_sessions(nelem)
    }

    /// `dm_get_events`: the chained `dm_eventmsg_t` buffer.
    pub fn dm_get_events(&self, sid: DmSessId, maxmsgs: u32, flags: u32, buflen: usize) -> DmResult<Vec<u8>> {
        let _s = debug_span!("session", %sid).entered();
        self.engine.dm_get_events(sid, maxmsgs, flags, buflen)
    }

    /// `dm_get_events` returning typed events.
    pub fn get_events_typed(&self, sid: DmSessId, maxmsgs: u32, flags: u32, buflen: usize) -> DmResult<Vec<DmEvent>> {
        self.engine.get_events_typed(sid, maxmsgs, flags, buflen)
    }

    /// `dm_respond_event`.
    pub fn dm_respond_event(&self, sid: DmSessId, token: DmToken, response: DmResponse, data: &[u8]) -> DmResult<()> {
        let _s = debug_span!("event", %sid, %token).entered();
        self.engine.dm_respond_event(sid, token, response, data)
    }

    /// `dm_pending`.
    pub fn dm_pending(&self, sid: DmSessId, token: DmToken, delay: Duration) -> DmResult<()> {
        let _s = debug_span!("event", %sid, %token).entered();
        self.engine.dm_pending(sid, token, delay)
    }

    /// `dm_move_event`.
    pub fn dm_move_event(&self, srcsid: DmSessId, token: DmToken, targetsid: DmSessId) -> DmResult<DmToken> {
        let _s = debug_span!("event", sid = %srcsid, %token).entered();
        self.engine.dm_move_event(srcsid, token, targetsid)
    }

    /// `dm_find_eventmsg` (any node: a query, forwarded to the session's node).
    pub fn dm_find_eventmsg(&self, sid: DmSessId, token: DmToken, buflen: usize) -> DmResult<Vec<u8>> {
        match self.engine.dm_find_eventmsg(sid, token, buflen) {
            Err(DmError::NotSessionNode { node, .. }) => {
                (self.query_rpc)(node, sid, token, QueryOp::FindEventmsg { buflen: buflen as u64 })
            }
            r => r,
        }
    }

    /// `dm_getall_tokens` (any node: a query, forwarded to the session's node).
    pub fn dm_getall_tokens(&self, sid: DmSessId, nelem: usize) -> DmResult<Vec<DmToken>> {
        match self.engine.dm_getall_tokens(sid, nelem) {
            Err(DmError::NotSessionNode { node, .. }) => {
                let b = (self.query_rpc)(node, sid, DmToken(0), QueryOp::GetallTokens { nelem: nelem as u64 })?;
                Ok(b.chunks_exact(4).map(|c| DmToken(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect())
            }
            r => r,
        }
    }

    /// `dm_create_userevent`.
    pub fn dm_create_userevent(&self, sid: DmSessId, data: &[u8]) -> DmResult<DmToken> {
        self.engine.dm_create_userevent(sid, data)
    }

    /// `dm_send_msg` to a session on any node: a user event; with
    /// `DM_MSGTYPE_SYNC` the call waits for the answer.
    pub fn dm_send_msg(&self, targetsid: DmSessId, msgtype: DmMsgType, data: &[u8]) -> DmResult<()> {
        match self.engine.dm_send_msg(targetsid, msgtype, data) {
            Err(DmError::NotSessionNode { node, .. }) => match self.source.send_msg(node, targetsid, msgtype, data)? {
                DmResponse::Abort(e) => Err(DmError::Aborted(e)),
                _ => Ok(()),
            },
            r => r,
        }
    }

    /// `dm_set_disp`: session `sid` (of this node) receives `set` on `fs_handle`.
    pub fn dm_set_disp(&self, sid: DmSessId, fs_handle: &DmHandle, set: EventSet) -> DmResult<()> {
        let _s = info_span!("session", %sid).entered();
        self.require_local(sid)?;
        (self.disp_rpc)(sid, DispChange::SetDisp { node: self.me, handle: *fs_handle, set })
    }

    /// `dm_getall_disp` (any node, from its copy of the table).
    pub fn dm_getall_disp(&self, sid: DmSessId) -> DmResult<Vec<(DmHandle, EventSet)>> {
        self.engine.dm_query_session(sid)?;
        Ok((self.table)().dm_getall_disp(sid))
    }

    /// `dm_set_eventlist` on a file-system handle (session `sid` must live here).
    pub fn dm_set_eventlist(&self, sid: DmSessId, fs_handle: &DmHandle, set: EventSet) -> DmResult<()> {
        let _s = info_span!("session", %sid).entered();
        self.require_local(sid)?;
        (self.disp_rpc)(sid, DispChange::SetEventlist { handle: *fs_handle, set })
    }

    /// `dm_get_eventlist` on a file-system handle (any node).
    pub fn dm_get_eventlist(&self, sid: DmSessId, fs_handle: &DmHandle) -> DmResult<EventSet> {
        self.engine.dm_query_session(sid)?;
        (self.table)().dm_get_eventlist(fs_handle)
    }

    /// `dm_set_return_on_destroy`.
    pub fn dm_set_return_on_destroy(
        &self,
        sid: DmSessId,
        fs_handle: &DmHandle,
        name: DmAttrName,
        enable: bool,
    ) -> DmResult<()> {
        self.require_local(sid)?;
        (self.disp_rpc)(sid, DispChange::ReturnOnDestroy { handle: *fs_handle, name, enable })
    }
}
