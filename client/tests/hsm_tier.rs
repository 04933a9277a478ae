//! `tidepool hsm` across processes on real mounts of three nodes, with a
//! local-directory tier: the HSM runs on node A (3); commands come from node
//! C (5); files are written and read on node B (4).
//!
//! Migrated: the tier holds the bytes, the blocks are freed (every mount
//! shows none, `statvfs` shows the space back), size, mode and times stay.
//! A read on B recalls the data (every byte, checked by the HSM against the
//! recorded CRC-32C); readers on three nodes at once cause one recall. A
//! write to a premigrated file makes its copy stale; removing a migrated
//! file removes its tier object.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{standard_with_mounts, TIDEPOOL};

const T: Duration = Duration::from_secs(30);

struct Hsm {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Hsm {
    /// `tidepool hsm run` on the node behind `socket`, its log kept.
    fn start(socket: &Path, tier: &Path) -> Hsm {
        let url = format!("file://{}", tier.display());
        Hsm::start_with(socket, &["--tier", &url, "--workers", "3"], &[])
    }

    /// `tidepool hsm run ARGS` with `env`.
    fn start_with(socket: &Path, args: &[&str], env: &[(&str, String)]) -> Hsm {
        let mut child = Command::new(TIDEPOOL)
            .args(["hsm", "--socket"])
            .arg(socket)
            .arg("run")
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (err, l) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Hsm { child, log }
    }

    /// [`start`](Self::start) on node 3, once its session and dispositions
    /// have reached the `nodes`.
    fn ready(c: &common::Cluster, tier: &Path, nodes: &[u32]) -> Hsm {
        let hsm = Hsm::start(c.socket(3), tier);
        for &n in nodes {
            wait_for("the HSM session", || c.dm_ok(n, &["sessions"]).contains("info=tidepool-hsm"));
            c.driver(n, &["wait-route", "--event", "destroy", "--node", "3"]);
        }
        hsm
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Hsm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hsm_cmd(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(TIDEPOOL).arg("hsm").arg("--socket").arg(socket).args(args).output().unwrap()
}

fn free_blocks(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs is plain integers, valid all zero; the call gets a
    // NUL-terminated path and an out-structure of the right type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bfree as u64
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hsm_migrates_recalls_on_other_nodes_and_forgets_removed_files() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(64 << 20, &[3, 4, 5]);
    let (ma, mb, mc) = (&mnts[0], &mnts[1], &mnts[2]);
    let tier = tempfile::tempdir().unwrap();
    let hsm = Hsm::ready(&c, tier.path(), &[3, 4, 5]);

    // Two files written on node B.
    let big: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let small = b"a small cold file".to_vec();
    std::fs::write(mb.path().join("big"), &big).unwrap();
    std::fs::write(mb.path().join("small"), &small).unwrap();
    let before = std::fs::metadata(mb.path().join("big")).unwrap();
    let free_before = free_blocks(mb.path());

    // Migrated from node C.
    let paths: Vec<String> = ["big", "small"].iter().map(|n| mc.path().join(n).display().to_string()).collect();
    let o = hsm_cmd(c.socket(5), &["migrate", &paths[0], &paths[1]]);
    assert!(o.status.success(), "migrate: {}\n{}", String::from_utf8_lossy(&o.stderr), hsm.log());
    for m in [ma, mb, mc] {
        let md = std::fs::metadata(m.path().join("big")).unwrap();
        assert_eq!((md.len(), md.blocks()), (600_000, 0), "node sees the size and no blocks");
        assert_eq!(
            (md.mode(), md.mtime(), md.mtime_nsec(), md.uid()),
            (before.mode(), before.mtime(), before.mtime_nsec(), before.uid())
        );
    }
    let freed = free_blocks(mb.path()) - free_before;
    assert!(freed >= 600_000 / 4096, "the volume got the space back: {freed} blocks");
    let ino = before.ino();
    let object = tier.path().join(format!("fs1/{ino}-{}", {
        // The generation is in the record `ls` shows.
        let o = hsm_cmd(c.socket(4), &["ls", &mb.path().join("big").display().to_string()]);
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(out.contains(": migrated (released exists archived)"), "{out}");
        out.split("key=fs1/").nth(1).unwrap().split(' ').next().unwrap().split('-').nth(1).unwrap().to_string()
    }));
    assert_eq!(std::fs::read(&object).unwrap(), big, "the tier holds every byte");

    // Read on node B: recalled, every byte.
    assert_eq!(std::fs::read(mb.path().join("big")).unwrap(), big);
    assert!(std::fs::metadata(ma.path().join("big")).unwrap().blocks() > 0, "resident again");
    let o = hsm_cmd(c.socket(5), &["ls", &paths[0]]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(": premigrated (exists archived)"));

    // Readers on three nodes at once: one recall.
    let small_ino = std::fs::metadata(mb.path().join("small")).unwrap().ino();
    let readers: Vec<_> = [ma, mb, mc]
        .iter()
        .map(|m| {
            let p = m.path().join("small");
            std::thread::spawn(move || std::fs::read(p).unwrap())
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), small);
    }
    wait_for("the HSM's log of the small file's recall", || {
        hsm.log().lines().any(|l| l.contains("recalled") && l.contains(&format!("ino={small_ino} ")))
    });
    let recalls = hsm
        .log
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains("recalled") && l.contains(&format!("ino={small_ino} ")))
        .count();
    assert_eq!(recalls, 1, "one recall for three readers:\n{}", hsm.log());

