//! XDSM (X/Open C429) types with the names and values of SGI's `dmapi.h`.
//!
//! Every type here is `#[repr(C)]` or `#[repr(transparent)]` over the C type so that
//! the later C ABI can hand them out unchanged.
//!
//! ```
//! use dmapi::types::{DmHandle, EventSet, EventType, FsId};
//! let fh = DmHandle::file(FsId(7), 42, 1);
//! assert_eq!(fh.to_fshandle().unwrap(), DmHandle::fs(FsId(7)));
//! let mut set = EventSet::EMPTY;
//! set.insert(EventType::Read);
//! assert!(set.contains(EventType::Read) && !set.contains(EventType::Write));
//! ```

use std::cmp::Ordering;
use std::fmt;

use crate::error::{DmError, DmResult};

/// `dm_sessid_t`: a session id, unique in the cluster.
///
/// Sessions are numbered by the node that creates them: bits 20..31 carry the
/// creating node's id, bits 0..19 a counter, so any node can tell from the id alone
/// where a session lives (needed for B13 and for routing `dm_send_msg`).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DmSessId(pub i32);

/// `DM_NO_SESSION`.
pub const DM_NO_SESSION: DmSessId = DmSessId(0);
/// Largest node id that can be encoded in a session id.
pub const MAX_SESSION_NODE: u32 = 0x7ff;
const SID_COUNTER_BITS: u32 = 20;

impl DmSessId {
    /// Builds the id of the `counter`-th session created on `node`.
    pub fn compose(node: NodeId, counter: u32) -> DmResult<DmSessId> {
        if node.0 == 0 || node.0 > MAX_SESSION_NODE {
            return Err(DmError::Inval("node id does not fit in a session id"));
        }
        if counter == 0 || counter >= 1 << SID_COUNTER_BITS {
            return Err(DmError::NoMem("session id space of this node exhausted"));
        }
        Ok(DmSessId(((node.0 << SID_COUNTER_BITS) | counter) as i32))
    }

    /// The node that created (and owns) this session, if the id is well formed.
    pub fn node(self) -> Option<NodeId> {
        if self.0 <= 0 {
            return None;
        }
        let n = (self.0 as u32) >> SID_COUNTER_BITS;
        (n != 0).then_some(NodeId(n))
    }
}

impl fmt::Display for DmSessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `dm_token_t`: names one event in a session.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DmToken(pub i32);

/// `DM_NO_TOKEN`: the caller holds no token.
pub const DM_NO_TOKEN: DmToken = DmToken(-1);
/// `DM_INVALID_TOKEN`: carried by asynchronous event messages.
pub const DM_INVALID_TOKEN: DmToken = DmToken(0);

impl fmt::Display for DmToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `dm_sequence_t`: per-session event sequence number shown to the DM application.
pub type DmSequence = u32;

/// A cluster node's unique id (B12). 0 is never a valid node.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `dm_fsid_t`: a file system's id, persistent in its superblock.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FsId(pub u64);

impl fmt::Display for FsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// `dm_ino_t`.
pub type DmIno = u64;
/// `dm_igen_t`.
pub type DmIgen = u32;

/// `DM_SESSION_INFO_LEN`: longest session info string, in bytes.
pub const DM_SESSION_INFO_LEN: usize = 256;
/// `DM_ATTR_NAME_SIZE`.
pub const DM_ATTR_NAME_SIZE: usize = 8;
/// `DM_EV_WAIT`: `dm_get_events` blocks until an event arrives.
pub const DM_EV_WAIT: u32 = 0x1;
/// `DM_RR_WAIT`: `dm_request_right` waits for the right.
pub const DM_RR_WAIT: u32 = 0x1;

/// `DM_AT_*`: which fields `dm_get_fileattr`, `dm_set_fileattr`,
/// `dm_get_dirattrs` and `dm_get_bulkattr` deal with (SGI's values, which C
/// programs compiled against `dmapi.h` pass).
#[allow(missing_docs)]
pub mod dm_at {
    pub const MODE: u32 = 0x0001;
    pub const UID: u32 = 0x0002;
    pub const GID: u32 = 0x0004;
    pub const ATIME: u32 = 0x0008;
    pub const MTIME: u32 = 0x0010;
    pub const CTIME: u32 = 0x0020;
    pub const SIZE: u32 = 0x0040;
    pub const DTIME: u32 = 0x0080;
    pub const HANDLE: u32 = 0x0100;
    pub const EMASK: u32 = 0x0200;
    pub const PMANR: u32 = 0x0400;
    pub const PATTR: u32 = 0x0800;
    pub const STAT: u32 = 0x1000;
    pub const CFLAG: u32 = 0x2000;
    /// Every mask bit XDSM defines.
    pub const ALL: u32 = 0x3fff;
}

