//! `rdma-check`: both halves of the RDMA layer's end-to-end checks, run as
//! two processes (by hw-tests in the soft-RoCE guest, or by hand on a real
//! NIC).
//!
//! The client names a scenario in its connect request's private data; the
//! server acts on it:
//! - `reject`: the server refuses with its own private data.
//! - `pingpong`: sends echoed back transformed, every byte checked.
//! - `rdma`: RDMA READ and WRITE against the server's registered region,
//!   checked on both sides, then a WRITE with a bad rkey must fail cleanly.
//! - `hang`: the client idles until killed; the server must see the
//!   disconnect, drain flushes and keep serving.
//! - `survive`: the server is killed; the client must see it and drain.
//!
//! The client prints `RESULT <scenario> ok ...` and exits 0 only when the
//! behaviour held; the server prints `SERVED ...` per connection.
//! `rdma-check verbs` checks one device without a peer.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use clap::{Parser, Subcommand};
use rdma::cm::{CmEventKind, Connection, Listener, QpConfig, Wake};
use rdma::verbs::{
    Access, Completion, CompletionChannel, CompletionQueue, Context, MemoryRegion, ProtectionDomain, RemoteRegion,
    WcStatus, WorkQueue,
};

const MAGIC: &[u8; 4] = b"TPCK";
const ACCEPT: &[u8; 4] = b"TPOK";
const REJECT: &[u8] = b"TPNO:rdma-check rejects on request";
/// Receive slots per connection and their size.
const DEPTH: usize = 16;
const SLOT: usize = 256;
/// The server's RDMA region and the seed of its initial contents.
const REGION: usize = 64 * 1024;
const REGION_SEED: u64 = 7;
const T: Option<Duration> = Some(Duration::from_secs(20));

