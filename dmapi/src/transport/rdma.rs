//! RDMA transport: the cluster frames of the TCP transport carried by SEND
//! and RECEIVE on reliable-connected queue pairs made through RDMA CM.
//!
//! - **Authentication** is the TCP transport's HMAC challenge/response
//!   (`Hello`, `Challenge`, `Auth` frames), run in-band over the new
//!   connection before it is used: RDMA CM private data (56 bytes at most)
//!   has no room for it. The private data only carries [`ConnParams`].
//! - **Buffers and credits.** Each end posts `recv_depth` receive buffers
//!   of `buf_size` bytes before it connects and announces both in its
//!   private data; the other end may have that many SENDs outstanding
//!   (its credits) and makes none larger. Every SEND starts with a
//!   [`SendHdr`] that returns the credits of the buffers its sender has
//!   re-posted since; when many are owed and nothing is going the other
//!   way, a bare credit SEND carries them. A frame SEND needs two credits
//!   and a credit SEND one, so one credit is always left for a grant and
//!   the two ends cannot wait on each other. A sender never overruns the
//!   receiver's buffers, so the queue pair never sees receiver-not-ready.
//! - **Frames larger than a buffer** go as several fragments (flag
//!   [`MORE`]), reassembled in order (RC queue pairs deliver in order).
//! - **Polling.** One thread per connection owns its queue pair: it posts
//!   what senders queued, polls the completion queue, reassembles frames
//!   and hands them to the handler (as the TCP reader thread does). It
//!   busy-polls for `spin` after the last activity and then sleeps on the
//!   completion channel, so an idle node does not burn a core; a sender
//!   wakes a sleeping poller through a socket pair.
//! - **A dead peer** shows as a disconnect event or error completions: the
//!   connection is dropped, its work flushed, and the next send connects
//!   again, exactly as with TCP. Delivery guarantees (re-sends, duplicate
//!   suppression) live above the transport and are the same on both.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use rdma::cm::{CmEventKind, ConnectRequest, Connection, Listener, QpConfig, Sleep, Wake};
use rdma::verbs::{Access, Completion, MemoryRegion, WorkQueue};
use tracing::{debug, info, warn};
use zerocopy::IntoBytes;

use super::rdma_wire::{ConnParams, SendHdr, HDR_LEN, KIND_CREDIT, KIND_FRAME, MORE};
use super::tcp::{handshake_client, handshake_server, FrameHandler, FrameIo};
use super::{Transport, TransportError};
use crate::proto::{decode_frame, encode_frame, Frame};
use crate::types::NodeId;
use crate::wire::{HEADER_LEN, MAX_PAYLOAD};

/// RDMA transport settings.
#[derive(Debug, Clone)]
pub struct RdmaConfig {
    /// This node.
    pub node: NodeId,
    /// Where to listen: an RDMA device's IP (RDMA CM has its own port
    /// space, so the TCP transport's address and port serve here too).
    pub listen: SocketAddr,
    /// Pre-shared cluster key.
    pub cluster_key: Vec<u8>,
    /// Receive buffers posted per connection.
    pub recv_depth: u16,
    /// Bytes per receive buffer (header included).
    pub buf_size: u32,
    /// How long a connection's poller spins after its last activity
    /// before it sleeps on the completion channel.
    pub spin: Duration,
    /// Bound on connecting and on each handshake step.
    pub handshake_timeout: Duration,
}

