//! The cluster DM messages carried in the [`crate::wire`] framing: event delivery,
//! responses, `dm_pending`, session announcements, disposition changes and their
//! distribution, mount notices, acks, heartbeats and the connection handshake.
//!
//! One [`Frame`] = header fields + one [`Message`]. [`decode_frame`] takes untrusted
//! bytes and returns a typed [`WireError`], never panicking; every variable length is
//! bounded by the XDSM limit of the field it carries.
//!
//! ```
//! use dmapi::proto::{decode_frame, encode_frame, Frame, Message};
//! use dmapi::types::{DmSessId, DmToken, NodeId};
//! let f = Frame::new(NodeId(3), 10, Message::Heartbeat { now_ns: 5 });
//! let bytes = encode_frame(&f).unwrap();
//! let (back, used) = decode_frame(&bytes).unwrap();
//! assert_eq!((back, used), (f, bytes.len()));
//! ```

use crate::event::{DmEvent, EventBody};
use crate::types::{
    DmAttrName, DmHandle, DmResponse, DmSessId, DmToken, EventClass, EventSet, EventType, FsId, NodeId,
    DM_INVALID_TOKEN, DM_MAX_ATTR_ON_DESTROY, DM_MAX_HANDLE_SIZE, DM_MAX_MESSAGE_DATA, DM_MAX_NAME_LEN,
    DM_SESSION_INFO_LEN,
};
use crate::wire::{split_frame, Dec, Enc, MsgHeader, WireError, HEADER_LEN, MAX_PAYLOAD};
use zerocopy::byteorder::little_endian::{I32, U16, U64};

/// Length of handshake nonces and MACs.
pub use crate::auth::AUTH_LEN;

/// Message type numbers (header byte 5).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// Connection opener: the connector's node id (header) and nonce.
    Hello = 1,
    /// Acceptor's nonce and its proof of the cluster key.
    Challenge = 2,
    /// Connector's proof of the cluster key.
    Auth = 3,
    /// One event for a session (header: `seq` the event's sequence, `sid` the session).
    Event = 4,
    /// Many events in one frame (asynchronous throughput).
    EventBatch = 5,
    /// A response (header: `ref_seq` the event, `sid`, `token`).
    Response = 6,
    /// `dm_pending` (header: `ref_seq`, `sid`, `token`).
    Pending = 7,
    /// Session created, to the session manager (header `sid`).
    SessionCreate = 8,
    /// Session destroyed (header `sid`).
    SessionDestroy = 9,
    /// Session reclaimed after a DM application or node restart (header `sid`).
    SessionReclaim = 10,
    /// A disposition call, to the session manager (header `sid`).
    DispChange = 11,
    /// The disposition table: session manager → fs manager → mounting nodes.
    DispSpec = 12,
    /// A node mounted or unmounted a file system, to its manager.
    Mount = 13,
    /// Acknowledges the frame `ref_seq` of the receiver.
    Ack = 14,
    /// Liveness.
    Heartbeat = 15,
    /// A read-only question about a session's events, to the session's node (B13:
    /// `dm_find_eventmsg`, `dm_getall_tokens` made on another node). Header `sid`,
    /// `token`.
    Query = 16,
    /// The answer to a [`MsgType::Query`] (header `ref_seq` the query).
    QueryReply = 17,
    /// The session manager's answer to a [`MsgType::DispChange`] (header
    /// `ref_seq` the change's frame).
    DispReply = 18,
}

impl MsgType {
    fn from_u8(v: u8) -> Result<MsgType, WireError> {
        use MsgType::*;
        Ok(match v {
            1 => Hello,
            2 => Challenge,
            3 => Auth,
            4 => Event,
            5 => EventBatch,
            6 => Response,
            7 => Pending,
            8 => SessionCreate,
            9 => SessionDestroy,
            10 => SessionReclaim,
            11 => DispChange,
            12 => DispSpec,
            13 => Mount,
            14 => Ack,
            15 => Heartbeat,
            16 => Query,
            17 => QueryReply,
            18 => DispReply,
            _ => return Err(WireError::UnknownType(v)),
        })
    }
}

/// A disposition call forwarded to the session manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispChange {
    /// `dm_set_disp` by the session in the header, living on `node`.
    SetDisp {
        /// The session's node.
        node: NodeId,
        /// File-system or global handle.
        handle: DmHandle,
        /// The events.
        set: EventSet,
    },
    /// `dm_set_eventlist` on a file-system handle.
    SetEventlist {
        /// File-system handle.
        handle: DmHandle,
        /// The events.
        set: EventSet,
    },
    /// `dm_set_return_on_destroy`.
    ReturnOnDestroy {
        /// File-system handle.
        handle: DmHandle,
        /// The attribute.
        name: DmAttrName,
        /// Set or clear.
        enable: bool,
    },
}

/// Where one event type of a file system goes, in a [`DispSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireRoute {
    /// The event type's `dm_eventtype_t` value.
    pub event: u8,
    /// The session's node.
    pub node: NodeId,
    /// The session.
    pub sid: DmSessId,
}

