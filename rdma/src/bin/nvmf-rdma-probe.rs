//! `nvmf-rdma-probe`: a deliberately misbehaving NVMe/RDMA host, for the
//! fault cases a well-behaved initiator (the Linux kernel's) never shows a
//! target:
//! - `malformed`: after a valid admin Connect and Identify, capsules with a
//!   wrong SGL type, a too-short keyed SGL and an unknown opcode must each
//!   get an NVMe error status; a capsule shorter than an SQE must end the
//!   connection (there is no command to answer).
//! - `die`: connect the admin and one I/O queue, post a burst of writes
//!   whose data the target must RDMA READ from us, and abort the process
//!   at once: the target sees the queue pairs die mid-I/O.
//!
//! Prints `RESULT <scenario> ok ...` and exits 0 when the target behaved.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use clap::{Parser, ValueEnum};
use nvme_wire::fabrics::{cc, Connect, ConnectData, Property, DISCOVERY_NQN};
use nvme_wire::nvme::{opc, prop, sgl, Cqe, SglDesc, Sqe};
use nvme_wire::rdma::{CmAccept, CmRequest, KeyedSgl};
use nvme_wire::zerocopy::{FromBytes, FromZeros, IntoBytes};
use rdma::cm::{CmEventKind, Connection, QpConfig, Wake};
use rdma::verbs::{Access, Completion, MemoryRegion, WorkQueue};

const T: Option<Duration> = Some(Duration::from_secs(20));
/// Bytes per send slot: an SQE and a Connect's 1024 bytes of data.
const SLOT: usize = 2048;
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:7f1c3a52-0000-4000-8000-0000000000fe";

#[derive(Parser)]
#[command(about = "A misbehaving NVMe/RDMA host for target fault tests")]
struct Args {
    #[arg(long)]
    connect: SocketAddr,
    /// Subsystem to connect to (the `die` scenario needs an I/O subsystem).
    #[arg(long, default_value = DISCOVERY_NQN)]
    nqn: String,
    #[arg(long)]
    scenario: Scenario,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    Malformed,
    Die,
}

/// One NVMe/RDMA queue pair from the host side.
struct Queue {
    conn: Connection,
    recv: MemoryRegion,
    send: MemoryRegion,
    data: MemoryRegion,
    depth: usize,
    next_cid: u16,
}

impl Queue {
    fn open(addr: SocketAddr, qid: u16, depth: usize, data_len: usize) -> Result<Queue> {
        let cfg = QpConfig {
            max_send_wr: depth as u32 * 2,
            max_recv_wr: depth as u32,
            max_sge: 1,
            max_inline_data: 64,
            max_rd_atomic: 4,
        };
        let mut conn = Connection::resolve(addr, &cfg, T).context("resolving the target")?;
        let recv = MemoryRegion::new(conn.pd(), depth * 16, Access::LOCAL_WRITE)?;
        let send = MemoryRegion::new(conn.pd(), depth * SLOT, Access::LOCAL_WRITE)?;
        let data = MemoryRegion::new(conn.pd(), data_len, Access::ALL)?;
        for i in 0..depth {
            conn.post_recv(i as u64, &recv, i * 16..(i + 1) * 16)?;
        }
        let req = CmRequest::new(qid, depth as u16, depth as u16 - 1);
        let accepted = conn.connect(req.as_bytes(), T).context("RDMA CM connect")?;
        let a = CmAccept::parse(&accepted).context("accept private data")?;
        ensure!(a.crqsize.get() as usize >= depth, "CRQSIZE {} < our queue of {depth}", a.crqsize.get());
        Ok(Queue { conn, recv, send, data, depth, next_cid: 1 })
    }

    /// Sends `capsule` bytes (an SQE, maybe in-capsule data, maybe garbage).
    fn send_raw(&mut self, capsule: &[u8]) -> Result<()> {
        let slot = self.next_cid as usize % self.depth;
        self.send.write_at(slot * SLOT, capsule)?;
        self.conn.post_send(1000 + slot as u64, &self.send, slot * SLOT..slot * SLOT + capsule.len())?;
        Ok(())
    }

