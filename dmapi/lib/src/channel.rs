//! The local DM channel: how DM applications, tools and a mount in a process of
//! its own reach their node daemon, like system calls into a kernel.
//!
//! A Unix-domain `SOCK_SEQPACKET` socket (the node's `api_socket`, mode 0666:
//! anyone may connect, and the daemon checks each call against the caller's
//! kernel-supplied credentials, `SO_PEERCRED`). A message ([`Request`] one way,
//! [`Reply`] the other) is its bincode encoding, binary, with byte strings as
//! they are: event buffers as the XDSM `dm_eventmsg_t` chain, handles as their
//! bytes, generated events as a `dmapi::proto` frame, so nothing is encoded
//! twice. A message goes in one or more records of at most [`RECORD`] bytes,
//! each opened by a [`RecordHeader`]. One call at a time per connection; a
//! blocking call (`dm_get_events` with `DM_EV_WAIT`, a synchronous event
//! generated for a file system) blocks only its connection's thread on the
//! daemon, which answers the moment the engine wakes it.
//!
//! Why `SOCK_SEQPACKET` and not a shared-memory ring: measured, see the
//! README's figures (`tidepool-dm-bench local`).

use std::io::IoSlice;
use std::path::Path;

use bincode::Options;
use dmapi::types::{DmHandle, DmSessId, DmStat, EventSet, NodeId};
use dmapi::{DmError, DmResult};
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::seqpacket::SeqPacket;

/// The largest record either side sends: a header and up to 64 KiB of
/// message, well inside a Unix socket's default send buffer (208 KiB).
pub const RECORD: usize = 64 << 10;

/// `RecordHeader::magic`: "DM" in ASCII.
pub const RECORD_MAGIC: u16 = 0x4d44;

/// `RecordHeader::flags`: more records of this message follow.
pub const REC_MORE: u16 = 1;