    // Three readers of an 8 MiB migrated file at once, on three nodes: one
    // recall (readers whose events come during it wait for it; how many do
    // depends on timing, so only the one recall is checked).
    let wide: Vec<u8> = (0..8u32 << 20).map(|i| (i >> 9) as u8 ^ i as u8).collect();
    std::fs::write(mb.path().join("wide"), &wide).unwrap();
    let wide_ino = std::fs::metadata(mb.path().join("wide")).unwrap().ino();
    let o = hsm_cmd(c.socket(5), &["migrate", &mc.path().join("wide").display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let start = Arc::new(std::sync::Barrier::new(3));
    let readers: Vec<_> = [ma, mb, mc]
        .iter()
        .map(|m| {
            let (p, start) = (m.path().join("wide"), start.clone());
            std::thread::spawn(move || {
                start.wait();
                std::fs::read(p).unwrap()
            })
        })
        .collect();
    for r in readers {
        assert!(r.join().unwrap() == wide, "every reader gets every byte");
    }
    let tag = format!("ino={wide_ino} ");
    wait_for("the HSM's log of the recall", || {
        hsm.log().lines().any(|l| l.contains("accesses answered") && l.contains(&tag))
    });
    let log = hsm.log();
    let answered: Vec<&str> = log.lines().filter(|l| l.contains("accesses answered") && l.contains(&tag)).collect();
    assert_eq!(answered.len(), 1, "one recall for the three readers:\n{log}");

    // A write to the premigrated big file: its copy is stale, and release refuses.
    std::fs::write(mc.path().join("big"), b"new data").unwrap();
    let o = hsm_cmd(c.socket(4), &["ls", &mb.path().join("big").display().to_string()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(": stale (exists dirty archived)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = hsm_cmd(c.socket(5), &["release", &paths[0]]);
    assert!(!o.status.success(), "a stale copy is not released");
    assert_eq!(std::fs::read(mb.path().join("big")).unwrap(), b"new data");

    // Migrate small again and remove it: its tier object goes.
    let o = hsm_cmd(c.socket(5), &["migrate", &paths[1]]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gen_obj = std::fs::read_dir(tier.path().join("fs1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{small_ino}-")))
        .expect("small's object");
    std::fs::remove_file(mb.path().join("small")).unwrap();
    wait_for("the removed file's tier object to go", || !gen_obj.exists());
    drop(hsm);
    drop(c);
}

/// The HSM killed with SIGKILL while a file is migrated: a read on another
/// node waits (its event is kept by the orphaned session); the restarted HSM
/// reclaims the session, gets the event and recalls, and the reader gets
/// every byte.
#[test]
fn a_killed_hsm_restarted_finishes_the_read_that_waited() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4]);
    let mb = &mnts[1];
    let tier = tempfile::tempdir().unwrap();
    let hsm = Hsm::ready(&c, tier.path(), &[4]);
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let f = mb.path().join("cold");
    std::fs::write(&f, &body).unwrap();
    let o = hsm_cmd(c.socket(4), &["migrate", &f.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::metadata(&f).unwrap().blocks(), 0);
    drop(hsm); // SIGKILL

    let (tx, rx) = std::sync::mpsc::channel();
    let p = f.clone();
    std::thread::spawn(move || tx.send(std::fs::read(p).map_err(|e| e.raw_os_error())).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "the read waits for the HSM");
    let again = Hsm::start(c.socket(3), tier.path());
    assert_eq!(rx.recv_timeout(T).unwrap(), Ok(body), "the restarted HSM recalled: {}", again.log());
    wait_for("the HSM's log of the reclaim", || again.log().contains("reclaiming the HSM session"));
    drop(again);
    drop(c);
}

/// A tier object that no longer matches its record (changed bytes, then
/// gone): the read on another node fails with EIO instead of getting wrong
/// data or hanging, the stub stays migrated, and once the object is right
/// again the next read recalls it.
#[test]
fn a_damaged_or_missing_tier_object_fails_the_read_with_eio_and_keeps_the_stub() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4]);
    let mb = &mnts[1];
    let tier = tempfile::tempdir().unwrap();
    let hsm = Hsm::ready(&c, tier.path(), &[4]);
    let f = mb.path().join("precious");
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 199) as u8).collect();
    std::fs::write(&f, &body).unwrap();
    let p = f.display().to_string();
    assert!(hsm_cmd(c.socket(4), &["migrate", &p]).status.success());
    let obj = std::fs::read_dir(tier.path().join("fs1")).unwrap().next().unwrap().unwrap().path();
    let good = std::fs::read(&obj).unwrap();
    let mut bad = good.clone();
    bad[1234] ^= 0x40;
    std::fs::write(&obj, &bad).unwrap();
    assert_eq!(std::fs::read(&f).map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)), "a flipped bit: EIO");
    // (The HSM logs before it answers; its log reaches us through a pipe.)
    wait_for("the HSM's log of the mismatch", || hsm.log().contains("does not match its record"));
    std::fs::remove_file(&obj).unwrap();
    assert_eq!(std::fs::read(&f).map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)), "no object: EIO");
    let ls = String::from_utf8(hsm_cmd(c.socket(4), &["ls", &p]).stdout).unwrap();
    assert!(ls.contains(": migrated"), "the stub is left as it was: {ls}");
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 50_000);
    std::fs::write(&obj, &good).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), body, "recalled once the object is right");
    drop(hsm);
    drop(c);
}

