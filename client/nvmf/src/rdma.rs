//! The NVMe/RDMA side of a host queue pair (NVMe RDMA Transport
//! Specification): one reliable-connected queue pair made through RDMA CM
//! with the queue's ID and sizes in the request's private data; command
//! capsules go out by SEND (an SQE, plus in-capsule data for small writes
//! on I/O queues); responses arrive by SEND into receives posted before
//! the connection is made; all other data moves by the controller's RDMA
//! READ (writes) and RDMA WRITE (reads) of host memory named by a keyed
//! SGL.
//!
//! Every command ID owns a slot of one registered data region, so the
//! common case registers nothing per command; a command larger than its
//! slot registers a region for that ID once and keeps it for later ones.
//! The keys stay valid for the queue's life, so no invalidation is asked
//! of the controller.

use super::queue::{Completed, DataDir, QueueParams, QueueTransport};
use super::{NvmfError, Result};
use nvme_wire::nvme::{sgl, Cqe, SglDesc, Sqe};
use nvme_wire::rdma::{CmAccept, CmReject, CmRequest, KeyedSgl};
use nvme_wire::status::Status;
use nvme_wire::zerocopy::{FromBytes, FromZeros, IntoBytes};
use rdma::cm::{CmEventKind, Connection, QpConfig, Wake};
use rdma::verbs::{Access, Completion, MemoryRegion, WorkQueue};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

const SQE_LEN: usize = 64;
const CQE_LEN: usize = 16;
/// In-capsule data room per send slot. A controller may allow more
/// (IOCCSZ); writes above this go by RDMA READ instead.
const ICD_ROOM: usize = 8192;
/// Data bytes each command ID has registered up front: enough for the
/// file system's blocks and the admin queue's pages.
const IO_SLOT: usize = 128 * 1024;
const ADMIN_SLOT: usize = 8192;
/// How long RDMA CM may take to resolve and connect.
const CM_TIMEOUT: Duration = Duration::from_secs(10);

impl From<rdma::Error> for NvmfError {
    fn from(e: rdma::Error) -> Self {
        NvmfError::Transport(e.to_string())
    }
}

#[derive(Default)]
struct Req {
    busy: bool,
    tag: u64,
    /// Read data, copied out of the registered region on completion.
    inb: Vec<u8>,
    in_len: usize,
    /// A region of its own for commands larger than the slot.
    big: Option<MemoryRegion>,
}

pub struct RdmaQueue {
    p: QueueParams,
    conn: Connection,
    /// One CQE per receive, `depth` of them.
    recv: MemoryRegion,
    /// One SQE plus in-capsule data per command ID.
    send: MemoryRegion,
    /// `slot` bytes of data per command ID, readable and writable by the controller.
    data: MemoryRegion,
    slot: usize,
    reqs: Vec<Req>,
    free: Vec<u16>,
    outstanding: usize,
    wc: Vec<Completion>,
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| NvmfError::Invalid(format!("{addr} resolves to no address")))
}

impl RdmaQueue {
    /// Resolves `addr` through RDMA CM, posts the receives and connects
    /// queue `qid` of `depth` commands; the Fabrics Connect command follows.
    pub fn connect(addr: &str, qid: u16, depth: u16) -> Result<Self> {
        let sa = resolve(addr)?;
        let depth = depth.max(2);
        let d = depth as usize;
        let cfg = QpConfig {
            // Room for a full queue of sends whose completions have not
            // been polled yet, again.
            max_send_wr: depth as u32 * 2,
            max_recv_wr: depth as u32,
            max_sge: 1,
            // The 64-byte SQE goes inline: no DMA read of it by the device.
            max_inline_data: SQE_LEN as u32,
            // The controller RDMA READs write data from us.
            max_rd_atomic: 16,
        };
        let mut conn = Connection::resolve(sa, &cfg, Some(CM_TIMEOUT))?;
        let slot = if qid == 0 { ADMIN_SLOT } else { IO_SLOT };
        let recv = MemoryRegion::new(conn.pd(), d * CQE_LEN, Access::LOCAL_WRITE)?;
        let send = MemoryRegion::new(conn.pd(), d * (SQE_LEN + ICD_ROOM), Access::LOCAL_WRITE)?;
        let data = MemoryRegion::new(conn.pd(), d * slot, Access::ALL)?;
        for i in 0..d {
            conn.post_recv(i as u64, &recv, i * CQE_LEN..(i + 1) * CQE_LEN)?;
        }
        let req = CmRequest::new(qid, depth, depth - 1);
        let accepted = match conn.connect(req.as_bytes(), Some(CM_TIMEOUT)) {
            Ok(a) => a,
            Err(rdma::Error::Rejected { private_data, status }) => {
                let why = CmReject::read_from_prefix(&private_data)
                    .map(|(r, _)| format!("NVMe/RDMA reject status {:#x}", r.sts.get()))
                    .unwrap_or_else(|_| format!("CM status {status}"));
                return Err(NvmfError::Transport(format!("queue {qid} refused by the controller: {why}")));
            }
            Err(e) => return Err(e.into()),
        };
        let a = CmAccept::parse(&accepted).map_err(|e| NvmfError::Protocol(format!("RDMA CM accept data: {e}")))?;
        // The controller posted CRQSIZE receives: never have more commands out.
        let depth = depth.min(a.crqsize.get().max(1));
        tracing::debug!(%sa, qid, depth, device = conn.device_name(), "NVMe/RDMA queue connected");
        Ok(Self {
            p: QueueParams {
                qid,
                depth,
                // The admin queue of an NVMe/RDMA controller need not take
                // in-capsule data (Linux's does not): everything goes keyed
                // until IOCCSZ says otherwise.
                inline_max: 0,
                poll_mode: false,
                timeout: Duration::from_secs(30),
            },
            conn,
            recv,
            send,
            data,
            slot,
            reqs: (0..d).map(|_| Req::default()).collect(),
            free: (0..depth).rev().collect(),
            outstanding: 0,
            wc: vec![Completion::EMPTY; 2 * d],
        })
    }

