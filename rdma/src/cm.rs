//! RDMA CM connections: listen, connect, accept or reject with private
//! data, a reliable-connected queue pair per connection, posting, polling
//! and disconnect.
//!
//! Each [`Connection`] has its own CM event channel (accepted ids are
//! migrated off the listener's), one completion queue for both work queues
//! and a completion channel, so a connection can busy-poll on the hot path
//! or sleep in [`Connection::wait`] until a completion or a CM event (a
//! peer's disconnect) arrives. Resources are made before the handshake
//! ([`Connection::resolve`], [`ConnectRequest::prepare`]) so receives can
//! be posted before the peer can send.
//!
//! Teardown: a peer that dies or disconnects shows up as a
//! [`CmEventKind::Disconnected`] event; [`Connection::shutdown`] then moves
//! the queue pair to the error state, collects every outstanding work
//! request's (flush) completion and leaves nothing posted. Dropping a
//! connection does the same without waiting.
//!
//! ```no_run
//! use rdma::cm::{Listener, QpConfig};
//! use std::time::Duration;
//! let l = Listener::bind("10.0.2.15:7471".parse().unwrap(), 16)?;
//! let req = l.next_request(None)?;
//! if req.private_data().starts_with(b"v1") {
//!     let mut conn = req.prepare(&QpConfig::default(), None)?;
//!     conn.accept(b"welcome", Some(Duration::from_secs(5)))?;
//! } else {
//!     req.reject(b"unsupported version")?;
//! }
//! # Ok::<(), rdma::Error>(())
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_sys as sys;

use crate::verbs::{
    self, Completion, CompletionChannel, CompletionQueue, Context, MemoryRegion, ProtectionDomain, RemoteRegion,
    WorkQueue, RECV_TAG,
};
use crate::{Error, Result};

/// Private data RDMA CM carries in a connect request on RoCE/InfiniBand
/// (the REQ's 92 bytes less librdmacm's 36-byte header). Accept and reject
/// carry more, but this is the bound both directions can rely on.
pub const MAX_CONNECT_PRIVATE_DATA: usize = 56;
/// The bound on accept (REP) and reject (REJ) private data here.
pub const MAX_ACCEPT_PRIVATE_DATA: usize = 148;

/// A CM event channel with a non-blocking fd.
struct EventChannel {
    raw: NonNull<sys::rdma_event_channel>,
}

// SAFETY: librdmacm channels are fds plus bookkeeping guarded internally.
unsafe impl Send for EventChannel {}
// SAFETY: as above.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    fn new() -> Result<Arc<EventChannel>> {
        // SAFETY: no arguments; NULL on failure.
        let raw = unsafe { sys::rdma_create_event_channel() };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("rdma_create_event_channel"))?;
        let ch = EventChannel { raw };
        verbs::set_nonblocking(ch.fd(), "fcntl(cm channel)")?;
        Ok(Arc::new(ch))
    }

    fn fd(&self) -> RawFd {
        // SAFETY: live until Drop.
        unsafe { (*self.raw.as_ptr()).fd }
    }

    /// The next event, copied out and acknowledged at once (so destroying
    /// or migrating an id never blocks on an unacked event). None when
    /// nothing is pending.
    fn try_next(&self) -> Result<Option<CmEvent>> {
        let mut ev: *mut sys::rdma_cm_event = std::ptr::null_mut();
        // SAFETY: out-pointer valid; the fd is non-blocking.
        let rc = unsafe { sys::rdma_get_cm_event(self.raw.as_ptr(), &mut ev) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::Os { op: "rdma_get_cm_event", source: e });
        }
        // SAFETY: ev is a valid event until rdma_ack_cm_event; the private
        // data pointer/length describe memory inside it.
        let out = unsafe {
            let e = &*ev;
            let conn = &e.param.conn;
            let private_data = if conn.private_data.is_null() || conn.private_data_len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(conn.private_data.cast::<u8>(), conn.private_data_len as usize).to_vec()
            };
            CmEvent {
                kind: CmEventKind::from_raw(e.event),
                status: e.status,
                private_data,
                initiator_depth: conn.initiator_depth,
                responder_resources: conn.responder_resources,
                id: e.id,
            }
        };
        // SAFETY: ev came from rdma_get_cm_event and is acked exactly once.
        unsafe { sys::rdma_ack_cm_event(ev) };
        tracing::debug!(event = %out.kind, status = out.status, "rdma cm event");
        Ok(Some(out))
    }

    fn next(&self, timeout: Option<Duration>, what: &'static str) -> Result<CmEvent> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(ev) = self.try_next()? {
                return Ok(ev);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(Error::Timeout { after: timeout.unwrap_or_default(), what });
            }
            verbs::wait_readable(&[self.fd()], left)?;
        }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every id on this channel holds an Arc to it, so all are
        // destroyed; all events were acked in try_next.
        unsafe { sys::rdma_destroy_event_channel(self.raw.as_ptr()) };
    }
}

/// An owned `rdma_cm_id`; destroyed on drop (after everything made on its
/// device context, which hold it through [`Context`]'s keep-alive).
struct CmId {
    raw: NonNull<sys::rdma_cm_id>,
    // Dropped after the id, as rdma_destroy_event_channel requires.
    _channel: Arc<EventChannel>,
}

// SAFETY: librdmacm ids may be used from any thread; this wrapper only
// destroys it.
unsafe impl Send for CmId {}
// SAFETY: as above.
unsafe impl Sync for CmId {}

