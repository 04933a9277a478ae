//! Event messages: one Rust value per XDSM event class, each carrying the source node
//! id (B12), and their encoding to the `dm_eventmsg_t` buffer that `dm_get_events`
//! and `dm_find_eventmsg` fill.
//!
//! Buffer layout (native endian, as a C program on this machine reads it): a chain of
//! messages, each 8-byte aligned, each starting with
//!
//! | off | field | C type |
//! |----:|-------|--------|
//! | 0 | `_link` (offset to the next message, 0 on the last) | `int` |
//! | 4 | `ev_type` | `dm_eventtype_t` |
//! | 8 | `ev_token` | `dm_token_t` |
//! | 12 | `ev_sequence` | `dm_sequence_t` |
//! | 16 | `ev_data` (offset from the message, length) | `dm_vardata_t` |
//! | 24 | `ev_nodeid`: Tidepool extension, the source node (B12) | `u_int` |
//! | 28 | `ev_pad1` | `u_int` |
//!
//! then the class structure (`dm_data_event_t`, `dm_namesp_event_t`,
//! `dm_mount_event_t`, `dm_destroy_event_t`, `dm_cancel_event_t`, or the user data
//! itself) whose own `dm_vardata_t` offsets count from the start of that structure, as
//! `DM_GET_VALUE(p, field, type)` expects. Names are NUL terminated and the NUL is
//! counted in `vd_length`, as in SGI's implementation.
//!
//! ```
//! use dmapi::event::{parse_eventmsgs, DmEvent, EventBody};
//! use dmapi::types::{DmHandle, EventType, FsId, NodeId};
//! let ev = DmEvent::new(
//!     EventType::Read,
//!     NodeId(2),
//!     EventBody::Data { handle: DmHandle::file(FsId(1), 5, 0), offset: 0, length: 4096 },
//! )
//! .unwrap();
//! let mut buf = Vec::new();
//! ev.encode_into(&mut buf);
//! assert_eq!(buf.len(), ev.encoded_len());
//! assert_eq!(parse_eventmsgs(&buf).unwrap(), vec![ev]);
//! ```

use crate::error::{DmError, DmResult};
use crate::types::{
    DmAttrName, DmHandle, DmSequence, DmToken, EventClass, EventType, NodeId, DM_ATTR_NAME_SIZE, DM_INVALID_TOKEN,
    DM_MAX_ATTR_ON_DESTROY, DM_MAX_MESSAGE_DATA, DM_MAX_NAME_LEN,
};

/// Size of the `dm_eventmsg_t` header including the Tidepool `ev_nodeid` extension.
pub const EVENTMSG_HDR_LEN: usize = 32;
/// Offset of `ev_nodeid` in the message header.
pub const EV_NODEID_OFFSET: usize = 24;
const DATA_EVENT_LEN: usize = 24;
const NAMESP_EVENT_LEN: usize = 40;
const MOUNT_EVENT_LEN: usize = 44;
const DESTROY_EVENT_LEN: usize = 24;
const CANCEL_EVENT_LEN: usize = 8;

/// The class-specific part of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    /// Read, write, truncate: the file and the byte range.
    Data {
        /// The file.
        handle: DmHandle,
        /// Start of the range (for truncate: the new size).
        offset: i64,
        /// Length of the range (0 for truncate).
        length: u64,
    },
    /// Namespace and other per-object events.
    ///
    /// create/remove/postcreate/postremove: `handle1` parent dir, `name1` entry,
    /// (post: `handle2` the object). rename: `handle1`/`handle2` old/new parent,
    /// `name1`/`name2` old/new name. link: `handle1` parent, `handle2` source object,
    /// `name1` new name. symlink: `handle1` parent, `name1` link name, `name2` target.
    /// preunmount/unmount/nospace: `handle1` fs handle (preunmount: `handle2` root).
    /// attribute/close/debut: `handle1` the object.
    Namespace {
        /// `ne_mode`: object mode, or `DM_UNMOUNT_FORCE` for (pre)unmount.
        mode: u32,
        /// `ne_handle1`.
        handle1: Option<DmHandle>,
        /// `ne_handle2`.
        handle2: Option<DmHandle>,
        /// `ne_name1`, without NUL.
        name1: Vec<u8>,
        /// `ne_name2`, without NUL.
        name2: Vec<u8>,
        /// `ne_retcode`: the operation's result for post events (0 or an errno).
        retcode: i32,
    },
    /// A file system was mounted.
    Mount {
        /// `me_mode`: `DM_MOUNT_RDONLY` or 0.
        mode: u32,
        /// `me_handle1`: the file system.
        fs_handle: DmHandle,
        /// `me_handle2`: the mount point directory, if the node can name it.
        mountpoint_handle: Option<DmHandle>,
        /// `me_name1`: the mount point path.
        mountpoint_path: Vec<u8>,
        /// `me_name2`: the device or media name.
        media: Vec<u8>,
        /// `me_roothandle`: the file system's root directory.
        root_handle: Option<DmHandle>,
    },
    /// A file was destroyed (its last link and open reference are gone).
    Destroy {
        /// `ds_handle`.
        handle: DmHandle,
        /// `ds_attrname`: the attribute named by `dm_set_return_on_destroy`.
        attrname: DmAttrName,
        /// `ds_attrcopy`: the attribute's value, empty if none.
        attrcopy: Vec<u8>,
    },
    /// An earlier event was cancelled.
    Cancel {
        /// `ce_sequence` of the cancelled event.
        sequence: DmSequence,
        /// `ce_token` of the cancelled event.
        token: DmToken,
    },
    /// `dm_send_msg` / `dm_create_userevent` data.
    User {
        /// The opaque message.
        data: Vec<u8>,
    },
}

