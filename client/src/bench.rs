//! `tidepool nvme bench`: keeps `qd` commands in flight on each of
//! `queues` I/O queues for a fixed time and reports IOPS and latency.

use clap::Args;
use hdrhistogram::Histogram;
use nvmf::{io_sqe, Completed, ConnectOpts, Controller, DataDir};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    c: super::Conn,
    /// randread | randwrite | read | write
    #[arg(long, default_value = "randread")]
    rw: String,
    /// I/O size in bytes.
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// Commands in flight per queue.
    #[arg(long, default_value_t = 32)]
    qd: u16,
    /// I/O queues (one thread each).
    #[arg(long, default_value_t = 1)]
    queues: u16,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Bytes of the namespace to touch (default: all).
    #[arg(long)]
    span: Option<u64>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let (write, random) = match a.rw.as_str() {
        "randread" => (false, true),
        "randwrite" => (true, true),
        "read" => (false, false),
        "write" => (true, false),
        o => anyhow::bail!("--rw {o:?}: use randread, randwrite, read or write"),
    };
    let mut o: ConnectOpts = a.c.opts();
    o.io_queues = a.queues;
    o.queue_depth = a.qd.max(2) + 1;
    // --poll comes with the connection options.
    let ctrl = Controller::connect(&a.c.addr, &a.c.nqn, &o)?;
    let ns = ctrl.identify_ns(a.c.nsid)?;
    anyhow::ensure!(
        a.bs >= ns.block_size && a.bs.is_multiple_of(ns.block_size),
        "--bs must be a multiple of the block size {}",
        ns.block_size
    );
    let nlb = a.bs / ns.block_size;
    let span_blocks = a.span.map_or(ns.blocks, |s| (s / ns.block_size as u64).min(ns.blocks));
    let slots = (span_blocks / nlb as u64).max(1);
    let dur = Duration::from_secs_f64(a.seconds);
    let nq = ctrl.io_queue_count();
    let results: Vec<(u64, Histogram<u64>, Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..nq)
            .map(|qi| {
                let ctrl = &ctrl;
                let nsid = a.c.nsid;
                let qd = a.qd as usize;
                s.spawn(move || -> anyhow::Result<(u64, Histogram<u64>, Duration)> {
                    let mut q = ctrl.io_queue(qi);
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                    let payload = vec![0xa5u8; (nlb * ns.block_size) as usize];
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (qi as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
                    let mut seq = qi as u64 * (slots / nq as u64);
                    let mut next = || {
                        if random {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            (rng % slots) * nlb as u64
                        } else {
                            seq = (seq + 1) % slots;
                            seq * nlb as u64
                        }
                    };
                    let mut started = vec![Instant::now(); qd + 2];
                    let mut submit = |q: &mut nvmf::QueuePair, started: &mut Vec<Instant>| -> anyhow::Result<()> {
                        let sqe = io_sqe(write, nsid, next(), nlb);
                        let data =
                            if write { DataDir::ToCtrl(&payload) } else { DataDir::FromCtrl(payload.len() as u32) };
                        let cid = q.submit(sqe, data, 0)? as usize;
                        if cid >= started.len() {
                            started.resize(cid + 1, Instant::now());
                        }
                        started[cid] = Instant::now();
                        Ok(())
                    };
                    for _ in 0..qd {
                        submit(&mut q, &mut started)?;
                    }
                    let t0 = Instant::now();
                    let mut done = 0u64;
                    let mut out: Vec<Completed> = Vec::with_capacity(qd);
                    while t0.elapsed() < dur {
                        out.clear();
                        q.poll(&mut out, 1)?;
                        for c in &out {
                            anyhow::ensure!(c.status.is_success(), "I/O failed: {}", c.status);
                            hist.saturating_record(started[c.cid as usize].elapsed().as_nanos() as u64);
                            done += 1;
                            submit(&mut q, &mut started)?;
                        }
                    }
                    // The rate is over the time the completions counted took.
                    let elapsed = t0.elapsed();
                    while q.outstanding() > 0 {
                        out.clear();
                        q.poll(&mut out, 1)?;
                    }
                    Ok((done, hist, elapsed))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let total: u64 = results.iter().map(|r| r.0).sum();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for (_, h, _) in &results {
        hist.add(h)?;
    }
    // Measured, not nominal: the queues ran side by side, so the longest one.
    let elapsed = results.iter().map(|r| r.2).max().unwrap_or_default();
    let iops = total as f64 / elapsed.as_secs_f64().max(1e-9);
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    if a.json {
        println!(
            "{{\"rw\":\"{}\",\"bs\":{},\"qd\":{},\"queues\":{},\"iops\":{:.0},\"mbps\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1}}}",
            a.rw, a.bs, a.qd, nq, iops, iops * a.bs as f64 / 1e6, us(0.5), us(0.99), us(0.999)
        );
    } else {
        println!(
            "{} bs={} qd={} queues={}: {:.0} IOPS, {:.1} MB/s, latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
            a.rw,
            a.bs,
            a.qd,
            nq,
            iops,
            iops * a.bs as f64 / 1e6,
            us(0.5),
            us(0.99),
            us(0.999)
        );
    }
    let _ = ctrl.shutdown();
    Ok(())
}