impl CmId {
    fn create(channel: &Arc<EventChannel>) -> Result<Arc<CmId>> {
        let mut id = std::ptr::null_mut();
        // SAFETY: channel is live; out-pointer valid; RC needs RDMA_PS_TCP.
        let rc = unsafe {
            sys::rdma_create_id(channel.raw.as_ptr(), &mut id, std::ptr::null_mut(), sys::rdma_port_space::RDMA_PS_TCP)
        };
        if rc != 0 {
            return Err(Error::last_os("rdma_create_id"));
        }
        let raw = NonNull::new(id).ok_or_else(|| Error::Invalid("rdma_create_id returned NULL".into()))?;
        Ok(Arc::new(CmId { raw, _channel: channel.clone() }))
    }

    fn raw(&self) -> *mut sys::rdma_cm_id {
        self.raw.as_ptr()
    }

    /// The same id, now reporting on `channel` (after rdma_migrate_id):
    /// the old channel reference is released, the id is not destroyed.
    fn rehome(self, channel: Arc<EventChannel>) -> CmId {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped or used again, so moving its Arc
        // out (and dropping it) happens exactly once.
        let old_channel: Arc<EventChannel> = unsafe { std::ptr::read(&me._channel) };
        drop(old_channel);
        CmId { raw: me.raw, _channel: channel }
    }

    fn verbs(&self) -> *mut sys::ibv_context {
        // SAFETY: live id; verbs is set once bound to a device.
        unsafe { (*self.raw.as_ptr()).verbs }
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the QP on this id was destroyed by its Connection (which
        // holds this Arc); all its events were acked.
        let rc = unsafe { sys::rdma_destroy_id(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::error!(error = %std::io::Error::last_os_error(), "rdma_destroy_id");
        }
    }
}

/// RDMA CM event types (`enum rdma_cm_event_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmEventKind {
    AddrResolved,
    AddrError,
    RouteResolved,
    RouteError,
    ConnectRequest,
    ConnectResponse,
    ConnectError,
    Unreachable,
    Rejected,
    Established,
    Disconnected,
    DeviceRemoval,
    TimewaitExit,
    AddrChange,
    Other(u32),
}

impl CmEventKind {
    fn from_raw(t: u32) -> CmEventKind {
        use sys::rdma_cm_event_type as t_;
        match t {
            t_::RDMA_CM_EVENT_ADDR_RESOLVED => CmEventKind::AddrResolved,
            t_::RDMA_CM_EVENT_ADDR_ERROR => CmEventKind::AddrError,
            t_::RDMA_CM_EVENT_ROUTE_RESOLVED => CmEventKind::RouteResolved,
            t_::RDMA_CM_EVENT_ROUTE_ERROR => CmEventKind::RouteError,
            t_::RDMA_CM_EVENT_CONNECT_REQUEST => CmEventKind::ConnectRequest,
            t_::RDMA_CM_EVENT_CONNECT_RESPONSE => CmEventKind::ConnectResponse,
            t_::RDMA_CM_EVENT_CONNECT_ERROR => CmEventKind::ConnectError,
            t_::RDMA_CM_EVENT_UNREACHABLE => CmEventKind::Unreachable,
            t_::RDMA_CM_EVENT_REJECTED => CmEventKind::Rejected,
            t_::RDMA_CM_EVENT_ESTABLISHED => CmEventKind::Established,
            t_::RDMA_CM_EVENT_DISCONNECTED => CmEventKind::Disconnected,
            t_::RDMA_CM_EVENT_DEVICE_REMOVAL => CmEventKind::DeviceRemoval,
            t_::RDMA_CM_EVENT_TIMEWAIT_EXIT => CmEventKind::TimewaitExit,
            t_::RDMA_CM_EVENT_ADDR_CHANGE => CmEventKind::AddrChange,
            other => CmEventKind::Other(other),
        }
    }
}

impl fmt::Display for CmEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One CM event, copied out of librdmacm's (already acknowledged) event.
#[derive(Debug, Clone)]
pub struct CmEvent {
    pub kind: CmEventKind,
    /// Negative errno, or the reject reason for `Rejected`.
    pub status: i32,
    /// Private data as the transport delivered it: InfiniBand CM pads it
    /// to the message's full size, so protocols carry their own lengths.
    pub private_data: Vec<u8>,
    /// RDMA READ depths as RDMA CM reports them to this side: for a
    /// connect request, `initiator_depth` is how many READs we may issue
    /// (the peer's responder resources) and `responder_resources` how many
    /// the peer will issue to us.
    pub initiator_depth: u8,
    pub responder_resources: u8,
    id: *mut sys::rdma_cm_id,
}

fn expect(ev: CmEvent, want: CmEventKind, what: &'static str) -> Result<CmEvent> {
    if ev.kind == want && ev.status == 0 {
        return Ok(ev);
    }
    if ev.kind == CmEventKind::Rejected {
        return Err(Error::Rejected { status: ev.status, private_data: ev.private_data });
    }
    Err(Error::UnexpectedEvent { want: what, got: ev.kind.to_string(), status: ev.status })
}

/// A socket address as librdmacm wants it.
fn sockaddr(addr: &SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

/// Most work requests [`Connection::post_send_list`] takes at once.
pub const MAX_SEND_LIST: usize = 4;

/// A send-queue work request for [`Connection::post_send_list`].
#[derive(Debug, Clone)]
pub enum SendWr<'a> {
    /// SEND `range` of `mr`; with `invalidate`, SEND with Invalidate of
    /// the peer's rkey.
    Send { wr_id: u64, mr: &'a MemoryRegion, range: Range<usize>, invalidate: Option<u32> },
    /// RDMA WRITE `range` of `mr` to `remote` (as long as the range).
    Write { wr_id: u64, mr: &'a MemoryRegion, range: Range<usize>, remote: RemoteRegion },
}

/// Queue pair sizes and RDMA READ depth.
#[derive(Debug, Clone)]
pub struct QpConfig {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_sge: u32,
    pub max_inline_data: u32,
    /// Outstanding RDMA READs in each direction (initiator depth and
    /// responder resources); 0 forbids READ.
    pub max_rd_atomic: u8,
}

impl Default for QpConfig {
    fn default() -> Self {
        QpConfig { max_send_wr: 64, max_recv_wr: 64, max_sge: 1, max_inline_data: 64, max_rd_atomic: 4 }
    }
}

/// A listening RDMA CM id.
pub struct Listener {
    id: Arc<CmId>,
    channel: Arc<EventChannel>,
}

impl Listener {
    /// Bind to `addr` (its IP selects the device; port 0 picks one) and
    /// listen.
    pub fn bind(addr: SocketAddr, backlog: i32) -> Result<Listener> {
        let channel = EventChannel::new()?;
        let id = CmId::create(&channel)?;
        let mut ss = sockaddr(&addr);
        // SAFETY: id is live; ss is a valid sockaddr for its family.
        if unsafe { sys::rdma_bind_addr(id.raw(), (&mut ss as *mut libc::sockaddr_storage).cast()) } != 0 {
            return Err(Error::last_os("rdma_bind_addr"));
        }
        // SAFETY: id is bound.
        if unsafe { sys::rdma_listen(id.raw(), backlog) } != 0 {
            return Err(Error::last_os("rdma_listen"));
        }
        let l = Listener { id, channel };
        tracing::info!(%addr, port = l.port(), "rdma listening");
        Ok(l)
    }

    /// The bound port (useful after binding port 0).
    pub fn port(&self) -> u16 {
        // SAFETY: live id; returns the port in network order.
        u16::from_be(unsafe { sys::rdma_get_src_port(self.id.raw()) })
    }

    /// A protection domain on the listener's device, for memory shared by
    /// all its connections (pass it to [`ConnectRequest::prepare`]). It
    /// keeps the listening id alive, not any connection's. Needs a listener
    /// bound to a device's address, not a wildcard.
    pub fn protection_domain(&self) -> Result<ProtectionDomain> {
        if self.id.verbs().is_null() {
            return Err(Error::Invalid(
                "a listener on a wildcard address has no device; bind to the device's IP".into(),
            ));
        }
        let keep: Arc<dyn Send + Sync> = self.id.clone();
        ProtectionDomain::new(&Context::borrowed(self.id.verbs(), keep)?)
    }

    /// Fd that becomes readable when a request may be pending (for event loops).
    pub fn fd(&self) -> RawFd {
        self.channel.fd()
    }

    /// Wait for the next connect request. Events for ids not yet migrated
    /// off this channel (a requester giving up) are logged and skipped.
    pub fn next_request(&self, timeout: Option<Duration>) -> Result<ConnectRequest> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ev = self.channel.next(left, "a connect request")?;
            match ev.kind {
                CmEventKind::ConnectRequest => {
                    let raw = NonNull::new(ev.id).ok_or_else(|| Error::Invalid("connect request without id".into()))?;
                    // The new id reports on our channel until prepare() migrates it.
                    let id = Arc::new(CmId { raw, _channel: self.channel.clone() });
                    return Ok(ConnectRequest {
                        id: Some(id),
                        private_data: ev.private_data,
                        initiator_depth: ev.initiator_depth,
                        responder_resources: ev.responder_resources,
                    });
                }
                other => tracing::warn!(event = %other, status = ev.status, "listener: ignoring event"),
            }
        }
    }
}

/// A peer's connect request, to [`prepare`](Self::prepare) and accept, or
/// to [`reject`](Self::reject). Dropping it rejects without private data.
pub struct ConnectRequest {
    id: Option<Arc<CmId>>,
    private_data: Vec<u8>,
    initiator_depth: u8,
    responder_resources: u8,
}

impl ConnectRequest {
    /// The requester's private data (padded by the transport).
    pub fn private_data(&self) -> &[u8] {
        &self.private_data
    }

