//! Admin commands: Identify, Get Log Page, Set/Get Features, Keep Alive,
//! Asynchronous Event Request.

use super::{Completion, Parsed, QueueCtx, Xfer};
use crate::ctrlr::{Ctrl, AER_LIMIT};
use nvme_wire::identify::{cns, nidt, oncs, IdCtrl, IdNs, NsIdDesc, CNTRLTYPE_DISCOVERY, CNTRLTYPE_IO, RESCAP_ALL};
use nvme_wire::log::{self as wlog, DiscoveryLogEntry, DiscoveryLogHeader, ErrorLogEntry, SmartLog};
use nvme_wire::nvme::{feat, lid, opc, Sqe};
use nvme_wire::status::Status;
use nvme_wire::zerocopy::{FromZeros, IntoBytes};
use std::sync::atomic::Ordering;

pub enum AdminCmd {
    Identify { cns: u8, nsid: u32 },
    GetLogPage { lid: u8, offset: u64, rae: bool },
    SetFeatures { fid: u8, cdw11: u32 },
    GetFeatures { fid: u8 },
    AsyncEventRequest,
    KeepAlive,
}

pub fn parse(ctx: &QueueCtx, ctrl: &Ctrl, sqe: &Sqe) -> Result<Parsed, Status> {
    let disc = ctrl.subsys.is_discovery;
    let (cmd, xfer) = match sqe.opcode {
        opc::IDENTIFY => {
            let c = sqe.cdw10.get() as u8;
            if disc && c != cns::CONTROLLER {
                return Err(Status::INVALID_FIELD);
            }
            (AdminCmd::Identify { cns: c, nsid: sqe.nsid.get() }, Xfer::ToHost(4096))
        }
        opc::GET_LOG_PAGE => {
            let c10 = sqe.cdw10.get();
            let numd = ((c10 >> 16) | (sqe.cdw11.get() & 0xffff) << 16) as u64 + 1;
            let len = numd * 4;
            if len > ctx.target.opts.max_transfer as u64 {
                return Err(Status::INVALID_FIELD);
            }
            let offset = sqe.cdw12.get() as u64 | (sqe.cdw13.get() as u64) << 32;
            if !offset.is_multiple_of(4) {
                return Err(Status::INVALID_FIELD);
            }
            (AdminCmd::GetLogPage { lid: c10 as u8, offset, rae: c10 & (1 << 15) != 0 }, Xfer::ToHost(len as u32))
        }
        opc::SET_FEATURES => (AdminCmd::SetFeatures { fid: sqe.cdw10.get() as u8, cdw11: sqe.cdw11.get() }, Xfer::None),
        opc::GET_FEATURES => {
            let sel = (sqe.cdw10.get() >> 8) & 0x7;
            if sel > 3 {
                return Err(Status::INVALID_FIELD);
            }
            (AdminCmd::GetFeatures { fid: sqe.cdw10.get() as u8 }, Xfer::None)
        }
        opc::ASYNC_EVENT_REQUEST => (AdminCmd::AsyncEventRequest, Xfer::None),
        opc::KEEP_ALIVE => (AdminCmd::KeepAlive, Xfer::None),
        _ => return Err(Status::INVALID_OPCODE),
    };
    Ok(Parsed { cmd: super::Cmd::Admin(cmd), xfer })
}

