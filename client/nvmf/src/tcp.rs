//! The NVMe/TCP side of a host queue pair: ICReq/ICResp, capsule and data
//! PDUs, R2T, digests.

use super::queue::{Completed, DataDir, QueueParams, QueueTransport};
use super::{NvmfError, Result};
use nvme_wire::fabrics::ConnectData;
use nvme_wire::nvme::{sgl, Sqe};
use nvme_wire::status::Status;
use nvme_wire::tcp::{self as w, digest, flags, CommonHeader, DataHdr, IcReq, IcResp, PduType, DIGEST_LEN};
use nvme_wire::zerocopy::{FromBytes, FromZeros, IntoBytes};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Req {
    busy: bool,
    tag: u64,
    /// Data to send when the controller asks for it with R2T.
    out: Vec<u8>,
    out_len: usize,
    /// Where C2HData lands.
    inb: Vec<u8>,
    in_len: usize,
}

pub struct TcpQueue {
    p: QueueParams,
    stream: TcpStream,
    hdgst: bool,
    ddgst: bool,
    cpda: u8,
    maxh2cdata: u32,
    reqs: Vec<Req>,
    free: Vec<u16>,
    tx: Vec<u8>,
    rbuf: Box<[u8]>,
    rs: usize,
    re: usize,
    /// The socket's read timeout as last set (one setsockopt, not one per read).
    sock_timeout: Option<Duration>,
    outstanding: usize,
}