    /// RDMA READs we may have outstanding toward the requester (RDMA CM
    /// reports the requester's responder resources from our side):
    /// accepting with a larger [`QpConfig::max_rd_atomic`] would overrun it.
    pub fn initiator_depth(&self) -> u8 {
        self.initiator_depth
    }

    /// RDMA READs the requester will issue to us at once (its initiator depth).
    pub fn responder_resources(&self) -> u8 {
        self.responder_resources
    }

    /// Refuse the connection, telling the peer why in `private_data`.
    pub fn reject(mut self, private_data: &[u8]) -> Result<()> {
        let id = self.id.take().expect("present until consumed");
        reject_id(&id, private_data)
    }

    /// Make the connection's queue pair and completion queue (on `pd`, or
    /// a new protection domain) so receives can be posted, then
    /// [`Connection::accept`].
    pub fn prepare(mut self, cfg: &QpConfig, pd: Option<&ProtectionDomain>) -> Result<Connection> {
        let old = self.id.take().expect("present until consumed");
        let channel = EventChannel::new()?;
        // SAFETY: the id and the new channel are live; no event of this id
        // is unacked (we ack on receipt), so migrate does not block.
        if unsafe { sys::rdma_migrate_id(old.raw(), channel.raw.as_ptr()) } != 0 {
            let e = Error::last_os("rdma_migrate_id");
            let _ = reject_id(&old, &[]);
            return Err(e);
        }
        let Ok(old) = Arc::try_unwrap(old) else {
            return Err(Error::Invalid("a connect request's id is shared".into()));
        };
        let id = Arc::new(old.rehome(channel.clone()));
        Connection::build(id.clone(), channel, cfg, pd, Role::Passive).inspect_err(|_| {
            // Tell the peer now instead of leaving it to time out.
            let _ = reject_id(&id, &[]);
        })
    }
}

fn reject_id(id: &CmId, private_data: &[u8]) -> Result<()> {
    if private_data.len() > MAX_ACCEPT_PRIVATE_DATA {
        return Err(Error::PrivateDataTooLong { len: private_data.len(), max: MAX_ACCEPT_PRIVATE_DATA });
    }
    let (p, n) =
        if private_data.is_empty() { (std::ptr::null(), 0) } else { (private_data.as_ptr(), private_data.len()) };
    // SAFETY: live id with a pending request; p/n describe a valid buffer
    // librdmacm copies before returning.
    if unsafe { sys::rdma_reject(id.raw(), p.cast(), n as u8) } != 0 {
        return Err(Error::last_os("rdma_reject"));
    }
    Ok(())
}

impl Drop for ConnectRequest {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            if let Err(e) = reject_id(&id, &[]) {
                tracing::warn!(error = %e, "rejecting a dropped connect request");
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Active,
    Passive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Resources made, handshake not done.
    Prepared,
    Connected,
    /// rdma_disconnect called or the peer's disconnect seen: the QP is in
    /// (or headed for) the error state and posted work flushes.
    Disconnected,
}

/// What [`Connection::wait`] woke up for.
#[derive(Debug)]
pub enum Wake {
    /// This many completions were written to the output slice.
    Completions(usize),
    /// A CM event on this connection (a `Disconnected` one means the peer
    /// is gone or leaving: call [`Connection::shutdown`]).
    Event(CmEvent),
    Timeout,
}

/// What [`Connection::prepare_sleep`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sleep {
    /// This many completions arrived and were written out: no sleep.
    Ready(usize),
    /// Wait for these (completion channel, CM event channel).
    Fds([RawFd; 2]),
}

/// Counts of what [`Connection::shutdown`] collected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    pub flushed: usize,
    pub succeeded: usize,
    /// Other error completions (retry exceeded and the like).
    pub failed: usize,
    /// Outstanding when the timeout hit (0 unless the device misbehaves).
    pub left: usize,
}