/// moto's S3 server on a loopback port, with one bucket; killed (by its
/// PID) when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start(bucket: &str) -> Moto {
        let port = common::listen_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let m = Moto { child, url };
        // CreateBucket (moto checks no signature): a bare PUT.
        wait_for("moto's S3 server", || {
            use std::io::{Read, Write};
            let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
            let req = format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            c.write_all(req.as_bytes()).is_ok() && c.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200")
        });
        m
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "tidepool-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "tidepool-test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to the server this test started, by its PID.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The S3 tier, against moto's server: files migrated from node B (one in
/// parts: larger than a part) are recalled by reads, every byte. A tier
/// that stops answering (the server stopped with SIGSTOP) fails the read
/// with EIO within the configured bound and leaves the stub; once the
/// server goes on, the next read recalls.
#[test]
fn s3_tier_migrates_recalls_and_a_hanging_tier_fails_reads_in_bounded_time() {
    if !common::fuse_available() || !test_support::skip::have_tool("moto_server") {
        return;
    }
    let moto = Moto::start("tp-tier");
    let (mnts, _vol, c) = standard_with_mounts(64 << 20, &[3, 4]);
    let mb = &mnts[1];
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hsm.toml");
    std::fs::write(&cfg, "workers = 2\n[tier]\nurl = \"s3://tp-tier/hsm\"\ntimeout_secs = 2\n").unwrap();
    let hsm = Hsm::start_with(c.socket(3), &["--config", cfg.to_str().unwrap()], &moto.env());
    wait_for("the HSM session", || c.dm_ok(4, &["sessions"]).contains("info=tidepool-hsm"));
    c.driver(4, &["wait-route", "--event", "destroy", "--node", "3"]);

    let big: Vec<u8> = (0..(12u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let small: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (fb, fs) = (mb.path().join("big"), mb.path().join("small"));
    std::fs::write(&fb, &big).unwrap();
    std::fs::write(&fs, &small).unwrap();
    let o = hsm_cmd(c.socket(4), &["migrate", fb.to_str().unwrap(), fs.to_str().unwrap()]);
    assert!(o.status.success(), "migrate: {}\n{}", String::from_utf8_lossy(&o.stderr), hsm.log());
    for f in [&fb, &fs] {
        assert_eq!(std::fs::metadata(f).unwrap().blocks(), 0, "punched out");
    }
    assert!(std::fs::read(&fb).unwrap() == big, "the 12 MiB file (uploaded in parts) comes back whole");

    moto.signal(libc::SIGSTOP);
    let t0 = Instant::now();
    assert_eq!(std::fs::read(&fs).map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)), "{}", hsm.log());
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(20), "the read waited {took:?} on a hanging tier");
    wait_for("the HSM's log of the failed recall", || hsm.log().contains("recall failed; the accesses get EIO"));
    let ls = String::from_utf8(hsm_cmd(c.socket(4), &["ls", fs.to_str().unwrap()]).stdout).unwrap();
    assert!(ls.contains(": migrated"), "the stub is left: {ls}");
    assert_eq!(std::fs::metadata(&fs).unwrap().blocks(), 0, "nothing of the failed recall stays");

    moto.signal(libc::SIGCONT);
    assert_eq!(std::fs::read(&fs).unwrap(), small, "recalled once the tier answers");
    drop(hsm);
    drop(c);
}

