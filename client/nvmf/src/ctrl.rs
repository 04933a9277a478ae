//! A host's controller: admin queue, I/O queues, identify, keep-alive.

use super::queue::{Completed, DataDir, QueuePair, Transport};
use super::{NvmfError, Result};
use nvme_wire::fabrics::{cc, csts, Connect, ConnectData, Property, CATTR_DISABLE_SQFLOW, DISCOVERY_NQN};
use nvme_wire::identify::{cns, IdCtrl, IdNs};
use nvme_wire::log::{DiscoveryLogEntry, DiscoveryLogHeader};
use nvme_wire::nvme::{feat, lid, opc, prop, sqe, Sqe};
use nvme_wire::resv::{self, KeyPair, RegCtrlExt, ResvStatusExtHdr};
use nvme_wire::zerocopy::{FromBytes, IntoBytes};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub transport: Transport,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub io_queues: u16,
    pub queue_depth: u16,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Keep-alive timeout asked of the controller; Keep Alive is sent every half of it.
    pub kato_ms: u32,
    /// Spin on sockets instead of sleeping.
    pub poll_mode: bool,
    /// Ask the I/O queues to run without SQ flow control (Connect CATTR
    /// bit 2): the host counts its own free slots, and a controller may
    /// then end a read with a C2HData PDU flagged SUCCESS instead of a
    /// separate CapsuleResp, one PDU less per read.
    pub disable_sqflow: bool,
    /// After an established association fails (the connection dropped, the
    /// target restarted), how long to keep trying to connect again (every
    /// [`RECONNECT_DELAY`]) with the failed command waiting, as Linux's
    /// `ctrl_loss_tmo`; zero fails at once.
    pub reconnect_for: Duration,
}

/// Between two attempts to connect again.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(250);

impl Default for ConnectOpts {
    fn default() -> Self {
        let hostid = *uuid::Uuid::new_v4().as_bytes();
        Self {
            transport: Transport::Tcp,
            hostnqn: format!("nqn.2014-08.org.nvmexpress:uuid:{}", uuid::Uuid::from_bytes(hostid)),
            hostid,
            io_queues: 1,
            queue_depth: 128,
            hdgst: false,
            ddgst: false,
            kato_ms: 10_000,
            poll_mode: false,
            disable_sqflow: true,
            reconnect_for: Duration::from_secs(30),
        }
    }
}

impl ConnectOpts {
    /// A stable identity: host NQN and the host ID derived from it.
    pub fn with_hostnqn(mut self, nqn: &str) -> Self {
        self.hostnqn = nqn.to_owned();
        self.hostid = *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, nqn.as_bytes()).as_bytes();
        self
    }
}

/// What a namespace looks like to the host.
#[derive(Debug, Clone, Copy)]
pub struct NsInfo {
    pub nsid: u32,
    pub blocks: u64,
    pub block_size: u32,
    pub nguid: [u8; 16],
}

pub struct Controller {
    pub cntlid: u16,
    pub subnqn: String,
    pub id: Box<IdCtrl>,
    shared: Arc<Shared>,
    io: Vec<Mutex<QueuePair>>,
    stop: Arc<AtomicBool>,
    keepalive: Option<std::thread::JoinHandle<()>>,
    pub opts: ConnectOpts,
}

/// What the keep-alive thread shares with the controller: the admin queue
/// and what it takes to set the association up again.
struct Shared {
    addr: String,
    subnqn: String,
    opts: ConnectOpts,
    admin: Mutex<QueuePair>,
    /// Closed for good ([`Controller::close`]): every command fails and
    /// nothing connects again.
    closed: AtomicBool,
    /// The association now; taken (after any I/O queue lock, never while
    /// the admin queue's is held) to set up a new one.
    assoc: Mutex<Assoc>,
}

