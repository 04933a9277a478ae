//! Wireshark's NVMe/TCP dissector as an independent judge of our PDUs: a
//! session between Tidepool's initiator and storage-node must decode without
//! malformed PDUs, bad digests or protocol warnings, exactly as a session
//! between the kernel's own initiator and target does.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use common::{pattern, tidepool, StorageNode, GUEST_TIMEOUT, NQN};
use hw_tests::guest::Guest;
use hw_tests::host::{self, Daemon};
use hw_tests::tshark::{self, Analysis};
use hw_tests::{or_skip, Skip};

/// `aer_allowed`: the kernel host keeps an Asynchronous Event Request
/// outstanding on each admin queue, answered only if an event happens, so
/// its sessions may end with that many commands unanswered (at most one per
/// connection); Tidepool's initiator sends none, so its sessions may not.
fn judge(a: &Analysis, digests: bool, aer_allowed: bool) -> Vec<String> {
    let mut bad = Vec::new();
    for (t, name) in [(0, "ICReq"), (1, "ICResp"), (4, "CapsuleCmd"), (5, "CapsuleResp"), (7, "C2HData")] {
        if a.count(t) == 0 {
            bad.push(format!("no {name} PDU decoded"));
        }
    }
    // A C2HData flagged SUCCESS completes its command without a CapsuleResp.
    let responses = a.count(5) + a.c2h_success;
    let unanswered = a.count(4).saturating_sub(responses);
    let allowed = if aer_allowed { a.count(0) } else { 0 };
    if responses > a.count(4) || unanswered > allowed {
        bad.push(format!(
            "{} command capsules but {} responses ({} by SUCCESS-flagged data)",
            a.count(4),
            responses,
            a.c2h_success
        ));
    }
    if a.bad_digests > 0 {
        bad.push(format!("{} PDUs with a bad digest", a.bad_digests));
    }
    if digests && a.good_digests == 0 {
        bad.push("digests were negotiated but none was verified".into());
    }
    bad.extend(a.problems.iter().cloned());
    bad
}

/// Host-only: no qemu needed.
#[test]
fn tshark_decodes_session() -> anyhow::Result<()> {
    common::init_tracing();
    let tshark_bin = or_skip!(host::tool("tshark"));
    let dumpcap = or_skip!(host::tool("dumpcap"));
    let tp = or_skip!(host::binary("tidepool"));
    let dir = tempfile::tempdir()?;
    let sn = or_skip!(StorageNode::start(dir.path(), &[])?);
    let (port, dport) = (sn.port, sn.discovery_port);

    let pcap = dir.path().join("session.pcapng");
    let mut cmd = Command::new(&dumpcap);
    cmd.args(["-i", "lo", "-q", "-f"]).arg(format!("tcp port {port} or tcp port {dport}")).arg("-w").arg(&pcap);
    let mut cap = Daemon::start("dumpcap", cmd, &dir.path().join("dumpcap.log"))?;
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while !cap.log().contains("Capturing on") {
        if !cap.is_running() {
            or_skip!(Err(Skip::new(format!("dumpcap cannot capture on lo here: {}", cap.log().trim()))));
        }
        ensure!(std::time::Instant::now() < until, "dumpcap did not start: {}", cap.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Digests if the CLI offers them: they are what tshark can verify.
    let digests = tidepool(&tp, &["nvme", "write", "--help"])?.stdout.contains("--data-digest");
    let addr = sn.addr();
    let mut conn = vec!["--addr", addr.as_str(), "--nqn", NQN];
    if digests {
        conn.extend(["--hdr-digest", "--data-digest"]);
    }
    let mut ok_all = true;
    let discovery = sn.discovery_addr();
    ok_all &= tidepool(&tp, &["nvme", "discover", "--addr", &discovery])?.ok;
    ok_all &= tidepool(&tp, &[&["nvme", "identify"][..], &conn].concat())?.ok;
    let data = pattern(128 * 1024, 0x6361_7074);
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, &data)?;
    let (input_s, output_s) = (input.to_str().context("path")?, output.to_str().context("path")?);
    ok_all &=
        tidepool(&tp, &[&["nvme", "write"][..], &conn, &["--nsid", "1", "--lba", "8", "--input", input_s]].concat())?
            .ok;
    ok_all &= tidepool(
        &tp,
        &[&["nvme", "read"][..], &conn, &["--nsid", "1", "--lba", "8", "--blocks", "256", "--output", output_s]]
            .concat(),
    )?
    .ok;
    // Let the last segments reach the capture before stopping it.
    std::thread::sleep(Duration::from_millis(500));
    cap.stop(Duration::from_secs(5));
    drop(sn);

    ensure!(ok_all, "a tidepool command failed (see above)");
    ensure!(std::fs::read(&output)? == data, "read-back differs from what was written");
    let a = tshark::analyze(&tshark_bin, &pcap, &[port, dport])?;
    eprintln!(
        "tshark: {} PDUs: {}; digests good {} bad {}; TCP notes {:?}",
        a.total_pdus(),
        a.summary(),
        a.good_digests,
        a.bad_digests,
        a.tcp_notes
    );
    let bad = judge(&a, digests, false);
    ensure!(bad.is_empty(), "tshark finds problems in our session: {bad:#?}");
    Ok(())
}

/// The baseline for the test above: the kernel's own initiator and target
/// (in a guest, digests on) must pass the same judgement. If this fails, the
/// judge or tshark is wrong, not Tidepool.
#[test]
fn tshark_accepts_kernel_session() -> anyhow::Result<()> {
    common::init_tracing();
    let tshark_bin = or_skip!(host::tool("tshark"));
    let run = or_skip!(Guest::new()
        .module("nvmet")
        .module("nvmet-tcp")
        .module("nvme-tcp")
        .timeout(GUEST_TIMEOUT)
        .run(include_str!("../guest/kernel_capture.sh"))?
        .into_result());
    eprintln!("{}", run.transcript());
    run.assert_checks(1);
    let a = tshark::analyze(&tshark_bin, &run.out_dir().join("cap.pcapng"), &[4420])?;
    eprintln!(
        "tshark: {} PDUs: {}; digests good {} bad {}; TCP notes {:?}",
        a.total_pdus(),
        a.summary(),
        a.good_digests,
        a.bad_digests,
        a.tcp_notes
    );
    let bad = judge(&a, true, true);
    ensure!(bad.is_empty(), "tshark rejects the kernel's own session: {bad:#?}");

    // And the judge must notice damage: one flipped payload byte in a
    // C2HData PDU has to show up as a bad data digest.
    let pcap = run.out_dir().join("cap.pcapng");
    let frames = tshark::frames_with_data_digest(&tshark_bin, &pcap, &[4420], 7)?;
    let frame = *frames.first().context("no C2HData frame with a data digest")?;
    let damaged = run.out_dir().join("damaged.pcapng");
    tshark::corrupt_frame(&pcap, &damaged, frame)?;
    let d = tshark::analyze(&tshark_bin, &damaged, &[4420])?;
    eprintln!("damaged frame {frame}: digests good {} bad {}", d.good_digests, d.bad_digests);
    ensure!(!judge(&d, true, true).is_empty() && d.bad_digests > 0, "a corrupted C2HData payload went unnoticed");
    Ok(())
}
