//! FUSE mount of a Tidepool file system (crate `fuser`), so any POSIX
//! tool works on it.
//!
//! Every mount is a client of the file system's manager
//! ([`super::manager`]): metadata comes from the manager and is cached here
//! under tokens ([`super::remote`]); file data moves straight between this
//! node and the storage nodes by extent map. A mount without a manager
//! address runs one in-process (single node).
//!
//! Coherence: POSIX across nodes, through tokens. A read on any node that
//! starts after a write on another has returned sees the write; a stat sees
//! the size. The kernel is told to cache nothing itself (attribute and
//! entry TTL 0, `direct_io` files, as GPFS keeps file data in its own pool
//! rather than the page cache), because a token taken back must take the
//! cached state with it, and the kernel's page locks cannot be waited on
//! from inside a request without deadlock. `mmap` still works
//! (`FUSE_DIRECT_IO_ALLOW_MMAP`) but is coherent on one node only.
//!
//! FUSE runs several threads, so one request waiting (for a synchronous DM
//! event, a token, or I/O) does not stall the mount.
//!
//! With a [`DmLink`] the mount generates DM events into its node's
//! [`EventSink`] before the operations that XDSM names (read, write,
//! truncate; create, remove, rename, link, symlink; nospace when a write
//! finds the volume full): a synchronous event holds the operation until a
//! DM application answers, and ABORT fails it with the errno the
//! application chose. The post events (postcreate ... postsymlink) follow
//! the operation, asynchronously, with its outcome.

use super::blockdev::BlockDev;
use super::data::DataPath;
use super::format::{region_flags, Inode, ROOT_INO};
use super::locks::LockType;
use super::manager::{Manager, ManagerHandle};
use super::meta::NAME_MAX;
use super::remote::MetaClient;
use super::rpc::{self, Credentials, Destroyed, Mode, Reply, Req, WireSetAttr};
use dmapi::disp::GenerationView;
use dmapi::event::{DmEvent, EventBody};
use dmapi::types::{DmAttrName, DmHandle, DmResponse, EventSet, EventType, FsId, NodeId};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The kernel caches nothing: this node's token cache answers instead.
const TTL: Duration = Duration::ZERO;
/// FUSE worker threads per mount.
pub const DEFAULT_THREADS: usize = 4;

type R<T> = Result<T, i32>;
/// A directory listing: (name, inode, kind).
type Listing = Vec<(Vec<u8>, u64, u8)>;

pub struct TidepoolFs {
    meta: MetaClient,
    data: DataPath,
    bs: u64,
    dm: Option<DmLink>,
    /// Directory listings of open directory handles.
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
}