/// One association (admin queue and the controller it made); a queue
/// connected under an older one is connected again before it is used.
#[derive(Clone, Copy)]
struct Assoc {
    epoch: u64,
    cntlid: u16,
    depth: u16,
    inline: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a failure means the connection or the association is gone (as
/// opposed to a command the controller answered with an error).
fn transport_failed(e: &NvmfError) -> bool {
    matches!(e, NvmfError::Io(_) | NvmfError::Protocol(_) | NvmfError::Terminated { .. } | NvmfError::Timeout(_))
}

fn connect_queue(
    addr: &str,
    subnqn: &str,
    o: &ConnectOpts,
    qid: u16,
    depth: u16,
    cntlid: u16,
) -> Result<(QueuePair, u16)> {
    let mut q = QueuePair::open(o.transport, addr, qid, depth, o.hdgst, o.ddgst)?;
    let cattr = if qid > 0 && o.disable_sqflow { CATTR_DISABLE_SQFLOW } else { 0 };
    let c = Connect { recfmt: 0, qid, sqsize: depth - 1, cattr, kato: if qid == 0 { o.kato_ms } else { 0 } };
    let data = ConnectData::new(o.hostid, cntlid, subnqn, &o.hostnqn);
    let r = q.exec(c.to_sqe(0), DataDir::ToCtrl(data.as_bytes()), None)?;
    Ok((q, r.result as u16))
}

/// Connects the admin queue and enables the controller: (admin queue,
/// cntlid, CAP).
fn associate(addr: &str, subnqn: &str, opts: &ConnectOpts) -> Result<(QueuePair, u16, u64)> {
    let (mut admin, cntlid) = connect_queue(addr, subnqn, opts, 0, 32, 0xffff)?;
    let cap = admin.exec(Property { eight: true, offset: prop::CAP, value: 0 }.get_sqe(0), DataDir::None, None)?.result;
    let timeout = Duration::from_millis(500 * nvme_wire::fabrics::cap::to_500ms(cap).max(1) as u64);
    admin.exec(
        Property { eight: false, offset: prop::CC, value: cc::ENABLE_DEFAULT as u64 }.set_sqe(0),
        DataDir::None,
        None,
    )?;
    let t0 = Instant::now();
    loop {
        let st = admin
            .exec(Property { eight: false, offset: prop::CSTS, value: 0 }.get_sqe(0), DataDir::None, None)?
            .result as u32;
        if st & csts::CFS != 0 {
            return Err(NvmfError::Protocol("controller fatal status after enable".into()));
        }
        if st & csts::RDY != 0 {
            break;
        }
        if t0.elapsed() > timeout {
            return Err(NvmfError::Timeout("controller did not become ready".into()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok((admin, cntlid, cap))
}

/// Asks for `n` I/O queues; how many the controller grants.
fn ask_queues(admin: &mut QueuePair, n: u16) -> Result<u16> {
    let mut s = sqe(opc::SET_FEATURES, 0, 0);
    let want = (n - 1) as u32;
    s.cdw10 = (feat::NUM_QUEUES as u32).into();
    s.cdw11 = (want | want << 16).into();
    Ok((admin.exec(s, DataDir::None, None)?.result as u16) + 1)
}

impl Shared {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(NvmfError::Invalid("the controller is closed".into()));
        }
        Ok(())
    }

    /// Sets up a new association if `seen` (the epoch of the queue that
    /// failed) is still the current one, and returns the current one. Only
    /// the admin queue is replaced here; I/O queues reconnect when used.
    fn reassociate(&self, seen: u64, io_queues: u16) -> Result<Assoc> {
        self.check_open()?;
        let mut a = lock(&self.assoc);
        if a.epoch != seen {
            return Ok(*a);
        }
        let (mut admin, cntlid, _) = associate(&self.addr, &self.subnqn, &self.opts)?;
        if io_queues > 0 {
            ask_queues(&mut admin, io_queues)?;
        }
        a.epoch += 1;
        a.cntlid = cntlid;
        admin.epoch = a.epoch;
        *lock(&self.admin) = admin;
        tracing::warn!(addr = %self.addr, subnqn = %self.subnqn, cntlid, "connected again after losing the controller");
        Ok(*a)
    }

    /// Connects I/O queue `qid` again under the current association (a new
    /// one first if `q`'s is the current one, which failed).
    fn reconnect_io(&self, q: &mut QueuePair, io_queues: u16) -> Result<()> {
        let a = self.reassociate(q.epoch, io_queues)?;
        let (mut nq, _) = connect_queue(&self.addr, &self.subnqn, &self.opts, q.qid(), a.depth, a.cntlid)?;
        nq.set_inline_max(a.inline);
        nq.set_poll_mode(self.opts.poll_mode);
        nq.epoch = a.epoch;
        *q = nq;
        Ok(())
    }

    /// Waits out a lost association: tries again every
    /// [`RECONNECT_DELAY`] until `connect` succeeds or `deadline` passes.
    fn retry_until(&self, deadline: Instant, mut connect: impl FnMut() -> Result<()>) -> Result<()> {
        loop {
            match connect() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() + RECONNECT_DELAY < deadline => {
                    tracing::debug!(addr = %self.addr, error = %e, "the controller is not back yet");
                    std::thread::sleep(RECONNECT_DELAY);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Controller {
    /// Connects the admin queue, enables the controller and connects
    /// `opts.io_queues` I/O queues.
    pub fn connect(addr: &str, subnqn: &str, opts: &ConnectOpts) -> Result<Self> {
        if subnqn.len() > nvme_wire::fabrics::NQN_MAX || opts.hostnqn.len() > nvme_wire::fabrics::NQN_MAX {
            return Err(NvmfError::Invalid("NQN longer than 223 bytes".into()));
        }
        let (mut admin, cntlid, cap) = associate(addr, subnqn, opts)?;
        let mut idb = vec![0u8; 4096];
        admin.exec(identify_sqe(cns::CONTROLLER, 0), DataDir::FromCtrl(4096), Some(&mut idb))?;
        let id = Box::new(IdCtrl::read_from_bytes(&idb[..]).map_err(|_| NvmfError::Protocol("identify size".into()))?);
        let mqes = nvme_wire::fabrics::cap::mqes(cap) as u32 + 1;
        let depth = (opts.queue_depth as u32).min(mqes).max(2) as u16;
        let inline = (id.ioccsz.get() as usize * 16).saturating_sub(64);
        let mut io = Vec::new();
        let is_discovery = subnqn == DISCOVERY_NQN;
        if !is_discovery && opts.io_queues > 0 {
            let granted = ask_queues(&mut admin, opts.io_queues)?;
            for qid in 1..=opts.io_queues.min(granted) {
                let (mut q, _) = connect_queue(addr, subnqn, opts, qid, depth, cntlid)?;
                q.set_inline_max(inline);
                q.set_poll_mode(opts.poll_mode);
                io.push(Mutex::new(q));
            }
        }
        let shared = Arc::new(Shared {
            addr: addr.to_owned(),
            subnqn: subnqn.to_owned(),
            opts: opts.clone(),
            admin: Mutex::new(admin),
            closed: AtomicBool::new(false),
            assoc: Mutex::new(Assoc { epoch: 0, cntlid, depth, inline }),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let nio = io.len() as u16;
        let keepalive = (opts.kato_ms > 0).then(|| {
            let (sh, s) = (Arc::downgrade(&shared), stop.clone());
            let every = Duration::from_millis(opts.kato_ms as u64 / 2);
            std::thread::spawn(move || {
                let mut last = Instant::now();
                let mut failing = false;
                while !s.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(50));
                    let Some(sh) = sh.upgrade() else { return };
                    if sh.closed.load(Ordering::Acquire) {
                        return;
                    }
                    if last.elapsed() < every {
                        continue;
                    }
                    let (r, epoch) = {
                        let mut a = lock(&sh.admin);
                        (a.exec(sqe(opc::KEEP_ALIVE, 0, 0), DataDir::None, None), a.epoch)
                    };
                    match r {
                        Ok(_) => failing = false,
                        Err(e) if transport_failed(&e) && !sh.opts.reconnect_for.is_zero() => {
                            if !failing {
                                tracing::warn!(error = %e, "keep-alive failed; connecting again");
                                failing = true;
                            }
                            // An idle host sets the association up again too,
                            // so that it is there when I/O comes.
                            if let Err(e) = sh.reassociate(epoch, nio) {
                                tracing::debug!(error = %e, "the controller is not back yet");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "keep-alive failed");
                            return;
                        }
                    }
                    last = Instant::now();
                }
            })
        });
        tracing::info!(addr, subnqn, cntlid, transport = %opts.transport, io_queues = io.len(), depth, "connected");
        Ok(Self { cntlid, subnqn: subnqn.to_owned(), id, shared, io, stop, keepalive, opts: opts.clone() })
    }

    /// Runs `f` on I/O queue `i`; when the connection or the association
    /// fails under it, connects again (for up to `opts.reconnect_for`) and
    /// runs `f` again from the start, so `f` must be safe to repeat (reads
    /// and writes of the same blocks are).
    fn with_io<T>(&self, i: usize, mut f: impl FnMut(&mut QueuePair) -> Result<T>) -> Result<T> {
        if self.io.is_empty() {
            return Err(NvmfError::Invalid("no I/O queues".into()));
        }
        let mut q = lock(&self.io[i % self.io.len()]);
        let mut deadline = None;
        loop {
            self.shared.check_open()?;
            if q.epoch != lock(&self.shared.assoc).epoch {
                let dl = *deadline.get_or_insert_with(|| Instant::now() + self.opts.reconnect_for);
                self.shared.retry_until(dl, || self.shared.reconnect_io(&mut q, self.io.len() as u16))?;
            }
            match f(&mut q) {
                Err(e) if transport_failed(&e) && !self.opts.reconnect_for.is_zero() => {
                    let dl = *deadline.get_or_insert_with(|| Instant::now() + self.opts.reconnect_for);
                    if Instant::now() >= dl {
                        return Err(e);
                    }
                    tracing::warn!(qid = q.qid(), error = %e, "lost the controller; connecting again");
                    let n = self.io.len() as u16;
                    self.shared.retry_until(dl, || self.shared.reconnect_io(&mut q, n))?;
                }
                r => return r,
            }
        }
    }

    pub fn io_queue_count(&self) -> usize {
        self.io.len()
    }

    /// Closes the controller for good, though others still hold it: every
    /// command from now on fails and it never connects again. For a host
    /// that must not write what it still holds (it was expelled).
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }

    /// Exclusive use of I/O queue `i` (for callers that keep many commands
    /// in flight; they see a lost connection as an error, with no reconnect).
    pub fn io_queue(&self, i: usize) -> std::sync::MutexGuard<'_, QueuePair> {
        lock(&self.io[i % self.io.len()])
    }

    /// Exclusive use of the admin queue, for asynchronous admin commands
    /// (Asynchronous Event Request).
    pub fn admin_queue(&self) -> std::sync::MutexGuard<'_, QueuePair> {
        lock(&self.shared.admin)
    }

    /// Runs an admin command, connecting again and repeating it when the
    /// association fails under it (as [`Controller::with_io`] does).
    pub fn admin_exec(&self, s: Sqe, data: DataDir<'_>, mut read_into: Option<&mut [u8]>) -> Result<Completed> {
        let mut deadline = None;
        loop {
            self.shared.check_open()?;
            let (r, epoch) = {
                let mut a = lock(&self.shared.admin);
                (a.exec(s, data, read_into.as_deref_mut()), a.epoch)
            };
            match r {
                Err(e) if transport_failed(&e) && !self.opts.reconnect_for.is_zero() => {
                    let dl = *deadline.get_or_insert_with(|| Instant::now() + self.opts.reconnect_for);
                    if Instant::now() >= dl {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "lost the controller's admin queue; connecting again");
                    let n = self.io.len() as u16;
                    self.shared.retry_until(dl, || self.shared.reassociate(epoch, n).map(|_| ()))?;
                }
                r => return r,
            }
        }
    }

    fn io_exec(&self, s: Sqe, data: DataDir<'_>, mut read_into: Option<&mut [u8]>) -> Result<Completed> {
        // Spread synchronous callers over the queues by thread.
        self.with_io(thread_slot(), |q| q.exec(s, data, read_into.as_deref_mut()))
    }

    pub fn identify_ns(&self, nsid: u32) -> Result<NsInfo> {
        let mut b = vec![0u8; 4096];
        self.admin_exec(identify_sqe(cns::NAMESPACE, nsid), DataDir::FromCtrl(4096), Some(&mut b))?;
        let ns = IdNs::read_from_bytes(&b[..]).map_err(|_| NvmfError::Protocol("identify size".into()))?;
        let block_size =
            ns.block_size().ok_or_else(|| NvmfError::Protocol("namespace reports an invalid block size".into()))?;
        if ns.nsze.get() == 0 {
            return Err(NvmfError::Invalid(format!("namespace {nsid} is not active")));
        }
        Ok(NsInfo { nsid, blocks: ns.nsze.get(), block_size, nguid: ns.nguid })
    }

    pub fn active_namespaces(&self) -> Result<Vec<u32>> {
        let mut b = vec![0u8; 4096];
        self.admin_exec(identify_sqe(cns::ACTIVE_NS_LIST, 0), DataDir::FromCtrl(4096), Some(&mut b))?;
        Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).take_while(|&i| i != 0).collect())
    }

    pub fn get_log_page(&self, l: u8, offset: u64, buf: &mut [u8]) -> Result<()> {
        let numd = (buf.len() / 4) as u32 - 1;
        let mut s = sqe(opc::GET_LOG_PAGE, 0, u32::MAX);
        s.cdw10 = (l as u32 | (numd & 0xffff) << 16).into();
        s.cdw11 = (numd >> 16).into();
        s.cdw12 = (offset as u32).into();
        s.cdw13 = ((offset >> 32) as u32).into();
        let len = buf.len() as u32;
        self.admin_exec(s, DataDir::FromCtrl(len), Some(buf)).map(|_| ())
    }

    /// Set Features: feature `fid` to `cdw11`; returns completion DW0.
    pub fn set_features(&self, fid: u8, cdw11: u32) -> Result<u32> {
        let mut s = sqe(opc::SET_FEATURES, 0, 0);
        s.cdw10 = (fid as u32).into();
        s.cdw11 = cdw11.into();
        self.admin_exec(s, DataDir::None, None).map(|c| c.result as u32)
    }

    /// Get Features (current value) of feature `fid`: completion DW0.
    pub fn get_features(&self, fid: u8) -> Result<u32> {
        let mut s = sqe(opc::GET_FEATURES, 0, 0);
        s.cdw10 = (fid as u32).into();
        self.admin_exec(s, DataDir::None, None).map(|c| c.result as u32)
    }

    fn block_size(&self, nsid: u32) -> Result<u32> {
        Ok(self.identify_ns(nsid)?.block_size)
    }

    /// Reads `buf.len()` bytes (a multiple of the block size) from `slba`.
    pub fn read(&self, nsid: u32, slba: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.block_size(nsid)?;
        self.read_blocks(nsid, slba, bs, buf)
    }

    pub fn read_blocks(&self, nsid: u32, slba: u64, bs: u32, buf: &mut [u8]) -> Result<()> {
        let n = buf.len() as u32;
        let s = rw_sqe(opc::READ, nsid, slba, n, bs)?;
        self.io_exec(s, DataDir::FromCtrl(n), Some(buf)).map(|_| ())
    }

    /// Reads any whole number of blocks from `slba`, as as many commands as
    /// the controller's transfer limit needs, several in flight at once.
    pub fn read_range(&self, nsid: u32, slba: u64, bs: u32, buf: &mut [u8]) -> Result<()> {
        let max = self.max_transfer();
        if buf.len() <= max {
            return self.read_blocks(nsid, slba, bs, buf);
        }
        let mut chunks: Vec<&mut [u8]> = buf.chunks_mut(max).collect();
        let lba = |i: usize| slba + (i * max / bs as usize) as u64;
        let sqes = (0..chunks.len())
            .map(|i| Ok((rw_sqe(opc::READ, nsid, lba(i), chunks[i].len() as u32, bs)?, chunks[i].len() as u32)))
            .collect::<Result<Vec<_>>>()?;
        self.pipelined(
            sqes.len(),
            |q, i| q.submit(sqes[i].0, DataDir::FromCtrl(sqes[i].1), i as u64),
            |q, c| {
                let d = q.data(c.cid);
                let dst = &mut chunks[c.tag as usize];
                let n = d.len().min(dst.len());
                dst[..n].copy_from_slice(&d[..n]);
            },
        )
    }

    /// Writes any whole number of blocks at `slba`, split by the transfer
    /// limit, several commands in flight at once.
    pub fn write_range(&self, nsid: u32, slba: u64, bs: u32, data: &[u8], fua: bool) -> Result<()> {
        let max = self.max_transfer();
        if data.len() <= max {
            return self.write_blocks(nsid, slba, bs, data, fua);
        }
        let chunks: Vec<&[u8]> = data.chunks(max).collect();
        let sqes = (0..chunks.len())
            .map(|i| write_sqe(nsid, slba + (i * max / bs as usize) as u64, chunks[i].len() as u32, bs, fua))
            .collect::<Result<Vec<_>>>()?;
        self.pipelined(chunks.len(), |q, i| q.submit(sqes[i], DataDir::ToCtrl(chunks[i]), i as u64), |_, _| {})
    }

    /// Runs commands `0..n` on one I/O queue, up to [`RANGE_IN_FLIGHT`] at
    /// once (the queue's room permitting): `submit(q, i)` sends command `i`
    /// with tag `i`, `done(q, c)` takes a successful one's data before the
    /// next submit can reuse its buffer. The first failure is returned once
    /// every command sent has come back.
    fn pipelined(
        &self,
        n: usize,
        mut submit: impl FnMut(&mut QueuePair, usize) -> Result<u16>,
        mut done: impl FnMut(&QueuePair, &Completed),
    ) -> Result<()> {
        self.with_io(thread_slot(), |q| {
            let (mut sent, mut back) = (0, 0);
            let mut failed: Option<NvmfError> = None;
            let mut out = Vec::with_capacity(RANGE_IN_FLIGHT);
            let mut cids = Vec::with_capacity(n);
            while back < n {
                while failed.is_none() && sent < n && sent - back < RANGE_IN_FLIGHT && q.has_room() {
                    cids.push(submit(q, sent)?);
                    sent += 1;
                }
                if sent == back {
                    break;
                }
                out.clear();
                q.poll(&mut out, 1)?;
                // (A late answer to some earlier caller's timed-out command is
                // not one of these.)
                for c in out.iter().filter(|c| cids.get(c.tag as usize) == Some(&c.cid)) {
                    back += 1;
                    if c.status.is_success() {
                        done(q, c);
                    } else if failed.is_none() {
                        failed = Some(NvmfError::Status { status: c.status, result: c.result });
                    }
                }
            }
            failed.map_or(Ok(()), Err)
        })
    }

    pub fn write(&self, nsid: u32, slba: u64, data: &[u8], fua: bool) -> Result<()> {
        let bs = self.block_size(nsid)?;
        self.write_blocks(nsid, slba, bs, data, fua)
    }

    pub fn write_blocks(&self, nsid: u32, slba: u64, bs: u32, data: &[u8], fua: bool) -> Result<()> {
        let s = write_sqe(nsid, slba, data.len() as u32, bs, fua)?;
        self.io_exec(s, DataDir::ToCtrl(data), None).map(|_| ())
    }

    pub fn compare(&self, nsid: u32, slba: u64, bs: u32, data: &[u8]) -> Result<()> {
        let s = rw_sqe(opc::COMPARE, nsid, slba, data.len() as u32, bs)?;
        self.io_exec(s, DataDir::ToCtrl(data), None).map(|_| ())
    }

    pub fn flush(&self, nsid: u32) -> Result<()> {
        self.io_exec(sqe(opc::FLUSH, 0, nsid), DataDir::None, None).map(|_| ())
    }

    pub fn write_zeroes(&self, nsid: u32, slba: u64, nlb: u32, deallocate: bool) -> Result<()> {
        if nlb == 0 || nlb > 65536 {
            return Err(NvmfError::Invalid("write zeroes covers 1..=65536 blocks".into()));
        }
        let mut s = sqe(opc::WRITE_ZEROES, 0, nsid);
        s.cdw10 = (slba as u32).into();
        s.cdw11 = ((slba >> 32) as u32).into();
        s.cdw12 = ((nlb - 1) | if deallocate { 1 << 25 } else { 0 }).into();
        self.io_exec(s, DataDir::None, None).map(|_| ())
    }

    /// Dataset Management deallocate of `(slba, nlb)` ranges.
    pub fn deallocate(&self, nsid: u32, ranges: &[(u64, u32)]) -> Result<()> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(NvmfError::Invalid("1..=256 ranges".into()));
        }
        let mut d = vec![0u8; ranges.len() * 16];
        for (c, &(slba, nlb)) in d.chunks_exact_mut(16).zip(ranges) {
            c[4..8].copy_from_slice(&nlb.to_le_bytes());
            c[8..16].copy_from_slice(&slba.to_le_bytes());
        }
        let mut s = sqe(opc::DSM, 0, nsid);
        s.cdw10 = (ranges.len() as u32 - 1).into();
        s.cdw11 = (1u32 << 2).into();
        self.io_exec(s, DataDir::ToCtrl(&d), None).map(|_| ())
    }

    pub fn resv_register(&self, nsid: u32, action: u8, iekey: bool, crkey: u64, nrkey: u64) -> Result<()> {
        self.resv_register_ptpl(nsid, action, iekey, crkey, nrkey, 0)
    }

    /// Reservation Register with Change Persist Through Power Loss State
    /// (`cptpl`: 0 no change, 2 off, 3 on: the target keeps the
    /// reservations through a restart).
    pub fn resv_register_ptpl(
        &self,
        nsid: u32,
        action: u8,
        iekey: bool,
        crkey: u64,
        nrkey: u64,
        cptpl: u8,
    ) -> Result<()> {
        let mut s = sqe(opc::RESV_REGISTER, 0, nsid);
        s.cdw10 = resv::cdw10(action, iekey, 0, cptpl).into();
        let k = KeyPair { crkey: crkey.into(), nrkey: nrkey.into() };
        self.io_exec(s, DataDir::ToCtrl(k.as_bytes()), None).map(|_| ())
    }

    pub fn resv_acquire(&self, nsid: u32, action: u8, rtype: u8, crkey: u64, prkey: u64) -> Result<()> {
        let mut s = sqe(opc::RESV_ACQUIRE, 0, nsid);
        s.cdw10 = resv::cdw10(action, false, rtype, 0).into();
        let k = KeyPair { crkey: crkey.into(), nrkey: prkey.into() };
        self.io_exec(s, DataDir::ToCtrl(k.as_bytes()), None).map(|_| ())
    }

    pub fn resv_release(&self, nsid: u32, action: u8, rtype: u8, crkey: u64) -> Result<()> {
        let mut s = sqe(opc::RESV_RELEASE, 0, nsid);
        s.cdw10 = resv::cdw10(action, false, rtype, 0).into();
        self.io_exec(s, DataDir::ToCtrl(&crkey.to_le_bytes()), None).map(|_| ())
    }

    /// Reservation Report (extended): (generation, type, registrants).
    pub fn resv_report(&self, nsid: u32) -> Result<(u32, u8, Vec<RegCtrlExt>)> {
        let len = 64 + 64 * 32;
        let mut b = vec![0u8; len];
        let mut s = sqe(opc::RESV_REPORT, 0, nsid);
        s.cdw10 = ((len / 4 - 1) as u32).into();
        s.cdw11 = 1.into();
        self.io_exec(s, DataDir::FromCtrl(len as u32), Some(&mut b))?;
        let h = ResvStatusExtHdr::read_from_bytes(&b[..64]).map_err(|_| NvmfError::Protocol("report".into()))?;
        let n = (h.regctl.get() as usize).min(32);
        let regs = (0..n).filter_map(|i| RegCtrlExt::read_from_bytes(&b[64 + i * 64..128 + i * 64]).ok()).collect();
        Ok((h.gen.get(), h.rtype, regs))
    }

    /// Largest transfer one command may move (MDTS; 0 means no limit, for
    /// which 1 MiB is used).
    pub fn max_transfer(&self) -> usize {
        if self.id.mdts == 0 {
            1 << 20
        } else {
            4096usize << self.id.mdts.min(12)
        }
    }

    /// Orderly shutdown: CC.SHN and wait for SHST complete; the queues
    /// close when the controller is dropped. (Disconnect is an I/O-queue
    /// command only: the admin queue ends by closing its connection.)
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_keepalive();
        let mut a = lock(&self.shared.admin);
        a.exec(
            Property { eight: false, offset: prop::CC, value: (cc::ENABLE_DEFAULT | cc::SHN_NORMAL) as u64 }.set_sqe(0),
            DataDir::None,
            None,
        )?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            let st = a
                .exec(Property { eight: false, offset: prop::CSTS, value: 0 }.get_sqe(0), DataDir::None, None)?
                .result as u32;
            if st & csts::SHST_MASK == csts::SHST_COMPLETE {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(NvmfError::Timeout("controller did not complete its shutdown".into()))
    }

    fn stop_keepalive(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(k) = self.keepalive.take() {
            let _ = k.join();
        }
    }
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cntlid)
            .field("subnqn", &self.subnqn)
            .field("io_queues", &self.io.len())
            .finish()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop_keepalive();
    }
}

