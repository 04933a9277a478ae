//! `tidepool cluster up|status|down`: a whole cluster on this machine in
//! one command, as Ceph's `vstart.sh` is for Ceph. `up` starts a storage
//! node on a file-backed volume, makes the file system if the volume has
//! none, and starts N node daemons (node 1 the session manager, node 2 the
//! file system's manager, serving its metadata; every node mounting it),
//! then returns once every mount is up. What it started is recorded in
//! `DIR/cluster.json` (pids and start times), so `status` can report on it
//! and `down` can stop exactly those processes (each checked to still be
//! the same process before it is signalled). `DIR/cluster.env` gives scripts the mounts and DM sockets.
//! With `--etcd` it also starts a local etcd (loopback ports, data in
//! `DIR/etcd`) and the nodes decide membership through its leases, as a
//! cluster of several machines does. With `--netns` every node daemon runs
//! in a network namespace of its own with its own addresses (see
//! [`crate::netns`]); `partition`/`heal` cut and restore a node's cluster
//! link, and `exec` runs a command as one of the hosts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

/// `tidepool cluster ...`
#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Start a storage node and N node daemons that mount the file system.
    Up(UpArgs),
    /// Show the nodes (pids, roles, mounts, sessions).
    Status {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Print the same as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Stop what `up` started, unmounting every mount.
    Down {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Stop the storage node (SIGTERM, or SIGKILL with --kill) and start it
    /// again on the same volume and address: the nodes connect again and go
    /// on, and the reservations come back from its PTPL file.
    RestartStorage {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long)]
        kill: bool,
    },
    /// With `up --netns`: cut node N's cluster link (etcd, peers, the
    /// metadata service); its storage link stays up.
    Partition {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long)]
        node: u32,
    },
    /// With `up --netns`: restore node N's cluster link.
    Heal {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long)]
        node: u32,
    },
    /// With `up --netns`: run a command in node N's network namespace (or,
    /// without --node, the hub's, where etcd and the storage node are).
    Exec {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long)]
        node: Option<u32>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

const DEFAULT_DIR: &str = "/tmp/tidepool-cluster";
const NQN: &str = "nqn.2026-11.io.tidepool:vol0";

/// `tidepool cluster up`
#[derive(Args)]
pub struct UpArgs {
    /// Node daemons.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Where the volume, configurations, sockets, mounts and logs go.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Volume size (created if missing; an existing volume and its file
    /// system are kept).
    #[arg(long, default_value = "256M")]
    size: String,
    /// Start a local etcd and have the nodes join through it (membership
    /// by lease) instead of the static configuration alone.
    #[arg(long)]
    etcd: bool,
    /// With --etcd: the membership lease (etcd counts whole seconds, at least 2).
    #[arg(long, default_value_t = 3000)]
    lease_ttl_ms: u64,
    /// Run each node daemon in a network namespace of its own (root only):
    /// separate cluster and storage networks through bridges in a hub
    /// namespace, which holds etcd and the storage node.
    #[arg(long)]
    netns: bool,
}

/// The etcd `up --etcd` started.
#[derive(Debug, Serialize, Deserialize)]
struct EtcdState {
    proc_: Proc,
    endpoint: String,
}

/// The cluster name the nodes join under.
const CLUSTER: &str = "tidepool";

/// What `up` started.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    storage: Proc,
    storage_addr: String,
    nqn: String,
    nodes: Vec<NodeState>,
    #[serde(default)]
    etcd: Option<EtcdState>,
    /// With --netns: the namespaces' name prefix.
    #[serde(default)]
    netns: Option<String>,
}