    /// The keyed SGL of `len` bytes for command `cid`; true when it names
    /// the command's own large region rather than its slot.
    fn buffer(&mut self, cid: u16, len: usize) -> Result<(KeyedSgl, bool)> {
        if len > KeyedSgl::MAX_LEN as usize {
            return Err(NvmfError::Invalid(format!("{len} bytes exceed a keyed SGL's 16 MiB")));
        }
        if len <= self.slot {
            let off = cid as usize * self.slot;
            let k = KeyedSgl {
                addr: self.data.addr() + off as u64,
                len: len as u32,
                key: self.data.rkey(),
                invalidate: false,
            };
            return Ok((k, false));
        }
        let r = &mut self.reqs[cid as usize];
        if r.big.as_ref().is_none_or(|m| m.len() < len) {
            // Registered once per command ID and size class, not per command.
            r.big = Some(MemoryRegion::new(self.conn.pd(), len.next_power_of_two(), Access::ALL)?);
        }
        let m = r.big.as_ref().expect("just made");
        Ok((KeyedSgl { addr: m.addr(), len: len as u32, key: m.rkey(), invalidate: false }, true))
    }

    fn finish(&mut self, cqe: &Cqe) -> Result<Completed> {
        let cid = cqe.cid.get();
        let slot = self.slot;
        let r = self
            .reqs
            .get_mut(cid as usize)
            .filter(|r| r.busy)
            .ok_or_else(|| NvmfError::Protocol(format!("response for command {cid}, which is not outstanding")))?;
        if r.in_len > 0 {
            // The controller's RDMA WRITE of the data is ordered before its
            // SEND of the response on this queue pair: the bytes are there.
            if r.inb.len() < r.in_len {
                r.inb.resize(r.in_len, 0);
            }
            let n = r.in_len;
            match &r.big {
                Some(m) if n > slot => m.read_at(0, &mut r.inb[..n])?,
                _ => self.data.read_at(cid as usize * slot, &mut r.inb[..n])?,
            }
        }
        r.busy = false;
        let tag = r.tag;
        self.free.push(cid);
        self.outstanding -= 1;
        Ok(Completed { cid, tag, status: Status::from_cqe_field(cqe.status.get()), result: cqe.result.get() })
    }

    /// Handles `n` polled work completions; returns how many commands finished.
    fn reap(&mut self, n: usize, out: &mut Vec<Completed>) -> Result<usize> {
        let mut got = 0;
        for i in 0..n {
            let c = self.wc[i];
            if !c.status.is_success() {
                // A failed or flushed work request means the queue pair is
                // in the error state: every command on it is lost.
                return Err(NvmfError::Transport(format!(
                    "queue {}: {:?} work request {} ended with {}",
                    self.p.qid, c.queue, c.wr_id, c.status
                )));
            }
            if c.queue != WorkQueue::Recv {
                continue;
            }
            let slot = c.wr_id as usize;
            if c.byte_len as usize != CQE_LEN {
                return Err(NvmfError::Protocol(format!(
                    "queue {}: a {}-byte response capsule (NVMe/RDMA responses are 16)",
                    self.p.qid, c.byte_len
                )));
            }
            let mut b = [0u8; CQE_LEN];
            self.recv.read_at(slot * CQE_LEN, &mut b)?;
            // The buffer is free again as soon as the CQE is copied out.
            self.conn.post_recv(slot as u64, &self.recv, slot * CQE_LEN..(slot + 1) * CQE_LEN)?;
            let cqe = Cqe::read_from_bytes(&b).map_err(|_| NvmfError::Protocol("short CQE".into()))?;
            out.push(self.finish(&cqe)?);
            got += 1;
        }
        Ok(got)
    }
}

