//! NVMe/RDMA transport (NVMe-oF 1.1 RDMA transport binding, NVMe RDMA
//! Transport Specification 1.0) over the `rdma` crate's RDMA CM connections.
//!
//! One RDMA CM connection is one queue pair. The host's connect request
//! carries the queue ID and sizes ([`CmRequest`]); the target posts
//! HSQSIZE + 1 receive buffers of 64 bytes plus the in-capsule data size
//! (the IOCCSZ Identify reports for I/O queues) and accepts with that count
//! as CRQSIZE. Each received capsule is copied into a request slot and its
//! buffer re-posted at once. Data moves by the command's Keyed SGL: RDMA
//! READ of host memory for host-to-controller data, RDMA WRITE for
//! controller-to-host data, followed by the response capsule by SEND (SEND
//! with Invalidate when the descriptor's subtype asks for it).
//!
//! Like the TCP transport, one thread serves one queue pair and hands
//! every command to [`crate::cmd::parse`] / [`crate::cmd::execute`]. Slots
//! and registered buffers are made at connect (a slot's data buffer is
//! registered on its first transfer and then reused), so the I/O path does
//! not allocate. There are twice as many slots as receives: a slot is
//! reused only after its response's SEND has completed, and the host may
//! send the next command before that completion is polled.
//!
//! ```no_run
//! use storage_node::transport::{rdma::{RdmaOpts, RdmaTransport}, Transport};
//! # let target = storage_node::target::Target::new(Default::default());
//! let t = RdmaTransport::new(RdmaOpts::default());
//! let l = t.listen(target, "10.0.2.15:4420".parse().unwrap()).unwrap();
//! ```

use super::{Listener, Transport};
use crate::backend::{IoBuf, IoOp};
use crate::cmd::io::BatchIo;
use crate::cmd::{self, Completion, QueueCtx, Xfer};
use crate::ctrlr::QueueHandle;
use crate::target::{Target, TargetOpts};
use nvme_wire::fabrics::{connect_invalid_param_result, Connect};
use nvme_wire::log::trtype;
use nvme_wire::nvme::{fctype, opc, sgl, Cqe, Sqe};
use nvme_wire::rdma::{cm_status, CmAccept, CmReject, CmRequest, KeyedSgl};
use nvme_wire::status::Status;
use nvme_wire::zerocopy::{FromBytes, IntoBytes};
use parking_lot::Mutex;
use rdma::cm::{CmEventKind, ConnectRequest, Connection, QpConfig, SendWr, Wake};
use rdma::verbs::{Access, Completion as Wc, MemoryRegion, RemoteRegion};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The admin queue takes this much in-capsule data whatever the I/O
/// queues' size, as NVMe/TCP's admin queue does.
const ADMIN_INLINE: u32 = 8192;
/// RDMA READs in flight per queue pair, at most (further ones wait in the
/// send queue); the host's offer in the connect request can lower it.
const MAX_RD_ATOMIC: u8 = 16;
/// Completions taken from the CQ per poll.
const POLL_BATCH: usize = 32;
/// Largest batch of reads/writes handed to the backend at once.
const MAX_BATCH: usize = 32;
/// How long accepting (the host's RTU) may take.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long teardown waits for outstanding work to flush.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct RdmaOpts {
    /// Spin on the completion queue this long before sleeping on the
    /// completion channel (poll mode); 0 always sleeps.
    pub busy_poll_us: u32,
}

pub struct RdmaTransport {
    pub opts: RdmaOpts,
}

impl RdmaTransport {
    pub fn new(opts: RdmaOpts) -> Self {
        Self { opts }
    }
}

impl Transport for RdmaTransport {
    fn name(&self) -> &'static str {
        "rdma"
    }

    fn trtype(&self) -> u8 {
        trtype::RDMA
    }

    fn listen(&self, target: Arc<Target>, addr: SocketAddr) -> io::Result<Listener> {
        let l = rdma::cm::Listener::bind(addr, 64).map_err(io::Error::other)?;
        let bound = SocketAddr::new(addr.ip(), l.port());
        target.add_port(trtype::RDMA, bound);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let opts = self.opts.clone();
        tracing::info!(addr = %bound, "NVMe/RDMA listening");
        let th = std::thread::Builder::new().name(format!("rdma-accept-{}", bound.port())).spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                match l.next_request(Some(Duration::from_millis(200))) {
                    Ok(req) => on_request(&target, req, &opts),
                    Err(rdma::Error::Timeout { .. }) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "RDMA CM listener");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })?;
        Ok(Listener::polling(bound, stop, th))
    }
}

