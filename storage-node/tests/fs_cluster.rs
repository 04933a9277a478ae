//! The file system as a cluster, all real processes: a storage node, a
//! `tidepool fs-manager`, and `tidepool mount` on several mount points, each
//! its own node. Checks the coherence Tidepool promises (a read on one node
//! that starts after a write on another returned sees it; names change
//! everywhere at once) and what survives a killed client and a killed
//! manager.

mod common;

use common::{Node, NQN};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn tidepool_bin() -> PathBuf {
    let sn = PathBuf::from(env!("CARGO_BIN_EXE_storage-node"));
    let p = sn.with_file_name("tidepool");
    assert!(p.exists(), "{} is missing: build the workspace first (cargo build --workspace)", p.display());
    p
}

/// A `tidepool` process whose stdout lines we can wait for.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    mnt: Option<PathBuf>,
}

impl Proc {
    fn start(args: &[String], ready: &str, mnt: Option<PathBuf>) -> Proc {
        let mut child = Command::new(tidepool_bin())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tidepool");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let p = Proc { child, lines, mnt };
        let t0 = Instant::now();
        loop {
            match p.lines.recv_timeout(Duration::from_secs(30).saturating_sub(t0.elapsed())) {
                Ok(l) if l.contains(ready) => return p,
                Ok(_) => {}
                Err(_) => panic!("`tidepool {}` did not print {ready:?}", args.join(" ")),
            }
        }
    }

    /// SIGKILL: the process gets no chance to give anything back.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.cleanup_mount();
    }

    fn cleanup_mount(&mut self) {
        if let Some(m) = self.mnt.take() {
            // A dead FUSE daemon leaves its mount point behind.
            let _ = Command::new("umount").arg("-l").arg(&m).output();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM: a mount gives back its tokens and unmounts.
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

struct Cluster {
    node: Node,
    manager_addr: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let node = Node::start("64M", &["--allow-any-host"]);
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new(tidepool_bin()).args(["mkfs", "--addr", &node.addr, "--nqn", NQN]).output().unwrap();
        assert!(o.status.success(), "mkfs: {}", String::from_utf8_lossy(&o.stderr));
        // The manager is restarted on this port.
        let port = common::listen_port();
        Cluster { node, manager_addr: format!("127.0.0.1:{port}"), dir }
    }

    fn manager(&self) -> Proc {
        // A short grace: the restart test outlasts it.
        let args = [
            "fs-manager",
            "--addr",
            &self.node.addr,
            "--nqn",
            NQN,
            "--listen",
            &self.manager_addr,
            "--orphan-grace-ms",
            "300",
        ];
        Proc::start(&args.map(String::from), "fs-manager: serving", None)
    }

    fn mount(&self, name: &str) -> (Proc, PathBuf) {
        let mnt = self.dir.path().join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let args = [
            "mount",
            "--addr",
            &self.node.addr,
            "--nqn",
            NQN,
            "--manager",
            &self.manager_addr,
            "--name",
            name,
            mnt.to_str().unwrap(),
        ];
        (Proc::start(&args.map(String::from), "tidepool: mounted", Some(mnt.clone())), mnt)
    }
}

/// A manager and two mounts of one file system, "a" and "b", each its own
/// process. Fields drop in order: the mounts, the manager, the volume.
struct TwoMounts {
    _pa: Proc,
    _pb: Proc,
    _m: Proc,
    a: PathBuf,
    b: PathBuf,
    _c: Cluster,
}

fn two_mounts() -> TwoMounts {
    let c = Cluster::new();
    let m = c.manager();
    let (pa, a) = c.mount("a");
    let (pb, b) = c.mount("b");
    TwoMounts { _pa: pa, _pb: pb, _m: m, a, b, _c: c }
}

fn sh(script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

fn ok(script: &str) -> String {
    let o = sh(script);
    assert!(o.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn two_nodes_see_each_other_s_changes_at_once() {
    if !common::fuse_available() {
        return;
    }
    let t = two_mounts();
    let (a, b) = (t.a.clone(), t.b.clone());
    let (a, b) = (a.display(), b.display());

    // Written and closed on A, read on B.
    ok(&format!("echo one > {a}/f"));
    assert_eq!(ok(&format!("cat {b}/f")), "one\n");
    // Still open for writing on A: B's read and stat take A's token, with
    // the size A set under it.
    let out =
        ok(&format!("exec 3>>{a}/f; printf two >&3; cat {b}/f; echo; printf three >&3; stat -c %s {b}/f; exec 3>&-"));
    assert_eq!(out, "one\ntwo\n12\n");
    // An overwrite inside the file on B, read on A (which read it before).
    ok(&format!("cat {a}/f >/dev/null; printf X | dd of={b}/f bs=1 seek=1 conv=notrunc status=none"));
    assert_eq!(ok(&format!("cat {a}/f")), "oXe\ntwothree");

    // Names: B has looked them up; A changes them; B sees the change at once.
    ok(&format!("ls -l {b}/ >/dev/null; test -e {b}/f; test ! -e {b}/g"));
    ok(&format!("mv {a}/f {a}/g"));
    ok(&format!("test ! -e {b}/f && test -e {b}/g"));
    ok(&format!("mkdir {a}/d && touch {a}/d/x && ln -s g {a}/s && ln {a}/g {a}/hard"));
    assert_eq!(ok(&format!("ls {b}/d")), "x\n");
    assert_eq!(ok(&format!("readlink {b}/s; stat -c %h {b}/g")), "g\n2\n");
    ok(&format!("rm {b}/d/x && rmdir {b}/d && chmod 600 {b}/g"));
    ok(&format!("test ! -e {a}/d"));
    assert_eq!(ok(&format!("stat -c %a {a}/hard")), "600\n");
    ok(&format!("truncate -s 3 {a}/hard"));
    assert_eq!(ok(&format!("cat {b}/g")), "oXe");
    // Special files keep their type and device number.
    ok(&format!("mknod {a}/null c 1 3 && mkfifo {a}/fifo"));
    assert_eq!(ok(&format!("stat -c '%F %t:%T' {b}/null; stat -c %F {b}/fifo")), "character special file 1:3\nfifo\n");

    // Both nodes write disjoint halves of one file at the same time: the
    // exclusive token moves back and forth, and nothing is lost.
    ok(&format!("truncate -s 1M {a}/shared"));
    let wa = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 0 63); do printf 'A%07d' $i | dd of={a}/shared bs=8 seek=$i conv=notrunc status=none || exit 1; done"
        ))
        .spawn()
        .unwrap();
    let wb = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 64 127); do printf 'B%07d' $i | dd of={b}/shared bs=8 seek=$i conv=notrunc status=none || exit 1; done"
        ))
        .spawn()
        .unwrap();
    assert!(wa.wait_with_output().unwrap().status.success());
    assert!(wb.wait_with_output().unwrap().status.success());
    let want: String = (0..128).map(|i| format!("{}{:07}", if i < 64 { 'A' } else { 'B' }, i)).collect();
    for m in [&a, &b] {
        let got = ok(&format!("head -c 1024 {m}/shared"));
        assert_eq!(got, want, "on {m}");
        assert_eq!(ok(&format!("stat -c %s {m}/shared")), "1048576\n");
    }
}