/// Sets a file's access and modification times to `ago` seconds back.
fn age(p: &Path, ago: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(ago);
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t)).unwrap();
}

/// Percent of the volume under `p` in use, as the policy reckons it.
fn used_pct(p: &Path) -> u64 {
    tidepool_hsm::policy::Usage::of(p).unwrap().percent()
}

fn state(c: &common::Cluster, node: u32, p: &Path) -> String {
    let o = hsm_cmd(c.socket(node), &["ls", p.to_str().unwrap()]);
    assert!(o.status.success(), "ls: {}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    out.split(": ").nth(1).unwrap_or("").split(' ').next().unwrap_or("").trim().to_string()
}

/// The watermark policy on a volume past its high mark: the least recently
/// used files the rules allow (not the excluded one, not the one below
/// `min_size`) are migrated, oldest first, until the volume is at the low
/// mark; the newest stay resident, and every migrated file reads back whole.
#[test]
fn the_watermark_policy_migrates_least_recently_used_files_down_to_the_low_mark() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(64 << 20, &[3, 4]);
    let mb = &mnts[1];
    let body = |i: u32| -> Vec<u8> { (0..3u32 << 20).map(|j| (j.wrapping_mul(31) ^ i) as u8).collect() };
    // Oldest first: keep-me (excluded), tiny (too small), then f1..f9.
    let mut files = vec![("keep-me".to_string(), body(100)), ("tiny".to_string(), vec![7u8; 4096])];
    files.extend((1..=9).map(|i| (format!("f{i}"), body(i))));
    for (i, (name, data)) in files.iter().enumerate() {
        let p = mb.path().join(name);
        std::fs::write(&p, data).unwrap();
        age(&p, 10_000 - i as u64 * 100);
    }
    let full = used_pct(mb.path());
    let (high, low) = (full - 5, full - 25);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hsm.toml");
    std::fs::write(
        &cfg,
        format!(
            "workers = 2\n[tier]\nurl = \"file://{}\"\n[policy]\nhigh_watermark = {high}\nlow_watermark = {low}\n\
             interval_secs = 1\nmin_size = \"64K\"\nmin_age_secs = 60\nexclude = [\"/keep*\"]\n",
            dir.path().join("tier").display()
        ),
    )
    .unwrap();
    let hsm = Hsm::start_with(c.socket(3), &["--config", cfg.to_str().unwrap()], &[]);
    wait_for("the policy round", || hsm.log().contains("policy round done"));
    let after = used_pct(mb.path());
    assert!(after <= low, "used {full}% -> {after}%, low mark {low}%:\n{}", hsm.log());

    let states: Vec<String> = files.iter().map(|(n, _)| state(&c, 4, &mb.path().join(n))).collect();
    assert_eq!((states[0].as_str(), states[1].as_str()), ("resident", "resident"), "excluded and small stay");
    let migrated = states[2..].iter().take_while(|s| *s == "migrated").count();
    assert!(
        (1..9).contains(&migrated) && states[2 + migrated..].iter().all(|s| s == "resident"),
        "the oldest files migrated, the newest resident: {states:?}\n{}",
        hsm.log()
    );
    for (name, data) in &files[2..2 + migrated] {
        assert!(std::fs::read(mb.path().join(name)).unwrap() == *data, "{name} recalled whole");
    }
    drop(hsm);
    drop(c);
}

/// A write larger than the volume's free space, with an HSM whose policy
/// would not run for an hour: the write's nospace event makes the HSM
/// migrate cold files at once, and the write succeeds.
#[test]
fn a_write_past_the_free_space_succeeds_once_the_nospace_event_freed_some() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4]);
    let mb = &mnts[1];
    let bs = 4096u64;
    let mut cold = Vec::new();
    while free_blocks(mb.path()) * bs > 4 << 20 {
        let p = mb.path().join(format!("cold{}", cold.len()));
        std::fs::write(&p, vec![cold.len() as u8 + 1; 2 << 20]).unwrap();
        age(&p, 100_000 - cold.len() as u64);
        cold.push(p);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hsm.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tier]\nurl = \"file://{}\"\n[policy]\nhigh_watermark = 99\nlow_watermark = 40\ninterval_secs = 3600\n",
            dir.path().join("tier").display()
        ),
    )
    .unwrap();
    let hsm = Hsm::start_with(c.socket(3), &["--config", cfg.to_str().unwrap()], &[]);
    wait_for("the HSM session", || c.dm_ok(4, &["sessions"]).contains("info=tidepool-hsm"));
    c.driver(4, &["wait-route", "--event", "nospace", "--node", "3"]);

    let new: Vec<u8> = (0..8u32 << 20).map(|i| (i >> 7) as u8).collect();
    let p = mb.path().join("new");
    std::fs::write(&p, &new).unwrap_or_else(|e| panic!("the write: {e}\n{}", hsm.log()));
    assert!(std::fs::read(&p).unwrap() == new, "every byte of the write");
    assert!(hsm.log().contains("nospace=true"), "a round for the nospace event:\n{}", hsm.log());
    assert_eq!(state(&c, 4, &cold[0]), "migrated", "the coldest file made room");
    assert!(used_pct(mb.path()) < 99);
    drop(hsm);
    drop(c);
}