impl TcpQueue {
    /// Opens the TCP connection and exchanges ICReq / ICResp.
    pub fn connect(addr: &str, qid: u16, depth: u16, hdgst: bool, ddgst: bool) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut req = IcReq::new_zeroed();
        req.ch = CommonHeader::new(PduType::IcReq, 0, 0, 128);
        req.pfv = 0.into();
        req.hpda = 0;
        req.digest = if hdgst { digest::HDGST_ENABLE } else { 0 } | if ddgst { digest::DDGST_ENABLE } else { 0 };
        req.maxr2t = 0.into();
        (&stream).write_all(req.as_bytes())?;
        let mut b = [0u8; 128];
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        (&stream).read_exact(&mut b)?;
        stream.set_read_timeout(None)?;
        let resp = IcResp::read_from_bytes(&b[..]).map_err(|_| NvmfError::Protocol("short ICResp".into()))?;
        if resp.ch.pdu_type != PduType::IcResp as u8 || resp.ch.plen.get() != 128 {
            if resp.ch.pdu_type == PduType::C2HTermReq as u8 {
                return Err(NvmfError::Terminated { fes: u16::from_le_bytes([b[8], b[9]]) });
            }
            return Err(NvmfError::Protocol(format!("expected ICResp, got PDU type {:#x}", resp.ch.pdu_type)));
        }
        if resp.pfv.get() != 0 || resp.cpda > 31 || resp.maxh2cdata.get() < 4096 {
            return Err(NvmfError::Protocol("ICResp parameters out of range".into()));
        }
        let depth = depth.max(2);
        Ok(Self {
            p: QueueParams {
                qid,
                depth,
                // NVMe/TCP carries a Connect's data in the capsule on every
                // queue; an I/O queue learns its real limit (IOCCSZ) after it.
                inline_max: if qid == 0 { 8192 } else { size_of::<ConnectData>() },
                poll_mode: false,
                timeout: Duration::from_secs(30),
            },
            stream,
            hdgst: resp.digest & digest::HDGST_ENABLE != 0,
            ddgst: resp.digest & digest::DDGST_ENABLE != 0,
            cpda: resp.cpda,
            maxh2cdata: resp.maxh2cdata.get(),
            reqs: (0..depth).map(|_| Req::default()).collect(),
            free: (0..depth).rev().collect(),
            tx: Vec::with_capacity(64 * 1024),
            rbuf: vec![0u8; 256 * 1024].into_boxed_slice(),
            rs: 0,
            re: 0,
            sock_timeout: None,
            outstanding: 0,
        })
    }

    fn push_header(&mut self, hdr: &[u8]) {
        self.tx.extend_from_slice(hdr);
        if self.hdgst {
            self.tx.extend_from_slice(&w::crc32c(hdr).to_le_bytes());
        }
    }

    fn fill(&mut self, need: usize, deadline: Instant) -> Result<()> {
        while self.re - self.rs < need {
            self.flush()?;
            if self.rs > 0 && self.rbuf.len() - self.rs < need {
                self.rbuf.copy_within(self.rs..self.re, 0);
                self.re -= self.rs;
                self.rs = 0;
            }
            let n = self.read_sock(deadline)?;
            if n == 0 {
                return Err(NvmfError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.re += n;
        }
        Ok(())
    }

    fn read_sock(&mut self, deadline: Instant) -> Result<usize> {
        let end = self.re;
        if self.p.poll_mode {
            self.stream.set_nonblocking(true)?;
            let r = loop {
                match self.stream.read(&mut self.rbuf[end..]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            break Err(NvmfError::Timeout(format!("queue {} waiting for the controller", self.p.qid)));
                        }
                        std::hint::spin_loop();
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other.map_err(NvmfError::from),
                }
            };
            self.stream.set_nonblocking(false)?;
            return r;
        }
        // The socket waits at most `timeout` at a time; the deadline is
        // checked when it wakes (a hang is reported within twice the timeout).
        if self.sock_timeout != Some(self.p.timeout) {
            self.stream.set_read_timeout(Some(self.p.timeout))?;
            self.sock_timeout = Some(self.p.timeout);
        }
        loop {
            match self.stream.read(&mut self.rbuf[end..]) {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        return Err(NvmfError::Timeout(format!("queue {} waiting for the controller", self.p.qid)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other.map_err(NvmfError::from),
            }
        }
    }

    fn take(&mut self, n: usize) {
        self.rs += n;
        if self.rs == self.re {
            self.rs = 0;
            self.re = 0;
        }
    }

    /// Reads whatever the socket has without waiting; false if nothing.
    fn try_read_nonblocking(&mut self) -> Result<bool> {
        // Make room first: a partial header at the very end of the buffer
        // would otherwise leave nowhere to read into, and poll would spin.
        if self.rs > 0 {
            self.rbuf.copy_within(self.rs..self.re, 0);
            self.re -= self.rs;
            self.rs = 0;
        }
        self.stream.set_nonblocking(true)?;
        let end = self.re;
        let r = self.stream.read(&mut self.rbuf[end..]);
        self.stream.set_nonblocking(false)?;
        match r {
            Ok(0) => Err(NvmfError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => {
                self.re += n;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn finish(&mut self, cid: u16, status: Status, result: u64) -> Result<Completed> {
        let r =
            self.reqs.get_mut(cid as usize).filter(|r| r.busy).ok_or_else(|| {
                NvmfError::Protocol(format!("completion for command {cid}, which is not outstanding"))
            })?;
        r.busy = false;
        let tag = r.tag;
        self.free.push(cid);
        self.outstanding -= 1;
        Ok(Completed { cid, tag, status, result })
    }

    /// Returns true when the PDU carries the SUCCESS flag (no CapsuleResp follows).
    fn read_c2h(&mut self, ch: &CommonHeader, h: &DataHdr, hd: usize, deadline: Instant) -> Result<bool> {
        let cid = h.cccid.get() as usize;
        let (off, len) = (h.datao.get() as usize, h.datal.get() as usize);
        let ok = self.reqs.get(cid).is_some_and(|r| r.busy && off + len <= r.in_len);
        if !ok {
            return Err(NvmfError::Protocol(format!("C2HData for command {cid} out of range")));
        }
        let pad = ch.pdo as usize - (ch.hlen as usize + hd);
        self.fill(pad, deadline)?;
        self.take(pad);
        // Buffered bytes first, then straight from the socket into the request buffer.
        let have = (self.re - self.rs).min(len);
        let (rs, rbuf) = (self.rs, &self.rbuf);
        self.reqs[cid].inb[off..off + have].copy_from_slice(&rbuf[rs..rs + have]);
        self.take(have);
        let mut done = have;
        while done < len {
            let n = self.stream.read(&mut self.reqs[cid].inb[off + done..off + len])?;
            if n == 0 {
                return Err(NvmfError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            done += n;
        }
        if self.ddgst {
            self.fill(4, deadline)?;
            let got = u32::from_le_bytes(self.rbuf[self.rs..self.rs + 4].try_into().unwrap_or_default());
            self.take(4);
            if got != w::crc32c(&self.reqs[cid].inb[off..off + len]) {
                return Err(NvmfError::Protocol(format!("data digest mismatch on command {cid}")));
            }
        }
        Ok(ch.flags & flags::DATA_SUCCESS != 0)
    }

    fn send_h2c(&mut self, cid: u16, ttag: u16, off: usize, len: usize) -> Result<()> {
        let ok = self.reqs.get(cid as usize).is_some_and(|r| r.busy && off + len <= r.out_len && len > 0);
        if !ok {
            return Err(NvmfError::Protocol(format!("R2T for command {cid} out of range")));
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.maxh2cdata as usize);
            let pdo = w::data_offset(24, self.hdgst, self.cpda);
            let plen = pdo + n + if self.ddgst { DIGEST_LEN } else { 0 };
            let mut f = if self.hdgst { flags::HDGSTF } else { 0 };
            if self.ddgst {
                f |= flags::DDGSTF;
            }
            if done + n == len {
                f |= flags::DATA_LAST;
            }
            let h = DataHdr {
                ch: CommonHeader::new(PduType::H2CData, f, pdo as u8, plen as u32),
                cccid: cid.into(),
                ttag: ttag.into(),
                datao: ((off + done) as u32).into(),
                datal: (n as u32).into(),
                rsvd: [0; 4],
            };
            let start = self.tx.len();
            self.push_header(h.as_bytes());
            self.tx.resize(start + pdo, 0);
            let r = &self.reqs[cid as usize];
            let chunk = &r.out[off + done..off + done + n];
            self.tx.extend_from_slice(chunk);
            if self.ddgst {
                let d = w::crc32c(chunk);
                self.tx.extend_from_slice(&d.to_le_bytes());
            }
            done += n;
        }
        self.flush()
    }
}

impl QueueTransport for TcpQueue {
    fn params(&self) -> &QueueParams {
        &self.p
    }

    fn params_mut(&mut self) -> &mut QueueParams {
        &mut self.p
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    fn submit(&mut self, mut sqe: Sqe, data: DataDir<'_>, tag: u64) -> Result<u16> {
        let cid = self.free.pop().ok_or_else(|| NvmfError::Invalid("queue full".into()))?;
        sqe.cid = cid.into();
        sqe.flags = (sqe.flags & 0x3f) | (sgl::PSDT_SGL_MPTR_CONTIG << 6);
        let r = &mut self.reqs[cid as usize];
        r.busy = true;
        r.tag = tag;
        r.out_len = 0;
        r.in_len = 0;
        let mut icd: &[u8] = &[];
        match data {
            DataDir::None => sqe.dptr = Default::default(),
            DataDir::ToCtrl(d) if d.len() <= self.p.inline_max => {
                sqe.dptr.addr = 0.into();
                sqe.dptr.length = (d.len() as u32).into();
                sqe.dptr.type_ = sgl::DATA_BLOCK_OFFSET;
                icd = d;
            }
            DataDir::ToCtrl(d) => {
                sqe.dptr.addr = 0.into();
                sqe.dptr.length = (d.len() as u32).into();
                sqe.dptr.type_ = sgl::TRANSPORT_DATA_BLOCK;
                if r.out.len() < d.len() {
                    r.out.resize(d.len(), 0);
                }
                r.out[..d.len()].copy_from_slice(d);
                r.out_len = d.len();
            }
            DataDir::FromCtrl(n) => {
                sqe.dptr.addr = 0.into();
                sqe.dptr.length = n.into();
                sqe.dptr.type_ = sgl::TRANSPORT_DATA_BLOCK;
                if r.inb.len() < n as usize {
                    r.inb.resize(n as usize, 0);
                }
                r.in_len = n as usize;
            }
        }
        let hd = if self.hdgst { DIGEST_LEN } else { 0 };
        let (pdo, plen) = if icd.is_empty() {
            (0, 72 + hd)
        } else {
            let pdo = w::data_offset(72, self.hdgst, self.cpda);
            (pdo, pdo + icd.len() + if self.ddgst { DIGEST_LEN } else { 0 })
        };
        let mut f = if self.hdgst { flags::HDGSTF } else { 0 };
        if !icd.is_empty() && self.ddgst {
            f |= flags::DDGSTF;
        }
        let cap = w::CapsuleCmd { ch: CommonHeader::new(PduType::CapsuleCmd, f, pdo as u8, plen as u32), sqe };
        let start = self.tx.len();
        self.push_header(cap.as_bytes());
        if !icd.is_empty() {
            self.tx.resize(start + pdo, 0);
            self.tx.extend_from_slice(icd);
            if self.ddgst {
                self.tx.extend_from_slice(&w::crc32c(icd).to_le_bytes());
            }
        }
        self.outstanding += 1;
        Ok(cid)
    }

    fn data(&self, cid: u16) -> &[u8] {
        let r = &self.reqs[cid as usize];
        &r.inb[..r.in_len]
    }

    fn flush(&mut self) -> Result<()> {
        if !self.tx.is_empty() {
            self.stream.write_all(&self.tx)?;
            self.tx.clear();
        }
        Ok(())
    }

    fn gather(&mut self, out: &mut Vec<Completed>, min: usize, eager: bool) -> Result<()> {
        self.flush()?;
        let deadline = Instant::now() + self.p.timeout;
        let mut got = 0;
        loop {
            let buffered = self.re - self.rs;
            if got >= min && buffered < 8 {
                // Nothing more without waiting; look once without blocking.
                if !eager || !self.try_read_nonblocking()? {
                    return Ok(());
                }
                continue;
            }
            self.fill(8, deadline)?;
            let ch = CommonHeader::read_from_bytes(&self.rbuf[self.rs..self.rs + 8])
                .map_err(|_| NvmfError::Protocol("short header".into()))?;
            let t = ch.validate(self.hdgst, self.ddgst, 16 << 20).map_err(|e| NvmfError::Protocol(e.to_string()))?;
            let hlen = ch.hlen as usize;
            let hd = if self.hdgst && t.may_have_hdgst() { DIGEST_LEN } else { 0 };
            self.fill(hlen + hd, deadline)?;
            let mut hdr = [0u8; 132];
            hdr[..hlen + hd].copy_from_slice(&self.rbuf[self.rs..self.rs + hlen + hd]);
            self.take(hlen + hd);
            if hd > 0 {
                let got_d = u32::from_le_bytes([hdr[hlen], hdr[hlen + 1], hdr[hlen + 2], hdr[hlen + 3]]);
                if got_d != w::crc32c(&hdr[..hlen]) {
                    return Err(NvmfError::Protocol("header digest mismatch".into()));
                }
            }
            match t {
                PduType::CapsuleResp => {
                    let r = w::CapsuleResp::read_from_bytes(&hdr[..24])
                        .map_err(|_| NvmfError::Protocol("short CapsuleResp".into()))?;
                    let cid = r.cqe.cid.get();
                    let st = Status::from_cqe_field(r.cqe.status.get());
                    out.push(self.finish(cid, st, r.cqe.result.get())?);
                    got += 1;
                }
                PduType::C2HData => {
                    let h = DataHdr::read_from_bytes(&hdr[..24])
                        .map_err(|_| NvmfError::Protocol("short C2HData".into()))?;
                    if self.read_c2h(&ch, &h, hd, deadline)? {
                        out.push(self.finish(h.cccid.get(), Status::SUCCESS, 0)?);
                        got += 1;
                    }
                }
                PduType::R2T => {
                    let h = w::R2T::read_from_bytes(&hdr[..24]).map_err(|_| NvmfError::Protocol("short R2T".into()))?;
                    self.send_h2c(h.cccid.get(), h.ttag.get(), h.r2to.get() as usize, h.r2tl.get() as usize)?;
                }
                PduType::C2HTermReq => {
                    return Err(NvmfError::Terminated { fes: u16::from_le_bytes([hdr[8], hdr[9]]) });
                }
                other => return Err(NvmfError::Protocol(format!("unexpected {other:?} from the controller"))),
            }
        }
    }
}