impl EventBody {
    fn class(&self) -> EventClass {
        match self {
            EventBody::Data { .. } => EventClass::Data,
            EventBody::Namespace { .. } => EventClass::Namespace,
            EventBody::Mount { .. } => EventClass::Mount,
            EventBody::Destroy { .. } => EventClass::Destroy,
            EventBody::Cancel { .. } => EventClass::Cancel,
            EventBody::User { .. } => EventClass::User,
        }
    }
}

/// One event as a session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmEvent {
    /// `ev_type`.
    pub ev_type: EventType,
    /// The node where the event was generated (B12).
    pub source: NodeId,
    /// `ev_token`: set by the session side; `DM_INVALID_TOKEN` for asynchronous events.
    pub token: DmToken,
    /// `ev_sequence`: set by the session side when the event is queued.
    pub sequence: DmSequence,
    /// The class-specific part.
    pub body: EventBody,
}

fn check_name(n: &[u8]) -> DmResult<()> {
    if n.len() > DM_MAX_NAME_LEN {
        return Err(DmError::Inval("name longer than DM_MAX_NAME_LEN"));
    }
    if n.contains(&0) {
        return Err(DmError::Inval("name contains NUL"));
    }
    Ok(())
}

impl DmEvent {
    /// Makes an event with no token or sequence yet; checks the body fits the type.
    pub fn new(ev_type: EventType, source: NodeId, body: EventBody) -> DmResult<DmEvent> {
        let ev = DmEvent { ev_type, source, token: DM_INVALID_TOKEN, sequence: 0, body };
        ev.validate()?;
        Ok(ev)
    }

    /// Checks the body class matches the type and every length is within bounds.
    pub fn validate(&self) -> DmResult<()> {
        if self.ev_type.class() != self.body.class() {
            return Err(DmError::Inval("event body does not match event type"));
        }
        match &self.body {
            EventBody::Namespace { name1, name2, .. } => {
                check_name(name1)?;
                check_name(name2)
            }
            EventBody::Mount { mountpoint_path, media, .. } => {
                check_name(mountpoint_path)?;
                check_name(media)
            }
            EventBody::Destroy { attrcopy, .. } if attrcopy.len() > DM_MAX_ATTR_ON_DESTROY => {
                Err(DmError::Inval("destroy attribute copy too long"))
            }
            EventBody::User { data } if data.len() > DM_MAX_MESSAGE_DATA => {
                Err(DmError::TooBig { needed: DM_MAX_MESSAGE_DATA })
            }
            _ => Ok(()),
        }
    }

    /// Bytes this message takes in a `dm_get_events` buffer, padding included.
    pub fn encoded_len(&self) -> usize {
        align8(EVENTMSG_HDR_LEN + self.body_len())
    }

    /// Unpadded length of the class structure plus its variable data (`ev_data.vd_length`).
    fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Appends this message to `out` with `_link` 0; [`encode_chain`] links several.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let body_len = self.body_len();
        out.resize(start + self.encoded_len(), 0);
        let m = &mut out[start..];
        put_i32(m, 0, 0);
        put_i32(m, 4, self.ev_type.raw());
        put_i32(m, 8, self.token.0);
        put_u32(m, 12, self.sequence);
        put_i32(m, 16, EVENTMSG_HDR_LEN as i32);
        put_u32(m, 20, body_len as u32);
        put_u32(m, EV_NODEID_OFFSET, self.source.0);
        self.body.write(&mut m[EVENTMSG_HDR_LEN..]);
    }
}