/// One file system's (or the global) dispositions in a [`DispSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireFsDisp {
    /// The file system's event list.
    pub eventlist: EventSet,
    /// The disposed event types.
    pub routes: Vec<WireRoute>,
    /// `dm_set_return_on_destroy`: the session and the attribute.
    pub return_on_destroy: Option<(DmSessId, DmAttrName)>,
}

/// The disposition table as the session manager sends it to each file
/// system's manager and on to every mounting node: plain data, which the
/// disposition engine (`crate::disp`) turns into its table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DispSpec {
    /// The table's version (the receiver keeps the newest).
    pub version: u64,
    /// The global handle's dispositions.
    pub global: WireFsDisp,
    /// Each file system's.
    pub fs: Vec<(FsId, WireFsDisp)>,
}

/// An event inside an [`Message::EventBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchedEvent {
    /// The source's sequence number of the event.
    pub seq: u64,
    /// The target session.
    pub sid: DmSessId,
    /// Whether the source waits for a response.
    pub sync: bool,
    /// The file system.
    pub fs: FsId,
    /// The event (`source` is the frame's source node; token and sequence are set
    /// by the session side and not carried).
    pub event: DmEvent,
}

/// What a [`Message::Query`] asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOp {
    /// `dm_find_eventmsg(sid, token, buflen)`.
    FindEventmsg {
        /// The caller's buffer length.
        buflen: u64,
    },
    /// `dm_getall_tokens(sid, nelem)`.
    GetallTokens {
        /// The caller's array length.
        nelem: u64,
    },
}

/// Every cluster DM message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`MsgType::Hello`].
    Hello {
        /// Connector's nonce.
        nonce: [u8; AUTH_LEN],
    },
    /// See [`MsgType::Challenge`].
    Challenge {
        /// Acceptor's nonce.
        nonce: [u8; AUTH_LEN],
        /// HMAC proving the acceptor knows the key.
        mac: [u8; AUTH_LEN],
    },
    /// See [`MsgType::Auth`].
    Auth {
        /// HMAC proving the connector knows the key.
        mac: [u8; AUTH_LEN],
    },
    /// See [`MsgType::Event`].
    Event {
        /// The file system (0 for user events).
        fs: FsId,
        /// Whether the source waits.
        sync: bool,
        /// The event (`source` = header source node).
        event: DmEvent,
    },
    /// See [`MsgType::EventBatch`].
    EventBatch(Vec<BatchedEvent>),
    /// See [`MsgType::Response`].
    Response {
        /// The answer.
        response: DmResponse,
        /// `respbufp` data.
        data: Vec<u8>,
    },
    /// See [`MsgType::Pending`].
    Pending {
        /// The delay asked for, in milliseconds.
        delay_ms: u64,
    },
    /// See [`MsgType::SessionCreate`].
    SessionCreate {
        /// The session's node.
        node: NodeId,
        /// Its info string.
        info: Vec<u8>,
    },
    /// See [`MsgType::SessionDestroy`].
    SessionDestroy,
    /// See [`MsgType::SessionReclaim`].
    SessionReclaim {
        /// The node it now lives on.
        node: NodeId,
        /// Its info string.
        info: Vec<u8>,
    },
    /// See [`MsgType::DispChange`].
    DispChange(DispChange),
    /// See [`MsgType::DispSpec`].
    DispSpec(DispSpec),
    /// See [`MsgType::Mount`].
    Mount {
        /// The file system.
        fs: FsId,
        /// Mounted (true) or unmounted.
        mounted: bool,
    },
    /// See [`MsgType::Ack`].
    Ack,
    /// See [`MsgType::Heartbeat`].
    Heartbeat {
        /// The sender's incarnation (its start time): a change tells the receiver
        /// the sender restarted.
        now_ns: u64,
    },
    /// See [`MsgType::Query`].
    Query(QueryOp),
    /// See [`MsgType::QueryReply`].
    QueryReply {
        /// 0, or the XDSM errno of the failed call.
        errno: i32,
        /// For `E2BIG`, the needed length or count; otherwise 0.
        needed: u64,
        /// The answer: the `dm_eventmsg_t` buffer, or the tokens as little-endian i32.
        data: Vec<u8>,
    },
    /// See [`MsgType::DispReply`].
    DispReply {
        /// 0, or why the session manager refused the change.
        errno: i32,
    },
}

impl Message {
    /// The message's type number.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Message::Hello { .. } => MsgType::Hello,
            Message::Challenge { .. } => MsgType::Challenge,
            Message::Auth { .. } => MsgType::Auth,
            Message::Event { .. } => MsgType::Event,
            Message::EventBatch(_) => MsgType::EventBatch,
            Message::Response { .. } => MsgType::Response,
            Message::Pending { .. } => MsgType::Pending,
            Message::SessionCreate { .. } => MsgType::SessionCreate,
            Message::SessionDestroy => MsgType::SessionDestroy,
            Message::SessionReclaim { .. } => MsgType::SessionReclaim,
            Message::DispChange(_) => MsgType::DispChange,
            Message::DispSpec(_) => MsgType::DispSpec,
            Message::Mount { .. } => MsgType::Mount,
            Message::Ack => MsgType::Ack,
            Message::Heartbeat { .. } => MsgType::Heartbeat,
            Message::Query(_) => MsgType::Query,
            Message::QueryReply { .. } => MsgType::QueryReply,
            Message::DispReply { .. } => MsgType::DispReply,
        }
    }
}