#[test]
fn a_killed_client_and_a_killed_manager_lose_nothing_acknowledged() {
    if !common::fuse_available() {
        return;
    }
    let c = Cluster::new();
    let mut mgr = c.manager();
    let (mut pa, a) = c.mount("a");
    let (_pb, b) = c.mount("b");
    let (ad, bd) = (a.display().to_string(), b.display().to_string());

    // fsync'd on A, then A dies (SIGKILL) while writing another file.
    ok(&format!("dd if=/dev/urandom of={ad}/keep bs=64k count=16 conv=fsync status=none"));
    let sum = ok(&format!("sha256sum < {ad}/keep"));
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg(format!("while :; do dd if=/dev/zero of={ad}/busy bs=64k count=4 conv=notrunc status=none; done"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    pa.kill();
    let _ = writer.kill();
    let _ = writer.wait();
    assert_eq!(ok(&format!("sha256sum < {bd}/keep")), sum, "fsync'd data of the killed client");
    // A's exclusive token on `busy` went with it: B can write the file.
    ok(&format!("echo from-b > {bd}/busy && cat {bd}/busy >/dev/null"));

    // Acknowledged metadata, and a size B set but never synced.
    ok(&format!("mkdir {bd}/acked && for i in $(seq 1 20); do touch {bd}/acked/f$i; done"));
    ok(&format!("dd if=/dev/zero of={bd}/grow bs=4k count=10 status=none"));

    // A file B has open and unlinked must outlive the manager's restart.
    ok(&format!("printf unlinked-but-open > {bd}/tmpfile"));
    let go = c.dir.path().join("go");
    let ready = c.dir.path().join("ready");
    let holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3< {bd}/tmpfile; rm {bd}/tmpfile; touch {r}; while [ ! -e {g} ]; do sleep 0.05; done; cat <&3",
            r = ready.display(),
            g = go.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !ready.exists() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }

    // The manager dies and comes back on the same address; B carries on
    // without remounting, and gives back the size it held.
    mgr.kill();
    let _mgr2 = c.manager();
    assert_eq!(ok(&format!("ls {bd}/acked | wc -l")).trim(), "20");
    assert_eq!(ok(&format!("sha256sum < {bd}/keep")), sum);
    ok(&format!("echo after > {bd}/after"));
    assert_eq!(ok(&format!("cat {bd}/after")), "after\n");
    // Past the restarted manager's grace for unlinked files: B said it
    // still has this one open, so it is still there.
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(&go, b"").unwrap();
    let out = holder.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "unlinked-but-open", "the open file survived the restart");

    // A node that mounts now sees all of it.
    let (_pc, cm) = c.mount("c");
    let cd = cm.display();
    assert_eq!(ok(&format!("stat -c %s {cd}/grow")), "40960\n");
    assert_eq!(ok(&format!("sha256sum < {cd}/keep")), sum);
    assert_eq!(ok(&format!("cat {cd}/after {cd}/busy")), "after\nfrom-b\n");
    assert_eq!(ok(&format!("ls {cd}/acked | wc -l")).trim(), "20");
}

fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()));
    if !found {
        eprintln!("SKIPPED: {tool} is missing (scripts/setup.sh installs it)");
    }
    found
}

#[test]
fn posix_tools_stress_ng_and_fio_verify_on_a_mount() {
    if !common::fuse_available() || !have("stress-ng") || !have("fio") {
        return;
    }
    let t = two_mounts();
    let (a, b) = (t.a.clone(), t.b.clone());

    // File-system stressors, one instance each, all at once for a bounded
    // time: names, links, renames, directories, open-then-unlink temp
    // files, locks, data through read/write, sendfile and copy_file_range.
    let st = a.join("stress");
    std::fs::create_dir(&st).unwrap();
    let o = Command::new("stress-ng")
        .current_dir(&st)
        .args(["--temp-path", st.to_str().unwrap(), "--timeout", "5s", "--metrics-brief"])
        .args(["--dir", "1", "--dirdeep", "1", "--link", "1", "--symlink", "1", "--rename", "1", "--dentry", "1"])
        .args(["--filename", "1", "--open", "1", "--chmod", "1", "--utime", "1", "--fstat", "1"])
        .args(["--hdd", "1", "--hdd-bytes", "4M", "--io", "1", "--copy-file", "1", "--sendfile", "1"])
        .args(["--readahead", "1", "--lockf", "1", "--flock", "1", "--fallocate", "1"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && !log.contains("fail:"), "stress-ng on the mount:\n{log}");
    assert!(log.contains("successful run completed"), "{log}");

    // fio writes with checksums on A and verifies them: 4 KiB random writes
    // from two jobs at once and 1 MiB sequential writes.
    let o = Command::new("fio")
        .args(["--directory", a.to_str().unwrap(), "--ioengine=psync", "--verify=crc32c", "--do_verify=1"])
        .args(["--verify_fatal=1", "--verify_state_save=0", "--group_reporting", "--output-format=terse"])
        .args(["--name=rand", "--size=4M", "--bs=4k", "--rw=randwrite", "--numjobs=2"])
        .args(["--name=seq", "--size=16M", "--bs=1M", "--rw=write"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fio --verify: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Terse v3: field 5 is the job's error code.
    for l in String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("3;")) {
        assert_eq!(l.split(';').nth(4), Some("0"), "fio reported an error: {l}");
    }
    // And B reads back what A's fio wrote, byte for byte.
    let (sa, sb) = (
        ok(&format!("cat {}/seq.0.0 | sha256sum", a.display())),
        ok(&format!("cat {}/seq.0.0 | sha256sum", b.display())),
    );
    assert_eq!(sa, sb, "the other node sees the same data");
    assert_eq!(ok(&format!("stat -c %s {}/seq.0.0", b.display())), "16777216\n");
}

#[test]
fn appends_from_two_nodes_at_once_never_overlap() {
    if !common::fuse_available() {
        return;
    }
    let t = two_mounts();
    let (a, b) = (t.a.clone(), t.b.clone());
    ok(&format!("touch {}/log", a.display()));
    // Each `>>` opens with O_APPEND; both nodes append 150 lines at once.
    let writers: Vec<_> = [(&a, 'A'), (&b, 'B')]
        .iter()
        .map(|(m, tag)| {
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for i in $(seq 1 150); do echo {tag}$i-0123456789 >> {}/log || exit 1; done",
                    m.display()
                ))
                .spawn()
                .unwrap()
        })
        .collect();
    for w in writers {
        assert!(w.wait_with_output().unwrap().status.success());
    }
    let text = ok(&format!("cat {}/log", b.display()));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 300, "every append is there, none overwritten");
    for tag in ['A', 'B'] {
        let mine: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(tag)).collect();
        let want: Vec<String> = (1..=150).map(|i| format!("{tag}{i}-0123456789")).collect();
        assert_eq!(mine, want, "{tag}'s lines whole and in order");
    }
}
