//! [`Dm`]: a DM application's handle on its node daemon, one method per XDSM call.
//!
//! ```no_run
//! use libdmapi::Dm;
//! use dmapi::types::*;
//! let dm = Dm::connect("/tmp/tidepool-node-1.sock").unwrap();
//! let sid = dm.dm_create_session(DM_NO_SESSION, b"hsm").unwrap();
//! let set: EventSet = [EventType::Read].into_iter().collect();
//! dm.dm_set_disp(sid, &DmHandle::fs(FsId(1)), set).unwrap();
//! ```

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dmapi::event::{parse_eventmsgs, DmEvent};
use dmapi::proto::Message;
use dmapi::types::{DmAttrName, DmHandle, DmMsgType, DmResponse, DmSessId, DmToken, EventSet, EventType, FsId, NodeId};
use dmapi::{DmError, DmResult};
use parking_lot::Mutex;

use crate::channel::{error_from_errno, read_msg, write_msg, NodeStatus, Reply, Request};

/// A DM application's handle on its node: each method forwards one XDSM call to
/// the node daemon over the local API. One call at a time per handle (a blocking
/// `dm_get_events` holds it); open one handle per thread for concurrency.
pub struct Dm {
    path: PathBuf,
    conn: Mutex<UnixStream>,
}

/// What [`Dm::generate`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    /// The session's answer (`DontCare` when no event was generated or it was async).
    pub response: DmResponse,
    /// How long the generating thread on the node was blocked.
    pub blocked: Duration,
}

impl Dm {
    /// Connects to the node daemon's API socket.
    pub fn connect(path: impl AsRef<Path>) -> std::io::Result<Dm> {
        let path = path.as_ref().to_path_buf();
        let s = UnixStream::connect(&path)?;
        Ok(Dm { path, conn: Mutex::new(s) })
    }

    /// The socket this handle talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One raw call.
    pub fn call(&self, req: &Request) -> DmResult<Reply> {
        let mut s = self.conn.lock();
        write_msg(&mut *s, req).map_err(|e| DmError::Io(format!("node daemon: {e}")))?;
        let r: Reply = read_msg(&mut *s).map_err(|e| DmError::Io(format!("node daemon: {e}")))?;
        match r {
            Reply::Err { errno, msg, session_node } => {
                let sid = match req {
                    Request::DestroySession { sid }
                    | Request::GetEvents { sid, .. }
                    | Request::RespondEvent { sid, .. }
                    | Request::Pending { sid, .. }
                    | Request::MoveEvent { sid, .. }
                    | Request::FindEventmsg { sid, .. }
                    | Request::GetallTokens { sid, .. }
                    | Request::CreateUserevent { sid, .. }
                    | Request::SetDisp { sid, .. }
                    | Request::SetEventlist { sid, .. }
                    | Request::SetReturnOnDestroy { sid, .. } => DmSessId(*sid),
                    _ => DmSessId(0),
                };
                Err(error_from_errno(errno, &msg, session_node.map(|n| (sid, NodeId(n)))))
            }
            r => Ok(r),
        }
    }

    fn unexpected(r: Reply) -> DmError {
        DmError::Io(format!("node daemon answered {r:?}"))
    }

    fn ok(&self, req: Request) -> DmResult<()> {
        match self.call(&req)? {
            Reply::Ok => Ok(()),
            r => Err(Self::unexpected(r)),
        }
    }

    fn bytes(&self, req: Request) -> DmResult<Vec<u8>> {
        match self.call(&req)? {
            Reply::Bytes(b) => Ok(b),
            r => Err(Self::unexpected(r)),
        }
    }