/// `dm_stat_t`: a file's attributes as DMAPI reports them (times in
/// seconds since the epoch, as XDSM's `time_t` fields).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DmStat {
    /// `dt_handle`.
    pub handle: Option<DmHandle>,
    /// `dt_compname`: the entry's name (`dm_get_dirattrs` only).
    pub compname: Vec<u8>,
    /// `dt_emask`: the file's own event list.
    pub emask: EventSet,
    /// `dt_pmanreg`: whether the file has managed regions.
    pub pmanreg: bool,
    /// `dt_dtime`: when the DM attributes last changed (Tidepool: the ctime).
    pub dtime: i64,
    /// `dt_ino`.
    pub ino: u64,
    /// `dt_mode`: type and permission bits.
    pub mode: u32,
    /// `dt_nlink`.
    pub nlink: u32,
    /// `dt_uid`.
    pub uid: u32,
    /// `dt_gid`.
    pub gid: u32,
    /// `dt_size` in bytes.
    pub size: u64,
    /// `dt_atime`.
    pub atime: i64,
    /// `dt_mtime`.
    pub mtime: i64,
    /// `dt_ctime`.
    pub ctime: i64,
    /// `dt_blksize`.
    pub blksize: u32,
    /// `dt_blocks`: 512-byte blocks.
    pub blocks: u64,
    /// `dt_change` (`DM_AT_CFLAG`): differs whenever the file's data,
    /// size or attributes changed (Tidepool: its times to the nanosecond
    /// and size, folded), so a DM application can tell a file it copied
    /// was not written meanwhile.
    pub change: u32,
}
/// `dm_region_t`: a managed region of a file. Accesses that touch it raise
/// the data events its flags name; `size` 0 reaches to the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmRegion {
    /// `rg_offset`.
    pub offset: u64,
    /// `rg_size`.
    pub size: u64,
    /// `rg_flags`: [`dm_region`] bits.
    pub flags: u32,
}

/// `dm_region_t.rg_flags`, as in SGI's `dmapi.h`.
pub mod dm_region {
    /// `DM_REGION_NOEVENT`.
    pub const NOEVENT: u32 = 0x0;
    /// `DM_REGION_READ`.
    pub const READ: u32 = 0x1;
    /// `DM_REGION_WRITE`.
    pub const WRITE: u32 = 0x2;
    /// `DM_REGION_TRUNCATE`.
    pub const TRUNCATE: u32 = 0x4;
}

/// `dm_extenttype_t`: what `dm_get_allocinfo` reports of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentType {
    /// `DM_EXTENT_RES`: blocks on the volume.
    Res = 1,
    /// `DM_EXTENT_HOLE`: nothing stored; reads as zeroes.
    Hole = 2,
}

impl ExtentType {
    /// From the `dm_extenttype_t` value.
    pub fn from_raw(v: u32) -> DmResult<ExtentType> {
        match v {
            1 => Ok(ExtentType::Res),
            2 => Ok(ExtentType::Hole),
            _ => Err(DmError::Inval("not a dm_extenttype_t")),
        }
    }
}

/// `DM_MOUNT_RDONLY`: `me_mode` flag of a mount event.
pub const DM_MOUNT_RDONLY: u32 = 0x1;
/// `DM_UNMOUNT_FORCE`: `ne_mode` flag of preunmount/unmount events.
pub const DM_UNMOUNT_FORCE: u32 = 0x1;
/// Largest handle this implementation makes (`DM_CONFIG_MAX_HANDLE_SIZE`).
pub const DM_MAX_HANDLE_SIZE: usize = 24;
/// Largest user message / response data (`DM_CONFIG_MAX_MESSAGE_DATA`).
pub const DM_MAX_MESSAGE_DATA: usize = 65536;
/// Largest name carried in a namespace or mount event (PATH_MAX).
pub const DM_MAX_NAME_LEN: usize = 4096;
/// Largest copy of a DM attribute in a destroy event (`DM_CONFIG_MAX_ATTR_ON_DESTROY`).
pub const DM_MAX_ATTR_ON_DESTROY: usize = 1024;