/// What opens each record of a message.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RecordHeader {
    /// [`RECORD_MAGIC`].
    pub magic: u16,
    /// [`REC_MORE`] on every record but a message's last.
    pub flags: u16,
    /// The whole message's length (the same in each of its records).
    pub total_len: u32,
}
const _: () = assert!(std::mem::size_of::<RecordHeader>() == 8);

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
        token: i32,
        handle: Vec<u8>,
        set: u64,
    },
    GetallDisp {
        sid: i32,
    },
    SetEventlist {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        set: u64,
    },
    GetEventlist {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    SetReturnOnDestroy {
        sid: i32,
        token: i32,
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
    /// Tell the file system's manager that `fs` is mounted on the node (or no
    /// longer), as a mount does: the test driver plays a file system with it.
    Mount {
        fs: u64,
        mounted: bool,
    },
    Route {
        fs: u64,
        event: i32,
    },
    Status,
    /// Mount file system `fs` (of the node's configuration) through FUSE at
    /// `path`, hosted by the daemon; answers once mounted.
    FuseMount {
        fs: u64,
        path: String,
    },
    /// Unmount the daemon's FUSE mount at `path` (a DM application may refuse
    /// it in the preunmount event).
    FuseUnmount {
        path: String,
    },
    // ---- file functions: run in the daemon on its own connection to the
    // volume and the manager, with the session and token they name.
    /// `dm_path_to_handle` / `dm_fd_to_handle` (`fs`: `dm_path_to_fshandle`):
    /// the caller resolved the path or descriptor to its `st_dev` and
    /// `st_ino`, so it is looked up in the caller's view of the file tree.
    HandleOf {
        dev: u64,
        ino: u64,
        fs: bool,
    },
    GetFileattr {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    SetFileattr {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        mask: u32,
        stat: WireStat,
    },
    /// `dm_get_bulkattr` (`attr` empty) and `dm_get_bulkall`.
    Bulk {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        attr: Vec<u8>,
        cookie: u64,
        max: u32,
    },
    /// `dm_init_attrloc`: the session, token and handle checked; the
    /// start of a scan ([`Reply::Count`], always 0: cookies count from it).
    InitAttrloc {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    GetDirattrs {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        cookie: u64,
        max: u32,
    },
    ReadInvis {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        off: u64,
        len: u64,
    },
    WriteInvis {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        off: u64,
        data: Vec<u8>,
        sync: bool,
    },
    SyncByHandle {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    ProbeHole {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        off: u64,
        len: u64,
    },
    PunchHole {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        off: u64,
        len: u64,
    },
    GetAllocinfo {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    SetRegion {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        regions: Vec<(u64, u64, u32)>,
    },
    GetRegion {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    SetDmattr {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    GetDmattr {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        name: Vec<u8>,
    },
    RemoveDmattr {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        name: Vec<u8>,
    },
    GetallDmattr {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    /// `dm_request_right` (`right`: 1 shared, 2 exclusive), and with
    /// `op` the other right calls.
    Right {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        op: RightOp,
    },
    /// The DM limits of the file system `handle` is on (`dm_get_config`).
    FsLimits {
        handle: Vec<u8>,
    },
    /// `dm_obj_ref_hold`, `dm_obj_ref_rele`, `dm_obj_ref_query`.
    ObjRef {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        op: ObjRefOp,
    },
    /// `dm_set_inherit` (`mode` `Some`) and `dm_clear_inherit` (`None`).
    Inherit {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
        name: Vec<u8>,
        mode: Option<u32>,
    },
    /// `dm_getall_inherit` ([`Reply::Inherit`]).
    GetallInherit {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    /// `dm_create_by_handle`, `dm_mkdir_by_handle`, `dm_symlink_by_handle`.
    ByHandle {
        sid: i32,
        token: i32,
        dir: Vec<u8>,
        handle: Vec<u8>,
        name: Vec<u8>,
        what: ByHandle,
    },
    /// `dm_handle_to_path`: the path on this node's mount ([`Reply::Bytes`]).
    HandleToPath {
        dir: Vec<u8>,
        target: Vec<u8>,
    },
    /// `dm_get_mountinfo`: the `dm_mount_event_t` of this node's mount of
    /// the file system, with its variable data ([`Reply::Bytes`]).
    GetMountinfo {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    /// `dm_get_dioinfo` ([`Reply::Dioinfo`]).
    GetDioinfo {
        sid: i32,
        token: i32,
        handle: Vec<u8>,
    },
    /// Where this node mounts file system `fs` ([`Reply::Bytes`]), for
    /// `dm_open_by_handle`.
    MountPath {
        fs: u64,
    },
}

/// What a [`Request::ByHandle`] makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ByHandle {
    File,
    Dir,
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
}

/// `dm_dioinfo_t`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DioInfo {
    pub mem: u32,
    pub miniosz: u32,
    pub maxiosz: u32,
    pub dio_only: bool,
}

/// Which object-reference call a [`Request::ObjRef`] is.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub enum ObjRefOp {
    Hold,
    Rele,
    /// Answered with [`Reply::Flag`].
    Query,
}

/// Which right call a [`Request::Right`] is.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum RightOp {
    /// `wait`: `DM_RR_WAIT`.
    Request {
        right: u32,
        wait: bool,
    },
    Release,
    Query,
    Upgrade,
    Downgrade,
}

/// `dm_stat_t` on the channel, the handle as its bytes.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireStat {
    pub handle: Vec<u8>,
    pub compname: Vec<u8>,
    pub emask: u64,
    pub pmanreg: bool,
    pub dtime: i64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub blksize: u32,
    pub blocks: u64,
    pub change: u32,
}

impl From<&DmStat> for WireStat {
    fn from(s: &DmStat) -> WireStat {
        WireStat {
            handle: s.handle.map(|h| h.as_bytes().to_vec()).unwrap_or_default(),
            compname: s.compname.clone(),
            emask: s.emask.0,
            pmanreg: s.pmanreg,
            dtime: s.dtime,
            ino: s.ino,
            mode: s.mode,
            nlink: s.nlink,
            uid: s.uid,
            gid: s.gid,
            size: s.size,
            atime: s.atime,
            mtime: s.mtime,
            ctime: s.ctime,
            blksize: s.blksize,
            blocks: s.blocks,
            change: s.change,
        }
    }
}

impl WireStat {
    /// Back to a `dm_stat_t` (a handle that is not one: `EINVAL`).
    pub fn to_stat(&self) -> DmResult<DmStat> {
        let handle = if self.handle.is_empty() { None } else { Some(DmHandle::from_bytes(&self.handle)?) };
        Ok(DmStat {
            handle,
            compname: self.compname.clone(),
            emask: EventSet(self.emask),
            pmanreg: self.pmanreg,
            dtime: self.dtime,
            ino: self.ino,
            mode: self.mode,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            blksize: self.blksize,
            blocks: self.blocks,
            change: self.change,
        })
    }
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
    Status(NodeStatus),
    Count(u64),
    Range(u64, u64),
    Flag(bool),
    Stat(WireStat),
    /// Scan results (each with the DM attribute asked for) and the next cookie.
    Stats {
        stats: Vec<(WireStat, Option<Vec<u8>>)>,
        next: u64,
    },
    /// `dm_get_allocinfo`: (offset, length, `dm_extenttype_t`).
    Extents(Vec<(u64, u64, u32)>),
    Regions(Vec<(u64, u64, u32)>),
    Attrs(Vec<(Vec<u8>, Vec<u8>)>),
    /// The call failed with `errno`; `session_node` is set when the session lives
    /// on another node (B13).
    Err {
        errno: i32,
        msg: String,
        session_node: Option<u32>,
    },
    Limits(FsLimits),
    /// `dm_getall_inherit`: (attribute name, file type).
    Inherit(Vec<(Vec<u8>, u32)>),
    Dioinfo(DioInfo),
}

/// What a file system's on-disk format allows a DM application (a file's
/// regions, DM attributes and extended attributes share one block).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FsLimits {
    /// The largest value one DM attribute can have (`DM_CONFIG_MAX_ATTRIBUTE_SIZE`).
    pub max_attribute_size: u64,
    /// Bytes for all of a file's DM attributes (`DM_CONFIG_TOTAL_ATTRIBUTE_SPACE`).
    pub total_attribute_space: u64,
    /// Most managed regions a file can have (`DM_CONFIG_MAX_MANAGED_REGIONS`).
    pub max_managed_regions: u64,
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
    /// The FUSE mounts it hosts.
    #[serde(default)]
    pub fuse: Vec<FuseMountStatus>,
    /// File systems whose metadata it serves.
    #[serde(default)]
    pub meta_served: Vec<u64>,
}

/// One FUSE mount a node daemon hosts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FuseMountStatus {
    /// The file system.
    pub fs: u64,
    /// The mount point.
    pub path: String,
    /// `mounting`, `mounted`, or `failed: <why>`.
    pub state: String,
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

fn codec() -> impl bincode::Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().with_limit(MAX_MSG as u64)
}

fn bad(m: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m)
}

/// One message's bytes (at most 16 MiB).
pub fn encode<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    codec().serialize(v).map_err(|e| bad(format!("a message too large to send: {e}")))
}

/// One end of a local DM channel connection: the socket and a receive
/// buffer kept for its life, so that a message costs no allocation of a
/// record's size.
pub struct Channel {
    sock: SeqPacket,
    rec: Vec<u8>,
}

impl Channel {
    /// Over a connected socket.
    pub fn new(sock: SeqPacket) -> Channel {
        Channel { sock, rec: vec![0u8; RECORD] }
    }

    /// Connects to the daemon listening at `path`.
    pub fn connect(path: &Path) -> std::io::Result<Channel> {
        Ok(Channel::new(SeqPacket::connect(path)?))
    }

    /// The socket (credentials, hang-up watches).
    pub fn socket(&self) -> &SeqPacket {
        &self.sock
    }

    /// Sends one message.
    pub fn send<T: Serialize>(&self, v: &T) -> std::io::Result<()> {
        let body = encode(v)?;
        let per = RECORD - std::mem::size_of::<RecordHeader>();
        let n = body.len().div_ceil(per).max(1);
        for i in 0..n {
            let chunk = &body[(i * per).min(body.len())..((i + 1) * per).min(body.len())];
            let h = RecordHeader {
                magic: RECORD_MAGIC,
                flags: if i + 1 < n { REC_MORE } else { 0 },
                total_len: body.len() as u32,
            };
            self.sock.send_parts(&[IoSlice::new(h.as_bytes()), IoSlice::new(chunk)])?;
        }
        Ok(())
    }

    /// Receives one message (at most 16 MiB); `UnexpectedEof` when the peer
    /// closed between messages.
    pub fn recv<T: for<'a> Deserialize<'a>>(&mut self) -> std::io::Result<T> {
        let mut body: Vec<u8> = Vec::new();
        let mut total = None;
        loop {
            let n = self.sock.recv(&mut self.rec)?;
            if n == 0 {
                return Err(match total {
                    None => std::io::ErrorKind::UnexpectedEof.into(),
                    Some(_) => bad("the peer closed in the middle of a message".into()),
                });
            }
            let (h, rest) =
                RecordHeader::read_from_prefix(&self.rec[..n]).map_err(|_| bad(format!("a record of {n} bytes")))?;
            if h.magic != RECORD_MAGIC {
                return Err(bad(format!("a record with magic {:#06x}", h.magic)));
            }
            let t = h.total_len as usize;
            match total {
                None if t > MAX_MSG => return Err(bad(format!("a message of {t} bytes"))),
                // The common case, a message in one record: decoded in place.
                None if h.flags & REC_MORE == 0 => {
                    if rest.len() != t {
                        return Err(bad("a record whose length disagrees with its header".into()));
                    }
                    return decode(rest);
                }
                None => {
                    body.reserve_exact(t);
                    total = Some(t);
                }
                Some(was) if was != t => return Err(bad("records of one message disagree on its length".into())),
                Some(_) => {}
            }
            if body.len() + rest.len() > t {
                return Err(bad("a message longer than its header says".into()));
            }
            body.extend_from_slice(rest);
            if h.flags & REC_MORE == 0 {
                if body.len() != t {
                    return Err(bad("a message shorter than its header says".into()));
                }
                return decode(&body);
            }
        }
    }
}

/// Decodes one message's bytes (what [`Channel::recv`] does once the
/// records are put together; the fuzz target drives it directly).
pub fn decode<T: for<'a> Deserialize<'a>>(body: &[u8]) -> std::io::Result<T> {
    codec().deserialize(body).map_err(|e| bad(format!("undecodable message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_any_size_cross_in_records() {
        let (a, b) = SeqPacket::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a), Channel::new(b));
        for len in [0usize, 10, RECORD - 30, RECORD, 3 * RECORD + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            // The writer in a thread: a message of several records exceeds
            // what the socket buffers before the reader reads.
            let writer = std::thread::spawn(move || {
                a.send(&Reply::Bytes(data)).unwrap();
                a
            });
            match b.recv::<Reply>().unwrap() {
                Reply::Bytes(got) => {
                    assert_eq!(got.len(), len);
                    assert!(got.iter().enumerate().all(|(i, x)| *x == (i * 7) as u8));
                }
                r => panic!("{r:?}"),
            }
            a = writer.join().unwrap();
        }
    }

    fn raw(h: RecordHeader, body: &[u8]) -> (SeqPacket, Channel) {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send_parts(&[IoSlice::new(h.as_bytes()), IoSlice::new(body)]).unwrap();
        (a, Channel::new(b))
    }

    #[test]
    fn malformed_records_are_refused_with_a_reason() {
        let ok = RecordHeader { magic: RECORD_MAGIC, flags: 0, total_len: 4 };
        let (_a, mut c) = raw(RecordHeader { magic: 0x1234, ..ok }, b"abcd");
        assert!(c.recv::<Request>().unwrap_err().to_string().contains("magic"));
        let (_a, mut c) = raw(RecordHeader { total_len: (MAX_MSG + 1) as u32, ..ok }, b"abcd");
        assert!(c.recv::<Request>().unwrap_err().to_string().contains("bytes"));
        let (_a, mut c) = raw(RecordHeader { total_len: 9, ..ok }, b"abcd");
        assert!(c.recv::<Request>().unwrap_err().to_string().contains("disagrees"));
        let (_a, mut c) = raw(ok, &[0xff; 4]);
        assert!(c.recv::<Request>().unwrap_err().to_string().contains("undecodable"));
        // The first record of two, then the peer is gone.
        let (a, mut c) = raw(RecordHeader { flags: REC_MORE, total_len: 100, ..ok }, b"abcd");
        drop(a);
        assert!(c.recv::<Request>().unwrap_err().to_string().contains("middle"));
        // A short record, shorter than a header.
        let (a, b) = SeqPacket::pair().unwrap();
        a.send_parts(&[IoSlice::new(b"DM")]).unwrap();
        assert!(Channel::new(b).recv::<Request>().is_err());
    }
}