/// Where a mount's DM events go: its node's source engine. The mount asks
/// it which events anybody disposed (so operations nobody watches pay
/// nothing) and hands it each event to send to its session; a synchronous
/// event's call returns with the DM application's answer.
pub trait EventSink: Send + Sync {
    /// The node's dispositions for file system `fs` as of now; `None`:
    /// unknown, so every event is offered to [`generate`](Self::generate).
    fn view(&self, fs: FsId) -> Option<GenerationView>;
    /// Generates `ev` on `fs` (`file_events`: the file's own event list;
    /// `attrs`: its DM attributes, for destroy events). The answer, or why
    /// the node could not be asked.
    fn generate(
        &self,
        fs: FsId,
        ev: DmEvent,
        file_events: EventSet,
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<DmResponse, String>;
    /// Tells the node that `fs` is mounted here now, or no longer.
    fn mounted(&self, fs: FsId, yes: bool) -> Result<(), String>;
}

/// A mount's DM events: the sink, and the DM file-system id this file
/// system has in the cluster configuration.
#[derive(Clone)]
pub struct DmLink {
    pub sink: Arc<dyn EventSink>,
    pub fs: FsId,
}

fn ts(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn to_ns(t: TimeOrNow) -> u64 {
    let st = match t {
        TimeOrNow::SpecificTime(s) => s,
        TimeOrNow::Now => SystemTime::now(),
    };
    st.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn e(errno: i32) -> Errno {
    Errno::from_i32(errno)
}

impl TidepoolFs {
    pub fn new(meta: MetaClient, dev: Arc<dyn BlockDev>) -> Self {
        let data = DataPath::new(meta.clone(), dev);
        Self { meta, bs: data.bs, data, dm: None, dirs: Mutex::new(HashMap::new()), next_fh: AtomicU64::new(1) }
    }

    pub fn with_dm(mut self, link: DmLink) -> Self {
        self.dm = Some(link);
        self
    }

    fn handle(&self, ino: u64) -> Option<DmHandle> {
        let link = self.dm.as_ref()?;
        let cached = self.meta.slot(ino).st.lock().inode.map(|i| i.generation.get());
        let igen = cached.or_else(|| self.meta.ensure(ino, Mode::Read).ok().map(|(_, i)| i.generation.get()));
        Some(DmHandle::file(link.fs, ino, igen.unwrap_or(0)))
    }

    /// The per-file event list (`dm_set_eventlist` on a file handle) of `ino`.
    fn file_events(&self, ino: u64) -> EventSet {
        let cached = self.meta.slot(ino).st.lock().inode.map(|i| i.dm_events.get());
        let mask = cached.or_else(|| self.meta.ensure(ino, Mode::Read).ok().map(|(_, i)| i.dm_events.get()));
        EventSet(mask.unwrap_or(0))
    }

    /// Generates a DM event for an operation about to run; `Err(errno)`
    /// when the DM application aborted it (or the node could not be asked:
    /// an HSM's file must not be touched behind its back). `file`: the
    /// object whose own event list also enables the event.
    fn dm_event(&self, t: EventType, file: Option<u64>, body: impl FnOnce(&Self) -> EventBody) -> R<()> {
        self.dm_event_attrs(t, file, Vec::new(), body)
    }

    fn dm_event_attrs(
        &self,
        t: EventType,
        file: Option<u64>,
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
        body: impl FnOnce(&Self) -> EventBody,
    ) -> R<()> {
        let Some(link) = &self.dm else { return Ok(()) };
        let view = link.sink.view(link.fs);
        // Nobody disposed of this type: not even the file's own list is needed.
        if view.is_some_and(|v| !v.disposed.contains(t)) {
            return Ok(());
        }
        let file_events = file.map_or(EventSet::EMPTY, |ino| self.file_events(ino));
        if view.is_some_and(|v| !v.generates(t, file_events)) {
            return Ok(());
        }
        // The node stamps its own id as the source.
        let ev = DmEvent::new(t, NodeId(0), body(self)).map_err(|e| e.errno())?;
        match link.sink.generate(link.fs, ev, file_events, attrs) {
            Ok(DmResponse::Abort(errno)) => Err(abort_errno(errno)),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, event = ?t, "cannot generate a DM event; failing the operation");
                Err(libc::EIO)
            }
        }
    }

    /// Does a data access fall in a managed region with its flag? A file
    /// whose regions were never set is managed whole.
    fn managed(&self, t: EventType, ino: u64, off: u64, len: u64) -> bool {
        let flag = match t {
            EventType::Read => region_flags::READ,
            EventType::Write => region_flags::WRITE,
            EventType::Truncate => region_flags::TRUNCATE,
            _ => return true,
        };
        let regions = match self.meta.ensure(ino, Mode::Read) {
            Ok((slot, _)) => slot.st.lock().dm.regions.clone(),
            Err(_) => return true,
        };
        regions.is_none_or(|rs| rs.iter().any(|r| r.flags & flag != 0 && r.touches(off, len)))
    }

    fn data_event(&self, t: EventType, ino: u64, offset: u64, length: u64) -> R<()> {
        if self.dm.is_none() || !self.managed(t, ino, offset, length) {
            return Ok(());
        }
        self.dm_event(t, Some(ino), |s| EventBody::Data {
            handle: s.handle(ino).unwrap_or_else(|| DmHandle::fs(FsId(0))),
            offset: offset as i64,
            length,
        })
    }

    fn ns_event(&self, t: EventType, parent: u64, name: &OsStr, other: Option<(u64, &[u8])>) -> R<()> {
        self.ns_event_rc(t, parent, name, other, 0, None)
    }

    /// `retcode` is the operation's outcome for post events (0 or an errno);
    /// `made`: the second object's handle when the caller has it already.
    fn ns_event_rc(
        &self,
        t: EventType,
        parent: u64,
        name: &OsStr,
        other: Option<(u64, &[u8])>,
        retcode: i32,
        made: Option<DmHandle>,
    ) -> R<()> {
        if self.dm.is_none() {
            return Ok(());
        }
        self.dm_event(t, Some(parent), |s| EventBody::Namespace {
            mode: 0,
            handle1: s.handle(parent),
            handle2: made.or_else(|| other.and_then(|(ino, _)| if ino == 0 { None } else { s.handle(ino) })),
            name1: name.as_bytes().to_vec(),
            name2: other.map(|(_, n)| n.to_vec()).unwrap_or_default(),
            retcode,
        })
    }

    /// The asynchronous post event of a namespace operation, success or not.
    fn post_event<T>(&self, t: EventType, parent: u64, name: &OsStr, r: &R<T>, other: Option<(u64, &[u8])>) {
        let rc = r.as_ref().err().copied().unwrap_or(0);
        let _ = self.ns_event_rc(t, parent, name, other, rc, None);
    }

    /// The asynchronous event of an object, `handle1` only (attribute, close).
    fn object_event(&self, t: EventType, ino: u64, handle: Option<DmHandle>) {
        if self.dm.is_some() {
            let _ = self.dm_event(t, Some(ino), |s| EventBody::Namespace {
                mode: 0,
                handle1: handle.or_else(|| s.handle(ino)),
                handle2: None,
                name1: Vec::new(),
                name2: Vec::new(),
                retcode: 0,
            });
        }
    }

    /// A file is gone (last link and last open): the asynchronous destroy
    /// event, with the attribute `dm_set_return_on_destroy` asked for.
    fn destroy_event(&self, d: Option<Destroyed>) {
        let (Some(d), Some(link)) = (d, &self.dm) else { return };
        let handle = DmHandle::file(link.fs, d.ino, d.generation);
        let _ = self.dm_event_attrs(EventType::Destroy, None, d.attrs, |_| EventBody::Destroy {
            handle,
            attrname: DmAttrName::default(),
            attrcopy: Vec::new(),
        });
    }

    /// A file's extended attributes, cached under a shared token.
    fn xattrs(&self, ino: u64) -> R<Vec<(Vec<u8>, Vec<u8>)>> {
        let (slot, _) = self.meta.ensure(ino, Mode::Read)?;
        let xs = slot.st.lock().dm.xattrs.clone();
        Ok(xs)
    }

    fn set_xattr(&self, ino: u64, name: &[u8], value: Option<&[u8]>, flags: i32) -> R<()> {
        // POSIX ACLs (system.posix_acl_*) are not kept: permissions are the mode bits.
        if name.starts_with(b"system.") {
            return Err(libc::EOPNOTSUPP);
        }
        let req = Req::SetXattr { ino, name: name.to_vec(), value: value.map(<[u8]>::to_vec), flags };
        match self.meta.ask(req)? {
            Reply::Granted { .. } => Ok(()),
            _ => Err(libc::EIO),
        }
    }

    /// Out of space: a synchronous nospace event lets an HSM free some and
    /// answer CONTINUE, after which the write is tried once more.
    fn write_with_nospace_retry(&self, ino: u64, off: u64, data: &[u8], append: bool) -> R<()> {
        let write = || if append { self.data.append(ino, data) } else { self.data.write(ino, off, data, true) };
        match write() {
            Err(libc::ENOSPC) if self.dm.is_some() => {
                let fs = self.dm.as_ref().map(|l| l.fs).unwrap_or(FsId(0));
                self.dm_event(EventType::Nospace, None, |_| EventBody::Namespace {
                    mode: 0,
                    handle1: Some(DmHandle::fs(fs)),
                    handle2: None,
                    name1: Vec::new(),
                    name2: Vec::new(),
                    retcode: 0,
                })?;
                write()
            }
            r => r,
        }
    }

    fn attr(&self, i: &Inode) -> FileAttr {
        FileAttr {
            ino: INodeNo(i.ino.get()),
            size: i.size.get(),
            blocks: i.blocks.get() * self.bs / 512,
            atime: ts(i.atime_ns.get()),
            mtime: ts(i.mtime_ns.get()),
            ctime: ts(i.ctime_ns.get()),
            crtime: ts(i.ctime_ns.get()),
            kind: kind_of(i.mode.get()),
            perm: (i.mode.get() & 0o7777) as u16,
            nlink: i.nlink.get(),
            uid: i.uid.get(),
            gid: i.gid.get(),
            rdev: i.rdev.get(),
            blksize: self.bs as u32,
            flags: 0,
        }
    }

    /// Clears SUID, and SGID with group execute, if set (see `write`).
    fn kill_suid(&self, ino: u64) -> R<()> {
        let mode = self.getattr_ino(ino)?.mode.get();
        let mut keep = mode & 0o7777 & !libc::S_ISUID;
        if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
            keep &= !libc::S_ISGID;
        }
        if keep == mode & 0o7777 {
            return Ok(());
        }
        let set = WireSetAttr { mode: Some(keep), ..Default::default() };
        self.meta.ask(Req::SetAttr { ino, set }).map(|_| ())
    }