    fn submit(&mut self, mut sqe: Sqe, icd: &[u8]) -> Result<u16> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        sqe.cid = cid.into();
        let mut capsule = sqe.as_bytes().to_vec();
        capsule.extend_from_slice(icd);
        self.send_raw(&capsule)?;
        Ok(cid)
    }

    /// The next response capsule.
    fn cqe(&mut self) -> Result<Cqe> {
        let mut out = [Completion::EMPTY; 8];
        let until = Instant::now() + T.unwrap();
        loop {
            ensure!(Instant::now() < until, "no response within {T:?}");
            match self.conn.wait(&mut out, Some(Duration::from_secs(1)))? {
                Wake::Completions(n) => {
                    for c in &out[..n] {
                        ensure!(c.status.is_success(), "work request failed: {}", c.status);
                        if c.queue == WorkQueue::Recv {
                            let i = c.wr_id as usize;
                            let mut b = [0u8; 16];
                            self.recv.read_at(i * 16, &mut b)?;
                            self.conn.post_recv(i as u64, &self.recv, i * 16..(i + 1) * 16)?;
                            return Ok(Cqe::read_from_bytes(&b).expect("16 bytes"));
                        }
                    }
                }
                Wake::Event(ev) => bail!("connection event {} while waiting for a response", ev.kind),
                Wake::Timeout => {}
            }
        }
    }

    /// Submit and wait for this command's response; returns (status, result).
    fn run(&mut self, sqe: Sqe, icd: &[u8]) -> Result<(u16, u64)> {
        let cid = self.submit(sqe, icd)?;
        let c = self.cqe()?;
        ensure!(c.cid.get() == cid, "response for cid {} while waiting for {cid}", c.cid.get());
        Ok((c.status_code() & 0x7ff, c.result.get()))
    }

    /// A keyed SGL naming `len` bytes of our data region.
    fn keyed(&self, len: u32) -> SglDesc {
        KeyedSgl { addr: self.data.addr(), len, key: self.data.rkey(), invalidate: false }.encode()
    }

    /// Fabrics Connect with its data in the capsule.
    fn connect_cmd(&mut self, qid: u16, cntlid: u16, nqn: &str) -> Result<u16> {
        let sqsize = self.depth as u16 - 1;
        let mut sqe = Connect { recfmt: 0, qid, sqsize, cattr: 0, kato: if qid == 0 { 30_000 } else { 0 } }.to_sqe(0);
        sqe.flags = sgl::PSDT_SGL_MPTR_CONTIG << 6;
        sqe.dptr = SglDesc::new_zeroed();
        sqe.dptr.type_ = sgl::DATA_BLOCK_OFFSET;
        sqe.dptr.length = 1024.into();
        let data = ConnectData::new([0xfe; 16], cntlid, nqn, HOSTNQN);
        let (st, res) = self.run(sqe, data.as_bytes())?;
        ensure!(st == 0, "Connect qid {qid} failed with status {st:#x}");
        Ok(res as u16)
    }
}

fn identify_sqe(dptr: SglDesc) -> Sqe {
    let mut s = Sqe::new_zeroed();
    s.opcode = opc::IDENTIFY;
    s.flags = sgl::PSDT_SGL_MPTR_CONTIG << 6;
    s.dptr = dptr;
    s.cdw10 = 1.into(); // CNS 1: Identify Controller
    s
}