impl RdmaConfig {
    /// Defaults: 64 buffers of 4 KiB, 200 µs of spinning, 5 s handshakes.
    pub fn new(node: NodeId, listen: SocketAddr, cluster_key: &[u8]) -> Self {
        RdmaConfig {
            node,
            listen,
            cluster_key: cluster_key.to_vec(),
            recv_depth: 64,
            buf_size: 4096,
            spin: Duration::from_micros(200),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Frames queued to one connection before senders wait.
const OUTBOX: usize = 4096;

/// A connection. Senders post straight onto the queue pair when the link
/// is free and nothing is queued before them (no thread hand-off on the
/// latency path); otherwise they queue the frame for the poller thread,
/// which owns the link except while it sleeps.
struct ConnHandle {
    id: u64,
    device: String,
    link: Mutex<Link>,
    outbox: Mutex<VecDeque<Vec<u8>>>,
    space: Condvar,
    wake: UnixStream,
    sleeping: AtomicBool,
    dead: AtomicBool,
}

thread_local! {
    /// This thread is delivering frames (a handler sending from inside
    /// one must never wait for outbox room).
    static DELIVERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl ConnHandle {
    fn push(&self, bytes: Vec<u8>, timeout: Duration) -> Result<(), TransportError> {
        if let Some(mut l) = self.link.try_lock() {
            // Order: only when nothing queued or half-sent is ahead of us.
            if l.pending.is_none() && self.outbox.lock().is_empty() && !self.dead.load(Ordering::Acquire) {
                let mut done = 0;
                let finished = l.push(&bytes, &mut done)?;
                if !finished {
                    // Out of credits: the poller finishes it when grants come.
                    l.pending = Some((bytes, done));
                    drop(l);
                    self.kick();
                }
                return Ok(());
            }
        }
        let mut q = self.outbox.lock();
        // A handler answering must never wait on the thread that runs it.
        let in_handler = DELIVERING.get();
        let deadline = Instant::now() + timeout;
        while q.len() >= OUTBOX && !in_handler {
            if self.dead.load(Ordering::Acquire) {
                return Err(TransportError::Closed);
            }
            if self.space.wait_until(&mut q, deadline).timed_out() {
                return Err(TransportError::Timeout);
            }
        }
        if self.dead.load(Ordering::Acquire) {
            return Err(TransportError::Io("RDMA connection lost".into()));
        }
        q.push_back(bytes);
        drop(q);
        self.kick();
        Ok(())
    }

    /// Wakes the poller if it sleeps. Paired with its store-then-check
    /// before sleeping: either it sees the work or we see it asleep.
    fn kick(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = (&self.wake).write(&[1]);
        }
    }
}

struct Inner {
    cfg: RdmaConfig,
    peers: Mutex<HashMap<NodeId, SocketAddr>>,
    conns: Mutex<HashMap<NodeId, Arc<ConnHandle>>>,
    connecting: Mutex<HashMap<NodeId, Arc<Mutex<()>>>>,
    handler: RwLock<Option<FrameHandler>>,
    tx: SyncSender<(NodeId, Frame)>,
    rx: Mutex<Receiver<(NodeId, Frame)>>,
    next_conn: AtomicU64,
    closed: AtomicBool,
}

/// The RDMA transport of one node.
pub struct RdmaTransport {
    inner: Arc<Inner>,
    local: SocketAddr,
    acceptor: Mutex<Option<thread::JoinHandle<()>>>,
}

impl RdmaTransport {
    /// Binds the RDMA CM listener and starts accepting. Fails when the
    /// build or the machine has no RDMA, or the address is on no RDMA
    /// device; callers then use TCP.
    pub fn start(cfg: RdmaConfig) -> Result<RdmaTransport, TransportError> {
        rdma::available().map_err(|e| TransportError::Io(format!("RDMA unavailable: {e}")))?;
        let listener = Listener::bind(cfg.listen, 64).map_err(io)?;
        let local = SocketAddr::new(cfg.listen.ip(), listener.port());
        let (tx, rx) = mpsc::sync_channel(4096);
        let inner = Arc::new(Inner {
            cfg,
            peers: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashMap::new()),
            handler: RwLock::new(None),
            tx,
            rx: Mutex::new(rx),
            next_conn: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        let i2 = inner.clone();
        let acceptor = thread::Builder::new()
            .name(format!("dm-rdma-accept-{}", inner.cfg.node))
            .spawn(move || accept_loop(i2, listener))?;
        info!(node = %inner.cfg.node, %local, "DM transport listening on RDMA");
        Ok(RdmaTransport { inner, local, acceptor: Mutex::new(Some(acceptor)) })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sets (or changes) where `node` listens.
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) {
        self.inner.peers.lock().insert(node, addr);
    }

    /// Hands every received frame to `h` on the connection's poller thread
    /// instead of queueing it for [`Transport::recv`] (see the TCP
    /// transport's `set_handler`). The handler must not block for long.
    pub fn set_handler(&self, h: FrameHandler) {
        *self.inner.handler.write() = Some(h);
    }

    /// Whether an authenticated connection to `node` is up.
    pub fn is_connected(&self, node: NodeId) -> bool {
        self.inner.conns.lock().get(&node).is_some_and(|c| !c.dead.load(Ordering::Acquire))
    }

    /// The device the connection to `node` runs over, if there is one.
    pub fn device(&self, node: NodeId) -> Option<String> {
        self.inner.conns.lock().get(&node).map(|c| c.device.clone())
    }

    /// Connects and authenticates to `peer` unless already connected.
    pub fn ensure_connected(&self, peer: NodeId) -> Result<(), TransportError> {
        self.conn(peer).map(|_| ())
    }

    /// Queues a small control frame unless frames to `peer` are already
    /// waiting (a busy connection proves we are alive). Returns whether it
    /// was queued.
    pub fn send_if_idle(&self, peer: NodeId, frame: &Frame) -> Result<bool, TransportError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let bytes = encode_frame(frame)?;
        let c = self.conn(peer)?;
        if !c.outbox.lock().is_empty() {
            return Ok(false);
        }
        c.push(bytes, self.inner.cfg.handshake_timeout)?;
        Ok(true)
    }

    /// Disconnects every connection and stops accepting.
    pub fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for (_, c) in self.inner.conns.lock().drain() {
            let _ = (&c.wake).write(&[1]);
        }
        if let Some(h) = self.acceptor.lock().take() {
            let _ = h.join();
        }
    }

    fn conn(&self, peer: NodeId) -> Result<Arc<ConnHandle>, TransportError> {
        if let Some(c) = self.inner.conns.lock().get(&peer) {
            if !c.dead.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        // One connect per peer at a time; the others wait and use it.
        let gate = self.inner.connecting.lock().entry(peer).or_default().clone();
        let _g = gate.lock();
        if let Some(c) = self.inner.conns.lock().get(&peer) {
            if !c.dead.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let addr = *self.inner.peers.lock().get(&peer).ok_or(TransportError::UnknownPeer(peer))?;
        let cfg = &self.inner.cfg;
        let mut link = Link::connect(addr, cfg)?;
        if link.peer_node != peer.0 {
            return Err(TransportError::Auth(format!("RDMA peer at {addr} says it is node {}", link.peer_node)));
        }
        let to = cfg.handshake_timeout;
        handshake_client(cfg.node, peer, &cfg.cluster_key, &mut Handshaking { link: &mut link, timeout: to })?;
        debug!(%peer, %addr, device = %link.conn.device_name(), "RDMA connected and authenticated");
        register(&self.inner, peer, link)
    }
}

impl Drop for RdmaTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for RdmaTransport {
    fn local_node(&self) -> NodeId {
        self.inner.cfg.node
    }

    fn send(&self, peer: NodeId, frame: &Frame) -> Result<(), TransportError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let bytes = encode_frame(frame)?;
        // As with TCP: one retry on a fresh connection covers a peer that
        // restarted since the connection was made.
        for attempt in 0..2 {
            let c = self.conn(peer)?;
            match c.push(bytes.clone(), self.inner.cfg.handshake_timeout) {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 1 => return Err(e),
                Err(e) => warn!(%peer, error = %e, "RDMA send failed; reconnecting"),
            }
        }
        Err(TransportError::Closed)
    }

    fn recv(&self, timeout: Option<Duration>) -> Result<(NodeId, Frame), TransportError> {
        super::recv_queued(&self.inner.rx.lock(), &self.inner.closed, timeout)
    }
}

/// Send slots (and send work requests) per connection: as many SENDs as
/// our own receive depth (peers are normally configured alike; with a
/// deeper peer the slots, not its credits, bound what is in flight) plus
/// room for grants.
fn sends(cfg: &RdmaConfig) -> usize {
    cfg.recv_depth as usize + 2
}

fn io(e: rdma::Error) -> TransportError {
    TransportError::Io(format!("RDMA: {e}"))
}

/// One connection's queue pair, buffers and credit state; owned by one
/// thread at a time (the handshake's, then its poller's).
struct Link {
    conn: Connection,
    recv: MemoryRegion,
    send: MemoryRegion,
    buf: usize,
    /// Largest SEND the peer takes (its buffer size).
    peer_buf: usize,
    peer_depth: u32,
    peer_node: u32,
    free_slots: Vec<usize>,
    /// SENDs the peer has buffers for.
    credits: u32,
    /// Buffers re-posted and not yet granted back.
    owed: u32,
    /// The frame being reassembled.
    reasm: Vec<u8>,
    /// Frames that arrived behind the handshake's last one (the peer may
    /// start sending as soon as it has sent `Auth`): the poller delivers
    /// them first.
    early: Vec<Vec<u8>>,
    /// A frame partly sent for want of credits, and how much of it went.
    pending: Option<(Vec<u8>, usize)>,
    wc: Vec<Completion>,
}

impl Link {
    fn qp_config(cfg: &RdmaConfig) -> QpConfig {
        QpConfig {
            max_send_wr: sends(cfg) as u32,
            max_recv_wr: cfg.recv_depth as u32,
            max_sge: 1,
            // Event and response frames are small: the CPU copies them
            // into the work request, sparing the device a DMA read.
            max_inline_data: 128,
            max_rd_atomic: 0,
        }
    }

    fn buffers(conn: &mut Connection, cfg: &RdmaConfig) -> Result<(MemoryRegion, MemoryRegion), TransportError> {
        let buf = cfg.buf_size as usize;
        let recv = MemoryRegion::new(conn.pd(), cfg.recv_depth as usize * buf, Access::LOCAL_WRITE).map_err(io)?;
        let send = MemoryRegion::new(conn.pd(), sends(cfg) * buf, Access::LOCAL_WRITE).map_err(io)?;
        for i in 0..cfg.recv_depth as usize {
            conn.post_recv(i as u64, &recv, i * buf..(i + 1) * buf).map_err(io)?;
        }
        Ok((recv, send))
    }

    fn new(conn: Connection, recv: MemoryRegion, send: MemoryRegion, cfg: &RdmaConfig, peer: ConnParams) -> Link {
        let peer_depth = peer.recv_depth.get() as u32;
        Link {
            conn,
            recv,
            send,
            buf: cfg.buf_size as usize,
            peer_buf: peer.buf_size.get() as usize,
            peer_depth,
            peer_node: peer.node.get(),
            free_slots: (0..sends(cfg)).rev().collect(),
            credits: peer_depth,
            owed: 0,
            reasm: Vec::new(),
            early: Vec::new(),
            pending: None,
            wc: vec![Completion::EMPTY; 64],
        }
    }

    /// Active side: resolve, post receives, connect.
    fn connect(addr: SocketAddr, cfg: &RdmaConfig) -> Result<Link, TransportError> {
        let t = Some(cfg.handshake_timeout);
        let mut conn = Connection::resolve(addr, &Self::qp_config(cfg), t).map_err(io)?;
        let (recv, send) = Self::buffers(&mut conn, cfg)?;
        let me = ConnParams::new(cfg.node.0, cfg.recv_depth, cfg.buf_size);
        let theirs = conn.connect(me.as_bytes(), t).map_err(io)?;
        let peer = ConnParams::parse(&theirs)?;
        Ok(Self::new(conn, recv, send, cfg, peer))
    }

    /// Passive side: check the request, post receives, accept.
    fn accept(req: ConnectRequest, cfg: &RdmaConfig) -> Result<Link, TransportError> {
        let peer = match ConnParams::parse(req.private_data()) {
            Ok(p) => p,
            Err(e) => {
                let _ = req.reject(&[]);
                return Err(TransportError::Wire(e));
            }
        };
        let mut conn = req.prepare(&Self::qp_config(cfg), None).map_err(io)?;
        let (recv, send) = Self::buffers(&mut conn, cfg)?;
        let me = ConnParams::new(cfg.node.0, cfg.recv_depth, cfg.buf_size);
        conn.accept(me.as_bytes(), Some(cfg.handshake_timeout)).map_err(io)?;
        Ok(Self::new(conn, recv, send, cfg, peer))
    }

    /// Largest fragment body one SEND carries.
    fn frag_max(&self) -> usize {
        self.peer_buf.min(self.buf) - HDR_LEN
    }

    fn post(&mut self, kind: u8, flags: u8, body: &[u8]) -> Result<(), TransportError> {
        let slot = self.free_slots.pop().ok_or(TransportError::Io("no free send slot".into()))?;
        let grant = self.owed.min(u16::MAX as u32);
        let h = SendHdr::new(kind, flags, grant as u16, body.len() as u32);
        let off = slot * self.buf;
        self.send.write_at(off, h.as_bytes()).map_err(io)?;
        self.send.write_at(off + HDR_LEN, body).map_err(io)?;
        if let Err(e) = self.conn.post_send(slot as u64, &self.send, off..off + HDR_LEN + body.len()) {
            self.free_slots.push(slot);
            return Err(io(e));
        }
        self.owed -= grant;
        self.credits -= 1;
        Ok(())
    }

    /// Sends what credits allow of `frame` from `*done` on; true once all is sent.
    fn push(&mut self, frame: &[u8], done: &mut usize) -> Result<bool, TransportError> {
        while *done < frame.len() {
            // Keep the last credit for a grant (see the module docs).
            if self.credits < 2 || self.free_slots.is_empty() {
                return Ok(false);
            }
            let n = (frame.len() - *done).min(self.frag_max());
            let more = if *done + n < frame.len() { MORE } else { 0 };
            self.post(KIND_FRAME, more, &frame[*done..*done + n])?;
            *done += n;
        }
        Ok(true)
    }

    /// One round of work: queued sends, completions (frames to `frames`),
    /// sends the new credits allow, a grant if due. True if anything moved.
    fn turn(&mut self, h: &ConnHandle, frames: &mut Vec<Vec<u8>>) -> Result<bool, TransportError> {
        let mut busy = self.send_queued(h)?;
        busy |= self.poll(frames)? > 0;
        // Grants taken by this poll may let a stalled frame go on.
        busy |= self.send_queued(h)?;
        self.grant()?;
        Ok(busy)
    }

    /// Sends the half-sent frame, then queued ones, while credits last;
    /// true if anything went.
    fn send_queued(&mut self, h: &ConnHandle) -> Result<bool, TransportError> {
        let mut went = false;
        loop {
            if self.pending.is_none() {
                match h.outbox.lock().pop_front() {
                    Some(b) => {
                        h.space.notify_one();
                        self.pending = Some((b, 0));
                    }
                    None => return Ok(went),
                }
            }
            let (b, mut done) = self.pending.take().expect("set above");
            let before = done;
            let finished = self.push(&b, &mut done)?;
            went |= done > before;
            if !finished {
                self.pending = Some((b, done));
                return Ok(went); // out of credits: wait for the peer's grant
            }
        }
    }

    /// Grants owed credits by themselves once half the peer's view of our
    /// buffers is used up and no frame carried them.
    fn grant(&mut self) -> Result<(), TransportError> {
        let half = (self.recv.len() / self.buf / 2) as u32;
        if self.owed >= half.max(1) && self.credits >= 1 && !self.free_slots.is_empty() {
            self.post(KIND_CREDIT, 0, &[])?;
        }
        Ok(())
    }

    /// Handles `n` completions in `wc`; whole frames go to `frames`.
    fn handle(&mut self, n: usize, frames: &mut Vec<Vec<u8>>) -> Result<(), TransportError> {
        for i in 0..n {
            let c = self.wc[i];
            if !c.status.is_success() {
                return Err(TransportError::Io(format!("RDMA {:?} work request ended with {}", c.queue, c.status)));
            }
            if c.queue == WorkQueue::Send {
                self.free_slots.push(c.wr_id as usize);
                continue;
            }
            let slot = c.wr_id as usize;
            let len = c.byte_len as usize;
            if len > self.buf {
                return Err(TransportError::Io(format!("a {len}-byte receive in a {}-byte buffer", self.buf)));
            }
            let mut b = vec![0u8; len];
            self.recv.read_at(slot * self.buf, &mut b).map_err(io)?;
            self.conn.post_recv(slot as u64, &self.recv, slot * self.buf..(slot + 1) * self.buf).map_err(io)?;
            self.owed += 1;
            let (h, body) = SendHdr::parse(&b)?;
            self.credits += h.credits.get() as u32;
            if self.credits > self.peer_depth {
                return Err(TransportError::Io(format!(
                    "peer granted {} credits for {} buffers",
                    self.credits, self.peer_depth
                )));
            }
            if h.kind == KIND_FRAME {
                if self.reasm.len() + body.len() > HEADER_LEN + MAX_PAYLOAD {
                    return Err(TransportError::Io("fragments exceed the largest frame".into()));
                }
                self.reasm.extend_from_slice(body);
                if h.flags & MORE == 0 {
                    frames.push(std::mem::take(&mut self.reasm));
                }
            }
        }
        Ok(())
    }

    fn poll(&mut self, frames: &mut Vec<Vec<u8>>) -> Result<usize, TransportError> {
        let n = self.conn.poll(&mut self.wc).map_err(io)?;
        self.handle(n, frames)?;
        Ok(n)
    }

    /// Sleeps until completions, a CM event, `wake` or `timeout`.
    fn sleep(
        &mut self,
        frames: &mut Vec<Vec<u8>>,
        timeout: Duration,
        wake: Option<&UnixStream>,
    ) -> Result<(), TransportError> {
        let r = match wake {
            Some(w) => self.conn.wait_with(&mut self.wc, Some(timeout), w.as_raw_fd()).map_err(io)?,
            None => Some(self.conn.wait(&mut self.wc, Some(timeout)).map_err(io)?),
        };
        match r {
            Some(Wake::Completions(n)) => self.handle(n, frames),
            Some(Wake::Event(ev)) => match ev.kind {
                CmEventKind::Disconnected | CmEventKind::DeviceRemoval => {
                    Err(TransportError::Io(format!("RDMA peer left ({})", ev.kind)))
                }
                other => {
                    debug!(event = %other, "RDMA connection event");
                    Ok(())
                }
            },
            Some(Wake::Timeout) | None => Ok(()),
        }
    }

    /// Sends one frame and waits until it is posted (handshake only).
    fn send_blocking(&mut self, f: &Frame, timeout: Duration) -> Result<(), TransportError> {
        let bytes = encode_frame(f)?;
        let deadline = Instant::now() + timeout;
        let mut done = 0;
        let mut frames = Vec::new();
        while !self.push(&bytes, &mut done)? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TransportError::Timeout);
            }
            self.sleep(&mut frames, left, None)?;
        }
        self.early.append(&mut frames);
        Ok(())
    }