fn identify_sqe(c: u8, nsid: u32) -> Sqe {
    let mut s = sqe(opc::IDENTIFY, 0, nsid);
    s.cdw10 = (c as u32).into();
    s
}

fn rw_sqe(op: u8, nsid: u32, slba: u64, bytes: u32, bs: u32) -> Result<Sqe> {
    if bytes == 0 || !bytes.is_multiple_of(bs) || bytes / bs > 65536 {
        return Err(NvmfError::Invalid(format!("{bytes} bytes is not 1..=65536 blocks of {bs}")));
    }
    let mut s = sqe(op, 0, nsid);
    s.cdw10 = (slba as u32).into();
    s.cdw11 = ((slba >> 32) as u32).into();
    s.cdw12 = (bytes / bs - 1).into();
    Ok(s)
}

/// A Write of `bytes` at `slba`, with Force Unit Access if `fua`.
fn write_sqe(nsid: u32, slba: u64, bytes: u32, bs: u32, fua: bool) -> Result<Sqe> {
    let mut s = rw_sqe(opc::WRITE, nsid, slba, bytes, bs)?;
    if fua {
        s.cdw12 = (s.cdw12.get() | 1 << 30).into();
    }
    Ok(s)
}

/// Commands of one range in flight at once ([`Controller::read_range`]).
const RANGE_IN_FLIGHT: usize = 16;