/// A decoded frame: the header's fields and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The sending node (for events, where the event was generated: B12).
    pub source: NodeId,
    /// The sender's sequence number of this frame.
    pub seq: u64,
    /// The sequence this frame refers to.
    pub ref_seq: u64,
    /// The session concerned, or 0.
    pub sid: DmSessId,
    /// The token concerned, or 0.
    pub token: DmToken,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// The sending role's term (see [`MsgHeader::epoch`]), or 0.
    pub epoch: u64,
    /// The message.
    pub msg: Message,
}

impl Frame {
    /// A frame with ref_seq, sid, token, flags and epoch zero.
    pub fn new(source: NodeId, seq: u64, msg: Message) -> Frame {
        Frame { source, seq, ref_seq: 0, sid: DmSessId(0), token: DmToken(0), flags: 0, epoch: 0, msg }
    }

    /// The same frame stamped with a role's term.
    pub fn in_term(mut self, epoch: u64) -> Frame {
        self.epoch = epoch;
        self
    }
}

fn enc_handle(e: &mut Enc, h: &DmHandle) {
    e.bytes(h.as_bytes());
}

fn enc_opt_handle(e: &mut Enc, h: &Option<DmHandle>) {
    match h {
        Some(h) => enc_handle(e, h),
        None => e.u32(0),
    }
}

fn dec_opt_handle(d: &mut Dec<'_>) -> Result<Option<DmHandle>, WireError> {
    let b = d.bytes(DM_MAX_HANDLE_SIZE, "handle")?;
    if b.is_empty() {
        return Ok(None);
    }
    DmHandle::from_bytes(b).map(Some).map_err(|_| WireError::Invalid("handle"))
}

fn dec_handle(d: &mut Dec<'_>) -> Result<DmHandle, WireError> {
    dec_opt_handle(d)?.ok_or(WireError::Invalid("missing handle"))
}

fn enc_event_body(e: &mut Enc, ev: &DmEvent) {
    e.u8(ev.ev_type.raw() as u8);
    match &ev.body {
        EventBody::Data { handle, offset, length } => {
            enc_handle(e, handle);
            e.i64(*offset);
            e.u64(*length);
        }
        EventBody::Namespace { mode, handle1, handle2, name1, name2, retcode } => {
            e.u32(*mode);
            enc_opt_handle(e, handle1);
            enc_opt_handle(e, handle2);
            e.bytes(name1);
            e.bytes(name2);
            e.i32(*retcode);
        }
        EventBody::Mount { mode, fs_handle, mountpoint_handle, mountpoint_path, media, root_handle } => {
            e.u32(*mode);
            enc_handle(e, fs_handle);
            enc_opt_handle(e, mountpoint_handle);
            e.bytes(mountpoint_path);
            e.bytes(media);
            enc_opt_handle(e, root_handle);
        }
        EventBody::Destroy { handle, attrname, attrcopy } => {
            enc_handle(e, handle);
            e.raw(&attrname.an_chars);
            e.bytes(attrcopy);
        }
        EventBody::Cancel { sequence, token } => {
            e.u32(*sequence);
            e.i32(token.0);
        }
        EventBody::User { data } => e.bytes(data),
    }
}

fn dec_event_body(d: &mut Dec<'_>, source: NodeId) -> Result<DmEvent, WireError> {
    let ev_type = EventType::from_raw(d.u8("event type")? as i32).map_err(|_| WireError::Invalid("event type"))?;
    let body = match ev_type.class() {
        EventClass::Data => {
            EventBody::Data { handle: dec_handle(d)?, offset: d.i64("offset")?, length: d.u64("length")? }
        }
        EventClass::Namespace => EventBody::Namespace {
            mode: d.u32("mode")?,
            handle1: dec_opt_handle(d)?,
            handle2: dec_opt_handle(d)?,
            name1: d.bytes(DM_MAX_NAME_LEN, "name1")?.to_vec(),
            name2: d.bytes(DM_MAX_NAME_LEN, "name2")?.to_vec(),
            retcode: d.i32("retcode")?,
        },
        EventClass::Mount => EventBody::Mount {
            mode: d.u32("mode")?,
            fs_handle: dec_handle(d)?,
            mountpoint_handle: dec_opt_handle(d)?,
            mountpoint_path: d.bytes(DM_MAX_NAME_LEN, "mount path")?.to_vec(),
            media: d.bytes(DM_MAX_NAME_LEN, "media")?.to_vec(),
            root_handle: dec_opt_handle(d)?,
        },
        EventClass::Destroy => EventBody::Destroy {
            handle: dec_handle(d)?,
            attrname: DmAttrName { an_chars: d.raw::<8>("attrname")? },
            attrcopy: d.bytes(DM_MAX_ATTR_ON_DESTROY, "attrcopy")?.to_vec(),
        },
        EventClass::Cancel => {
            EventBody::Cancel { sequence: d.u32("cancel sequence")?, token: DmToken(d.i32("cancel token")?) }
        }
        EventClass::User => EventBody::User { data: d.bytes(DM_MAX_MESSAGE_DATA, "user data")?.to_vec() },
    };
    let ev = DmEvent { ev_type, source, token: DM_INVALID_TOKEN, sequence: 0, body };
    ev.validate().map_err(|_| WireError::Invalid("event"))?;
    Ok(ev)
}