    /// The next whole frame (handshake only).
    fn recv_blocking(&mut self, timeout: Duration) -> Result<Frame, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.early.is_empty() {
                let b = self.early.remove(0);
                return Ok(decode_frame(&b)?.0);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TransportError::Timeout);
            }
            let mut frames = std::mem::take(&mut self.early);
            self.sleep(&mut frames, left, None)?;
            self.early = frames;
        }
    }
}

fn register(inner: &Arc<Inner>, peer: NodeId, mut link: Link) -> Result<Arc<ConnHandle>, TransportError> {
    let (wake, wake_rx) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let early = std::mem::take(&mut link.early);
    let h = Arc::new(ConnHandle {
        id,
        device: link.conn.device_name().to_owned(),
        link: Mutex::new(link),
        outbox: Mutex::new(VecDeque::new()),
        space: Condvar::new(),
        wake,
        sleeping: AtomicBool::new(false),
        dead: AtomicBool::new(false),
    });
    if let Some(old) = inner.conns.lock().insert(peer, h.clone()) {
        debug!(%peer, old = old.id, new = id, "RDMA connection replaced");
    }
    let (i2, h2) = (inner.clone(), h.clone());
    thread::Builder::new().name(format!("dm-rdma-{peer}")).spawn(move || {
        let why = run(&i2, peer, &h2, early, wake_rx);
        h2.dead.store(true, Ordering::Release);
        h2.space.notify_all();
        let mut conns = i2.conns.lock();
        if conns.get(&peer).is_some_and(|c| c.id == h2.id) {
            conns.remove(&peer);
        }
        drop(conns);
        if !i2.closed.load(Ordering::Acquire) {
            info!(%peer, reason = %why, "RDMA connection closed");
        }
    })?;
    Ok(h)
}