    fn getattr_ino(&self, ino: u64) -> R<Inode> {
        self.meta.ensure(ino, Mode::Read).map(|(_, i)| i)
    }

    /// `name` in `parent`, from this node's name cache when it holds a
    /// token on the directory.
    fn lookup_ino(&self, parent: u64, name: &[u8]) -> R<u64> {
        // Only the kernel's handle decoding asks these (FUSE_EXPORT_SUPPORT).
        match name {
            b"." => {
                let i = self.getattr_ino(parent)?;
                return if i.mode.get() == 0 { Err(libc::ESTALE) } else { Ok(i.ino.get()) };
            }
            b".." => {
                return match self.meta.ask(Req::Parent { dir: parent }) {
                    Ok(Reply::Entry { ino }) => Ok(ino),
                    Ok(_) => Err(libc::EIO),
                    Err(e) => Err(e),
                }
            }
            _ => {}
        }
        let (slot, _) = self.meta.ensure(parent, Mode::Read)?;
        let gen = {
            let st = slot.st.lock();
            if let Some(hit) = st.names.get(name) {
                return hit.ok_or(libc::ENOENT);
            }
            st.gen
        };
        let r = match self.meta.ask(Req::Lookup { parent, name: name.to_vec() }) {
            Ok(Reply::Entry { ino }) => Ok(ino),
            Ok(_) => Err(libc::EIO),
            Err(e) => Err(e),
        };
        if matches!(r, Ok(_) | Err(libc::ENOENT)) {
            let mut st = slot.st.lock();
            if st.holds(Mode::Read) && st.gen == gen {
                st.names.insert(name.to_vec(), r.ok());
            }
        }
        r
    }

    /// Records a name change in a directory this node caches, if nothing
    /// took the directory's token since `gen`. Bumps the generation, so a
    /// lookup that asked the manager before this change does not cache its
    /// older answer over it.
    fn note_name(&self, dir: u64, gen: u64, name: &[u8], ino: Option<u64>) {
        let slot = self.meta.slot(dir);
        let mut st = slot.st.lock();
        if st.holds(Mode::Read) && st.gen == gen {
            st.names.insert(name.to_vec(), ino);
        } else {
            st.names.remove(name);
        }
        st.gen += 1;
    }

