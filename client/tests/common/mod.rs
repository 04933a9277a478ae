//! A cluster of real node daemons (`tidepool node run`) on loopback for the
//! integration tests, with helpers to run `tidepool dm ...` and the event-source
//! test driver against a node. Every process started here is killed by its PID when
//! the cluster is dropped.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use libdmapi::Dm;

pub mod cluster_up;
pub mod peer;

pub const TIDEPOOL: &str = env!("CARGO_BIN_EXE_tidepool");
pub const DRIVER: &str = env!("CARGO_BIN_EXE_tidepool-dm-testdriver");
pub const KEY: &str = "integration-test-cluster-key";

/// The IP the test nodes' DM transport listens on: loopback, or
/// `TIDEPOOL_TEST_DM_IP` (an RDMA device's address, so the same tests run
/// over RDMA; hw-tests does this inside the soft-RoCE guest).
pub fn dm_ip() -> String {
    std::env::var("TIDEPOOL_TEST_DM_IP").unwrap_or_else(|_| "127.0.0.1".into())
}

/// With `TIDEPOOL_TEST_DM_RDMA=1` a cluster is only ready once every node
/// reaches every peer over RDMA, so a silent fall back to TCP fails the test.
pub fn want_rdma() -> bool {
    std::env::var("TIDEPOOL_TEST_DM_RDMA").is_ok_and(|v| v == "1")
}

/// Roles and options of one node in a test cluster.
#[derive(Clone)]
pub struct Spec {
    pub id: u32,
    pub mounts: Vec<u64>,
    /// Extra TOML lines for this node.
    pub extra: String,
}

pub struct NodeProc {
    pub id: u32,
    pub port: u16,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<NodeProc>,
    others: Vec<Child>,
    /// Mount points the nodes host (detached at drop if a killed node left one).
    mountpoints: Vec<PathBuf>,
}

/// A volume for the cluster's file system 1: an in-process storage node
/// (memory namespace, NVMe/TCP on loopback) with a Tidepool file system on it.
pub struct Volume {
    pub addr: std::net::SocketAddr,
    pub nqn: String,
    _target: storage_node::Running,
}

impl Volume {
    /// A fresh volume of `size` bytes with a file system made on it.
    pub fn new(size: u64) -> Volume {
        let nqn = format!("nqn.2026-11.io.tidepool:test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let cfg = storage_node::config::Config::single_memory(&nqn, size, "127.0.0.1:0");
        let target = storage_node::start(&cfg).unwrap();
        let addr = target.listeners[0].addr;
        let ctrl = nvmf::Controller::connect(&addr.to_string(), &nqn, &nvmf::ConnectOpts::default()).unwrap();
        let ctrl = std::sync::Arc::new(ctrl);
        let dev = tpfs::blockdev::NvmfDev::new(ctrl.clone(), 1, 4096).unwrap();
        tpfs::mkfs::mkfs(&dev, &Default::default()).unwrap();
        drop(dev);
        if let Ok(ctrl) = std::sync::Arc::try_unwrap(ctrl) {
            let _ = ctrl.shutdown();
        }
        Volume { addr, nqn, _target: target }
    }

    /// The `[[filesystems]]` lines that name this volume, with the manager
    /// node serving metadata on `meta_port`.
    pub fn fs_toml(&self, meta_port: u16) -> String {
        format!("addr = \"{}\"\nnqn = \"{}\"\nmeta_addr = \"127.0.0.1:{meta_port}\"\n", self.addr, self.nqn)
    }
}

/// The [`standard`] cluster with file system 1 on a fresh volume of `size`
/// bytes, each node of `hosts` hosting a FUSE mount of it: those mounts'
/// points (mounted, in the order of `hosts`), the volume and the cluster.
/// Bound in this order, the cluster goes first at the end of a test, then
/// the volume, then the mount points.
pub fn standard_with_mounts(size: u64, hosts: &[u32]) -> (Vec<tempfile::TempDir>, Volume, Cluster) {
    standard_with_mounts_and(size, hosts, "")
}

/// [`standard_with_mounts`] with `fs_extra` added to the file system's
/// `[[filesystems]]` table.
pub fn standard_with_mounts_and(size: u64, hosts: &[u32], fs_extra: &str) -> (Vec<tempfile::TempDir>, Volume, Cluster) {
    let vol = Volume::new(size);
    let mnts: Vec<tempfile::TempDir> = hosts.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut specs = standard("", false);
    for (id, m) in hosts.iter().zip(&mnts) {
        specs.iter_mut().find(|s| s.id == *id).expect("a node of the standard cluster").extra =
            fuse_mount_toml(m.path());
    }
    let mut c = Cluster::start_with_fs(&specs, &format!("{}{fs_extra}", vol.fs_toml(listen_port())));
    for (id, m) in hosts.iter().zip(&mnts) {
        c.adopt_mountpoint(m.path());
        c.wait_mounted(*id, m.path());
    }
    (mnts, vol, c)
}

/// The `[[fuse_mounts]]` table of a node hosting a mount of fs 1 at `path`.
pub fn fuse_mount_toml(path: &Path) -> String {
    format!("[[fuse_mounts]]\nfs = 1\npath = \"{}\"\n", path.display())
}

/// A port for a server that may be restarted on it (see
/// `test_support::listen_port`).
pub fn listen_port() -> u16 {
    test_support::listen_port(&dm_ip())
}

static N: AtomicU32 = AtomicU32::new(0);

/// The standard five-node layout: 1 session manager, 2 manager of fs 1, 3 = "A"
/// (HSM session node), 4 = "B" (source), 5 = "C" (audit session node); A, B and C
/// mount fs 1. `late` adds node 6, which does not mount at start.
pub fn standard(extra: &str, late: bool) -> Vec<Spec> {
    let mut v: Vec<Spec> = (1..=5)
        .map(|id| Spec { id, mounts: if id >= 3 { vec![1] } else { vec![] }, extra: extra.to_string() })
        .collect();
    if late {
        v.push(Spec { id: 6, mounts: vec![], extra: extra.to_string() });
    }
    v
}

impl Cluster {
    /// Starts every node of `specs` (session manager 1, fs 1 managed by 2) and
    /// waits until each serves its API and sees every peer alive.
    pub fn start(specs: &[Spec]) -> Cluster {
        Cluster::start_with_fs(specs, "")
    }