impl QueueTransport for RdmaQueue {
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
        if !self.conn.is_connected() {
            return Err(NvmfError::Transport(format!("queue {} is disconnected", self.p.qid)));
        }
        let cid = self.free.pop().ok_or_else(|| NvmfError::Invalid("queue full".into()))?;
        sqe.cid = cid.into();
        sqe.flags = (sqe.flags & 0x3f) | (sgl::PSDT_SGL_MPTR_CONTIG << 6);
        let inline = self.p.inline_max.min(ICD_ROOM);
        let mut icd: &[u8] = &[];
        let mut in_len = 0;
        let res = (|| -> Result<()> {
            match data {
                // No data still names a keyed SGL, of length 0 (what Linux's
                // target expects; a plain data block there is invalid).
                DataDir::None => sqe.dptr = KeyedSgl { addr: 0, len: 0, key: 0, invalidate: false }.encode(),
                DataDir::ToCtrl(d) if !d.is_empty() && d.len() <= inline => {
                    sqe.dptr = SglDesc::new_zeroed();
                    sqe.dptr.type_ = sgl::DATA_BLOCK_OFFSET;
                    sqe.dptr.length = (d.len() as u32).into();
                    icd = d;
                }
                DataDir::ToCtrl(d) => {
                    let (k, big) = self.buffer(cid, d.len())?;
                    if big {
                        self.reqs[cid as usize].big.as_ref().expect("made by buffer").write_at(0, d)?;
                    } else {
                        self.data.write_at(cid as usize * self.slot, d)?;
                    }
                    sqe.dptr = k.encode();
                }
                DataDir::FromCtrl(n) => {
                    let (k, _) = self.buffer(cid, n as usize)?;
                    sqe.dptr = k.encode();
                    in_len = n as usize;
                }
            }
            let off = cid as usize * (SQE_LEN + ICD_ROOM);
            self.send.write_at(off, sqe.as_bytes())?;
            if !icd.is_empty() {
                self.send.write_at(off + SQE_LEN, icd)?;
            }
            self.conn.post_send(cid as u64, &self.send, off..off + SQE_LEN + icd.len())?;
            Ok(())
        })();
        if let Err(e) = res {
            self.free.push(cid);
            return Err(e);
        }
        let r = &mut self.reqs[cid as usize];
        r.busy = true;
        r.tag = tag;
        r.in_len = in_len;
        self.outstanding += 1;
        Ok(cid)
    }

    fn data(&self, cid: u16) -> &[u8] {
        let r = &self.reqs[cid as usize];
        &r.inb[..r.in_len.min(r.inb.len())]
    }

    fn flush(&mut self) -> Result<()> {
        // Each submit posts its SEND at once.
        Ok(())
    }

    fn gather(&mut self, out: &mut Vec<Completed>, min: usize, _eager: bool) -> Result<()> {
        let deadline = Instant::now() + self.p.timeout;
        let mut got = 0;
        loop {
            // Busy-poll the completion queue first: it costs no system call.
            let n = self.conn.poll(&mut self.wc)?;
            if n > 0 {
                got += self.reap(n, out)?;
                continue;
            }
            // (`eager` costs nothing here: the poll above already took
            // whatever had arrived.)
            if got >= min {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NvmfError::Timeout(format!("queue {} waiting for the controller", self.p.qid)));
            }
            if self.p.poll_mode {
                if let Some(ev) = self.conn.try_event()? {
                    self.event(ev.kind)?;
                }
                std::hint::spin_loop();
                continue;
            }
            match self.conn.wait(&mut self.wc, Some(deadline - now))? {
                Wake::Completions(n) => got += self.reap(n, out)?,
                Wake::Event(ev) => self.event(ev.kind)?,
                Wake::Timeout => {}
            }
        }
    }
}

impl RdmaQueue {
    /// A CM event while waiting: the end of the connection fails the
    /// queue (its commands are lost); anything else is only logged.
    fn event(&self, kind: CmEventKind) -> Result<()> {
        match kind {
            CmEventKind::Disconnected | CmEventKind::DeviceRemoval | CmEventKind::ConnectError => {
                Err(NvmfError::Transport(format!("queue {}: connection lost ({kind})", self.p.qid)))
            }
            other => {
                tracing::debug!(event = %other, qid = self.p.qid, "NVMe/RDMA queue: CM event");
                Ok(())
            }
        }
    }
}

impl Drop for RdmaQueue {
    fn drop(&mut self) {
        // Collect outstanding work before the regions it names are freed.
        if let Err(e) = self.conn.shutdown(Duration::from_secs(2)) {
            tracing::debug!(error = %e, qid = self.p.qid, "NVMe/RDMA queue shutdown");
        }
    }
}
