//! `tidepool`: the Tidepool client. `tidepool nvme ...` drives the
//! user-space NVMe-oF initiator.

mod bench;
mod cluster;
mod hsm_cli;
mod netns;
mod node_cli;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use nvmf::{self, ConnectOpts, Controller};
use std::path::PathBuf;

/// `--version` names the NVMe-oF transports built in, so scripts and
/// tests can tell an RDMA-capable binary from a TCP-only one.
const VERSION: &str = if cfg!(feature = "rdma") {
    concat!(env!("CARGO_PKG_VERSION"), " (transports: tcp, rdma)")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (transports: tcp)")
};

#[derive(Parser)]
#[command(version = VERSION, about = "Tidepool client")]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand)]
enum Top {
    /// The user-space NVMe-oF initiator.
    #[command(subcommand)]
    Nvme(Nvme),
    /// Make a Tidepool file system on a namespace of a storage node.
    Mkfs {
        #[command(flatten)]
        c: Conn,
        #[arg(long, default_value = "tidepool")]
        label: String,
    },
    /// Mount a Tidepool file system through FUSE. With --node, the running
    /// node daemon mounts file system --fs of its configuration and hosts the
    /// mount (as GPFS's mmmount asks mmfsd), and this returns once mounted.
    /// Without it this process is the mount and runs until unmounted or
    /// interrupted; without --manager it is the file system's manager too
    /// (listening on --serve for other nodes).
    Mount {
        #[command(flatten)]
        c: Conn,
        mountpoint: PathBuf,
        /// The file system's manager (`tidepool fs-manager`, or another
        /// mount's --serve address).
        #[arg(long)]
        manager: Option<std::net::SocketAddr>,
        /// Run the manager in this process and serve other nodes here.
        #[arg(long, conflicts_with = "manager")]
        serve: Option<std::net::SocketAddr>,
        /// This node's name in the manager's log.
        #[arg(long, default_value = "")]
        name: String,
        /// FUSE worker threads.
        #[arg(long, default_value_t = tpfs::fuse::DEFAULT_THREADS)]
        threads: usize,
        /// Ask the node daemon behind this local socket to host the mount
        /// (the mount then raises DM events; a mount of its own raises none).
        #[arg(long, conflicts_with_all = ["manager", "serve"])]
        node: Option<PathBuf>,
        /// The file system's id in the cluster configuration.
        #[arg(long, default_value_t = 1)]
        fs: u64,
        /// Serve only the user who mounts (no `allow_other`); by default
        /// every user of the machine, with the kernel checking permissions.
        #[arg(long)]
        owner_only: bool,
        #[command(flatten)]
        who: Member,
    },
    /// Ask a node daemon to unmount a mount it hosts (a DM application may
    /// refuse in the preunmount event).
    Umount {
        /// The node daemon's local socket.
        #[arg(long, default_value = "/tmp/tidepool-node-1.sock")]
        node: PathBuf,
        mountpoint: PathBuf,
    },
    /// A file system's manager: metadata, journal and tokens for every
    /// node that mounts it; runs until interrupted.
    FsManager {
        #[command(flatten)]
        c: Conn,
        /// Where mounting nodes reach it.
        #[arg(long, default_value = "127.0.0.1:7600")]
        listen: std::net::SocketAddr,
        /// After a restart, how long files unlinked while open wait for the
        /// nodes that have them open to reconnect before they are freed.
        #[arg(long, default_value_t = tpfs::manager::ORPHAN_GRACE.as_millis() as u64)]
        orphan_grace_ms: u64,
        #[command(flatten)]
        who: Member,
    },
    /// The node daemon (DM event path, session manager, fs manager roles).
    #[command(subcommand)]
    Node(node_cli::NodeCmd),
    /// A DM application on the command line (sessions, dispositions, events).
    Dm(node_cli::DmArgs),
    /// A whole cluster on this machine: storage node, node daemons, mounts.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// The HSM: migrate file data to an object-store tier, recall it on access.
    Hsm(hsm_cli::HsmArgs),
}

/// Who this process is to the file-system manager protocol.
#[derive(Args, Clone)]
struct Member {
    /// This node's id in the cluster.
    #[arg(long, default_value_t = 1)]
    node_id: u32,
    /// File holding the cluster key (surrounding whitespace ignored); without
    /// it the development key, for one machine only.
    #[arg(long)]
    cluster_key_file: Option<PathBuf>,
}