/// `dm_attrname_t`: a DM attribute name, 8 bytes, NUL padded.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct DmAttrName {
    /// `an_chars`.
    pub an_chars: [u8; DM_ATTR_NAME_SIZE],
}

impl DmAttrName {
    /// Makes a name from up to 8 bytes; longer names are `EINVAL`.
    pub fn new(name: &[u8]) -> DmResult<Self> {
        if name.len() > DM_ATTR_NAME_SIZE {
            return Err(DmError::Inval("DM attribute name longer than 8 bytes"));
        }
        let mut an_chars = [0u8; DM_ATTR_NAME_SIZE];
        an_chars[..name.len()].copy_from_slice(name);
        Ok(DmAttrName { an_chars })
    }
}

/// `dm_eventtype_t`, numbered as SGI's `dmapi.h`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `DM_EVENT_CANCEL`
    Cancel = 0,
    /// `DM_EVENT_MOUNT`
    Mount = 1,
    /// `DM_EVENT_PREUNMOUNT`
    Preunmount = 2,
    /// `DM_EVENT_UNMOUNT`
    Unmount = 3,
    /// `DM_EVENT_DEBUT`
    Debut = 4,
    /// `DM_EVENT_CREATE`
    Create = 5,
    /// `DM_EVENT_CLOSE`
    Close = 6,
    /// `DM_EVENT_POSTCREATE`
    Postcreate = 7,
    /// `DM_EVENT_REMOVE`
    Remove = 8,
    /// `DM_EVENT_POSTREMOVE`
    Postremove = 9,
    /// `DM_EVENT_RENAME`
    Rename = 10,
    /// `DM_EVENT_POSTRENAME`
    Postrename = 11,
    /// `DM_EVENT_LINK`
    Link = 12,
    /// `DM_EVENT_POSTLINK`
    Postlink = 13,
    /// `DM_EVENT_SYMLINK`
    Symlink = 14,
    /// `DM_EVENT_POSTSYMLINK`
    Postsymlink = 15,
    /// `DM_EVENT_READ`
    Read = 16,
    /// `DM_EVENT_WRITE`
    Write = 17,
    /// `DM_EVENT_TRUNCATE`
    Truncate = 18,
    /// `DM_EVENT_ATTRIBUTE`
    Attribute = 19,
    /// `DM_EVENT_DESTROY`
    Destroy = 20,
    /// `DM_EVENT_NOSPACE`
    Nospace = 21,
    /// `DM_EVENT_USER`
    User = 22,
}

/// `DM_EVENT_MAX`: one past the largest event type.
pub const DM_EVENT_MAX: u32 = 23;

/// How an event's message body is laid out (which `dm_*_event_t` follows the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// `dm_data_event_t`: read, write, truncate.
    Data,
    /// `dm_namesp_event_t`: create/remove/rename/link/symlink and their post events,
    /// preunmount, unmount, nospace, attribute, close, debut.
    Namespace,
    /// `dm_mount_event_t`.
    Mount,
    /// `dm_destroy_event_t`.
    Destroy,
    /// `dm_cancel_event_t`.
    Cancel,
    /// Opaque user data straight in `ev_data`.
    User,
}

impl EventType {
    /// All event types, in numeric order.
    pub const ALL: [EventType; DM_EVENT_MAX as usize] = [
        EventType::Cancel,
        EventType::Mount,
        EventType::Preunmount,
        EventType::Unmount,
        EventType::Debut,
        EventType::Create,
        EventType::Close,
        EventType::Postcreate,
        EventType::Remove,
        EventType::Postremove,
        EventType::Rename,
        EventType::Postrename,
        EventType::Link,
        EventType::Postlink,
        EventType::Symlink,
        EventType::Postsymlink,
        EventType::Read,
        EventType::Write,
        EventType::Truncate,
        EventType::Attribute,
        EventType::Destroy,
        EventType::Nospace,
        EventType::User,
    ];

    /// The C value.
    pub fn raw(self) -> i32 {
        self as i32
    }

