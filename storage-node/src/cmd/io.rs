//! NVM I/O commands and reservations.

use super::{Cmd, Completion, Parsed, QueueCtx, Xfer};
use crate::backend::{IoBuf, IoOp};
use crate::ctrlr::Ctrl;
use crate::namespace::Namespace;
use nvme_wire::nvme::{opc, Sqe};
use nvme_wire::resv::{KeyPair, RegCtrlExt, ResvStatusExtHdr};
use nvme_wire::status::Status;
use nvme_wire::zerocopy::{FromBytes, FromZeros, IntoBytes};
use std::sync::Arc;

pub enum IoCmd {
    Read { off: u64 },
    Write { off: u64, fua: bool },
    Compare { off: u64 },
    Flush,
    WriteZeroes { off: u64, len: u64, dealloc: bool },
    Dsm { ranges: u32, deallocate: bool },
    ResvRegister { cdw10: u32 },
    ResvAcquire { cdw10: u32 },
    ResvRelease { cdw10: u32 },
    ResvReport { extended: bool },
}

fn rw_range(ns: &Namespace, sqe: &Sqe, max: u32) -> Result<(u64, u32), Status> {
    let slba = sqe.cdw10.get() as u64 | (sqe.cdw11.get() as u64) << 32;
    let nlb = (sqe.cdw12.get() & 0xffff) as u64 + 1;
    let (off, len) = ns.byte_range(slba, nlb).ok_or(Status::LBA_RANGE)?;
    if len > max as u64 {
        return Err(Status::INVALID_FIELD);
    }
    Ok((off, len as u32))
}

pub fn parse(ctx: &QueueCtx, ctrl: &Ctrl, sqe: &Sqe) -> Result<Parsed, Status> {
    let nsid = sqe.nsid.get();
    let max = ctx.target.opts.max_transfer;
    if sqe.opcode == opc::FLUSH && nsid == u32::MAX {
        // Flush of every namespace: use the first; all share the host's page cache.
        let ns = ctrl.subsys.nsids().first().and_then(|&i| ctrl.subsys.namespace(i)).ok_or(Status::INVALID_NS)?;
        return Ok(Parsed { cmd: Cmd::Io { ns, cmd: IoCmd::Flush }, xfer: Xfer::None });
    }
    let ns = ctrl.subsys.namespace(nsid).ok_or(Status::INVALID_NS)?;
    if !ns.ready.load(std::sync::atomic::Ordering::Acquire) {
        return Err(Status::NS_NOT_READY);
    }
    let c12 = sqe.cdw12.get();
    let (cmd, xfer) = match sqe.opcode {
        opc::READ => {
            let (off, len) = rw_range(&ns, sqe, max)?;
            (IoCmd::Read { off }, Xfer::ToHost(len))
        }
        opc::WRITE => {
            let (off, len) = rw_range(&ns, sqe, max)?;
            (IoCmd::Write { off, fua: c12 & (1 << 30) != 0 }, Xfer::FromHost(len))
        }
        opc::COMPARE => {
            let (off, len) = rw_range(&ns, sqe, max)?;
            (IoCmd::Compare { off }, Xfer::FromHost(len))
        }
        opc::FLUSH => (IoCmd::Flush, Xfer::None),
        opc::WRITE_ZEROES => {
            let slba = sqe.cdw10.get() as u64 | (sqe.cdw11.get() as u64) << 32;
            let (off, len) = ns.byte_range(slba, (c12 & 0xffff) as u64 + 1).ok_or(Status::LBA_RANGE)?;
            (IoCmd::WriteZeroes { off, len, dealloc: c12 & (1 << 25) != 0 }, Xfer::None)
        }
        opc::DSM => {
            let ranges = (sqe.cdw10.get() & 0xff) + 1;
            (IoCmd::Dsm { ranges, deallocate: sqe.cdw11.get() & (1 << 2) != 0 }, Xfer::FromHost(ranges * 16))
        }
        opc::RESV_REGISTER => (IoCmd::ResvRegister { cdw10: sqe.cdw10.get() }, Xfer::FromHost(16)),
        opc::RESV_ACQUIRE => (IoCmd::ResvAcquire { cdw10: sqe.cdw10.get() }, Xfer::FromHost(16)),
        opc::RESV_RELEASE => (IoCmd::ResvRelease { cdw10: sqe.cdw10.get() }, Xfer::FromHost(8)),
        opc::RESV_REPORT => {
            let len = (sqe.cdw10.get() as u64 + 1) * 4;
            if len > max as u64 {
                return Err(Status::INVALID_FIELD);
            }
            (IoCmd::ResvReport { extended: sqe.cdw11.get() & 1 != 0 }, Xfer::ToHost(len as u32))
        }
        _ => return Err(Status::INVALID_OPCODE),
    };
    Ok(Parsed { cmd: Cmd::Io { ns, cmd }, xfer })
}

