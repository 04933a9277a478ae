//! `rdma-lat`: ping-pong round-trip latency of a small message over the
//! RDMA layer (send/recv, busy-polling the completion queue) or over TCP,
//! for comparison with `ibv_rc_pingpong` and `ib_send_lat` in the same run.
//!
//!     rdma-lat server --bind 10.0.2.15:7472 [--tcp]
//!     rdma-lat client --connect 10.0.2.15:7472 --size 64 --iters 5000 [--tcp]
//!
//! The client prints one line: `LAT transport=.. size=.. iters=..
//! p50_us=.. p99_us=.. avg_us=.. min_us=..` (round trips, not halves).
//! Each message's first 8 bytes carry its sequence number, checked on
//! return, so a broken echo cannot pass as a fast one.

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use clap::{Parser, Subcommand};
use rdma::cm::{CmEventKind, Connection, Listener, QpConfig};
use rdma::verbs::{Access, Completion, MemoryRegion, WorkQueue};

const DEPTH: usize = 16;
const T: Option<Duration> = Some(Duration::from_secs(20));

#[derive(Parser)]
#[command(about = "Ping-pong latency over Tidepool's RDMA layer or TCP")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo one client's messages, then exit.
    Server {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        tcp: bool,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    Client {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        tcp: bool,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 5000)]
        iters: usize,
        #[arg(long, default_value_t = 200)]
        warmup: usize,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().cmd {
        Cmd::Server { bind, tcp: true, size } => tcp_server(bind, size),
        Cmd::Server { bind, tcp: false, size } => rdma_server(bind, size),
        Cmd::Client { connect, tcp, size, iters, warmup } => {
            ensure!(size >= 8, "messages carry an 8-byte sequence number");
            let rtts = if tcp {
                tcp_client(connect, size, iters, warmup)?
            } else {
                rdma_client(connect, size, iters, warmup)?
            };
            report(if tcp { "tcp" } else { "rdma" }, size, rtts);
            Ok(())
        }
    }
}

fn report(transport: &str, size: usize, mut rtts: Vec<Duration>) {
    rtts.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let n = rtts.len();
    let avg = rtts.iter().map(|d| us(*d)).sum::<f64>() / n.max(1) as f64;
    println!(
        "LAT transport={transport} size={size} iters={n} p50_us={:.1} p99_us={:.1} avg_us={:.1} min_us={:.1}",
        us(rtts[n / 2]),
        us(rtts[(n * 99 / 100).min(n - 1)]),
        avg,
        us(rtts[0])
    );
}

fn tcp_server(bind: SocketAddr, size: usize) -> Result<()> {
    let l = TcpListener::bind(bind)?;
    let (mut s, _) = l.accept()?;
    s.set_nodelay(true)?;
    let mut buf = vec![0; size];
    loop {
        match s.read_exact(&mut buf) {
            Ok(()) => s.write_all(&buf)?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn tcp_client(addr: SocketAddr, size: usize, iters: usize, warmup: usize) -> Result<Vec<Duration>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut msg = vec![0x5a; size];
    let mut back = vec![0; size];
    let mut rtts = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t0 = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        let rtt = t0.elapsed();
        ensure!(back == msg, "echo {i} differs");
        if i >= warmup {
            rtts.push(rtt);
        }
    }
    Ok(rtts)
}

fn rdma_server(bind: SocketAddr, size: usize) -> Result<()> {
    let l = Listener::bind(bind, 1)?;
    let cfg = QpConfig { max_inline_data: size.max(64) as u32, ..QpConfig::default() };
    let mut conn = l.next_request(None)?.prepare(&cfg, None)?;
    let recv = MemoryRegion::new(conn.pd(), DEPTH * size, Access::LOCAL_WRITE)?;
    let send = MemoryRegion::new(conn.pd(), size, Access::LOCAL_WRITE)?;
    for i in 0..DEPTH {
        conn.post_recv(i as u64, &recv, i * size..(i + 1) * size)?;
    }
    conn.accept(&[], T)?;
    let mut out = [Completion::EMPTY; 16];
    let mut buf = vec![0; size];
    let mut idle_polls = 0u32;
    loop {
        // Busy-poll: this is the latency path.
        let n = conn.poll(&mut out)?;
        if n == 0 {
            idle_polls += 1;
            // Look for the client's disconnect now and then, off the hot path.
            if idle_polls >= 4096 {
                idle_polls = 0;
                if let Some(ev) = conn.try_event()? {
                    if ev.kind == CmEventKind::Disconnected {
                        break;
                    }
                }
            }
            continue;
        }
        idle_polls = 0;
        for c in &out[..n] {
            if !c.status.is_success() {
                conn.shutdown(Duration::from_secs(5))?;
                return Ok(());
            }
            if c.queue == WorkQueue::Recv {
                let slot = c.wr_id as usize;
                recv.read_at(slot * size, &mut buf)?;
                send.write_at(0, &buf)?;
                conn.post_send(0, &send, 0..size)?;
                conn.post_recv(slot as u64, &recv, slot * size..(slot + 1) * size)?;
            }
        }
    }
    conn.shutdown(Duration::from_secs(5))?;
    Ok(())
}

fn rdma_client(addr: SocketAddr, size: usize, iters: usize, warmup: usize) -> Result<Vec<Duration>> {
    let cfg = QpConfig { max_inline_data: size.max(64) as u32, ..QpConfig::default() };
    // The server may still be starting: retry the connect for a while.
    let started = Instant::now();
    let (mut conn, recv) = loop {
        let mut conn = Connection::resolve(addr, &cfg, T)?;
        let recv = MemoryRegion::new(conn.pd(), DEPTH * size, Access::LOCAL_WRITE)?;
        for i in 0..DEPTH {
            conn.post_recv(i as u64, &recv, i * size..(i + 1) * size)?;
        }
        match conn.connect(&[], T) {
            Ok(_) => break (conn, recv),
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                tracing::info!(error = %e, "connect failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let send = MemoryRegion::new(conn.pd(), size, Access::LOCAL_WRITE)?;
    let mut msg = vec![0x5a; size];
    let mut back = vec![0; size];
    let mut out = [Completion::EMPTY; 16];
    let mut rtts = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
        send.write_at(0, &msg)?;
        let t0 = Instant::now();
        conn.post_send(i as u64, &send, 0..size)?;
        let mut got = None;
        while got.is_none() {
            let n = conn.poll(&mut out)?;
            for c in &out[..n] {
                if !c.status.is_success() {
                    bail!("completion failed during the benchmark: {c:?}");
                }
                if c.queue == WorkQueue::Recv {
                    got = Some(c.wr_id as usize);
                }
            }
        }
        let rtt = t0.elapsed();
        let slot = got.unwrap_or_default();
        recv.read_at(slot * size, &mut back)?;
        ensure!(back == msg, "echo {i} differs");
        conn.post_recv(slot as u64, &recv, slot * size..(slot + 1) * size)?;
        if i >= warmup {
            rtts.push(rtt);
        }
    }
    conn.shutdown(Duration::from_secs(5))?;
    Ok(rtts)
}