    /// Parses a C value; anything outside 0..DM_EVENT_MAX is `EINVAL`.
    pub fn from_raw(v: i32) -> DmResult<EventType> {
        usize::try_from(v).ok().and_then(|i| EventType::ALL.get(i).copied()).ok_or(DmError::Inval("unknown event type"))
    }

    /// Whether XDSM makes the operation wait for a response to this event.
    /// User events are synchronous or not by the `dm_send_msg` message type.
    pub fn is_synchronous(self) -> bool {
        matches!(
            self,
            EventType::Mount
                | EventType::Preunmount
                | EventType::Nospace
                | EventType::Create
                | EventType::Remove
                | EventType::Rename
                | EventType::Link
                | EventType::Symlink
                | EventType::Read
                | EventType::Write
                | EventType::Truncate
                | EventType::Debut
        )
    }

    /// The layout of this event's message body.
    pub fn class(self) -> EventClass {
        match self {
            EventType::Read | EventType::Write | EventType::Truncate => EventClass::Data,
            EventType::Mount => EventClass::Mount,
            EventType::Destroy => EventClass::Destroy,
            EventType::Cancel => EventClass::Cancel,
            EventType::User => EventClass::User,
            _ => EventClass::Namespace,
        }
    }
}

/// `dm_eventset_t`: a bit per event type (`DMEV_SET` uses `1 << type`).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventSet(pub u64);

impl EventSet {
    /// No events.
    pub const EMPTY: EventSet = EventSet(0);
    /// Every defined event type.
    pub const ALL: EventSet = EventSet((1 << DM_EVENT_MAX) - 1);

    /// `DMEV_SET`.
    pub fn insert(&mut self, t: EventType) {
        self.0 |= 1 << t.raw();
    }
    /// `DMEV_CLR`.
    pub fn remove(&mut self, t: EventType) {
        self.0 &= !(1 << t.raw());
    }
    /// `DMEV_ISSET`.
    pub fn contains(self, t: EventType) -> bool {
        self.0 & (1 << t.raw()) != 0
    }
    /// Whether no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Keeps only the first `maxevent` types, as `dm_set_disp(..., maxevent)` does;
    /// `maxevent` above `DM_EVENT_MAX` is `EINVAL`.
    pub fn truncated(self, maxevent: u32) -> DmResult<EventSet> {
        if maxevent > DM_EVENT_MAX {
            return Err(DmError::Inval("maxevent above DM_EVENT_MAX"));
        }
        Ok(EventSet(self.0 & ((1u64 << maxevent) - 1)))
    }
    /// The event types in the set, in numeric order.
    pub fn iter(self) -> impl Iterator<Item = EventType> {
        EventType::ALL.into_iter().filter(move |t| self.contains(*t))
    }
}

impl FromIterator<EventType> for EventSet {
    fn from_iter<I: IntoIterator<Item = EventType>>(it: I) -> Self {
        let mut s = EventSet::EMPTY;
        for t in it {
            s.insert(t);
        }
        s
    }
}

/// `dm_response_t` values.
pub const DM_RESP_INVALID: i32 = 0;
/// `DM_RESP_CONTINUE`.
pub const DM_RESP_CONTINUE: i32 = 1;
/// `DM_RESP_ABORT`.
pub const DM_RESP_ABORT: i32 = 2;
/// `DM_RESP_DONTCARE`.
pub const DM_RESP_DONTCARE: i32 = 3;

/// A response to a synchronous event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmResponse {
    /// `DM_RESP_CONTINUE`: let the operation proceed.
    Continue,
    /// `DM_RESP_ABORT` with the errno the operation must fail with (> 0).
    Abort(i32),
    /// `DM_RESP_DONTCARE`: this session does not care; the operation proceeds.
    DontCare,
}

impl DmResponse {
    /// Parses `dm_respond_event`'s (response, reterror): an unknown response, or ABORT
    /// without a positive errno, is `EINVAL`.
    pub fn from_raw(response: i32, reterror: i32) -> DmResult<DmResponse> {
        match response {
            DM_RESP_CONTINUE => Ok(DmResponse::Continue),
            DM_RESP_DONTCARE => Ok(DmResponse::DontCare),
            DM_RESP_ABORT if reterror > 0 => Ok(DmResponse::Abort(reterror)),
            DM_RESP_ABORT => Err(DmError::Inval("DM_RESP_ABORT needs a positive reterror")),
            _ => Err(DmError::Inval("unknown response")),
        }
    }
    /// The C (response, reterror) pair.
    pub fn to_raw(self) -> (i32, i32) {
        match self {
            DmResponse::Continue => (DM_RESP_CONTINUE, 0),
            DmResponse::Abort(e) => (DM_RESP_ABORT, e),
            DmResponse::DontCare => (DM_RESP_DONTCARE, 0),
        }
    }
}