#[derive(Parser)]
#[command(about = "End-to-end checks of Tidepool's RDMA layer (server and client halves)")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve scenarios one connection at a time until killed.
    Server {
        #[arg(long)]
        bind: SocketAddr,
        /// Created once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Device-level checks without a peer: open by name (or
    /// TIDEPOOL_RDMA_DEV), protection domain, memory region bounds,
    /// completion queue with channel (an idle wait that times out).
    Verbs {
        /// Device name; default TIDEPOOL_RDMA_DEV, else the first device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Run one scenario against a server.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        scenario: Scenario,
        #[arg(long, default_value_t = 200)]
        iters: u32,
        /// Created once connected (for the `hang` and `survive` scenarios).
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Reject,
    Pingpong,
    Rdma,
    Hang,
    Survive,
}

impl Scenario {
    fn code(self) -> u8 {
        match self {
            Scenario::Reject => b'R',
            Scenario::Pingpong => b'P',
            Scenario::Rdma => b'D',
            Scenario::Hang => b'H',
            Scenario::Survive => b'S',
        }
    }

    fn from_code(c: u8) -> Option<Scenario> {
        [Scenario::Reject, Scenario::Pingpong, Scenario::Rdma, Scenario::Hang, Scenario::Survive]
            .into_iter()
            .find(|s| s.code() == c)
    }
}

/// Deterministic bytes (xorshift64*), so each side can check the other's.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The server's reply to a ping: every byte plus one.
fn transform(b: &[u8]) -> Vec<u8> {
    b.iter().map(|x| x.wrapping_add(1)).collect()
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().cmd {
        Cmd::Server { bind, ready_file } => server(bind, ready_file),
        Cmd::Client { connect, scenario, iters, ready_file } => client(connect, scenario, iters, ready_file),
        Cmd::Verbs { device } => verbs_check(device.as_deref()),
    }
}

fn touch(path: &Option<PathBuf>) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, std::process::id().to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn server(bind: SocketAddr, ready_file: Option<PathBuf>) -> Result<()> {
    let listener = Listener::bind(bind, 8)?;
    // One protection domain for every connection, as a storage target
    // shares its registered memory.
    let shared_pd = listener.protection_domain()?;
    touch(&ready_file)?;
    loop {
        let req = listener.next_request(None)?;
        let pd = req.private_data();
        let scenario = if pd.starts_with(MAGIC) { pd.get(4).copied().and_then(Scenario::from_code) } else { None };
        let Some(scenario) = scenario else {
            tracing::warn!("unknown request; rejecting");
            req.reject(b"TPNO:unknown scenario")?;
            continue;
        };
        if scenario == Scenario::Reject {
            req.reject(REJECT)?;
            println!("SERVED reject");
            continue;
        }
        // One bad connection must not take the server down.
        match serve_one(req, &shared_pd) {
            Ok(summary) => println!("SERVED {scenario:?} {summary}"),
            Err(e) => println!("SERVED {scenario:?} error: {e:#}"),
        }
    }
}

fn serve_one(req: rdma::cm::ConnectRequest, pd: &ProtectionDomain) -> Result<String> {
    let mut conn = req.prepare(&QpConfig::default(), Some(pd))?;
    let recv = MemoryRegion::new(conn.pd(), DEPTH * SLOT, Access::LOCAL_WRITE)?;
    let send = MemoryRegion::new(conn.pd(), SLOT, Access::LOCAL_WRITE)?;
    let region = MemoryRegion::new(conn.pd(), REGION, Access::ALL)?;
    region.write_at(0, &pattern(REGION, REGION_SEED))?;
    for i in 0..DEPTH {
        conn.post_recv(i as u64, &recv, i * SLOT..(i + 1) * SLOT)?;
    }
    let mut accept = ACCEPT.to_vec();
    accept.extend_from_slice(&region.remote(0..REGION)?.to_bytes());
    conn.accept(&accept, T)?;

    let mut out = [Completion::EMPTY; 16];
    let mut handled = 0u64;
    // Error completions met while serving (the rest come from shutdown).
    let mut errors_seen = 0usize;
    loop {
        // Idle wait: the server sleeps on the completion and CM channels.
        match conn.wait(&mut out, None)? {
            Wake::Timeout => {}
            Wake::Event(ev) => {
                if ev.kind == CmEventKind::Disconnected {
                    break;
                }
            }
            Wake::Completions(n) => {
                let mut broken = false;
                for c in out[..n].iter().copied() {
                    if !c.status.is_success() {
                        errors_seen += 1;
                        broken = true;
                        continue;
                    }
                    match c.queue {
                        WorkQueue::Send => {}
                        WorkQueue::Recv => {
                            let slot = c.wr_id as usize;
                            let msg = recv.to_vec(slot * SLOT..slot * SLOT + c.byte_len as usize)?;
                            let reply = handle(&msg, &region)?;
                            // One send buffer suffices: the client waits for
                            // each reply before sending again, and replies
                            // this small go inline (copied at post time).
                            send.write_at(0, &reply)?;
                            conn.post_send(1000 + handled, &send, 0..reply.len())?;
                            conn.post_recv(slot as u64, &recv, slot * SLOT..(slot + 1) * SLOT)?;
                            handled += 1;
                        }
                    }
                }
                if broken {
                    break;
                }
            }
        }
    }
    let d = conn.shutdown(Duration::from_secs(10))?;
    Ok(format!(
        "messages={handled} drained flushed={} succeeded={} failed={} left={} errors_while_serving={errors_seen}",
        d.flushed, d.succeeded, d.failed, d.left
    ))
}

/// A ping gets its bytes transformed; `CHECK off len seed` verifies the
/// server's region after the client's RDMA WRITE.
fn handle(msg: &[u8], region: &MemoryRegion) -> Result<Vec<u8>> {
    if let Some(rest) = msg.strip_prefix(b"CHECK ") {
        let text = std::str::from_utf8(rest)?;
        let v: Vec<u64> = text.split_whitespace().map(str::parse).collect::<std::result::Result<_, _>>()?;
        ensure!(v.len() == 3, "bad CHECK {text:?}");
        let (off, len, seed) = (v[0] as usize, v[1] as usize, v[2]);
        let ok = region.to_vec(off..off + len)? == pattern(len, seed);
        return Ok(if ok { b"GOOD".to_vec() } else { b"BAD!".to_vec() });
    }
    Ok(transform(msg))
}

/// Wait for the completion of send-queue work `wr_id`, failing on any
/// error status.
fn wait_send(conn: &mut Connection, wr_id: u64) -> Result<Completion> {
    let c = wait_for(conn, |c| c.queue == WorkQueue::Send && c.wr_id == wr_id)?;
    ensure!(c.status.is_success(), "work request {wr_id} failed: {}", c.status);
    Ok(c)
}

/// Wait (sleeping, bounded) until a completion matching `want` arrives;
/// send completions of other requests are swallowed, receives are kept.
fn wait_for(conn: &mut Connection, want: impl Fn(&Completion) -> bool) -> Result<Completion> {
    let until = Instant::now() + Duration::from_secs(20);
    let mut out = [Completion::EMPTY; 1];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no completion within 20 s");
        match conn.wait(&mut out, Some(left))? {
            Wake::Completions(_) => {
                let c = out[0];
                if want(&c) {
                    return Ok(c);
                }
                ensure!(c.status.is_success(), "unexpected failed completion {c:?}");
                ensure!(c.queue == WorkQueue::Send, "unexpected receive {c:?}");
            }
            Wake::Event(ev) => bail!("unexpected CM event {} while waiting for a completion", ev.kind),
            Wake::Timeout => {}
        }
    }
}