    /// [`start`](Self::start), with `fs_toml` added to file system 1's
    /// `[[filesystems]]` table (its volume: [`Volume::fs_toml`]).
    pub fn start_with_fs(specs: &[Spec], fs_toml: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "tidepool-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = specs.iter().map(|_| listen_port()).collect();
        let mut nodes = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let mut t = String::new();
            writeln!(t, "node_id = {}", s.id).unwrap();
            writeln!(t, "listen = \"{}:{}\"", dm_ip(), ports[i]).unwrap();
            writeln!(t, "api_socket = \"{}\"", dir.join(format!("node{}.sock", s.id)).display()).unwrap();
            writeln!(t, "cluster_key = \"{KEY}\"").unwrap();
            writeln!(t, "session_manager = 1").unwrap();
            writeln!(t, "mounts = {:?}", s.mounts).unwrap();
            writeln!(t, "heartbeat_interval_ms = 100").unwrap();
            // Generous enough that a loaded 2-CPU machine (parallel tests, builds) never
            // looks like a crash; the failure tests wait this long once.
            writeln!(t, "failure_timeout_ms = 1500").unwrap();
            t += &s.extra;
            t += "\n";
            for (j, p) in specs.iter().enumerate() {
                if p.id != s.id {
                    writeln!(t, "[[peers]]\nid = {}\naddr = \"{}:{}\"", p.id, dm_ip(), ports[j]).unwrap();
                }
            }
            writeln!(t, "[[filesystems]]\nid = 1\nmanager = 2\n{fs_toml}").unwrap();
            let config = dir.join(format!("node{}.toml", s.id));
            std::fs::write(&config, t).unwrap();
            nodes.push(NodeProc {
                id: s.id,
                port: ports[i],
                config,
                socket: dir.join(format!("node{}.sock", s.id)),
                log: dir.join(format!("node{}.log", s.id)),
                child: None,
            });
        }
        let mut c = Cluster { dir, nodes, others: Vec::new(), mountpoints: Vec::new() };
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        let ids: Vec<u32> = c.nodes.iter().map(|n| n.id).collect();
        for id in ids.clone() {
            c.wait_ready(id);
        }
        for id in ids {
            c.wait_peers(id);
        }
        c
    }

    fn idx(&self, id: u32) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    fn spawn(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log).unwrap();
        let child = Command::new(TIDEPOOL)
            .args(["node", "run", "--config"])
            .arg(&n.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        n.child = Some(child);
    }

    pub fn node(&self, id: u32) -> &NodeProc {
        &self.nodes[self.idx(id)]
    }

    pub fn socket(&self, id: u32) -> &Path {
        &self.node(id).socket
    }