/// `dm_right_t`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DmRight {
    /// `DM_RIGHT_NULL`
    Null = 0,
    /// `DM_RIGHT_SHARED`
    Shared = 1,
    /// `DM_RIGHT_EXCL`
    Excl = 2,
}

impl DmRight {
    /// Parses a C value.
    pub fn from_raw(v: i32) -> DmResult<DmRight> {
        match v {
            0 => Ok(DmRight::Null),
            1 => Ok(DmRight::Shared),
            2 => Ok(DmRight::Excl),
            _ => Err(DmError::Inval("unknown right")),
        }
    }
}

/// `dm_msgtype_t` (for `dm_send_msg`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmMsgType {
    /// `DM_MSGTYPE_SYNC`: the sender waits for the response.
    Sync = 1,
    /// `DM_MSGTYPE_ASYNC`: fire and forget.
    Async = 2,
}

impl DmMsgType {
    /// Parses a C value.
    pub fn from_raw(v: i32) -> DmResult<DmMsgType> {
        match v {
            1 => Ok(DmMsgType::Sync),
            2 => Ok(DmMsgType::Async),
            _ => Err(DmError::Inval("unknown message type")),
        }
    }
}

/// `dm_config_t`, numbered as SGI's `dmapi.h`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum DmConfig {
    Bulkall = 1,
    CreateByHandle = 2,
    DtimeOverload = 3,
    Legacy = 4,
    LockUpgrade = 5,
    MaxAttrOnDestroy = 6,
    MaxAttributeSize = 7,
    MaxHandleSize = 8,
    MaxManagedRegions = 9,
    MaxMessageData = 10,
    ObjRef = 11,
    Pending = 12,
    PersAttributes = 13,
    PersEvents = 14,
    PersInheritAttribs = 15,
    PersManagedRegions = 16,
    PunchHole = 17,
    TotalAttributeSpace = 18,
    WillRetry = 19,
}

/// `DM_CONFIG_MAX`: one past the largest `dm_config_t`.
pub const DM_CONFIG_MAX: i32 = 20;

impl DmConfig {
    /// Parses a C value; `DM_CONFIG_INVALID` and out-of-range values are `EINVAL`.
    pub fn from_raw(v: i32) -> DmResult<DmConfig> {
        use DmConfig::*;
        const ALL: [DmConfig; 19] = [
            Bulkall,
            CreateByHandle,
            DtimeOverload,
            Legacy,
            LockUpgrade,
            MaxAttrOnDestroy,
            MaxAttributeSize,
            MaxHandleSize,
            MaxManagedRegions,
            MaxMessageData,
            ObjRef,
            Pending,
            PersAttributes,
            PersEvents,
            PersInheritAttribs,
            PersManagedRegions,
            PunchHole,
            TotalAttributeSpace,
            WillRetry,
        ];
        usize::try_from(v - 1).ok().and_then(|i| ALL.get(i).copied()).ok_or(DmError::Inval("unknown dm_config_t"))
    }
}

/// Handle layout version written in byte 0 of every handle.
const HANDLE_VERSION: u8 = 1;
const KIND_GLOBAL: u8 = 0;
const KIND_FS: u8 = 1;
const KIND_FILE: u8 = 2;
/// Length of a file-system handle.
pub const DM_FSHANDLE_LEN: usize = 16;
/// Length of a file handle.
pub const DM_FILEHANDLE_LEN: usize = 24;

/// What a handle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleKind {
    /// `DM_GLOBAL_HANP`: the global handle (mount dispositions).
    Global,
    /// A file system.
    Fs,
    /// A file or directory.
    File,
}

