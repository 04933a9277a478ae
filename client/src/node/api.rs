//! The node's local API: how DM applications, tools and (later) the file system on
//! this machine reach the node daemon, like system calls into a kernel.
//!
//! A Unix-domain socket (`api_socket` in the configuration, mode 0666: anyone may
//! connect, and each call is checked against the caller's kernel-supplied
//! credentials, `SO_PEERCRED`). Each message is a 4-byte little-endian length and a
//! JSON body ([`Request`] one way, [`Reply`] the other), one call at a time per
//! connection; a blocking call (`dm_get_events` with `DM_EV_WAIT`, a synchronous
//! event generated for the file system) blocks only its connection's thread.
//! Event buffers travel as the XDSM `dm_eventmsg_t` chain, and generated events as a
//! `dmapi::proto` frame, so nothing is encoded twice.
//!
//! [`Dm`] is the client: one method per XDSM call, each forwarding to the daemon.
//!
//! ```no_run
//! use client::node::api::Dm;
//! use dmapi::types::*;
//! let dm = Dm::connect("/tmp/tidepool-node-1.sock").unwrap();
//! let sid = dm.dm_create_session(DM_NO_SESSION, b"hsm").unwrap();
//! let set: EventSet = [EventType::Read].into_iter().collect();
//! dm.dm_set_disp(sid, &DmHandle::fs(FsId(1)), set).unwrap();
//! ```

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use dmapi::event::{parse_eventmsgs, DmEvent, EventBody};
use dmapi::proto::{decode_frame, Message};
use dmapi::session::Caller;
use dmapi::types::{
    DmAttrName, DmHandle, DmMsgType, DmResponse, DmSessId, DmToken, EventSet, EventType, FsId, NodeId, DM_EV_WAIT,
};
use dmapi::{DmError, DmResult};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::daemon::{Node, NodeStatus};
use super::peercred::{peer_caller, peer_hung_up};

/// Largest message either way.
const MAX_MSG: usize = 16 << 20;

/// A call to the node daemon.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    CreateSession {
        oldsid: i32,
        info: Vec<u8>,
    },
    DestroySession {
        sid: i32,
    },
    QuerySession {
        sid: i32,
    },
    GetallSessions {
        nelem: u64,
    },
    GetEvents {
        sid: i32,
        maxmsgs: u32,
        flags: u32,
        buflen: u64,
    },
    RespondEvent {
        sid: i32,
        token: i32,
        response: i32,
        reterror: i32,
        data: Vec<u8>,
    },
    Pending {
        sid: i32,
        token: i32,
        delay_ms: u64,
    },
    MoveEvent {
        sid: i32,
        token: i32,
        target: i32,
    },
    FindEventmsg {
        sid: i32,
        token: i32,
        buflen: u64,
    },
    GetallTokens {
        sid: i32,
        nelem: u64,
    },
    CreateUserevent {
        sid: i32,
        data: Vec<u8>,
    },
    SendMsg {
        sid: i32,
        msgtype: i32,
        data: Vec<u8>,
    },
    SetDisp {
        sid: i32,
        handle: Vec<u8>,
        set: u64,
    },
    GetallDisp {
        sid: i32,
    },
    SetEventlist {
        sid: i32,
        handle: Vec<u8>,
        set: u64,
    },
    GetEventlist {
        sid: i32,
        handle: Vec<u8>,
    },
    SetReturnOnDestroy {
        sid: i32,
        handle: Vec<u8>,
        attr: [u8; 8],
        enable: bool,
    },
    /// The file system's entry point: generate the event in this `dmapi::proto`
    /// `Event` frame and wait for the outcome.
    Generate {
        frame: Vec<u8>,
        /// The per-file event list of the object the event is about.
        #[serde(default)]
        file_events: u64,
        /// A destroyed file's DM attributes: the destroy event carries the one
        /// `dm_set_return_on_destroy` named.
        #[serde(default)]
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Mount {
        fs: u64,
        mounted: bool,
    },
    Route {
        fs: u64,
        event: i32,
    },
    /// The [`dmapi::disp::GenerationView`] of a file system, for a mount to
    /// decide locally which events to ask for.
    DispView {
        fs: u64,
    },
    Status,
}

/// The daemon's answer.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Ok,
    Sid(i32),
    Token(i32),
    Bytes(Vec<u8>),
    Sids(Vec<i32>),
    Tokens(Vec<i32>),
    Disp(Vec<(Vec<u8>, u64)>),
    Set(u64),
    /// A generated event's outcome: the response (raw, with the abort errno) and how
    /// long the generating thread was blocked.
    Generated {
        response: i32,
        reterror: i32,
        blocked_ns: u64,
    },
    Route(Option<(u32, i32)>),
    DispView {
        seq: u64,
        disposed: u64,
        fs_list: u64,
    },
    Status(NodeStatus),
    /// The call failed with `errno`; `session_node` is set when the session lives
    /// on another node (B13).
    Err {
        errno: i32,
        msg: String,
        session_node: Option<u32>,
    },
}

