//! `tidepool-dm-bench local`: the local DM channel's cost, and what it was
//! chosen against. A DM application's call that does no cluster work
//! (`dm_query_session`) through a node daemon's local channel, beside three
//! raw ping-pongs of the same request and reply sizes between two threads:
//! a Unix `SOCK_STREAM` socket (the baseline), a `SOCK_SEQPACKET` socket (what
//! the channel uses), and a shared-memory slot with futex wake-ups (what a
//! shared-memory ring costs when both sides sleep while idle, as a DM
//! application in `dm_get_events` does). Everything runs in this process, so
//! every row pays the same scheduling.
//!
//! The futex calls are the only unsafe code: `futex(2)` on an `AtomicU32`
//! that outlives both threads.

use std::io::{IoSlice, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use dmapi::types::DM_NO_SESSION;
use hdrhistogram::Histogram;
use libdmapi::channel::{encode, Reply, Request};
use libdmapi::seqpacket::SeqPacket;
use libdmapi::Dm;
use node::config::NodeConfig;
use node::daemon::Node;

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn timed(n: u64, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Histogram<u64>> {
    for _ in 0..n / 10 {
        f()?;
    }
    let mut h = hist();
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        h.record(t.elapsed().as_nanos().max(1) as u64)?;
    }
    Ok(h)
}

fn stream_pingpong(n: u64, req: usize, resp: usize) -> anyhow::Result<Histogram<u64>> {
    let (mut a, mut b) = UnixStream::pair()?;
    let srv = std::thread::spawn(move || {
        let (mut q, r) = (vec![0u8; req], vec![1u8; resp]);
        while b.read_exact(&mut q).is_ok() {
            if b.write_all(&r).is_err() {
                return;
            }
        }
    });
    let (q, mut r) = (vec![2u8; req], vec![0u8; resp]);
    let h = timed(n, || {
        a.write_all(&q)?;
        a.read_exact(&mut r)?;
        Ok(())
    })?;
    drop(a);
    let _ = srv.join();
    Ok(h)
}

fn seqpacket_pingpong(n: u64, req: usize, resp: usize) -> anyhow::Result<Histogram<u64>> {
    let (a, b) = SeqPacket::pair()?;
    let srv = std::thread::spawn(move || {
        let (mut q, r) = (vec![0u8; req + 1], vec![1u8; resp]);
        while matches!(b.recv(&mut q), Ok(n) if n > 0) {
            if b.send_parts(&[IoSlice::new(&r)]).is_err() {
                return;
            }
        }
    });
    let (q, mut r) = (vec![2u8; req], vec![0u8; resp + 1]);
    let h = timed(n, || {
        a.send_parts(&[IoSlice::new(&q)])?;
        a.recv(&mut r)?;
        Ok(())
    })?;
    drop(a);
    let _ = srv.join();
    Ok(h)
}

/// A request/reply slot in shared memory: `turn` says whose move it is,
/// and a side that finds it is not its turn sleeps on it in `futex(2)`.
struct Slot {
    turn: AtomicU32,
    buf: parking_lot::Mutex<Vec<u8>>,
}

const CLIENT: u32 = 0;
const SERVER: u32 = 1;
const DONE: u32 = 2;

fn futex_wait(a: &AtomicU32, val: u32) {
    // SAFETY: `a` is a live, aligned u32 for the call; FUTEX_WAIT only reads it
    // and returns at once if it no longer holds `val`.
    unsafe {
        libc::syscall(libc::SYS_futex, a.as_ptr(), libc::FUTEX_WAIT, val, std::ptr::null::<libc::timespec>());
    }
}

fn futex_wake(a: &AtomicU32) {
    // SAFETY: as above; FUTEX_WAKE does not touch memory.
    unsafe {
        libc::syscall(libc::SYS_futex, a.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

fn wait_turn(s: &Slot, me: u32) -> bool {
    loop {
        let t = s.turn.load(Ordering::Acquire);
        if t == me {
            return true;
        }
        if t == DONE {
            return false;
        }
        futex_wait(&s.turn, t);
    }
}

fn shm_pingpong(n: u64, req: usize, resp: usize) -> anyhow::Result<Histogram<u64>> {
    let s = Arc::new(Slot { turn: AtomicU32::new(CLIENT), buf: parking_lot::Mutex::new(vec![0u8; req.max(resp)]) });
    let s2 = s.clone();
    let srv = std::thread::spawn(move || {
        let mut q = vec![0u8; req];
        while wait_turn(&s2, SERVER) {
            q.copy_from_slice(&s2.buf.lock()[..req]);
            s2.buf.lock()[..resp].fill(1);
            s2.turn.store(CLIENT, Ordering::Release);
            futex_wake(&s2.turn);
        }
    });
    let (q, mut r) = (vec![2u8; req], vec![0u8; resp]);
    let h = timed(n, || {
        s.buf.lock()[..req].copy_from_slice(&q);
        s.turn.store(SERVER, Ordering::Release);
        futex_wake(&s.turn);
        wait_turn(&s, CLIENT);
        r.copy_from_slice(&s.buf.lock()[..resp]);
        Ok(())
    })?;
    s.turn.store(DONE, Ordering::Release);
    futex_wake(&s.turn);
    let _ = srv.join();
    Ok(h)
}

/// Runs the comparison with `n` timed calls per row and prints the table.
pub fn run(n: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tidepool-dm-bench-local-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("node.sock");
    let cfg = NodeConfig {
        listen: crate::free_addr(),
        api_socket: Some(sock.clone()),
        mounts: Vec::new(),
        ..NodeConfig::default()
    };
    let node = Node::start(cfg).context("starting an in-process node")?;
    node::api::serve(node.clone(), &sock)?;
    let dm = Dm::connect(&sock)?;
    let info = b"local-bench".to_vec();
    let sid = dm.dm_create_session(DM_NO_SESSION, &info)?;
    // The sizes the channel really moves: a record header and the encoding.
    let req = 8 + encode(&Request::QuerySession { sid: sid.0 })?.len();
    let resp = 8 + encode(&Reply::Bytes(info.clone()))?.len();
    let call = timed(n, || {
        dm.dm_query_session(sid)?;
        Ok(())
    })?;
    let rows = [
        ("raw Unix SOCK_STREAM ping-pong (baseline)", stream_pingpong(n, req, resp)?),
        ("raw Unix SOCK_SEQPACKET ping-pong", seqpacket_pingpong(n, req, resp)?),
        ("shared-memory slot + futex wake-ups", shm_pingpong(n, req, resp)?),
        ("dm_query_session through the local channel", call),
    ];
    println!("## Local DM channel ({n} calls per row; request {req} B, reply {resp} B; threads of one process)");
    println!();
    println!("| path | p50 µs | p99 µs | p50 ratio |");
    println!("|------|-------:|-------:|----------:|");
    let base = rows[0].1.value_at_quantile(0.5) as f64;
    for (name, h) in &rows {
        let p50 = h.value_at_quantile(0.5) as f64;
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} |",
            p50 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            p50 / base
        );
    }
    dm.dm_destroy_session(sid)?;
    node.shutdown();
    std::thread::sleep(Duration::from_millis(50));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