/// An XDSM handle: opaque bytes, stable across nodes and restarts because they are
/// built only from persistent values (fsid, inode number, generation).
///
/// Layout, little-endian: `[0]` version (1), `[1]` kind (1 fs, 2 file), `[2..4]` zero,
/// `[4..8]` generation (file only), `[8..16]` fsid, `[16..24]` inode (file only).
/// A file-system handle is the first 16 bytes, with generation 0. The global handle is
/// the single byte `[0]` (C callers pass `DM_GLOBAL_HANP`/`DM_GLOBAL_HLEN`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DmHandle {
    len: u8,
    bytes: [u8; DM_MAX_HANDLE_SIZE],
}

impl fmt::Debug for DmHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            HandleKind::Global => write!(f, "DmHandle(global)"),
            HandleKind::Fs => write!(f, "DmHandle(fs {})", self.fsid()),
            HandleKind::File => write!(
                f,
                "DmHandle(fs {} ino {} gen {})",
                self.fsid(),
                self.ino().unwrap_or(0),
                self.igen().unwrap_or(0)
            ),
        }
    }
}

impl DmHandle {
    /// The global handle.
    pub const fn global() -> DmHandle {
        DmHandle { len: 1, bytes: [0; DM_MAX_HANDLE_SIZE] }
    }

    /// `dm_make_fshandle`.
    pub fn fs(fsid: FsId) -> DmHandle {
        let mut bytes = [0u8; DM_MAX_HANDLE_SIZE];
        bytes[0] = HANDLE_VERSION;
        bytes[1] = KIND_FS;
        bytes[8..16].copy_from_slice(&fsid.0.to_le_bytes());
        DmHandle { len: DM_FSHANDLE_LEN as u8, bytes }
    }

    /// `dm_make_handle`.
    pub fn file(fsid: FsId, ino: DmIno, igen: DmIgen) -> DmHandle {
        let mut h = DmHandle::fs(fsid);
        h.bytes[1] = KIND_FILE;
        h.bytes[4..8].copy_from_slice(&igen.to_le_bytes());
        h.bytes[16..24].copy_from_slice(&ino.to_le_bytes());
        h.len = DM_FILEHANDLE_LEN as u8;
        h
    }

    /// Parses handle bytes from a caller; anything malformed is `EBADF`
    /// (`dm_handle_is_valid` is `from_bytes(..).is_ok()`).
    pub fn from_bytes(b: &[u8]) -> DmResult<DmHandle> {
        let bad = Err(DmError::BadF("malformed handle"));
        let mut bytes = [0u8; DM_MAX_HANDLE_SIZE];
        match b.len() {
            1 if b[0] == KIND_GLOBAL => return Ok(DmHandle::global()),
            DM_FSHANDLE_LEN | DM_FILEHANDLE_LEN => {}
            _ => return bad,
        }
        bytes[..b.len()].copy_from_slice(b);
        let want_kind = if b.len() == DM_FSHANDLE_LEN { KIND_FS } else { KIND_FILE };
        if bytes[0] != HANDLE_VERSION || bytes[1] != want_kind || bytes[2] != 0 || bytes[3] != 0 {
            return bad;
        }
        if want_kind == KIND_FS && bytes[4..8] != [0; 4] {
            return bad;
        }
        Ok(DmHandle { len: b.len() as u8, bytes })
    }

    /// The handle's bytes, as `dm_*_to_handle` hands them out.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Length in bytes (`hlen`).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Never true: every handle has at least one byte. Present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What the handle names.
    pub fn kind(&self) -> HandleKind {
        match self.len as usize {
            1 => HandleKind::Global,
            DM_FSHANDLE_LEN => HandleKind::Fs,
            _ => HandleKind::File,
        }
    }

    /// `dm_handle_to_fsid` (0 for the global handle).
    pub fn fsid(&self) -> FsId {
        if self.kind() == HandleKind::Global {
            return FsId(0);
        }
        FsId(u64::from_le_bytes(self.bytes[8..16].try_into().unwrap_or([0; 8])))
    }

    /// `dm_handle_to_ino`: `EINVAL` unless this is a file handle.
    pub fn ino(&self) -> DmResult<DmIno> {
        if self.kind() != HandleKind::File {
            return Err(DmError::Inval("not a file handle"));
        }
        Ok(u64::from_le_bytes(self.bytes[16..24].try_into().unwrap_or([0; 8])))
    }