fn request(scenario: Scenario) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.push(scenario.code());
    p
}

fn client(addr: SocketAddr, scenario: Scenario, iters: u32, ready_file: Option<PathBuf>) -> Result<()> {
    let mut conn = Connection::resolve(addr, &QpConfig::default(), T)?;
    let recv = MemoryRegion::new(conn.pd(), DEPTH * SLOT, Access::LOCAL_WRITE)?;
    let send = MemoryRegion::new(conn.pd(), SLOT, Access::LOCAL_WRITE)?;
    for i in 0..DEPTH {
        conn.post_recv(i as u64, &recv, i * SLOT..(i + 1) * SLOT)?;
    }
    // Too much private data is refused before anything goes on the wire,
    // and the connection can still be used.
    let big = [0u8; rdma::cm::MAX_CONNECT_PRIVATE_DATA + 1];
    ensure!(
        matches!(conn.connect(&big, T), Err(rdma::Error::PrivateDataTooLong { .. })),
        "oversized private data was not refused"
    );
    let accepted = match conn.connect(&request(scenario), T) {
        Err(rdma::Error::Rejected { private_data, status }) if scenario == Scenario::Reject => {
            ensure!(private_data.starts_with(REJECT), "rejected with unexpected private data {private_data:?}");
            // The receives posted before connecting must still come back.
            let d = conn.shutdown(Duration::from_secs(10))?;
            ensure!(d.left == 0 && d.succeeded == 0, "after a reject: {d:?}");
            println!(
                "RESULT reject ok status={status} private_data={:?} drained={}",
                String::from_utf8_lossy(&private_data[..REJECT.len()]),
                d.flushed
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
        Ok(p) => p,
    };
    ensure!(scenario != Scenario::Reject, "server accepted a connection it should have rejected");
    ensure!(accepted.starts_with(ACCEPT), "accepted with unexpected private data {accepted:?}");
    let remote = RemoteRegion::from_bytes(&accepted[4..]).context("no region in the accept's private data")?;
    ensure!(remote.len as usize == REGION, "server offered {} bytes, expected {REGION}", remote.len);
    println!("connected over {} (accept private data carries rkey {:#x})", conn.device_name(), remote.rkey);

    match scenario {
        Scenario::Reject => unreachable!(),
        Scenario::Pingpong => {
            for i in 0..iters {
                let msg = pattern(64, 1000 + i as u64);
                send.write_at(0, &msg)?;
                conn.post_send(i as u64, &send, 0..msg.len())?;
                let c = wait_for(&mut conn, |c| c.queue == WorkQueue::Recv)?;
                ensure!(c.status.is_success(), "receive failed: {}", c.status);
                let slot = c.wr_id as usize;
                let got = recv.to_vec(slot * SLOT..slot * SLOT + c.byte_len as usize)?;
                ensure!(got == transform(&msg), "reply {i} differs: {got:02x?}");
                conn.post_recv(slot as u64, &recv, slot * SLOT..(slot + 1) * SLOT)?;
            }
            // Fill the receive queue to its configured depth: one more is
            // refused by the layer (not by a provider error), and every one
            // of them must come back as a flush on shutdown.
            let max = QpConfig::default().max_recv_wr as usize;
            let mut extra = 0;
            while conn.outstanding().1 < max {
                conn.post_recv(100 + extra, &recv, 0..SLOT)?;
                extra += 1;
            }
            let full = conn.post_recv(999, &recv, 0..SLOT);
            ensure!(matches!(full, Err(rdma::Error::QueueFull { .. })), "receive past the queue depth: {full:?}");
            let tagged = conn.post_send(1 << 63, &send, 0..8);
            ensure!(matches!(tagged, Err(rdma::Error::Invalid(_))), "reserved wr_id bit accepted: {tagged:?}");
            let d = conn.shutdown(Duration::from_secs(10))?;
            ensure!(d.left == 0 && d.failed == 0 && d.flushed == max, "drain after ping-pong: {d:?}, {max} posted");
            println!(
                "RESULT pingpong ok iters={iters} bytes=64 queue_full_at={max} drained flushed={} succeeded={}",
                d.flushed, d.succeeded
            );
        }
        Scenario::Rdma => rdma_scenario(&mut conn, &send, &recv, remote)?,
        Scenario::Hang => {
            touch(&ready_file)?;
            // Until killed; a disconnect from the server would be a bug.
            let mut out = [Completion::EMPTY; 4];
            loop {
                if let Wake::Event(ev) = conn.wait(&mut out, None)? {
                    bail!("hang: unexpected event {}", ev.kind);
                }
            }
        }
        Scenario::Survive => survive(&mut conn, &send, ready_file)?,
    }
    Ok(())
}

fn rdma_scenario(conn: &mut Connection, send: &MemoryRegion, recv: &MemoryRegion, remote: RemoteRegion) -> Result<()> {
    let local = MemoryRegion::new(conn.pd(), REGION, Access::LOCAL_WRITE)?;
    // READ the whole remote region: it must hold the server's pattern.
    conn.post_read(1, &local, 0..REGION, remote)?;
    let c = wait_send(conn, 1)?;
    ensure!(c.byte_len as usize == REGION || c.byte_len == 0, "READ completed {} bytes", c.byte_len);
    ensure!(local.to_vec(0..REGION)? == pattern(REGION, REGION_SEED), "RDMA READ returned wrong data");

    // WRITE 8 KiB at offset 4 KiB of the remote region.
    let (off, len, seed) = (4096usize, 8192usize, 99u64);
    local.write_at(0, &pattern(len, seed))?;
    conn.post_write(2, &local, 0..len, remote.slice(off..off + len)?)?;
    wait_send(conn, 2)?;
    // Ask the server to check its memory (the send is ordered after the WRITE).
    let msg = format!("CHECK {off} {len} {seed}");
    send.write_at(0, msg.as_bytes())?;
    conn.post_send(3, send, 0..msg.len())?;
    let c = wait_for(conn, |c| c.queue == WorkQueue::Recv)?;
    ensure!(c.status.is_success(), "receive failed: {}", c.status);
    let slot = c.wr_id as usize;
    let verdict = recv.to_vec(slot * SLOT..slot * SLOT + c.byte_len as usize)?;
    ensure!(verdict == b"GOOD", "server found {:?} after our RDMA WRITE", String::from_utf8_lossy(&verdict));

    // READ it back into another place and compare; the untouched rest of
    // the region must still be the original pattern.
    conn.post_read(4, &local, 16384..16384 + len, remote.slice(off..off + len)?)?;
    wait_send(conn, 4)?;
    ensure!(local.to_vec(16384..16384 + len)? == pattern(len, seed), "READ after WRITE differs");
    conn.post_read(5, &local, 32768..32768 + off, remote.slice(0..off)?)?;
    wait_send(conn, 5)?;
    ensure!(local.to_vec(32768..32768 + off)? == pattern(REGION, REGION_SEED)[..off], "WRITE spilled before its range");

    // A WRITE with a wrong rkey must fail with a remote access error, and
    // everything still posted must then flush: no panic, nothing left.
    let bad = RemoteRegion { rkey: remote.rkey ^ 0x00ff_ff00, ..remote.slice(0..64)? };
    conn.post_write(6, &local, 0..64, bad)?;
    let c = wait_for(conn, |c| c.wr_id == 6 && c.queue == WorkQueue::Send)?;
    ensure!(
        c.status == WcStatus::REMOTE_ACCESS,
        "bad rkey completed with {:?}, expected a remote access error",
        c.status
    );
    ensure!(!conn.is_connected(), "connection still considered up after an error completion");
    let (_, recvs) = conn.outstanding();
    let d = conn.shutdown(Duration::from_secs(10))?;
    ensure!(d.left == 0 && d.flushed == recvs, "after the access error: {d:?}, {recvs} receives were posted");
    println!(
        "RESULT rdma ok read={REGION} write={len}@{off} server=GOOD readback=ok bad_rkey={:?} flushed={}",
        c.status.name(),
        d.flushed
    );
    Ok(())
}

/// The server gets killed: we must learn of it (CM disconnect, or failing
/// that a send that cannot complete) and drain every posted request.
fn survive(conn: &mut Connection, send: &MemoryRegion, ready_file: Option<PathBuf>) -> Result<()> {
    touch(&ready_file)?;
    let (_, posted) = conn.outstanding();
    let mut out = [Completion::EMPTY; 16];
    let mut detected = None;
    let mut early_errors = 0;
    let started = Instant::now();
    while detected.is_none() && started.elapsed() < Duration::from_secs(30) {
        match conn.wait(&mut out, Some(Duration::from_secs(1)))? {
            Wake::Event(ev) if ev.kind == CmEventKind::Disconnected => detected = Some("cm-disconnect"),
            Wake::Event(ev) => tracing::info!(event = %ev.kind, "survive: event"),
            Wake::Completions(n) => {
                ensure!(
                    out[..n].iter().all(|c| !c.status.is_success()),
                    "completion from a dead peer: {:?}",
                    &out[..n]
                );
                early_errors += n;
                detected = Some("error-completion");
            }
            Wake::Timeout => {}
        }
    }
    if detected.is_none() {
        // No disconnect seen: a send to the dead peer must exhaust its
        // retries and fail instead.
        send.write_at(0, b"anyone?")?;
        conn.post_send(77, send, 0..7)?;
        let c = wait_for(conn, |c| c.wr_id == 77)?;
        ensure!(!c.status.is_success(), "a send to a killed peer succeeded");
        detected = Some("send-retry-exceeded");
    }
    let waited = started.elapsed();
    let d = conn.shutdown(Duration::from_secs(10))?;
    ensure!(d.left == 0 && d.succeeded == 0, "drain after the peer died: {d:?}");
    ensure!(d.flushed + d.failed + early_errors >= posted, "posted {posted} receives but drained {d:?}");
    println!(
        "RESULT survive ok detected_by={} after_ms={} flushed={} failed={} left={}",
        detected.unwrap_or("?"),
        waited.as_millis(),
        d.flushed,
        d.failed,
        d.left
    );
    Ok(())
}

fn verbs_check(device: Option<&str>) -> Result<()> {
    let ctx = Context::open(device)?;
    let name = ctx.device_name();
    let pd = ProtectionDomain::new(&ctx)?;
    let mr = MemoryRegion::new(&pd, 8192, Access::ALL)?;
    let data = pattern(8192, 5);
    mr.write_at(0, &data)?;
    ensure!(mr.to_vec(0..8192)? == data, "region contents differ after write_at");
    ensure!(
        matches!(mr.write_at(8190, b"xyz"), Err(rdma::Error::OutOfRange { .. })),
        "a write past the end was not refused"
    );
    ensure!(
        matches!(mr.remote(0..8193), Err(rdma::Error::OutOfRange { .. })),
        "a remote range past the end was allowed"
    );
    ensure!(MemoryRegion::new(&pd, 0, Access::LOCAL_WRITE).is_err(), "an empty region was registered");
    let cq = CompletionQueue::new(&ctx, 16, Some(CompletionChannel::new(&ctx)?))?;
    let mut out = [Completion::EMPTY; 4];
    let t0 = Instant::now();
    let n = cq.wait(&mut out, Some(Duration::from_millis(200)))?;
    ensure!(n == 0, "an idle CQ returned {n} completions");
    println!(
        "RESULT verbs ok device={name} lkey={:#x} rkey={:#x} idle_wait_ms={}",
        mr.lkey(),
        mr.rkey(),
        t0.elapsed().as_millis()
    );
    Ok(())
}
