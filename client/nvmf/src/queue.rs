//! One host-side queue pair. What every transport shares (command IDs,
//! the synchronous `exec`, the knobs) is here; how capsules and data move
//! is behind [`QueueTransport`]: NVMe/TCP in `tcp.rs`, NVMe/RDMA in
//! `rdma.rs` (with the `rdma` feature).

use super::{NvmfError, Result};
use nvme_wire::nvme::Sqe;
use nvme_wire::status::Status;
use std::time::Duration;

/// Which NVMe-oF transport a controller's queues run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    Rdma,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Rdma => "rdma",
        })
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "rdma" => Ok(Transport::Rdma),
            _ => Err(format!("unknown transport {s:?} (tcp or rdma)")),
        }
    }
}

/// Where a command's data goes.
#[derive(Debug, Clone, Copy)]
pub enum DataDir<'a> {
    None,
    /// Host to controller (write-type commands).
    ToCtrl(&'a [u8]),
    /// Controller to host: this many bytes (read-type commands).
    FromCtrl(u32),
}

/// A finished command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub cid: u16,
    pub tag: u64,
    pub status: Status,
    pub result: u64,
}

/// A queue's settings, the same for every transport.
#[derive(Debug, Clone)]
pub struct QueueParams {
    pub qid: u16,
    /// Commands the queue keeps in flight at most.
    pub depth: u16,
    /// Largest write the queue sends inside the command capsule (from IOCCSZ).
    pub inline_max: usize,
    /// Spin on the socket or completion queue instead of sleeping.
    pub poll_mode: bool,
    /// How long a command may stay unanswered before the queue reports a timeout.
    pub timeout: Duration,
}

/// The host side of one queue on one transport.
pub trait QueueTransport: Send {
    fn params(&self) -> &QueueParams;
    fn params_mut(&mut self) -> &mut QueueParams;
    /// Commands submitted and not yet completed.
    fn outstanding(&self) -> usize;
    /// Whether another command can be submitted now.
    fn has_room(&self) -> bool;
    /// Queues a command (it may go out at once or at the next
    /// [`flush`](Self::flush)); returns its command ID.
    fn submit(&mut self, sqe: Sqe, data: DataDir<'_>, tag: u64) -> Result<u16>;
    /// Read data of a completed command; valid until that ID is reused.
    fn data(&self, cid: u16) -> &[u8];
    /// Sends whatever `submit` queued.
    fn flush(&mut self) -> Result<()>;
    /// Sends queued commands, then gathers completions into `out` until at
    /// least `min` have arrived (0: only what is already here). `eager`:
    /// once `min` are in, also take what has already arrived, at the cost
    /// of a look (a lone synchronous command has nothing to gain from it).
    fn gather(&mut self, out: &mut Vec<Completed>, min: usize, eager: bool) -> Result<()>;
}

/// One queue pair of a controller, on either transport.
pub struct QueuePair {
    link: Box<dyn QueueTransport>,
    transport: Transport,
    /// The controller's association this queue was connected under.
    pub(crate) epoch: u64,
}

impl QueuePair {
    /// An NVMe/TCP queue: opens the connection and exchanges ICReq / ICResp.
    pub fn connect(addr: &str, qid: u16, depth: u16, hdgst: bool, ddgst: bool) -> Result<Self> {
        let q = super::tcp::TcpQueue::connect(addr, qid, depth, hdgst, ddgst)?;
        Ok(Self { link: Box::new(q), transport: Transport::Tcp, epoch: 0 })
    }

    /// A queue on `transport` (digests apply to TCP only), ready for its
    /// Fabrics Connect command.
    pub fn open(transport: Transport, addr: &str, qid: u16, depth: u16, hdgst: bool, ddgst: bool) -> Result<Self> {
        match transport {
            Transport::Tcp => Self::connect(addr, qid, depth, hdgst, ddgst),
            #[cfg(feature = "rdma")]
            Transport::Rdma => {
                let q = super::rdma::RdmaQueue::connect(addr, qid, depth)?;
                Ok(Self { link: Box::new(q), transport, epoch: 0 })
            }
            #[cfg(not(feature = "rdma"))]
            Transport::Rdma => Err(NvmfError::Transport(
                "this build has no NVMe/RDMA: build with `--features nvmf/rdma` (or `client/rdma`)".into(),
            )),
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn qid(&self) -> u16 {
        self.link.params().qid
    }

    pub fn depth(&self) -> u16 {
        self.link.params().depth
    }

    /// Largest write sent inside the command capsule.
    pub fn inline_max(&self) -> usize {
        self.link.params().inline_max
    }

    pub fn set_inline_max(&mut self, n: usize) {
        self.link.params_mut().inline_max = n;
    }

    /// Spin instead of sleeping while waiting for completions.
    pub fn set_poll_mode(&mut self, on: bool) {
        self.link.params_mut().poll_mode = on;
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.link.params_mut().timeout = t;
    }

    pub fn outstanding(&self) -> usize {
        self.link.outstanding()
    }

    pub fn has_room(&self) -> bool {
        self.link.has_room()
    }

    /// Queues a command; it is sent on the next [`poll`](Self::poll) or
    /// [`flush`](Self::flush) at the latest. Returns its command ID.
    pub fn submit(&mut self, sqe: Sqe, data: DataDir<'_>, tag: u64) -> Result<u16> {
        self.link.submit(sqe, data, tag)
    }

    /// Read data of a completed command; valid until the next submit.
    pub fn data(&self, cid: u16) -> &[u8] {
        self.link.data(cid)
    }

    pub fn flush(&mut self) -> Result<()> {
        self.link.flush()
    }

    /// Sends queued commands, then gathers completions into `out` until at
    /// least `min` have arrived (0: only what is already here).
    pub fn poll(&mut self, out: &mut Vec<Completed>, min: usize) -> Result<()> {
        self.link.gather(out, min, true)
    }

    /// Submits one command and waits for it; copies read data into `read_into`.
    pub fn exec(&mut self, sqe: Sqe, data: DataDir<'_>, read_into: Option<&mut [u8]>) -> Result<Completed> {
        let cid = self.link.submit(sqe, data, 0)?;
        let mut out = Vec::with_capacity(1);
        loop {
            self.link.gather(&mut out, 1, false)?;
            if let Some(i) = out.iter().position(|c| c.cid == cid) {
                let c = out[i];
                if let Some(dst) = read_into {
                    let d = self.link.data(cid);
                    let n = d.len().min(dst.len());
                    dst[..n].copy_from_slice(&d[..n]);
                }
                if !c.status.is_success() {
                    return Err(NvmfError::Status { status: c.status, result: c.result });
                }
                return Ok(c);
            }
            out.clear();
        }
    }
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.link.params();
        f.debug_struct("QueuePair")
            .field("transport", &self.transport)
            .field("qid", &p.qid)
            .field("depth", &p.depth)
            .field("outstanding", &self.link.outstanding())
            .finish()
    }
}
