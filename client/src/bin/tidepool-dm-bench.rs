//! `tidepool-dm-bench`: end-to-end DM event benchmarks between real processes on
//! loopback, each figure printed beside its baseline from the same run.
//!
//! * Synchronous round trip: a source process (this one, embedding a node daemon)
//!   generates read events one at a time; a session process (a child, embedding a
//!   node daemon and a DM application thread that answers CONTINUE) answers each.
//!   Baseline: a raw TCP ping-pong between this process and a child, with the same
//!   request and response sizes as the event and response frames. Both with and
//!   without busy-poll.
//! * Asynchronous throughput into one session from 1, 4 and 16 source processes,
//!   counting every event the DM application receives (nothing may be dropped).
//! * Memory per session, per queued and outstanding event, and per unacknowledged
//!   asynchronous event at the source (RSS growth over many of them).
//!
//! * The local DM channel: a call that does no cluster work through a node
//!   daemon's socket, beside raw Unix-socket and shared-memory ping-pongs
//!   (`local`, also part of `all`).
//!
//! `tidepool-dm-bench all` runs everything; `local` and `ping-pong` run one
//! part; the other subcommands are the child processes it starts.

#[path = "dm_bench/local.rs"]
mod local;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dmapi::event::{DmEvent, EventBody};
use dmapi::proto::{encode_frame, Frame, Message};
use dmapi::session::{Caller, SessionConfig, SessionEngine};
use dmapi::source::{SourceConfig, SourceEngine};
use dmapi::types::*;
use hdrhistogram::Histogram;
use node::config::{FsConfig, NodeConfig, PeerConfig};
use node::daemon::Node;

#[derive(Parser)]
#[command(about = "Tidepool DM event benchmarks (loopback, real processes)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every benchmark and print the table.
    All {
        /// Timed synchronous round trips per configuration.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Asynchronous events per throughput run (split among the sources).
        #[arg(long, default_value_t = 2_000_000)]
        tput_events: u64,
        /// Source process counts for the throughput runs.
        #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 4, 16])]
        sources: Vec<u32>,
    },
    /// Child: the session node with an in-process DM application.
    SessionNode {
        #[arg(long)]
        listen: SocketAddr,
        /// Source peers, `id=addr`.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        #[arg(long, value_enum, default_value = "blocking")]
        wait: Wait,
        /// Event type to dispose to the session.
        #[arg(long, default_value = "read")]
        event: String,
        /// Exit after this many events, printing DONE (throughput mode).
        #[arg(long)]
        expect: Option<u64>,
        /// Carry DM frames over RDMA where the peer has it.
        #[arg(long)]
        rdma: bool,
    },
    /// Child: a source node generating asynchronous events after "GO" on stdin.
    SourceNode {
        #[arg(long)]
        id: u32,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        session: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        rdma: bool,
    },
    /// DM events over RDMA beside the same over TCP, on one RDMA device's
    /// address: synchronous round trips and asynchronous events per second.
    /// Prints a table and `BENCH tool=...` lines (hw-tests' guest scripts
    /// collect them beside the verbs ping-pong tools).
    Transports {
        /// The RDMA device's IP (every node listens there).
        #[arg(long)]
        ip: std::net::IpAddr,
        /// Timed synchronous round trips per configuration.
        #[arg(long, default_value_t = 5_000)]
        events: u64,
        /// Asynchronous events per throughput run.
        #[arg(long, default_value_t = 100_000)]
        tput_events: u64,
        /// Source processes in the throughput runs.
        #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 4])]
        sources: Vec<u32>,
    },
    /// The raw TCP ping-pong baseline alone (blocking, the sizes of a
    /// synchronous event and its response): prints `PINGPONG p50_us=...`, for
    /// scripts that set it beside a figure of their own (`scripts/bench/dm-data.sh`).
    PingPong {
        /// Timed round trips.
        #[arg(long, default_value_t = 20_000)]
        n: u64,
    },
    /// The local DM channel: `dm_query_session` through a node daemon's
    /// socket beside raw Unix-socket and shared-memory ping-pongs of the same sizes.
    Local {
        /// Timed calls per row.
        #[arg(long, default_value_t = 50_000)]
        n: u64,
    },
    /// Child: the raw TCP ping-pong server.
    PingServer {
        #[arg(long)]
        req: usize,
        #[arg(long)]
        resp: usize,
        #[arg(long)]
        busy: bool,
    },
}