/// Checks a connect request's private data against the target's limits;
/// `Err` is the RDMA_CM_REJECT status to refuse it with.
pub fn check_request(private_data: &[u8], opts: &TargetOpts) -> Result<CmRequest, u16> {
    let r = CmRequest::parse(private_data).map_err(|e| match e {
        nvme_wire::WireError::Short { .. } => cm_status::INVALID_LEN,
        _ => cm_status::INVALID_RECFMT,
    })?;
    if r.qid.get() > opts.max_io_queues {
        return Err(cm_status::INVALID_QID);
    }
    // HSQSIZE is zero-based; a queue of one entry cannot work.
    let hsq = r.hsqsize.get() as u32;
    if hsq == 0 || hsq + 1 > opts.max_queue_depth as u32 {
        return Err(cm_status::INVALID_HSQSIZE);
    }
    if r.hrqsize.get() == 0 {
        return Err(cm_status::INVALID_HRQSIZE);
    }
    Ok(r)
}

/// In-capsule data a queue's receive buffers hold.
pub fn inline_size(opts: &TargetOpts, qid: u16) -> u32 {
    if qid == 0 {
        ADMIN_INLINE.max(opts.inline_data_size)
    } else {
        opts.inline_data_size
    }
}

fn on_request(target: &Arc<Target>, req: ConnectRequest, opts: &RdmaOpts) {
    let r = match check_request(req.private_data(), &target.opts) {
        Ok(r) => r,
        Err(sts) => {
            tracing::warn!(sts, "refusing an RDMA connect request");
            if let Err(e) = req.reject(CmReject::new(sts).as_bytes()) {
                tracing::warn!(error = %e, "rdma_reject");
            }
            return;
        }
    };
    let (t, o) = (target.clone(), opts.clone());
    let qid = r.qid.get();
    let spawned = std::thread::Builder::new().name(format!("nvme-rdma-q{qid}")).spawn(move || {
        let span = tracing::info_span!("rdma-conn", qid);
        let _g = span.enter();
        serve(t, req, r, &o)
    });
    if let Err(e) = spawned {
        // The request was moved into the closure and dropped, which rejects it.
        tracing::error!(error = %e, "cannot spawn an RDMA queue thread");
    }
}

/// Connection-ending errors.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Verbs(#[from] rdma::Error),
    #[error("host broke the transport: {0}")]
    Fatal(String),
    #[error("work request failed: {0}")]
    WorkFailed(rdma::verbs::WcStatus),
    #[error("host disconnected")]
    Gone,
    #[error("queue wake-up socket: {0}")]
    Wake(io::Error),
}

/// How a command's data moves, decided from its SGL and parsed transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    None,
    /// Host-to-controller data at `off` of the capsule's in-capsule data.
    InCapsule {
        off: usize,
        len: usize,
    },
    /// RDMA READ `len` bytes from the host, then execute.
    Read {
        sgl: KeyedSgl,
        len: u32,
    },
    /// Execute, then RDMA WRITE `len` bytes to the host.
    Write {
        sgl: KeyedSgl,
        len: u32,
    },
}

/// Decides the data movement for a parsed transfer: the SGL must be an
/// in-capsule Data Block (host-to-controller only, within what the
/// capsule carried) or a Keyed Data Block long enough for the transfer.
pub fn plan(sqe: &Sqe, xfer: Xfer, icd_len: usize) -> Result<Plan, Status> {
    if xfer.is_empty() {
        return Ok(Plan::None);
    }
    if sqe.psdt() != sgl::PSDT_SGL_MPTR_CONTIG && sqe.psdt() != 0x2 {
        return Err(Status::INVALID_FIELD);
    }
    let d = sqe.dptr;
    if d.type_ == sgl::DATA_BLOCK_OFFSET {
        let Xfer::FromHost(n) = xfer else { return Err(Status::SGL_INVALID_TYPE) };
        let off = d.addr.get();
        if off > icd_len as u64 {
            return Err(Status::SGL_INVALID_OFFSET);
        }
        if (d.length.get() as u64) < n as u64 || off + n as u64 > icd_len as u64 {
            return Err(Status::SGL_INVALID_DATA);
        }
        return Ok(Plan::InCapsule { off: off as usize, len: n as usize });
    }
    let k = KeyedSgl::decode(&d).map_err(|_| Status::SGL_INVALID_TYPE)?;
    if k.len < xfer.len() {
        return Err(Status::SGL_INVALID_DATA);
    }
    Ok(match xfer {
        Xfer::FromHost(len) => Plan::Read { sgl: k, len },
        Xfer::ToHost(len) => Plan::Write { sgl: k, len },
        Xfer::None => Plan::None,
    })
}

/// The rkey the host asked to have invalidated with the response.
pub fn invalidate_key(sqe: &Sqe) -> Option<u32> {
    KeyedSgl::decode(&sqe.dptr).ok().filter(|k| k.invalidate).map(|k| k.key)
}

/// Work request ids: kind in bits 48.., index below.
mod wr {
    pub const RECV: u64 = 1;
    pub const READ: u64 = 2;
    pub const WRITE: u64 = 3;
    pub const SEND: u64 = 4;

    pub fn id(kind: u64, index: usize) -> u64 {
        kind << 48 | index as u64
    }