    fn token(&self, req: Request) -> DmResult<DmToken> {
        match self.call(&req)? {
            Reply::Token(t) => Ok(DmToken(t)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_create_session` (EPERM unless root or in the node's `dm_admin_gid`).
    pub fn dm_create_session(&self, oldsid: DmSessId, info: &[u8]) -> DmResult<DmSessId> {
        match self.call(&Request::CreateSession { oldsid: oldsid.0, info: info.to_vec() })? {
            Reply::Sid(s) => Ok(DmSessId(s)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_destroy_session`.
    pub fn dm_destroy_session(&self, sid: DmSessId) -> DmResult<()> {
        self.ok(Request::DestroySession { sid: sid.0 })
    }

    /// `dm_query_session`.
    pub fn dm_query_session(&self, sid: DmSessId) -> DmResult<Vec<u8>> {
        self.bytes(Request::QuerySession { sid: sid.0 })
    }

    /// `dm_getall_sessions`.
    pub fn dm_getall_sessions(&self, nelem: usize) -> DmResult<Vec<DmSessId>> {
        match self.call(&Request::GetallSessions { nelem: nelem as u64 })? {
            Reply::Sids(v) => Ok(v.into_iter().map(DmSessId).collect()),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_get_events`: the chained `dm_eventmsg_t` buffer.
    pub fn dm_get_events(&self, sid: DmSessId, maxmsgs: u32, flags: u32, buflen: usize) -> DmResult<Vec<u8>> {
        self.bytes(Request::GetEvents { sid: sid.0, maxmsgs, flags, buflen: buflen as u64 })
    }

    /// `dm_get_events`, parsed.
    pub fn get_events(&self, sid: DmSessId, maxmsgs: u32, flags: u32, buflen: usize) -> DmResult<Vec<DmEvent>> {
        parse_eventmsgs(&self.dm_get_events(sid, maxmsgs, flags, buflen)?)
    }

    /// `dm_respond_event`.
    pub fn dm_respond_event(&self, sid: DmSessId, token: DmToken, response: DmResponse, data: &[u8]) -> DmResult<()> {
        let (response, reterror) = response.to_raw();
        self.ok(Request::RespondEvent { sid: sid.0, token: token.0, response, reterror, data: data.to_vec() })
    }

    /// `dm_pending`.
    pub fn dm_pending(&self, sid: DmSessId, token: DmToken, delay: Duration) -> DmResult<()> {
        self.ok(Request::Pending { sid: sid.0, token: token.0, delay_ms: delay.as_millis() as u64 })
    }

    /// `dm_move_event`.
    pub fn dm_move_event(&self, srcsid: DmSessId, token: DmToken, targetsid: DmSessId) -> DmResult<DmToken> {
        self.token(Request::MoveEvent { sid: srcsid.0, token: token.0, target: targetsid.0 })
    }

    /// `dm_find_eventmsg`.
    pub fn dm_find_eventmsg(&self, sid: DmSessId, token: DmToken, buflen: usize) -> DmResult<Vec<u8>> {
        self.bytes(Request::FindEventmsg { sid: sid.0, token: token.0, buflen: buflen as u64 })
    }

    /// `dm_getall_tokens`.
    pub fn dm_getall_tokens(&self, sid: DmSessId, nelem: usize) -> DmResult<Vec<DmToken>> {
        match self.call(&Request::GetallTokens { sid: sid.0, nelem: nelem as u64 })? {
            Reply::Tokens(v) => Ok(v.into_iter().map(DmToken).collect()),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_create_userevent`.
    pub fn dm_create_userevent(&self, sid: DmSessId, data: &[u8]) -> DmResult<DmToken> {
        self.token(Request::CreateUserevent { sid: sid.0, data: data.to_vec() })
    }

    /// `dm_send_msg`.
    pub fn dm_send_msg(&self, targetsid: DmSessId, msgtype: DmMsgType, data: &[u8]) -> DmResult<()> {
        self.ok(Request::SendMsg { sid: targetsid.0, msgtype: msgtype as i32, data: data.to_vec() })
    }

    /// `dm_set_disp`.
    pub fn dm_set_disp(&self, sid: DmSessId, fs_handle: &DmHandle, set: EventSet) -> DmResult<()> {
        self.ok(Request::SetDisp { sid: sid.0, handle: fs_handle.as_bytes().to_vec(), set: set.0 })
    }

    /// `dm_getall_disp`.
    pub fn dm_getall_disp(&self, sid: DmSessId) -> DmResult<Vec<(DmHandle, EventSet)>> {
        match self.call(&Request::GetallDisp { sid: sid.0 })? {
            Reply::Disp(v) => v.into_iter().map(|(h, s)| Ok((DmHandle::from_bytes(&h)?, EventSet(s)))).collect(),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_set_eventlist` on a file-system handle.
    pub fn dm_set_eventlist(&self, sid: DmSessId, fs_handle: &DmHandle, set: EventSet) -> DmResult<()> {
        self.ok(Request::SetEventlist { sid: sid.0, handle: fs_handle.as_bytes().to_vec(), set: set.0 })
    }

    /// `dm_get_eventlist` on a file-system handle.
    pub fn dm_get_eventlist(&self, sid: DmSessId, fs_handle: &DmHandle) -> DmResult<EventSet> {
        match self.call(&Request::GetEventlist { sid: sid.0, handle: fs_handle.as_bytes().to_vec() })? {
            Reply::Set(s) => Ok(EventSet(s)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_set_return_on_destroy`.
    pub fn dm_set_return_on_destroy(
        &self,
        sid: DmSessId,
        fs_handle: &DmHandle,
        name: DmAttrName,
        enable: bool,
    ) -> DmResult<()> {
        self.ok(Request::SetReturnOnDestroy {
            sid: sid.0,
            handle: fs_handle.as_bytes().to_vec(),
            attr: name.an_chars,
            enable,
        })
    }

    /// Generates `event` on file system `fs` on this node, as the file system would,
    /// and waits for the outcome (ABORT comes back as `response`, not as an error).
    pub fn generate(&self, fs: FsId, event: DmEvent) -> DmResult<Generated> {
        self.generate_for_file(fs, event, EventSet::EMPTY, Vec::new())
    }

    /// [`generate`](Self::generate) for an event about a file with event
    /// list `file_events`; a destroy event gives the file's DM `attrs`.
    pub fn generate_for_file(
        &self,
        fs: FsId,
        event: DmEvent,
        file_events: EventSet,
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> DmResult<Generated> {
        let f = dmapi::proto::Frame::new(event.source, 0, Message::Event { fs, sync: false, event });
        let frame = dmapi::proto::encode_frame(&f).map_err(|_| DmError::Inval("event too large"))?;
        match self.call(&Request::Generate { frame, file_events: file_events.0, attrs })? {
            Reply::Generated { response, reterror, blocked_ns } => Ok(Generated {
                response: DmResponse::from_raw(response, reterror)?,
                blocked: Duration::from_nanos(blocked_ns),
            }),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Mounts or unmounts `fs` on the node.
    pub fn mount(&self, fs: FsId, mounted: bool) -> DmResult<()> {
        self.ok(Request::Mount { fs: fs.0, mounted })
    }

    /// Where an event of type `t` on `fs` generated on the node would go.
    pub fn route(&self, fs: FsId, t: EventType) -> DmResult<Option<(NodeId, DmSessId)>> {
        match self.call(&Request::Route { fs: fs.0, event: t.raw() })? {
            Reply::Route(r) => Ok(r.map(|(n, s)| (NodeId(n), DmSessId(s)))),
            r => Err(Self::unexpected(r)),
        }
    }

    /// The generation view of `fs` on the node, and the disposition install
    /// count it holds for (see [`disp_seq_path`]).
    pub fn disp_view(&self, fs: FsId) -> DmResult<(u64, dmapi::disp::GenerationView)> {
        match self.call(&Request::DispView { fs: fs.0 })? {
            Reply::DispView { seq, disposed, fs_list } => {
                Ok((seq, dmapi::disp::GenerationView { disposed: EventSet(disposed), fs_list: EventSet(fs_list) }))
            }
            r => Err(Self::unexpected(r)),
        }
    }

    /// The node's status.
    pub fn status(&self) -> DmResult<NodeStatus> {
        match self.call(&Request::Status)? {
            Reply::Status(s) => Ok(s),
            r => Err(Self::unexpected(r)),
        }
    }
}