    /// Waits for the node's API to answer.
    pub fn wait_ready(&self, id: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(dm) = Dm::connect(self.socket(id)) {
                if dm.status().is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "node {id} did not start; log:\n{}", self.log(id));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until node `id` sees every other running node alive.
    pub fn wait_peers(&self, id: u32) {
        let want: Vec<u32> = self.nodes.iter().filter(|n| n.id != id && n.child.is_some()).map(|n| n.id).collect();
        let dm = Dm::connect(self.socket(id)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = dm.status().unwrap();
            let (up, rdma) = (st.peers_up, st.peers_rdma);
            if want.iter().all(|w| up.contains(w) && (!want_rdma() || rdma.contains(w))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} sees only {up:?} of {want:?} (over RDMA: {rdma:?}, wanted: {}); log:\n{}",
                want_rdma(),
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Takes `path` as a mount point of this cluster's nodes: detached at drop
    /// should a killed node leave its mount behind, and removed.
    pub fn adopt_mountpoint(&mut self, path: &Path) {
        self.mountpoints.push(path.to_path_buf());
    }

    /// Waits until node `id` hosts a mounted file system at `path`.
    pub fn wait_mounted(&self, id: u32, path: &Path) {
        let dm = Dm::connect(self.socket(id)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let st = dm.status().unwrap();
            let m = st.fuse.iter().find(|m| Path::new(&m.path) == path);
            match m.map(|m| m.state.as_str()) {
                Some("mounted") => return,
                Some(s) if s.starts_with("failed") => {
                    panic!("node {id}: mount of {}: {s}; log:\n{}", path.display(), self.log(id))
                }
                _ => {}
            }
            assert!(Instant::now() < deadline, "node {id} did not mount {}; log:\n{}", path.display(), self.log(id));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops node `id` as an operator would (SIGTERM), waiting for it to exit.
    pub fn stop(&mut self, id: u32) -> std::process::ExitStatus {
        let i = self.idx(id);
        let mut c = self.nodes[i].child.take().expect("node running");
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("node {id} did not stop on SIGTERM; log:\n{}", self.log(id));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the node's daemon (by PID).
    pub fn kill(&mut self, id: u32) {
        let i = self.idx(id);
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed node again with the same configuration.
    pub fn restart(&mut self, id: u32) {
        let i = self.idx(id);
        self.spawn(i);
        self.wait_ready(id);
    }

    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    /// Waits until node `id`'s log contains `needle`.
    pub fn wait_log(&self, id: u32, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log(id).contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `tidepool dm --socket <node> args...`
    pub fn dm(&self, id: u32, args: &[&str]) -> Output {
        Command::new(TIDEPOOL).arg("dm").arg("--socket").arg(self.socket(id)).args(args).output().unwrap()
    }

    /// `tidepool dm ...`, which must succeed; its stdout.
    pub fn dm_ok(&self, id: u32, args: &[&str]) -> String {
        let o = self.dm(id, args);
        assert!(o.status.success(), "dm {args:?} on node {id} failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// The test driver against node `id`, which must succeed; its stdout.
    pub fn driver(&self, id: u32, args: &[&str]) -> String {
        let o = Command::new(DRIVER).arg("--socket").arg(self.socket(id)).args(args).output().unwrap();
        assert!(o.status.success(), "driver {args:?} on node {id} failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// The test driver, in the background (a blocked file operation).
    pub fn driver_bg(&mut self, id: u32, args: &[&str]) -> Child {
        Command::new(DRIVER)
            .arg("--socket")
            .arg(self.socket(id))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Starts `tidepool dm listen` on node `id` (its stderr goes to a file beside
    /// the node logs: a listener killed with its node complains there).
    pub fn listen(&self, id: u32, args: &[&str]) -> Listener {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let err = std::fs::File::create(self.dir.join(format!("listener{id}-{n}.log"))).unwrap();
        let mut child = Command::new(TIDEPOOL)
            .arg("dm")
            .arg("--socket")
            .arg(self.socket(id))
            .arg("listen")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut l = Listener { child, lines: rx, seen: Vec::new(), sid: 0 };
        let s = l.expect("SESSION ", Duration::from_secs(20));
        l.sid = field(&s, "sid").parse().unwrap();
        l.expect("READY", Duration::from_secs(20));
        l
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in &self.mountpoints {
            // A mount a killed node left behind (ENOTCONN) must not outlive the test.
            node::mounts::detach_dead(m);
            let _ = std::fs::remove_dir(m);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running `tidepool dm listen`.
pub struct Listener {
    pub child: Child,
    lines: Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
    pub sid: i32,
}

impl Listener {
    /// Waits for the next line starting with `prefix` (earlier lines are kept in `seen`).
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        self.expect_where(|l| l.starts_with(prefix), timeout, prefix)
    }

    pub fn expect_where(&mut self, f: impl Fn(&str) -> bool, timeout: Duration, what: &str) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("listener: no line {what:?} in time; saw {:#?}", self.seen),
            }
        }
    }

    /// Lines that arrive within `d` (for checking that nothing else came).
    pub fn drain(&mut self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut v = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(l.clone());
            v.push(l);
        }
        v
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of `key=` in a `KEY=value` line.
pub fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_string()
}

/// Waits for a background driver and returns its OUTCOME line.
pub fn outcome(c: Child) -> String {
    let o = c.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "driver failed: {s} {}", String::from_utf8_lossy(&o.stderr));
    s.lines().find(|l| l.starts_with("OUTCOME")).unwrap_or_else(|| panic!("no outcome in {s:?}")).to_string()
}

#[allow(unused_imports)] // each test binary uses a different subset
pub use test_support::fuse_available;