    pub fn split(id: u64) -> (u64, usize) {
        (id >> 48, (id & 0xffff_ffff_ffff) as usize)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for the RDMA READ of its data.
    Reading,
    /// Gathered for the next backend batch.
    Batched,
    /// Response posted; free once its SEND completes.
    Sending,
}

struct Slot {
    state: SlotState,
    sqe: Sqe,
    parsed: Option<cmd::Parsed>,
    plan: Plan,
    /// Host-side data for the backend: in-capsule data, READ results, or
    /// what a read command produced. Grows once, then reused.
    buf: Vec<u8>,
    /// Registered on the slot's first RDMA transfer, then reused.
    data: Option<MemoryRegion>,
    /// Read data waiting in `data` to be RDMA WRITTEN just before the response.
    write: Option<RemoteRegion>,
}

/// What other threads hand a queue: teardown and asynchronous completions.
struct Shared {
    killed: AtomicBool,
    async_done: Mutex<Vec<(u16, Status, u64)>>,
    /// Written to wake the queue's thread from its completion-channel sleep.
    waker: UnixStream,
}

struct RdmaQueue {
    qid: u16,
    shared: Arc<Shared>,
}

impl Shared {
    fn wake(&self) {
        // Non-blocking: a full pipe already means a wake-up is pending.
        let _ = (&self.waker).write(&[1]);
    }
}

impl QueueHandle for RdmaQueue {
    fn qid(&self) -> u16 {
        self.qid
    }
    fn kill(&self) {
        self.shared.killed.store(true, Ordering::Release);
        self.shared.wake();
    }
    fn complete_async(&self, cid: u16, status: Status, result: u64) {
        self.shared.async_done.lock().push((cid, status, result));
        self.shared.wake();
    }
}

struct Conn {
    conn: Connection,
    ctx: QueueCtx,
    /// The queue ID from the connect request's private data.
    qid: u16,
    hsqsize: u16,
    recv_mr: MemoryRegion,
    /// Bytes per receive buffer: a 64-byte SQE plus in-capsule data.
    cap: usize,
    resp_mr: MemoryRegion,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Received capsules waiting for a free slot: (receive buffer, bytes).
    backlog: VecDeque<(usize, usize)>,
    /// Asynchronous completions waiting for a free slot.
    async_backlog: VecDeque<(u16, Status, u64)>,
    scratch: Vec<u8>,
    max_transfer: usize,
    shared: Arc<Shared>,
    wake_rx: UnixStream,
    handle: Option<Arc<RdmaQueue>>,
    /// Cleared when the device refuses SEND with Invalidate; the host then
    /// invalidates its keys itself.
    send_inv: bool,
    busy_poll: Option<Duration>,
    /// Reads and writes waiting to go to the backend together, all on
    /// `batch_ns`.
    batch: Vec<(usize, BatchIo)>,
    batch_ns: Option<Arc<crate::namespace::Namespace>>,
}

/// Serves one queue pair from connect request to teardown.
fn serve(target: Arc<Target>, req: ConnectRequest, r: CmRequest, opts: &RdmaOpts) {
    let qid = r.qid.get();
    let mut c = match Conn::setup(target.clone(), req, r, opts) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, qid, "RDMA queue setup failed");
            return;
        }
    };
    match c.run() {
        Ok(()) | Err(ConnError::Gone) => tracing::info!(qid, "host disconnected"),
        Err(ConnError::WorkFailed(s)) if s.is_flush() => tracing::info!(qid, "queue pair flushed; host gone"),
        Err(e) => tracing::warn!(qid, error = %e, "RDMA queue ends"),
    }
    // Every posted work request completes (flushes) before the buffers go.
    match c.conn.shutdown(DRAIN_TIMEOUT) {
        Ok(d) => tracing::debug!(?d, qid, "RDMA queue drained"),
        Err(e) => tracing::warn!(error = %e, qid, "RDMA queue drain"),
    }
    if let Some(ctrl) = &c.ctx.ctrl {
        if c.ctx.qid == 0 {
            // Losing the admin queue ends the association.
            target.destroy_ctrl(ctrl.cntlid);
        }
    }
}