fn dec_response(d: &mut Dec<'_>) -> Result<DmResponse, WireError> {
    let r = d.i32("response")?;
    let e = d.i32("reterror")?;
    DmResponse::from_raw(r, e).map_err(|_| WireError::Invalid("response"))
}

fn dec_bool(d: &mut Dec<'_>, what: &'static str) -> Result<bool, WireError> {
    match d.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Invalid(what)),
    }
}

fn dec_set(d: &mut Dec<'_>) -> Result<EventSet, WireError> {
    let s = EventSet(d.u64("event set")?);
    if s.0 & !EventSet::ALL.0 != 0 {
        return Err(WireError::Invalid("event set"));
    }
    Ok(s)
}

fn encode_payload(e: &mut Enc, msg: &Message) {
    match msg {
        Message::Hello { nonce } => e.raw(nonce),
        Message::Challenge { nonce, mac } => {
            e.raw(nonce);
            e.raw(mac);
        }
        Message::Auth { mac } => e.raw(mac),
        Message::Event { fs, sync, event } => {
            e.u64(fs.0);
            e.u8(*sync as u8);
            enc_event_body(e, event);
        }
        Message::EventBatch(evs) => {
            e.u32(evs.len() as u32);
            for b in evs {
                e.u64(b.seq);
                e.i32(b.sid.0);
                e.u8(b.sync as u8);
                e.u64(b.fs.0);
                enc_event_body(e, &b.event);
            }
        }
        Message::Response { response, data } => {
            let (r, err) = response.to_raw();
            e.i32(r);
            e.i32(err);
            e.bytes(data);
        }
        Message::Pending { delay_ms } => e.u64(*delay_ms),
        Message::SessionCreate { node, info } | Message::SessionReclaim { node, info } => {
            e.u32(node.0);
            e.bytes(info);
        }
        Message::SessionDestroy | Message::Ack => {}
        Message::DispChange(c) => match c {
            DispChange::SetDisp { node, handle, set } => {
                e.u8(1);
                e.u32(node.0);
                enc_handle(e, handle);
                e.u64(set.0);
            }
            DispChange::SetEventlist { handle, set } => {
                e.u8(2);
                enc_handle(e, handle);
                e.u64(set.0);
            }
            DispChange::ReturnOnDestroy { handle, name, enable } => {
                e.u8(3);
                enc_handle(e, handle);
                e.raw(&name.an_chars);
                e.u8(*enable as u8);
            }
        },
        Message::DispSpec(s) => {
            e.u64(s.version);
            enc_fsdisp(e, &s.global);
            e.u32(s.fs.len() as u32);
            for (fsid, w) in &s.fs {
                e.u64(fsid.0);
                enc_fsdisp(e, w);
            }
        }
        Message::DispReply { errno } => e.i32(*errno),
        Message::Mount { fs, mounted } => {
            e.u64(fs.0);
            e.u8(*mounted as u8);
        }
        Message::Heartbeat { now_ns } => e.u64(*now_ns),
        Message::Query(q) => match q {
            QueryOp::FindEventmsg { buflen } => {
                e.u8(1);
                e.u64(*buflen);
            }
            QueryOp::GetallTokens { nelem } => {
                e.u8(2);
                e.u64(*nelem);
            }
        },
        Message::QueryReply { errno, needed, data } => {
            e.i32(*errno);
            e.u64(*needed);
            e.bytes(data);
        }
    }
}

fn enc_fsdisp(e: &mut Enc, w: &WireFsDisp) {
    e.u64(w.eventlist.0);
    e.u32(w.routes.len() as u32);
    for r in &w.routes {
        e.u8(r.event);
        e.u32(r.node.0);
        e.i32(r.sid.0);
    }
    match w.return_on_destroy {
        Some((sid, name)) => {
            e.u8(1);
            e.i32(sid.0);
            e.raw(&name.an_chars);
        }
        None => e.u8(0),
    }
}