/// The poller: runs until the connection ends; returns why.
fn run(inner: &Inner, peer: NodeId, h: &ConnHandle, early: Vec<Vec<u8>>, wake_rx: UnixStream) -> String {
    let why = match pump(inner, peer, h, early, &wake_rx) {
        Ok(()) => "transport shut down".to_owned(),
        Err(e) => e.to_string(),
    };
    h.dead.store(true, Ordering::Release);
    // Collect (flush) outstanding work before the buffers are freed.
    if let Err(e) = h.link.lock().conn.shutdown(Duration::from_secs(1)) {
        debug!(%peer, error = %e, "RDMA drain");
    }
    why
}

fn pump(
    inner: &Inner,
    peer: NodeId,
    h: &ConnHandle,
    early: Vec<Vec<u8>>,
    wake_rx: &UnixStream,
) -> Result<(), TransportError> {
    let spin = inner.cfg.spin;
    // Frames that came in with the handshake go first, in order.
    let mut frames = early;
    deliver_all(inner, peer, &mut frames, None)?;
    let mut last = Instant::now();
    loop {
        if inner.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let busy = {
            let mut l = h.link.lock();
            let busy = l.turn(h, &mut frames)?;
            let any = !frames.is_empty();
            deliver_all(inner, peer, &mut frames, Some(l))?;
            busy || any
        };
        if busy {
            last = Instant::now();
            continue;
        }
        if last.elapsed() < spin {
            std::hint::spin_loop();
            continue;
        }
        h.sleeping.store(true, Ordering::SeqCst);
        let fds = {
            let mut l = h.link.lock();
            if !h.outbox.lock().is_empty() || l.pending.as_ref().is_some_and(|_| l.credits >= 2) {
                None
            } else {
                let Link { conn, wc, .. } = &mut *l;
                match conn.prepare_sleep(wc).map_err(io)? {
                    Sleep::Ready(n) => {
                        l.handle(n, &mut frames)?;
                        deliver_all(inner, peer, &mut frames, Some(l))?;
                        None
                    }
                    Sleep::Fds(f) => Some(f),
                }
            }
        };
        if let Some([comp, cm]) = fds {
            // The link is free while we sleep: senders post directly.
            rdma::verbs::wait_readable(&[comp, cm, wake_rx.as_raw_fd()], Some(Duration::from_millis(100)))
                .map_err(io)?;
            let mut l = h.link.lock();
            l.conn.after_sleep();
            if let Some(ev) = l.conn.try_event().map_err(io)? {
                match ev.kind {
                    CmEventKind::Disconnected | CmEventKind::DeviceRemoval => {
                        return Err(TransportError::Io(format!("RDMA peer left ({})", ev.kind)));
                    }
                    other => debug!(event = %other, "RDMA connection event"),
                }
            }
        }
        h.sleeping.store(false, Ordering::SeqCst);
        let mut drain = [0u8; 64];
        while matches!((&*wake_rx).read(&mut drain), Ok(n) if n > 0) {}
        last = Instant::now();
    }
}