fn io_err(e: std::io::Error, write: bool) -> Completion {
    tracing::error!(error = %e, "backend I/O failed");
    match e.raw_os_error() {
        Some(libc::ENOSPC) => Completion::err(Status::CAP_EXCEEDED),
        _ if write => Completion::err(Status::WRITE_FAULT),
        _ => Completion::err(Status::UNRECOVERED_READ),
    }
}

/// Runs an I/O command under the namespace's reservation read lock, so a
/// preempt (which takes the write lock) waits for it to finish.
pub fn execute(
    ctrl: &Ctrl,
    ns: &Arc<Namespace>,
    cmd: IoCmd,
    data_in: &[u8],
    data_out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Completion {
    let h = &ctrl.hostid;
    match cmd {
        IoCmd::Read { off } => {
            let r = ns.resv.read();
            if let Err(s) = r.check_access(h, false) {
                return s.into();
            }
            match ns.backend.read_at(data_out, off) {
                Ok(()) => {
                    ns.stats.add_read(data_out.len() as u64);
                    Completion::ok(0)
                }
                Err(e) => io_err(e, false),
            }
        }
        IoCmd::Write { off, fua } => {
            let r = ns.resv.read();
            if let Err(s) = r.check_access(h, true) {
                return s.into();
            }
            match ns.backend.write_at(data_in, off, fua) {
                Ok(()) => {
                    ns.stats.add_write(data_in.len() as u64);
                    Completion::ok(0)
                }
                Err(e) => io_err(e, true),
            }
        }
        IoCmd::Compare { off } => {
            let r = ns.resv.read();
            if let Err(s) = r.check_access(h, false) {
                return s.into();
            }
            scratch.resize(data_in.len(), 0);
            if let Err(e) = ns.backend.read_at(scratch, off) {
                return io_err(e, false);
            }
            if scratch[..] == data_in[..] {
                Completion::ok(0)
            } else {
                Completion::err(Status::COMPARE_FAILED)
            }
        }
        IoCmd::Flush => {
            let r = ns.resv.read();
            if let Err(s) = r.check_access(h, true) {
                return s.into();
            }
            ns.backend.flush().map_or_else(|e| io_err(e, true), |()| Completion::ok(0))
        }
        IoCmd::WriteZeroes { off, len, dealloc } => {
            let r = ns.resv.read();
            if let Err(s) = r.check_access(h, true) {
                return s.into();
            }
            ns.backend.write_zeroes(off, len, dealloc).map_or_else(|e| io_err(e, true), |()| Completion::ok(0))
        }
        IoCmd::Dsm { ranges, deallocate } => {
            let r = ns.resv.read();
            if let Err(s) = r.check_access(h, true) {
                return s.into();
            }
            if !deallocate {
                return Completion::ok(0);
            }
            // Check every range before changing anything.
            let mut todo = [(0u64, 0u64); 256];
            for (i, d) in data_in.chunks_exact(16).take(ranges as usize).enumerate() {
                let nlb = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as u64;
                let slba = u64::from_le_bytes([d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]]);
                match ns.byte_range(slba, nlb) {
                    Some(x) => todo[i] = x,
                    None => return Completion::err(Status::LBA_RANGE),
                }
            }
            for &(off, len) in todo.iter().take(ranges as usize).filter(|r| r.1 > 0) {
                if let Err(e) = ns.backend.deallocate(off, len) {
                    return io_err(e, true);
                }
            }
            Completion::ok(0)
        }
        IoCmd::ResvRegister { cdw10 } => {
            let Ok(k) = KeyPair::read_from_bytes(data_in) else { return Status::SGL_INVALID_DATA.into() };
            let cptpl = (cdw10 >> 30) as u8;
            if cptpl == 1 || (cptpl == 3 && ns.ptpl_file.is_none()) {
                // Reserved, or persistence asked of a namespace with nowhere to keep it.
                return Status::INVALID_FIELD.into();
            }
            resv_change(ctrl, ns, |st| {
                let fx = st.register(*h, ctrl.cntlid, cdw10 as u8 & 7, cdw10 & 8 != 0, k.crkey.get(), k.nrkey.get())?;
                match cptpl {
                    3 => st.ptpl = true,
                    2 => st.ptpl = false,
                    _ => {}
                }
                Ok(fx)
            })
        }
        IoCmd::ResvAcquire { cdw10 } => {
            let Ok(k) = KeyPair::read_from_bytes(data_in) else { return Status::SGL_INVALID_DATA.into() };
            resv_change(ctrl, ns, |st| {
                st.acquire(*h, cdw10 as u8 & 7, cdw10 & 8 != 0, (cdw10 >> 8) as u8, k.crkey.get(), k.nrkey.get())
            })
        }
        IoCmd::ResvRelease { cdw10 } => {
            let Some(crkey) = data_in.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))) else {
                return Status::SGL_INVALID_DATA.into();
            };
            resv_change(ctrl, ns, |st| st.release(*h, cdw10 as u8 & 7, cdw10 & 8 != 0, (cdw10 >> 8) as u8, crkey))
        }
        IoCmd::ResvReport { extended } => {
            if !extended {
                // NVMe-oF host identifiers are 128-bit: only the extended format can carry them.
                return Status::HOST_ID_INCONSISTENT.into();
            }
            let st = ns.resv.read();
            let mut hdr = ResvStatusExtHdr::new_zeroed();
            hdr.gen = st.generation.into();
            hdr.rtype = st.reservation.map_or(0, |(t, _)| t as u8);
            hdr.regctl = (st.registrants.len() as u16).into();
            hdr.ptpls = st.ptpl as u8;
            data_out.fill(0);
            let n = data_out.len().min(64);
            data_out[..n].copy_from_slice(&hdr.as_bytes()[..n]);
            for (i, reg) in st.registrants.iter().enumerate() {
                let mut e = RegCtrlExt::new_zeroed();
                e.cntlid = reg.cntlid.into();
                e.rcsts = st.is_holder(&reg.hostid) as u8;
                e.rkey = reg.key.into();
                e.hostid = reg.hostid;
                let at = 64 + i * 64;
                if at >= data_out.len() {
                    break;
                }
                let n = (data_out.len() - at).min(64);
                data_out[at..at + n].copy_from_slice(&e.as_bytes()[..n]);
            }
            Completion::ok(0)
        }
    }
}