/// Builds a read or write command for the asynchronous API.
pub fn io_sqe(write: bool, nsid: u32, slba: u64, nlb: u32) -> Sqe {
    let mut s = sqe(if write { opc::WRITE } else { opc::READ }, 0, nsid);
    s.cdw10 = (slba as u32).into();
    s.cdw11 = ((slba >> 32) as u32).into();
    s.cdw12 = (nlb.saturating_sub(1)).into();
    s
}

fn thread_slot() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() as usize
}

/// Reads the discovery log page from a discovery controller.
pub fn discover(addr: &str, opts: &ConnectOpts) -> Result<Vec<DiscoveryLogEntry>> {
    let mut o = opts.clone();
    o.kato_ms = 0;
    o.io_queues = 0;
    let c = Controller::connect(addr, DISCOVERY_NQN, &o)?;
    let mut h = vec![0u8; 1024];
    c.get_log_page(lid::DISCOVERY, 0, &mut h)?;
    let hdr =
        DiscoveryLogHeader::read_from_bytes(&h[..]).map_err(|_| NvmfError::Protocol("discovery header".into()))?;
    let n = hdr.numrec.get().min(64) as usize;
    let mut out = Vec::with_capacity(n);
    if n > 0 {
        let mut b = vec![0u8; n * 1024];
        c.get_log_page(lid::DISCOVERY, 1024, &mut b)?;
        for e in b.chunks_exact(1024) {
            out.push(DiscoveryLogEntry::read_from_bytes(e).map_err(|_| NvmfError::Protocol("discovery entry".into()))?);
        }
    }
    let _ = c.shutdown();
    Ok(out)
}