/// Rebuilds a typed error from an errno that crossed a process boundary.
pub fn error_from_errno(errno: i32, msg: &str, session_node: Option<(DmSessId, NodeId)>) -> DmError {
    match session_node {
        Some((sid, node)) => DmError::NotSessionNode { sid, node },
        None => DmError::from_errno(errno, msg),
    }
}

fn err_reply(e: DmError) -> Reply {
    let session_node = match &e {
        DmError::NotSessionNode { node, .. } => Some(node.0),
        _ => None,
    };
    // E2BIG carries the needed length in its message so the client can rebuild it.
    let msg = match &e {
        DmError::TooBig { needed } => needed.to_string(),
        e => e.to_string(),
    };
    Reply::Err { errno: e.errno(), msg, session_node }
}

fn write_msg<T: Serialize>(w: &mut impl Write, v: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out)
}

fn read_msg<T: for<'a> Deserialize<'a>>(r: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MSG {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("message of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Where the node behind API socket `socket` publishes its disposition
/// install count (8 bytes, little-endian; odd while an install is under
/// way): a mount reads it instead of asking before every operation.
pub fn disp_seq_path(socket: &Path) -> PathBuf {
    socket.with_extension("disp")
}

/// Serves the local API of `node` on `path` until the process exits.
pub fn serve(node: Arc<Node>, path: &Path) -> std::io::Result<()> {
    // A stale socket from a killed daemon would make bind fail.
    let _ = std::fs::remove_file(path);
    node.publish_disp_seq(&disp_seq_path(path))?;
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    info!(path = %path.display(), "local API listening");
    thread::Builder::new().name("dm-api-accept".into()).spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let n = node.clone();
            let _ = thread::Builder::new().name("dm-api".into()).spawn(move || serve_conn(n, s));
        }
    })?;
    Ok(())
}

fn serve_conn(node: Arc<Node>, mut s: UnixStream) {
    let (caller, pid) = match peer_caller(&s) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "local API peer without credentials; refused");
            return;
        }
    };
    debug!(pid, uid = caller.uid, "local API client connected");
    loop {
        let req: Request = match read_msg(&mut s) {
            Ok(r) => r,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    warn!(pid, error = %e, "bad local API message; connection closed");
                }
                return;
            }
        };
        let watch = match &req {
            Request::GetEvents { sid, flags, .. } if flags & DM_EV_WAIT != 0 => watch_hangup(&s, &node, DmSessId(*sid)),
            _ => None,
        };
        let reply = dispatch(&node, &caller, req);
        if let Some(done) = watch {
            done.store(true, Ordering::Release);
        }
        if write_msg(&mut s, &reply).is_err() {
            return;
        }
    }
}

/// While a `dm_get_events` waits for `sid`, watches the client's socket: if the
/// client goes away (a killed DM application), the wait is interrupted, so that no
/// event is taken off the queue for a reader that no longer exists. Returns the
/// flag that tells the watcher the call ended normally.
fn watch_hangup(s: &UnixStream, node: &Arc<Node>, sid: DmSessId) -> Option<Arc<AtomicBool>> {
    let c = s.try_clone().ok()?;
    let done = Arc::new(AtomicBool::new(false));
    let (d, n) = (done.clone(), node.clone());
    thread::Builder::new()
        .name("dm-api-watch".into())
        .spawn(move || {
            while !d.load(Ordering::Acquire) {
                if peer_hung_up(&c, 100) {
                    info!(%sid, "DM application went away while waiting for events; wait interrupted");
                    let _ = n.dm.engine().interrupt(sid);
                    return;
                }
            }
        })
        .ok()?;
    Some(done)
}

fn handle_of(b: &[u8]) -> DmResult<DmHandle> {
    DmHandle::from_bytes(b)
}