impl EventBody {
    /// Unpadded length of the class structure plus its variable data.
    fn len(&self) -> usize {
        let h = |h: &Option<DmHandle>| h.map_or(0, |h| align8(h.len()));
        let n = |n: &Vec<u8>| if n.is_empty() { 0 } else { align8(n.len() + 1) };
        match self {
            EventBody::Data { handle, .. } => DATA_EVENT_LEN + handle.len(),
            EventBody::Namespace { handle1, handle2, name1, name2, .. } => {
                NAMESP_EVENT_LEN + h(handle1) + h(handle2) + n(name1) + n(name2)
            }
            EventBody::Mount { fs_handle, mountpoint_handle, mountpoint_path, media, root_handle, .. } => {
                align8(MOUNT_EVENT_LEN)
                    + align8(fs_handle.len())
                    + h(mountpoint_handle)
                    + n(mountpoint_path)
                    + n(media)
                    + h(root_handle)
            }
            EventBody::Destroy { handle, attrcopy, .. } => DESTROY_EVENT_LEN + align8(handle.len()) + attrcopy.len(),
            EventBody::Cancel { .. } => CANCEL_EVENT_LEN,
            EventBody::User { data } => data.len(),
        }
    }

    /// Writes the class structure and its variable data at the start of
    /// `b` (at least [`len`](Self::len) bytes, zeroed), the `dm_vardata_t`
    /// offsets relative to the structure, as XDSM has them.
    fn write(&self, b: &mut [u8]) {
        let mut w = VarWriter::new(b);
        match self {
            EventBody::Data { handle, offset, length } => {
                w.pos = DATA_EVENT_LEN;
                w.vardata(0, handle.as_bytes(), false);
                put_i64(w.buf, 8, *offset);
                put_u64(w.buf, 16, *length);
            }
            EventBody::Namespace { mode, handle1, handle2, name1, name2, retcode } => {
                w.pos = NAMESP_EVENT_LEN;
                put_u32(w.buf, 0, *mode);
                w.opt_handle(4, handle1);
                w.opt_handle(12, handle2);
                w.name(20, name1);
                w.name(28, name2);
                put_i32(w.buf, 36, *retcode);
            }
            EventBody::Mount { mode, fs_handle, mountpoint_handle, mountpoint_path, media, root_handle } => {
                w.pos = align8(MOUNT_EVENT_LEN);
                put_u32(w.buf, 0, *mode);
                w.vardata(4, fs_handle.as_bytes(), false);
                w.opt_handle(12, mountpoint_handle);
                w.name(20, mountpoint_path);
                w.name(28, media);
                w.opt_handle(36, root_handle);
            }
            EventBody::Destroy { handle, attrname, attrcopy } => {
                w.pos = DESTROY_EVENT_LEN;
                w.vardata(0, handle.as_bytes(), false);
                w.buf[8..16].copy_from_slice(&attrname.an_chars);
                if !attrcopy.is_empty() {
                    w.vardata(16, attrcopy, false);
                }
            }
            EventBody::Cancel { sequence, token } => {
                put_u32(w.buf, 0, *sequence);
                put_i32(w.buf, 4, token.0);
            }
            EventBody::User { data } => {
                w.buf[..data.len()].copy_from_slice(data);
            }
        }
    }

    /// The class structure with its variable data, alone: what
    /// `dm_get_mountinfo` returns for a mount body (`dm_mount_event_t`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.len()];
        self.write(&mut b);
        b
    }
}

/// Encodes as many of `events` as fit in `buflen` bytes (at most `maxmsgs`), chained
/// by `_link`. Returns the buffer and how many were taken. If not even the first fits,
/// `E2BIG` with the first message's length.
pub fn encode_chain<'a>(
    events: impl IntoIterator<Item = &'a DmEvent>,
    maxmsgs: usize,
    buflen: usize,
) -> DmResult<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut last: Option<usize> = None;
    let mut n = 0;
    for ev in events.into_iter().take(maxmsgs) {
        let len = ev.encoded_len();
        if out.len() + len > buflen {
            if n == 0 {
                return Err(DmError::TooBig { needed: len });
            }
            break;
        }
        let start = out.len();
        ev.encode_into(&mut out);
        if let Some(prev) = last {
            put_i32(&mut out[prev..], 0, (start - prev) as i32);
        }
        last = Some(start);
        n += 1;
    }
    Ok((out, n))
}

