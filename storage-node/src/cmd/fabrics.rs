//! Fabrics commands: Connect, Property Get/Set, Disconnect.

use super::{Completion, Parsed, QueueCtx, Xfer};
use nvme_wire::fabrics::{cap, connect_invalid_param_result, Connect, ConnectData, Property, CATTR_DISABLE_SQFLOW};
use nvme_wire::nvme::{fctype, prop, Sqe};
use nvme_wire::status::Status;
use nvme_wire::zerocopy::FromBytes;
use std::sync::atomic::Ordering;

pub enum FabricsCmd {
    Connect(Connect),
    PropertyGet(Property),
    PropertySet(Property),
    Disconnect,
}

/// NVMe version this target reports: 1.4.
pub const VERSION: u32 = 0x0001_0400;

pub fn parse(ctx: &QueueCtx, sqe: &Sqe) -> Result<Parsed, Status> {
    let (cmd, xfer) = match sqe.fctype() {
        fctype::CONNECT => {
            if ctx.ctrl.is_some() {
                return Err(Status::CMD_SEQ_ERROR);
            }
            (FabricsCmd::Connect(Connect::from_sqe(sqe)), Xfer::FromHost(1024))
        }
        fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
            if ctx.ctrl.is_none() {
                return Err(Status::CMD_SEQ_ERROR);
            }
            if ctx.qid != 0 {
                return Err(Status::INVALID_FIELD);
            }
            let p = Property::from_sqe(sqe);
            if sqe.fctype() == fctype::PROPERTY_GET {
                (FabricsCmd::PropertyGet(p), Xfer::None)
            } else {
                (FabricsCmd::PropertySet(p), Xfer::None)
            }
        }
        // Disconnect deletes an I/O queue; the admin queue ends by closing.
        fctype::DISCONNECT if ctx.qid != 0 => (FabricsCmd::Disconnect, Xfer::None),
        _ => return Err(Status::INVALID_OPCODE),
    };
    Ok(Parsed { cmd: super::Cmd::Fabrics(cmd), xfer })
}

pub fn execute(ctx: &mut QueueCtx, cmd: FabricsCmd, _sqe: &Sqe, data_in: &[u8]) -> Completion {
    match cmd {
        FabricsCmd::Connect(c) => connect(ctx, c, data_in),
        FabricsCmd::PropertyGet(p) => property_get(ctx, p),
        FabricsCmd::PropertySet(p) => property_set(ctx, p),
        FabricsCmd::Disconnect => Completion::ok(0),
    }
}

fn invalid_param(in_data: bool, offset: u16) -> Completion {
    Completion {
        status: Status::CONNECT_INVALID_PARAM,
        result: connect_invalid_param_result(in_data, offset),
        deferred: false,
    }
}

