//! Several hosts on one machine: `tidepool cluster up --etcd --netns` runs
//! each node daemon in a network namespace of its own (its own addresses on
//! a cluster network and a storage network, joined by veth pairs to
//! bridges in a hub namespace that holds etcd and the storage node). The
//! failover tests here cut real links: a manager killed while fio writes
//! and verifies from two other nodes, and a manager whose cluster link goes
//! down while its storage link stays up, which only the NVMe reservation
//! keeps off the volume.

mod common;

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster_up::*;
use common::TIDEPOOL;

fn mount_of(env: &std::collections::HashMap<String, String>, i: u64) -> PathBuf {
    PathBuf::from(&env[&format!("TIDEPOOL_NODE{i}_MOUNT")])
}

/// Waits until `cond` holds, failing with `what` after `secs`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// fio writing 4 KiB blocks at random with CRC-32C checksums in `dir`,
/// reading them all back and verifying them at the end.
fn fio_verify(dir: &Path, name: &str) -> std::process::Child {
    Command::new("fio")
        .arg(format!("--directory={}", dir.display()))
        .args(["--ioengine=psync", "--rw=randwrite", "--bs=4k", "--size=8M", "--rate_iops=500"])
        .args(["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0"])
        .args(["--output-format=terse", &format!("--name={name}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting fio")
}

/// The kill -9 of the file system's manager while fio writes with
/// checksums from two other nodes (each its own host): the other candidate
/// takes over, the writes stall and go on, and every block verifies; a
/// third node reads the same bytes as the writers.
#[test]
fn a_manager_killed_under_fio_verify_from_two_hosts_loses_nothing() {
    if !test_support::have_tool("fio") {
        return;
    }
    let Some((dir, _up)) = etcd_cluster_with(4, &["--netns", "--lease-ttl-ms", "2000"]) else { return };
    let d = dir.path().to_str().unwrap();
    let st = status_of(d);
    assert!(st["netns"].is_string(), "{st}");
    assert_eq!(st["nodes"][0]["addr"], "10.77.0.11:7100", "{st}");
    let old = holders(&st, "fs-manager:1");
    assert!(old == [2] || old == [3], "one of the candidates manages: {st}");
    let (old, new) = (old[0], 5 - old[0]);
    let env = env_of(dir.path());
    let (m1, m4, mnew) = (mount_of(&env, 1), mount_of(&env, 4), mount_of(&env, new));
    let writers = [fio_verify(&m1, "w1"), fio_verify(&m4, "w4")];
    std::thread::sleep(Duration::from_millis(1500));
    signal_node(&st, old, libc::SIGKILL);
    for (i, w) in writers.into_iter().enumerate() {
        let o = w.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "fio on node {}: {out}{}", [1, 4][i], String::from_utf8_lossy(&o.stderr));
        let l = out.lines().find(|l| l.starts_with("3;")).unwrap_or_else(|| panic!("no terse line: {out}"));
        assert_eq!(l.split(';').nth(4), Some("0"), "fio reported an error: {l}");
    }
    assert_eq!(holders(&status_of(d), "fs-manager:1"), [new]);
    // What the writers verified is what another host reads.
    for (m, f) in [(&m1, "w1.0.0"), (&m4, "w4.0.0")] {
        let mine = std::fs::read(m.join(f)).unwrap();
        assert_eq!(mine.len(), 8 << 20);
        assert!(std::fs::read(mnew.join(f)).unwrap() == mine, "node {new} reads {f} differently");
    }
    let log = std::fs::read_to_string(dir.path().join(format!("node{new}/node.log"))).unwrap();
    assert!(log.contains("preempted the last manager's reservation") && log.contains(&format!("node={old}")), "{log}");
}

/// The manager's cluster link goes down (`cluster partition`) while its
/// storage link stays up: it can still reach the volume, not etcd. Its
/// lease runs out, it stops serving, the other candidate wins and preempts
/// its reservation key; a node on the other side writes a block of a file
/// the cut-off host is writing too, and the cut-off host's writes, still
/// sent over its storage link, are refused (Reservation Conflict) and never
/// land over the newer data. Its mount fails at once while it is out.
/// Healed, it joins again under a new lease (a new reservation key) and
/// mounts again; the old mount's writes still never land.
#[test]
fn a_partitioned_manager_is_fenced_off_the_volume_it_still_reaches() {
    let Some((dir, _up)) = etcd_cluster_with(3, &["--netns", "--lease-ttl-ms", "2000"]) else { return };
    let d = dir.path().to_str().unwrap();
    let st = status_of(d);
    let old = holders(&st, "fs-manager:1");
    assert!(old == [2] || old == [3], "one of the candidates manages: {st}");
    let (old, new) = (old[0], 5 - old[0]);
    let env = env_of(dir.path());
    let (m1, mold) = (mount_of(&env, 1), mount_of(&env, old));
    std::fs::write(mold.join("shared"), vec![0u8; 64 << 10]).unwrap();
    // The cut-off host keeps writing its own marker into every block.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), mold.join("shared"));
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DSYNC).open(path).unwrap();
            let (mut ok, mut failed) = (0u32, 0u32);
            for b in (0..16u64).cycle() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                match f.write_at(&[b'O'; 4096], b * 4096) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    tidepool(&["cluster", "partition", "--dir", d, "--node", &old.to_string()]);
    wait_for(30, "the other candidate did not take over", || holders(&status_of(d), "fs-manager:1") == [new]);
    let newlog = dir.path().join(format!("node{new}/node.log"));
    wait_for(20, "the new manager did not preempt the old one's key", || {
        std::fs::read_to_string(&newlog).unwrap().contains("preempted the last manager's reservation")
    });
    // The other side goes on: a create, and a block of the file rewritten.
    std::fs::write(m1.join("after"), b"made across the partition").unwrap();
    let f1 = std::fs::OpenOptions::new().write(true).open(m1.join("shared")).unwrap();
    f1.write_at(&[b'N'; 4096], 0).unwrap();
    f1.sync_all().unwrap();
    drop(f1);
    // The cut-off host's own write, over its storage link, as its host NQN.
    let blk = dir.path().join("block0");
    let hostnqn = format!("nqn.2026-11.io.tidepool:node-{old}");
    let nvme = |verb: &str, file: &Path| {
        let node = old.to_string();
        let mut a = vec!["cluster", "exec", "--dir", d, "--node", &node, "--", TIDEPOOL, "nvme", verb];
        a.extend_from_slice(&["--addr", &env["TIDEPOOL_STORAGE"], "--nqn", &env["TIDEPOOL_NQN"]]);
        a.extend_from_slice(&["--hostnqn", &hostnqn, "--lba", "0"]);
        let f = file.to_str().unwrap();
        if verb == "read" {
            a.extend_from_slice(&["--output", f]);
        } else {
            a.extend_from_slice(&["--input", f]);
        }
        Command::new(TIDEPOOL).args(&a).output().unwrap()
    };
    let r = nvme("read", &blk);
    assert!(r.status.success(), "a fenced host may still read: {r:?}");
    let w = nvme("write", &blk);
    assert!(
        !w.status.success() && String::from_utf8_lossy(&w.stderr).contains("Reservation Conflict"),
        "the cut-off host wrote to the volume: {w:?}"
    );
    // Out of the cluster, its mount fails at once rather than waiting on a
    // manager that refuses it.
    let state_of = |st: &serde_json::Value| st["nodes"][old as usize - 1]["mount_state"].as_str().unwrap().to_string();
    let st = status_of(d);
    assert!(state_of(&st).starts_with("expelled"), "{st}");
    let t = Instant::now();
    assert!(std::fs::metadata(mold.join("shared")).is_err());
    assert!(t.elapsed() < Duration::from_secs(5), "a stat on the expelled mount took {:?}", t.elapsed());
    let oldlog = std::fs::read_to_string(dir.path().join(format!("node{old}/node.log"))).unwrap();
    assert!(oldlog.contains("stopping its metadata services"), "{oldlog}");
    // Healed, it joins again under a new lease and mounts again, while the
    // old mount's writer still tries: none of its writes may land.
    tidepool(&["cluster", "heal", "--dir", d, "--node", &old.to_string()]);
    let oldlog_path = dir.path().join(format!("node{old}/node.log"));
    let end = Instant::now() + Duration::from_secs(30);
    while state_of(&status_of(d)) != "mounted" {
        let log = std::fs::read_to_string(&oldlog_path).unwrap();
        assert!(Instant::now() < end, "the healed node did not mount again: {}\n{log}", status_of(d));
        std::thread::sleep(Duration::from_millis(100));
    }
    let members: Vec<u64> =
        status_of(d)["etcd"]["members"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap()).collect();
    assert_eq!(members, [1, 2, 3]);
    assert_eq!(std::fs::read(mold.join("after")).unwrap(), b"made across the partition");
    std::fs::write(mold.join("back"), b"from the rejoined node").unwrap();
    assert_eq!(std::fs::read(m1.join("back")).unwrap(), b"from the rejoined node");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let (ok, failed) = writer.join().unwrap();
    assert!(ok > 0 && failed > 0, "the cut-off host's writes: {ok} landed, {failed} refused");
    let data = std::fs::read(m1.join("shared")).unwrap();
    assert!(data[..4096].iter().all(|&b| b == b'N'), "the cut-off host wrote over newer data");
    assert_eq!(std::fs::read(mount_of(&env, new).join("after")).unwrap(), b"made across the partition");
    let oldlog = std::fs::read_to_string(dir.path().join(format!("node{old}/node.log"))).unwrap();
    assert!(oldlog.contains("joined the cluster again after losing the lease"), "{oldlog}");
}

