//! The file systems a node daemon hosts: the metadata service of each file
//! system this node manages, and the node's FUSE mounts, whose DM events go
//! from the FUSE worker thread straight into this process's source engine
//! ([`NodeSink`]), with no local socket on the way.
//!
//! As GPFS's mmfsd does: mounts come from the configuration (`fuse_mounts`)
//! and from `tidepool mount --node` at run time, and they go when the daemon
//! stops. A mount whose manager node is not serving yet (nodes of a cluster
//! start in any order) is retried until [`MOUNT_PATIENCE`] has passed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dmapi::disp::GenerationView;
use dmapi::event::DmEvent;
use dmapi::types::{DmResponse, EventSet, FsId};
use dmapi::{DmError, DmResult};
use libdmapi::channel::FuseMountStatus;
use parking_lot::Mutex;
use tpfs::blockdev::{BlockDev, NvmfDev};
use tpfs::fuse::{DmLink, EventSink, MountOpts, Mounted};
use tpfs::manager::{Manager, ManagerHandle};
use tracing::{info, warn};

use crate::cluster::ClusterLink;
use crate::config::{FsConfig, FuseMountConfig, NodeConfig};
use crate::fencing;

/// What hosted mounts need of their node daemon (`crate::daemon::Node`
/// implements it): the daemon is the mounts' [`EventSink`] (its
/// dispositions, its source engine, the file-system managers told of a
/// mount), and it has the configuration that names the volumes.
pub trait MountHost: EventSink + 'static {
    /// The node's configuration.
    fn cfg(&self) -> &NodeConfig;
    /// Its membership through etcd, when configured.
    fn cluster(&self) -> Option<Arc<ClusterLink>>;
    /// This node was elected `fs`'s manager and serves its metadata now.
    fn elected(&self, fs: FsId);
}

/// How long a mount keeps trying to reach its file system's manager.
pub const MOUNT_PATIENCE: Duration = Duration::from_secs(30);

/// A mount's DM events into its own node daemon, in process.
pub struct NodeSink {
    node: Weak<dyn MountHost>,
}

impl NodeSink {
    /// The link a mount of `fs` on `node` generates its events through.
    pub fn link<H: MountHost>(node: &Arc<H>, fs: FsId) -> DmLink {
        let node: Weak<dyn MountHost> = Arc::downgrade(node) as Weak<dyn MountHost>;
        DmLink { sink: Arc::new(NodeSink { node }), fs }
    }

    fn node(&self) -> Result<Arc<dyn MountHost>, String> {
        self.node.upgrade().ok_or_else(|| "the node daemon is stopping".to_string())
    }
}

/// The daemon's own answers, while it runs (a mount must not keep its
/// daemon alive: the daemon holds the mount).
impl EventSink for NodeSink {
    fn view(&self, fs: FsId) -> Option<GenerationView> {
        self.node.upgrade()?.view(fs)
    }