impl Member {
    fn creds(&self) -> anyhow::Result<tpfs::rpc::Credentials> {
        let key = match &self.cluster_key_file {
            Some(p) => {
                let k = std::fs::read(p).with_context(|| format!("cluster key file {}", p.display()))?;
                anyhow::ensure!(!k.trim_ascii().is_empty(), "cluster key file {} is empty", p.display());
                k.trim_ascii().to_vec()
            }
            None => {
                eprintln!("tidepool: no --cluster-key-file: using the development key; any local process can join");
                dmapi::auth::DEV_CLUSTER_KEY.as_bytes().to_vec()
            }
        };
        Ok(tpfs::rpc::Credentials::new(self.node_id, &key))
    }
}

#[derive(Args, Clone)]
struct Conn {
    /// Target address, host:port (for RDMA, the IP of the target's RDMA device).
    #[arg(long, default_value = "127.0.0.1:4420")]
    addr: String,
    /// NVMe-oF transport, `tcp` or `rdma` (`rdma` needs a build with the `rdma` feature and an RDMA device).
    #[arg(long, short = 't', default_value_t = nvmf::Transport::Tcp)]
    transport: nvmf::Transport,
    /// Subsystem NQN.
    #[arg(long, default_value = "nqn.2026-11.io.tidepool:vol0")]
    nqn: String,
    /// Host NQN (the host ID is derived from it); default: a random UUID NQN.
    #[arg(long)]
    hostnqn: Option<String>,
    /// Enable header digests.
    #[arg(long)]
    hdr_digest: bool,
    /// Enable data digests.
    #[arg(long)]
    data_digest: bool,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// Spin on the queue sockets instead of sleeping in the kernel: lower
    /// latency, but every waiting thread keeps a core busy.
    #[arg(long)]
    poll: bool,
}

impl Conn {
    fn opts(&self) -> ConnectOpts {
        let mut o = match &self.hostnqn {
            Some(n) => ConnectOpts::default().with_hostnqn(n),
            None => ConnectOpts::default(),
        };
        o.transport = self.transport;
        o.hdgst = self.hdr_digest;
        o.ddgst = self.data_digest;
        o.poll_mode = self.poll;
        o
    }
    fn connect(&self) -> anyhow::Result<Controller> {
        Controller::connect(&self.addr, &self.nqn, &self.opts())
            .with_context(|| format!("connecting to {} at {}", self.nqn, self.addr))
    }
}