/// Where the benchmark's nodes listen: loopback, or the RDMA device's IP.
static IP: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

fn free_addr() -> SocketAddr {
    let ip = *IP.get_or_init(|| [127, 0, 0, 1].into());
    TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).unwrap_or_else(|_| SocketAddr::new(ip, 0))
}

/// How the processes wait for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Wait {
    /// Everyone sleeps in the kernel until woken.
    Blocking,
    /// Transport readers spin while traffic is recent.
    BusyPoll,
    /// Application threads (the waiting source, the DM application) poll before sleeping.
    AppSpin,
    /// Both.
    BusyAndSpin,
}

impl Wait {
    fn busy(self) -> bool {
        matches!(self, Wait::BusyPoll | Wait::BusyAndSpin)
    }
    fn spin(self) -> bool {
        matches!(self, Wait::AppSpin | Wait::BusyAndSpin)
    }
    fn name(self) -> &'static str {
        match self {
            Wait::Blocking => "blocking",
            Wait::BusyPoll => "busy-poll readers",
            Wait::AppSpin => "spin-wait apps",
            Wait::BusyAndSpin => "busy-poll + spin-wait",
        }
    }
}

/// How long application threads poll before sleeping in spin-wait modes.
const SPIN: Duration = Duration::from_micros(300);

fn node_config(
    id: u32,
    listen: SocketAddr,
    peers: Vec<PeerConfig>,
    mounts: Vec<u64>,
    wait: Wait,
    rdma: bool,
) -> NodeConfig {
    NodeConfig {
        rdma,
        node_id: id,
        listen,
        api_socket: Some(std::env::temp_dir().join(format!("tidepool-bench-{}-{id}.sock", std::process::id()))),
        cluster_key: Some("bench-key".into()),
        session_manager: 1,
        peers,
        filesystems: vec![FsConfig::dm_only(1, 1)],
        mounts,
        // Throughput runs oversubscribe the CPUs many times over; a lease closer to
        // production values keeps a starved heartbeat thread from looking like a crash.
        failure_timeout_ms: 5000,
        busy_poll: wait.busy(),
        spin_wait_us: if wait.spin() { SPIN.as_micros() as u64 } else { 0 },
        ..NodeConfig::default()
    }
}

fn event_type(name: &str) -> anyhow::Result<EventType> {
    EventType::ALL
        .iter()
        .copied()
        .find(|t| format!("{t:?}").eq_ignore_ascii_case(name))
        .with_context(|| format!("unknown event {name}"))
}

fn read_event(node: u32) -> DmEvent {
    DmEvent::new(
        EventType::Read,
        NodeId(node),
        EventBody::Data { handle: DmHandle::file(FsId(1), 42, 7), offset: 0, length: 4096 },
    )
    .unwrap_or_else(|e| unreachable!("a valid read event: {e}"))
}

/// The `n`th postcreate event of a source: the new object's inode number
/// is `n`, so the session side can tell a re-sent duplicate from a new event.
fn postcreate_event(node: u32, n: u64) -> DmEvent {
    DmEvent::new(
        EventType::Postcreate,
        NodeId(node),
        EventBody::Namespace {
            mode: 0o644,
            handle1: Some(DmHandle::file(FsId(1), 2, 0)),
            handle2: Some(DmHandle::file(FsId(1), n, 0)),
            name1: b"file".to_vec(),
            name2: vec![],
            retcode: 0,
        },
    )
    .unwrap_or_else(|e| unreachable!("a valid postcreate event: {e}"))
}