impl State {
    /// Runs `f` where the storage node and etcd are reachable: in the hub
    /// namespace with --netns, else right here.
    fn at_hub<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        match &self.netns {
            Some(p) => crate::netns::within(&crate::netns::hub(p), f),
            None => f(),
        }
    }

    /// Runs `f` as node `i`'s host.
    fn at_node<T: Send>(&self, i: u32, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        match &self.netns {
            Some(p) => crate::netns::within(&crate::netns::node(p, i), f),
            None => f(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Proc {
    pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since boot),
    /// which tells it from a later process that got the same pid.
    start: u64,
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command name,
/// which may itself hold spaces), and whether the process is a zombie.
fn stat_of(pid: u32) -> Option<(u64, bool)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 is its 20th.
    Some((f.get(19)?.parse().ok()?, f.first() == Some(&"Z")))
}

impl Proc {
    fn of(pid: u32) -> Proc {
        Proc { pid, start: stat_of(pid).map_or(0, |s| s.0) }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeState {
    id: u32,
    proc_: Proc,
    socket: PathBuf,
    mount: PathBuf,
    log: PathBuf,
    /// Its DM transport's address (its host's address with --netns).
    #[serde(default)]
    addr: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(p.exists(), "{} is missing (cargo build --bins builds it)", p.display());
    Ok(p)
}

/// Whether `p` is still the process we started, and running.
fn ours(p: &Proc) -> bool {
    stat_of(p.pid).is_some_and(|(start, zombie)| start == p.start && !zombie)
}

fn signal(p: &Proc, sig: i32) {
    if ours(p) {
        // SAFETY: kill(2) on a pid whose start time shows it is the process this tool started.
        unsafe { libc::kill(p.pid as i32, sig) };
    }
}

fn wait_gone(p: &Proc, t: Duration) -> bool {
    let end = Instant::now() + t;
    while ours(p) {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log)?;
    let child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: a ^C meant for `up` does not reach the cluster.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(child)
}

fn key() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

fn load(dir: &Path) -> anyhow::Result<State> {
    let p = state_path(dir);
    let s = std::fs::read_to_string(&p)
        .with_context(|| format!("no cluster at {} ({} unreadable)", dir.display(), p.display()))?;
    Ok(serde_json::from_str(&s)?)
}

/// Runs a `tidepool cluster` command.
pub fn run(cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Up(a) => up(a),
        ClusterCmd::Status { dir, json } => status(&dir, json),
        ClusterCmd::Down { dir } => down(&dir),
        ClusterCmd::RestartStorage { dir, kill } => restart_storage(&dir, kill),
        ClusterCmd::Partition { dir, node } => link(&dir, node, false),
        ClusterCmd::Heal { dir, node } => link(&dir, node, true),
        ClusterCmd::Exec { dir, node, command } => exec(&dir, node, &command),
    }
}

fn restart_storage(dir: &Path, kill: bool) -> anyhow::Result<()> {
    let mut st = load(dir)?;
    signal(&st.storage, if kill { libc::SIGKILL } else { libc::SIGTERM });
    if !wait_gone(&st.storage, Duration::from_secs(10)) {
        signal(&st.storage, libc::SIGKILL);
        anyhow::ensure!(wait_gone(&st.storage, Duration::from_secs(5)), "the storage node does not stop");
    }
    let t0 = Instant::now();
    // The volume exists: no size, nothing to create.
    let r = start_storage(None, dir, &sibling("storage-node")?, &dir.join("vol0.img"), &mut st);
    std::fs::write(state_path(dir), serde_json::to_string_pretty(&st)?)?;
    r?;
    println!(
        "tidepool cluster: storage node restarted (pid {}, serving again after {} ms)",
        st.storage.pid,
        t0.elapsed().as_millis()
    );
    Ok(())
}

fn netns_of(st: &State, dir: &Path) -> anyhow::Result<String> {
    st.netns.clone().with_context(|| format!("the cluster in {} was not started with --netns", dir.display()))
}

fn link(dir: &Path, node: u32, up: bool) -> anyhow::Result<()> {
    let st = load(dir)?;
    let p = netns_of(&st, dir)?;
    anyhow::ensure!(st.nodes.iter().any(|n| n.id == node), "no node {node} in this cluster");
    crate::netns::set_cluster_link(&p, node, up)?;
    println!("tidepool cluster: node {node}'s cluster link is {}", if up { "up" } else { "down" });
    Ok(())
}

fn exec(dir: &Path, node: Option<u32>, command: &[String]) -> anyhow::Result<()> {
    let st = load(dir)?;
    netns_of(&st, dir)?;
    let run = || -> anyhow::Result<std::process::ExitStatus> {
        Command::new(&command[0]).args(&command[1..]).status().with_context(|| format!("running {}", command[0]))
    };
    let rc = match node {
        Some(i) => st.at_node(i, run)?,
        None => st.at_hub(run)?,
    };
    std::process::exit(rc.code().unwrap_or(1));
}

fn up(a: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=64).contains(&a.nodes), "--nodes must be 1 to 64");
    std::fs::create_dir_all(&a.dir)?;
    let dir = std::fs::canonicalize(&a.dir)?;
    if let Ok(s) = load(&dir) {
        if ours(&s.storage) || s.nodes.iter().any(|n| ours(&n.proc_)) || s.etcd.as_ref().is_some_and(|e| ours(&e.proc_))
        {
            bail!("a cluster is already up in {} (tidepool cluster down --dir {0})", dir.display());
        }
    }
    let tidepool = std::env::current_exe()?;
    let sn_bin = sibling("storage-node")?;

    // The storage node on a file-backed volume.
    let vol = dir.join("vol0.img");
    let netns = a.netns.then(|| format!("tp{}", std::process::id()));
    if let Some(p) = &netns {
        crate::netns::create(p, a.nodes)?;
    }
    let storage_addr = match &netns {
        Some(_) => format!("{}:4420", crate::netns::storage_ip(0)),
        None => format!("127.0.0.1:{}", free_port()?),
    };
    let mut st = State {
        storage: Proc { pid: 0, start: 0 },
        storage_addr: storage_addr.clone(),
        nqn: NQN.into(),
        nodes: Vec::new(),
        etcd: None,
        netns,
    };
    let r = start_storage(Some(&a.size), &dir, &sn_bin, &vol, &mut st)
        .and_then(|_| if a.etcd { start_etcd(&dir, &mut st) } else { Ok(()) })
        .and_then(|_| start_nodes(&a, &dir, &tidepool, &mut st));
    // Whatever started is recorded, so that `down` can stop it even after a failure.
    std::fs::write(state_path(&dir), serde_json::to_string_pretty(&st)?)?;
    if let Err(e) = r {
        let _ = down(&dir);
        return Err(e);
    }
    let mut env = format!("TIDEPOOL_DIR='{}'\nTIDEPOOL_NODES={}\n", dir.display(), st.nodes.len());
    env += &format!("TIDEPOOL_STORAGE='{storage_addr}'\nTIDEPOOL_NQN='{NQN}'\n");
    if let Some(e) = &st.etcd {
        env += &format!("TIDEPOOL_ETCD='{}'\n", e.endpoint);
    }
    if let Some(p) = &st.netns {
        env += &format!("TIDEPOOL_NETNS_HUB='{}'\n", crate::netns::hub(p));
        for n in &st.nodes {
            env += &format!("TIDEPOOL_NODE{}_NETNS='{}'\n", n.id, crate::netns::node(p, n.id));
        }
    }
    for n in &st.nodes {
        env += &format!("TIDEPOOL_NODE{}_MOUNT='{}'\n", n.id, n.mount.display());
        env += &format!("TIDEPOOL_NODE{}_DM_SOCKET='{}'\n", n.id, n.socket.display());
    }
    std::fs::write(dir.join("cluster.env"), env)?;
    println!("tidepool cluster: up in {} (storage node {storage_addr}, volume {})", dir.display(), vol.display());
    for n in &st.nodes {
        println!(
            "node {}: pid {}, {}, mount {}, DM socket {}",
            n.id,
            n.proc_.pid,
            n.addr,
            n.mount.display(),
            n.socket.display()
        );
    }
    println!("shell variables: . {}", dir.join("cluster.env").display());
    Ok(())
}

/// Starts the storage node on `vol`; with `size`, creating or growing it.
fn start_storage(size: Option<&str>, dir: &Path, bin: &Path, vol: &Path, st: &mut State) -> anyhow::Result<()> {
    let mut args: Vec<String> = vec!["--file".into(), vol.display().to_string()];
    if let Some(size) = size {
        args.extend(["--size".into(), size.to_string(), "--create".into()]);
    }
    args.extend([
        "--allow-any-host".into(),
        "--listen".into(),
        st.storage_addr.clone(),
        "--nqn".into(),
        NQN.into(),
        "--discovery-listen".into(),
        String::new(),
        // Reservations (the fences) outlive a restart of the storage node.
        "--ptpl-file".into(),
        dir.join("vol0.ptpl").display().to_string(),
    ]);
    let log = dir.join("storage-node.log");
    let mut sn = st.at_hub(|| spawn(bin, &args, &log))?;
    st.storage = Proc::of(sn.id());
    let addr = st.storage_addr.clone();
    st.at_hub(|| wait_listen(&addr, &mut sn, &log, "the storage node", 20))
}

/// Waits until something listens on `addr`, failing with `log` when the
/// process exits first or `secs` pass.
fn wait_listen(addr: &str, child: &mut std::process::Child, log: &Path, what: &str, secs: u64) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > end || child.try_wait()?.is_some() {
            bail!("{what} did not listen on {addr}; its log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A one-member etcd on loopback ports, its data in `DIR/etcd`.
fn start_etcd(dir: &Path, st: &mut State) -> anyhow::Result<()> {
    let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("etcd is not installed (apt-get install etcd-server; scripts/setup.sh does)")?;
    let (host, cport, pport) = match &st.netns {
        Some(_) => (crate::netns::cluster_ip(0), 2379, 2380),
        None => ("127.0.0.1".to_string(), free_port()?, free_port()?),
    };
    let (client, peer) = (format!("http://{host}:{cport}"), format!("http://{host}:{pport}"));
    let args = vec![
        "--name=tidepool".to_string(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=tidepool={peer}"),
    ];
    let log = dir.join("etcd.log");
    let mut child = st.at_hub(|| spawn(&bin, &args, &log))?;
    st.etcd = Some(EtcdState { proc_: Proc::of(child.id()), endpoint: client });
    st.at_hub(|| wait_listen(&format!("{host}:{cport}"), &mut child, &log, "etcd", 30))
}

/// The members etcd has for the cluster now.
fn etcd_members(st: &State, endpoint: &str) -> anyhow::Result<Vec<u32>> {
    st.at_hub(|| {
        let s = coord::etcd::EtcdStore::connect(&[endpoint.to_string()])?;
        Ok(coord::Member::list(&s, CLUSTER)?.iter().map(|m| m.node).collect())
    })
}

fn start_nodes(a: &UpArgs, dir: &Path, tidepool: &Path, st: &mut State) -> anyhow::Result<()> {
    // The file system, unless the volume has one.
    st.at_hub(|| {
        let ctrl =
            std::sync::Arc::new(nvmf::Controller::connect(&st.storage_addr, NQN, &nvmf::ConnectOpts::default())?);
        let dev = tpfs::blockdev::NvmfDev::new(ctrl.clone(), 1, 4096)?;
        if tpfs::mkfs::read_superblock(&dev).is_err() {
            tpfs::mkfs::mkfs(&dev, &tpfs::mkfs::MkfsOpts { label: "tidepool".into(), ..Default::default() })?;
            println!("tidepool cluster: made the file system on the volume");
        }
        drop(dev);
        if let Ok(c) = std::sync::Arc::try_unwrap(ctrl) {
            let _ = c.shutdown();
        }
        Ok(())
    })?;

    let n = a.nodes;
    let fs_manager = if n >= 2 { 2 } else { 1 };
    // With etcd, the file system's manager is elected among candidates, each
    // serving metadata on a port of its own when it wins.
    let candidates: Vec<u32> = if n >= 3 { vec![2, 3] } else { vec![fs_manager] };
    // Each node's DM transport and (with etcd) metadata service; the static
    // manager's metadata address. Hosts of their own have fixed ports.
    let (dm_addr, meta_addr, meta): (Vec<String>, Vec<String>, String) = if st.netns.is_some() {
        let ip = crate::netns::cluster_ip;
        (
            (1..=n).map(|i| format!("{}:7100", ip(i))).collect(),
            (1..=n).map(|i| format!("{}:7101", ip(i))).collect(),
            format!("{}:7102", ip(fs_manager)),
        )
    } else {
        let port = |_| free_port().map(|p| format!("127.0.0.1:{p}"));
        ((1..=n).map(port).collect::<anyhow::Result<_>>()?, (1..=n).map(port).collect::<anyhow::Result<_>>()?, port(0)?)
    };
    let key = key()?;
    let mut children = Vec::new();
    for id in 1..=n {
        let ndir = dir.join(format!("node{id}"));
        let mount = ndir.join("mnt");
        std::fs::create_dir_all(&mount)?;
        let socket = ndir.join("dm.sock");
        let mut t = String::new();
        t += &format!("node_id = {id}\nlisten = \"{}\"\n", dm_addr[id as usize - 1]);
        t += &format!(
            "api_socket = \"{}\"\ncluster_key = \"{key}\"\nsession_manager = 1\nmounts = []\n",
            socket.display()
        );
        if st.etcd.is_some() {
            t += &format!("meta_listen = \"{}\"\n", meta_addr[id as usize - 1]);
            // Nodes 1 and 3 campaign for the session manager, 2 and 3 for the
            // file system's manager: a node may end up holding both.
            t += &format!("session_managers = {:?}\n", if n >= 3 { vec![1, 3] } else { vec![1] });
        }
        for p in 1..=n {
            if p != id {
                t += &format!("[[peers]]\nid = {p}\naddr = \"{}\"\n", dm_addr[p as usize - 1]);
            }
        }
        t += &format!(
            "[[filesystems]]\nid = 1\nmanager = {fs_manager}\naddr = \"{}\"\nnqn = \"{NQN}\"\nmeta_addr = \"{meta}\"\n",
            st.storage_addr
        );
        if st.etcd.is_some() {
            t += &format!("managers = {candidates:?}\n");
        }
        t += &format!("[[fuse_mounts]]\nfs = 1\npath = \"{}\"\n", mount.display());
        if let Some(e) = &st.etcd {
            t += &format!(
                "[etcd]\nendpoints = [\"{}\"]\ncluster = \"{CLUSTER}\"\nlease_ttl_ms = {}\n",
                e.endpoint, a.lease_ttl_ms
            );
        }
        let config = ndir.join("node.toml");
        std::fs::File::create(&config)?.write_all(t.as_bytes())?;
        let log = ndir.join("node.log");
        let args = vec!["node".to_string(), "run".into(), "--config".into(), config.display().to_string()];
        let child = st.at_node(id, || spawn(tidepool, &args, &log))?;
        let pid = child.id();
        children.push(child);
        st.nodes.push(NodeState {
            id,
            proc_: Proc::of(pid),
            socket,
            mount,
            log,
            addr: dm_addr[id as usize - 1].clone(),
        });
    }
    let end = Instant::now() + Duration::from_secs(60);
    for (node, child) in st.nodes.iter().zip(&mut children) {
        loop {
            let s = libdmapi::Dm::connect(&node.socket).and_then(|d| d.status().map_err(std::io::Error::other));
            match s.as_ref().ok().and_then(|s| s.fuse.first()).map(|m| m.state.clone()) {
                Some(m) if m == "mounted" => break,
                Some(m) if m.starts_with("failed") => bail!("node {}: {m}; log {}", node.id, node.log.display()),
                _ => {}
            }
            if let Some(rc) = child.try_wait()? {
                bail!(
                    "node {} exited ({rc}); its log:\n{}",
                    node.id,
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                );
            }
            if Instant::now() > end {
                bail!("node {} did not mount in time; log {}", node.id, node.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// One node in `status --json`.
#[derive(Serialize)]
struct NodeReport {
    id: u32,
    pid: u32,
    alive: bool,
    roles: Vec<String>,
    addr: String,
    mount: String,
    mount_state: String,
    dm_socket: String,
    sessions: Vec<SessionReport>,
}

#[derive(Serialize)]
struct SessionReport {
    sid: i32,
    node: u32,
    info: String,
}

fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let st = load(dir)?;
    let mut nodes = Vec::new();
    for n in &st.nodes {
        let s = libdmapi::Dm::connect(&n.socket).ok().and_then(|d| d.status().ok());
        let mut roles = Vec::new();
        let (mut state, mut sessions) = ("unreachable".to_string(), Vec::new());
        if let Some(s) = &s {
            if s.session_manager {
                roles.push("session-manager".to_string());
            }
            roles.extend(s.fs_managed.iter().map(|f| format!("fs-manager:{f}")));
            state = s.fuse.first().map_or_else(|| "not mounted".into(), |m| m.state.clone());
            sessions = s
                .sessions
                .iter()
                .map(|(sid, node, info)| SessionReport {
                    sid: *sid,
                    node: *node,
                    info: String::from_utf8_lossy(info).into(),
                })
                .collect();
        }
        nodes.push(NodeReport {
            id: n.id,
            pid: n.proc_.pid,
            alive: ours(&n.proc_),
            roles,
            addr: n.addr.clone(),
            mount: n.mount.display().to_string(),
            mount_state: state,
            dm_socket: n.socket.display().to_string(),
            sessions,
        });
    }
    let etcd = st.etcd.as_ref().map(|e| {
        let members = etcd_members(&st, &e.endpoint).map_err(|x| x.to_string());
        (e, members)
    });
    if json {
        let etcd = etcd.as_ref().map(|(e, m)| {
            serde_json::json!({ "pid": e.proc_.pid, "alive": ours(&e.proc_), "endpoint": e.endpoint,
                "members": m.as_ref().ok(), "error": m.as_ref().err() })
        });
        let v = serde_json::json!({
            "dir": dir.display().to_string(),
            "netns": st.netns,
            "storage": { "pid": st.storage.pid, "alive": ours(&st.storage), "addr": st.storage_addr, "nqn": st.nqn },
            "etcd": etcd,
            "nodes": nodes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let alive = |b: bool| if b { "running" } else { "gone" };
    println!("storage node: pid {} ({}), {} {}", st.storage.pid, alive(ours(&st.storage)), st.storage_addr, st.nqn);
    if let Some((e, m)) = &etcd {
        let members = match m {
            Ok(m) => format!("members {m:?}"),
            Err(x) => format!("members unknown: {x}"),
        };
        println!("etcd: pid {} ({}), {}, {members}", e.proc_.pid, alive(ours(&e.proc_)), e.endpoint);
    }
    for n in &nodes {
        println!(
            "node {}: pid {} ({}), roles [{}], mount {} ({}), DM socket {}",
            n.id,
            n.pid,
            alive(n.alive),
            n.roles.join(", "),
            n.mount,
            n.mount_state,
            n.dm_socket
        );
        for s in &n.sessions {
            if s.node == n.id {
                println!("  session {} ({})", s.sid, s.info);
            }
        }
    }
    Ok(())
}

/// Whether something is mounted on `p` (as this process sees the mounts).
fn mounted(p: &Path) -> bool {
    let Some(p) = p.to_str() else { return false };
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(p)))
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let st = load(dir)?;
    // Node daemons first (SIGTERM: each unmounts its mount), then the storage node.
    for n in &st.nodes {
        signal(&n.proc_, libc::SIGTERM);
    }
    for n in &st.nodes {
        if !wait_gone(&n.proc_, Duration::from_secs(15)) {
            eprintln!("tidepool cluster: node {} did not stop on SIGTERM; killing it", n.id);
            signal(&n.proc_, libc::SIGKILL);
            wait_gone(&n.proc_, Duration::from_secs(5));
        }
        // A mount a killed daemon left behind (its connection may take a
        // moment to read as dead: asked again for a while).
        let end = Instant::now() + Duration::from_secs(3);
        while mounted(&n.mount) && Instant::now() < end {
            node::mounts::detach_dead(&n.mount);
            if mounted(&n.mount) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if mounted(&n.mount) {
            eprintln!("tidepool cluster: node {}'s mount {} is still there", n.id, n.mount.display());
        }
    }
    signal(&st.storage, libc::SIGTERM);
    if !wait_gone(&st.storage, Duration::from_secs(10)) {
        signal(&st.storage, libc::SIGKILL);
        wait_gone(&st.storage, Duration::from_secs(5));
    }
    if let Some(e) = &st.etcd {
        signal(&e.proc_, libc::SIGTERM);
        if !wait_gone(&e.proc_, Duration::from_secs(10)) {
            signal(&e.proc_, libc::SIGKILL);
            wait_gone(&e.proc_, Duration::from_secs(5));
        }
    }
    if let Some(p) = &st.netns {
        crate::netns::destroy(p);
    }
    std::fs::remove_file(state_path(dir))?;
    let _ = std::fs::remove_file(dir.join("cluster.env"));
    println!("tidepool cluster: down ({} nodes and the storage node stopped; the volume stays)", st.nodes.len());
    Ok(())
}