#[derive(Subcommand)]
enum Nvme {
    /// Print the discovery log page of a discovery controller.
    Discover {
        #[arg(long, default_value = "127.0.0.1:8009")]
        addr: String,
        #[arg(long, short = 't', default_value_t = nvmf::Transport::Tcp)]
        transport: nvmf::Transport,
        #[arg(long)]
        hostnqn: Option<String>,
    },
    /// Identify the controller and its namespaces.
    Identify(Conn),
    /// Read blocks to a file (or hex dump to stdout).
    Read {
        #[command(flatten)]
        c: Conn,
        #[arg(long, default_value_t = 0)]
        lba: u64,
        #[arg(long, default_value_t = 1)]
        blocks: u32,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Write a file's contents (padded to whole blocks) at an LBA.
    Write {
        #[command(flatten)]
        c: Conn,
        #[arg(long, default_value_t = 0)]
        lba: u64,
        #[arg(long)]
        input: PathBuf,
        /// Force Unit Access.
        #[arg(long)]
        fua: bool,
    },
    /// Flush the volatile write cache.
    Flush(Conn),
    /// Write zeroes to a block range.
    WriteZeroes {
        #[command(flatten)]
        c: Conn,
        #[arg(long)]
        lba: u64,
        #[arg(long)]
        blocks: u32,
        #[arg(long)]
        deallocate: bool,
    },
    /// Deallocate (trim) a block range.
    Deallocate {
        #[command(flatten)]
        c: Conn,
        #[arg(long)]
        lba: u64,
        #[arg(long)]
        blocks: u32,
    },
    /// Reservation Register: register, unregister or replace a key.
    ResvRegister {
        #[command(flatten)]
        c: Conn,
        /// register | unregister | replace
        #[arg(long, default_value = "register")]
        action: String,
        #[arg(long, default_value = "0", value_parser = parse_key)]
        crkey: u64,
        #[arg(long, default_value = "0", value_parser = parse_key)]
        nrkey: u64,
        #[arg(long)]
        iekey: bool,
    },
    /// Reservation Acquire: acquire, preempt or preempt-abort.
    ResvAcquire {
        #[command(flatten)]
        c: Conn,
        /// acquire | preempt | preempt-abort
        #[arg(long, default_value = "acquire")]
        action: String,
        /// 1 WE, 2 EA, 3 WE-RO, 4 EA-RO, 5 WE-AR, 6 EA-AR
        #[arg(long, default_value_t = 1)]
        rtype: u8,
        #[arg(long, value_parser = parse_key)]
        crkey: u64,
        #[arg(long, default_value = "0", value_parser = parse_key)]
        prkey: u64,
    },
    /// Reservation Release: release or clear.
    ResvRelease {
        #[command(flatten)]
        c: Conn,
        /// release | clear
        #[arg(long, default_value = "release")]
        action: String,
        #[arg(long, default_value_t = 1)]
        rtype: u8,
        #[arg(long, value_parser = parse_key)]
        crkey: u64,
    },
    /// Reservation Report.
    ResvReport(Conn),
    /// Random or sequential I/O benchmark: IOPS and latency percentiles.
    Bench(bench::BenchArgs),
    /// Connect controllers and keep their queues idle (for memory measurements).
    Hold {
        #[command(flatten)]
        c: Conn,
        #[arg(long, default_value_t = 1)]
        controllers: u16,
        /// I/O queues per controller.
        #[arg(long, default_value_t = 1)]
        queues: u16,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs read by scripts and tests stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().cmd {
        Top::Nvme(n) => nvme(n),
        Top::Mkfs { c, label } => {
            let dev = fs_dev(&c)?;
            let sb = tpfs::mkfs::mkfs(&*dev, &tpfs::mkfs::MkfsOpts { label, ..Default::default() })?;
            println!(
                "tidepool mkfs: {} blocks of {} bytes, {} inodes, journal {} blocks, fsid {}",
                sb.total_blocks.get(),
                sb.block_size.get(),
                sb.inode_count.get(),
                sb.journal_blocks.get(),
                uuid::Uuid::from_bytes(sb.fsid)
            );
            Ok(())
        }
        Top::Mount { node: Some(sock), mountpoint, fs, .. } => {
            let dm = libdmapi::Dm::connect(&sock).with_context(|| format!("node daemon at {}", sock.display()))?;
            let path = std::fs::canonicalize(&mountpoint).with_context(|| format!("{}", mountpoint.display()))?;
            dm.fuse_mount(dmapi::types::FsId(fs), &path).with_context(|| format!("mounting on {}", path.display()))?;
            println!(
                "tidepool: file system {fs} mounted on {} by the node daemon at {}",
                path.display(),
                sock.display()
            );
            Ok(())
        }
        Top::Umount { node, mountpoint } => {
            let dm = libdmapi::Dm::connect(&node).with_context(|| format!("node daemon at {}", node.display()))?;
            let path = std::fs::canonicalize(&mountpoint).unwrap_or(mountpoint);
            dm.fuse_unmount(&path).with_context(|| format!("unmounting {}", path.display()))?;
            println!("tidepool: {} unmounted", path.display());
            Ok(())
        }
        Top::Mount { c, mountpoint, manager, serve, name, threads, owner_only, node: None, who, .. } => {
            let dev = fs_dev(&c)?;
            let creds = who.creds()?;
            let opts =
                tpfs::fuse::MountOpts { manager, serve, dm: None, name, threads, owner_only, creds, resolve: None };
            let m = tpfs::fuse::mount(dev, &mountpoint, opts)
                .with_context(|| format!("mounting on {}", mountpoint.display()))?;
            let mgr = match (manager, m.manager_addr()) {
                (Some(a), _) => format!("manager {a}"),
                (None, Some(a)) => format!("manager in this process on {a}"),
                (None, None) => "no manager".into(),
            };
            println!(
                "tidepool: mounted {} (namespace {} of {}) on {} ({mgr})",
                c.nqn,
                c.nsid,
                c.addr,
                mountpoint.display()
            );
            // A DM application may refuse the unmount (preunmount ABORT): keep serving.
            loop {
                wait_for_signal();
                match m.preunmount() {
                    Ok(()) => break,
                    Err(errno) => eprintln!(
                        "tidepool: the DM application refused the unmount ({}); still mounted",
                        std::io::Error::from_raw_os_error(errno)
                    ),
                }
            }
            m.unmount().context("unmounting")?;
            Ok(())
        }
        Top::FsManager { c, listen, orphan_grace_ms, who } => {
            let creds = who.creds()?;
            let dev = fs_dev(&c)?;
            let grace = std::time::Duration::from_millis(orphan_grace_ms);
            let m = tpfs::manager::Manager::open_with_grace(dev, grace).context("opening the file system")?;
            let h = m.serve(listen, creds).with_context(|| format!("listening on {listen}"))?;
            println!("tidepool fs-manager: serving {} (namespace {} of {}) on {}", c.nqn, c.nsid, c.addr, h.addr);
            wait_for_signal();
            drop(h);
            Ok(())
        }
        Top::Node(n) => node_cli::node(n),
        Top::Dm(d) => node_cli::dm(d),
        Top::Cluster(c) => cluster::run(c),
        Top::Hsm(h) => hsm_cli::run(h),
    }
}

/// Reservation keys in decimal or 0x-prefixed hex.
fn parse_key(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a key: {e}"))
}

/// The namespace `c` names, as a 4 KiB-block device for the file system.
fn fs_dev(c: &Conn) -> anyhow::Result<std::sync::Arc<dyn tpfs::blockdev::BlockDev>> {
    let ctrl = std::sync::Arc::new(c.connect()?);
    Ok(std::sync::Arc::new(tpfs::blockdev::NvmfDev::new(ctrl, c.nsid, 4096)?))
}

/// Blocks until SIGINT or SIGTERM (each signal ends one wait).
pub(crate) fn wait_for_signal() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    while !STOP.swap(false, Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn action(s: &str, names: &[&str]) -> anyhow::Result<u8> {
    names
        .iter()
        .position(|n| *n == s)
        .map(|i| i as u8)
        .ok_or_else(|| anyhow::anyhow!("action {s:?} is not one of {names:?}"))
}

fn nvme(n: Nvme) -> anyhow::Result<()> {
    match n {
        Nvme::Discover { addr, transport, hostnqn } => {
            let mut o = match hostnqn {
                Some(h) => ConnectOpts::default().with_hostnqn(&h),
                None => ConnectOpts::default(),
            };
            o.transport = transport;
            let entries = nvmf::discover(&addr, &o)?;
            println!("Discovery Log Number of Records {}", entries.len());
            for (i, e) in entries.iter().enumerate() {
                println!("=====Discovery Log Entry {i}======");
                println!(
                    "trtype:  {}",
                    match e.trtype {
                        1 => "rdma",
                        3 => "tcp",
                        _ => "other",
                    }
                );
                println!(
                    "subtype: {}",
                    match e.subtype {
                        2 => "nvme subsystem",
                        3 => "current discovery subsystem",
                        _ => "other",
                    }
                );
                println!("portid:  {}", e.portid.get());
                println!("trsvcid: {}", e.trsvcid());
                println!("subnqn:  {}", e.subnqn());
                println!("traddr:  {}", e.traddr());
            }
        }
        Nvme::Identify(c) => {
            let ctrl = c.connect()?;
            let id = &ctrl.id;
            println!("cntlid  : {}", ctrl.cntlid);
            println!("sn      : {}", nvme_wire::get_str(&id.sn));
            println!("mn      : {}", nvme_wire::get_str(&id.mn));
            println!("fr      : {}", nvme_wire::get_str(&id.fr));
            println!("subnqn  : {}", nvme_wire::get_str(&id.subnqn));
            println!("mdts    : {}", id.mdts);
            println!("oncs    : {:#x}", id.oncs.get());
            println!("ioccsz  : {}", id.ioccsz.get());
            println!("io queues: {}", ctrl.io_queue_count());
            for nsid in ctrl.active_namespaces()? {
                let ns = ctrl.identify_ns(nsid)?;
                println!(
                    "namespace {nsid}: {} blocks of {} bytes ({} MiB), nguid {}",
                    ns.blocks,
                    ns.block_size,
                    (ns.blocks * ns.block_size as u64) >> 20,
                    ns.nguid.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
            }
            ctrl.shutdown()?;
        }
        Nvme::Read { c, lba, blocks, output } => {
            let ctrl = c.connect()?;
            let bs = ctrl.identify_ns(c.nsid)?.block_size;
            let mut buf = vec![0u8; blocks as usize * bs as usize];
            ctrl.read_range(c.nsid, lba, bs, &mut buf)?;
            match output {
                Some(p) => std::fs::write(&p, &buf)?,
                None => hexdump(&buf),
            }
            ctrl.shutdown()?;
        }
        Nvme::Write { c, lba, input, fua } => {
            let ctrl = c.connect()?;
            let bs = ctrl.identify_ns(c.nsid)?.block_size as usize;
            let mut data = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            data.resize(data.len().div_ceil(bs).max(1) * bs, 0);
            ctrl.write_range(c.nsid, lba, bs as u32, &data, fua)?;
            println!("wrote {} blocks at lba {lba}", data.len() / bs);
            ctrl.shutdown()?;
        }
        Nvme::Flush(c) => {
            let ctrl = c.connect()?;
            ctrl.flush(c.nsid)?;
            ctrl.shutdown()?;
        }
        Nvme::WriteZeroes { c, lba, blocks, deallocate } => {
            let ctrl = c.connect()?;
            ctrl.write_zeroes(c.nsid, lba, blocks, deallocate)?;
            ctrl.shutdown()?;
        }
        Nvme::Deallocate { c, lba, blocks } => {
            let ctrl = c.connect()?;
            ctrl.deallocate(c.nsid, &[(lba, blocks)])?;
            ctrl.shutdown()?;
        }
        Nvme::ResvRegister { c, action: a, crkey, nrkey, iekey } => {
            let ctrl = c.connect()?;
            ctrl.resv_register(c.nsid, action(&a, &["register", "unregister", "replace"])?, iekey, crkey, nrkey)?;
            println!("reservation register ({a}) done");
            ctrl.shutdown()?;
        }
        Nvme::ResvAcquire { c, action: a, rtype, crkey, prkey } => {
            let ctrl = c.connect()?;
            ctrl.resv_acquire(c.nsid, action(&a, &["acquire", "preempt", "preempt-abort"])?, rtype, crkey, prkey)?;
            println!("reservation acquire ({a}) done");
            ctrl.shutdown()?;
        }
        Nvme::ResvRelease { c, action: a, rtype, crkey } => {
            let ctrl = c.connect()?;
            ctrl.resv_release(c.nsid, action(&a, &["release", "clear"])?, rtype, crkey)?;
            println!("reservation release ({a}) done");
            ctrl.shutdown()?;
        }
        Nvme::ResvReport(c) => {
            let ctrl = c.connect()?;
            let (gen, rtype, regs) = ctrl.resv_report(c.nsid)?;
            println!("generation: {gen}\nrtype: {rtype}\nregistrants: {}", regs.len());
            for r in regs {
                let hostid: String = r.hostid.iter().map(|b| format!("{b:02x}")).collect();
                println!("  cntlid {} rkey {:#x} holder {} hostid {hostid}", r.cntlid.get(), r.rkey.get(), r.rcsts & 1);
            }
            ctrl.shutdown()?;
        }
        Nvme::Bench(b) => bench::run(b)?,
        Nvme::Hold { c, controllers, queues, seconds } => {
            let mut o = c.opts();
            o.io_queues = queues;
            let ctrls =
                (0..controllers).map(|_| Controller::connect(&c.addr, &c.nqn, &o)).collect::<Result<Vec<_>, _>>()?;
            let qps: usize = ctrls.iter().map(|c| c.io_queue_count() + 1).sum();
            println!("holding {} controllers, {qps} queue pairs", ctrls.len());
            std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
        }
    }
    Ok(())
}

fn hexdump(b: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (i, row) in b.chunks(16).enumerate() {
        let hex: Vec<String> = row.iter().map(|x| format!("{x:02x}")).collect();
        let asc: String =
            row.iter().map(|&x| if x.is_ascii_graphic() || x == b' ' { x as char } else { '.' }).collect();
        // A closed pipe (`| head`) just ends the dump.
        if writeln!(out, "{:08x}  {:<48} {asc}", i * 16, hex.join(" ")).is_err() {
            return;
        }
    }
}