/// `tidepool hsm status` on `node`, its output.
fn status(c: &common::Cluster, node: u32) -> String {
    let o = hsm_cmd(c.socket(node), &["status"]);
    assert!(o.status.success(), "status: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A migration stuck on a tier that stopped answering, with one worker and
/// a long tier timeout: `status` on another node shows it running; a cancel
/// from that node is answered at once (not queued behind it), the migrate
/// command fails as cancelled, the file stays resident; once the tier is
/// back, the file migrates and `status` counts it.
#[test]
fn a_cancel_from_another_node_stops_a_migration_stuck_on_the_tier() {
    if !common::fuse_available() || !test_support::skip::have_tool("moto_server") {
        return;
    }
    let moto = Moto::start("tp-cancel");
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4, 5]);
    let (mb, mc) = (&mnts[1], &mnts[2]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hsm.toml");
    std::fs::write(&cfg, "workers = 1\n[tier]\nurl = \"s3://tp-cancel/x\"\ntimeout_secs = 120\n").unwrap();
    let hsm = Hsm::start_with(c.socket(3), &["--config", cfg.to_str().unwrap()], &moto.env());
    wait_for("the HSM session", || c.dm_ok(5, &["sessions"]).contains("info=tidepool-hsm"));
    wait_for("the HSM's status line", || status(&c, 5).contains("hsm: v=1 "));

    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 241) as u8).collect();
    std::fs::write(mb.path().join("f"), &body).unwrap();
    let ino = std::fs::metadata(mb.path().join("f")).unwrap().ino();
    moto.signal(libc::SIGSTOP);
    let migrate = Command::new(TIDEPOOL)
        .args(["hsm", "--socket"])
        .arg(c.socket(4))
        .arg("migrate")
        .arg(mb.path().join("f"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("status to show the migration running", || status(&c, 5).contains(&format!("request:{ino}@")));

    let t0 = Instant::now();
    let o = hsm_cmd(c.socket(5), &["cancel", mc.path().join("f").to_str().unwrap()]);
    assert!(o.status.success(), "cancel: {}\n{}", String::from_utf8_lossy(&o.stderr), hsm.log());
    let cancel_took = t0.elapsed();
    let out = migrate.wait_with_output().unwrap();
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "cancel took {cancel_took:?}, the migrate's end {took:?} (tier timeout 120 s):\n{}",
        hsm.log()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.to_lowercase().contains("cancel"), "the migrate: {err}");
    assert_eq!(state(&c, 4, &mb.path().join("f")), "resident");
    wait_for("status to show it ended", || {
        let s = status(&c, 5);
        s.contains("failures=1") && s.contains("active=-")
    });
    let o = hsm_cmd(c.socket(5), &["cancel", mc.path().join("f").to_str().unwrap()]);
    assert!(!o.status.success(), "nothing to cancel is an error");

    moto.signal(libc::SIGCONT);
    let o = hsm_cmd(c.socket(4), &["migrate", mb.path().join("f").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = format!("migrated: {:>8} files {:>14} bytes", 1, 1 << 20);
    wait_for("status to count the migration", || {
        let s = status(&c, 5);
        s.contains("migrations=1") && s.contains(&want) && s.contains("active=-")
    });
    assert!(std::fs::read(mc.path().join("f")).unwrap() == body);
    drop(hsm);
    drop(c);
}

/// A recall stuck on a tier that stopped answering, on a file system whose
/// metadata service expels a node that keeps a token 2 s: a `stat` of the
/// file on another node waits for the recall's exclusive right (XDSM) and
/// the HSM's node, which says it holds the token under a DM right, is not
/// taken for dead. When the tier call's bound (6 s) ends the recall, the
/// reader gets EIO, the `stat` its answer, and with the tier back the next
/// read recalls.
#[test]
fn a_node_holding_a_dm_right_past_the_token_timeout_is_waited_for_not_expelled() {
    if !common::fuse_available() || !test_support::skip::have_tool("moto_server") {
        return;
    }
    let moto = Moto::start("tp-held");
    let (mnts, _vol, c) = common::standard_with_mounts_and(32 << 20, &[3, 4, 5], "token_timeout_secs = 2\n");
    let (mb, mc) = (&mnts[1], &mnts[2]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hsm.toml");
    std::fs::write(&cfg, "[tier]\nurl = \"s3://tp-held/x\"\ntimeout_secs = 6\n").unwrap();
    let hsm = Hsm::start_with(c.socket(3), &["--config", cfg.to_str().unwrap()], &moto.env());
    wait_for("the HSM session", || c.dm_ok(4, &["sessions"]).contains("info=tidepool-hsm"));
    c.driver(4, &["wait-route", "--event", "destroy", "--node", "3"]);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 233) as u8).collect();
    let f = mb.path().join("f");
    std::fs::write(&f, &body).unwrap();
    let ino = std::fs::metadata(&f).unwrap().ino();
    let o = hsm_cmd(c.socket(4), &["migrate", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    moto.signal(libc::SIGSTOP);
    let p = f.clone();
    let reader = std::thread::spawn(move || std::fs::read(p).map_err(|e| e.raw_os_error()));
    wait_for("status to show the recall", || status(&c, 5).contains(&format!("recall:{ino}@")));
    let t0 = Instant::now();
    let q = mc.path().join("f");
    let stat = std::thread::spawn(move || std::fs::metadata(q).map(|m| m.len()).map_err(|e| e.raw_os_error()));
    assert_eq!(reader.join().unwrap(), Err(Some(libc::EIO)), "the recall failed in its bound: {}", hsm.log());
    assert_eq!(stat.join().unwrap(), Ok(300_000), "the stat on node C got its answer");
    let waited = t0.elapsed();
    for n in 1..=5 {
        assert!(!c.log(n).contains("expelling"), "node {n} expelled a node that held a DM right:\n{}", c.log(n));
    }
    assert!(waited > Duration::from_secs(2), "the stat waited past the token timeout ({waited:?})");

    moto.signal(libc::SIGCONT);
    assert!(std::fs::read(mc.path().join("f")).unwrap() == body, "recalled once the tier answers");
    drop(hsm);
    drop(c);
}

/// 1,000 migrated files read at once from three nodes (four readers on
/// each, every node reading every file): every reader gets every byte,
/// and each file is recalled exactly once.
#[test]
fn a_thousand_migrated_files_read_at_once_from_three_nodes_are_each_recalled_once() {
    if !common::fuse_available() {
        return;
    }
    const N: usize = 1000;
    let (mnts, _vol, c) = standard_with_mounts(64 << 20, &[3, 4, 5]);
    let tier = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tier.path().display());
    let hsm = Hsm::start_with(c.socket(3), &["--tier", &url, "--workers", "4"], &[]);
    for n in [4, 5] {
        wait_for("the HSM session", || c.dm_ok(n, &["sessions"]).contains("info=tidepool-hsm"));
        c.driver(n, &["wait-route", "--event", "destroy", "--node", "3"]);
    }
    let body = |i: usize| -> Vec<u8> { format!("file {i} ").repeat(200 + i % 50).into_bytes() };
    let dir = mnts[1].path().join("many");
    std::fs::create_dir(&dir).unwrap();
    let names: Vec<String> = (0..N).map(|i| format!("many/f{i:04}")).collect();
    for (i, n) in names.iter().enumerate() {
        std::fs::write(mnts[1].path().join(n), body(i)).unwrap();
    }
    let paths: Vec<String> = names.iter().map(|n| mnts[2].path().join(n).display().to_string()).collect();
    let args: Vec<&str> = std::iter::once("migrate").chain(paths.iter().map(String::as_str)).collect();
    let o = hsm_cmd(c.socket(5), &args);
    assert!(o.status.success(), "migrate: {}\n{}", String::from_utf8_lossy(&o.stderr), hsm.log());
    assert_eq!(std::fs::read_dir(tier.path().join("fs1")).unwrap().count(), N, "an object per file");

    let start = Arc::new(std::sync::Barrier::new(12));
    let readers: Vec<_> = (0..12)
        .map(|r| {
            let (root, names, start) = (mnts[r % 3].path().to_path_buf(), names.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                // Each reader its own order, so the files are asked for at once.
                let mut bad = Vec::new();
                for k in 0..N {
                    let i = (k * 7 + r * 131) % N;
                    match std::fs::read(root.join(&names[i])) {
                        Ok(d) if d == body(i) => {}
                        other => bad.push((i, other.map(|d| d.len()).map_err(|e| e.to_string()))),
                    }
                }
                bad
            })
        })
        .collect();
    for r in readers {
        let bad = r.join().unwrap();
        assert!(bad.is_empty(), "files read wrong: {:?}", &bad[..bad.len().min(5)]);
    }
    let inos: Vec<u64> = names.iter().map(|n| std::fs::metadata(mnts[0].path().join(n)).unwrap().ino()).collect();
    wait_for("the HSM's log of every recall", || hsm.log().lines().filter(|l| l.contains(" recalled ")).count() >= N);
    let log = hsm.log();
    let mut per: HashMap<u64, usize> = HashMap::new();
    for l in log.lines().filter(|l| l.contains(" recalled ")) {
        let ino = l.split("ino=").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok());
        *per.entry(ino.expect("an ino in the recall line")).or_default() += 1;
    }
    let twice: Vec<_> = per.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "files recalled more than once: {twice:?}");
    assert!(inos.iter().all(|i| per.contains_key(i)), "every file recalled");
    drop(hsm);
    drop(c);
}

