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

/// The lines `child` prints on its (piped) stdout, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    lines
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
        let lines = lines_of(&mut child);
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
        Cluster::with_volume("64M")
    }

    /// On a volume of `size` (a sparse file, so a large one costs nothing).
    fn with_volume(size: &str) -> Cluster {
        let node = Node::start(size, &["--allow-any-host"]);
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

#[test]
fn posix_tools_stress_ng_and_fio_verify_on_a_mount() {
    if !common::fuse_available() || !common::have_tool("stress-ng") || !common::have_tool("fio") {
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

/// A process holding locks on a mount: it prints a line when it holds
/// them and lets go step by step, one line of its stdin per step.
struct Holder {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Holder {
    fn start(program: &str, args: &[&str]) -> Holder {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a lock holder");
        let lines = lines_of(&mut child);
        Holder { child, lines }
    }

    fn expect(&self, prefix: &str) -> String {
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.starts_with(prefix) => l,
            other => panic!("lock holder said {other:?}, not {prefix:?}"),
        }
    }

    /// Next step.
    fn step(&mut self) {
        use std::io::Write;
        self.child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flock` of `path` held until the holder's stdin has a line.
fn flock_holder(path: &std::path::Path) -> Holder {
    let h = Holder::start("flock", &[path.to_str().unwrap(), "-c", "echo held; read x"]);
    h.expect("held");
    h
}

/// Waits until `cmd` succeeds (a lock another node let go of is free).
fn eventually_ok(cmd: &str) {
    let t0 = Instant::now();
    while !sh(cmd).status.success() {
        assert!(t0.elapsed() < Duration::from_secs(20), "`{cmd}` never succeeded");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A POSIX record lock of this process (`F_SETLK`/`F_SETLKW`/`F_GETLK`).
fn fcntl_lock(fd: &std::fs::File, cmd: i32, typ: i32, start: i64, len: i64) -> Result<libc::flock, i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is a valid value; the fields set are its public ones.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fcntl on an open descriptor with a pointer to a live flock.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) };
    if r == 0 {
        Ok(fl)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

const RECORD_HOLDER: &str = r#"
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
print("held", os.getpid(), flush=True)
sys.stdin.readline()
fcntl.lockf(fd, fcntl.LOCK_UN, 100, 0)
print("unlocked", flush=True)
sys.stdin.readline()
try:
    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 10, 0)
    print("got-shared", flush=True)
except OSError as e:
    print("busy", e.errno, flush=True)
sys.stdin.readline()
"#;

#[test]
fn flock_and_record_locks_hold_across_nodes() {
    if !common::fuse_available() || !common::have_tool("flock") || !common::have_tool("python3") {
        return;
    }
    let t = two_mounts();
    let (a, b) = (t.a.clone(), t.b.clone());
    ok(&format!("echo data > {}/f", a.display()));
    let (fa, fb) = (a.join("f"), b.join("f"));
    let fb_s = fb.display().to_string();

    // flock: held on A; B cannot take it, shared or exclusive, without
    // waiting; a waiter on B gets it when A lets go.
    let mut h = flock_holder(&fa);
    assert_eq!(sh(&format!("flock -n {fb_s} true")).status.code(), Some(1), "exclusive flock held on another node");
    assert_eq!(sh(&format!("flock -s -n {fb_s} true")).status.code(), Some(1), "shared flock against an exclusive one");
    let mut waiter =
        Command::new("flock").args([fb_s.as_str(), "-c", "echo got"]).stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(waiter.try_wait().unwrap().is_none(), "the waiter on B got the lock A holds");
    h.step();
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got\n", "B's waiter runs once A lets go");
    drop(h);
    // Shared flocks from both nodes at once.
    let _s = Holder::start("flock", &["-s", fa.to_str().unwrap(), "-c", "echo held; read x"]);
    _s.expect("held");
    ok(&format!("flock -s -n {fb_s} true"));
    drop(_s);

    // Record locks: bytes 0..99 write-locked by a process on A.
    let mut r = Holder::start("python3", &["-c", RECORD_HOLDER, fa.to_str().unwrap()]);
    let pid: i32 = r.expect("held").split_whitespace().nth(1).unwrap().parse().unwrap();
    let fd = std::fs::OpenOptions::new().read(true).write(true).open(&fb).unwrap();
    let got = fcntl_lock(&fd, libc::F_GETLK, libc::F_WRLCK, 50, 10).unwrap();
    assert_eq!(
        (got.l_type as i32, got.l_start, got.l_len, got.l_pid),
        (libc::F_WRLCK, 0, 100, pid),
        "F_GETLK on B reports A's holder"
    );
    assert_eq!(fcntl_lock(&fd, libc::F_SETLK, libc::F_WRLCK, 50, 10).unwrap_err(), libc::EAGAIN);
    assert_eq!(fcntl_lock(&fd, libc::F_SETLK, libc::F_RDLCK, 99, 1).unwrap_err(), libc::EAGAIN);
    fcntl_lock(&fd, libc::F_SETLK, libc::F_WRLCK, 100, 100).expect("past the held range");
    let free = fcntl_lock(&fd, libc::F_GETLK, libc::F_WRLCK, 300, 10).unwrap();
    assert_eq!(free.l_type as i32, libc::F_UNLCK);
    // F_SETLKW on B waits for A's unlock.
    let (tx, rx) = mpsc::channel();
    let fd2 = fd.try_clone().unwrap();
    std::thread::spawn(move || {
        // The descriptor goes back with the answer: closing any descriptor
        // of the file would let go of this process's locks on it (POSIX).
        let r = fcntl_lock(&fd2, libc::F_SETLKW, libc::F_WRLCK, 0, 10).map(|_| ());
        let _ = tx.send((r, fd2));
    });
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "F_SETLKW returned while A holds the range");
    r.step();
    r.expect("unlocked");
    let (granted, fd2) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(granted, Ok(()), "F_SETLKW granted after A's unlock");
    // Now B holds 0..9 for writing: A's shared lock there is refused.
    r.step();
    assert_eq!(r.expect("busy"), format!("busy {}", libc::EAGAIN));
    // A close lets go of this process's locks; then A gets its shared lock.
    drop(fd2);
    drop(fd);
    drop(r);
    let mut r2 = Holder::start("python3", &["-c", RECORD_HOLDER, fa.to_str().unwrap()]);
    r2.expect("held");
    r2.step();
    r2.expect("unlocked");
    r2.step();
    r2.expect("got-shared");
}

#[test]
fn locks_go_with_a_dead_node_and_outlive_a_manager_restart() {
    if !common::fuse_available() || !common::have_tool("flock") {
        return;
    }
    let c = Cluster::new();
    let mut mgr = c.manager();
    let (mut pa, a) = c.mount("a");
    let (_pb, b) = c.mount("b");
    let (_pc, cm) = c.mount("c");
    ok(&format!("echo data > {}/f", a.display()));
    let (fa, fb, fc) = (a.join("f"), b.join("f"), cm.join("f"));

    // A node killed while its process holds a lock: the lock goes with it.
    let _h = flock_holder(&fa);
    assert_eq!(sh(&format!("flock -n {} true", fb.display())).status.code(), Some(1));
    pa.kill();
    eventually_ok(&format!("flock -n {} true", fb.display()));

    // Held on B across a manager restart: B declares it again, and C,
    // asking after the restart, still finds it taken.
    let mut hb = flock_holder(&fb);
    mgr.kill();
    let _mgr2 = c.manager();
    // Past the restarted manager's lock grace (300 ms here).
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(sh(&format!("flock -n {} true", fc.display())).status.code(), Some(1), "the lock outlived the restart");
    hb.step();
    eventually_ok(&format!("flock -n {} true", fc.display()));
}

/// Free blocks of the file system, as a mount's statfs reports them.
fn free_blocks(m: &std::path::Path) -> i64 {
    ok(&format!("stat -f -c %f {}", m.display())).trim().parse().unwrap()
}

/// Waits until the file system has at least `want` free blocks.
fn eventually_free(m: &std::path::Path, want: i64, what: &str) {
    let t0 = Instant::now();
    while free_blocks(m) < want {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what}: {} free blocks, want {want}", free_blocks(m));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process on a mount with `path` open: says "open", then at each step
/// prints the checksum of what it reads through its descriptor.
fn open_holder(path: &std::path::Path) -> Holder {
    let script = format!("exec 3< {}; echo open; while read x; do sha256sum <&3; done", path.display());
    let h = Holder::start("sh", &["-c", &script]);
    h.expect("open");
    h
}

#[test]
fn unlinked_open_files_live_until_every_node_lets_go() {
    if !common::fuse_available() {
        return;
    }
    let c = Cluster::new();
    let mut mgr = c.manager();
    let (mut pa, a) = c.mount("a");
    let (mut pb, b) = c.mount("b");
    let (_pc, cm) = c.mount("c");
    let base = free_blocks(&cm);
    // 4 MiB: 1,024 blocks of 4 KiB; a few blocks of slack for directories.
    let (used, slack) = (1024, 16);
    let big = |m: &std::path::Path, name: &str| {
        ok(&format!("dd if=/dev/urandom of={}/{name} bs=1M count=4 conv=fsync status=none", m.display()));
        ok(&format!("sha256sum < {}/{name}", m.display()))
    };

    // Open on A, unlinked on B: the name is gone everywhere, A reads on,
    // and the space comes back only when A closes it.
    let sum = big(&a, "one");
    let mut h = open_holder(&a.join("one"));
    ok(&format!("rm {}/one", b.display()));
    ok(&format!("test ! -e {}/one && test ! -e {}/one", a.display(), cm.display()));
    assert!(free_blocks(&cm) <= base - used + slack, "freed while open on another node");
    h.step();
    assert_eq!(format!("{}\n", h.expect("")), sum, "A reads the unlinked file whole");
    drop(h);
    eventually_free(&cm, base - slack, "the last close on A frees the unlinked file");

    // Open on A, unlinked, and A dies: the manager drops the dead node's
    // opens, and the file goes.
    big(&a, "two");
    let _h2 = open_holder(&a.join("two"));
    ok(&format!("rm {}/two", cm.display()));
    assert!(free_blocks(&cm) <= base - used + slack);
    pa.kill();
    eventually_free(&cm, base - slack, "a dead node's opens are dropped");

    // Open on B, unlinked; the manager and B both die. Nobody declares the
    // open to the restarted manager, so after its grace (300 ms) the
    // orphan is freed.
    big(&b, "three");
    let _h3 = open_holder(&b.join("three"));
    ok(&format!("rm {}/three", cm.display()));
    mgr.kill();
    pb.kill();
    let _mgr2 = c.manager();
    eventually_free(&cm, base - slack, "an orphan nobody reopened is freed after the grace");
}

/// fio with `args` on `file`; fails the test if fio or its verify fails.
fn fio(file: &std::path::Path, args: &[&str]) -> String {
    let o = Command::new("fio")
        .arg("--name=t")
        .arg(format!("--filename={}", file.display()))
        .args(["--bs=4k", "--ioengine=psync", "--verify=crc32c", "--verify_fatal=1", "--randrepeat=1"])
        .arg("--verify_state_save=0")
        .args(args)
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "fio {args:?} failed:\n{out}");
    assert!(!out.contains("verify: bad") && out.contains("err= 0:"), "fio {args:?}:\n{out}");
    out
}

/// Files of any size: random 4 KiB writes all over a 1 TiB sparse file
/// (one extent each, far past what the inode holds), random writes over a
/// 1 GiB file fio preallocates with fallocate, both verified by fio, and
/// verified again after the manager is killed and replays its journal.
#[test]
fn random_writes_over_huge_sparse_files_verify_and_survive_a_replay() {
    if !common::fuse_available() || !common::have_tool("fio") {
        return;
    }
    let c = Cluster::with_volume("2G");
    let mut mgr = c.manager();
    let (_pa, a) = c.mount("a");
    let (_pb, b) = c.mount("b");
    // A 1 TiB file with nothing allocated, then 1,024 random 4 KiB writes
    // all over it: each far from the others, an extent each.
    ok(&format!("truncate -s 1T {}/sparse", a.display()));
    let sparse = ["--size=1T", "--rw=randwrite", "--io_size=4M", "--fallocate=none"];
    fio(&a.join("sparse"), &sparse);
    // Only the 64 KiB chunks around the writes are allocated.
    let st = ok(&format!("stat -c '%s %b' {}/sparse", b.display()));
    let (size, sectors) = st.trim().split_once(' ').unwrap();
    assert_eq!(size, "1099511627776", "{st}");
    assert!(sectors.parse::<u64>().unwrap() * 512 <= 1024 * 65536, "a sparse file: {st}");
    let big = ["--size=1G", "--rw=randwrite", "--io_size=16M"];
    fio(&b.join("big"), &big);
    // The extents are the manager's: kill it, let the next one replay.
    mgr.kill();
    let _mgr2 = c.manager();
    fio(&b.join("sparse"), &[&sparse[..], &["--verify_only"]].concat());
    fio(&a.join("big"), &[&big[..], &["--verify_only"]].concat());
}

/// fallocate(1) on a mount: mode 0, `--keep-size`, `--punch-hole`,
/// `--zero-range`, and ENOSPC that changes nothing.
#[test]
fn fallocate_modes_on_a_mount() {
    if !common::fuse_available() || !common::have_tool("fallocate") {
        return;
    }
    let c = Cluster::new();
    let _m = c.manager();
    let (_pa, a) = c.mount("a");
    let (_pb, b) = c.mount("b");
    let (fa, fb) = (a.join("f"), b.join("f"));
    let (fas, fbs) = (fa.display().to_string(), fb.display().to_string());
    let stat = |p: &str| ok(&format!("stat -c '%s %b' {p}"));
    ok(&format!("fallocate -l 1M {fas}"));
    assert_eq!(stat(&fbs), "1048576 2048\n", "mode 0: size and 512-byte blocks");
    ok(&format!("fallocate -n -o 1M -l 1M {fas}"));
    assert_eq!(stat(&fbs), "1048576 4096\n", "KEEP_SIZE: blocks past the end, same size");
    assert_eq!(std::fs::read(&fb).unwrap(), vec![0u8; 1 << 20], "preallocated space reads as zeroes");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&fa, &data).unwrap();
    // Punch 6 KiB + 7 KiB from 6 KiB in: blocks 2 and 3 freed, edges zeroed.
    ok(&format!("fallocate -p -o 6144 -l 13312 {fbs}"));
    let mut want = data.clone();
    want[6144..6144 + 13312].fill(0);
    assert_eq!(std::fs::read(&fa).unwrap(), want, "punched range reads as zeroes, the rest intact");
    assert_eq!(stat(&fas), "1048576 2032\n", "the rewrite kept 256 blocks; two whole ones freed");
    ok(&format!("fallocate -z -o 100000 -l 50000 {fas}"));
    want[100_000..150_000].fill(0);
    assert_eq!(std::fs::read(&fb).unwrap(), want, "zeroed range");
    ok(&format!("fallocate -z -o 1048000 -l 1000 {fas}"));
    assert_eq!(stat(&fbs).split(' ').next(), Some("1049000"), "ZERO_RANGE past the end grows the file");
    // No room: refused, and nothing allocated.
    let free = free_blocks(&b);
    let o = sh(&format!("fallocate -l 1G {}/huge", a.display()));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("No space left"), "{o:?}");
    assert_eq!(free_blocks(&b), free, "ENOSPC allocated nothing");
    assert_eq!(stat(&format!("{}/huge", b.display())), "0 0\n");
}

const WAITER: &str = r#"
import fcntl, os, sys, signal
fd = os.open(sys.argv[1], os.O_RDWR)
mine, other, alarm = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fcntl.lockf(fd, fcntl.LOCK_EX, 10, mine)
print("held", flush=True)
sys.stdin.readline()
def ring(s, f):
    raise TimeoutError()
signal.signal(signal.SIGALRM, ring)
signal.alarm(alarm)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX, 10, other)
    print("got", flush=True)
except TimeoutError:
    print("interrupted", flush=True)
except OSError as e:
    print("error", e.errno, flush=True)
sys.stdin.readline()
"#;

/// Waits for locks end as they do on a local file system: a cycle of
/// waits across two nodes is refused with EDEADLK, a signal ends a wait
/// (EINTR, the handler runs), and SIGKILL ends a waiting process at once.
#[test]
fn lock_waits_end_with_signals_and_deadlocks_are_refused() {
    if !common::fuse_available() || !common::have_tool("python3") {
        return;
    }
    let t = two_mounts();
    ok(&format!("head -c 4096 /dev/zero > {}/f", t.a.display()));
    let (fa, fb) = (t.a.join("f"), t.b.join("f"));
    let waiter = |path: &std::path::Path, mine: &str, other: &str, alarm: &str| {
        let h = Holder::start("python3", &["-c", WAITER, path.to_str().unwrap(), mine, other, alarm]);
        h.expect("held");
        h
    };
    // P1 on A holds 0..9 and waits for 10..19, which P2 on B holds; P2
    // asking for 0..9 would close the cycle.
    let mut p1 = waiter(&fa, "0", "10", "3");
    let mut p2 = waiter(&fb, "10", "0", "0");
    p1.step();
    std::thread::sleep(Duration::from_millis(300));
    p2.step();
    assert_eq!(p2.expect("error"), format!("error {}", libc::EDEADLK), "a deadlock across two nodes");
    // P1 still waits; its alarm's signal ends the wait.
    assert_eq!(p1.expect("interrupted"), "interrupted", "SIGALRM ends F_SETLKW");
    // P3 waits for P2's range and is killed: it goes, it does not hang.
    let mut p3 = waiter(&fb, "50", "10", "0");
    p3.step();
    std::thread::sleep(Duration::from_millis(300));
    assert!(p3.child.try_wait().unwrap().is_none(), "P3 waits for P2");
    let _ = p3.child.kill();
    let t0 = Instant::now();
    while p3.child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "a process killed while waiting for a lock never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(p1);
    drop(p2);
}
