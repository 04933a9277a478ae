//! FUSE mount of a Tidepool file system (crate `fuser`), so any POSIX
//! tool works on it.
//!
//! This is the single-node mount: the metadata store runs in the mounting
//! process (it is its own file-system manager) and file data moves
//! straight between this node and the storage node by extent map. The
//! kernel checks permissions (`default_permissions`).
//!
//! With a [`DmLink`] the mount generates DM events through the node
//! daemon's local API before the operations that XDSM names (read, write,
//! truncate; create, remove, rename, link, symlink; nospace when a write
//! finds the volume full): a synchronous event holds the operation until a
//! DM application answers, and ABORT fails it with the errno the
//! application chose. The post events (postcreate ... postsymlink) follow
//! the operation, asynchronously, with its outcome.

use super::blockdev::BlockDev;
use super::format::Inode;
use super::meta::{Cred, Kind, MetaError, MetaStore, SetAttr};
use dmapi::event::{DmEvent, EventBody};
use dmapi::types::{DmHandle, DmResponse, EventType, FsId, NodeId};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache attributes and names: short, because
/// other nodes change the same files.
const TTL: Duration = Duration::from_secs(1);

pub struct TidepoolFs {
    meta: MetaStore,
    dev: Arc<dyn BlockDev>,
    bs: u64,
    dm: Option<DmLink>,
}

/// Where a mount sends its DM events: the local node daemon, and the DM
/// file-system id this file system has in the cluster configuration.
pub struct DmLink {
    pub api: crate::node::api::Dm,
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

impl TidepoolFs {
    pub fn new(dev: Arc<dyn BlockDev>) -> super::Result<Self> {
        let meta = MetaStore::open(dev.clone())?;
        let bs = meta.block_size() as u64;
        Ok(Self { meta, dev, bs, dm: None })
    }

    pub fn with_dm(mut self, link: DmLink) -> Self {
        self.dm = Some(link);
        self
    }

    fn handle(&self, ino: u64) -> Option<DmHandle> {
        let link = self.dm.as_ref()?;
        let igen = self.meta.getattr(ino).map_or(0, |i| i.generation.get());
        Some(DmHandle::file(link.fs, ino, igen))
    }

    /// Generates a DM event for an operation about to run; `Err(errno)`
    /// when the DM application aborted it (or the node could not be asked:
    /// an HSM's file must not be touched behind its back).
    fn dm_event(&self, t: EventType, body: impl FnOnce(&Self) -> EventBody) -> Result<(), i32> {
        let Some(link) = &self.dm else { return Ok(()) };
        // The node stamps its own id as the source.
        let ev = DmEvent::new(t, NodeId(0), body(self)).map_err(|e| e.errno())?;
        match link.api.generate(link.fs, ev) {
            Ok(g) => match g.response {
                DmResponse::Abort(errno) => Err(if errno > 0 { errno } else { libc::EIO }),
                _ => Ok(()),
            },
            Err(e) => {
                tracing::error!(error = %e, event = ?t, "cannot generate a DM event; failing the operation");
                Err(libc::EIO)
            }
        }
    }

    fn data_event(&self, t: EventType, ino: u64, offset: u64, length: u64) -> Result<(), i32> {
        self.dm_event(t, |s| EventBody::Data {
            handle: s.handle(ino).unwrap_or_else(|| DmHandle::fs(FsId(0))),
            offset: offset as i64,
            length,
        })
    }

    fn ns_event(&self, t: EventType, parent: u64, name: &OsStr, other: Option<(u64, &[u8])>) -> Result<(), i32> {
        self.ns_event_rc(t, parent, name, other, 0)
    }

    /// `retcode` is the operation's outcome for post events (0 or an errno).
    fn ns_event_rc(
        &self,
        t: EventType,
        parent: u64,
        name: &OsStr,
        other: Option<(u64, &[u8])>,
        retcode: i32,
    ) -> Result<(), i32> {
        self.dm_event(t, |s| EventBody::Namespace {
            mode: 0,
            handle1: s.handle(parent),
            handle2: other.and_then(|(ino, _)| s.handle(ino)),
            name1: name.as_bytes().to_vec(),
            name2: other.map(|(_, n)| n.to_vec()).unwrap_or_default(),
            retcode,
        })
    }

    /// The asynchronous post event of a namespace operation, success or not.
    fn post_event<T>(
        &self,
        t: EventType,
        parent: u64,
        name: &OsStr,
        r: &Result<T, MetaError>,
        other: Option<(u64, &[u8])>,
    ) {
        let rc = r.as_ref().err().map_or(0, |e| e.errno());
        let _ = self.ns_event_rc(t, parent, name, other, rc);
    }