fn dispatch(node: &Node, caller: &Caller, req: Request) -> Reply {
    let dm = &node.dm;
    // Generating events and mounting stand in for the file system, which runs with
    // the daemon's authority: only root or the DM admin group may ask for them.
    if matches!(req, Request::Generate { .. } | Request::Mount { .. }) {
        let admin = node.config().dm_admin_gid.is_some_and(|g| caller.gids.contains(&g));
        if caller.uid != 0 && !admin {
            return err_reply(DmError::Perm("generating events or mounting needs privilege"));
        }
    }
    let r: DmResult<Reply> = (|| {
        Ok(match req {
            Request::CreateSession { oldsid, info } => {
                Reply::Sid(dm.dm_create_session(caller, DmSessId(oldsid), &info)?.0)
            }
            Request::DestroySession { sid } => {
                dm.dm_destroy_session(DmSessId(sid))?;
                Reply::Ok
            }
            Request::QuerySession { sid } => Reply::Bytes(dm.dm_query_session(DmSessId(sid))?),
            Request::GetallSessions { nelem } => {
                Reply::Sids(dm.dm_getall_sessions(nelem as usize)?.into_iter().map(|s| s.0).collect())
            }
            Request::GetEvents { sid, maxmsgs, flags, buflen } => {
                Reply::Bytes(dm.dm_get_events(DmSessId(sid), maxmsgs, flags, buflen as usize)?)
            }
            Request::RespondEvent { sid, token, response, reterror, data } => {
                let r = DmResponse::from_raw(response, reterror)?;
                dm.dm_respond_event(DmSessId(sid), DmToken(token), r, &data)?;
                Reply::Ok
            }
            Request::Pending { sid, token, delay_ms } => {
                dm.dm_pending(DmSessId(sid), DmToken(token), Duration::from_millis(delay_ms))?;
                Reply::Ok
            }
            Request::MoveEvent { sid, token, target } => {
                Reply::Token(dm.dm_move_event(DmSessId(sid), DmToken(token), DmSessId(target))?.0)
            }
            Request::FindEventmsg { sid, token, buflen } => {
                Reply::Bytes(dm.dm_find_eventmsg(DmSessId(sid), DmToken(token), buflen as usize)?)
            }
            Request::GetallTokens { sid, nelem } => {
                Reply::Tokens(dm.dm_getall_tokens(DmSessId(sid), nelem as usize)?.into_iter().map(|t| t.0).collect())
            }
            Request::CreateUserevent { sid, data } => Reply::Token(dm.dm_create_userevent(DmSessId(sid), &data)?.0),
            Request::SendMsg { sid, msgtype, data } => {
                dm.dm_send_msg(DmSessId(sid), DmMsgType::from_raw(msgtype)?, &data)?;
                Reply::Ok
            }
            Request::SetDisp { sid, handle, set } => {
                dm.dm_set_disp(DmSessId(sid), &handle_of(&handle)?, EventSet(set))?;
                Reply::Ok
            }
            Request::GetallDisp { sid } => Reply::Disp(
                dm.dm_getall_disp(DmSessId(sid))?.into_iter().map(|(h, s)| (h.as_bytes().to_vec(), s.0)).collect(),
            ),
            Request::SetEventlist { sid, handle, set } => {
                dm.dm_set_eventlist(DmSessId(sid), &handle_of(&handle)?, EventSet(set))?;
                Reply::Ok
            }
            Request::GetEventlist { sid, handle } => {
                Reply::Set(dm.dm_get_eventlist(DmSessId(sid), &handle_of(&handle)?)?.0)
            }
            Request::SetReturnOnDestroy { sid, handle, attr, enable } => {
                dm.dm_set_return_on_destroy(
                    DmSessId(sid),
                    &handle_of(&handle)?,
                    DmAttrName { an_chars: attr },
                    enable,
                )?;
                Reply::Ok
            }
            Request::Generate { frame, file_events, attrs } => {
                let (f, _) = decode_frame(&frame).map_err(|_| DmError::Inval("generate: not an event frame"))?;
                let Message::Event { fs, mut event, .. } = f.msg else {
                    return Err(DmError::Inval("generate: not an event frame"));
                };
                if let EventBody::Destroy { attrname, attrcopy, .. } = &mut event.body {
                    if let Some(name) = node.table().return_on_destroy(fs) {
                        *attrname = name;
                        let n = &name.an_chars[..name.an_chars.iter().position(|&c| c == 0).unwrap_or(8)];
                        *attrcopy = attrs.into_iter().find(|(a, _)| a == n).map(|(_, v)| v).unwrap_or_default();
                    }
                }
                let t0 = Instant::now();
                let r = node.source.generate_with_filelist(fs, event, EventSet(file_events));
                let blocked_ns = t0.elapsed().as_nanos() as u64;
                let (response, reterror) = match r {
                    Ok(resp) => resp.to_raw(),
                    Err(DmError::Aborted(e)) => DmResponse::Abort(e).to_raw(),
                    Err(e) => return Err(e),
                };
                Reply::Generated { response, reterror, blocked_ns }
            }
            Request::DispView { fs } => {
                let (seq, v) = node.disp_view(FsId(fs));
                Reply::DispView { seq, disposed: v.disposed.0, fs_list: v.fs_list.0 }
            }
            Request::Mount { fs, mounted } => {
                node.mount(FsId(fs), mounted);
                Reply::Ok
            }
            Request::Route { fs, event } => {
                Reply::Route(node.route(FsId(fs), EventType::from_raw(event)?).map(|e| (e.node.0, e.sid.0)))
            }
            Request::Status => Reply::Status(node.status()),
        })
    })();
    r.unwrap_or_else(err_reply)
}

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