/// The HSM killed with SIGKILL in the middle of recalling a 64 MiB file
/// (its tier rate-limited so the recall takes seconds; `status` shows part
/// of it copied): the reader on another node keeps waiting; the restarted
/// HSM reclaims the session, gets the event again, redoes the recall from
/// the start, and the reader gets every byte.
#[test]
fn a_recall_cut_by_kill_9_is_redone_by_the_restarted_hsm() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(160 << 20, &[3, 4, 5]);
    let mb = &mnts[1];
    let tier = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    let body: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2246822519) >> 17) as u8).collect();
    let f = mb.path().join("large");
    std::fs::write(&f, &body).unwrap();
    let ino = std::fs::metadata(&f).unwrap().ino();
    let hsm = Hsm::ready(&c, tier.path(), &[4]);
    let o = hsm_cmd(c.socket(4), &["migrate", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(hsm);

    let cfg = tier.path().join("slow.toml");
    // The same tier directory, rate-limited.
    std::fs::write(&cfg, format!("[tier]\nurl = \"file://{}\"\nmax_mib_per_sec = 16\n", tier.path().display()))
        .unwrap();
    let slow = Hsm::start_with(c.socket(3), &["--config", cfg.to_str().unwrap()], &[]);
    let (tx, rx) = std::sync::mpsc::channel();
    let p = f.clone();
    std::thread::spawn(move || tx.send(std::fs::read(p).map_err(|e| e.raw_os_error())).unwrap());
    wait_for("status to show the recall part done", || {
        let s = status(&c, 5);
        let done = s.split(&format!("recall:{ino}@")).nth(1).and_then(|r| r.split([',', ' ', '\n']).next());
        done.and_then(|d| d.parse::<u64>().ok()).is_some_and(|d| d > 0 && d < size)
    });
    drop(slow); // SIGKILL, part of the data written
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "the read waits for the HSM");
    let again = Hsm::start(c.socket(3), tier.path());
    let got = rx.recv_timeout(T).unwrap();
    assert!(got.as_ref().is_ok_and(|d| *d == body), "every byte after the redone recall:\n{}", again.log());
    wait_for("the HSM's log of the redone recall", || again.log().contains(" recalled "));
    assert!(again.log().contains("reclaiming the HSM session"));
    let ls = String::from_utf8(hsm_cmd(c.socket(4), &["ls", f.to_str().unwrap()]).stdout).unwrap();
    assert!(ls.contains(": premigrated"), "{ls}");
    drop(again);
    drop(c);
}