    /// Out of space: a synchronous nospace event lets an HSM free some and
    /// answer CONTINUE, after which the write is tried once more.
    fn write_with_nospace_retry(&mut self, ino: u64, off: u64, data: &[u8]) -> Result<(), i32> {
        match self.write_data(ino, off, data) {
            Err(MetaError::NoSpace) if self.dm.is_some() => {
                let fs = self.dm.as_ref().map(|l| l.fs).unwrap_or(FsId(0));
                self.dm_event(EventType::Nospace, |_| EventBody::Namespace {
                    mode: 0,
                    handle1: Some(DmHandle::fs(fs)),
                    handle2: None,
                    name1: Vec::new(),
                    name2: Vec::new(),
                    retcode: 0,
                })?;
                self.write_data(ino, off, data).map_err(|e| e.errno())
            }
            r => r.map_err(|e| e.errno()),
        }
    }

    fn attr(&self, i: &Inode) -> FileAttr {
        FileAttr {
            ino: i.ino.get(),
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
            rdev: 0,
            blksize: self.bs as u32,
            flags: 0,
        }
    }

    /// Reads `len` bytes at `off` of a file, holes as zeroes, clipped to its size.
    fn read_data(&self, ino: u64, off: u64, len: u64) -> Result<Vec<u8>, MetaError> {
        let i = self.meta.getattr(ino)?;
        let end = (off + len).min(i.size.get());
        if off >= end {
            return Ok(Vec::new());
        }
        let (first, last) = (off / self.bs, (end - 1) / self.bs);
        let mut buf = vec![0u8; ((last - first + 1) * self.bs) as usize];
        for e in self.meta.extents(ino) {
            let (l, p, n) = (e.lblk.get(), e.pblk.get(), e.len.get() as u64);
            let (a, b) = (l.max(first), (l + n).min(last + 1));
            if a >= b {
                continue;
            }
            let at = ((a - first) * self.bs) as usize;
            let span = ((b - a) * self.bs) as usize;
            self.dev.read(p + (a - l), &mut buf[at..at + span])?;
        }
        let skip = (off - first * self.bs) as usize;
        Ok(buf[skip..skip + (end - off) as usize].to_vec())
    }

    fn write_data(&mut self, ino: u64, off: u64, data: &[u8]) -> Result<(), MetaError> {
        if data.is_empty() {
            return Ok(());
        }
        let end = off + data.len() as u64;
        let (first, last) = (off / self.bs, (end - 1) / self.bs);
        let size = self.meta.getattr(ino)?.size.get();
        let exts = self.meta.allocate(ino, first, last - first + 1)?;
        // Whole blocks: keep what a partial write does not cover.
        let mut buf = vec![0u8; ((last - first + 1) * self.bs) as usize];
        let head = (off - first * self.bs) as usize;
        if head != 0 || !end.is_multiple_of(self.bs) {
            let old = self.read_data(ino, first * self.bs, buf.len() as u64)?;
            buf[..old.len()].copy_from_slice(&old);
        }
        buf[head..head + data.len()].copy_from_slice(data);
        for e in exts {
            let (l, p, n) = (e.lblk.get(), e.pblk.get(), e.len.get() as u64);
            let (a, b) = (l.max(first), (l + n).min(last + 1));
            if a >= b {
                continue;
            }
            let at = ((a - first) * self.bs) as usize;
            self.dev.write(p + (a - l), &buf[at..at + ((b - a) * self.bs) as usize], false)?;
        }
        if end > size {
            self.meta.extend_size(ino, end)?;
        } else {
            self.meta.touch_lazy(ino);
        }
        Ok(())
    }

    /// A create event, then the create: one path for files, directories and nodes.
    fn make(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, mode: u32) -> Result<Inode, MetaError> {
        self.ns_event(EventType::Create, parent, name, None).map_err(MetaError::Refused)?;
        let r = self.meta.create(parent, name.as_bytes(), mode, cred(req));
        let ino = r.as_ref().map_or(0, |i| i.ino.get());
        self.post_event(EventType::Postcreate, parent, name, &r, Some((ino, b"")));
        r
    }

    fn reply_entry(&self, r: Result<Inode, MetaError>, reply: ReplyEntry) {
        match r {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), i.generation.get() as u64),
            Err(e) => reply.error(e.errno()),
        }
    }
}

fn reply_empty(r: Result<(), MetaError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.errno()),
    }
}

fn cred(req: &Request<'_>) -> Cred {
    Cred { uid: req.uid(), gid: req.gid() }
}