    fn generate(
        &self,
        fs: FsId,
        ev: DmEvent,
        file_events: EventSet,
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<DmResponse, String> {
        self.node()?.generate(fs, ev, file_events, attrs)
    }

    fn mounted(&self, fs: FsId, yes: bool) -> Result<(), String> {
        self.node()?.mounted(fs, yes)
    }
}

/// This node in the file-system manager protocol: its id and the cluster key.
pub(crate) fn fs_creds(cfg: &NodeConfig) -> std::io::Result<tpfs::rpc::Credentials> {
    let key = cfg.key().map_err(std::io::Error::other)?;
    Ok(tpfs::rpc::Credentials::new(cfg.node_id, &key))
}

/// The volume of `f`, connected as this node; with membership by etcd,
/// this host registered on it with its reservation key first (once per
/// membership: see [`ClusterLink::register_once`]).
pub(crate) fn volume(
    cfg: &NodeConfig,
    f: &FsConfig,
    link: Option<&ClusterLink>,
) -> std::io::Result<(Arc<nvmf::Controller>, Arc<dyn BlockDev>)> {
    let (Some(addr), Some(nqn)) = (&f.addr, &f.nqn) else {
        return Err(std::io::Error::other(format!("file system {} names no volume", f.id)));
    };
    let mut o = nvmf::ConnectOpts::default().with_hostnqn(&cfg.host_nqn());
    o.transport = f.transport.parse().map_err(std::io::Error::other)?;
    let ctrl = Arc::new(
        nvmf::Controller::connect(addr, nqn, &o)
            .map_err(|e| std::io::Error::other(format!("volume {nqn} at {addr}: {e}")))?,
    );
    if let Some(link) = link {
        link.register_once(&format!("{addr} {nqn} {}", f.nsid), |key| {
            fencing::register(&ctrl, f.nsid, key)
                .map_err(|e| std::io::Error::other(format!("registering on volume {nqn}: {e}")))
        })?;
    }
    let dev = NvmfDev::new(ctrl.clone(), f.nsid, 4096).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((ctrl, Arc::new(dev)))
}

/// Where `f`'s metadata service is now: the holder of its role in etcd, or
/// its configured `meta_addr`.
pub(crate) fn manager_of(f: &FsConfig, link: Option<&ClusterLink>) -> std::io::Result<SocketAddr> {
    manager_in_term(f, link).map(|(a, _)| a)
}

/// [`manager_of`], with the term the holder has the role in (0 without etcd).
fn manager_in_term(f: &FsConfig, link: Option<&ClusterLink>) -> std::io::Result<(SocketAddr, u64)> {
    let Some(link) = link else {
        let a = f.meta_addr.ok_or_else(|| std::io::Error::other(format!("file system {} has no meta_addr", f.id)))?;
        return Ok((a, 0));
    };
    let refused = |why: String| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why);
    let leader = link.election(&f.role()).leader().map_err(|e| refused(e.to_string()))?;
    let l = leader.ok_or_else(|| refused(format!("file system {} has no manager elected yet", f.id)))?;
    let a = crate::cluster::field(&l.value, "meta")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("file system {}: the manager's address is unreadable", f.id)))?;
    Ok((a, crate::roles::epoch_of(l.epoch)))
}

/// With membership by etcd, finds `f`'s manager again whenever a
/// connection to it is lost (another node may hold the role now), with
/// the term it holds it in.
pub(crate) fn resolver(f: &FsConfig, link: Option<&Arc<ClusterLink>>) -> Option<tpfs::remote::Resolver> {
    let (f, link) = (f.clone(), Arc::downgrade(link?));
    Some(Arc::new(move || {
        let l = link.upgrade().ok_or_else(|| std::io::Error::other("the node is stopping"))?;
        manager_in_term(&f, Some(&l))
    }))
}

/// One hosted mount.
struct Hosted {
    fs: FsId,
    path: PathBuf,
    /// `None` while it is being mounted or after it failed.
    mounted: Option<Mounted>,
    /// Why it failed; neither this nor `mounted`: being mounted.
    failed: Option<String>,
    /// The mount's `st_dev`, which a DM application's path or descriptor
    /// on it has (`dm_path_to_handle`).
    dev: Option<u64>,
    /// The node left the cluster under it ([`Mounts::expel_mounts`]).
    expelled: bool,
}

/// A metadata service this node runs.
struct Service {
    fs: FsId,
    /// The term it serves under, with membership by etcd.
    epoch: Option<coord::Rev>,
    handle: ManagerHandle,
    /// With membership by etcd: the volume connection, namespace and this
    /// node's key, to fence nodes that leave.
    fence: Option<(Arc<nvmf::Controller>, u32, u64)>,
}