/// Delivers `frames` in order, after letting the link go (given its
/// guard): a handler that answers may then post its frame directly.
fn deliver_all(
    inner: &Inner,
    peer: NodeId,
    frames: &mut Vec<Vec<u8>>,
    link: Option<parking_lot::MutexGuard<'_, Link>>,
) -> Result<(), TransportError> {
    drop(link);
    if frames.is_empty() {
        return Ok(());
    }
    let was = DELIVERING.replace(true);
    let r = frames.drain(..).try_for_each(|b| deliver(inner, peer, &b));
    DELIVERING.set(was);
    r
}

fn deliver(inner: &Inner, peer: NodeId, b: &[u8]) -> Result<(), TransportError> {
    let (f, used) = decode_frame(b)?;
    if used != b.len() {
        return Err(TransportError::Io(format!("{} bytes after a frame", b.len() - used)));
    }
    if f.source != peer {
        return Err(TransportError::Auth(format!("frame claims node {} on node {peer}'s connection", f.source)));
    }
    let handler = inner.handler.read().clone();
    match handler {
        Some(h) => h(peer, f),
        None => {
            if inner.tx.send((peer, f)).is_err() {
                return Err(TransportError::Closed);
            }
        }
    }
    Ok(())
}

/// A link during its handshake, before its poller owns it.
struct Handshaking<'a> {
    link: &'a mut Link,
    timeout: Duration,
}