fn malformed(args: &Args) -> Result<()> {
    let mut q = Queue::open(args.connect, 0, 8, 4096)?;
    q.connect_cmd(0, 0xffff, &args.nqn)?;
    // A valid Identify first: the data must arrive by RDMA WRITE.
    let (st, _) = q.run(identify_sqe(q.keyed(4096)), &[])?;
    ensure!(st == 0, "Identify failed: {st:#x}");
    let subnqn = q.data.to_vec(768..1024)?;
    let subnqn = nvme_wire::get_str(&subnqn).to_owned();
    ensure!(subnqn == args.nqn, "Identify subnqn {subnqn:?}, want {:?}", args.nqn);
    // NVMe/TCP's transport SGL type means nothing over RDMA.
    let mut tcp = SglDesc::new_zeroed();
    tcp.type_ = sgl::TRANSPORT_DATA_BLOCK;
    tcp.length = 4096.into();
    let (st, _) = q.run(identify_sqe(tcp), &[])?;
    ensure!(st == 0x11, "wrong SGL type answered {st:#x}, want 0x11 (SGL Descriptor Type Invalid)");
    let (st, _) = q.run(identify_sqe(q.keyed(100)), &[])?;
    ensure!(st == 0x0f, "short keyed SGL answered {st:#x}, want 0x0f (SGL Data Block Length Invalid)");
    let mut bogus = Sqe::new_zeroed();
    bogus.opcode = 0xee;
    let (st, _) = q.run(bogus, &[])?;
    ensure!(st == 0x01, "unknown opcode answered {st:#x}, want 0x01 (Invalid Command Opcode)");
    // Shorter than an SQE: no command ID to answer, so the queue must end.
    q.send_raw(&[0x06; 40])?;
    let mut out = [Completion::EMPTY; 8];
    let until = Instant::now() + T.unwrap();
    let ended = loop {
        if Instant::now() > until {
            break None;
        }
        match q.conn.wait(&mut out, Some(Duration::from_secs(1)))? {
            Wake::Event(ev) if ev.kind == CmEventKind::Disconnected => break Some("disconnect"),
            Wake::Completions(n) if out[..n].iter().any(|c| !c.status.is_success()) => break Some("flush"),
            Wake::Completions(n) if out[..n].iter().any(|c| c.queue == WorkQueue::Recv) => {
                bail!("the target answered a 40-byte capsule")
            }
            _ => {}
        }
    };
    let Some(how) = ended else { bail!("the target kept the queue after a 40-byte capsule") };
    let d = q.conn.shutdown(Duration::from_secs(5))?;
    println!("RESULT malformed ok errors=3 short-capsule={how} drained_left={}", d.left);
    Ok(())
}

fn die(args: &Args) -> Result<()> {
    const WRITES: usize = 24;
    const LEN: usize = 128 * 1024;
    let mut admin = Queue::open(args.connect, 0, 8, 4096)?;
    let cntlid = admin.connect_cmd(0, 0xffff, &args.nqn)?;
    let en = Property { eight: false, offset: prop::CC, value: cc::ENABLE_DEFAULT as u64 }.set_sqe(0);
    let (st, _) = admin.run(en, &[])?;
    ensure!(st == 0, "enabling the controller: {st:#x}");
    let mut io = Queue::open(args.connect, 1, 32, WRITES * LEN)?;
    io.connect_cmd(1, cntlid, &args.nqn)?;
    io.data.write_at(0, &vec![0x5a; WRITES * LEN])?;
    for k in 0..WRITES {
        let mut w = Sqe::new_zeroed();
        w.opcode = opc::WRITE;
        w.nsid = 1.into();
        w.flags = sgl::PSDT_SGL_MPTR_CONTIG << 6;
        let lba = 240 * 1024 * 1024 / 512 + (k * LEN / 512) as u64; // past the test's file system
        w.cdw10 = (lba as u32).into();
        w.cdw12 = ((LEN / 512 - 1) as u32).into();
        w.dptr = KeyedSgl {
            addr: io.data.addr() + (k * LEN) as u64,
            len: LEN as u32,
            key: io.data.rkey(),
            invalidate: false,
        }
        .encode();
        io.submit(w, &[])?;
    }
    println!("RESULT die ok sent={WRITES} writes of {LEN} bytes; aborting now");
    // Die with the target's RDMA READs of our data in flight: no
    // disconnect, no drain; the kernel tears our queue pairs down.
    std::process::abort();
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match args.scenario {
        Scenario::Malformed => malformed(&args),
        Scenario::Die => die(&args),
    }
}