/// The HSM's node itself dies (the HSM killed first, so a read on node B
/// waits on its orphaned session): once the session failure timeout (2 s
/// here) passes without a reclaim, the read gets EIO instead of hanging,
/// and the file is still a stub.
#[test]
fn a_read_waiting_on_a_dead_hsm_node_gets_eio_after_the_session_failure_timeout() {
    if !common::fuse_available() {
        return;
    }
    let vol = common::Volume::new(32 << 20);
    let mnts: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut specs = common::standard("session_failure_timeout_ms = 2000\n", false);
    for (id, m) in [3, 4].iter().zip(&mnts) {
        let s = specs.iter_mut().find(|s| s.id == *id).unwrap();
        s.extra.push_str(&common::fuse_mount_toml(m.path()));
    }
    let mut c = common::Cluster::start_with_fs(&specs, &vol.fs_toml(common::listen_port()));
    for (id, m) in [3, 4].iter().zip(&mnts) {
        c.adopt_mountpoint(m.path());
        c.wait_mounted(*id, m.path());
    }
    let tier = tempfile::tempdir().unwrap();
    let hsm = Hsm::ready(&c, tier.path(), &[4]);
    let f = mnts[1].path().join("cold");
    std::fs::write(&f, vec![9u8; 100_000]).unwrap();
    let o = hsm_cmd(c.socket(4), &["migrate", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(hsm);

    let (tx, rx) = std::sync::mpsc::channel();
    let p = f.clone();
    std::thread::spawn(move || tx.send(std::fs::read(p).map_err(|e| e.raw_os_error())).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "the read waits on the orphaned session");
    c.kill(3);
    let t0 = Instant::now();
    assert_eq!(rx.recv_timeout(T).unwrap(), Err(Some(libc::EIO)), "node 4 log:\n{}", c.log(4));
    assert!(t0.elapsed() >= Duration::from_millis(1500), "not before the timeout: {:?}", t0.elapsed());
    assert!(c.wait_log(4, "was not reclaimed within", T), "node 4 log:\n{}", c.log(4));
    let ls = String::from_utf8(hsm_cmd(c.socket(4), &["ls", f.to_str().unwrap()]).stdout).unwrap();
    assert!(ls.contains(": migrated"), "{ls}");
    drop(c);
    drop(vol);
}

/// A migrated file's tier object goes only when the file is really gone:
/// not while another name links it, not while a node has it open (after
/// its last name went), and then once the last open closes.
#[test]
fn a_tier_object_outlives_every_name_and_open_of_its_file() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4, 5]);
    let (mb, mc) = (&mnts[1], &mnts[2]);
    let tier = tempfile::tempdir().unwrap();
    let hsm = Hsm::ready(&c, tier.path(), &[4, 5]);
    let f = mb.path().join("f");
    std::fs::write(&f, vec![3u8; 70_000]).unwrap();
    let o = hsm_cmd(c.socket(4), &["migrate", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let obj = std::fs::read_dir(tier.path().join("fs1")).unwrap().next().unwrap().unwrap().path();
    let still_there = |what: &str| {
        std::thread::sleep(Duration::from_millis(500));
        assert!(obj.exists(), "the object went while {what}:\n{}", hsm.log());
    };
    std::fs::hard_link(&f, mb.path().join("g")).unwrap();
    std::fs::remove_file(&f).unwrap();
    still_there("another name linked the file");
    let open = std::fs::File::open(mc.path().join("g")).unwrap();
    std::fs::remove_file(mb.path().join("g")).unwrap();
    still_there("node C had the file open");
    drop(open);
    wait_for("the object to go with the file", || !obj.exists());
    drop(hsm);
    drop(c);
}

/// Writes during a premigration's copy (the tier rate-limited so the copy
/// takes seconds), on the HSM's own node and on another: both wait for the
/// copy's shared right (the HSM's DM calls go through a connection of their
/// own, so its node's mount waits like any other). When the copy is done the writers go first (no deadlock with
/// the HSM taking the right exclusive), the premigration sees the file
/// changed and records nothing, and the file holds the writes.
#[test]
fn writes_during_a_copy_wait_for_it_then_win_over_it() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(160 << 20, &[3, 4, 5]);
    let tier = tempfile::tempdir().unwrap();
    let cfg = tier.path().join("slow.toml");
    let url = format!("file://{}", tier.path().join("objects").display());
    std::fs::write(&cfg, format!("[tier]\nurl = \"{url}\"\nmax_mib_per_sec = 16\n")).unwrap();
    let hsm = Hsm::start_with(c.socket(3), &["--config", cfg.to_str().unwrap()], &[]);
    wait_for("the HSM's status line", || status(&c, 5).contains("hsm: v=1 "));
    let size = 48usize << 20;
    let f = mnts[1].path().join("f");
    std::fs::write(&f, vec![1u8; size]).unwrap();
    let ino = std::fs::metadata(&f).unwrap().ino();
    let pre = Command::new(TIDEPOOL)
        .args(["hsm", "--socket"])
        .arg(c.socket(4))
        .arg("premigrate")
        .arg(&f)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("status to show the copy under way", || {
        let s = status(&c, 5);
        let done = s.split(&format!("request:{ino}@")).nth(1).and_then(|r| r.split([',', ' ', '\n']).next());
        done.and_then(|d| d.parse::<u64>().ok()).is_some_and(|d| d > 0)
    });
    let writer = |m: &Path, off: u64, byte: u8| {
        let p = m.join("f");
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.write_all_at(&[byte; 4096], off).unwrap();
        })
    };
    let (wa, wb) = (writer(mnts[0].path(), 0, 7), writer(mnts[1].path(), 8192, 8));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!wa.is_finished() && !wb.is_finished(), "the writers wait for the copy");
    let out = pre.wait_with_output().unwrap();
    assert!(!out.status.success(), "the copy of a file written meanwhile is not recorded");
    wa.join().unwrap();
    wb.join().unwrap();
    assert_eq!(state(&c, 4, &f), "resident", "{}", hsm.log());
    let back = std::fs::read(mnts[2].path().join("f")).unwrap();
    assert!(back[..4096].iter().all(|&x| x == 7) && back[8192..12288].iter().all(|&x| x == 8));
    assert!(back[4096..8192].iter().all(|&x| x == 1) && back.len() == size);
    drop(hsm);
    drop(c);
}