impl Conn {
    fn setup(target: Arc<Target>, req: ConnectRequest, r: CmRequest, opts: &RdmaOpts) -> Result<Conn, ConnError> {
        let qid = r.qid.get();
        let n = r.hsqsize.get() as usize + 1;
        let nslots = 2 * n;
        let cap = 64 + inline_size(&target.opts, qid) as usize;
        // The host's offer (its responder resources) bounds our READs in flight.
        let rd = MAX_RD_ATOMIC.min(req.initiator_depth()).max(1);
        let cfg = QpConfig {
            // Per slot at most one READ, or one WRITE and one SEND.
            max_send_wr: 2 * nslots as u32,
            max_recv_wr: n as u32,
            max_sge: 1,
            max_inline_data: 64,
            max_rd_atomic: rd,
        };
        let mut conn = req.prepare(&cfg, None)?;
        let (recv_mr, resp_mr, wake_rx, waker) = match Self::buffers(&mut conn, n, cap, nslots) {
            Ok(b) => b,
            Err(e) => {
                // Tell the host now rather than leaving it to time out.
                let _ = conn.reject(CmReject::new(cm_status::NO_RESOURCES).as_bytes());
                return Err(e);
            }
        };
        conn.accept(CmAccept::new(n as u16).as_bytes(), Some(ACCEPT_TIMEOUT))?;
        tracing::info!(
            qid,
            hsqsize = r.hsqsize.get(),
            hrqsize = r.hrqsize.get(),
            in_capsule = cap - 64,
            rd_atomic = rd,
            device = conn.device_name(),
            "RDMA queue accepted"
        );
        let slots = (0..nslots)
            .map(|_| Slot {
                state: SlotState::Free,
                sqe: Sqe::default(),
                parsed: None,
                plan: Plan::None,
                buf: Vec::new(),
                data: None,
                write: None,
            })
            .collect();
        Ok(Conn {
            conn,
            ctx: QueueCtx::new(target.clone(), trtype::RDMA),
            qid,
            hsqsize: r.hsqsize.get(),
            recv_mr,
            cap,
            resp_mr,
            slots,
            free: (0..nslots).rev().collect(),
            backlog: VecDeque::with_capacity(n),
            async_backlog: VecDeque::new(),
            scratch: Vec::new(),
            max_transfer: target.opts.max_transfer as usize,
            shared: Arc::new(Shared { killed: AtomicBool::new(false), async_done: Mutex::new(Vec::new()), waker }),
            wake_rx,
            handle: None,
            send_inv: true,
            busy_poll: (opts.busy_poll_us > 0).then(|| Duration::from_micros(opts.busy_poll_us as u64)),
            batch: Vec::with_capacity(MAX_BATCH),
            batch_ns: None,
        })
    }

    /// Receive buffers (posted), response buffers and the wake-up pair.
    fn buffers(
        conn: &mut Connection,
        n: usize,
        cap: usize,
        nslots: usize,
    ) -> Result<(MemoryRegion, MemoryRegion, UnixStream, UnixStream), ConnError> {
        let recv_mr = MemoryRegion::new(conn.pd(), n * cap, Access::LOCAL_WRITE)?;
        let resp_mr = MemoryRegion::new(conn.pd(), nslots * size_of::<Cqe>(), Access::LOCAL_WRITE)?;
        for i in 0..n {
            conn.post_recv(wr::id(wr::RECV, i), &recv_mr, i * cap..(i + 1) * cap)?;
        }
        let (wake_rx, waker) = UnixStream::pair().map_err(ConnError::Wake)?;
        for s in [&wake_rx, &waker] {
            s.set_nonblocking(true).map_err(ConnError::Wake)?;
        }
        Ok((recv_mr, resp_mr, wake_rx, waker))
    }

    fn run(&mut self) -> Result<(), ConnError> {
        let mut wcs = [Wc::EMPTY; POLL_BATCH];
        loop {
            if self.shared.killed.load(Ordering::Acquire) {
                tracing::info!(qid = self.qid, "queue killed by the controller");
                return Ok(());
            }
            let mut n = self.conn.poll(&mut wcs)?;
            if n == 0 {
                if let Some(spin) = self.busy_poll {
                    let t0 = Instant::now();
                    while n == 0 && t0.elapsed() < spin {
                        std::hint::spin_loop();
                        n = self.conn.poll(&mut wcs)?;
                    }
                }
            }
            if n == 0 {
                self.take_async()?;
                match self.conn.wait_with(&mut wcs, Some(Duration::from_secs(1)), self.wake_rx.as_raw_fd())? {
                    Some(Wake::Completions(k)) => n = k,
                    Some(Wake::Event(ev)) => match ev.kind {
                        CmEventKind::Disconnected | CmEventKind::DeviceRemoval | CmEventKind::TimewaitExit => {
                            return Err(ConnError::Gone)
                        }
                        other => tracing::debug!(event = %other, "RDMA CM event"),
                    },
                    Some(Wake::Timeout) => {}
                    None => {
                        let mut sink = [0u8; 64];
                        while matches!((&self.wake_rx).read(&mut sink), Ok(k) if k > 0) {}
                    }
                }
            }
            for wc in &wcs[..n] {
                self.on_completion(wc)?;
            }
            // The reads and writes these completions made ready go to the
            // backend together.
            self.run_batch()?;
        }
    }