    /// Drops a cached name (and any lookup answer in flight for it).
    fn forget_name(&self, dir: u64, name: &[u8]) {
        let slot = self.meta.slot(dir);
        let mut st = slot.st.lock();
        st.names.remove(name);
        st.gen += 1;
    }

    fn gen_of(&self, dir: u64) -> u64 {
        self.meta.slot(dir).st.lock().gen
    }

    /// A create event, then the create: one path for files, directories, nodes and symlinks.
    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        symlink: Option<&[u8]>,
        open: bool,
        rdev: u32,
    ) -> R<Inode> {
        let (t, post) = match symlink {
            Some(_) => (EventType::Symlink, EventType::Postsymlink),
            None => (EventType::Create, EventType::Postcreate),
        };
        self.ns_event(t, parent, name, symlink.map(|s| (0, s)))?;
        let gen = self.gen_of(parent);
        let r = match self.meta.ask(Req::Create {
            parent,
            name: name.as_bytes().to_vec(),
            mode,
            uid: req.uid(),
            gid: req.gid(),
            symlink: symlink.map(|s| s.to_vec()),
            open,
            rdev,
            at: None,
        }) {
            Ok(Reply::Changed { inode: Some(b), .. }) => rpc::inode_from(&b).map_err(|_| libc::EIO),
            Ok(_) => Err(libc::EIO),
            Err(e) => Err(e),
        };
        if let Ok(i) = &r {
            self.note_name(parent, gen, name.as_bytes(), Some(i.ino.get()));
        }
        if let Some(link) = &self.dm {
            // The new object's handle from the manager's answer: looking it up
            // would ask the manager for a token on every create.
            let made = r.as_ref().ok().map(|i| DmHandle::file(link.fs, i.ino.get(), i.generation.get()));
            let (ino, rc) = match &r {
                Ok(i) => (i.ino.get(), 0),
                Err(x) => (0, *x),
            };
            let _ = self.ns_event_rc(post, parent, name, Some((ino, symlink.unwrap_or(b""))), rc, made);
        }
        r
    }

    fn reply_entry(&self, r: R<Inode>, reply: ReplyEntry) {
        match r {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), Generation(i.generation.get() as u64)),
            Err(x) => reply.error(e(x)),
        }
    }

    /// Unlink or rmdir; repeated if the name changed while the manager
    /// gathered the tokens.
    fn remove(&self, parent: u64, name: &OsStr, rmdir: bool) -> R<()> {
        self.ns_event(EventType::Remove, parent, name, None)?;
        let gen = self.gen_of(parent);
        let mut r = Err(libc::EAGAIN);
        for _ in 0..20 {
            let n = name.as_bytes().to_vec();
            let req = if rmdir { Req::Rmdir { parent, name: n } } else { Req::Unlink { parent, name: n } };
            r = self.meta.ask(req).map(destroyed_by);
            if r.as_ref().err() != Some(&libc::EAGAIN) {
                break;
            }
        }
        if r.is_ok() {
            self.note_name(parent, gen, name.as_bytes(), None);
        }
        self.post_event(EventType::Postremove, parent, name, &r, None);
        r.map(|d| self.destroy_event(d))
    }
}

/// A value (or name list) for getxattr/listxattr: its size when asked
/// with size 0, ERANGE when it does not fit.
fn reply_xattr(v: R<Vec<u8>>, size: u32, reply: fuser::ReplyXattr) {
    match v {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(x) => reply.error(e(x)),
    }
}

/// The file a namespace change destroyed, if any.
fn destroyed_by(r: Reply) -> Option<Destroyed> {
    match r {
        Reply::Changed { destroyed, .. } | Reply::Released { destroyed } => destroyed,
        _ => None,
    }
}

fn reply_empty(r: R<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(x) => reply.error(e(x)),
    }
}