    /// `dm_handle_to_igen`: `EINVAL` unless this is a file handle.
    pub fn igen(&self) -> DmResult<DmIgen> {
        if self.kind() != HandleKind::File {
            return Err(DmError::Inval("not a file handle"));
        }
        Ok(u32::from_le_bytes(self.bytes[4..8].try_into().unwrap_or([0; 4])))
    }

    /// `dm_handle_to_fshandle`: the handle of the file system holding this object.
    pub fn to_fshandle(&self) -> DmResult<DmHandle> {
        match self.kind() {
            HandleKind::Global => Err(DmError::BadF("the global handle has no file system")),
            _ => Ok(DmHandle::fs(self.fsid())),
        }
    }

    /// `dm_handle_hash`: FNV-1a over the bytes, the same on every node.
    pub fn hash32(&self) -> u32 {
        dm_handle_hash(self.as_bytes())
    }
}

impl PartialOrd for DmHandle {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DmHandle {
    fn cmp(&self, other: &Self) -> Ordering {
        dm_handle_cmp(self.as_bytes(), other.as_bytes())
    }
}

/// `dm_handle_hash` over raw bytes.
pub fn dm_handle_hash(b: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &x in b {
        h ^= x as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `dm_handle_cmp`: bytewise, then shorter first; `Equal` exactly when the handles
/// name the same object.
pub fn dm_handle_cmp(a: &[u8], b: &[u8]) -> Ordering {
    a.cmp(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_numbers_match_sgi() {
        assert_eq!(EventType::Cancel.raw(), 0);
        assert_eq!(EventType::Mount.raw(), 1);
        assert_eq!(EventType::Debut.raw(), 4);
        assert_eq!(EventType::Close.raw(), 6);
        assert_eq!(EventType::Read.raw(), 16);
        assert_eq!(EventType::Destroy.raw(), 20);
        assert_eq!(EventType::User.raw(), 22);
        for (i, t) in EventType::ALL.iter().enumerate() {
            assert_eq!(t.raw(), i as i32);
            assert_eq!(EventType::from_raw(i as i32).unwrap(), *t);
        }
        assert_eq!(EventType::from_raw(-1).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(EventType::from_raw(23).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn sync_and_class_follow_xdsm() {
        assert!(EventType::Read.is_synchronous());
        assert!(EventType::Mount.is_synchronous());
        assert!(!EventType::Postcreate.is_synchronous());
        assert!(!EventType::Destroy.is_synchronous());
        assert!(!EventType::Unmount.is_synchronous());
        assert_eq!(EventType::Truncate.class(), EventClass::Data);
        assert_eq!(EventType::Rename.class(), EventClass::Namespace);
        assert_eq!(EventType::Mount.class(), EventClass::Mount);
        assert_eq!(EventType::Destroy.class(), EventClass::Destroy);
        assert_eq!(EventType::User.class(), EventClass::User);
    }

    #[test]
    fn eventset_bits_are_dmev_set() {
        let mut s = EventSet::EMPTY;
        s.insert(EventType::Read);
        s.insert(EventType::Mount);
        assert_eq!(s.0, (1 << 16) | (1 << 1));
        assert!(s.contains(EventType::Read));
        s.remove(EventType::Read);
        assert!(!s.contains(EventType::Read));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![EventType::Mount]);
        let all: EventSet = EventType::ALL.into_iter().collect();
        assert_eq!(all, EventSet::ALL);
        assert_eq!(all.truncated(2).unwrap().0, 0b11);
        assert_eq!(all.truncated(24).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn responses_parse_like_dm_respond_event() {
        assert_eq!(DmResponse::from_raw(1, 0).unwrap(), DmResponse::Continue);
        assert_eq!(DmResponse::from_raw(2, 5).unwrap(), DmResponse::Abort(5));
        assert_eq!(DmResponse::from_raw(3, 0).unwrap(), DmResponse::DontCare);
        assert_eq!(DmResponse::from_raw(2, 0).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(DmResponse::from_raw(0, 0).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(DmResponse::from_raw(9, 0).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(DmResponse::Abort(13).to_raw(), (2, 13));
    }

    #[test]
    fn rights_msgtypes_and_config_values() {
        assert_eq!(DmRight::from_raw(2).unwrap(), DmRight::Excl);
        assert!(DmRight::from_raw(3).is_err());
        assert_eq!(DmMsgType::from_raw(1).unwrap(), DmMsgType::Sync);
        assert!(DmMsgType::from_raw(0).is_err());
        assert_eq!(DmConfig::from_raw(6).unwrap(), DmConfig::MaxAttrOnDestroy);
        assert_eq!(DmConfig::from_raw(19).unwrap(), DmConfig::WillRetry);
        assert!(DmConfig::from_raw(0).is_err());
        assert!(DmConfig::from_raw(DM_CONFIG_MAX).is_err());
    }

    #[test]
    fn handles_are_stable_and_round_trip() {
        let fh = DmHandle::file(FsId(0xabcd), 77, 3);
        assert_eq!(fh.len(), DM_FILEHANDLE_LEN);
        assert_eq!(fh.kind(), HandleKind::File);
        assert_eq!(fh.fsid(), FsId(0xabcd));
        assert_eq!(fh.ino().unwrap(), 77);
        assert_eq!(fh.igen().unwrap(), 3);
        // Same inputs, same bytes: a handle made on another node or after a restart
        // names the same file.
        assert_eq!(fh.as_bytes(), DmHandle::file(FsId(0xabcd), 77, 3).as_bytes());
        assert_eq!(DmHandle::from_bytes(fh.as_bytes()).unwrap(), fh);
        let fs = fh.to_fshandle().unwrap();
        assert_eq!(fs, DmHandle::fs(FsId(0xabcd)));
        assert_eq!(fs.kind(), HandleKind::Fs);
        assert_eq!(fs.ino().unwrap_err().errno(), libc::EINVAL);
        assert_eq!(DmHandle::from_bytes(fs.as_bytes()).unwrap(), fs);
        assert_eq!(DmHandle::from_bytes(&[0]).unwrap().kind(), HandleKind::Global);
        assert!(DmHandle::global().to_fshandle().is_err());
    }

    #[test]
    fn malformed_handles_are_ebadf() {
        let fh = DmHandle::file(FsId(1), 2, 3);
        let mut b = fh.as_bytes().to_vec();
        b[0] = 9;
        assert_eq!(DmHandle::from_bytes(&b).unwrap_err().errno(), libc::EBADF);
        let mut b = fh.as_bytes().to_vec();
        b[1] = KIND_FS;
        assert!(DmHandle::from_bytes(&b).is_err());
        assert!(DmHandle::from_bytes(&fh.as_bytes()[..20]).is_err());
        assert!(DmHandle::from_bytes(&[]).is_err());
        assert!(DmHandle::from_bytes(&[1]).is_err());
    }

    #[test]
    fn hash_and_compare() {
        let a = DmHandle::file(FsId(1), 2, 3);
        let b = DmHandle::file(FsId(1), 2, 4);
        assert_eq!(a.hash32(), dm_handle_hash(a.as_bytes()));
        assert_ne!(a.hash32(), b.hash32());
        assert_eq!(dm_handle_cmp(a.as_bytes(), a.as_bytes()), Ordering::Equal);
        assert_ne!(a.cmp(&b), Ordering::Equal);
        assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
        // Known FNV-1a value pins the hash so it cannot drift between releases.
        assert_eq!(dm_handle_hash(b"a"), 0xe40c_292c);
    }

    #[test]
    fn session_ids_encode_the_owner_node() {
        let sid = DmSessId::compose(NodeId(5), 1).unwrap();
        assert_eq!(sid.node(), Some(NodeId(5)));
        assert!(sid.0 > 0);
        let top = DmSessId::compose(NodeId(MAX_SESSION_NODE), (1 << 20) - 1).unwrap();
        assert!(top.0 > 0);
        assert_eq!(top.node(), Some(NodeId(MAX_SESSION_NODE)));
        assert!(DmSessId::compose(NodeId(0), 1).is_err());
        assert!(DmSessId::compose(NodeId(2048), 1).is_err());
        assert_eq!(DmSessId::compose(NodeId(1), 1 << 20).unwrap_err().errno(), libc::ENOMEM);
        assert_eq!(DM_NO_SESSION.node(), None);
        assert_eq!(DmSessId(-4).node(), None);
    }

    #[test]
    fn attr_names() {
        assert_eq!(DmAttrName::new(b"hsm").unwrap().an_chars, *b"hsm\0\0\0\0\0");
        assert_eq!(DmAttrName::new(b"123456789").unwrap_err().errno(), libc::EINVAL);
    }
}