    fn on_completion(&mut self, wc: &Wc) -> Result<(), ConnError> {
        if !wc.status.is_success() {
            // An RC queue pair is in error now: everything else flushes.
            return Err(ConnError::WorkFailed(wc.status));
        }
        let (kind, i) = wr::split(wc.wr_id);
        match kind {
            wr::RECV => self.on_capsule(i, wc.byte_len as usize),
            wr::READ => self.on_read_done(i),
            // Read data went out; the response SEND behind it frees the slot.
            wr::WRITE => Ok(()),
            wr::SEND => {
                debug_assert_eq!(self.slots[i].state, SlotState::Sending);
                self.slots[i].state = SlotState::Free;
                self.free.push(i);
                self.drain_backlog()
            }
            _ => Err(ConnError::Fatal(format!("completion with unknown wr_id {:#x}", wc.wr_id))),
        }
    }

    /// Runs capsules and asynchronous completions that waited for a slot.
    fn drain_backlog(&mut self) -> Result<(), ConnError> {
        while !self.free.is_empty() {
            if let Some((i, len)) = self.backlog.pop_front() {
                self.on_capsule(i, len)?;
            } else if let Some((cid, st, res)) = self.async_backlog.pop_front() {
                self.send_async(cid, st, res)?;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn take_async(&mut self) -> Result<(), ConnError> {
        let done = std::mem::take(&mut *self.shared.async_done.lock());
        for (cid, st, res) in done {
            if self.free.is_empty() {
                self.async_backlog.push_back((cid, st, res));
            } else {
                self.send_async(cid, st, res)?;
            }
        }
        Ok(())
    }

    fn send_async(&mut self, cid: u16, status: Status, result: u64) -> Result<(), ConnError> {
        let Some(s) = self.free.pop() else {
            self.async_backlog.push_back((cid, status, result));
            return Ok(());
        };
        let slot = &mut self.slots[s];
        slot.sqe = Sqe::default();
        slot.sqe.cid = cid.into();
        slot.plan = Plan::None;
        // An asynchronous completion does not consume a submission entry.
        let sqhd = self.ctx.sqhd;
        self.respond(s, Completion { status, result, deferred: false }, sqhd)
    }

    /// A command capsule landed in receive buffer `i`.
    fn on_capsule(&mut self, i: usize, len: usize) -> Result<(), ConnError> {
        if len < size_of::<Sqe>() {
            return Err(ConnError::Fatal(format!("capsule of {len} bytes is shorter than an SQE")));
        }
        let Some(s) = self.free.pop() else {
            // The buffer stays un-posted until a slot frees; the host cannot
            // send more than its queue holds, so this is bounded.
            self.backlog.push_back((i, len));
            return Ok(());
        };
        let base = i * self.cap;
        let mut raw = [0u8; 64];
        self.recv_mr.read_at(base, &mut raw)?;
        let sqe = Sqe::read_from_bytes(&raw).expect("64 bytes make an SQE");
        let icd_len = len - 64;
        let slot = &mut self.slots[s];
        if icd_len > 0 {
            if slot.buf.len() < icd_len {
                slot.buf.resize(icd_len.max(self.max_transfer), 0);
            }
            self.recv_mr.read_at(base + 64, &mut slot.buf[..icd_len])?;
        }
        // Copied out: the host may reuse this buffer for its next command.
        self.conn.post_recv(wr::id(wr::RECV, i), &self.recv_mr, base..base + self.cap)?;
        slot.sqe = sqe;
        slot.plan = Plan::None;
        self.dispatch(s, icd_len)
    }

    fn dispatch(&mut self, s: usize, icd_len: usize) -> Result<(), ConnError> {
        let sqe = self.slots[s].sqe;
        if sqe.opcode == opc::FABRICS && sqe.fctype() == fctype::CONNECT {
            // The Connect must name the queue RDMA CM connected, and may not
            // outgrow the receives posted for it.
            let c = Connect::from_sqe(&sqe);
            if c.qid != self.qid {
                tracing::warn!(connect_qid = c.qid, cm_qid = self.qid, "Connect for another queue");
                return self.complete(s, invalid_param(42));
            }
            if c.sqsize > self.hsqsize {
                tracing::warn!(sqsize = c.sqsize, hsqsize = self.hsqsize, "Connect SQSIZE above HSQSIZE");
                return self.complete(s, invalid_param(44));
            }
        }
        let parsed = match cmd::parse(&self.ctx, &sqe) {
            Ok(p) => p,
            Err(c) => return self.complete(s, c),
        };
        let plan = match plan(&sqe, parsed.xfer, icd_len) {
            Ok(p) => p,
            Err(st) => return self.complete(s, Completion::err(st)),
        };
        let slot = &mut self.slots[s];
        slot.plan = plan;
        slot.parsed = Some(parsed);
        match plan {
            Plan::InCapsule { off, len } if off > 0 => {
                slot.buf.copy_within(off..off + len, 0);
                self.execute(s)
            }
            Plan::Read { sgl, len } => {
                let data = Self::data_region(&self.conn, &mut slot.data, self.max_transfer)?;
                let remote = RemoteRegion { addr: sgl.addr, rkey: sgl.key, len };
                self.conn.post_read(wr::id(wr::READ, s), data, 0..len as usize, remote)?;
                slot.state = SlotState::Reading;
                Ok(())
            }
            _ => self.execute(s),
        }
    }

    fn data_region<'a>(
        conn: &Connection,
        data: &'a mut Option<MemoryRegion>,
        size: usize,
    ) -> Result<&'a MemoryRegion, ConnError> {
        if data.is_none() {
            *data = Some(MemoryRegion::new(conn.pd(), size, Access::LOCAL_WRITE)?);
        }
        Ok(data.as_ref().expect("just registered"))
    }

    fn on_read_done(&mut self, s: usize) -> Result<(), ConnError> {
        let slot = &mut self.slots[s];
        if slot.state != SlotState::Reading {
            return Err(ConnError::Fatal(format!("RDMA READ completion for slot {s} in state {:?}", slot.state)));
        }
        slot.state = SlotState::Free;
        let Plan::Read { len, .. } = slot.plan else {
            return Err(ConnError::Fatal("RDMA READ completion without a READ plan".into()));
        };
        let len = len as usize;
        if slot.buf.len() < len {
            slot.buf.resize(self.max_transfer.max(len), 0);
        }
        let data = slot.data.as_ref().expect("READ target registered");
        data.read_at(0, &mut slot.buf[..len])?;
        self.execute(s)
    }

    fn execute(&mut self, s: usize) -> Result<(), ConnError> {
        if self.ctx.qid != 0 {
            let b = self.slots[s].parsed.as_ref().and_then(cmd::io::batchable).map(|(ns, io)| (ns.clone(), io));
            if let Some((ns, io)) = b {
                if self.batch_ns.as_ref().is_some_and(|cur| !Arc::ptr_eq(cur, &ns)) {
                    self.run_batch()?;
                }
                self.batch_ns = Some(ns);
                self.slots[s].state = SlotState::Batched;
                self.batch.push((s, io));
                if self.batch.len() == MAX_BATCH {
                    self.run_batch()?;
                }
                return Ok(());
            }
            // Anything else runs after the reads and writes before it.
            self.run_batch()?;
        }
        let slot = &mut self.slots[s];
        let Some(p) = slot.parsed.take() else {
            return self.complete(s, Completion::err(Status::INTERNAL));
        };
        let sqe = slot.sqe;
        let was_connected = self.ctx.ctrl.is_some();
        let c = match p.xfer {
            Xfer::ToHost(n) => {
                let n = n as usize;
                if slot.buf.len() < n {
                    slot.buf.resize(self.max_transfer.max(n), 0);
                }
                let c = cmd::execute(&mut self.ctx, p, &sqe, &[], &mut slot.buf[..n], &mut self.scratch);
                if c.status.is_success() && !c.deferred {
                    Self::stage_write(&self.conn, slot, n, self.max_transfer)?;
                }
                c
            }
            Xfer::FromHost(n) => {
                cmd::execute(&mut self.ctx, p, &sqe, &slot.buf[..n as usize], &mut [], &mut self.scratch)
            }
            Xfer::None => cmd::execute(&mut self.ctx, p, &sqe, &[], &mut [], &mut self.scratch),
        };
        if !was_connected && self.ctx.ctrl.is_some() {
            self.register_queue();
        }
        if c.deferred {
            // Completed later by the controller (Asynchronous Event Request).
            let slot = &mut self.slots[s];
            slot.state = SlotState::Free;
            self.free.push(s);
            return Ok(());
        }
        self.complete(s, c)
    }

    /// Copies a slot's read data into its registered buffer; the RDMA
    /// WRITE goes out with the response (one doorbell), and RC ordering
    /// delivers the data before the response behind it.
    fn stage_write(conn: &Connection, slot: &mut Slot, n: usize, max_transfer: usize) -> Result<(), ConnError> {
        let Plan::Write { sgl, .. } = slot.plan else {
            return Err(ConnError::Fatal("controller-to-host data without a WRITE plan".into()));
        };
        let data = Self::data_region(conn, &mut slot.data, max_transfer)?;
        data.write_at(0, &slot.buf[..n])?;
        slot.write = Some(RemoteRegion { addr: sgl.addr, rkey: sgl.key, len: n as u32 });
        Ok(())
    }

    /// Hands the gathered reads and writes to the backend in one
    /// submission, then sends their data and responses.
    fn run_batch(&mut self) -> Result<(), ConnError> {
        let Some(ns) = self.batch_ns.take() else { return Ok(()) };
        let mut batch = std::mem::take(&mut self.batch);
        let n = batch.len();
        let mut done = [Completion::err(Status::CMD_SEQ_ERROR); MAX_BATCH];
        if let Some(ctrl) = self.ctx.ctrl.clone() {
            ctrl.last_seen.store(self.ctx.target.now_ms(), Ordering::Relaxed);
            // Each slot's buffer is lent to the batch, so the operations
            // borrow disjoint memory.
            let mut bufs: [Vec<u8>; MAX_BATCH] = std::array::from_fn(|_| Vec::new());
            for (buf, &(s, io)) in bufs.iter_mut().zip(&batch) {
                *buf = std::mem::take(&mut self.slots[s].buf);
                if buf.len() < io.len as usize {
                    buf.resize(self.max_transfer.max(io.len as usize), 0);
                }
            }
            {
                let mut ops: [IoOp<'_>; MAX_BATCH] = std::array::from_fn(|_| IoOp::new(IoBuf::Read(&mut []), 0));
                for ((op, buf), &(_, io)) in ops.iter_mut().zip(bufs.iter_mut()).zip(&batch) {
                    let len = io.len as usize;
                    let b = if io.write { IoBuf::Write(&buf[..len], io.fua) } else { IoBuf::Read(&mut buf[..len]) };
                    *op = IoOp::new(b, io.off);
                }
                cmd::io::execute_batch(&ctrl, &ns, &mut ops[..n], &mut done[..n]);
            }
            for (buf, &(s, _)) in bufs.iter_mut().zip(&batch) {
                self.slots[s].buf = std::mem::take(buf);
            }
        }
        for (k, &(s, io)) in batch.iter().enumerate() {
            let slot = &mut self.slots[s];
            debug_assert_eq!(slot.state, SlotState::Batched);
            slot.parsed = None;
            if !io.write && done[k].status.is_success() {
                Self::stage_write(&self.conn, slot, io.len as usize, self.max_transfer)?;
            }
            self.complete(s, done[k])?;
        }
        // Keep the allocation for the next batch.
        batch.clear();
        self.batch = batch;
        Ok(())
    }

    fn register_queue(&mut self) {
        let Some(ctrl) = self.ctx.ctrl.clone() else { return };
        let q = Arc::new(RdmaQueue { qid: self.ctx.qid, shared: self.shared.clone() });
        let weak: std::sync::Weak<dyn QueueHandle> = Arc::downgrade(&q) as std::sync::Weak<dyn QueueHandle>;
        ctrl.add_queue(weak);
        self.handle = Some(q);
    }

    fn complete(&mut self, s: usize, c: Completion) -> Result<(), ConnError> {
        let sqhd = self.ctx.advance_sqhd();
        self.respond(s, c, sqhd)
    }

    /// Sends slot `s`'s response capsule; the slot frees when the SEND completes.
    fn respond(&mut self, s: usize, c: Completion, sqhd: u16) -> Result<(), ConnError> {
        let slot = &mut self.slots[s];
        let cqe = Cqe {
            result: c.result.into(),
            sq_head: sqhd.into(),
            sq_id: self.ctx.qid.into(),
            cid: slot.sqe.cid.get().into(),
            status: c.status.to_cqe_field().into(),
        };
        let at = s * size_of::<Cqe>();
        self.resp_mr.write_at(at, cqe.as_bytes())?;
        slot.state = SlotState::Sending;
        slot.parsed = None;
        let range = at..at + size_of::<Cqe>();
        let invalidate = invalidate_key(&slot.sqe).filter(|_| self.send_inv);
        let send = |invalidate| SendWr::Send {
            wr_id: wr::id(wr::SEND, s),
            mr: &self.resp_mr,
            range: range.clone(),
            invalidate,
        };
        let write = match (slot.write.take(), slot.data.as_ref()) {
            (Some(remote), Some(mr)) => {
                Some(SendWr::Write { wr_id: wr::id(wr::WRITE, s), mr, range: 0..remote.len as usize, remote })
            }
            _ => None,
        };
        let r = match &write {
            Some(w) => self.conn.post_send_list(&[w.clone(), send(invalidate)]),
            None => self.conn.post_send_list(&[send(invalidate)]),
        };
        match r {
            Ok(()) => Ok(()),
            // A device without SEND with Invalidate: the host invalidates
            // its keys itself when the response comes by plain SEND.
            Err(e @ (rdma::Error::Os { .. } | rdma::Error::PartlyPosted { .. })) if invalidate.is_some() => {
                tracing::warn!(error = %e, "SEND with Invalidate refused; using plain SEND");
                self.send_inv = false;
                match (&write, matches!(e, rdma::Error::PartlyPosted { .. })) {
                    (Some(w), false) => self.conn.post_send_list(&[w.clone(), send(None)])?,
                    _ => self.conn.post_send_list(&[send(None)])?,
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn invalid_param(offset: u16) -> Completion {
    Completion {
        status: Status::CONNECT_INVALID_PARAM,
        result: connect_invalid_param_result(false, offset),
        deferred: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_wire::nvme::SglDesc;
    use nvme_wire::zerocopy::FromZeros;

    fn opts() -> TargetOpts {
        TargetOpts::default()
    }

    #[test]
    fn connect_requests_are_checked_and_rejected_with_the_right_status() {
        let ok = CmRequest::new(0, 32, 31);
        assert_eq!(check_request(ok.as_bytes(), &opts()).unwrap().hsqsize.get(), 31);
        let io = CmRequest::new(3, 128, 127);
        assert!(check_request(io.as_bytes(), &opts()).is_ok());
        assert_eq!(check_request(&ok.as_bytes()[..20], &opts()).unwrap_err(), cm_status::INVALID_LEN);
        let mut bad = ok;
        bad.recfmt = 7.into();
        assert_eq!(check_request(bad.as_bytes(), &opts()).unwrap_err(), cm_status::INVALID_RECFMT);
        let too_many = CmRequest::new(opts().max_io_queues + 1, 32, 31);
        assert_eq!(check_request(too_many.as_bytes(), &opts()).unwrap_err(), cm_status::INVALID_QID);
        let deep = CmRequest::new(1, 1024, 1023);
        assert_eq!(check_request(deep.as_bytes(), &opts()).unwrap_err(), cm_status::INVALID_HSQSIZE);
        let zero = CmRequest::new(1, 32, 0);
        assert_eq!(check_request(zero.as_bytes(), &opts()).unwrap_err(), cm_status::INVALID_HSQSIZE);
        let no_rq = CmRequest::new(1, 0, 31);
        assert_eq!(check_request(no_rq.as_bytes(), &opts()).unwrap_err(), cm_status::INVALID_HRQSIZE);
    }

    #[test]
    fn in_capsule_size_matches_identify() {
        let o = opts();
        // Identify reports IOCCSZ = (64 + inline_data_size) / 16 for I/O queues.
        assert_eq!(64 + inline_size(&o, 1), 64 + o.inline_data_size);
        assert!(inline_size(&o, 0) >= 8192);
    }

    fn sqe_with(d: SglDesc) -> Sqe {
        let mut s = Sqe::new_zeroed();
        s.flags = sgl::PSDT_SGL_MPTR_CONTIG << 6;
        s.dptr = d;
        s
    }

    #[test]
    fn keyed_sgls_plan_reads_and_writes() {
        let k = KeyedSgl { addr: 0xdead_0000, len: 8192, key: 0x77, invalidate: true };
        let s = sqe_with(k.encode());
        assert_eq!(plan(&s, Xfer::FromHost(8192), 0), Ok(Plan::Read { sgl: k, len: 8192 }));
        assert_eq!(plan(&s, Xfer::ToHost(4096), 0), Ok(Plan::Write { sgl: k, len: 4096 }));
        assert_eq!(plan(&s, Xfer::ToHost(8193), 0), Err(Status::SGL_INVALID_DATA), "descriptor too short");
        assert_eq!(plan(&s, Xfer::None, 0), Ok(Plan::None));
        assert_eq!(invalidate_key(&s), Some(0x77));
        let plain = sqe_with(KeyedSgl { invalidate: false, ..k }.encode());
        assert_eq!(invalidate_key(&plain), None);
    }

    #[test]
    fn in_capsule_data_must_be_inside_the_capsule() {
        let mut d = SglDesc::new_zeroed();
        d.type_ = sgl::DATA_BLOCK_OFFSET;
        d.length = 4096.into();
        let s = sqe_with(d);
        assert_eq!(plan(&s, Xfer::FromHost(4096), 4096), Ok(Plan::InCapsule { off: 0, len: 4096 }));
        assert_eq!(plan(&s, Xfer::FromHost(4096), 2048), Err(Status::SGL_INVALID_DATA));
        assert_eq!(plan(&s, Xfer::ToHost(4096), 4096), Err(Status::SGL_INVALID_TYPE));
        d.addr = 8192.into();
        assert_eq!(plan(&sqe_with(d), Xfer::FromHost(16), 4096), Err(Status::SGL_INVALID_OFFSET));
        d.addr = 16.into();
        d.length = 16.into();
        assert_eq!(plan(&sqe_with(d), Xfer::FromHost(16), 64), Ok(Plan::InCapsule { off: 16, len: 16 }));
    }

    #[test]
    fn malformed_descriptors_get_nvme_errors() {
        let mut d = SglDesc::new_zeroed();
        d.type_ = sgl::TRANSPORT_DATA_BLOCK; // NVMe/TCP's, not RDMA's
        assert_eq!(plan(&sqe_with(d), Xfer::ToHost(512), 0), Err(Status::SGL_INVALID_TYPE));
        let mut prp = sqe_with(d);
        prp.flags = 0; // PRPs are not allowed over fabrics
        assert_eq!(plan(&prp, Xfer::ToHost(512), 0), Err(Status::INVALID_FIELD));
    }

    #[test]
    fn work_request_ids_round_trip() {
        for (k, i) in [(wr::RECV, 0), (wr::READ, 255), (wr::SEND, 65_535)] {
            assert_eq!(wr::split(wr::id(k, i)), (k, i));
            assert_eq!(wr::id(k, i) & (1 << 63), 0, "the rdma crate reserves the top bit");
        }
    }
}