/// The session manager killed (kill -9) while a DM application on a third
/// host answers the synchronous create events of files made on another:
/// the events travel from source to session node without the session
/// manager, so every create completes (those made during the failover
/// too), the application sees each exactly once and answers it, and its
/// session keeps its id at the next session manager.
#[test]
fn a_killed_session_manager_loses_no_event_of_an_application_on_a_third_host() {
    let Some((dir, _up)) = etcd_cluster_with(3, &["--netns", "--lease-ttl-ms", "2000"]) else { return };
    let d = dir.path().to_str().unwrap();
    let st = status_of(d);
    let sm = holders(&st, "session-manager");
    assert!(sm == [1] || sm == [3], "one candidate is the session manager: {st}");
    // Node 2 is never a session manager candidate: the application runs there.
    let (old, ops) = (sm[0], 4 - sm[0]);
    let env = env_of(dir.path());
    const N: usize = 30;
    let (mut app, rx) = dm_listen(&env["TIDEPOOL_NODE2_DM_SOCKET"], &["--info", "app", "--events", "create"]);
    let line = || rx.recv_timeout(Duration::from_secs(10)).expect("the application said nothing");
    let sid = common::field(&line(), "sid");
    assert_eq!(line(), "READY");
    let mops = mount_of(&env, ops);
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for i in 0..N {
            if let Err(e) = std::fs::write(mops.join(format!("f{i:02}")), b"x") {
                let _ = done_tx.send(Err(format!("create f{i:02}: {e}")));
                return;
            }
            std::thread::sleep(Duration::from_millis(60));
        }
        let _ = done_tx.send(Ok(()));
    });
    std::thread::sleep(Duration::from_millis(600));
    signal_node(&st, old, libc::SIGKILL);
    // (Bounded: a create whose event nobody answers would wait forever.)
    let r = done.recv_timeout(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the application this test started.
    unsafe { libc::kill(app.id() as i32, libc::SIGTERM) };
    let _ = app.wait();
    let out: Vec<String> = rx.try_iter().collect();
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}; the application saw: {out:?}"),
        Err(_) => panic!("the creates did not finish; the application saw: {out:?}"),
    }
    let mut names: Vec<String> = out
        .iter()
        .filter(|l| l.starts_with("EVENT type=create"))
        .map(|l| common::field(l, "name1"))
        .filter(|n| n.starts_with('f'))
        .collect();
    names.sort();
    let want: Vec<String> = (0..N).map(|i| format!("f{i:02}")).collect();
    assert_eq!(names, want, "each create's event once: {out:?}");
    assert_eq!(out.iter().filter(|l| l.starts_with("RESPONDED")).count(), N, "{out:?}");
    // The session kept its id at the next session manager.
    wait_for(30, "no new session manager", || holders(&status_of(d), "session-manager") == [ops]);
    let s = tidepool(&["dm", "--socket", &env[&format!("TIDEPOOL_NODE{ops}_DM_SOCKET")], "sessions"]);
    assert!(s.contains(&format!("sid={sid} node=2 info=app")), "{s}");
}