struct VarWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> VarWriter<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        VarWriter { buf, pos: 0 }
    }
    /// Writes `data` (plus a NUL if `nul`) at the next 8-aligned spot and the
    /// `dm_vardata_t` describing it at `field`.
    fn vardata(&mut self, field: usize, data: &[u8], nul: bool) {
        self.pos = align8(self.pos);
        let len = data.len() + nul as usize;
        self.buf[self.pos..self.pos + data.len()].copy_from_slice(data);
        put_i32(self.buf, field, self.pos as i32);
        put_u32(self.buf, field + 4, len as u32);
        self.pos += len;
    }
    fn opt_handle(&mut self, field: usize, h: &Option<DmHandle>) {
        if let Some(h) = h {
            self.vardata(field, h.as_bytes(), false);
        }
    }
    fn name(&mut self, field: usize, n: &[u8]) {
        if !n.is_empty() {
            self.vardata(field, n, true);
        }
    }
}

/// Parses a `dm_get_events` buffer back into events (tests, tools, and Rust DM
/// applications that want typed values). Malformed buffers are `EINVAL`.
pub fn parse_eventmsgs(buf: &[u8]) -> DmResult<Vec<DmEvent>> {
    let bad = |_| DmError::Inval("malformed event message buffer");
    let mut out = Vec::new();
    let mut at = 0usize;
    if buf.is_empty() {
        return Ok(out);
    }
    loop {
        let m = buf.get(at..).ok_or(DmError::Inval("link past end"))?;
        out.push(parse_one(m).map_err(bad)?);
        let link = get_i32(m, 0).map_err(bad)?;
        if link == 0 {
            return Ok(out);
        }
        if link < EVENTMSG_HDR_LEN as i32 || link % 8 != 0 {
            return Err(DmError::Inval("bad _link"));
        }
        at += link as usize;
    }
}

struct Malformed;

fn parse_one(m: &[u8]) -> Result<DmEvent, Malformed> {
    let ev_type = EventType::from_raw(get_i32(m, 4)?).map_err(|_| Malformed)?;
    let token = DmToken(get_i32(m, 8)?);
    let sequence = get_u32(m, 12)?;
    let (off, len) = (get_i32(m, 16)?, get_u32(m, 20)?);
    let source = NodeId(get_u32(m, EV_NODEID_OFFSET)?);
    let body = parse_body_of(ev_type.class(), slice(m, off, len)?)?;
    Ok(DmEvent { ev_type, source, token, sequence, body })
}

/// Parses a class structure with its variable data, such as the
/// `dm_mount_event_t` that `dm_get_mountinfo` returns. Malformed is `EINVAL`.
pub fn parse_body(class: EventClass, b: &[u8]) -> DmResult<EventBody> {
    parse_body_of(class, b).map_err(|_| DmError::Inval("malformed event structure"))
}

fn parse_body_of(class: EventClass, b: &[u8]) -> Result<EventBody, Malformed> {
    let handle = |field: usize| -> Result<Option<DmHandle>, Malformed> {
        let (o, l) = (get_i32(b, field)?, get_u32(b, field + 4)?);
        if l == 0 {
            return Ok(None);
        }
        DmHandle::from_bytes(slice(b, o, l)?).map(Some).map_err(|_| Malformed)
    };
    let name = |field: usize| -> Result<Vec<u8>, Malformed> {
        let (o, l) = (get_i32(b, field)?, get_u32(b, field + 4)?);
        if l == 0 {
            return Ok(Vec::new());
        }
        let s = slice(b, o, l)?;
        match s.split_last() {
            Some((0, name)) => Ok(name.to_vec()),
            _ => Err(Malformed),
        }
    };
    Ok(match class {
        EventClass::Data => {
            EventBody::Data { handle: handle(0)?.ok_or(Malformed)?, offset: get_i64(b, 8)?, length: get_u64(b, 16)? }
        }
        EventClass::Namespace => EventBody::Namespace {
            mode: get_u32(b, 0)?,
            handle1: handle(4)?,
            handle2: handle(12)?,
            name1: name(20)?,
            name2: name(28)?,
            retcode: get_i32(b, 36)?,
        },
        EventClass::Mount => EventBody::Mount {
            mode: get_u32(b, 0)?,
            fs_handle: handle(4)?.ok_or(Malformed)?,
            mountpoint_handle: handle(12)?,
            mountpoint_path: name(20)?,
            media: name(28)?,
            root_handle: handle(36)?,
        },
        EventClass::Destroy => {
            let mut an_chars = [0u8; DM_ATTR_NAME_SIZE];
            an_chars.copy_from_slice(b.get(8..16).ok_or(Malformed)?);
            let (o, l) = (get_i32(b, 16)?, get_u32(b, 20)?);
            EventBody::Destroy {
                handle: handle(0)?.ok_or(Malformed)?,
                attrname: DmAttrName { an_chars },
                attrcopy: if l == 0 { Vec::new() } else { slice(b, o, l)?.to_vec() },
            }
        }
        EventClass::Cancel => EventBody::Cancel { sequence: get_u32(b, 0)?, token: DmToken(get_i32(b, 4)?) },
        EventClass::User => EventBody::User { data: b.to_vec() },
    })
}