impl Filesystem for TidepoolFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // mmap of direct_io files (kernels 6.6 and later); without it mmap fails.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        // Record locks and flock come here, to be cluster-wide, instead of
        // being kept by this node's kernel alone.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS);
        // open_by_handle_at(2) on the mount (libdmapi's dm_open_by_handle):
        // the kernel looks an inode it has forgotten up as "." in itself,
        // and a directory's parent as "..".
        let _ = config.add_capabilities(InitFlags::FUSE_EXPORT_SUPPORT);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(x) = self.meta.flush_all() {
            tracing::error!(errno = x, "could not give back file sizes at unmount");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if name.len() > NAME_MAX {
            return reply.error(Errno::ENAMETOOLONG);
        }
        let r = self.lookup_ino(parent.0, name.as_bytes()).and_then(|ino| self.getattr_ino(ino));
        self.reply_entry(r, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.getattr_ino(ino.0) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(x) => reply.error(e(x)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Some(sz) = size {
            if let Err(x) = self.data_event(EventType::Truncate, ino.0, sz, 0) {
                return reply.error(e(x));
            }
        }
        let set = WireSetAttr { mode, uid, gid, size, atime_ns: atime.map(to_ns), mtime_ns: mtime.map(to_ns) };
        match self.meta.ask(Req::SetAttr { ino: ino.0, set }) {
            Ok(Reply::Attr(b)) => match rpc::inode_from(&b) {
                Ok(i) => {
                    reply.attr(&TTL, &self.attr(&i));
                    // XDSM: attribute changes other than size (truncate has its own event).
                    if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
                        self.object_event(EventType::Attribute, ino.0, None);
                    }
                }
                Err(_) => reply.error(Errno::EIO),
            },
            Ok(_) => reply.error(Errno::EIO),
            Err(x) => reply.error(e(x)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.data.read(ino.0, 0, 4096) {
            Ok(d) => reply.data(&d),
            Err(x) => reply.error(e(x)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let r = self.make(req, parent.0, name, mode & !umask, None, false, rdev);
        self.reply_entry(r, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = self.make(req, parent.0, name, libc::S_IFDIR | (mode & !umask & 0o7777), None, false, 0);
        self.reply_entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.remove(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.remove(parent.0, name, true), reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let t = target.as_os_str().as_bytes();
        if t.len() > 4095 {
            return reply.error(Errno::ENAMETOOLONG);
        }
        let r = self.make(req, parent.0, link_name, libc::S_IFLNK | 0o777, Some(t), false, 0);
        self.reply_entry(r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let (sp, dp) = (parent.0, newparent.0);
        if let Err(x) = self.ns_event(EventType::Rename, sp, name, Some((dp, newname.as_bytes()))) {
            return reply.error(e(x));
        }
        let g1 = self.gen_of(sp);
        let mut r = Err(libc::EAGAIN);
        for _ in 0..20 {
            r = self
                .meta
                .ask(Req::Rename {
                    sp,
                    sname: name.as_bytes().to_vec(),
                    dp,
                    dname: newname.as_bytes().to_vec(),
                    noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
                })
                .map(destroyed_by);
            if r.as_ref().err() != Some(&libc::EAGAIN) {
                break;
            }
        }
        if r.is_ok() {
            self.note_name(sp, g1, name.as_bytes(), None);
            // The moved inode's number is not in the reply: forget the name.
            self.forget_name(dp, newname.as_bytes());
        }
        self.post_event(EventType::Postrename, sp, name, &r, Some((dp, newname.as_bytes())));
        reply_empty(r.map(|d| self.destroy_event(d)), reply);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (ino, dp) = (ino.0, newparent.0);
        if let Err(x) = self.ns_event(EventType::Link, dp, newname, Some((ino, b""))) {
            return reply.error(e(x));
        }
        let gen = self.gen_of(dp);
        let r = match self.meta.ask(Req::Link { ino, parent: dp, name: newname.as_bytes().to_vec() }) {
            Ok(Reply::Changed { inode: Some(b), .. }) => rpc::inode_from(&b).map_err(|_| libc::EIO),
            Ok(_) => Err(libc::EIO),
            Err(x) => Err(x),
        };
        if r.is_ok() {
            self.note_name(dp, gen, newname.as_bytes(), Some(ino));
        }
        self.post_event(EventType::Postlink, dp, newname, &r, Some((ino, b"")));
        self.reply_entry(r, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Counted by the manager, so that the file outlives its last name;
        // counted here first, so that a manager restarting meanwhile hears
        // of it again (a count too many only keeps an unlinked file longer).
        let slot = self.meta.slot(ino.0);
        slot.st.lock().opens += 1;
        match self.meta.ask(Req::Open { ino: ino.0 }) {
            Ok(_) => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES)
            }
            Err(x) => {
                slot.st.lock().opens -= 1;
                reply.error(e(x))
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last close of an open file lets go of its flocks.
        if let Some(owner) = lock_owner {
            if let Err(x) = self.meta.unlock_all(ino.0, owner.0) {
                tracing::warn!(ino = ino.0, errno = x, "flock not released by the manager");
            }
        }
        reply.ok();
        {
            let slot = self.meta.slot(ino.0);
            let mut st = slot.st.lock();
            st.opens = st.opens.saturating_sub(1);
        }
        let destroyed = match self.meta.ask(Req::Release { ino: ino.0 }) {
            Ok(r) => destroyed_by(r),
            Err(x) => {
                tracing::warn!(ino = ino.0, errno = x, "release not recorded by the manager");
                None
            }
        };
        let handle = match (&destroyed, &self.dm) {
            (Some(d), Some(link)) => Some(DmHandle::file(link.fs, d.ino, d.generation)),
            _ => None,
        };
        self.object_event(EventType::Close, ino.0, handle);
        self.destroy_event(destroyed);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Err(x) = self.data_event(EventType::Read, ino.0, offset, size as u64) {
            return reply.error(e(x));
        }
        match self.data.read(ino.0, offset, size as u64) {
            Ok(d) => reply.data(&d),
            Err(x) => reply.error(e(x)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // O_APPEND: the end of the file is found here, under the exclusive
        // token, not from the kernel's idea of the size (stale when another
        // node appended), so appends from many nodes never overlap.
        let append = flags.0 & libc::O_APPEND != 0;
        if let Err(x) = self.data_event(EventType::Write, ino.0, offset, data.len() as u64) {
            return reply.error(e(x));
        }
        // As the kernel does for the file systems whose writes it sees: a
        // write by anyone but root clears SUID, and SGID where it means
        // set-group-ID (group execute set), so nobody plants a privileged binary.
        if req.uid() != 0 {
            if let Err(x) = self.kill_suid(ino.0) {
                return reply.error(e(x));
            }
        }
        match self.write_with_nospace_retry(ino.0, offset, data, append) {
            Ok(()) => reply.written(data.len() as u32),
            Err(x) => {
                tracing::debug!(ino = ino.0, offset, len = data.len(), errno = x, "write failed");
                reply.error(e(x))
            }
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        // Data went to the storage node in write(); sizes go back with the
        // token. A close lets go of the closing process's record locks.
        reply_empty(self.meta.unlock_all(ino.0, lock_owner.0), reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Allocating, punching or zeroing changes the file's data as a write
        // does: a managed region raises the same event first.
        if let Err(x) = self.data_event(EventType::Write, ino.0, offset, length) {
            return reply.error(e(x));
        }
        let r = self.meta.ask(Req::Fallocate { ino: ino.0, mode, off: offset, len: length });
        reply_empty(r.map(|_| ()), reply);
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: fuser::ReplyLock,
    ) {
        let typ = match LockType::from_fcntl(typ) {
            Ok(Some(t)) => t,
            Ok(None) => return reply.error(Errno::EINVAL),
            Err(x) => return reply.error(e(x)),
        };
        match self.meta.ask(Req::GetLock { ino: ino.0, owner: lock_owner.0, typ, start, end }) {
            Ok(Reply::Lock { held: Some(l) }) => reply.locked(l.start, l.end, l.typ.to_fcntl(), l.pid),
            Ok(Reply::Lock { held: None }) => reply.locked(start, end, libc::F_UNLCK, 0),
            Ok(_) => reply.error(Errno::EIO),
            Err(x) => reply.error(e(x)),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let typ = match LockType::from_fcntl(typ) {
            Ok(t) => t,
            Err(x) => return reply.error(e(x)),
        };
        let (meta, ino, owner) = (self.meta.clone(), ino.0, lock_owner.0);
        if !sleep || typ.is_none() {
            return reply_empty(meta.lock(ino, owner, typ, start, end, pid, false), reply);
        }
        // F_SETLKW may wait as long as the holder keeps the lock: on a
        // thread of its own, not one of the mount's few FUSE threads. The
        // kernel cannot take a request back once it is here, and fuser
        // passes no FUSE_INTERRUPT, so that thread watches the waiting
        // process: a signal for it (SIGKILL included) ends the wait with
        // EINTR, as F_SETLKW on a local file system would.
        let waiter = req.pid();
        let spawned = std::thread::Builder::new().name("fuse-lockwait".into()).spawn(move || {
            let (tx, rx) = std::sync::mpsc::channel();
            let m = meta.clone();
            let asked = std::thread::Builder::new().name("fuse-lockreq".into()).spawn(move || {
                let _ = tx.send(m.lock(ino, owner, typ, start, end, pid, true));
            });
            if asked.is_err() {
                return reply.error(Errno::EAGAIN);
            }
            let mut cancelled = false;
            loop {
                match rx.recv_timeout(LOCK_WAIT_POLL) {
                    Ok(r) => return reply_empty(r, reply),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if !cancelled && signal_pending(waiter) {
                            cancelled = true;
                            if let Err(x) = meta.ask(Req::CancelLockWait { ino, owner }) {
                                tracing::warn!(ino, errno = x, "could not cancel a lock wait");
                            }
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return reply.error(Errno::EIO),
                }
            }
        });
        if let Err(x) = spawned {
            tracing::error!(error = %x, "no thread to wait for a lock on");
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: fuser::ReplyXattr) {
        let v = self
            .xattrs(ino.0)
            .and_then(|xs| xs.into_iter().find(|(n, _)| n == name.as_bytes()).map(|(_, v)| v).ok_or(libc::ENODATA));
        reply_xattr(v, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        let names = self.xattrs(ino.0).map(|xs| {
            xs.into_iter().flat_map(|(mut n, _)| {
                n.push(0);
                n
            })
        });
        reply_xattr(names.map(|n| n.collect()), size, reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.set_xattr(ino.0, name.as_bytes(), Some(value), flags), reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.set_xattr(ino.0, name.as_bytes(), None, 0), reply);
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Data first, then the size that makes it reachable.
        if let Err(x) = self.data.dev.flush() {
            return reply.error(e(x.errno()));
        }
        let slot = self.meta.slot(ino.0);
        reply_empty(self.meta.flush(ino.0, &slot), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.meta.ask(Req::ReadDir { dir: ino.0 }) {
            Ok(Reply::Dir(list)) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().insert(fh, Arc::new(list));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(x) => reply.error(e(x)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(list) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let dots = [(b".".to_vec(), ino.0, libc::DT_DIR), (b"..".to_vec(), ino.0, libc::DT_DIR)];
        for (i, (name, child, dt)) in dots.iter().chain(list.iter()).enumerate().skip(offset as usize) {
            let ft = match *dt {
                libc::DT_DIR => FileType::Directory,
                libc::DT_LNK => FileType::Symlink,
                libc::DT_FIFO => FileType::NamedPipe,
                libc::DT_SOCK => FileType::Socket,
                libc::DT_CHR => FileType::CharDevice,
                libc::DT_BLK => FileType::BlockDevice,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(*child), (i + 1) as u64, ft, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.meta.ask(Req::StatFs) {
            Ok(Reply::StatFs { blocks, bfree, files, ffree }) => {
                reply.statfs(blocks, bfree, bfree, files, ffree, self.bs as u32, NAME_MAX as u32, self.bs as u32)
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(x) => reply.error(e(x)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make(req, parent.0, name, libc::S_IFREG | (mode & !umask & 0o7777), None, true, 0) {
            Ok(i) => {
                self.meta.slot(i.ino.get()).st.lock().opens += 1;
                reply.created(
                    &TTL,
                    &self.attr(&i),
                    Generation(i.generation.get() as u64),
                    FileHandle(0),
                    FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
                )
            }
            Err(x) => reply.error(e(x)),
        }
    }
}

/// How to mount.
#[derive(Default)]
pub struct MountOpts {
    /// The file system's manager; `None` runs one in this process.
    pub manager: Option<SocketAddr>,
    /// Where the in-process manager listens for other nodes (default: a
    /// free loopback port, this node only).
    pub serve: Option<SocketAddr>,
    pub dm: Option<DmLink>,
    /// This node's name in the manager's log.
    pub name: String,
    /// FUSE threads (default [`DEFAULT_THREADS`]).
    pub threads: usize,
    /// Serve only the user who mounted (no `allow_other`). By default a
    /// mount serves every user of the machine, the kernel checking
    /// permissions against the inodes (`default_permissions`).
    pub owner_only: bool,
    /// This node and the cluster key, for the manager protocol (and for
    /// the in-process manager's own handshakes).
    pub creds: Credentials,
    /// Finds the manager again after the connection is lost (it may have
    /// moved to another node); without it, `manager` is tried again.
    pub resolve: Option<super::remote::Resolver>,
}

/// A mounted file system; dropping it gives back what this node holds and
/// unmounts.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    meta: MetaClient,
    /// Its volume, closed when the node is expelled.
    dev: Arc<dyn BlockDev>,
    manager: Option<ManagerHandle>,
    /// Where its DM events go and the root's handle.
    dm: Option<(DmLink, DmHandle)>,
}

/// Why a mount-level DM event did not let the operation go.
enum Refused {
    /// The DM application answered ABORT with this errno.
    Aborted(i32),
    /// The node daemon could not be asked.
    Unreachable,
}

/// The errno an operation fails with when the DM application aborts it
/// (an ABORT without one is EIO).
fn abort_errno(errno: i32) -> i32 {
    if errno > 0 {
        errno
    } else {
        libc::EIO
    }
}

/// A mount-level DM event (mount, preunmount, unmount).
fn fs_event(link: &DmLink, t: EventType, body: EventBody) -> Result<(), Refused> {
    let ev = DmEvent::new(t, NodeId(0), body).map_err(|x| Refused::Aborted(x.errno()))?;
    match link.sink.generate(link.fs, ev, EventSet::EMPTY, Vec::new()) {
        Ok(DmResponse::Abort(errno)) => Err(Refused::Aborted(abort_errno(errno))),
        Ok(_) => Ok(()),
        Err(x) => {
            tracing::error!(error = %x, event = ?t, "cannot generate a DM event");
            Err(Refused::Unreachable)
        }
    }
}

fn unmount_body(fs: FsId, root: Option<DmHandle>, retcode: i32) -> EventBody {
    EventBody::Namespace {
        mode: 0,
        handle1: Some(DmHandle::fs(fs)),
        handle2: root,
        name1: Vec::new(),
        name2: Vec::new(),
        retcode,
    }
}

impl Mounted {
    /// Reconnects to the file system's manager if its role moved
    /// ([`MetaClient::recheck_manager`]).
    pub fn recheck_manager(&self) -> bool {
        self.meta.recheck_manager()
    }

    /// This node is out of the cluster (its lease ended; others may fence
    /// it and take its tokens): every call to the manager fails at once
    /// and the mount no longer reconnects, so nothing waits on a manager
    /// that will refuse it. What it held is not given back, and its volume
    /// connection is closed for good, so that no write it still had under
    /// way can land once this host registers again in a new membership.
    pub fn expel(&self) {
        self.meta.close();
        self.dev.close();
    }

    /// Where this mount's in-process manager listens, if it runs one.
    pub fn manager_addr(&self) -> Option<SocketAddr> {
        self.manager.as_ref().map(|m| m.addr)
    }

    /// The synchronous preunmount event: `Err(errno)` when the DM
    /// application refuses the unmount (the mount stays). A node daemon
    /// that cannot be asked does not hold the unmount up.
    pub fn preunmount(&self) -> R<()> {
        let Some((link, root)) = &self.dm else { return Ok(()) };
        match fs_event(link, EventType::Preunmount, unmount_body(link.fs, Some(*root), 0)) {
            Err(Refused::Aborted(errno)) => Err(errno),
            Err(Refused::Unreachable) => {
                tracing::warn!("node daemon unreachable: unmounting without a preunmount event");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    pub fn unmount(mut self) -> std::io::Result<()> {
        self.finish()
    }

    /// Gives back sizes, unmounts, then the asynchronous unmount event
    /// with the outcome.
    fn finish(&mut self) -> std::io::Result<()> {
        let _ = self.meta.flush_all();
        let r = match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => return Ok(()),
        };
        self.meta.give_back_all();
        self.meta.close();
        if let Some((link, _)) = self.dm.take() {
            let rc = r.as_ref().err().map_or(0, |x| x.raw_os_error().unwrap_or(libc::EIO));
            let _ = fs_event(&link, EventType::Unmount, unmount_body(link.fs, None, rc));
            if let Err(x) = link.sink.mounted(link.fs, false) {
                tracing::warn!(error = %x, "node daemon not told of the unmount");
            }
        }
        r
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Mounts the file system on `dev` at `mountpoint` in background threads.
/// A mount's `dm_mount_event_t`, for its mount event and `dm_get_mountinfo`:
/// the mount point is the file system's root directory (a FUSE mount covers
/// the directory it is mounted on), the media the mount's name.
pub fn mount_body(fs: FsId, root: DmHandle, mountpoint: &Path, media: &[u8]) -> EventBody {
    EventBody::Mount {
        mode: 0,
        fs_handle: DmHandle::fs(fs),
        mountpoint_handle: Some(root),
        mountpoint_path: mountpoint.as_os_str().as_bytes().to_vec(),
        media: media.to_vec(),
        root_handle: Some(root),
    }
}

pub fn mount(dev: Arc<dyn BlockDev>, mountpoint: &Path, opts: MountOpts) -> std::io::Result<Mounted> {
    let (addr, manager) = match opts.manager {
        Some(a) => (a, None),
        None => {
            let m = Manager::open(dev.clone()).map_err(|x| std::io::Error::other(x.to_string()))?;
            let h = m.serve(opts.serve.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))), opts.creds.clone())?;
            (h.addr, Some(h))
        }
    };
    let name = if opts.name.is_empty() { format!("mount-{}", std::process::id()) } else { opts.name.clone() };
    let meta = match &opts.resolve {
        Some(r) if manager.is_none() => MetaClient::connect_resolved(r.clone(), &name, &opts.creds)?,
        _ => MetaClient::connect(addr, &name, &opts.creds)?,
    };
    let mut dm = None;
    if let Some(link) = &opts.dm {
        // The node learns its dispositions for this file system from the
        // file-system manager node once it knows of the mount (B11).
        link.sink.mounted(link.fs, true).map_err(std::io::Error::other)?;
        let root = meta.ensure(ROOT_INO, Mode::Read).map_err(std::io::Error::from_raw_os_error)?.1;
        let root = DmHandle::file(link.fs, ROOT_INO, root.generation.get());
        let body = mount_body(link.fs, root, mountpoint, name.as_bytes());
        // Synchronous: the mount happens only if the DM application lets it
        // (and, with a DM link asked for, only if the node can be asked).
        match fs_event(link, EventType::Mount, body) {
            Ok(()) => {}
            Err(Refused::Aborted(errno)) => return Err(std::io::Error::from_raw_os_error(errno)),
            Err(Refused::Unreachable) => return Err(std::io::Error::other("the node daemon cannot be asked")),
        }
        dm = Some((link.clone(), root));
    }
    let mut fs = TidepoolFs::new(meta.clone(), dev.clone());
    if let Some(link) = opts.dm {
        fs = fs.with_dm(link);
    }
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("tidepool".into()),
        MountOption::Subtype("tidepool".into()),
        MountOption::DefaultPermissions,
    ];
    if !opts.owner_only {
        if allow_other_permitted() {
            cfg.acl = fuser::SessionACL::All;
        } else {
            tracing::warn!("only root, or /etc/fuse.conf's user_allow_other, lets a mount serve other users: this mount serves its owner only");
        }
    }
    cfg.n_threads = Some(if opts.threads == 0 { DEFAULT_THREADS } else { opts.threads });
    cfg.clone_fd = true;
    let session = fuser::spawn_mount(fs, mountpoint, &cfg)?;
    Ok(Mounted { session: Some(session), meta, dev, manager, dm })
}

/// How often a thread waiting for a lock looks at its process's signals.
const LOCK_WAIT_POLL: Duration = Duration::from_millis(50);

/// Whether thread `tid` has a signal pending that it does not block or
/// ignore (or is gone): then its lock wait should end.
fn signal_pending(tid: u32) -> bool {
    let Ok(st) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return true };
    let mask = |field: &str| {
        st.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !(mask("SigBlk:") | mask("SigIgn:")) != 0
}

/// Whether fusermount lets this process mount with `allow_other`: root
/// always, other users when `/etc/fuse.conf` says `user_allow_other`.
fn allow_other_permitted() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root || std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|c| c.lines().any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other"))
}

/// A single-node mount (this process is the manager), as before managers
/// were separate: kept for tests and tools that mount one volume once.
pub fn spawn_mount(dev: Arc<dyn BlockDev>, mountpoint: &Path, dm: Option<DmLink>) -> std::io::Result<Mounted> {
    mount(dev, mountpoint, MountOpts { dm, ..Default::default() })
}
