//! The RDMA latency benchmark as a test: in one guest boot, DM events
//! between node processes over RDMA and over TCP (`tidepool-dm-bench
//! transports`: synchronous round trips, asynchronous events per second),
//! then ping-pongs of the DM request's size over Tidepool's RDMA layer
//! (`rdma-lat`, busy-polled send/recv) beside `ibv_rc_pingpong`,
//! `ib_send_lat` and a TCP ping-pong. It checks that every tool ran and echoed correctly (rdma-lat checks
//! each message's sequence number) and prints the table; it asserts no
//! timing, since emulated figures only mean something as ratios.

mod common;

use hw_tests::guest::Guest;
use hw_tests::{host, or_skip};

#[test]
fn rdma_latency_beside_verbs_baselines_and_tcp() -> anyhow::Result<()> {
    common::init_tracing();
    let bin = or_skip!(host::rdma_binary("rdma-lat"));
    let dm_bench = or_skip!(host::binary("tidepool-dm-bench"));
    let run = or_skip!(Guest::new()
        .env("RDMA_LAT", bin.display())
        .env("DM_BENCH", dm_bench.display())
        .env("DM_EVENTS", 500)
        .env("DM_TPUT", 5000)
        // A short run: the test proves the benchmark works; use the script
        // directly (BENCH_ITERS, BENCH_ROUNDS) for figures.
        .env("BENCH_ITERS", 1000)
        .env("BENCH_ROUNDS", 1)
        .timeout(common::GUEST_TIMEOUT.max(std::time::Duration::from_secs(240)))
        .run(include_str!("../guest/rdma_latency.sh"))?
        .into_result());
    eprintln!("{}", run.transcript());
    // soft-RoCE up (2), the DM bench (1), rc_pingpong, rdma-lat and tcp in
    // the warm-up and the measured round (ib_send_lat is a baseline only,
    // noted not checked).
    run.assert_checks(9);
    let table: Vec<&str> = run.output.lines().filter(|l| l.starts_with("BENCH ")).collect();
    println!("{}", table.join("\n"));
    for tool in [
        "tool=rdma-lat round=1",
        "tool=ibv_rc_pingpong round=1",
        "tool=tcp round=1",
        "tool=dm-rdma mode=spin-wait_apps",
        "tool=dm-tcp mode=spin-wait_apps",
        "tool=dm-rdma mode=blocking",
        "tool=dm-async sources=1",
    ] {
        assert!(
            table.iter().any(|l| l.starts_with(&format!("BENCH {tool} "))),
            "no {tool} figure in\n{}",
            run.transcript()
        );
    }
    Ok(())
}