pub fn execute(
    ctx: &mut QueueCtx,
    ctrl: &Ctrl,
    cmd: AdminCmd,
    sqe: &Sqe,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Completion {
    match cmd {
        AdminCmd::Identify { cns, nsid } => identify(ctx, ctrl, cns, nsid, out),
        AdminCmd::GetLogPage { lid, offset, rae } => get_log_page(ctx, ctrl, lid, offset, rae, out, scratch),
        AdminCmd::SetFeatures { fid, cdw11 } => set_features(ctrl, fid, cdw11),
        AdminCmd::GetFeatures { fid } => get_features(ctrl, fid),
        AdminCmd::AsyncEventRequest => {
            if ctrl.push_aer(sqe.cid.get()) {
                Completion { status: Status::SUCCESS, result: 0, deferred: true }
            } else {
                Completion::err(Status::AER_LIMIT)
            }
        }
        AdminCmd::KeepAlive => Completion::ok(0),
    }
}

fn mdts(max_transfer: u32) -> u8 {
    (max_transfer / 4096).trailing_zeros() as u8
}

fn identify(ctx: &QueueCtx, ctrl: &Ctrl, c: u8, nsid: u32, out: &mut [u8]) -> Completion {
    out.fill(0);
    match c {
        cns::CONTROLLER => {
            let mut id = IdCtrl::new_zeroed();
            fill_id_ctrl(ctx, ctrl, &mut id);
            out.copy_from_slice(id.as_bytes());
        }
        cns::NAMESPACE => {
            if nsid == 0 || nsid == u32::MAX {
                return Completion::err(Status::INVALID_NS);
            }
            // An inactive NSID gets a zero-filled structure.
            if let Some(ns) = ctrl.subsys.namespace(nsid) {
                let mut id = IdNs::new_zeroed();
                id.nsze = ns.nblocks.into();
                id.ncap = ns.nblocks.into();
                id.nuse = (ns.backend.used_bytes() >> ns.block_shift).into();
                id.nsfeat = 1; // NUSE is meaningful: thin provisioned
                id.nlbaf = 0;
                id.flbas = 0;
                id.nmic = 1; // shared by several controllers
                id.rescap = RESCAP_ALL;
                id.dlfeat = 0b1001; // deallocated blocks read zero; Write Zeroes can deallocate
                id.nvmcap = (ns.backend.size() as u128).to_le_bytes();
                id.nguid = ns.nguid;
                id.lbaf[0].lbads = ns.block_shift as u8;
                out.copy_from_slice(id.as_bytes());
            }
        }
        cns::ACTIVE_NS_LIST => {
            let ids = ctrl.subsys.nsids();
            for (slot, id) in out.chunks_exact_mut(4).zip(ids.into_iter().filter(|&i| i > nsid)) {
                slot.copy_from_slice(&id.to_le_bytes());
            }
        }
        cns::NS_DESC_LIST => {
            let Some(ns) = ctrl.subsys.namespace(nsid) else { return Completion::err(Status::INVALID_NS) };
            let mut off = 0;
            for (t, v) in [(nidt::NGUID, &ns.nguid[..]), (nidt::UUID, &ns.uuid[..]), (nidt::CSI, &[0u8][..])] {
                let d = NsIdDesc { nidt: t, nidl: v.len() as u8, rsvd: [0; 2] };
                out[off..off + 4].copy_from_slice(d.as_bytes());
                out[off + 4..off + 4 + v.len()].copy_from_slice(v);
                off += 4 + v.len();
            }
        }
        _ => return Completion::err(Status::INVALID_FIELD),
    }
    Completion::ok(0)
}

fn fill_id_ctrl(ctx: &QueueCtx, ctrl: &Ctrl, id: &mut IdCtrl) {
    let s = &ctrl.subsys;
    let o = &ctx.target.opts;
    nvme_wire::put_padded(&mut id.sn, if s.serial.is_empty() { "0" } else { &s.serial }, b' ');
    nvme_wire::put_padded(&mut id.mn, &s.model, b' ');
    nvme_wire::put_padded(&mut id.fr, env!("CARGO_PKG_VERSION"), b' ');
    id.rab = 6;
    id.cmic = if s.is_discovery { 0 } else { 1 << 1 }; // several controllers share namespaces
    id.mdts = mdts(o.max_transfer);
    id.cntlid = ctrl.cntlid.into();
    id.ver = super::fabrics::VERSION.into();
    id.oaes = (1u32 << 8).into(); // namespace attribute notices
    id.ctratt = 1.into(); // 128-bit host identifier
    id.cntrltype = if s.is_discovery { CNTRLTYPE_DISCOVERY } else { CNTRLTYPE_IO };
    id.acl = 3;
    id.aerl = (AER_LIMIT - 1) as u8;
    id.frmw = 0x3; // one slot, read only
    id.lpa = (1 << 1) | (1 << 2); // commands-effects log, extended Get Log Page
    id.elpe = (crate::ctrlr::ERROR_LOG_ENTRIES - 1) as u8;
    id.wctemp = 343.into();
    id.cctemp = 373.into();
    id.kas = 10.into(); // keep-alive granularity: 1 s
    id.sqes = 0x66;
    id.cqes = 0x44;
    id.maxcmd = o.max_queue_depth.into();
    id.nn = 1024.into();
    id.oncs = (oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES | oncs::RESERVATIONS).into();
    id.vwc = 1;
    id.sgls = (1 | if ctx.trtype == wlog::trtype::RDMA { 1 << 2 } else { 0 } | 1 << 20).into();
    nvme_wire::put_padded(&mut id.subnqn, &s.nqn, 0);
    id.ioccsz = ((64 + o.inline_data_size) / 16).into();
    id.iorcsz = 1.into();
    id.msdbd = 1;
    // Power state 0: 25 W max, in centiwatts.
    id.psd[0][0..2].copy_from_slice(&2500u16.to_le_bytes());
}

fn get_log_page(
    ctx: &QueueCtx,
    ctrl: &Ctrl,
    l: u8,
    offset: u64,
    rae: bool,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Completion {
    scratch.clear();
    match l {
        lid::DISCOVERY if ctrl.subsys.is_discovery => discovery_log(ctx, ctrl, scratch),
        lid::ERROR => {
            // Newest first, as the spec orders the log.
            for r in ctrl.errors.lock().iter().rev() {
                let mut e = ErrorLogEntry::new_zeroed();
                e.error_count = r.count.into();
                e.sqid = r.sqid.into();
                e.cmdid = r.cid.into();
                e.status_field = r.status.to_cqe_field().into();
                e.param_error_location = 0xffff.into();
                e.nsid = r.nsid.into();
                e.trtype = ctx.trtype;
                scratch.extend_from_slice(e.as_bytes());
            }
            scratch.resize(scratch.len().max(64), 0);
        }
        lid::SMART if !ctrl.subsys.is_discovery => {
            let mut s = SmartLog::new_zeroed();
            s.temperature = 313.into();
            s.avail_spare = 100;
            s.num_err_log_entries = (ctrl.err_count.load(Ordering::Relaxed) as u128).to_le_bytes();
            s.spare_thresh = 10;
            let (mut rb, mut wb, mut rc, mut wc) = (0u128, 0u128, 0u128, 0u128);
            for ns in ctrl.subsys.nsids().into_iter().filter_map(|i| ctrl.subsys.namespace(i)) {
                rb += ns.stats.read_bytes.load(Ordering::Relaxed) as u128;
                wb += ns.stats.write_bytes.load(Ordering::Relaxed) as u128;
                rc += ns.stats.read_cmds.load(Ordering::Relaxed) as u128;
                wc += ns.stats.write_cmds.load(Ordering::Relaxed) as u128;
            }
            // Data units are thousands of 512-byte units, rounded up.
            s.data_units_read = (rb.div_ceil(512_000)).to_le_bytes();
            s.data_units_written = (wb.div_ceil(512_000)).to_le_bytes();
            s.host_reads = rc.to_le_bytes();
            s.host_writes = wc.to_le_bytes();
            s.power_on_hours = ((ctrl.created.elapsed().as_secs() / 3600) as u128).to_le_bytes();
            scratch.extend_from_slice(s.as_bytes());
        }
        lid::FW_SLOT => {
            scratch.resize(512, 0);
            scratch[0] = 1;
            nvme_wire::put_padded(&mut scratch[8..16], env!("CARGO_PKG_VERSION"), b' ');
        }
        lid::CHANGED_NS if !ctrl.subsys.is_discovery => {
            scratch.resize(4096, 0);
            let mut a = ctrl.aer.lock();
            if a.changed_ns.len() > 1024 {
                scratch[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
            } else {
                for (i, id) in a.changed_ns.iter().enumerate() {
                    scratch[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
            }
            if !rae {
                a.changed_ns.clear();
                a.masked_ns_changed = false;
            }
        }
        lid::CMD_EFFECTS => {
            scratch.resize(4096, 0);
            let csupp = 1u32;
            let lbcc = 1u32 << 1;
            for op in [
                opc::GET_LOG_PAGE,
                opc::IDENTIFY,
                opc::SET_FEATURES,
                opc::GET_FEATURES,
                opc::ASYNC_EVENT_REQUEST,
                opc::KEEP_ALIVE,
            ] {
                scratch[op as usize * 4..op as usize * 4 + 4].copy_from_slice(&csupp.to_le_bytes());
            }
            for op in [
                opc::FLUSH,
                opc::WRITE,
                opc::READ,
                opc::COMPARE,
                opc::WRITE_ZEROES,
                opc::DSM,
                opc::RESV_REGISTER,
                opc::RESV_REPORT,
                opc::RESV_ACQUIRE,
                opc::RESV_RELEASE,
            ] {
                let v = if matches!(op, opc::WRITE | opc::WRITE_ZEROES | opc::DSM) { csupp | lbcc } else { csupp };
                let at = 1024 + op as usize * 4;
                scratch[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        lid::RESV_NOTIFICATION if !ctrl.subsys.is_discovery => {
            // Each read returns the oldest notification and removes it.
            let mut e = wlog::ResvNotificationLog::new_zeroed();
            let mut l = ctrl.resv_log.lock();
            if let Some((t, nsid)) = l.0.pop_front() {
                e.count = l.1.into();
                e.log_type = t;
                e.num_avail = l.0.len().min(255) as u8;
                e.nsid = nsid.into();
            }
            scratch.extend_from_slice(e.as_bytes());
        }
        _ => return Completion::err(Status::INVALID_LOG_PAGE),
    }
    out.fill(0);
    let start = (offset as usize).min(scratch.len());
    let n = (scratch.len() - start).min(out.len());
    out[..n].copy_from_slice(&scratch[start..start + n]);
    Completion::ok(0)
}

fn discovery_log(ctx: &QueueCtx, ctrl: &Ctrl, buf: &mut Vec<u8>) {
    let ports = ctx.target.ports.read().clone();
    let mut entries = Vec::new();
    for s in ctx.target.subsystems() {
        if !s.is_discovery && !s.host_allowed(&ctrl.hostnqn) {
            continue;
        }
        for p in ports.iter().filter(|p| s.is_discovery || !p.discovery_only) {
            let mut e = DiscoveryLogEntry::new_zeroed();
            e.trtype = p.trtype;
            e.adrfam = if p.addr.is_ipv4() { wlog::ADRFAM_IPV4 } else { wlog::ADRFAM_IPV6 };
            e.subtype = if s.is_discovery { wlog::SUBTYPE_CURRENT_DISCOVERY } else { wlog::SUBTYPE_NVME };
            e.treq = wlog::TREQ_NOT_REQUIRED;
            e.portid = p.portid.into();
            e.cntlid = 0xffff.into();
            e.asqsz = 32.into();
            nvme_wire::put_padded(&mut e.trsvcid, &p.addr.port().to_string(), b' ');
            nvme_wire::put_padded(&mut e.subnqn, &s.nqn, 0);
            nvme_wire::put_padded(&mut e.traddr, &p.addr.ip().to_string(), b' ');
            e.tsas = p.tsas;
            entries.push(e);
        }
    }
    let mut h = DiscoveryLogHeader::new_zeroed();
    h.genctr = ctx.target.discovery_genctr.load(Ordering::Acquire).into();
    h.numrec = (entries.len() as u64).into();
    buf.extend_from_slice(h.as_bytes());
    for e in &entries {
        buf.extend_from_slice(e.as_bytes());
    }
}

fn set_features(ctrl: &Ctrl, fid: u8, cdw11: u32) -> Completion {
    match fid {
        feat::NUM_QUEUES => {
            let (nsq, ncq) = ((cdw11 & 0xffff) as u16, (cdw11 >> 16) as u16);
            if nsq == 0xffff || ncq == 0xffff {
                return Completion::err(Status::INVALID_FIELD);
            }
            let granted = (nsq.min(ncq) + 1).min(ctrl.max_io_queues);
            ctrl.io_queues.store(granted, Ordering::Release);
            let v = granted.saturating_sub(1) as u64;
            Completion::ok(v | v << 16)
        }
        feat::KATO => {
            ctrl.kato_ms.store(cdw11, Ordering::Release);
            Completion::ok(0)
        }
        feat::ASYNC_EVENT => {
            ctrl.async_event_cfg.store(cdw11, Ordering::Release);
            Completion::ok(0)
        }
        feat::RESV_MASK => {
            ctrl.resv_mask.store(cdw11 & 0b1110, Ordering::Release);
            Completion::ok(0)
        }
        feat::VOLATILE_WC
        | feat::ARBITRATION
        | feat::POWER_MGMT
        | feat::TEMP_THRESH
        | feat::ERR_RECOVERY
        | feat::IRQ_COALESCE => Completion::ok(0),
        feat::HOST_ID => Completion::err(Status::CMD_SEQ_ERROR),
        _ => Completion::err(Status::INVALID_FIELD),
    }
}

fn get_features(ctrl: &Ctrl, fid: u8) -> Completion {
    let v = match fid {
        feat::NUM_QUEUES => {
            let g = ctrl.io_queues.load(Ordering::Acquire).saturating_sub(1) as u64;
            g | g << 16
        }
        feat::KATO => ctrl.kato_ms.load(Ordering::Acquire) as u64,
        feat::ASYNC_EVENT => ctrl.async_event_cfg.load(Ordering::Acquire) as u64,
        feat::VOLATILE_WC => 1,
        feat::TEMP_THRESH => 343,
        feat::RESV_MASK => ctrl.resv_mask.load(Ordering::Acquire) as u64,
        feat::ARBITRATION | feat::POWER_MGMT | feat::ERR_RECOVERY | feat::IRQ_COALESCE | feat::RESV_PERSIST => 0,
        _ => return Completion::err(Status::INVALID_FIELD),
    };
    Completion::ok(v)
}