fn wait_route(node: &Node, t: EventType) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.route(FsId(1), t).is_none() {
        if Instant::now() > deadline {
            bail!("dispositions never reached node {}", node.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn session_node(
    listen: SocketAddr,
    peers: Vec<String>,
    wait: Wait,
    event: &str,
    expect: Option<u64>,
    rdma: bool,
) -> anyhow::Result<()> {
    let peers = peers
        .iter()
        .map(|p| {
            let (id, addr) = p.split_once('=').context("peer is id=addr")?;
            Ok(PeerConfig { id: id.parse()?, addr: addr.parse()? })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let node = Node::start(node_config(1, listen, peers, vec![], wait, rdma))?;
    let dm = node.dm.clone();
    let sid = dm.dm_create_session(&Caller::root(), DM_NO_SESSION, b"bench")?;
    let set: EventSet = [event_type(event)?].into_iter().collect();
    dm.dm_set_disp(sid, &DmHandle::fs(FsId(1)), set)?;
    dm.dm_set_eventlist(sid, &DmHandle::fs(FsId(1)), set)?;
    println!("READY");
    // Distinct events (by source and postcreate object number) and re-sent copies.
    let mut unique = Unique::default();
    let mut seen = 0u64;
    let mut first: Option<Instant> = None;
    loop {
        let mut evs = Vec::new();
        if wait.spin() {
            // Poll without waiting for a while before sleeping in dm_get_events.
            let until = Instant::now() + SPIN;
            while Instant::now() < until {
                match dm.get_events_typed(sid, 1 << 16, 0, 64 << 20) {
                    Ok(v) => {
                        evs = v;
                        break;
                    }
                    Err(e) if e.errno() == libc::EAGAIN => std::thread::yield_now(),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if evs.is_empty() {
            evs = dm.get_events_typed(sid, 1 << 16, DM_EV_WAIT, 64 << 20)?;
        }
        first.get_or_insert_with(Instant::now);
        for e in &evs {
            if e.token.0 > 0 {
                dm.dm_respond_event(sid, e.token, DmResponse::Continue, &[])?;
            }
        }
        seen += evs.len() as u64;
        evs.iter().for_each(|e| unique.add(e));
        if expect.is_some_and(|x| unique.count >= x) {
            let el = first.map_or(0, |f| f.elapsed().as_nanos());
            println!("DONE {} {el}", unique.count);
            // Late duplicates count too: wait for them a little.
            std::thread::sleep(Duration::from_millis(300));
            if let Ok(v) = dm.get_events_typed(sid, 1 << 20, 0, 256 << 20) {
                seen += v.len() as u64;
                v.iter().for_each(|e| unique.add(e));
            }
            println!("DUPLICATES {}", seen - unique.count);
            std::io::stdout().flush()?;
            return Ok(());
        }
    }
}

/// Which (source node, event number) pairs arrived: a bit each.
#[derive(Default)]
struct Unique {
    bits: HashMap<u32, Vec<u64>>,
    count: u64,
}

impl Unique {
    fn add(&mut self, e: &DmEvent) {
        let n = match &e.body {
            EventBody::Namespace { handle2: Some(h), .. } => h.ino().unwrap_or(0),
            _ => 0,
        };
        let words = self.bits.entry(e.source.0).or_default();
        let (w, b) = ((n / 64) as usize, n % 64);
        if words.len() <= w {
            words.resize(w + 1, 0);
        }
        if words[w] & (1 << b) == 0 {
            words[w] |= 1 << b;
            self.count += 1;
        }
    }
}

fn source_node(id: u32, listen: SocketAddr, session: SocketAddr, count: u64, rdma: bool) -> anyhow::Result<()> {
    let peers = vec![PeerConfig { id: 1, addr: session }];
    let node = Node::start(node_config(id, listen, peers, vec![1], Wait::Blocking, rdma))?;
    wait_route(&node, EventType::Postcreate)?;
    check_path(&node, rdma)?;
    println!("READY");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    for n in 0..count {
        let ev = postcreate_event(id, n);
        loop {
            match node.source.generate(FsId(1), ev.clone()) {
                Ok(_) => break,
                // Too many unacknowledged: back off rather than drop.
                Err(e) if e.errno() == libc::EAGAIN => std::thread::sleep(Duration::from_micros(50)),
                Err(e) => bail!("generate: {e}"),
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.source.engine().unacked_count(NodeId(1)) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("SENT {count} unacked={}", node.source.engine().unacked_count(NodeId(1)));
    std::io::stdout().flush()?;
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

/// Reads exactly `buf`; with `busy`, spins on the non-blocking socket while data
/// is recent and sleeps in a blocking read once idle, like the transport's
/// busy-poll readers, so an idle side does not take a core from the other runs.
fn read_exact_spin(s: &mut TcpStream, buf: &mut [u8], busy: bool) -> std::io::Result<()> {
    if !busy {
        return s.read_exact(buf);
    }
    let mut got = 0;
    let start = Instant::now();
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() < Duration::from_micros(500) {
                    std::hint::spin_loop();
                } else {
                    s.set_nonblocking(false)?;
                    let r = s.read(&mut buf[got..]);
                    s.set_nonblocking(true)?;
                    match r? {
                        0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        n => got += n,
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn ping_server(req: usize, resp: usize, busy: bool) -> anyhow::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    println!("READY {}", l.local_addr()?);
    std::io::stdout().flush()?;
    let (mut s, _) = l.accept()?;
    s.set_nodelay(true)?;
    s.set_nonblocking(busy)?;
    let (mut a, b) = (vec![0u8; req], vec![1u8; resp]);
    while read_exact_spin(&mut s, &mut a, busy).is_ok() {
        s.write_all(&b)?;
    }
    Ok(())
}

struct Kid {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Kid {
    fn spawn(args: &[String]) -> anyhow::Result<Kid> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().context("child stdout")?);
        Ok(Kid { child, out })
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut l = String::new();
        if self.out.read_line(&mut l)? == 0 {
            bail!("child exited early");
        }
        Ok(l.trim().to_string())
    }

    fn send(&mut self, s: &str) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("child stdin")?;
        writeln!(stdin, "{s}")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap_or_else(|e| unreachable!("valid bounds: {e}"))
}

/// Frame sizes of a synchronous read event and of its response.
fn frame_sizes() -> anyhow::Result<(usize, usize)> {
    let ev = encode_frame(&Frame::new(NodeId(2), 1, Message::Event { fs: FsId(1), sync: true, event: read_event(2) }))?;
    let resp =
        encode_frame(&Frame::new(NodeId(1), 1, Message::Response { response: DmResponse::Continue, data: vec![] }))?;
    Ok((ev.len(), resp.len()))
}

/// The raw TCP ping-pong baseline: a child echoing fixed-size messages.
struct PingPong {
    _kid: Kid,
    s: TcpStream,
    busy: bool,
    req: Vec<u8>,
    resp: Vec<u8>,
}

impl PingPong {
    fn start(busy: bool) -> anyhow::Result<PingPong> {
        let (req, resp) = frame_sizes()?;
        let mut args =
            vec!["ping-server".to_string(), "--req".into(), req.to_string(), "--resp".into(), resp.to_string()];
        if busy {
            args.push("--busy".into());
        }
        let mut kid = Kid::spawn(&args)?;
        let l = kid.line()?;
        let addr: SocketAddr = l.strip_prefix("READY ").context("ping server address")?.parse()?;
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(busy)?;
        Ok(PingPong { _kid: kid, s, busy, req: vec![2u8; req], resp: vec![0u8; resp] })
    }

    fn run(&mut self, n: u64, h: Option<&mut Histogram<u64>>) -> anyhow::Result<()> {
        let mut h = h;
        for _ in 0..n {
            let t = Instant::now();
            self.s.write_all(&self.req)?;
            read_exact_spin(&mut self.s, &mut self.resp, self.busy)?;
            if let Some(h) = h.as_deref_mut() {
                h.record(t.elapsed().as_nanos() as u64)?;
            }
        }
        Ok(())
    }
}

/// The DM event path: a session child and a source node in this process.
struct EventPath {
    _kid: Kid,
    node: Arc<Node>,
    ev: DmEvent,
}

/// Fails unless frames to the session node (1) go over RDMA exactly when
/// asked: a benchmark that silently fell back would report TCP as RDMA.
fn check_path(node: &Node, rdma: bool) -> anyhow::Result<()> {
    // Generous: a node that found its peer not yet listening retries RDMA
    // after a growing back-off, and a loaded guest starts processes slowly.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let on_rdma = node.status().peers_rdma.contains(&1);
        if on_rdma == rdma {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {}: DM frames to the session node go over {}", node.id(), if on_rdma { "RDMA" } else { "TCP" });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl EventPath {
    fn start(wait: Wait) -> anyhow::Result<EventPath> {
        Self::start_on(wait, false)
    }

    fn start_on(wait: Wait, rdma: bool) -> anyhow::Result<EventPath> {
        let (a1, a2) = (free_addr(), free_addr());
        let wait_arg =
            clap::ValueEnum::to_possible_value(&wait).map_or("blocking".into(), |v| v.get_name().to_string());
        let args = vec![
            "session-node".to_string(),
            "--listen".into(),
            a1.to_string(),
            "--peers".into(),
            format!("2={a2}"),
            "--wait".into(),
            wait_arg,
        ];
        let mut args = args;
        if rdma {
            args.push("--rdma".into());
        }
        let mut kid = Kid::spawn(&args)?;
        let node = Node::start(node_config(2, a2, vec![PeerConfig { id: 1, addr: a1 }], vec![1], wait, rdma))?;
        if kid.line()? != "READY" {
            bail!("session node did not start");
        }
        wait_route(&node, EventType::Read)?;
        check_path(&node, rdma)?;
        Ok(EventPath { _kid: kid, node, ev: read_event(2) })
    }

    fn run(&mut self, n: u64, h: Option<&mut Histogram<u64>>) -> anyhow::Result<()> {
        let mut h = h;
        for _ in 0..n {
            let t = Instant::now();
            let r = self.node.source.generate(FsId(1), self.ev.clone())?;
            let el = t.elapsed().as_nanos() as u64;
            if r != DmResponse::Continue {
                bail!("unexpected response {r:?}");
            }
            if let Some(h) = h.as_deref_mut() {
                h.record(el)?;
            }
        }
        Ok(())
    }
}

impl Drop for EventPath {
    fn drop(&mut self) {
        self.node.shutdown();
    }
}

/// Baseline and DM round trips for one waiting mode, measured in alternating
/// rounds so that load from other processes on the machine hits both alike.
fn round_trips(n: u64, wait: Wait) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    // Spinning modes are compared with a spinning ping-pong, blocking with blocking.
    let mut ping = PingPong::start(wait != Wait::Blocking)?;
    let mut path = EventPath::start(wait)?;
    ping.run(n / 10, None)?;
    path.run(n / 10, None)?;
    let (mut hb, mut he) = (new_hist(), new_hist());
    const ROUNDS: u64 = 10;
    for _ in 0..ROUNDS {
        ping.run(n / ROUNDS, Some(&mut hb))?;
        path.run(n / ROUNDS, Some(&mut he))?;
    }
    Ok((hb, he))
}

/// One table row: percentiles of `h` and its ratios to `base`.
fn latency_row(wait: Wait, name: &str, h: &Histogram<u64>, base: &Histogram<u64>) {
    println!(
        "| {} | {name} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
        wait.name(),
        us(h, 0.5),
        us(h, 0.99),
        us(h, 0.999),
        us(h, 0.5) / us(base, 0.5),
        us(h, 0.99) / us(base, 0.99)
    );
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// One asynchronous throughput run: distinct events delivered per second of
/// the measured time, distinct events, re-sent copies, events generated.
struct Throughput {
    rate: f64,
    delivered: u64,
    duplicates: u64,
    generated: u64,
}

impl Throughput {
    /// Fails the benchmark if any generated event never arrived.
    fn check(&self, what: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.delivered >= self.generated,
            "{what}: events lost: {} of {} generated arrived",
            self.delivered,
            self.generated
        );
        Ok(())
    }
}

fn throughput_on(sources: u32, total: u64, rdma: bool) -> anyhow::Result<Throughput> {
    let flag: Vec<String> = if rdma { vec!["--rdma".into()] } else { vec![] };
    let sa = free_addr();
    let addrs: Vec<SocketAddr> = (0..sources).map(|_| free_addr()).collect();
    let peers: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 2)).collect();
    let per = total / sources as u64;
    let expect = per * sources as u64;
    let mut sess = Kid::spawn(
        &[
            &[
                "session-node".into(),
                "--listen".into(),
                sa.to_string(),
                "--peers".into(),
                peers.join(","),
                "--event".into(),
                "postcreate".into(),
                "--expect".into(),
                expect.to_string(),
            ][..],
            &flag,
        ]
        .concat(),
    )?;
    if sess.line()? != "READY" {
        bail!("session node did not start");
    }
    let mut kids = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        kids.push(Kid::spawn(
            &[
                &[
                    "source-node".into(),
                    "--id".into(),
                    (i + 2).to_string(),
                    "--listen".into(),
                    a.to_string(),
                    "--session".into(),
                    sa.to_string(),
                    "--count".into(),
                    per.to_string(),
                ][..],
                &flag,
            ]
            .concat(),
        )?);
    }
    for k in &mut kids {
        if k.line()? != "READY" {
            bail!("source node did not start");
        }
    }
    let t0 = Instant::now();
    for k in &mut kids {
        k.send("GO")?;
    }
    let done = sess.line()?;
    let el = t0.elapsed();
    let got: u64 = done.split_whitespace().nth(1).context("DONE count")?.parse()?;
    let dups: u64 = sess.line()?.split_whitespace().nth(1).context("DUPLICATES count")?.parse()?;
    Ok(Throughput { rate: got as f64 / el.as_secs_f64(), delivered: got, duplicates: dups, generated: expect })
}

/// Asynchronous events into one session engine from `producers` threads
/// in batches of `batch` while one thread drains: (events per second of
/// the measured time, drained, sent).
fn enqueue_rate(total: u64, batch: u64, producers: u32) -> anyhow::Result<(f64, u64, u64)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let eng = Arc::new(SessionEngine::new(NodeId(1), SessionConfig::default(), Arc::new(|_o| {})));
    let sid = eng.dm_create_session(&Caller::root(), DM_NO_SESSION, b"enqueue")?;
    let done = Arc::new(AtomicBool::new(false));
    let drain = {
        let (eng, done) = (eng.clone(), done.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            loop {
                // `done` read first: empty then means every event was in.
                let finished = done.load(Ordering::Acquire);
                match eng.get_events_typed(sid, 65536, 0, 1 << 24) {
                    Ok(v) => n += v.len() as u64,
                    Err(_) if finished => return n,
                    Err(_) => std::thread::yield_now(),
                }
            }
        })
    };
    let per = total / producers as u64;
    let t0 = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|p| {
            let eng = eng.clone();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let ev = read_event(2 + p);
                let mut seq = 0u64;
                while seq < per {
                    let n = batch.min(per - seq);
                    let b = (seq..seq + n).map(|i| (i, false, ev.clone())).collect();
                    seq += eng.deliver_batch(sid, b)?.len() as u64;
                }
                Ok(seq)
            })
        })
        .collect();
    let mut sent = 0;
    for t in threads {
        sent += t.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
    }
    done.store(true, Ordering::Release);
    let drained = drain.join().map_err(|_| anyhow::anyhow!("drainer panicked"))?;
    // Until the last event was drained: the rate of delivery, not of queueing.
    let el = t0.elapsed();
    Ok((drained as f64 / el.as_secs_f64(), drained, sent))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().to_string()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes of RSS growth per item while `f` creates `n` items.
fn per_item(n: u64, f: impl FnOnce()) -> f64 {
    let before = rss_kib();
    f();
    (rss_kib().saturating_sub(before) * 1024) as f64 / n as f64
}

fn memory() -> anyhow::Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    let eng = Arc::new(SessionEngine::new(NodeId(1), SessionConfig::default(), Arc::new(|_o| {})));
    const S: u64 = 20_000;
    out.push((
        "per session (empty)".into(),
        per_item(S, || {
            for _ in 0..S {
                let _ = eng.dm_create_session(&Caller::root(), DM_NO_SESSION, b"hsm-session");
            }
        }),
    ));
    let sid = eng.dm_create_session(&Caller::root(), DM_NO_SESSION, b"one")?;
    const E: u64 = 200_000;
    out.push((
        "per queued sync event (session side)".into(),
        per_item(E, || {
            for b in 0..E / 1000 {
                let batch = (0..1000).map(|i| (b * 1000 + i + 1, true, read_event(2))).collect();
                let _ = eng.deliver_batch(sid, batch);
            }
        }),
    ));
    out.push((
        "per outstanding sync event (token issued)".into(),
        per_item(E, || {
            let _ = eng.get_events_typed(sid, E as u32, 0, 1 << 30);
        }),
    ));
    let src = SourceEngine::new(NodeId(2), SourceConfig::default(), Arc::new(|_e: &dmapi::source::OutEvent| Ok(())));
    let mut t = dmapi::disp::DispositionTable::default();
    let set: EventSet = [EventType::Postcreate].into_iter().collect();
    let rsid = DmSessId::compose(NodeId(1), 1)?;
    t.dm_set_disp(rsid, NodeId(1), &DmHandle::fs(FsId(1)), set)?;
    t.dm_set_eventlist(&DmHandle::fs(FsId(1)), set)?;
    src.install_dispositions(Arc::new(t));
    out.push((
        "per unacked async event (source side)".into(),
        per_item(E, || {
            for _ in 0..E {
                let _ = src.generate(FsId(1), postcreate_event(2, 0));
            }
        }),
    ));
    Ok(out)
}

fn all(events: u64, tput_events: u64, sources: Vec<u32>) -> anyhow::Result<()> {
    let (req, resp) = frame_sizes()?;
    println!(
        "# Tidepool DM benchmarks (loopback, {} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("## Synchronous event round trip ({events} events; request {req} B, response {resp} B)");
    println!();
    println!("| mode | path | p50 µs | p99 µs | p99.9 µs | p50 ratio | p99 ratio |");
    println!("|------|------|-------:|-------:|---------:|----------:|----------:|");
    for wait in [Wait::Blocking, Wait::BusyPoll, Wait::AppSpin, Wait::BusyAndSpin] {
        let (base, ev) = round_trips(events, wait)?;
        let bname = if wait == Wait::Blocking { "raw TCP ping-pong, blocking" } else { "raw TCP ping-pong, spinning" };
        for (name, h) in [(bname, &base), ("DM sync event round trip", &ev)] {
            latency_row(wait, name, h, &base);
        }
    }
    println!();
    println!("## Asynchronous events into one session ({tput_events} events per run)");
    println!();
    println!(
        "| sources | events/s | generated | delivered (distinct) | duplicates (re-sent copies, not in delivered) |"
    );
    println!("|--------:|---------:|---------:|---------:|---------:|");
    for s in sources {
        let t = throughput_on(s, tput_events, false)?;
        println!("| {s} | {:.0} | {} | {} | {} |", t.rate, t.generated, t.delivered, t.duplicates);
        t.check(&format!("{s} sources"))?;
    }
    println!();
    println!("## In-process enqueue into one session (the session engine alone, no transport)");
    println!();
    println!("| batch | producer threads | events/s | delivered | generated |");
    println!("|------:|-----------------:|---------:|---------:|---------:|");
    for (batch, producers) in [(1u64, 1u32), (1024, 1), (1024, 4)] {
        let (rate, drained, sent) = enqueue_rate(tput_events, batch, producers)?;
        println!("| {batch} | {producers} | {rate:.0} | {drained} | {sent} |");
        anyhow::ensure!(drained == sent, "in-process enqueue lost events: {drained} of {sent}");
    }
    println!();
    println!("## Memory (RSS growth)");
    println!();
    println!("| item | bytes |");
    println!("|------|------:|");
    for (k, v) in memory()? {
        println!("| {k} | {v:.0} |");
    }
    println!();
    local::run(events.max(10_000))
}

/// DM events over RDMA and over TCP between the same processes' kind, on
/// one address, rounds interleaved so drift hits both alike.
fn transports(ip: std::net::IpAddr, events: u64, tput_events: u64, sources: Vec<u32>) -> anyhow::Result<()> {
    IP.set(ip).map_err(|_| anyhow::anyhow!("address already chosen"))?;
    let (req, resp) = frame_sizes()?;
    println!("# DM events over RDMA and TCP on {ip}");
    println!();
    println!("## Synchronous event round trip ({events} events; request {req} B, response {resp} B)");
    println!();
    println!("| mode | transport | p50 µs | p99 µs | p99.9 µs | p50 vs TCP | p99 vs TCP |");
    println!("|------|-----------|-------:|-------:|---------:|-----------:|-----------:|");
    // Spin-waiting applications with sleeping transport threads, both
    // spinning, and both sleeping.
    for wait in [Wait::AppSpin, Wait::BusyAndSpin, Wait::Blocking] {
        let mut rdma = EventPath::start_on(wait, true)?;
        let mut tcp = EventPath::start_on(wait, false)?;
        rdma.run(events / 10, None)?;
        tcp.run(events / 10, None)?;
        let (mut hr, mut ht) = (new_hist(), new_hist());
        const ROUNDS: u64 = 10;
        for _ in 0..ROUNDS {
            rdma.run(events / ROUNDS, Some(&mut hr))?;
            tcp.run(events / ROUNDS, Some(&mut ht))?;
        }
        for (name, h) in [("RDMA", &hr), ("TCP", &ht)] {
            latency_row(wait, name, h, &ht);
        }
        for (name, h) in [("dm-rdma", &hr), ("dm-tcp", &ht)] {
            eprintln!(
                "BENCH tool={name} mode={} size={req}/{resp} iters={events} rtt_p50_us={:.1} rtt_p99_us={:.1} rtt_avg_us={:.1}",
                wait.name().replace(' ', "_"),
                us(h, 0.5),
                us(h, 0.99),
                h.mean() / 1000.0
            );
        }
    }
    println!();
    println!("## Asynchronous events into one session ({tput_events} events per run)");
    println!();
    println!("| sources | transport | events/s | generated | delivered | duplicates | RDMA / TCP |");
    println!("|--------:|-----------|---------:|---------:|---------:|---------:|-----------:|");
    for s in sources {
        let r = throughput_on(s, tput_events, true)?;
        let t = throughput_on(s, tput_events, false)?;
        for (name, x) in [("RDMA", &r), ("TCP", &t)] {
            let ratio = x.rate / t.rate;
            println!(
                "| {s} | {name} | {:.0} | {} | {} | {} | {ratio:.2} |",
                x.rate, x.generated, x.delivered, x.duplicates
            );
        }
        eprintln!("BENCH tool=dm-async sources={s} rdma_events_per_s={:.0} tcp_events_per_s={:.0}", r.rate, t.rate);
        r.check(&format!("RDMA, {s} sources"))?;
        t.check(&format!("TCP, {s} sources"))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::All { events, tput_events, sources } => all(events, tput_events, sources),
        Cmd::SessionNode { listen, peers, wait, event, expect, rdma } => {
            session_node(listen, peers, wait, &event, expect, rdma)
        }
        Cmd::SourceNode { id, listen, session, count, rdma } => source_node(id, listen, session, count, rdma),
        Cmd::Transports { ip, events, tput_events, sources } => transports(ip, events, tput_events, sources),
        Cmd::PingServer { req, resp, busy } => ping_server(req, resp, busy),
        Cmd::Local { n } => local::run(n),
        Cmd::PingPong { n } => {
            let mut ping = PingPong::start(false)?;
            ping.run(n / 10, None)?;
            let mut h = Histogram::<u64>::new(3)?;
            ping.run(n, Some(&mut h))?;
            println!("PINGPONG p50_us={:.1}", h.value_at_quantile(0.5) as f64 / 1000.0);
            Ok(())
        }
    }
}
