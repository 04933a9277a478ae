//! Command parsing and execution, transport independent.
//!
//! A command is parsed once ([`parse`]): parsing picks what will execute
//! it, checks its fields and computes its data transfer, so the transport
//! knows how much data to move before execution and [`execute`] never
//! re-validates. Execution gets the host's data (`data_in`) or fills the
//! buffer that goes to the host (`data_out`).

pub mod admin;
pub mod fabrics;
pub mod io;

use crate::ctrlr::Ctrl;
use crate::namespace::Namespace;
use crate::target::Target;
use nvme_wire::nvme::{opc, Sqe};
use nvme_wire::status::Status;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Per-queue state the command code needs.
pub struct QueueCtx {
    pub target: Arc<Target>,
    /// Set by a successful Connect.
    pub ctrl: Option<Arc<Ctrl>>,
    pub qid: u16,
    /// Entries in this queue (SQSIZE + 1), known after Connect.
    pub depth: u16,
    pub sqhd: u16,
    /// Connect asked for SQ flow control to be disabled (CATTR bit 2).
    pub sqflow_disabled: bool,
    /// Transport type, for the discovery log and the error log.
    pub trtype: u8,
}

impl QueueCtx {
    pub fn new(target: Arc<Target>, trtype: u8) -> Self {
        Self { target, ctrl: None, qid: 0, depth: 32, sqhd: 0, sqflow_disabled: false, trtype }
    }

    /// Advances the SQ head pointer reported in completions.
    pub fn advance_sqhd(&mut self) -> u16 {
        self.sqhd = (self.sqhd + 1) % self.depth.max(1);
        self.sqhd
    }
}

/// Direction and length of a command's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xfer {
    None,
    /// Controller to host: the command fills this many bytes.
    ToHost(u32),
    /// Host to controller: the command needs this many bytes before it runs.
    FromHost(u32),
}

impl Xfer {
    pub fn len(self) -> u32 {
        match self {
            Xfer::None => 0,
            Xfer::ToHost(n) | Xfer::FromHost(n) => n,
        }
    }
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// A parsed command, ready to execute.
pub enum Cmd {
    Fabrics(fabrics::FabricsCmd),
    Admin(admin::AdminCmd),
    Io { ns: Arc<Namespace>, cmd: io::IoCmd },
}

pub struct Parsed {
    pub cmd: Cmd,
    pub xfer: Xfer,
}

/// The outcome of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub status: Status,
    pub result: u64,
    /// The command completes later from another thread (Asynchronous
    /// Event Request); send nothing now.
    pub deferred: bool,
}

impl Completion {
    pub fn ok(result: u64) -> Self {
        Self { status: Status::SUCCESS, result, deferred: false }
    }
    pub fn err(status: Status) -> Self {
        Self { status, result: 0, deferred: false }
    }
}

impl From<Status> for Completion {
    fn from(s: Status) -> Self {
        Completion::err(s)
    }
}

/// Parses and checks a command against the queue's state.
pub fn parse(ctx: &QueueCtx, sqe: &Sqe) -> Result<Parsed, Completion> {
    if sqe.opcode == opc::FABRICS {
        return fabrics::parse(ctx, sqe).map_err(Completion::err);
    }
    let Some(ctrl) = &ctx.ctrl else {
        // Only Connect is valid before the queue is connected.
        return Err(Completion::err(Status::CMD_SEQ_ERROR));
    };
    let r = if ctx.qid == 0 {
        admin::parse(ctx, ctrl, sqe)
    } else if !ctrl.is_ready() {
        Err(Status::CMD_SEQ_ERROR)
    } else {
        io::parse(ctx, ctrl, sqe)
    };
    r.map_err(|s| {
        ctrl.record_error(ctx.qid, sqe.cid.get(), s, sqe.nsid.get());
        Completion::err(s)
    })
}

/// Executes a parsed command. `data_in` holds exactly `xfer` bytes for
/// host-to-controller commands; `data_out` is exactly `xfer` bytes for
/// controller-to-host ones. `scratch` is a per-queue buffer that grows
/// once and is reused.
pub fn execute(
    ctx: &mut QueueCtx,
    p: Parsed,
    sqe: &Sqe,
    data_in: &[u8],
    data_out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Completion {
    if let Some(c) = &ctx.ctrl {
        c.last_seen.store(ctx.target.now_ms(), Ordering::Relaxed);
    }
    let c = match p.cmd {
        Cmd::Fabrics(f) => fabrics::execute(ctx, f, sqe, data_in),
        Cmd::Admin(a) => match ctx.ctrl.clone() {
            Some(ctrl) => admin::execute(ctx, &ctrl, a, sqe, data_out, scratch),
            None => Completion::err(Status::CMD_SEQ_ERROR),
        },
        Cmd::Io { ns, cmd } => match ctx.ctrl.clone() {
            Some(ctrl) => io::execute(&ctrl, &ns, cmd, data_in, data_out, scratch),
            None => Completion::err(Status::CMD_SEQ_ERROR),
        },
    };
    if !c.status.is_success() {
        if let Some(ctrl) = &ctx.ctrl {
            ctrl.record_error(ctx.qid, sqe.cid.get(), c.status, sqe.nsid.get());
        }
        tracing::debug!(qid = ctx.qid, opcode = sqe.opcode, cid = sqe.cid.get(), status = %c.status, "command failed");
    }
    c
}