impl FrameIo for Handshaking<'_> {
    fn send(&mut self, f: &Frame) -> Result<(), TransportError> {
        self.link.send_blocking(f, self.timeout)
    }

    fn recv(&mut self) -> Result<Frame, TransportError> {
        self.link.recv_blocking(self.timeout)
    }
}

fn accept_loop(inner: Arc<Inner>, listener: Listener) {
    while !inner.closed.load(Ordering::Acquire) {
        let req = match listener.next_request(Some(Duration::from_millis(100))) {
            Ok(r) => r,
            Err(rdma::Error::Timeout { .. }) => continue,
            Err(e) => {
                warn!(error = %e, "RDMA listener");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let i2 = inner.clone();
        // Each handshake on its own thread: a slow or hostile peer cannot
        // stall other accepts.
        let _ = thread::Builder::new().name("dm-rdma-handshake".into()).spawn(move || {
            if let Err(e) = accept_one(&i2, req) {
                warn!(error = %e, "incoming RDMA DM connection refused");
            }
        });
    }
}

fn accept_one(inner: &Arc<Inner>, req: ConnectRequest) -> Result<(), TransportError> {
    let cfg = &inner.cfg;
    let mut link = Link::accept(req, cfg)?;
    let to = cfg.handshake_timeout;
    let claimed = NodeId(link.peer_node);
    let peer = handshake_server(cfg.node, &cfg.cluster_key, &mut Handshaking { link: &mut link, timeout: to })?;
    if peer != claimed {
        return Err(TransportError::Auth(format!("node {peer} connected claiming to be node {claimed}")));
    }
    info!(%peer, device = %link.conn.device_name(), "DM peer authenticated over RDMA");
    register(inner, peer, link)?;
    Ok(())
}
