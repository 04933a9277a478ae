//! The local DM channel: how DM applications, tools and a mount in a process of
//! its own reach their node daemon, like system calls into a kernel.
//!
//! A Unix-domain socket (the node's `api_socket`, mode 0666: anyone may connect,
//! and the daemon checks each call against the caller's kernel-supplied
//! credentials, `SO_PEERCRED`). Each message is a 4-byte little-endian length and
//! a JSON body ([`Request`] one way, [`Reply`] the other), one call at a time per
//! connection; a blocking call (`dm_get_events` with `DM_EV_WAIT`, a synchronous
//! event generated for a file system) blocks only its connection's thread on the
//! daemon. Event buffers travel as the XDSM `dm_eventmsg_t` chain, and generated
//! events as a `dmapi::proto` frame, so nothing is encoded twice.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use dmapi::types::{DmSessId, NodeId};
use dmapi::DmError;
use serde::{Deserialize, Serialize};

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

/// A snapshot of the node for tools and tests.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node.
    pub node: u32,
    /// Whether it is the session manager.
    pub session_manager: bool,
    /// File systems it manages.
    pub fs_managed: Vec<u64>,
    /// File systems it mounts.
    pub mounts: Vec<u64>,
    /// Version of its disposition table.
    pub disp_version: u64,
    /// Sessions it knows: (sid, node, info).
    pub sessions: Vec<(i32, u32, Vec<u8>)>,
    /// Peers it sees alive.
    pub peers_up: Vec<u32>,
    /// Peers its DM frames go to over RDMA (the rest: TCP).
    #[serde(default)]
    pub peers_rdma: Vec<u32>,
}

/// Rebuilds a typed error from an errno that crossed a process boundary.
pub fn error_from_errno(errno: i32, msg: &str, session_node: Option<(DmSessId, NodeId)>) -> DmError {
    match session_node {
        Some((sid, node)) => DmError::NotSessionNode { sid, node },
        None => DmError::from_errno(errno, msg),
    }
}

/// The [`Reply`] that carries `e` back to the caller.
pub fn err_reply(e: DmError) -> Reply {
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

/// Writes one framed message.
pub fn write_msg<T: Serialize>(w: &mut impl Write, v: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out)
}

/// Reads one framed message (at most 16 MiB).
pub fn read_msg<T: for<'a> Deserialize<'a>>(r: &mut impl Read) -> std::io::Result<T> {
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