impl Filesystem for TidepoolFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let r = self.meta.lookup(parent, name.as_bytes()).and_then(|e| self.meta.getattr(e.ino));
        self.reply_entry(r, reply);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.meta.getattr(ino) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        if let Some(sz) = size {
            if let Err(e) = self.data_event(EventType::Truncate, ino, sz, 0) {
                return reply.error(e);
            }
        }
        let set = SetAttr { mode, uid, gid, size, atime_ns: atime.map(to_ns), mtime_ns: mtime.map(to_ns) };
        match self.meta.setattr(ino, &set) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.read_data(ino, 0, 4096) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.make(req, parent, name, mode & !umask);
        self.reply_entry(r, reply);
    }

    fn mkdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = self.make(req, parent, name, libc::S_IFDIR | (mode & !umask & 0o7777));
        self.reply_entry(r, reply);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.ns_event(EventType::Remove, parent, name, None) {
            return reply.error(e);
        }
        let r = self.meta.unlink(parent, name.as_bytes());
        self.post_event(EventType::Postremove, parent, name, &r, None);
        reply_empty(r, reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.ns_event(EventType::Remove, parent, name, None) {
            return reply.error(e);
        }
        let r = self.meta.rmdir(parent, name.as_bytes());
        self.post_event(EventType::Postremove, parent, name, &r, None);
        reply_empty(r, reply);
    }

    fn symlink(&mut self, req: &Request<'_>, parent: u64, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let t = target.as_os_str().as_bytes();
        if t.len() > 4095 {
            return reply.error(libc::ENAMETOOLONG);
        }
        if let Err(e) = self.ns_event(EventType::Symlink, parent, link_name, Some((0, t))) {
            return reply.error(e);
        }
        let r = self.meta.create(parent, link_name.as_bytes(), libc::S_IFLNK | 0o777, cred(req)).and_then(|i| {
            self.write_data(i.ino.get(), 0, t)?;
            self.meta.getattr(i.ino.get())
        });
        let ino = r.as_ref().map_or(0, |i| i.ino.get());
        self.post_event(EventType::Postsymlink, parent, link_name, &r, Some((ino, t)));
        self.reply_entry(r, reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags & libc::RENAME_EXCHANGE != 0 {
            return reply.error(libc::EINVAL);
        }
        if flags & libc::RENAME_NOREPLACE != 0 && self.meta.lookup(newparent, newname.as_bytes()).is_ok() {
            return reply.error(libc::EEXIST);
        }
        if let Err(e) = self.ns_event(EventType::Rename, parent, name, Some((newparent, newname.as_bytes()))) {
            return reply.error(e);
        }
        let r = self.meta.rename(parent, name.as_bytes(), newparent, newname.as_bytes());
        self.post_event(EventType::Postrename, parent, name, &r, Some((newparent, newname.as_bytes())));
        reply_empty(r, reply);
    }

    fn link(&mut self, _req: &Request<'_>, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.ns_event(EventType::Link, newparent, newname, Some((ino, b""))) {
            return reply.error(e);
        }
        let r = self.meta.link(ino, newparent, newname.as_bytes());
        self.post_event(EventType::Postlink, newparent, newname, &r, Some((ino, b"")));
        self.reply_entry(r, reply);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        if let Err(e) = self.data_event(EventType::Read, ino, offset.max(0) as u64, size as u64) {
            return reply.error(e);
        }
        match self.read_data(ino, offset.max(0) as u64, size as u64) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.data_event(EventType::Write, ino, offset.max(0) as u64, data.len() as u64) {
            return reply.error(e);
        }
        match self.write_with_nospace_retry(ino, offset.max(0) as u64, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        // Metadata is journaled on every change; make the data durable too.
        match self.dev.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let entries = match self.meta.readdir(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e.errno()),
        };
        let dots = [(b".".to_vec(), ino, Kind::Dir), (b"..".to_vec(), ino, Kind::Dir)];
        for (i, (name, child, kind)) in dots.into_iter().chain(entries).enumerate().skip(offset.max(0) as usize) {
            let ft = match kind {
                Kind::Dir => FileType::Directory,
                Kind::Symlink => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            if reply.add(child, (i + 1) as i64, ft, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let (blocks, bfree, files, ffree) = self.meta.statfs();
        reply.statfs(blocks, bfree, bfree, files, ffree, self.bs as u32, super::meta::NAME_MAX as u32, self.bs as u32);
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make(req, parent, name, libc::S_IFREG | (mode & !umask & 0o7777)) {
            Ok(i) => reply.created(&TTL, &self.attr(&i), i.generation.get() as u64, 0, 0),
            Err(e) => reply.error(e.errno()),
        }
    }
}

/// Mounts the file system on `dev` at `mountpoint` in a background thread;
/// dropping the session unmounts it.
pub fn spawn_mount(
    dev: Arc<dyn BlockDev>,
    mountpoint: &Path,
    dm: Option<DmLink>,
) -> std::io::Result<fuser::BackgroundSession> {
    let mut fs = TidepoolFs::new(dev).map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(link) = dm {
        fs = fs.with_dm(link);
    }
    let opts = [
        MountOption::FSName("tidepool".into()),
        MountOption::Subtype("tidepool".into()),
        MountOption::DefaultPermissions,
    ];
    fuser::spawn_mount2(fs, mountpoint, &opts)
}