/// The node's metadata services and mounts.
#[derive(Default)]
pub struct Mounts {
    services: Mutex<Vec<Service>>,
    hosted: Mutex<Vec<Hosted>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Mounts {
    /// Starts the metadata service of every file system `cfg`'s node manages
    /// that has a volume. A service that cannot start is logged, and mounts
    /// of its file system fail; the daemon keeps its other roles.
    /// Only `members` may connect to them. With membership by etcd, the
    /// node instead campaigns for each file system it is a candidate
    /// manager of ([`Mounts::campaign`]).
    pub fn start_services<H: MountHost>(self: &Arc<Self>, node: &Arc<H>, members: tpfs::rpc::Members) {
        let cfg = node.cfg();
        if let Some(link) = node.cluster() {
            for f in cfg.filesystems.iter().filter(|f| f.candidates().contains(&cfg.node_id) && f.mountable()) {
                self.campaign(node, cfg.clone(), f.clone(), link.clone(), members.clone());
            }
            return;
        }
        for f in cfg.filesystems.iter().filter(|f| f.manager == cfg.node_id && f.mountable()) {
            let addr = f.meta_addr.expect("mountable");
            match serve(cfg, f, addr, members.clone(), None) {
                Ok(s) => {
                    info!(fs = f.id, %addr, "metadata service started");
                    self.services.lock().push(s);
                }
                Err(e) => warn!(fs = f.id, %addr, error = %e, "metadata service not started"),
            }
        }
    }

    /// Campaigns, from a thread, for `f`'s metadata service: when this node
    /// wins a term it takes the volume (preempting the last holder's
    /// reservation), replays the journal and serves; it serves until the
    /// term or its membership ends, then campaigns again.
    fn campaign<H: MountHost>(
        self: &Arc<Self>,
        node: &Arc<H>,
        cfg: NodeConfig,
        f: FsConfig,
        link: Arc<ClusterLink>,
        members: tpfs::rpc::Members,
    ) {
        let me = Arc::downgrade(self);
        let host = Arc::downgrade(node);
        let stopping = self.stopping.clone();
        let fs = f.id;
        let spawned = std::thread::Builder::new().name(format!("campaign-fs-{fs}")).spawn(move || {
            use std::sync::atomic::Ordering;
            let Some(addr) = cfg.meta_listen.or(f.meta_addr) else {
                warn!(fs = f.id, "a manager candidate with neither meta_listen nor meta_addr: not campaigning");
                return;
            };
            let election = link.election(&f.role());
            // This campaign belongs to one membership: a later one campaigns anew.
            let lease0 = link.lease();
            let over = || stopping.load(Ordering::Acquire) || link.lost() || link.lease() != lease0;
            while !over() {
                let Some(lease) = link.lease() else { return };
                let value = format!("meta={addr}");
                let term =
                    match election.campaign(cfg.node_id, value.as_bytes(), lease, Duration::from_millis(200), &over) {
                        Ok(Some(t)) => t,
                        Ok(None) => return,
                        Err(e) => {
                            warn!(fs = f.id, error = %e, "campaigning for the metadata service");
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                    };
                let won = Instant::now();
                info!(fs = f.id, epoch = term.epoch, "elected the file system's manager");
                match serve(&cfg, &f, addr, members.clone(), Some((&link, term.epoch))) {
                    Ok(s) => {
                        info!(fs = f.id, %addr, epoch = term.epoch, took_ms = won.elapsed().as_millis() as u64,
                            "metadata service started");
                        let Some(m) = me.upgrade() else { return };
                        m.services.lock().push(s);
                        drop(m);
                        if let Some(h) = host.upgrade() {
                            h.elected(FsId(f.id));
                        }
                    }
                    Err(e) => {
                        warn!(fs = f.id, error = %e, "metadata service not started; giving the role up");
                        let _ = election.resign(&term);
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
                // Serve while the term lasts.
                while !over() && election.holds(&term).unwrap_or(true) {
                    std::thread::sleep(Duration::from_millis(200));
                }
                warn!(fs = f.id, epoch = term.epoch, "the manager's term ended; metadata service stopped");
                // Only this term's service: a later membership's may run already.
                if let Some(m) = me.upgrade() {
                    m.services.lock().retain(|s| s.fs != FsId(f.id) || s.epoch != Some(term.epoch));
                }
            }
        });
        if let Err(e) = spawned {
            warn!(fs, error = %e, "cannot campaign for the metadata service");
        }
    }

    /// Mounts `m` on behalf of `node`, retrying while the file system's
    /// manager is not reachable; returns once mounted or failed for good.
    pub fn mount<H: MountHost>(&self, node: &Arc<H>, m: &FuseMountConfig) -> DmResult<()> {
        let fs = FsId(m.fs);
        {
            let mut h = self.hosted.lock();
            if h.iter().any(|x| x.path == m.path && x.failed.is_none()) {
                return Err(DmError::Busy("the mount point is mounted by this node already"));
            }
            h.retain(|x| x.path != m.path);
            h.push(Hosted { fs, path: m.path.clone(), mounted: None, failed: None, dev: None, expelled: false });
        }
        let r = mount_with_patience(node, m);
        let mut h = self.hosted.lock();
        let Some(slot) = h.iter_mut().find(|x| x.path == m.path) else {
            return Err(DmError::Intr("unmounted while mounting"));
        };
        match r {
            Ok((mounted, dev)) => {
                info!(fs = m.fs, path = %m.path.display(), "mounted");
                slot.mounted = Some(mounted);
                slot.dev = Some(dev);
                Ok(())
            }
            Err(e) => {
                warn!(fs = m.fs, path = %m.path.display(), error = %e, "mount failed");
                slot.failed = Some(e.to_string());
                Err(match e.raw_os_error() {
                    Some(errno) => DmError::from_errno(errno, "the mount failed"),
                    None => DmError::Io(e.to_string()),
                })
            }
        }
    }

    /// Unmounts `path`: the preunmount event first (a DM application may
    /// refuse with an errno, and the mount stays), then the unmount.
    pub fn unmount(&self, path: &Path) -> Result<(), i32> {
        // Out of the list while the preunmount event waits, so that status
        // calls do not wait with it; put back if the unmount is refused.
        let h = {
            let mut hosted = self.hosted.lock();
            let Some(i) = hosted.iter().position(|x| x.path == path) else { return Err(libc::EINVAL) };
            if hosted[i].mounted.is_none() && hosted[i].failed.is_none() {
                return Err(libc::EBUSY);
            }
            hosted.remove(i)
        };
        let Some(m) = h.mounted else { return Ok(()) };
        if let Err(errno) = m.preunmount() {
            self.hosted.lock().push(Hosted { mounted: Some(m), ..h });
            return Err(errno);
        }
        m.unmount().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// What is mounted, being mounted, or failed.
    pub fn status(&self) -> Vec<FuseMountStatus> {
        self.hosted
            .lock()
            .iter()
            .map(|h| FuseMountStatus {
                fs: h.fs.0,
                path: h.path.display().to_string(),
                state: match (&h.mounted, &h.failed) {
                    (Some(_), _) if h.expelled => "expelled: this node is out of the cluster".into(),
                    (Some(_), _) => "mounted".into(),
                    (None, Some(e)) => format!("failed: {e}"),
                    (None, None) => "mounting".into(),
                },
            })
            .collect()
    }

    /// The file system mounted here whose files have `st_dev` `dev`.
    pub fn fs_of_dev(&self, dev: u64) -> Option<FsId> {
        self.hosted.lock().iter().find(|h| h.mounted.is_some() && h.dev == Some(dev)).map(|h| h.fs)
    }

    /// Where file system `fs` is mounted on this node (the first mount).
    pub fn path_of_fs(&self, fs: FsId) -> Option<PathBuf> {
        self.hosted.lock().iter().find(|h| h.mounted.is_some() && h.fs == fs).map(|h| h.path.clone())
    }

    /// Node `node` left the cluster: the metadata services here drop its
    /// connections, and, with its reservation key known, fence it off
    /// their volumes (its registration preempted, its queued commands
    /// aborted), so it cannot write what it still holds over newer data.
    pub fn expel(&self, node: u32, rkey: Option<u64>) {
        for s in self.services.lock().iter() {
            s.handle.manager.expel_node(node);
            if let (Some((ctrl, nsid, mine)), Some(victim)) = (&s.fence, rkey) {
                if victim == *mine {
                    continue;
                }
                match fencing::fence(ctrl, *nsid, *mine, victim) {
                    Ok(()) => warn!(
                        node,
                        fs = s.fs.0,
                        key = format_args!("{victim:#x}"),
                        "fenced the departed node off the volume"
                    ),
                    Err(e) => warn!(node, fs = s.fs.0, error = %e, "could not fence the departed node"),
                }
            }
        }
    }

    /// This node is out of the cluster: every hosted mount fails its calls
    /// to the manager from now on instead of waiting to reconnect (see
    /// [`tpfs::fuse::Mounted::expel`]); they stay until unmounted.
    pub fn expel_mounts(&self) {
        for h in self.hosted.lock().iter_mut() {
            if let Some(m) = &h.mounted {
                m.expel();
                h.expelled = true;
                warn!(fs = h.fs.0, path = %h.path.display(), "this node is out of the cluster: the mount fails its operations");
            }
        }
    }

    /// After this node joined the cluster again: every expelled mount is
    /// unmounted (detached if busy: its open files keep failing) and
    /// mounted again from the configuration, on a new volume connection
    /// registered with the new membership's key.
    pub fn remount_expelled<H: MountHost>(self: &Arc<Self>, node: &Arc<H>) {
        let expelled: Vec<Hosted> = {
            let mut h = self.hosted.lock();
            let (gone, stay): (Vec<Hosted>, Vec<Hosted>) =
                std::mem::take(&mut *h).into_iter().partition(|x| x.expelled);
            *h = stay;
            gone
        };
        for h in expelled {
            if let Some(m) = h.mounted {
                if let Err(e) = m.unmount() {
                    warn!(path = %h.path.display(), error = %e, "the expelled mount is busy; detaching it");
                    detach(&h.path);
                }
            }
            let Some(cfg) = node.cfg().fuse_mounts.iter().find(|m| m.path == h.path).cloned() else { continue };
            info!(fs = cfg.fs, path = %cfg.path.display(), "mounting again after rejoining the cluster");
            let (me, n) = (self.clone(), node.clone());
            let spawned = std::thread::Builder::new().name(format!("mount-{}", cfg.fs)).spawn(move || {
                let _ = me.mount(&n, &cfg);
            });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot mount again");
            }
        }
    }

    /// Every hosted mount reconnects to its manager if the role moved.
    pub fn recheck_managers(&self) {
        for h in self.hosted.lock().iter() {
            if let Some(m) = &h.mounted {
                m.recheck_manager();
            }
        }
    }

    /// File systems whose metadata this node serves.
    pub fn served(&self) -> Vec<u64> {
        self.services.lock().iter().map(|s| s.fs.0).collect()
    }

    /// Stops the metadata services this node hosts (it is out of the cluster).
    pub fn stop_services(&self) {
        for s in std::mem::take(&mut *self.services.lock()) {
            warn!(fs = s.fs.0, "metadata service stopped");
        }
    }

    /// Unmounts everything and stops the metadata services (daemon stop).
    pub fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        let all: Vec<Hosted> = std::mem::take(&mut *self.hosted.lock());
        for h in all {
            if let Some(m) = h.mounted {
                if let Err(e) = m.unmount() {
                    warn!(path = %h.path.display(), error = %e, "unmount at stop failed");
                }
            }
        }
        self.services.lock().clear();
    }
}

/// Starts `f`'s metadata service on `addr`; with membership by etcd, after
/// taking the volume's reservation (the last manager preempted and its
/// commands aborted) and before the journal is replayed.
fn serve(
    cfg: &NodeConfig,
    f: &FsConfig,
    addr: SocketAddr,
    members: tpfs::rpc::Members,
    term: Option<(&ClusterLink, coord::Rev)>,
) -> std::io::Result<Service> {
    let (link, epoch) = (term.map(|t| t.0), term.map(|t| t.1));
    let (ctrl, dev) = volume(cfg, f, link)?;
    let mut fence = None;
    if let Some(key) = link.and_then(|l| l.rkey()) {
        let old = fencing::take(&ctrl, f.nsid, key)
            .map_err(|e| std::io::Error::other(format!("taking the reservation of file system {}: {e}", f.id)))?;
        if let Some(old) = old {
            warn!(
                fs = f.id,
                node = fencing::node_of(old),
                key = format_args!("{old:#x}"),
                "preempted the last manager's reservation"
            );
        }
        fence = Some((ctrl, f.nsid, key));
    }
    let m = Manager::open(dev).map_err(|e| std::io::Error::other(format!("opening file system {}: {e}", f.id)))?;
    m.set_revoke_timeout(Duration::from_secs(f.token_timeout_secs.max(1)));
    // Nobody but a member gets a token.
    m.set_members(members);
    m.set_term(epoch.map_or(0, crate::roles::epoch_of));
    let handle = m.serve(addr, fs_creds(cfg)?)?;
    Ok(Service { fs: FsId(f.id), epoch, handle, fence })
}

fn mount_with_patience<H: MountHost>(node: &Arc<H>, m: &FuseMountConfig) -> std::io::Result<(Mounted, u64)> {
    let cfg = node.cfg();
    let f = cfg
        .filesystem(FsId(m.fs))
        .ok_or_else(|| std::io::Error::other(format!("file system {} is not configured", m.fs)))?;
    if !f.mountable() {
        return Err(std::io::Error::other(format!("file system {} names no volume and metadata service", m.fs)));
    }
    detach_dead(&m.path);
    let deadline = Instant::now() + MOUNT_PATIENCE;
    loop {
        let link = node.cluster();
        let r = volume(cfg, f, link.as_deref()).and_then(|(_, dev)| {
            let opts = MountOpts {
                manager: Some(manager_of(f, link.as_deref())?),
                resolve: resolver(f, link.as_ref()),
                serve: None,
                dm: Some(NodeSink::link(node, FsId(m.fs))),
                name: format!("node-{}", cfg.node_id),
                threads: m.threads,
                owner_only: m.owner_only,
                creds: fs_creds(cfg)?,
            };
            tpfs::fuse::mount(dev, &m.path, opts)
        });
        match r {
            Ok(mounted) => {
                use std::os::unix::fs::MetadataExt;
                // The root's attributes come from this process's own FUSE threads.
                let dev = std::fs::metadata(&m.path)?.dev();
                return Ok((mounted, dev));
            }
            // The manager node (or the storage node) is not up yet.
            Err(e) if retryable(&e) && Instant::now() < deadline => {
                info!(fs = m.fs, error = %e, "file system not reachable yet; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

fn retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    // (A network just healed answers EHOSTUNREACH until its neighbours are
    // found again.)
    matches!(e.kind(), ConnectionRefused | ConnectionReset | TimedOut | HostUnreachable | NetworkUnreachable)
        || e.to_string().contains("Connection refused")
        || e.to_string().contains("No route to host")
}

/// Detaches the mount on `path` lazily, whatever state it is in.
fn detach(path: &Path) {
    let ok = std::process::Command::new("fusermount3").arg("-uz").arg(path).status().is_ok_and(|s| s.success())
        || std::process::Command::new("umount").arg("-l").arg(path).status().is_ok_and(|s| s.success());
    if !ok {
        warn!(path = %path.display(), "could not detach the mount");
    }
}

/// A mount left behind by a daemon that was killed answers every access
/// with ENOTCONN; detach it so the mount point can be mounted again (or
/// removed). Nothing happens to a live mount or a plain directory.
pub fn detach_dead(path: &Path) {
    if std::fs::metadata(path).err().and_then(|e| e.raw_os_error()) != Some(libc::ENOTCONN) {
        return;
    }
    warn!(path = %path.display(), "a dead mount is left on the mount point; detaching it");
    detach(path);
}