fn connect(ctx: &mut QueueCtx, c: Connect, data: &[u8]) -> Completion {
    let Ok(d) = ConnectData::read_from_bytes(data) else {
        return Completion::err(Status::SGL_INVALID_DATA);
    };
    if c.recfmt != 0 {
        return Completion::err(Status::CONNECT_FORMAT);
    }
    let t = ctx.target.clone();
    let Some(subsys) = t.subsystem(d.subsysnqn()) else {
        tracing::warn!(subnqn = d.subsysnqn(), host = d.hostnqn(), "connect to unknown subsystem");
        return invalid_param(true, 256);
    };
    if !subsys.host_allowed(d.hostnqn()) {
        tracing::warn!(subnqn = %subsys.nqn, host = d.hostnqn(), "host not allowed; connect refused");
        return invalid_param(true, 512).with_status(Status::CONNECT_INVALID_HOST);
    }
    let depth = c.sqsize as u32 + 1;
    if c.sqsize == 0 || depth > t.opts.max_queue_depth as u32 {
        return invalid_param(false, 44);
    }
    if c.qid == 0 {
        if d.cntlid.get() != 0xffff && d.cntlid.get() != 0xfffe {
            // The dynamic controller model: the host must ask for "any".
            return invalid_param(true, 16);
        }
        let kato = if c.kato == 0 && !subsys.is_discovery { t.opts.default_kato_ms } else { c.kato };
        let Some(ctrl) = t.create_ctrl(subsys, d.hostnqn(), d.hostid, kato) else {
            return Completion::err(Status::CONNECT_CTRL_BUSY);
        };
        tracing::info!(cntlid = ctrl.cntlid, host = %ctrl.hostnqn, subsys = %ctrl.subsys.nqn, kato_ms = kato, "admin queue connected; controller created");
        // A host whose registration came back from the PTPL file has a
        // controller again: the Reservation Report names it.
        for nsid in ctrl.subsys.nsids() {
            if let Some(ns) = ctrl.subsys.namespace(nsid) {
                let mut r = ns.resv.write();
                for reg in r.registrants.iter_mut().filter(|g| g.hostid == d.hostid && g.cntlid == 0xffff) {
                    reg.cntlid = ctrl.cntlid;
                }
            }
        }
        ctx.ctrl = Some(ctrl.clone());
        ctx.qid = 0;
        ctx.depth = depth as u16;
        ctx.sqflow_disabled = c.cattr & CATTR_DISABLE_SQFLOW != 0;
        return Completion::ok(ctrl.cntlid as u64);
    }
    let Some(ctrl) = t.ctrl(d.cntlid.get()) else {
        return invalid_param(true, 16);
    };
    if ctrl.subsys.nqn != subsys.nqn || ctrl.hostnqn != d.hostnqn() {
        return invalid_param(true, 16);
    }
    if ctrl.hostid != d.hostid {
        return invalid_param(true, 0);
    }
    if !ctrl.is_ready() {
        return Completion::err(Status::CMD_SEQ_ERROR);
    }
    if c.qid > ctrl.io_queues.load(Ordering::Acquire) {
        return invalid_param(false, 42);
    }
    let dup = ctrl.queues.lock().iter().filter_map(|w| w.upgrade()).any(|q| q.qid() == c.qid);
    if dup {
        return invalid_param(false, 42);
    }
    tracing::info!(cntlid = ctrl.cntlid, qid = c.qid, depth, "I/O queue connected");
    ctx.ctrl = Some(ctrl.clone());
    ctx.qid = c.qid;
    ctx.depth = depth as u16;
    ctx.sqflow_disabled = c.cattr & CATTR_DISABLE_SQFLOW != 0;
    Completion::ok(ctrl.cntlid as u64)
}

impl Completion {
    fn with_status(mut self, s: Status) -> Self {
        self.status = s;
        self
    }
}

fn cap_value(ctx: &QueueCtx) -> u64 {
    // MQES is zero-based; TO is in 500 ms units (7.5 s); NVM command set.
    (ctx.target.opts.max_queue_depth as u64 - 1) | cap::CQR | (15u64 << 24) | cap::CSS_NVM
}

fn property_get(ctx: &QueueCtx, p: Property) -> Completion {
    let Some(ctrl) = &ctx.ctrl else { return Completion::err(Status::CMD_SEQ_ERROR) };
    let (v, eight) = match p.offset {
        prop::CAP => (cap_value(ctx), true),
        prop::VS => (VERSION as u64, false),
        prop::CC => (ctrl.cc.load(Ordering::Acquire) as u64, false),
        prop::CSTS => (ctrl.csts.load(Ordering::Acquire) as u64, false),
        _ => return Completion::err(Status::INVALID_FIELD),
    };
    if eight != p.eight && p.offset == prop::CAP {
        // CAP must be read as 8 bytes; the others as 4.
        return Completion::err(Status::INVALID_FIELD);
    }
    Completion::ok(v)
}

fn property_set(ctx: &QueueCtx, p: Property) -> Completion {
    let Some(ctrl) = &ctx.ctrl else { return Completion::err(Status::CMD_SEQ_ERROR) };
    match p.offset {
        prop::CC if !p.eight => {
            ctrl.set_cc(p.value as u32);
            Completion::ok(0)
        }
        // NVM Subsystem Reset is optional and not supported.
        _ => Completion::err(Status::INVALID_FIELD),
    }
}