/// A reliable-connected queue pair managed by RDMA CM.
pub struct Connection {
    // Field order is drop order after Drop::drop has destroyed the QP: CQ
    // before its channel, protection domain, then the id and its channel.
    cq: CompletionQueue,
    comp: Arc<CompletionChannel>,
    pd: ProtectionDomain,
    id: Arc<CmId>,
    channel: Arc<EventChannel>,
    qp: NonNull<sys::ibv_qp>,
    role: Role,
    state: State,
    cfg: QpConfig,
    peer_private_data: Vec<u8>,
    outstanding_send: usize,
    outstanding_recv: usize,
    device: String,
}

// SAFETY: every handle is owned by this connection; verbs and CM calls are
// thread-safe, and &mut self serialises posting and polling.
unsafe impl Send for Connection {}

impl Connection {
    /// Resolve `addr` and make the queue pair, ready for receives to be
    /// posted and for [`connect`](Self::connect).
    pub fn resolve(addr: SocketAddr, cfg: &QpConfig, timeout: Option<Duration>) -> Result<Connection> {
        Self::resolve_on(addr, cfg, None, timeout)
    }

    /// As [`resolve`](Self::resolve), using an existing protection domain
    /// (which must be on the device the route goes through).
    pub fn resolve_on(
        addr: SocketAddr,
        cfg: &QpConfig,
        pd: Option<&ProtectionDomain>,
        timeout: Option<Duration>,
    ) -> Result<Connection> {
        let channel = EventChannel::new()?;
        let id = CmId::create(&channel)?;
        let ms = timeout.map_or(5000, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
        let mut dst = sockaddr(&addr);
        // SAFETY: live id; dst valid; NULL source means "route decides".
        let rc = unsafe {
            sys::rdma_resolve_addr(id.raw(), std::ptr::null_mut(), (&mut dst as *mut libc::sockaddr_storage).cast(), ms)
        };
        if rc != 0 {
            return Err(Error::last_os("rdma_resolve_addr"));
        }
        expect(channel.next(timeout, "address resolution")?, CmEventKind::AddrResolved, "ADDR_RESOLVED")?;
        // SAFETY: address resolved on a live id.
        if unsafe { sys::rdma_resolve_route(id.raw(), ms) } != 0 {
            return Err(Error::last_os("rdma_resolve_route"));
        }
        expect(channel.next(timeout, "route resolution")?, CmEventKind::RouteResolved, "ROUTE_RESOLVED")?;
        Connection::build(id, channel, cfg, pd, Role::Active)
    }

    fn build(
        id: Arc<CmId>,
        channel: Arc<EventChannel>,
        cfg: &QpConfig,
        pd: Option<&ProtectionDomain>,
        role: Role,
    ) -> Result<Connection> {
        let keep: Arc<dyn Send + Sync> = id.clone();
        let ctx = Context::borrowed(id.verbs(), keep)?;
        let pd = match pd {
            Some(pd) if pd.context().raw() == ctx.raw() => pd.clone(),
            Some(pd) => {
                return Err(Error::Invalid(format!(
                    "protection domain is on {} but the connection is on {}",
                    pd.context().device_name(),
                    ctx.device_name()
                )))
            }
            None => ProtectionDomain::new(&ctx)?,
        };
        let comp = CompletionChannel::new(&ctx)?;
        let cq = CompletionQueue::new(&ctx, cfg.max_send_wr + cfg.max_recv_wr, Some(comp.clone()))?;
        // SAFETY: all-zero is valid for this plain C struct (NULL pointers,
        // zero counts); the fields that matter are set below.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.raw();
        init.recv_cq = cq.raw();
        init.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        init.cap.max_send_wr = cfg.max_send_wr;
        init.cap.max_recv_wr = cfg.max_recv_wr;
        init.cap.max_send_sge = cfg.max_sge;
        init.cap.max_recv_sge = cfg.max_sge;
        init.cap.max_inline_data = cfg.max_inline_data;
        // SAFETY: id is bound to the device of pd and cq; init is valid for
        // the call; the QP is destroyed in Drop before cq and pd go.
        if unsafe { sys::rdma_create_qp(id.raw(), pd.raw(), &mut init) } != 0 {
            return Err(Error::last_os("rdma_create_qp"));
        }
        // SAFETY: rdma_create_qp succeeded, so id->qp is set.
        let qp = NonNull::new(unsafe { (*id.raw()).qp })
            .ok_or_else(|| Error::Invalid("rdma_create_qp left no QP".into()))?;
        let device = ctx.device_name();
        tracing::debug!(%device, ?role, "rdma queue pair created");
        // RDMA CM picks the device from the IP route; say so when that is
        // not the one the operator named.
        if let Ok(wanted) = std::env::var(crate::DEVICE_ENV) {
            if !wanted.is_empty() && wanted != device {
                tracing::warn!(%device, %wanted, "connection runs over another device than {}", crate::DEVICE_ENV);
            }
        }
        Ok(Connection {
            cq,
            comp,
            pd,
            id,
            channel,
            qp,
            role,
            state: State::Prepared,
            cfg: cfg.clone(),
            peer_private_data: Vec::new(),
            outstanding_send: 0,
            outstanding_recv: 0,
            device,
        })
    }

    fn conn_param(&self, private_data: &[u8]) -> sys::rdma_conn_param {
        sys::rdma_conn_param {
            private_data: if private_data.is_empty() { std::ptr::null() } else { private_data.as_ptr().cast() },
            private_data_len: private_data.len() as u8,
            responder_resources: self.cfg.max_rd_atomic,
            initiator_depth: self.cfg.max_rd_atomic,
            flow_control: 1,
            // Transport retries before a send to a silent peer fails.
            retry_count: 7,
            // 7 = retry forever on "receiver not ready": a peer that is slow
            // to re-post receives delays us rather than breaking the QP.
            rnr_retry_count: 7,
            srq: 0,
            qp_num: 0,
        }
    }

    /// Active side: connect with `private_data`; returns the private data
    /// the peer accepted with. A rejection is [`Error::Rejected`] with the
    /// peer's reason.
    pub fn connect(&mut self, private_data: &[u8], timeout: Option<Duration>) -> Result<Vec<u8>> {
        if self.role != Role::Active || self.state != State::Prepared {
            return Err(Error::Invalid("connect on a connection that is not freshly resolved".into()));
        }
        if private_data.len() > MAX_CONNECT_PRIVATE_DATA {
            return Err(Error::PrivateDataTooLong { len: private_data.len(), max: MAX_CONNECT_PRIVATE_DATA });
        }
        let mut param = self.conn_param(private_data);
        // SAFETY: live id with a QP; param and its private data live across
        // the call (librdmacm copies them).
        if unsafe { sys::rdma_connect(self.id.raw(), &mut param) } != 0 {
            return Err(Error::last_os("rdma_connect"));
        }
        let ev =
            expect(self.channel.next(timeout, "connection establishment")?, CmEventKind::Established, "ESTABLISHED")?;
        self.state = State::Connected;
        self.peer_private_data = ev.private_data.clone();
        tracing::info!(device = %self.device, "rdma connected");
        Ok(ev.private_data)
    }

    /// Passive side: accept with `private_data` and wait until established.
    pub fn accept(&mut self, private_data: &[u8], timeout: Option<Duration>) -> Result<()> {
        if self.role != Role::Passive || self.state != State::Prepared {
            return Err(Error::Invalid("accept on a connection that is not a prepared request".into()));
        }
        if private_data.len() > MAX_ACCEPT_PRIVATE_DATA {
            return Err(Error::PrivateDataTooLong { len: private_data.len(), max: MAX_ACCEPT_PRIVATE_DATA });
        }
        let mut param = self.conn_param(private_data);
        // SAFETY: live id with a pending request and a QP; param valid.
        if unsafe { sys::rdma_accept(self.id.raw(), &mut param) } != 0 {
            return Err(Error::last_os("rdma_accept"));
        }
        expect(self.channel.next(timeout, "connection establishment")?, CmEventKind::Established, "ESTABLISHED")?;
        self.state = State::Connected;
        tracing::info!(device = %self.device, "rdma accepted");
        Ok(())
    }

    /// Passive side: refuse a prepared request after all, telling the peer
    /// why in `private_data` (resources for it could not be made).
    pub fn reject(self, private_data: &[u8]) -> Result<()> {
        if self.role != Role::Passive || self.state != State::Prepared {
            return Err(Error::Invalid("reject on a connection that is not a prepared request".into()));
        }
        reject_id(&self.id, private_data)
    }

    /// The private data the peer accepted with (active side).
    pub fn peer_private_data(&self) -> &[u8] {
        &self.peer_private_data
    }

    /// The protection domain the queue pair is on: register buffers here.
    pub fn pd(&self) -> &ProtectionDomain {
        &self.pd
    }

    /// The device the connection runs over (`rxe0`).
    pub fn device_name(&self) -> &str {
        &self.device
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Work requests posted and not yet completed, (send, recv).
    pub fn outstanding(&self) -> (usize, usize) {
        (self.outstanding_send, self.outstanding_recv)
    }

    fn check_mr(&self, mr: &MemoryRegion) -> Result<()> {
        if mr.pd().raw() != self.pd.raw() {
            return Err(Error::Invalid("memory region is on another protection domain".into()));
        }
        Ok(())
    }

    fn check_wr_id(wr_id: u64) -> Result<()> {
        if wr_id & RECV_TAG != 0 {
            return Err(Error::Invalid(format!("wr_id {wr_id:#x} uses the reserved top bit")));
        }
        Ok(())
    }

    /// Post a receive into `range` of `mr`.
    pub fn post_recv(&mut self, wr_id: u64, mr: &MemoryRegion, range: Range<usize>) -> Result<()> {
        Self::check_wr_id(wr_id)?;
        self.check_mr(mr)?;
        if self.outstanding_recv >= self.cfg.max_recv_wr as usize {
            return Err(Error::QueueFull { queue: "receive", depth: self.outstanding_recv });
        }
        let mut sge = mr.sge(range)?;
        let mut wr =
            sys::ibv_recv_wr { wr_id: wr_id | RECV_TAG, next: std::ptr::null_mut(), sg_list: &mut sge, num_sge: 1 };
        let mut bad = std::ptr::null_mut();
        // SAFETY: live QP; wr and sge are valid for the call (the provider
        // copies them); the buffer stays registered until mr drops, and a
        // receive into a deregistered region fails rather than corrupting.
        let rc = unsafe { sys::ibv_post_recv(self.qp.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::errno("ibv_post_recv", rc));
        }
        self.outstanding_recv += 1;
        Ok(())
    }

    fn post_send_wr(&mut self, wr: &mut sys::ibv_send_wr) -> Result<()> {
        if self.outstanding_send >= self.cfg.max_send_wr as usize {
            return Err(Error::QueueFull { queue: "send", depth: self.outstanding_send });
        }
        // Every send is signaled so each posted request has exactly one
        // completion to count (flushes included).
        wr.send_flags |= sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        let mut bad = std::ptr::null_mut();
        // SAFETY: live QP; wr and its sg_list are valid for the call.
        let rc = unsafe { sys::ibv_post_send(self.qp.as_ptr(), wr, &mut bad) };
        if rc != 0 {
            return Err(Error::errno("ibv_post_send", rc));
        }
        self.outstanding_send += 1;
        Ok(())
    }

    fn send_wr(wr_id: u64, opcode: u32, sge: &mut sys::ibv_sge) -> sys::ibv_send_wr {
        // SAFETY: all-zero is valid for ibv_send_wr (NULL pointers, zero
        // unions).
        let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = sge;
        wr.num_sge = 1;
        wr.opcode = opcode;
        wr
    }

    /// Send `range` of `mr` to the peer's next posted receive.
    pub fn post_send(&mut self, wr_id: u64, mr: &MemoryRegion, range: Range<usize>) -> Result<()> {
        Self::check_wr_id(wr_id)?;
        self.check_mr(mr)?;
        let mut sge = mr.sge(range)?;
        let mut wr = Self::send_wr(wr_id, sys::ibv_wr_opcode::IBV_WR_SEND, &mut sge);
        if sge.length <= self.cfg.max_inline_data {
            // Small messages go inline: the CPU copies them into the WQE,
            // saving the device a DMA read (the latency path of DM events).
            wr.send_flags |= sys::ibv_send_flags::IBV_SEND_INLINE.0;
        }
        self.post_send_wr(&mut wr)
    }

    /// Send `range` of `mr` and invalidate the peer's `rkey` with it (SEND
    /// with Invalidate), so the peer need not post its own invalidation.
    pub fn post_send_invalidate(
        &mut self,
        wr_id: u64,
        mr: &MemoryRegion,
        range: Range<usize>,
        rkey: u32,
    ) -> Result<()> {
        Self::check_wr_id(wr_id)?;
        self.check_mr(mr)?;
        let mut sge = mr.sge(range)?;
        let mut wr = Self::send_wr(wr_id, sys::ibv_wr_opcode::IBV_WR_SEND_WITH_INV, &mut sge);
        wr.imm_data_invalidated_rkey_union = sys::imm_data_invalidated_rkey_union_t { invalidated_rkey: rkey };
        if sge.length <= self.cfg.max_inline_data {
            wr.send_flags |= sys::ibv_send_flags::IBV_SEND_INLINE.0;
        }
        self.post_send_wr(&mut wr)
    }

    /// Post up to [`MAX_SEND_LIST`] send-queue work requests with one
    /// doorbell, executed in order (an RDMA WRITE of data, then the SEND
    /// that tells the peer it is there). Providers that ring the doorbell
    /// by a system call (soft-RoCE) pay it once for the whole list. If the
    /// provider refuses one, the ones before it are posted:
    /// [`Error::PartlyPosted`] says how many.
    pub fn post_send_list(&mut self, list: &[SendWr<'_>]) -> Result<()> {
        let n = list.len();
        if n == 0 || n > MAX_SEND_LIST {
            return Err(Error::Invalid(format!("{n} work requests in one list (1..={MAX_SEND_LIST})")));
        }
        if self.outstanding_send + n > self.cfg.max_send_wr as usize {
            return Err(Error::QueueFull { queue: "send", depth: self.outstanding_send });
        }
        let mut sges = [sys::ibv_sge { addr: 0, length: 0, lkey: 0 }; MAX_SEND_LIST];
        // SAFETY: all-zero is valid for ibv_send_wr (NULL pointers, zero unions).
        let mut wrs: [sys::ibv_send_wr; MAX_SEND_LIST] = unsafe { std::mem::zeroed() };
        for (i, w) in list.iter().enumerate() {
            let (wr_id, mr, range) = match w {
                SendWr::Send { wr_id, mr, range, .. } | SendWr::Write { wr_id, mr, range, .. } => {
                    (*wr_id, *mr, range.clone())
                }
            };
            Self::check_wr_id(wr_id)?;
            self.check_mr(mr)?;
            sges[i] = mr.sge(range)?;
            let wr = &mut wrs[i];
            wr.wr_id = wr_id;
            wr.num_sge = 1;
            // Every request is signaled, so each has one completion to count.
            wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
            match w {
                SendWr::Send { invalidate, .. } => {
                    wr.opcode = match invalidate {
                        Some(rkey) => {
                            wr.imm_data_invalidated_rkey_union =
                                sys::imm_data_invalidated_rkey_union_t { invalidated_rkey: *rkey };
                            sys::ibv_wr_opcode::IBV_WR_SEND_WITH_INV
                        }
                        None => sys::ibv_wr_opcode::IBV_WR_SEND,
                    };
                    if sges[i].length <= self.cfg.max_inline_data {
                        wr.send_flags |= sys::ibv_send_flags::IBV_SEND_INLINE.0;
                    }
                }
                SendWr::Write { remote, .. } => {
                    if sges[i].length != remote.len {
                        return Err(Error::Invalid(format!(
                            "local {} bytes vs remote {} bytes",
                            sges[i].length, remote.len
                        )));
                    }
                    wr.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                    wr.wr.rdma = sys::rdma_t { remote_addr: remote.addr, rkey: remote.rkey };
                }
            }
        }
        // Link only now that neither array moves any more.
        for i in 0..n {
            wrs[i].sg_list = &mut sges[i];
            if i + 1 < n {
                let next: *mut sys::ibv_send_wr = &mut wrs[i + 1];
                wrs[i].next = next;
            }
        }
        let mut bad: *mut sys::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: live QP; the n linked requests and their sges are valid
        // for the call (the provider copies them); their buffers stay
        // registered while their MemoryRegions live.
        let rc = unsafe { sys::ibv_post_send(self.qp.as_ptr(), wrs.as_mut_ptr(), &mut bad) };
        if rc != 0 {
            // Requests before the first bad one were posted and will complete.
            let posted = (0..n).find(|&i| std::ptr::eq(&wrs[i], bad)).unwrap_or(0);
            self.outstanding_send += posted;
            let source = std::io::Error::from_raw_os_error(rc.abs());
            return Err(if posted == 0 {
                Error::Os { op: "ibv_post_send", source }
            } else {
                Error::PartlyPosted { op: "ibv_post_send", posted, source }
            });
        }
        self.outstanding_send += n;
        Ok(())
    }

    /// RDMA WRITE `range` of `mr` to `remote`, which must be as long.
    pub fn post_write(
        &mut self,
        wr_id: u64,
        mr: &MemoryRegion,
        range: Range<usize>,
        remote: RemoteRegion,
    ) -> Result<()> {
        self.post_rdma(wr_id, mr, range, remote, sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE)
    }

    /// RDMA READ `remote` into `range` of `mr`, which must be as long and
    /// registered with [`Access::LOCAL_WRITE`](crate::verbs::Access::LOCAL_WRITE).
    pub fn post_read(
        &mut self,
        wr_id: u64,
        mr: &MemoryRegion,
        range: Range<usize>,
        remote: RemoteRegion,
    ) -> Result<()> {
        if self.cfg.max_rd_atomic == 0 {
            return Err(Error::Invalid("RDMA READ with max_rd_atomic = 0".into()));
        }
        self.post_rdma(wr_id, mr, range, remote, sys::ibv_wr_opcode::IBV_WR_RDMA_READ)
    }

    fn post_rdma(
        &mut self,
        wr_id: u64,
        mr: &MemoryRegion,
        range: Range<usize>,
        remote: RemoteRegion,
        opcode: u32,
    ) -> Result<()> {
        Self::check_wr_id(wr_id)?;
        self.check_mr(mr)?;
        if range.len() != remote.len as usize {
            return Err(Error::Invalid(format!("local {} bytes vs remote {} bytes", range.len(), remote.len)));
        }
        let mut sge = mr.sge(range)?;
        let mut wr = Self::send_wr(wr_id, opcode, &mut sge);
        // Writing the rdma arm of the wr union, which opcode selects.
        wr.wr.rdma = sys::rdma_t { remote_addr: remote.addr, rkey: remote.rkey };
        self.post_send_wr(&mut wr)
    }

    fn account(&mut self, done: &[Completion]) {
        for c in done {
            match c.queue {
                WorkQueue::Send => self.outstanding_send = self.outstanding_send.saturating_sub(1),
                WorkQueue::Recv => self.outstanding_recv = self.outstanding_recv.saturating_sub(1),
            }
            if !c.status.is_success() {
                // A flush is the expected end of outstanding work after a
                // disconnect; anything else means the QP broke.
                if c.status.is_flush() {
                    tracing::debug!(wr_id = c.wr_id, queue = ?c.queue, "work request flushed");
                } else {
                    tracing::warn!(wr_id = c.wr_id, queue = ?c.queue, status = %c.status, vendor_err = c.vendor_err, "work request failed");
                }
                // Any error completion puts an RC QP in the error state.
                if self.state == State::Connected {
                    self.state = State::Disconnected;
                }
            }
        }
    }

    /// Busy-poll: take up to `out.len()` completions without blocking.
    pub fn poll(&mut self, out: &mut [Completion]) -> Result<usize> {
        let n = self.cq.poll(out)?;
        self.account(&out[..n]);
        Ok(n)
    }

    /// Sleep (no spinning) until completions or a CM event arrive, or
    /// `timeout` passes.
    pub fn wait(&mut self, out: &mut [Completion], timeout: Option<Duration>) -> Result<Wake> {
        Ok(self.wait_inner(out, timeout, None)?.unwrap_or(Wake::Timeout))
    }

    /// As [`wait`](Self::wait), but also wake when `also` (a pipe or
    /// socket another thread writes to) becomes readable: then `None`, and
    /// the caller drains `also`. Lets a connection's thread sleep and still
    /// take work handed over by other threads.
    pub fn wait_with(
        &mut self,
        out: &mut [Completion],
        timeout: Option<Duration>,
        also: RawFd,
    ) -> Result<Option<Wake>> {
        self.wait_inner(out, timeout, Some(also))
    }

    fn wait_inner(
        &mut self,
        out: &mut [Completion],
        timeout: Option<Duration>,
        also: Option<RawFd>,
    ) -> Result<Option<Wake>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(Some(Wake::Completions(n)));
            }
            if let Some(ev) = self.channel.try_next()? {
                self.note_event(&ev);
                return Ok(Some(Wake::Event(ev)));
            }
            self.cq.arm()?;
            // Catch a completion that raced with arming (it raised no event).
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(Some(Wake::Completions(n)));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(Some(Wake::Timeout));
            }
            let fds = [self.comp.fd(), self.channel.fd(), also.unwrap_or(-1)];
            let ready = verbs::wait_readable(&fds[..if also.is_some() { 3 } else { 2 }], left)?;
            if ready[0] {
                self.comp.drain_events();
            }
            if ready.get(2).copied().unwrap_or(false) {
                return Ok(None);
            }
        }
    }

    /// For callers that must not hold the connection while they sleep
    /// (other threads post on it meanwhile): arms the completion queue and
    /// returns the fds to wait on (completion channel, CM events), or the
    /// completions that arrived meanwhile (written to `out`: handle them
    /// instead of sleeping). After the wait, call
    /// [`after_sleep`](Self::after_sleep) and [`try_event`](Self::try_event).
    pub fn prepare_sleep(&mut self, out: &mut [Completion]) -> Result<Sleep> {
        self.cq.arm()?;
        // Catch a completion that raced with arming (it raised no event).
        let n = self.poll(out)?;
        if n > 0 {
            return Ok(Sleep::Ready(n));
        }
        Ok(Sleep::Fds([self.comp.fd(), self.channel.fd()]))
    }

    /// Acknowledges the completion-channel events a sleep woke on.
    pub fn after_sleep(&mut self) {
        self.comp.drain_events();
    }

    /// Take a pending CM event without blocking.
    pub fn try_event(&mut self) -> Result<Option<CmEvent>> {
        let ev = self.channel.try_next()?;
        if let Some(ev) = &ev {
            self.note_event(ev);
        }
        Ok(ev)
    }

    fn note_event(&mut self, ev: &CmEvent) {
        match ev.kind {
            CmEventKind::Disconnected | CmEventKind::DeviceRemoval => {
                tracing::info!(event = %ev.kind, device = %self.device, "rdma peer disconnected");
                self.state = State::Disconnected;
            }
            _ => tracing::debug!(event = %ev.kind, "rdma connection event"),
        }
    }

    /// Start a disconnect: the QP goes to the error state and outstanding
    /// work will complete with flush errors. Idempotent.
    pub fn disconnect(&mut self) -> Result<()> {
        if self.state == State::Prepared && self.outstanding_send + self.outstanding_recv == 0 {
            return Ok(());
        }
        // rdma_disconnect also moves the QP to error when the peer already
        // left (our state is Disconnected), which is what flushes our work.
        // SAFETY: live id with a QP.
        if unsafe { sys::rdma_disconnect(self.id.raw()) } != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: no connection to end (never connected, or already
            // torn down by the kernel): fall back to forcing the QP to error.
            tracing::debug!(error = %e, "rdma_disconnect; forcing the QP to error");
            self.force_error()?;
        }
        self.state = State::Disconnected;
        Ok(())
    }

    fn force_error(&mut self) -> Result<()> {
        // SAFETY: all-zero ibv_qp_attr is valid; only qp_state is read
        // under IBV_QP_STATE.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
        // SAFETY: live QP; attr valid for the call.
        let rc =
            unsafe { sys::ibv_modify_qp(self.qp.as_ptr(), &mut attr, sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32) };
        if rc != 0 {
            return Err(Error::errno("ibv_modify_qp(ERR)", rc));
        }
        Ok(())
    }

    /// Disconnect and collect every outstanding work request's completion
    /// (normally flushes), waiting at most `timeout`. Afterwards nothing is
    /// posted, so the buffers may be reused or dropped.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<Drained> {
        self.disconnect()?;
        let deadline = Instant::now() + timeout;
        let mut d = Drained::default();
        let mut out = [Completion::EMPTY; 16];
        while self.outstanding_send + self.outstanding_recv > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.wait(&mut out, Some(left))? {
                Wake::Completions(n) => {
                    for c in &out[..n] {
                        if c.status.is_success() {
                            d.succeeded += 1;
                        } else if c.status.is_flush() {
                            d.flushed += 1;
                        } else {
                            d.failed += 1;
                        }
                    }
                }
                Wake::Event(_) | Wake::Timeout => {}
            }
        }
        d.left = self.outstanding_send + self.outstanding_recv;
        if d.left > 0 {
            tracing::warn!(left = d.left, "rdma shutdown: work still outstanding at timeout");
        }
        tracing::info!(?d, device = %self.device, "rdma connection drained");
        Ok(d)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.state == State::Connected {
            // Tell the peer now rather than when its retries run out.
            // SAFETY: live id.
            unsafe { sys::rdma_disconnect(self.id.raw()) };
        }
        // SAFETY: the QP was made by rdma_create_qp on this id; destroying
        // it with work outstanding is allowed (the work is discarded and
        // the device stops touching its buffers). CQ, PD and id are
        // dropped after this, in field order.
        unsafe { sys::rdma_destroy_qp(self.id.raw()) };
        self.comp.drain_events();
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("device", &self.device)
            .field("state", &self.state)
            .field("outstanding", &self.outstanding())
            .finish()
    }
}