fn dec_fsdisp(d: &mut Dec<'_>) -> Result<WireFsDisp, WireError> {
    let eventlist = dec_set(d)?;
    let n = d.count(9, "disp count")?;
    let mut routes = Vec::with_capacity(n);
    for _ in 0..n {
        routes.push(WireRoute {
            event: d.u8("disp event")?,
            node: NodeId(d.u32("disp node")?),
            sid: DmSessId(d.i32("disp sid")?),
        });
    }
    let return_on_destroy = match d.u8("rod flag")? {
        0 => None,
        1 => Some((DmSessId(d.i32("rod sid")?), DmAttrName { an_chars: d.raw::<8>("rod name")? })),
        _ => return Err(WireError::Invalid("rod flag")),
    };
    Ok(WireFsDisp { eventlist, routes, return_on_destroy })
}

fn decode_payload(t: MsgType, source: NodeId, d: &mut Dec<'_>) -> Result<Message, WireError> {
    Ok(match t {
        MsgType::Hello => Message::Hello { nonce: d.raw("nonce")? },
        MsgType::Challenge => Message::Challenge { nonce: d.raw("nonce")?, mac: d.raw("mac")? },
        MsgType::Auth => Message::Auth { mac: d.raw("mac")? },
        MsgType::Event => {
            Message::Event { fs: FsId(d.u64("fs")?), sync: dec_bool(d, "sync")?, event: dec_event_body(d, source)? }
        }
        MsgType::EventBatch => {
            let n = d.count(8 + 4 + 1 + 8 + 1 + 4, "batch count")?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(BatchedEvent {
                    seq: d.u64("seq")?,
                    sid: DmSessId(d.i32("sid")?),
                    sync: dec_bool(d, "sync")?,
                    fs: FsId(d.u64("fs")?),
                    event: dec_event_body(d, source)?,
                });
            }
            Message::EventBatch(v)
        }
        MsgType::Response => Message::Response {
            response: dec_response(d)?,
            data: d.bytes(DM_MAX_MESSAGE_DATA, "response data")?.to_vec(),
        },
        MsgType::Pending => Message::Pending { delay_ms: d.u64("delay")? },
        MsgType::SessionCreate => Message::SessionCreate {
            node: NodeId(d.u32("node")?),
            info: d.bytes(DM_SESSION_INFO_LEN, "session info")?.to_vec(),
        },
        MsgType::SessionReclaim => Message::SessionReclaim {
            node: NodeId(d.u32("node")?),
            info: d.bytes(DM_SESSION_INFO_LEN, "session info")?.to_vec(),
        },
        MsgType::SessionDestroy => Message::SessionDestroy,
        MsgType::Ack => Message::Ack,
        MsgType::DispChange => Message::DispChange(match d.u8("disp op")? {
            1 => DispChange::SetDisp { node: NodeId(d.u32("node")?), handle: dec_handle(d)?, set: dec_set(d)? },
            2 => DispChange::SetEventlist { handle: dec_handle(d)?, set: dec_set(d)? },
            3 => DispChange::ReturnOnDestroy {
                handle: dec_handle(d)?,
                name: DmAttrName { an_chars: d.raw("attrname")? },
                enable: dec_bool(d, "enable")?,
            },
            _ => return Err(WireError::Invalid("disp op")),
        }),
        MsgType::DispSpec => {
            let version = d.u64("disp version")?;
            let global = dec_fsdisp(d)?;
            let n = d.count(8 + 8 + 4 + 1, "disp fs count")?;
            let mut fs = Vec::with_capacity(n);
            for _ in 0..n {
                fs.push((FsId(d.u64("fsid")?), dec_fsdisp(d)?));
            }
            Message::DispSpec(DispSpec { version, global, fs })
        }
        MsgType::DispReply => Message::DispReply { errno: d.i32("errno")? },
        MsgType::Mount => Message::Mount { fs: FsId(d.u64("fs")?), mounted: dec_bool(d, "mounted")? },
        MsgType::Heartbeat => Message::Heartbeat { now_ns: d.u64("now")? },
        MsgType::Query => Message::Query(match d.u8("query op")? {
            1 => QueryOp::FindEventmsg { buflen: d.u64("buflen")? },
            2 => QueryOp::GetallTokens { nelem: d.u64("nelem")? },
            _ => return Err(WireError::Invalid("query op")),
        }),
        MsgType::QueryReply => Message::QueryReply {
            errno: d.i32("errno")?,
            needed: d.u64("needed")?,
            data: d.bytes(MAX_PAYLOAD - 16, "query data")?.to_vec(),
        },
    })
}

/// Encodes a frame; a payload above [`MAX_PAYLOAD`] is refused (split the batch).
pub fn encode_frame(f: &Frame) -> Result<Vec<u8>, WireError> {
    let mut e = Enc::new();
    e.buf.resize(HEADER_LEN, 0);
    encode_payload(&mut e, &f.msg);
    let len = e.buf.len() - HEADER_LEN;
    if len > MAX_PAYLOAD {
        return Err(WireError::Oversize { what: "payload", len, max: MAX_PAYLOAD });
    }
    let mut h = MsgHeader::new(f.msg.msg_type() as u8, len as u32, f.source.0, f.seq, f.ref_seq);
    h.flags = U16::new(f.flags);
    h.sid = I32::new(f.sid.0);
    h.token = I32::new(f.token.0);
    h.epoch = U64::new(f.epoch);
    e.buf[..HEADER_LEN].copy_from_slice(&h.to_bytes());
    Ok(e.buf)
}