/// A read or write that can run in a batch, as [`batchable`] found it.
#[derive(Debug, Clone, Copy)]
pub struct BatchIo {
    pub write: bool,
    pub off: u64,
    pub fua: bool,
    pub len: u32,
}

/// Whether a parsed command is a plain read or write that the transport
/// may gather with others into one backend submission.
pub fn batchable(p: &super::Parsed) -> Option<(&Arc<Namespace>, BatchIo)> {
    match &p.cmd {
        Cmd::Io { ns, cmd: IoCmd::Read { off } } => {
            Some((ns, BatchIo { write: false, off: *off, fua: false, len: p.xfer.len() }))
        }
        Cmd::Io { ns, cmd: IoCmd::Write { off, fua } } => {
            Some((ns, BatchIo { write: true, off: *off, fua: *fua, len: p.xfer.len() }))
        }
        _ => None,
    }
}

/// Runs a batch of reads and writes on one namespace in one backend
/// submission, under the reservation read lock (as [`execute`] does for
/// single commands). `out[i]` receives the completion of `ops[i]`.
pub fn execute_batch(ctrl: &Ctrl, ns: &Namespace, ops: &mut [IoOp<'_>], out: &mut [Completion]) {
    debug_assert_eq!(ops.len(), out.len());
    out.fill(Completion::ok(0));
    let h = &ctrl.hostid;
    let r = ns.resv.read();
    let (read_ok, write_ok) = (r.check_access(h, false), r.check_access(h, true));
    if read_ok.is_ok() && write_ok.is_ok() {
        ns.backend.submit_batch(ops);
    } else {
        // Some are fenced off: run only the permitted ones.
        for (op, c) in ops.iter_mut().zip(out.iter_mut()) {
            match if matches!(op.buf, IoBuf::Write(..)) { write_ok } else { read_ok } {
                Ok(()) => ns.backend.submit_batch(std::slice::from_mut(op)),
                Err(s) => *c = s.into(),
            }
        }
    }
    drop(r);
    for (op, c) in ops.iter_mut().zip(out.iter_mut()) {
        if !c.status.is_success() {
            continue;
        }
        let (write, len) = match &op.buf {
            IoBuf::Read(b) => (false, b.len() as u64),
            IoBuf::Write(b, _) => (true, b.len() as u64),
        };
        *c = match std::mem::replace(&mut op.res, Ok(())) {
            Ok(()) if write => {
                ns.stats.add_write(len);
                Completion::ok(0)
            }
            Ok(()) => {
                ns.stats.add_read(len);
                Completion::ok(0)
            }
            Err(e) => io_err(e, write),
        };
    }
}

/// Applies a reservation change under the write lock; with persistence
/// active (before or after it) the new state is on disk before the change
/// is acknowledged, and a change that cannot be saved is undone and fails.
fn resv_change(
    ctrl: &Ctrl,
    ns: &Namespace,
    f: impl FnOnce(&mut crate::resv::ResvState) -> Result<crate::resv::Effects, Status>,
) -> Completion {
    let mut st = ns.resv.write();
    let before = ns.ptpl_file.as_ref().map(|_| st.clone());
    let r = f(&mut st);
    if let (Ok(_), Some(old)) = (&r, before) {
        if old.ptpl || st.ptpl {
            if let Err(e) = ns.save_ptpl(&st) {
                tracing::error!(nsid = ns.nsid, error = %e, "cannot save the reservations: the change is undone");
                *st = old;
                return Status::INTERNAL.into();
            }
        }
    }
    drop(st);
    resv_result(ctrl, ns, r)
}

fn resv_result(ctrl: &Ctrl, ns: &Namespace, r: Result<crate::resv::Effects, Status>) -> Completion {
    use nvme_wire::log::resv_notif;
    match r {
        Ok(fx) => {
            if !fx.preempted.is_empty() {
                tracing::warn!(nsid = ns.nsid, hosts = fx.preempted.len(), abort = fx.abort, "registrations preempted");
            }
            if !fx.preempted.is_empty() || !fx.released_for.is_empty() {
                for c in ctrl.subsys.ctrls().iter().filter(|c| c.hostid != ctrl.hostid) {
                    if fx.preempted.contains(&c.hostid) {
                        c.reservation_notice(resv_notif::REGISTRATION_PREEMPTED, ns.nsid);
                    } else if fx.released_for.contains(&c.hostid) {
                        c.reservation_notice(resv_notif::RESERVATION_RELEASED, ns.nsid);
                    }
                }
            }
            Completion::ok(0)
        }
        Err(s) => s.into(),
    }
}
