//! NVMe/TCP transport (NVMe TCP Transport Specification 1.0).
//!
//! One thread per queue pair owns the socket's receive side, a receive
//! buffer, and a fixed set of request slots sized at start (one per
//! possible outstanding command; a slot's data buffer grows once to the
//! largest transfer it has seen and is then reused, so the I/O path does
//! not allocate). Responses are assembled in a send buffer and written
//! when the thread is about to wait for input, so a burst of commands is
//! answered with one `write`. Read data is read by the backend straight
//! into the send buffer, behind its C2HData header.

use super::{Listener, Transport};
use crate::backend::{IoBuf, IoOp};
use crate::cmd::io::BatchIo;
use crate::cmd::{self, Completion, QueueCtx, Xfer};
use crate::ctrlr::QueueHandle;
use crate::target::Target;
use nvme_wire::log::trtype;
use nvme_wire::nvme::{sgl, Sqe};
use nvme_wire::status::Status;
use nvme_wire::tcp::{self as w, flags, CommonHeader, DataHdr, IcReq, IcResp, PduType, TermReq, DIGEST_LEN};
use nvme_wire::zerocopy::{FromBytes, FromZeros, IntoBytes};
use parking_lot::Mutex;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest H2CData PDU payload the target accepts (MAXH2CDATA).
pub const MAX_H2C_DATA: u32 = 128 * 1024;
const RECV_BUF: usize = 256 * 1024;
/// Send buffer size past which it is written out at once.
const SEND_FLUSH_AT: usize = 256 * 1024;
/// Transient Transport Error: the host may retry the command.
const TRANSIENT_TRANSPORT_ERROR: Status = Status(0x22);

#[derive(Debug, Clone, Default)]
pub struct TcpOpts {
    /// Spin on the socket this long before sleeping in the kernel
    /// (poll mode); 0 always sleeps.
    pub busy_poll_us: u32,
}

pub struct TcpTransport {
    pub opts: TcpOpts,
}

impl TcpTransport {
    pub fn new(opts: TcpOpts) -> Self {
        Self { opts }
    }
}

impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn trtype(&self) -> u8 {
        trtype::TCP
    }

    fn listen(&self, target: Arc<Target>, addr: SocketAddr) -> io::Result<Listener> {
        let l = TcpListener::bind(addr)?;
        let bound = l.local_addr()?;
        target.add_port(trtype::TCP, bound);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let opts = self.opts.clone();
        tracing::info!(addr = %bound, "NVMe/TCP listening");
        let th = std::thread::Builder::new().name(format!("tcp-accept-{}", bound.port())).spawn(move || {
            for s in l.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                match s {
                    Ok(s) => {
                        let t = target.clone();
                        let o = opts.clone();
                        let peer = s.peer_addr().ok();
                        let r = std::thread::Builder::new().name("nvme-tcp-q".into()).spawn(move || {
                            let span = tracing::info_span!("conn", peer = ?peer);
                            let _g = span.enter();
                            serve(t, s, o)
                        });
                        if let Err(e) = r {
                            tracing::error!(error = %e, "cannot spawn a queue thread");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })?;
        Ok(Listener::new(bound, stop, th))
    }
}

/// A protocol violation: the connection ends with a C2HTermReq.
#[derive(Debug)]
struct Fatal {
    fes: u16,
    fei: u32,
    why: String,
    /// The offending PDU header, echoed back in the C2HTermReq.
    hdr: Vec<u8>,
}

impl Fatal {
    fn new(fes: u16, fei: u32, why: impl Into<String>) -> Self {
        Self { fes, fei, why: why.into(), hdr: Vec::new() }
    }
}

enum ConnErr {
    Io(io::Error),
    Fatal(Box<Fatal>),
}

impl From<io::Error> for ConnErr {
    fn from(e: io::Error) -> Self {
        ConnErr::Io(e)
    }
}

/// What the queue needs of a byte stream. TCP in production; a Unix
/// socket pair lets tests and the fuzzer drive the same state machine
/// without a network.
pub trait Sock: Read + Write + Send + Sync + Sized + 'static {
    fn try_clone_sock(&self) -> io::Result<Self>;
    fn shutdown_both(&self);
    fn set_nonblocking_sock(&self, on: bool) -> io::Result<()>;
    fn set_read_timeout_sock(&self, t: Option<Duration>) -> io::Result<()>;
    /// Disables Nagle where the stream has it.
    fn no_delay(&self) {}
}

macro_rules! impl_sock {
    ($t:ty, |$s:ident| $nodelay:block) => {
        impl Sock for $t {
            fn try_clone_sock(&self) -> io::Result<Self> {
                self.try_clone()
            }
            fn shutdown_both(&self) {
                let _ = self.shutdown(Shutdown::Both);
            }
            fn set_nonblocking_sock(&self, on: bool) -> io::Result<()> {
                self.set_nonblocking(on)
            }
            fn set_read_timeout_sock(&self, t: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(t)
            }
            fn no_delay(&self) {
                let $s = self;
                $nodelay
            }
        }
    };
}
impl_sock!(TcpStream, |s| {
    let _ = s.set_nodelay(true);
});
impl_sock!(UnixStream, |_s| {});

/// The send side, shared with the controller so an asynchronous event can
/// be completed from another thread.
struct Tx<S: Sock> {
    stream: S,
    buf: Vec<u8>,
    hdgst: bool,
    ddgst: bool,
    /// Host's data alignment for C2HData (HPDA).
    hpda: u8,
    broken: bool,
}

impl<S: Sock> Tx<S> {
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() || self.broken {
            return Ok(());
        }
        let r = self.stream.write_all(&self.buf);
        self.buf.clear();
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    fn push_header(&mut self, hdr: &[u8]) {
        self.buf.extend_from_slice(hdr);
        if self.hdgst {
            let d = w::crc32c(hdr);
            self.buf.extend_from_slice(&d.to_le_bytes());
        }
    }

    fn capsule_resp(&mut self, cid: u16, sqhd: u16, qid: u16, c: &Completion) {
        let plen = 24 + if self.hdgst { DIGEST_LEN } else { 0 };
        let mut r = w::CapsuleResp::new_zeroed();
        r.ch = CommonHeader::new(PduType::CapsuleResp, if self.hdgst { flags::HDGSTF } else { 0 }, 0, plen as u32);
        r.cqe.result = c.result.into();
        r.cqe.sq_head = sqhd.into();
        r.cqe.sq_id = qid.into();
        r.cqe.cid = cid.into();
        r.cqe.status = c.status.to_cqe_field().into();
        self.push_header(r.as_bytes());
    }

    /// Reserves a C2HData PDU for `len` bytes; returns where its header and data start.
    fn reserve_c2h(&mut self, len: usize) -> (usize, usize) {
        let start = self.buf.len();
        let pdo = w::data_offset(24, self.hdgst, self.hpda);
        let total = pdo + len + if self.ddgst { DIGEST_LEN } else { 0 };
        self.buf.resize(start + total, 0);
        (start, start + pdo)
    }

    fn finish_c2h(&mut self, start: usize, data_at: usize, len: usize, cid: u16, success: bool) {
        let pdo = data_at - start;
        let plen = (self.buf.len() - start) as u32;
        let mut f = flags::DATA_LAST | if success { flags::DATA_SUCCESS } else { 0 };
        if self.hdgst {
            f |= flags::HDGSTF;
        }
        if self.ddgst {
            f |= flags::DDGSTF;
            let d = w::crc32c(&self.buf[data_at..data_at + len]);
            self.buf[data_at + len..data_at + len + 4].copy_from_slice(&d.to_le_bytes());
        }
        let h = DataHdr {
            ch: CommonHeader::new(PduType::C2HData, f, pdo as u8, plen),
            cccid: cid.into(),
            ttag: 0.into(),
            datao: 0.into(),
            datal: (len as u32).into(),
            rsvd: [0; 4],
        };
        self.buf[start..start + 24].copy_from_slice(h.as_bytes());
        if self.hdgst {
            let d = w::crc32c(h.as_bytes());
            self.buf[start + 24..start + 28].copy_from_slice(&d.to_le_bytes());
        }
    }

    fn r2t(&mut self, cid: u16, ttag: u16, len: u32) {
        let plen = 24 + if self.hdgst { DIGEST_LEN } else { 0 };
        let h = w::R2T {
            ch: CommonHeader::new(PduType::R2T, if self.hdgst { flags::HDGSTF } else { 0 }, 0, plen as u32),
            cccid: cid.into(),
            ttag: ttag.into(),
            r2to: 0.into(),
            r2tl: len.into(),
            rsvd: [0; 4],
        };
        self.push_header(h.as_bytes());
    }

    fn term_req(&mut self, f: &Fatal, hdr: &[u8]) {
        let n = hdr.len().min(w::TERM_REQ_MAX_DATA);
        let t = TermReq {
            ch: CommonHeader::new(PduType::C2HTermReq, 0, 0, 24 + n as u32),
            fes: f.fes.into(),
            fei: f.fei.into(),
            rsvd: [0; 10],
        };
        self.buf.extend_from_slice(t.as_bytes());
        self.buf.extend_from_slice(&hdr[..n]);
    }
}

struct TcpQueue<S: Sock> {
    qid: u16,
    tx: Arc<Mutex<Tx<S>>>,
    sock: S,
}

impl<S: Sock> QueueHandle for TcpQueue<S> {
    fn qid(&self) -> u16 {
        self.qid
    }
    fn kill(&self) {
        self.sock.shutdown_both();
    }
    fn complete_async(&self, cid: u16, status: Status, result: u64) {
        let mut tx = self.tx.lock();
        tx.capsule_resp(cid, 0, self.qid, &Completion { status, result, deferred: false });
        if let Err(e) = tx.flush() {
            tracing::warn!(error = %e, cid, "could not send an asynchronous completion");
        }
    }
}

/// Bytes received but not yet consumed.
struct Rx<S: Sock> {
    stream: S,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    busy_poll: Option<Duration>,
}

impl<S: Sock> Rx<S> {
    fn avail(&self) -> usize {
        self.end - self.start
    }

    /// Makes `n` bytes available, sending pending responses before waiting.
    fn ensure(&mut self, n: usize, tx: &Mutex<Tx<S>>) -> io::Result<()> {
        debug_assert!(n <= self.buf.len());
        while self.avail() < n {
            if self.start > 0 && self.buf.len() - self.start < n {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            tx.lock().flush()?;
            match sock_read(&mut self.stream, self.busy_poll, &mut self.buf[self.end..])? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                k => self.end += k,
            }
        }
        Ok(())
    }

    /// Whether a complete PDU is buffered, so handling it will not block.
    fn has_whole_pdu(&self) -> bool {
        let b = &self.buf[self.start..self.end];
        b.len() >= 8 && b.len() >= u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Fills `dst` from buffered bytes, then straight from the socket so
    /// large payloads are not copied twice.
    fn read_into(&mut self, dst: &mut [u8], tx: &Mutex<Tx<S>>) -> io::Result<()> {
        let n = self.avail().min(dst.len());
        dst[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.consume(n);
        let mut done = n;
        while done < dst.len() {
            tx.lock().flush()?;
            match sock_read(&mut self.stream, self.busy_poll, &mut dst[done..])? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                k => done += k,
            }
        }
        Ok(())
    }

    fn skip(&mut self, mut n: usize, tx: &Mutex<Tx<S>>) -> io::Result<()> {
        while n > 0 {
            let k = n.min(self.buf.len());
            self.ensure(k, tx)?;
            self.consume(k);
            n -= k;
        }
        Ok(())
    }
}

/// Reads what the socket has; in poll mode spins on a non-blocking read
/// for up to `spin` before sleeping in the kernel.
fn sock_read<S: Sock>(stream: &mut S, spin: Option<Duration>, dst: &mut [u8]) -> io::Result<usize> {
    if let Some(spin) = spin {
        let t0 = std::time::Instant::now();
        stream.set_nonblocking_sock(true)?;
        let r = loop {
            match stream.read(dst) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && t0.elapsed() < spin => std::hint::spin_loop(),
                other => break other,
            }
        };
        stream.set_nonblocking_sock(false)?;
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
    stream.read(dst)
}

/// One request slot per possible outstanding command.
struct Slot {
    busy: bool,
    sqe: Sqe,
    parsed: Option<cmd::Parsed>,
    buf: Vec<u8>,
    expected: u32,
    received: u32,
}

struct Conn<S: Sock> {
    rx: Rx<S>,
    tx: Arc<Mutex<Tx<S>>>,
    ctx: QueueCtx,
    hdgst: bool,
    ddgst: bool,
    slots: Vec<Slot>,
    free: Vec<u16>,
    scratch: Vec<u8>,
    handle: Option<Arc<TcpQueue<S>>>,
    /// Reads and writes waiting to go to the backend together.
    batch: Vec<(usize, BatchIo)>,
    batch_ns: Option<Arc<crate::namespace::Namespace>>,
}

/// Largest batch of reads/writes handed to the backend at once.
const MAX_BATCH: usize = 32;

/// Serves one queue pair on `s` until the host disconnects or breaks the
/// protocol. Returns when the connection is closed.
pub fn serve<S: Sock>(target: Arc<Target>, s: S, opts: TcpOpts) {
    s.no_delay();
    let tx_stream = match s.try_clone_sock() {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot clone socket");
            return;
        }
    };
    let depth = target.opts.max_queue_depth as usize;
    let mut c = Conn {
        rx: Rx {
            stream: s,
            buf: vec![0u8; RECV_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            busy_poll: (opts.busy_poll_us > 0).then(|| Duration::from_micros(opts.busy_poll_us as u64)),
        },
        tx: Arc::new(Mutex::new(Tx {
            stream: tx_stream,
            buf: Vec::with_capacity(64 * 1024),
            hdgst: false,
            ddgst: false,
            hpda: 0,
            broken: false,
        })),
        ctx: QueueCtx::new(target.clone(), trtype::TCP),
        hdgst: false,
        ddgst: false,
        slots: (0..depth)
            .map(|_| Slot { busy: false, sqe: Sqe::default(), parsed: None, buf: Vec::new(), expected: 0, received: 0 })
            .collect(),
        free: (0..depth as u16).rev().collect(),
        scratch: Vec::new(),
        handle: None,
        batch: Vec::with_capacity(MAX_BATCH),
        batch_ns: None,
    };
    let r = c.run();
    match r {
        Ok(()) => {}
        Err(ConnErr::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
        {
            tracing::debug!(qid = c.ctx.qid, "connection closed by peer")
        }
        Err(ConnErr::Io(e)) => tracing::warn!(qid = c.ctx.qid, error = %e, "connection I/O error"),
        Err(ConnErr::Fatal(f)) => {
            tracing::error!(
                qid = c.ctx.qid,
                fes = f.fes,
                fei = f.fei,
                "fatal transport error: {}; sending C2HTermReq and closing",
                f.why
            );
            let mut tx = c.tx.lock();
            tx.term_req(&f, &f.hdr);
            let _ = tx.flush();
        }
    }
    c.rx.stream.shutdown_both();
    if let Some(ctrl) = &c.ctx.ctrl {
        if c.ctx.qid == 0 {
            // Losing the admin queue ends the association.
            target.destroy_ctrl(ctrl.cntlid);
        }
    }
}

impl<S: Sock> Conn<S> {
    fn fatal<T>(&self, mut f: Fatal, hdr: &[u8]) -> Result<T, ConnErr> {
        f.hdr = hdr[..hdr.len().min(w::MAX_HLEN)].to_vec();
        Err(ConnErr::Fatal(Box::new(f)))
    }

    fn run(&mut self) -> Result<(), ConnErr> {
        self.initialize()?;
        loop {
            // Run gathered I/O before waiting for more input.
            if !self.batch.is_empty() && !self.rx.has_whole_pdu() {
                self.run_batch()?;
            }
            // The whole header, with its digest, lands in `hdr`.
            self.rx.ensure(8, &self.tx)?;
            let ch = CommonHeader::read_from_bytes(&self.rx.buf[self.rx.start..self.rx.start + 8])
                .map_err(|_| io::Error::other("short header"))?;
            let max_plen = 128 + self.ctx.target.opts.inline_data_size.max(8192) + MAX_H2C_DATA + 256;
            let t = match ch.validate(self.hdgst, self.ddgst, max_plen) {
                Ok(t) => t,
                Err(e) => {
                    let fes = if matches!(e, nvme_wire::WireError::TooLong { .. }) {
                        w::fes::DATA_OUT_OF_RANGE
                    } else {
                        w::fes::INVALID_HEADER_FIELD
                    };
                    let hdr = ch.as_bytes().to_vec();
                    return self.fatal(Fatal::new(fes, 0, e.to_string()), &hdr);
                }
            };
            let hlen = ch.hlen as usize;
            let hd = if self.hdgst && t.may_have_hdgst() { DIGEST_LEN } else { 0 };
            self.rx.ensure(hlen + hd, &self.tx)?;
            let mut hdr = [0u8; w::MAX_HLEN + DIGEST_LEN];
            hdr[..hlen + hd].copy_from_slice(&self.rx.buf[self.rx.start..self.rx.start + hlen + hd]);
            self.rx.consume(hlen + hd);
            if hd > 0 {
                let got = u32::from_le_bytes([hdr[hlen], hdr[hlen + 1], hdr[hlen + 2], hdr[hlen + 3]]);
                let want = w::crc32c(&hdr[..hlen]);
                if got != want {
                    return self.fatal(
                        Fatal::new(w::fes::HDR_DIGEST_ERROR, 0, format!("header digest {got:#x} != {want:#x}")),
                        &hdr[..hlen],
                    );
                }
            }
            let hdr = &hdr[..hlen];
            match t {
                PduType::CapsuleCmd => self.on_capsule(&ch, hdr, hd)?,
                PduType::H2CData => self.on_h2c_data(&ch, hdr, hd)?,
                PduType::H2CTermReq => {
                    let fes = u16::from_le_bytes([hdr[8], hdr[9]]);
                    tracing::error!(qid = self.ctx.qid, fes, "host terminated the connection (H2CTermReq)");
                    return Ok(());
                }
                other => {
                    let f = Fatal::new(
                        w::fes::INVALID_HEADER_FIELD,
                        0,
                        format!("{other:?} is not a host-to-controller PDU"),
                    );
                    return self.fatal(f, hdr);
                }
            }
        }
    }

    /// ICReq / ICResp exchange.
    fn initialize(&mut self) -> Result<(), ConnErr> {
        self.rx.stream.set_read_timeout_sock(Some(Duration::from_secs(10)))?;
        self.rx.ensure(128, &self.tx)?;
        self.rx.stream.set_read_timeout_sock(None)?;
        let req = IcReq::read_from_bytes(&self.rx.buf[self.rx.start..self.rx.start + 128])
            .map_err(|_| io::Error::other("short ICReq"))?;
        self.rx.consume(128);
        let hdr = req.as_bytes().to_vec();
        if req.ch.pdu_type != PduType::IcReq as u8 || req.ch.hlen != 128 || req.ch.plen.get() != 128 {
            return self.fatal(Fatal::new(w::fes::INVALID_HEADER_FIELD, 0, "first PDU is not a valid ICReq"), &hdr);
        }
        if req.pfv.get() != 0 {
            return self.fatal(
                Fatal::new(w::fes::UNSUPPORTED_PARAMETER, 8, format!("PDU format version {}", req.pfv.get())),
                &hdr,
            );
        }
        if req.hpda > 31 {
            return self.fatal(Fatal::new(w::fes::INVALID_HEADER_FIELD, 10, format!("HPDA {}", req.hpda)), &hdr);
        }
        self.hdgst = req.digest & w::digest::HDGST_ENABLE != 0;
        self.ddgst = req.digest & w::digest::DDGST_ENABLE != 0;
        let mut resp = IcResp::new_zeroed();
        resp.ch = CommonHeader::new(PduType::IcResp, 0, 0, 128);
        resp.cpda = 0;
        resp.digest = req.digest & (w::digest::HDGST_ENABLE | w::digest::DDGST_ENABLE);
        resp.maxh2cdata = MAX_H2C_DATA.into();
        let mut tx = self.tx.lock();
        tx.buf.extend_from_slice(resp.as_bytes());
        tx.flush()?;
        tx.hdgst = self.hdgst;
        tx.ddgst = self.ddgst;
        tx.hpda = req.hpda;
        tracing::debug!(hdgst = self.hdgst, ddgst = self.ddgst, hpda = req.hpda, "ICReq accepted");
        Ok(())
    }

    fn alloc_slot(&mut self, hdr: &[u8]) -> Result<usize, ConnErr> {
        match self.free.pop() {
            Some(i) => Ok(i as usize),
            None => self.fatal(
                Fatal::new(w::fes::PDU_SEQUENCE_ERROR, 0, "more commands outstanding than the queue holds"),
                hdr,
            ),
        }
    }

    /// Reads a PDU's data (after its header and header digest) into `dst`,
    /// checking the data digest. Returns false on a digest mismatch.
    fn read_data(&mut self, ch: &CommonHeader, hd: usize, slot: usize, at: usize, len: usize) -> Result<bool, ConnErr> {
        let pad = ch.pdo as usize - (ch.hlen as usize + hd);
        self.rx.skip(pad, &self.tx)?;
        let s = &mut self.slots[slot];
        if s.buf.len() < at + len {
            s.buf.resize(at + len, 0);
        }
        self.rx.read_into(&mut s.buf[at..at + len], &self.tx)?;
        if self.ddgst {
            let mut d = [0u8; 4];
            self.rx.read_into(&mut d, &self.tx)?;
            let want = w::crc32c(&self.slots[slot].buf[at..at + len]);
            if u32::from_le_bytes(d) != want {
                tracing::error!(qid = self.ctx.qid, "data digest mismatch; failing the command");
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn data_len(&self, ch: &CommonHeader, hd: usize) -> usize {
        let plen = ch.plen.get() as usize;
        if plen == ch.hlen as usize + hd {
            return 0;
        }
        plen - ch.pdo as usize - if self.ddgst { DIGEST_LEN } else { 0 }
    }

    fn on_capsule(&mut self, ch: &CommonHeader, hdr: &[u8], hd: usize) -> Result<(), ConnErr> {
        let sqe = match Sqe::read_from_bytes(&hdr[8..72]) {
            Ok(s) => s,
            Err(_) => return self.fatal(Fatal::new(w::fes::INVALID_HEADER_FIELD, 8, "short SQE"), hdr),
        };
        let cid = sqe.cid.get();
        let icd_len = self.data_len(ch, hd);
        let inline_max = if self.ctx.qid == 0 {
            8192.max(self.ctx.target.opts.inline_data_size)
        } else {
            self.ctx.target.opts.inline_data_size
        } as usize;
        if icd_len > inline_max {
            return self.fatal(
                Fatal::new(
                    w::fes::DATA_OUT_OF_RANGE,
                    4,
                    format!("{icd_len} bytes of in-capsule data exceed {inline_max}"),
                ),
                hdr,
            );
        }
        let slot = self.alloc_slot(hdr)?;
        let mut digest_ok = true;
        if icd_len > 0 {
            digest_ok = self.read_data(ch, hd, slot, 0, icd_len)?;
        }
        let s = &mut self.slots[slot];
        s.busy = true;
        s.sqe = sqe;
        if !digest_ok {
            return self.complete(slot, Completion::err(TRANSIENT_TRANSPORT_ERROR));
        }
        let parsed = match cmd::parse(&self.ctx, &sqe) {
            Ok(p) => p,
            Err(c) => return self.complete(slot, c),
        };
        let xfer = parsed.xfer;
        let d = sqe.dptr;
        let need = xfer.len();
        if need > 0 && sqe.psdt() != sgl::PSDT_SGL_MPTR_CONTIG && sqe.psdt() != 0x2 {
            return self.complete(slot, Completion::err(Status::INVALID_FIELD));
        }
        match xfer {
            Xfer::FromHost(n) if icd_len > 0 => {
                if d.type_ != sgl::DATA_BLOCK_OFFSET || d.addr.get() != 0 {
                    return self.complete(slot, Completion::err(Status::SGL_INVALID_OFFSET));
                }
                if (d.length.get() as usize) < n as usize || icd_len < n as usize {
                    return self.complete(slot, Completion::err(Status::SGL_INVALID_DATA));
                }
                self.slots[slot].parsed = Some(parsed);
                self.execute(slot)
            }
            Xfer::FromHost(n) => {
                if d.type_ != sgl::TRANSPORT_DATA_BLOCK {
                    return self.complete(slot, Completion::err(Status::SGL_INVALID_TYPE));
                }
                if d.length.get() < n {
                    return self.complete(slot, Completion::err(Status::SGL_INVALID_DATA));
                }
                let s = &mut self.slots[slot];
                s.parsed = Some(parsed);
                s.expected = n;
                s.received = 0;
                self.tx.lock().r2t(cid, slot as u16, n);
                Ok(())
            }
            Xfer::ToHost(n) => {
                if icd_len > 0 || d.type_ != sgl::TRANSPORT_DATA_BLOCK {
                    return self.complete(slot, Completion::err(Status::SGL_INVALID_TYPE));
                }
                if d.length.get() < n {
                    return self.complete(slot, Completion::err(Status::SGL_INVALID_DATA));
                }
                self.slots[slot].parsed = Some(parsed);
                self.execute(slot)
            }
            Xfer::None => {
                self.slots[slot].parsed = Some(parsed);
                self.execute(slot)
            }
        }
    }

    fn on_h2c_data(&mut self, ch: &CommonHeader, hdr: &[u8], hd: usize) -> Result<(), ConnErr> {
        let Ok(h) = DataHdr::read_from_bytes(hdr) else {
            return self.fatal(Fatal::new(w::fes::INVALID_HEADER_FIELD, 0, "short H2CData"), hdr);
        };
        let (ttag, off, len) = (h.ttag.get() as usize, h.datao.get(), h.datal.get());
        let ok_slot =
            self.slots.get(ttag).is_some_and(|s| s.busy && s.expected > 0 && s.sqe.cid.get() == h.cccid.get());
        if !ok_slot {
            return self.fatal(
                Fatal::new(
                    w::fes::INVALID_HEADER_FIELD,
                    10,
                    format!("H2CData for unknown ttag {ttag} / cid {}", h.cccid.get()),
                ),
                hdr,
            );
        }
        let s = &self.slots[ttag];
        if off != s.received || len == 0 || off as u64 + len as u64 > s.expected as u64 || len > MAX_H2C_DATA {
            return self.fatal(
                Fatal::new(
                    w::fes::DATA_OUT_OF_RANGE,
                    12,
                    format!("H2CData offset {off} len {len}, expected offset {} of {}", s.received, s.expected),
                ),
                hdr,
            );
        }
        if self.data_len(ch, hd) != len as usize {
            return self.fatal(Fatal::new(w::fes::INVALID_HEADER_FIELD, 16, "DATAL disagrees with PLEN"), hdr);
        }
        if !self.read_data(ch, hd, ttag, off as usize, len as usize)? {
            self.slots[ttag].expected = 0;
            return self.complete(ttag, Completion::err(TRANSIENT_TRANSPORT_ERROR));
        }
        let s = &mut self.slots[ttag];
        s.received += len;
        if s.received == s.expected {
            if ch.flags & flags::DATA_LAST == 0 {
                tracing::debug!("last H2CData PDU without the LAST flag");
            }
            s.expected = 0;
            return self.execute(ttag);
        }
        Ok(())
    }

    /// Runs the slot's command and queues its data and completion.
    fn execute(&mut self, slot: usize) -> Result<(), ConnErr> {
        if self.ctx.qid != 0 {
            let b = self.slots[slot].parsed.as_ref().and_then(cmd::io::batchable).map(|(ns, io)| (ns.clone(), io));
            if let Some((ns, io)) = b {
                if self.batch_ns.as_ref().is_some_and(|cur| !Arc::ptr_eq(cur, &ns)) {
                    self.run_batch()?;
                }
                self.batch_ns = Some(ns);
                self.batch.push((slot, io));
                if self.batch.len() == MAX_BATCH {
                    self.run_batch()?;
                }
                return Ok(());
            }
            // Anything else runs after the reads and writes before it.
            self.run_batch()?;
        }
        let Some(p) = self.slots[slot].parsed.take() else {
            return self.complete(slot, Completion::err(Status::INTERNAL));
        };
        let sqe = self.slots[slot].sqe;
        let was_connected = self.ctx.ctrl.is_some();
        let c = match p.xfer {
            Xfer::ToHost(n) => {
                let n = n as usize;
                let tx = self.tx.clone();
                let mut tx = tx.lock();
                let (start, data_at) = tx.reserve_c2h(n);
                let c = cmd::execute(&mut self.ctx, p, &sqe, &[], &mut tx.buf[data_at..data_at + n], &mut self.scratch);
                if c.status.is_success() && !c.deferred {
                    let success = self.ctx.sqflow_disabled && c.result == 0;
                    tx.finish_c2h(start, data_at, n, sqe.cid.get(), success);
                    if success {
                        self.ctx.advance_sqhd();
                        self.release(slot);
                        let big = tx.buf.len() > SEND_FLUSH_AT;
                        if big {
                            tx.flush()?;
                        }
                        return Ok(());
                    }
                } else {
                    tx.buf.truncate(start);
                }
                c
            }
            Xfer::FromHost(n) => {
                let buf = std::mem::take(&mut self.slots[slot].buf);
                let c = cmd::execute(&mut self.ctx, p, &sqe, &buf[..n as usize], &mut [], &mut self.scratch);
                self.slots[slot].buf = buf;
                c
            }
            Xfer::None => cmd::execute(&mut self.ctx, p, &sqe, &[], &mut [], &mut self.scratch),
        };
        if !was_connected && self.ctx.ctrl.is_some() {
            self.register_queue()?;
        }
        if c.deferred {
            // Completed later by the controller (Asynchronous Event Request).
            self.release(slot);
            return Ok(());
        }
        self.complete(slot, c)
    }

    /// Hands the gathered reads and writes to the backend in one batch:
    /// reads land straight in their C2HData PDUs in the send buffer, writes
    /// come from their slots.
    fn run_batch(&mut self) -> Result<(), ConnErr> {
        let Some(ns) = self.batch_ns.take() else { return Ok(()) };
        let Some(ctrl) = self.ctx.ctrl.clone() else { return Ok(()) };
        ctrl.last_seen.store(self.ctx.target.now_ms(), std::sync::atomic::Ordering::Relaxed);
        let n = self.batch.len();
        let tx_arc = self.tx.clone();
        let mut tx = tx_arc.lock();
        // (PDU start, data start, end) of each read's C2HData in the send buffer.
        let mut regions = [(0usize, 0usize, 0usize); MAX_BATCH];
        for (k, (_, io)) in self.batch.iter().enumerate() {
            if !io.write {
                let (start, data_at) = tx.reserve_c2h(io.len as usize);
                regions[k] = (start, data_at, tx.buf.len());
            }
        }
        let mut done = [Completion::ok(0); MAX_BATCH];
        {
            let mut ops: [IoOp<'_>; MAX_BATCH] = std::array::from_fn(|_| IoOp::new(IoBuf::Read(&mut []), 0));
            let mut rest: &mut [u8] = &mut tx.buf[..];
            let mut at = 0;
            for (k, (slot, io)) in self.batch.iter().enumerate() {
                let buf = if io.write {
                    IoBuf::Write(&self.slots[*slot].buf[..io.len as usize], io.fua)
                } else {
                    let (_, data_at, _) = regions[k];
                    let tail = std::mem::take(&mut rest);
                    let (_, tail) = tail.split_at_mut(data_at - at);
                    let (mine, tail) = tail.split_at_mut(io.len as usize);
                    rest = tail;
                    at = data_at + io.len as usize;
                    IoBuf::Read(mine)
                };
                ops[k] = IoOp::new(buf, io.off);
            }
            cmd::io::execute_batch(&ctrl, &ns, &mut ops[..n], &mut done[..n]);
        }
        // Finish the reads that worked; cut the PDUs of those that failed
        // (last first, so earlier offsets stay valid).
        let success_flag = self.ctx.sqflow_disabled;
        for k in (0..n).rev() {
            let (slot, io) = self.batch[k];
            if io.write {
                continue;
            }
            let (start, data_at, end) = regions[k];
            if done[k].status.is_success() {
                tx.finish_c2h(start, data_at, io.len as usize, self.slots[slot].sqe.cid.get(), success_flag);
            } else {
                tx.buf.drain(start..end);
            }
        }
        drop(tx);
        let batch = std::mem::take(&mut self.batch);
        for (k, &(slot, io)) in batch.iter().enumerate() {
            self.slots[slot].parsed = None;
            if !io.write && success_flag && done[k].status.is_success() {
                self.ctx.advance_sqhd();
                self.release(slot);
            } else {
                self.complete(slot, done[k])?;
            }
        }
        self.batch = batch;
        self.batch.clear();
        let mut tx = self.tx.lock();
        if tx.buf.len() > SEND_FLUSH_AT {
            tx.flush()?;
        }
        Ok(())
    }

    fn register_queue(&mut self) -> Result<(), ConnErr> {
        let Some(ctrl) = self.ctx.ctrl.clone() else { return Ok(()) };
        let sock = self.rx.stream.try_clone_sock()?;
        let q = Arc::new(TcpQueue { qid: self.ctx.qid, tx: self.tx.clone(), sock });
        let weak: std::sync::Weak<dyn QueueHandle> = Arc::downgrade(&q) as std::sync::Weak<dyn QueueHandle>;
        ctrl.add_queue(weak);
        self.handle = Some(q);
        Ok(())
    }

    fn release(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        debug_assert!(s.busy, "releasing a free slot");
        s.busy = false;
        s.parsed = None;
        s.expected = 0;
        self.free.push(slot as u16);
    }

    fn complete(&mut self, slot: usize, c: Completion) -> Result<(), ConnErr> {
        let cid = self.slots[slot].sqe.cid.get();
        let sqhd = self.ctx.advance_sqhd();
        self.release(slot);
        let mut tx = self.tx.lock();
        tx.capsule_resp(cid, sqhd, self.ctx.qid, &c);
        if tx.buf.len() > SEND_FLUSH_AT {
            tx.flush()?;
        }
        Ok(())
    }
}