/// Decodes the frame at the start of `buf`; returns it and the bytes it used.
/// `Incomplete` means: read more and call again. Any other error: drop the peer.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, usize), WireError> {
    let (h, payload, used) = split_frame(buf)?;
    let t = MsgType::from_u8(h.msg_type)?;
    let source = NodeId(h.source_node.get());
    let mut d = Dec::new(payload);
    let msg = decode_payload(t, source, &mut d)?;
    d.finish()?;
    Ok((
        Frame {
            source,
            seq: h.seq.get(),
            ref_seq: h.ref_seq.get(),
            sid: DmSessId(h.sid.get()),
            token: DmToken(h.token.get()),
            flags: h.flags.get(),
            epoch: h.epoch.get(),
            msg,
        },
        used,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disp::DispositionTable;
    use proptest::prelude::*;

    fn arb_handle() -> impl Strategy<Value = DmHandle> {
        prop_oneof![
            any::<u64>().prop_map(|f| DmHandle::fs(FsId(f))),
            (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(f, i, g)| DmHandle::file(FsId(f), i, g)),
        ]
    }

    fn arb_name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..40)
    }

    fn arb_body(t: EventType) -> BoxedStrategy<EventBody> {
        match t.class() {
            EventClass::Data => (arb_handle(), any::<i64>(), any::<u64>())
                .prop_map(|(handle, offset, length)| EventBody::Data { handle, offset, length })
                .boxed(),
            EventClass::Namespace => (
                any::<u32>(),
                proptest::option::of(arb_handle()),
                proptest::option::of(arb_handle()),
                arb_name(),
                arb_name(),
                any::<i32>(),
            )
                .prop_map(|(mode, handle1, handle2, name1, name2, retcode)| EventBody::Namespace {
                    mode,
                    handle1,
                    handle2,
                    name1,
                    name2,
                    retcode,
                })
                .boxed(),
            EventClass::Mount => (
                any::<u32>(),
                arb_handle(),
                proptest::option::of(arb_handle()),
                arb_name(),
                arb_name(),
                proptest::option::of(arb_handle()),
            )
                .prop_map(|(mode, fs_handle, mountpoint_handle, mountpoint_path, media, root_handle)| {
                    EventBody::Mount { mode, fs_handle, mountpoint_handle, mountpoint_path, media, root_handle }
                })
                .boxed(),
            EventClass::Destroy => (arb_handle(), any::<[u8; 8]>(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(handle, an_chars, attrcopy)| EventBody::Destroy {
                    handle,
                    attrname: DmAttrName { an_chars },
                    attrcopy,
                })
                .boxed(),
            EventClass::Cancel => (any::<u32>(), any::<i32>())
                .prop_map(|(sequence, t)| EventBody::Cancel { sequence, token: DmToken(t) })
                .boxed(),
            EventClass::User => {
                proptest::collection::vec(any::<u8>(), 0..200).prop_map(|data| EventBody::User { data }).boxed()
            }
        }
    }

    fn arb_event(source: u32) -> impl Strategy<Value = DmEvent> {
        (0..crate::types::DM_EVENT_MAX as i32).prop_flat_map(move |t| {
            let t = EventType::from_raw(t).unwrap();
            arb_body(t).prop_map(move |body| DmEvent {
                ev_type: t,
                source: NodeId(source),
                token: DM_INVALID_TOKEN,
                sequence: 0,
                body,
            })
        })
    }

    fn arb_response() -> impl Strategy<Value = DmResponse> {
        prop_oneof![Just(DmResponse::Continue), Just(DmResponse::DontCare), (1..4096i32).prop_map(DmResponse::Abort),]
    }

    fn arb_table() -> impl Strategy<Value = DispSpec> {
        proptest::collection::vec((1u64..5, 1u32..4, any::<u64>(), any::<bool>()), 0..6).prop_map(|ops| {
            let mut t = DispositionTable::default();
            for (fs, node, set, rod) in ops {
                let h = DmHandle::fs(FsId(fs));
                let sid = DmSessId::compose(NodeId(node), node).unwrap();
                let mut s = EventSet(set & EventSet::ALL.0);
                s.remove(EventType::User);
                s.remove(EventType::Cancel);
                let _ = t.dm_set_disp(sid, NodeId(node), &h, s);
                let _ = t.dm_set_eventlist(&h, EventSet(set & EventSet::ALL.0));
                let _ = t.dm_set_return_on_destroy(sid, &h, DmAttrName::default(), rod);
            }
            t.to_spec()
        })
    }

    fn arb_message(source: u32) -> impl Strategy<Value = Message> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(|nonce| Message::Hello { nonce }),
            (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(nonce, mac)| Message::Challenge { nonce, mac }),
            any::<[u8; 32]>().prop_map(|mac| Message::Auth { mac }),
            (any::<u64>(), any::<bool>(), arb_event(source))
                .prop_map(|(fs, sync, event)| { Message::Event { fs: FsId(fs), sync, event } }),
            proptest::collection::vec(
                (any::<u64>(), any::<i32>(), any::<bool>(), any::<u64>(), arb_event(source)),
                0..5
            )
            .prop_map(|v| Message::EventBatch(
                v.into_iter()
                    .map(|(seq, sid, sync, fs, event)| BatchedEvent {
                        seq,
                        sid: DmSessId(sid),
                        sync,
                        fs: FsId(fs),
                        event,
                    })
                    .collect()
            )),
            (arb_response(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(response, data)| Message::Response { response, data }),
            any::<u64>().prop_map(|delay_ms| Message::Pending { delay_ms }),
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..256))
                .prop_map(|(n, info)| { Message::SessionCreate { node: NodeId(n), info } }),
            Just(Message::SessionDestroy),
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..256))
                .prop_map(|(n, info)| { Message::SessionReclaim { node: NodeId(n), info } }),
            (any::<u32>(), arb_handle(), any::<u64>()).prop_map(|(n, handle, s)| {
                Message::DispChange(DispChange::SetDisp { node: NodeId(n), handle, set: EventSet(s & EventSet::ALL.0) })
            }),
            (arb_handle(), any::<u64>()).prop_map(|(handle, s)| Message::DispChange(DispChange::SetEventlist {
                handle,
                set: EventSet(s & EventSet::ALL.0)
            })),
            (arb_handle(), any::<[u8; 8]>(), any::<bool>()).prop_map(|(handle, n, enable)| {
                Message::DispChange(DispChange::ReturnOnDestroy { handle, name: DmAttrName { an_chars: n }, enable })
            }),
            arb_table().prop_map(Message::DispSpec),
            (any::<u64>(), any::<bool>()).prop_map(|(f, mounted)| Message::Mount { fs: FsId(f), mounted }),
            Just(Message::Ack),
            any::<u64>().prop_map(|now_ns| Message::Heartbeat { now_ns }),
            any::<u64>().prop_map(|buflen| Message::Query(QueryOp::FindEventmsg { buflen })),
            any::<u64>().prop_map(|nelem| Message::Query(QueryOp::GetallTokens { nelem })),
            (any::<i32>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(errno, needed, data)| Message::QueryReply { errno, needed, data }),
            any::<i32>().prop_map(|errno| Message::DispReply { errno }),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (1u32..100_000).prop_flat_map(|source| {
            (
                (any::<u64>(), any::<u64>(), any::<i32>(), any::<i32>()),
                (any::<u16>(), any::<u64>(), arb_message(source)),
            )
                .prop_map(move |((seq, ref_seq, sid, token), (flags, epoch, msg))| Frame {
                    source: NodeId(source),
                    seq,
                    ref_seq,
                    sid: DmSessId(sid),
                    token: DmToken(token),
                    flags,
                    epoch,
                    msg,
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_message_round_trips(f in arb_frame()) {
            let bytes = encode_frame(&f).unwrap();
            let (back, used) = decode_frame(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, f);
        }

        #[test]
        fn every_prefix_is_incomplete_or_error_never_panic(f in arb_frame(), cut in any::<prop::sample::Index>()) {
            let bytes = encode_frame(&f).unwrap();
            let cut = cut.index(bytes.len());
            prop_assert!(decode_frame(&bytes[..cut]).is_err());
        }

        #[test]
        fn flipped_bytes_never_panic(f in arb_frame(), at in any::<prop::sample::Index>(), x in 1u8..) {
            let mut bytes = encode_frame(&f).unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= x;
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&b);
        }
    }

    #[test]
    fn two_frames_in_one_buffer_decode_in_turn() {
        let a = encode_frame(&Frame::new(NodeId(1), 1, Message::Ack)).unwrap();
        let b = encode_frame(&Frame::new(NodeId(1), 2, Message::Heartbeat { now_ns: 9 })).unwrap();
        let mut buf = a.clone();
        buf.extend_from_slice(&b);
        let (f1, n1) = decode_frame(&buf).unwrap();
        let (f2, n2) = decode_frame(&buf[n1..]).unwrap();
        assert_eq!((f1.seq, f2.seq, n1 + n2), (1, 2, buf.len()));
    }

    #[test]
    fn hostile_lengths_and_values_are_rejected() {
        // Unknown type.
        let mut b = encode_frame(&Frame::new(NodeId(1), 1, Message::Ack)).unwrap();
        b[5] = 200;
        assert_eq!(decode_frame(&b).unwrap_err(), WireError::UnknownType(200));
        // Trailing payload bytes.
        let mut h = MsgHeader::new(MsgType::Ack as u8, 1, 1, 1, 0).to_bytes().to_vec();
        h.push(0);
        assert_eq!(decode_frame(&h).unwrap_err(), WireError::Trailing(1));
        // A user event claiming 4 GiB of data.
        let mut e = Enc::new();
        e.u64(0);
        e.u8(0);
        e.u8(EventType::User as u8);
        e.u32(u32::MAX);
        let mut f = MsgHeader::new(MsgType::Event as u8, e.buf.len() as u32, 1, 1, 0).to_bytes().to_vec();
        f.extend_from_slice(&e.buf);
        assert!(matches!(decode_frame(&f).unwrap_err(), WireError::Oversize { .. }));
        // A batch claiming a billion events in a few bytes.
        let mut e = Enc::new();
        e.u32(1_000_000_000);
        let mut f = MsgHeader::new(MsgType::EventBatch as u8, 4, 1, 1, 0).to_bytes().to_vec();
        f.extend_from_slice(&e.buf);
        assert!(matches!(decode_frame(&f).unwrap_err(), WireError::Oversize { .. }));
        // ABORT without an errno.
        let mut e = Enc::new();
        e.i32(2);
        e.i32(0);
        e.u32(0);
        let mut f = MsgHeader::new(MsgType::Response as u8, e.buf.len() as u32, 1, 1, 0).to_bytes().to_vec();
        f.extend_from_slice(&e.buf);
        assert_eq!(decode_frame(&f).unwrap_err(), WireError::Invalid("response"));
        // A name with a NUL in it.
        let ev = DmEvent::new(
            EventType::Create,
            NodeId(1),
            EventBody::Namespace {
                mode: 0,
                handle1: None,
                handle2: None,
                name1: b"ab".to_vec(),
                name2: vec![],
                retcode: 0,
            },
        )
        .unwrap();
        let mut bytes =
            encode_frame(&Frame::new(NodeId(1), 1, Message::Event { fs: FsId(1), sync: true, event: ev })).unwrap();
        let at = bytes.windows(2).position(|w| w == b"ab").unwrap();
        bytes[at] = 0;
        assert_eq!(decode_frame(&bytes).unwrap_err(), WireError::Invalid("event"));
    }

    #[test]
    fn oversize_frames_are_refused_at_encode() {
        let big = BatchedEvent {
            seq: 1,
            sid: DmSessId(1),
            sync: false,
            fs: FsId(1),
            event: DmEvent::new(EventType::User, NodeId(1), EventBody::User { data: vec![0; DM_MAX_MESSAGE_DATA] })
                .unwrap(),
        };
        let f = Frame::new(NodeId(1), 1, Message::EventBatch(vec![big; 20]));
        assert!(matches!(encode_frame(&f).unwrap_err(), WireError::Oversize { .. }));
    }

    #[test]
    fn engine_messages_map_to_frames() {
        use crate::session::Outbound;
        use crate::source::OutEvent;
        use crate::wire::FLAG_RESEND;
        use std::time::Duration;
        let sid = DmSessId::compose(NodeId(1), 1).unwrap();
        let (to, f) = Outbound::to_frame(
            &Outbound::Response {
                to: NodeId(2),
                sid,
                ref_seq: 77,
                token: DmToken(5),
                response: DmResponse::Abort(1),
                data: vec![],
            },
            NodeId(1),
            9,
            NodeId(3),
        );
        assert_eq!((to, f.ref_seq, f.sid, f.token, f.seq), (NodeId(2), 77, sid, DmToken(5), 9));
        let (to, f) = Outbound::to_frame(
            &Outbound::Pending { to: NodeId(2), sid, ref_seq: 77, token: DmToken(5), delay: Duration::from_secs(2) },
            NodeId(1),
            10,
            NodeId(3),
        );
        assert_eq!((to, f.msg), (NodeId(2), Message::Pending { delay_ms: 2000 }));
        let (to, f) =
            Outbound::to_frame(&Outbound::SessionCreated { sid, info: b"i".to_vec() }, NodeId(1), 11, NodeId(3));
        assert_eq!(to, NodeId(3));
        assert_eq!(f.msg, Message::SessionCreate { node: NodeId(1), info: b"i".to_vec() });
        let (_, f) = Outbound::to_frame(&Outbound::SessionDestroyed { sid }, NodeId(1), 12, NodeId(3));
        assert_eq!((f.sid, f.msg), (sid, Message::SessionDestroy));
        let ev = DmEvent::new(EventType::User, NodeId(4), EventBody::User { data: vec![] }).unwrap();
        let f = OutEvent::to_frame(&OutEvent {
            to: NodeId(1),
            sid,
            seq: 5,
            sync: true,
            fs: FsId(0),
            event: ev,
            resend: true,
        });
        assert_eq!((f.source, f.seq, f.sid, f.flags), (NodeId(4), 5, sid, FLAG_RESEND));
    }

    #[test]
    fn b12_event_source_is_the_frame_source() {
        let ev = DmEvent::new(EventType::User, NodeId(9), EventBody::User { data: vec![1] }).unwrap();
        let bytes =
            encode_frame(&Frame::new(NodeId(9), 1, Message::Event { fs: FsId(0), sync: false, event: ev })).unwrap();
        let (f, _) = decode_frame(&bytes).unwrap();
        match f.msg {
            Message::Event { event, .. } => assert_eq!(event.source, NodeId(9)),
            _ => panic!("wrong message"),
        }
    }
}