fn slice(b: &[u8], off: i32, len: u32) -> Result<&[u8], Malformed> {
    let off = usize::try_from(off).map_err(|_| Malformed)?;
    let end = off.checked_add(len as usize).ok_or(Malformed)?;
    b.get(off..end).ok_or(Malformed)
}

pub(crate) fn align8(n: usize) -> usize {
    (n + 7) & !7
}

fn put_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_i64(b: &mut [u8], at: usize, v: i64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}
fn get<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], Malformed> {
    b.get(at..at + N).and_then(|s| s.try_into().ok()).ok_or(Malformed)
}
fn get_i32(b: &[u8], at: usize) -> Result<i32, Malformed> {
    get::<4>(b, at).map(i32::from_ne_bytes)
}
fn get_u32(b: &[u8], at: usize) -> Result<u32, Malformed> {
    get::<4>(b, at).map(u32::from_ne_bytes)
}
fn get_i64(b: &[u8], at: usize) -> Result<i64, Malformed> {
    get::<8>(b, at).map(i64::from_ne_bytes)
}
fn get_u64(b: &[u8], at: usize) -> Result<u64, Malformed> {
    get::<8>(b, at).map(u64::from_ne_bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::{FsId, DM_UNMOUNT_FORCE};

    pub(crate) fn sample_events() -> Vec<DmEvent> {
        let fh = DmHandle::file(FsId(9), 100, 2);
        let dir = DmHandle::file(FsId(9), 2, 1);
        let fs = DmHandle::fs(FsId(9));
        let mk = |t, b| DmEvent::new(t, NodeId(4), b).unwrap();
        vec![
            mk(EventType::Read, EventBody::Data { handle: fh, offset: 4096, length: 8192 }),
            mk(
                EventType::Rename,
                EventBody::Namespace {
                    mode: 0o100644,
                    handle1: Some(dir),
                    handle2: Some(fs),
                    name1: b"old".to_vec(),
                    name2: b"new-name".to_vec(),
                    retcode: 0,
                },
            ),
            mk(
                EventType::Postremove,
                EventBody::Namespace {
                    mode: 0,
                    handle1: Some(dir),
                    handle2: None,
                    name1: b"gone".to_vec(),
                    name2: vec![],
                    retcode: libc::ENOENT,
                },
            ),
            mk(
                EventType::Unmount,
                EventBody::Namespace {
                    mode: DM_UNMOUNT_FORCE,
                    handle1: Some(fs),
                    handle2: None,
                    name1: vec![],
                    name2: vec![],
                    retcode: 0,
                },
            ),
            mk(
                EventType::Mount,
                EventBody::Mount {
                    mode: 1,
                    fs_handle: fs,
                    mountpoint_handle: Some(dir),
                    mountpoint_path: b"/mnt/tp".to_vec(),
                    media: b"tidepool:vol0".to_vec(),
                    root_handle: Some(dir),
                },
            ),
            mk(
                EventType::Destroy,
                EventBody::Destroy {
                    handle: fh,
                    attrname: DmAttrName::new(b"hsm").unwrap(),
                    attrcopy: b"tier2:obj/123".to_vec(),
                },
            ),
            mk(EventType::Cancel, EventBody::Cancel { sequence: 7, token: DmToken(3) }),
            mk(EventType::User, EventBody::User { data: b"hello".to_vec() }),
        ]
    }

    #[test]
    fn every_class_round_trips_through_the_xdsm_buffer() {
        let evs = sample_events();
        let (buf, n) = encode_chain(evs.iter(), 100, 1 << 20).unwrap();
        assert_eq!(n, evs.len());
        assert_eq!(buf.len(), evs.iter().map(|e| e.encoded_len()).sum::<usize>());
        assert_eq!(parse_eventmsgs(&buf).unwrap(), evs);
    }

    #[test]
    fn header_fields_sit_where_c_expects_them() {
        let mut ev = sample_events().remove(0);
        ev.token = DmToken(77);
        ev.sequence = 5;
        let mut buf = Vec::new();
        ev.encode_into(&mut buf);
        assert_eq!(buf.len() % 8, 0);
        assert_eq!(i32::from_ne_bytes(buf[0..4].try_into().unwrap()), 0);
        assert_eq!(i32::from_ne_bytes(buf[4..8].try_into().unwrap()), 16);
        assert_eq!(i32::from_ne_bytes(buf[8..12].try_into().unwrap()), 77);
        assert_eq!(u32::from_ne_bytes(buf[12..16].try_into().unwrap()), 5);
        assert_eq!(i32::from_ne_bytes(buf[16..20].try_into().unwrap()), 32);
        assert_eq!(u32::from_ne_bytes(buf[24..28].try_into().unwrap()), 4);
        // dm_data_event_t: de_handle points past the 24-byte struct, relative to it.
        let de = &buf[32..];
        assert_eq!(i32::from_ne_bytes(de[0..4].try_into().unwrap()), 24);
        assert_eq!(u32::from_ne_bytes(de[4..8].try_into().unwrap()), 24);
        assert_eq!(i64::from_ne_bytes(de[8..16].try_into().unwrap()), 4096);
        assert_eq!(u64::from_ne_bytes(de[16..24].try_into().unwrap()), 8192);
        assert_eq!(&de[24..48], DmHandle::file(FsId(9), 100, 2).as_bytes());
    }

    #[test]
    fn links_chain_8_byte_aligned_messages() {
        let evs = sample_events();
        let (buf, _) = encode_chain(evs.iter(), 100, 1 << 20).unwrap();
        let mut at = 0;
        let mut count = 1;
        loop {
            assert_eq!(at % 8, 0);
            let link = i32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
            if link == 0 {
                break;
            }
            at += link as usize;
            count += 1;
        }
        assert_eq!(count, evs.len());
    }

    #[test]
    fn names_carry_their_nul() {
        let ev = &sample_events()[1];
        let mut buf = Vec::new();
        ev.encode_into(&mut buf);
        let ne = &buf[32..];
        let off = i32::from_ne_bytes(ne[20..24].try_into().unwrap()) as usize;
        let len = u32::from_ne_bytes(ne[24..28].try_into().unwrap()) as usize;
        assert_eq!(&ne[off..off + len], b"old\0");
    }

    #[test]
    fn chain_respects_buflen_and_maxmsgs() {
        let evs = sample_events();
        let first = evs[0].encoded_len();
        assert_eq!(encode_chain(evs.iter(), 10, first - 1).unwrap_err(), DmError::TooBig { needed: first });
        let (_, n) = encode_chain(evs.iter(), 10, first).unwrap();
        assert_eq!(n, 1);
        let (_, n) = encode_chain(evs.iter(), 3, 1 << 20).unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn validation_rejects_mismatch_and_oversize() {
        let e = DmEvent::new(EventType::Read, NodeId(1), EventBody::User { data: vec![] });
        assert_eq!(e.unwrap_err().errno(), libc::EINVAL);
        let e = DmEvent::new(EventType::User, NodeId(1), EventBody::User { data: vec![0; DM_MAX_MESSAGE_DATA + 1] });
        assert_eq!(e.unwrap_err().errno(), libc::E2BIG);
        let e = DmEvent::new(
            EventType::Create,
            NodeId(1),
            EventBody::Namespace {
                mode: 0,
                handle1: None,
                handle2: None,
                name1: b"a\0b".to_vec(),
                name2: vec![],
                retcode: 0,
            },
        );
        assert!(e.is_err());
    }

    #[test]
    fn garbage_buffers_are_einval_not_panics() {
        let evs = sample_events();
        let (buf, _) = encode_chain(evs.iter(), 100, 1 << 20).unwrap();
        for cut in [1, 7, 31, 33, buf.len() - 1] {
            let _ = parse_eventmsgs(&buf[..cut]);
        }
        let mut bad = buf.clone();
        bad[0..4].copy_from_slice(&3i32.to_ne_bytes());
        assert!(parse_eventmsgs(&bad).is_err());
    }
}
