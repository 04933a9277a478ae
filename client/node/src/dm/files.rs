//! The DMAPI functions on a Tidepool file system's files, for a DM
//! application on any node: handles, invisible I/O, holes, allocation
//! info, managed regions, DM attributes, event lists and access rights.
//!
//! A [`DmFs`] is a client of the file system's manager, like a mount but
//! without FUSE: file data moves directly between this node and the storage
//! nodes, and everything it caches is under the manager's tokens. DM access
//! rights are those tokens held on purpose: an exclusive right on node A
//! revokes every other node's token on the file and keeps it until
//! released, so conflicting access on every node waits (B6). Invisible
//! reads and writes generate no events and leave the times alone.

use dmapi::error::{DmError, DmResult};
use dmapi::types::{DmHandle, DmRight, DmSessId, DmStat, DmToken, EventSet, FsId, HandleKind, DM_NO_TOKEN};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use tpfs::blockdev::BlockDev;
use tpfs::data::{map, DataPath};
use tpfs::format::DmChange;
use tpfs::format::{DmInfo, Inode, Region, DM_ATTR_NAME_SIZE, ROOT_INO};
use tpfs::remote::MetaClient;
use tpfs::rpc::{inode_from, Destroyed, Mode, Reply, Req, WireSetAttr};

pub use dmapi::types::ExtentType;
pub use libdmapi::channel::ByHandle;

/// A file-system errno (from the manager or the data path) as the DMAPI
/// error XDSM gives for it: a file that is gone is a bad handle, a refusal
/// is EPERM. Not [`DmError::from_errno`], which rebuilds an errno that was
/// a DMAPI one already.
fn from_errno(e: i32) -> DmError {
    match e {
        libc::ENOENT | libc::ESTALE => DmError::BadF("no such file"),
        libc::EINVAL => DmError::Inval("refused by the file system"),
        libc::E2BIG => DmError::TooBig { needed: 0 },
        libc::EAGAIN => DmError::Again("busy, try again"),
        libc::EPERM | libc::EACCES => DmError::Perm("not permitted"),
        libc::EEXIST => DmError::Exist("exists"),
        e => DmError::Io(format!("file system errno {e}")),
    }
}

/// A file's attributes and, from `dm_get_bulkall`, one DM attribute.
pub type ScanStat = (DmStat, Option<Vec<u8>>);

/// Who holds a DM right: a session and one of its tokens (an event's, or a
/// user event's from `dm_create_userevent`), as XDSM has it. `DM_NO_TOKEN`
/// holds nothing: a call made with it takes the right it needs for its own
/// duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holder {
    pub sid: DmSessId,
    pub token: DmToken,
}

impl Holder {
    pub fn new(sid: DmSessId, token: DmToken) -> Holder {
        Holder { sid, token }
    }

    /// For the right calls themselves, which need a real token.
    fn token_needed(self) -> DmResult<Holder> {
        if self.token == DM_NO_TOKEN || self.token.0 <= 0 {
            return Err(DmError::Inval("rights are held by a token; DM_NO_TOKEN holds none"));
        }
        Ok(self)
    }
}

pub struct DmFs {
    data: DataPath,
    fs: FsId,
    /// Rights held, per (holder, inode); each pins the inode's token once.
    rights: Mutex<HashMap<(Holder, u64), DmRight>>,
    /// Signalled when a right is given up or downgraded.
    released: Condvar,
    /// Object references held (`dm_obj_ref_hold`): each is an open of the
    /// file at the manager, so the file outlives its last name.
    refs: Mutex<std::collections::HashSet<(Holder, u64)>>,
}

impl DmFs {
    /// Connects to the manager of file system `fs` at `manager`, with
    /// `dev` the node's connection to its volume.
    pub fn connect(
        manager: SocketAddr,
        dev: Arc<dyn BlockDev>,
        fs: FsId,
        name: &str,
        creds: &tpfs::rpc::Credentials,
        resolve: Option<tpfs::remote::Resolver>,
    ) -> std::io::Result<DmFs> {
        let meta = match resolve {
            Some(r) => MetaClient::connect_resolved(r, name, creds)?,
            None => MetaClient::connect(manager, name, creds)?,
        };
        Ok(DmFs {
            data: DataPath::new(meta, dev),
            fs,
            rights: Mutex::new(HashMap::new()),
            released: Condvar::new(),
            refs: Mutex::default(),
        })
    }

    /// This node is out of the cluster: calls to the manager fail from now
    /// on and the volume connection is closed for good, as a mount's are
    /// ([`tpfs::fuse::Mounted::expel`]). The rights it held went with the
    /// node's tokens.
    pub fn expel(&self) {
        self.meta().close();
        self.data.dev.close();
    }

    /// Reconnects to the file system's manager if its role moved.
    pub fn recheck_manager(&self) -> bool {
        self.meta().recheck_manager()
    }

    fn meta(&self) -> &MetaClient {
        &self.data.meta
    }

    fn inode(&self, ino: u64) -> DmResult<Inode> {
        self.meta().ensure(ino, Mode::Read).map(|(_, i)| i).map_err(from_errno)
    }

    /// The inode a file handle names; `EBADF` for another file system, a
    /// non-file handle, or a file that was removed (generation changed).
    fn ino(&self, h: &DmHandle) -> DmResult<u64> {
        if h.kind() != HandleKind::File || h.fsid() != self.fs {
            return Err(DmError::BadF("not a file handle of this file system"));
        }
        let ino = h.ino()?;
        let i = self.inode(ino)?;
        if i.mode.get() == 0 || i.generation.get() != h.igen()? {
            return Err(DmError::BadF("stale handle"));
        }
        Ok(ino)
    }

    /// The handle of inode `ino` (what `dm_path_to_handle` gives for a
    /// path whose `st_ino` it is).
    pub fn handle_of(&self, ino: u64) -> DmResult<DmHandle> {
        let i = self.inode(ino)?;
        Ok(DmHandle::file(self.fs, ino, i.generation.get()))
    }

    /// `dm_path_to_handle`: `path` on a Tidepool mount of this file system
    /// (the inode number a mount shows is the file system's own).
    pub fn path_to_handle(&self, path: &Path) -> DmResult<DmHandle> {
        let md = std::fs::symlink_metadata(path).map_err(|_| DmError::NoEnt("no such path"))?;
        self.handle_of(md.ino())
    }

    /// `dm_path_to_fshandle`.
    pub fn path_to_fshandle(&self, path: &Path) -> DmResult<DmHandle> {
        self.path_to_handle(path).map(|_| DmHandle::fs(self.fs))
    }

    /// `dm_fd_to_handle`.
    pub fn fd_to_handle(&self, file: &std::fs::File) -> DmResult<DmHandle> {
        let md = file.metadata().map_err(|_| DmError::BadF("bad file descriptor"))?;
        self.handle_of(md.ino())
    }

    /// A `dm_stat_t` of an inode.
    fn stat_of(&self, i: &Inode, compname: Vec<u8>, pmanreg: bool) -> DmStat {
        let secs = |ns: u64| (ns / 1_000_000_000) as i64;
        DmStat {
            handle: Some(DmHandle::file(self.fs, i.ino.get(), i.generation.get())),
            compname,
            emask: EventSet(i.dm_events.get()),
            pmanreg,
            dtime: secs(i.ctime_ns.get()),
            ino: i.ino.get(),
            mode: i.mode.get(),
            nlink: i.nlink.get(),
            uid: i.uid.get(),
            gid: i.gid.get(),
            size: i.size.get(),
            atime: secs(i.atime_ns.get()),
            mtime: secs(i.mtime_ns.get()),
            ctime: secs(i.ctime_ns.get()),
            blksize: self.data.bs as u32,
            blocks: i.blocks.get() * self.data.bs / 512,
            change: change_of(i),
        }
    }

    /// `dm_get_fileattr`: the file's attributes under a token, so a size
    /// another node is writing is current.
    pub fn get_fileattr(&self, h: &DmHandle) -> DmResult<DmStat> {
        let ino = self.ino(h)?;
        let i = self.inode(ino)?;
        let managed = self.dm_info(ino)?.regions.is_some_and(|r| !r.is_empty());
        Ok(self.stat_of(&i, Vec::new(), managed))
    }

    /// `dm_set_fileattr`: the fields `mask` (`dm_at::*`) names, from `st`.
    /// Mode, owner, group, times and size can be set; ctime and dtime
    /// belong to the file system. No events are generated.
    pub fn set_fileattr(&self, h: &DmHandle, mask: u32, st: &DmStat) -> DmResult<()> {
        use dmapi::types::dm_at::*;
        if mask & !ALL != 0 {
            return Err(DmError::Inval("unknown DM_AT_ bits in the mask"));
        }
        if mask & !(MODE | UID | GID | ATIME | MTIME | SIZE) != 0 {
            return Err(DmError::Inval("only mode, uid, gid, atime, mtime and size can be set"));
        }
        if mask & (ATIME | MTIME) != 0 && (st.atime < 0 || st.mtime < 0) {
            return Err(DmError::Inval("times before 1970 are not stored"));
        }
        let ino = self.ino(h)?;
        // Sizes this application wrote under its token go first, so the
        // new attributes are not overtaken by them.
        let slot = self.meta().slot(ino);
        self.meta().flush(ino, &slot).map_err(from_errno)?;
        let ns = |s: i64| s as u64 * 1_000_000_000;
        let set = WireSetAttr {
            mode: (mask & MODE != 0).then_some(st.mode & 0o7777),
            uid: (mask & UID != 0).then_some(st.uid),
            gid: (mask & GID != 0).then_some(st.gid),
            size: (mask & SIZE != 0).then_some(st.size),
            atime_ns: (mask & ATIME != 0).then(|| ns(st.atime)),
            mtime_ns: (mask & MTIME != 0).then(|| ns(st.mtime)),
        };
        match self.meta().ask(Req::DmSetAttr { ino, set }).map_err(from_errno)? {
            Reply::Granted { .. } => Ok(()),
            _ => Err(DmError::Io("unexpected reply".into())),
        }
    }

    fn scan(&self, dir: Option<u64>, cookie: u64, max: u32, attr: Option<&[u8]>) -> DmResult<(Vec<ScanStat>, u64)> {
        let req = Req::Scan { dir, from: cookie, max, attr: attr.map(<[u8]>::to_vec) };
        match self.meta().ask(req).map_err(from_errno)? {
            Reply::Scanned { entries, next } => {
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    let i = inode_from(&e.inode).map_err(|_| DmError::Io("bad inode in a scan reply".into()))?;
                    out.push((self.stat_of(&i, e.name, e.managed), e.attr));
                }
                Ok((out, next))
            }
            _ => Err(DmError::Io("unexpected reply".into())),
        }
    }

    /// `dm_get_bulkattr`: the attributes of up to `max` files of the file
    /// system from `cookie` on (start at 0), and the cookie of the next
    /// call (0: all seen). A snapshot of the manager's copies: a size a
    /// node is still writing under its token shows when it is given back.
    pub fn get_bulkattr(&self, fs: &DmHandle, cookie: u64, max: u32) -> DmResult<(Vec<DmStat>, u64)> {
        self.check_fs(fs)?;
        let (v, next) = self.scan(None, cookie, max, None)?;
        Ok((v.into_iter().map(|(s, _)| s).collect(), next))
    }

    /// `dm_get_bulkall`: [`get_bulkattr`](Self::get_bulkattr) with each
    /// file's DM attribute `attr` (`None` where the file has none).
    pub fn get_bulkall(&self, fs: &DmHandle, attr: &[u8], cookie: u64, max: u32) -> DmResult<(Vec<ScanStat>, u64)> {
        Self::check_name(attr)?;
        self.check_fs(fs)?;
        self.scan(None, cookie, max, Some(attr))
    }

    fn check_fs(&self, fs: &DmHandle) -> DmResult<()> {
        if fs.kind() != HandleKind::Fs || fs.fsid() != self.fs {
            return Err(DmError::BadF("not this file system's handle"));
        }
        Ok(())
    }

    /// `dm_init_attrloc`: `h` must name this file system or a directory
    /// of it; every scan starts at cookie 0.
    pub fn init_attrloc(&self, h: &DmHandle) -> DmResult<()> {
        match h.kind() {
            HandleKind::Fs => self.check_fs(h),
            _ => {
                let ino = self.ino(h)?;
                if self.inode(ino)?.mode.get() & libc::S_IFMT != libc::S_IFDIR {
                    return Err(DmError::Inval("not a directory"));
                }
                Ok(())
            }
        }
    }

    /// `dm_get_dirattrs`: up to `max` entries of directory `dir` from
    /// `cookie` on, each with its name and attributes, and the next cookie.
    pub fn get_dirattrs(&self, dir: &DmHandle, cookie: u64, max: u32) -> DmResult<(Vec<DmStat>, u64)> {
        let ino = self.ino(dir)?;
        if self.inode(ino)?.mode.get() & libc::S_IFMT != libc::S_IFDIR {
            return Err(DmError::Inval("not a directory"));
        }
        let (v, next) = self.scan(Some(ino), cookie, max, None)?;
        Ok((v.into_iter().map(|(s, _)| s).collect(), next))
    }

    /// `dm_read_invis`: no event, no access time.
    pub fn read_invis(&self, h: &DmHandle, off: u64, len: u64) -> DmResult<Vec<u8>> {
        let ino = self.ino(h)?;
        self.data.read(ino, off, len).map_err(from_errno)
    }

    /// `dm_write_invis`: no event, no modification time; `sync`
    /// (`DM_WRITE_SYNC`) makes data and size durable before returning.
    pub fn write_invis(&self, who: Holder, h: &DmHandle, off: u64, data: &[u8], sync: bool) -> DmResult<usize> {
        let ino = self.ino(h)?;
        self.with_right(who, ino, DmRight::Excl, || {
            self.data.write(ino, off, data, false).map_err(from_errno)?;
            if sync {
                self.sync_by_handle(h)?;
            }
            Ok(data.len())
        })
    }

    /// `dm_sync_by_handle`.
    pub fn sync_by_handle(&self, h: &DmHandle) -> DmResult<()> {
        let ino = self.ino(h)?;
        self.data.dev.flush().map_err(|e| DmError::Io(e.to_string()))?;
        let slot = self.meta().slot(ino);
        self.meta().flush(ino, &slot).map_err(from_errno)
    }

    /// `dm_probe_hole`: the part of `off..off+len` (`len` 0: to the end)
    /// that `dm_punch_hole` would free, as (offset, length).
    pub fn probe_hole(&self, h: &DmHandle, off: u64, len: u64) -> DmResult<(u64, u64)> {
        let ino = self.ino(h)?;
        let size = self.inode(ino)?.size.get();
        let bs = self.data.bs;
        if off > size {
            return Err(DmError::Inval("offset past the end of the file"));
        }
        let roff = off.div_ceil(bs) * bs;
        if len == 0 {
            return Ok((roff, 0));
        }
        let end = (off + len) / bs * bs;
        if end <= roff {
            return Err(DmError::Inval("range holds no whole block"));
        }
        Ok((roff, end - roff))
    }

    /// `dm_punch_hole`: frees the whole blocks in the range; the size stays.
    pub fn punch_hole(&self, who: Holder, h: &DmHandle, off: u64, len: u64) -> DmResult<()> {
        let ino = self.ino(h)?;
        self.with_right(who, ino, DmRight::Excl, || {
            // Data this node still has to give back goes first.
            let slot = self.meta().slot(ino);
            self.meta().flush(ino, &slot).map_err(from_errno)?;
            match self.meta().ask(Req::Punch { ino, off, len }).map_err(from_errno)? {
                Reply::Granted { .. } => Ok(()),
                _ => Err(DmError::Io("unexpected reply".into())),
            }
        })
    }

    /// `dm_get_allocinfo`: resident extents and holes up to the end of the file.
    pub fn get_allocinfo(&self, h: &DmHandle) -> DmResult<Vec<(u64, u64, ExtentType)>> {
        let ino = self.ino(h)?;
        let (slot, i) = self.meta().ensure(ino, Mode::Read).map_err(from_errno)?;
        let exts = slot.st.lock().extents.clone();
        let bs = self.data.bs;
        let blocks = i.size.get().div_ceil(bs);
        let mut out: Vec<(u64, u64, ExtentType)> = Vec::new();
        let mut b = 0;
        while b < blocks {
            let (t, n) = match map(&exts, b) {
                Some((_, run)) => (ExtentType::Res, run.min(blocks - b)),
                None => {
                    let next = exts.iter().map(|x| x.lblk.get()).filter(|&l| l > b).min().unwrap_or(blocks);
                    (ExtentType::Hole, next.min(blocks) - b)
                }
            };
            match out.last_mut() {
                Some(last) if last.2 == t && last.0 + last.1 == b * bs => last.1 += n * bs,
                _ => out.push((b * bs, n * bs, t)),
            }
            b += n;
        }
        Ok(out)
    }

    fn dm_info(&self, ino: u64) -> DmResult<DmInfo> {
        let (slot, _) = self.meta().ensure(ino, Mode::Read).map_err(from_errno)?;
        let d = slot.st.lock().dm.clone();
        Ok(d)
    }

    /// One change to the file's DM block, made by the manager on its copy
    /// (a whole block sent back would lose another node's change).
    fn dm_change(&self, ino: u64, change: DmChange) -> DmResult<()> {
        match self.meta().ask(Req::DmChange { ino, change }) {
            Ok(Reply::Granted { .. }) => Ok(()),
            Ok(_) => Err(DmError::Io("unexpected reply".into())),
            Err(libc::ENODATA) => Err(DmError::NoEnt("no such DM attribute")),
            Err(libc::E2BIG) => Err(DmError::TooBig { needed: 0 }),
            Err(e) => Err(from_errno(e)),
        }
    }

    /// `dm_set_region`: replaces the file's managed regions; returns
    /// `exactflag`: true, as the regions are kept exactly as given, byte
    /// offsets and all (an event is raised by the bytes an access touches).
    pub fn set_region(&self, h: &DmHandle, regions: &[Region]) -> DmResult<bool> {
        use tpfs::format::region_flags::*;
        if regions.iter().any(|r| r.flags & !(READ | WRITE | TRUNCATE) != 0) {
            return Err(DmError::Inval("region flags other than DM_REGION_READ, _WRITE, _TRUNCATE"));
        }
        let (_, _, most) = DmInfo::limits(self.data.bs as usize);
        if regions.len() > most {
            return Err(DmError::TooBig { needed: most });
        }
        let ino = self.ino(h)?;
        self.dm_change(ino, DmChange::Regions(regions.to_vec()))?;
        Ok(true)
    }

    /// `dm_get_region`: the managed regions (none set: the whole file, as
    /// one region for read, write and truncate).
    pub fn get_region(&self, h: &DmHandle) -> DmResult<Vec<Region>> {
        use tpfs::format::region_flags::*;
        let ino = self.ino(h)?;
        Ok(self
            .dm_info(ino)?
            .regions
            .unwrap_or_else(|| vec![Region { offset: 0, size: 0, flags: READ | WRITE | TRUNCATE }]))
    }

    fn check_name(name: &[u8]) -> DmResult<()> {
        if name.is_empty() || name.len() > DM_ATTR_NAME_SIZE || name.contains(&0) {
            return Err(DmError::Inval("DM attribute names are 1 to 8 bytes, no NUL"));
        }
        Ok(())
    }

    /// `dm_set_dmattr`.
    pub fn set_dmattr(&self, h: &DmHandle, name: &[u8], value: &[u8]) -> DmResult<()> {
        Self::check_name(name)?;
        let ino = self.ino(h)?;
        self.dm_change(ino, DmChange::SetAttr { name: name.to_vec(), value: value.to_vec() })
    }

    /// `dm_get_dmattr`: `ENOENT` when the file has no such attribute.
    pub fn get_dmattr(&self, h: &DmHandle, name: &[u8]) -> DmResult<Vec<u8>> {
        Self::check_name(name)?;
        let ino = self.ino(h)?;
        let d = self.dm_info(ino)?;
        d.attrs.into_iter().find(|(n, _)| n == name).map(|a| a.1).ok_or(DmError::NoEnt("no such DM attribute"))
    }

    /// `dm_remove_dmattr`.
    pub fn remove_dmattr(&self, h: &DmHandle, name: &[u8]) -> DmResult<()> {
        Self::check_name(name)?;
        let ino = self.ino(h)?;
        self.dm_change(ino, DmChange::RemoveAttr { name: name.to_vec() })
    }

    /// `dm_getall_dmattr`.
    pub fn getall_dmattr(&self, h: &DmHandle) -> DmResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let ino = self.ino(h)?;
        Ok(self.dm_info(ino)?.attrs)
    }

    /// `dm_set_inherit`: new objects of file type `mode & S_IFMT` get the
    /// DM attribute `name` of the directory they are made in.
    pub fn set_inherit(&self, fs: &DmHandle, name: &[u8], mode: u32) -> DmResult<()> {
        Self::check_name(name)?;
        self.check_fs(fs)?;
        let t = mode & libc::S_IFMT;
        let types =
            [libc::S_IFREG, libc::S_IFDIR, libc::S_IFLNK, libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK];
        if !types.contains(&t) {
            return Err(DmError::Inval("mode names no file type (S_IFREG, S_IFDIR, ...)"));
        }
        self.dm_change(ROOT_INO, DmChange::Inherit { name: name.to_vec(), mode: Some(t) })
    }

    /// `dm_clear_inherit`: `ENOENT` if `name` was not inheritable.
    pub fn clear_inherit(&self, fs: &DmHandle, name: &[u8]) -> DmResult<()> {
        Self::check_name(name)?;
        self.check_fs(fs)?;
        self.dm_change(ROOT_INO, DmChange::Inherit { name: name.to_vec(), mode: None })
    }

    /// `dm_getall_inherit`: (name, file type) of each inheritable attribute.
    pub fn getall_inherit(&self, fs: &DmHandle) -> DmResult<Vec<(Vec<u8>, u32)>> {
        self.check_fs(fs)?;
        Ok(self.dm_info(ROOT_INO)?.inherit)
    }

    /// `dm_create_by_handle`, `dm_mkdir_by_handle`, `dm_symlink_by_handle`:
    /// the object `h` (its inode number and generation, free now) made as
    /// `name` in directory `dir`, owned by root with mode 0600 (0700 for a
    /// directory), for the DM application to set with `dm_set_fileattr`.
    /// No event: the DM application itself is making it.
    pub fn create_by_handle(&self, dir: &DmHandle, h: &DmHandle, name: &[u8], what: ByHandle) -> DmResult<()> {
        let parent = self.ino(dir)?;
        if h.kind() != HandleKind::File || h.fsid() != self.fs {
            return Err(DmError::BadF("not a file handle of this file system"));
        }
        if name.is_empty() || name.len() > 255 || name.contains(&b'/') || name == b"." || name == b".." {
            return Err(DmError::Inval("not a name for a directory entry"));
        }
        let (mode, symlink) = match what {
            ByHandle::File => (libc::S_IFREG | 0o600, None),
            ByHandle::Dir => (libc::S_IFDIR | 0o700, None),
            ByHandle::Symlink(t) => (libc::S_IFLNK | 0o777, Some(t)),
        };
        let req = Req::Create {
            parent,
            name: name.to_vec(),
            mode,
            uid: 0,
            gid: 0,
            symlink,
            open: false,
            rdev: 0,
            at: Some((h.ino()?, h.igen()?)),
        };
        match self.meta().ask(req) {
            Ok(Reply::Changed { .. }) => Ok(()),
            Ok(_) => Err(DmError::Io("unexpected reply".into())),
            Err(libc::EEXIST) => Err(DmError::Exist("the name, or an object with the handle, exists")),
            Err(libc::ENOTDIR) => Err(DmError::Inval("not a directory")),
            Err(e) => Err(from_errno(e)),
        }
    }

    /// `dm_handle_to_path`'s part in the file system: the path from the
    /// root of `target`, an entry of directory `dir` or `dir` itself.
    pub fn path_of(&self, dir: &DmHandle, target: &DmHandle) -> DmResult<Vec<u8>> {
        let d = self.ino(dir)?;
        let t = self.ino(target)?;
        match self.meta().ask(Req::PathOf { dir: d, target: t }) {
            Ok(Reply::Path(p)) => Ok(p),
            Ok(_) => Err(DmError::Io("unexpected reply".into())),
            Err(libc::ENOTDIR) => Err(DmError::Inval("not a directory")),
            Err(libc::ENOENT) => Err(DmError::Inval("the object is not in that directory")),
            Err(e) => Err(from_errno(e)),
        }
    }

    /// `dm_get_dioinfo`, as XFS answered it: sector-aligned memory, the
    /// block as the smallest size, anything up to `INT_MAX` in whole blocks.
    /// The mount takes any alignment (FUSE copies, and the data path
    /// reads-modifies-writes a partial block); whole blocks avoid that.
    pub fn dioinfo(&self, h: &DmHandle) -> DmResult<libdmapi::channel::DioInfo> {
        self.ino(h)?;
        let bs = self.data.bs as u32;
        Ok(libdmapi::channel::DioInfo { mem: 512, miniosz: bs, maxiosz: i32::MAX as u32 & !(bs - 1), dio_only: false })
    }

    /// `dm_set_eventlist` on a file.
    pub fn set_eventlist(&self, h: &DmHandle, set: EventSet) -> DmResult<()> {
        let ino = self.ino(h)?;
        match self.meta().ask(Req::SetEventList { ino, mask: set.0 }).map_err(from_errno)? {
            Reply::Granted { .. } => Ok(()),
            _ => Err(DmError::Io("unexpected reply".into())),
        }
    }

    /// `dm_get_eventlist` on a file.
    pub fn get_eventlist(&self, h: &DmHandle) -> DmResult<EventSet> {
        let ino = self.ino(h)?;
        Ok(EventSet(self.inode(ino)?.dm_events.get()))
    }

    /// `dm_get_config`'s file-system limits: what the DM block holds.
    pub fn limits(&self) -> libdmapi::channel::FsLimits {
        let (max_attribute_size, total_attribute_space, max_managed_regions) = DmInfo::limits(self.data.bs as usize);
        libdmapi::channel::FsLimits {
            max_attribute_size: max_attribute_size as u64,
            total_attribute_space: total_attribute_space as u64,
            max_managed_regions: max_managed_regions as u64,
        }
    }

    // ---- rights -------------------------------------------------------------

    /// XDSM: a call made with a token needs the token to hold `want` on the
    /// object (else EACCES: readers shared, changes exclusive). With
    /// `DM_NO_TOKEN` the call runs with the right for its own duration: a
    /// read under the node's shared token, a change applied by the manager
    /// in one step with every other node's token taken back.
    pub fn need(&self, who: Holder, h: &DmHandle, want: DmRight) -> DmResult<()> {
        if who.token == DM_NO_TOKEN || h.kind() != HandleKind::File {
            return Ok(());
        }
        let have = self.rights.lock().get(&(who, h.ino()?)).copied().unwrap_or(DmRight::Null);
        if have < want {
            return Err(DmError::Acces("the call needs a DM right its token does not hold"));
        }
        Ok(())
    }

    /// Runs `f` with at least `want` on `ino`: held by `who`'s token (else
    /// `EACCES`), or, for `DM_NO_TOKEN`, taken for the call and given back.
    fn with_right<T>(&self, who: Holder, ino: u64, want: DmRight, f: impl FnOnce() -> DmResult<T>) -> DmResult<T> {
        if who.token == DM_NO_TOKEN {
            let mode = if want == DmRight::Excl { Mode::Write } else { Mode::Read };
            self.meta().pin(ino, mode).map_err(from_errno)?;
            let r = f();
            self.meta().unpin(ino);
            return r;
        }
        let have = self.rights.lock().get(&(who, ino)).copied().unwrap_or(DmRight::Null);
        if have < want {
            return Err(DmError::Acces("the call needs a DM right its token does not hold"));
        }
        f()
    }

    /// `dm_request_right`: with `wait` (`DM_RR_WAIT`) blocks until no other
    /// token here holds a conflicting right and every conflicting token in
    /// the cluster is given back, then `who` holds it; without, `EAGAIN`
    /// where a token here holds one.
    pub fn request_right(&self, who: Holder, h: &DmHandle, right: DmRight, wait: bool) -> DmResult<()> {
        let who = who.token_needed()?;
        let ino = self.ino(h)?;
        let mode = match right {
            DmRight::Null => return Ok(()),
            DmRight::Shared => Mode::Read,
            DmRight::Excl => Mode::Write,
        };
        let mut r = self.rights.lock();
        let have = loop {
            let have = r.get(&(who, ino)).copied().unwrap_or(DmRight::Null);
            if have >= right {
                return Ok(());
            }
            let busy = r
                .iter()
                .any(|(&(o, i), &held)| i == ino && o != who && (held == DmRight::Excl || right == DmRight::Excl));
            if !busy {
                break have;
            }
            if !wait {
                return Err(DmError::Again("another token holds a conflicting right"));
            }
            self.released.wait(&mut r);
        };
        // Reserved: other tokens here see it and wait, while the node's
        // token is taken from the other nodes without the table locked.
        r.insert((who, ino), right);
        drop(r);
        if let Err(e) = self.meta().pin(ino, mode) {
            let mut r = self.rights.lock();
            match have {
                DmRight::Null => r.remove(&(who, ino)),
                h => r.insert((who, ino), h),
            };
            self.released.notify_all();
            return Err(from_errno(e));
        }
        if have != DmRight::Null {
            self.meta().unpin(ino);
        }
        Ok(())
    }

    /// `dm_upgrade_right`: shared to exclusive (waiting for other tokens
    /// here that hold it shared).
    pub fn upgrade_right(&self, who: Holder, h: &DmHandle) -> DmResult<()> {
        let who = who.token_needed()?;
        let ino = self.ino(h)?;
        if self.rights.lock().get(&(who, ino)) != Some(&DmRight::Shared) {
            return Err(DmError::Inval("upgrade needs a shared right"));
        }
        self.request_right(who, h, DmRight::Excl, true)
    }

    /// `dm_downgrade_right`: exclusive to shared, for real: the node's
    /// exclusive token becomes a shared one (what it changed goes back to
    /// the manager first), so other nodes may read while this token keeps
    /// the right shared and writers still wait.
    pub fn downgrade_right(&self, who: Holder, h: &DmHandle) -> DmResult<()> {
        let who = who.token_needed()?;
        let ino = self.ino(h)?;
        let mut r = self.rights.lock();
        if r.get(&(who, ino)) != Some(&DmRight::Excl) {
            return Err(DmError::Inval("downgrade needs an exclusive right"));
        }
        self.meta().downgrade(ino).map_err(from_errno)?;
        r.insert((who, ino), DmRight::Shared);
        self.released.notify_all();
        Ok(())
    }

    /// `dm_release_right`.
    pub fn release_right(&self, who: Holder, h: &DmHandle) -> DmResult<()> {
        let who = who.token_needed()?;
        let ino = h.ino()?;
        match self.rights.lock().remove(&(who, ino)) {
            Some(_) => {
                self.meta().unpin(ino);
                self.released.notify_all();
                Ok(())
            }
            // A right on a file that went meanwhile still goes above;
            // without one, a handle of no file is EBADF before EACCES.
            None => self.ino(h).and(Err(DmError::Acces("no right held on this file"))),
        }
    }

    /// `dm_query_right`.
    pub fn query_right(&self, who: Holder, h: &DmHandle) -> DmResult<DmRight> {
        let who = who.token_needed()?;
        let ino = h.ino()?;
        match self.rights.lock().get(&(who, ino)).copied() {
            Some(r) => Ok(r),
            None => self.ino(h).map(|_| DmRight::Null),
        }
    }

    /// Every right and object reference `who` holds goes (its event was
    /// answered, or its session lost it): how many rights, and the files
    /// that the references' release destroyed (their destroy events are the
    /// caller's to raise).
    pub fn release_token(&self, who: Holder) -> (usize, Vec<Destroyed>) {
        let gone: Vec<u64> = {
            let mut r = self.rights.lock();
            let keys: Vec<(Holder, u64)> = r.keys().filter(|(h, _)| *h == who).copied().collect();
            keys.into_iter().filter_map(|k| r.remove(&k).map(|_| k.1)).collect()
        };
        for ino in &gone {
            self.meta().unpin(*ino);
        }
        self.released.notify_all();
        let refs: Vec<u64> = {
            let mut r = self.refs.lock();
            let keys: Vec<(Holder, u64)> = r.iter().filter(|(h, _)| *h == who).copied().collect();
            keys.into_iter().filter(|k| r.remove(k)).map(|k| k.1).collect()
        };
        let destroyed = refs.into_iter().filter_map(|ino| self.close(ino).ok().flatten()).collect();
        (gone.len(), destroyed)
    }

    // ---- object references --------------------------------------------------

    /// `dm_obj_ref_hold`: `EBUSY` if the token holds one on the object already.
    pub fn obj_ref_hold(&self, who: Holder, h: &DmHandle) -> DmResult<()> {
        let who = who.token_needed()?;
        let ino = self.ino(h)?;
        let mut r = self.refs.lock();
        if r.contains(&(who, ino)) {
            return Err(DmError::Busy("the token holds a reference on the object already"));
        }
        // Counted here first, as the mount counts its opens, so that a
        // manager restarting meanwhile hears of it again.
        let slot = self.meta().slot(ino);
        slot.st.lock().opens += 1;
        if let Err(e) = self.meta().ask(Req::Open { ino }) {
            slot.st.lock().opens -= 1;
            return Err(from_errno(e));
        }
        r.insert((who, ino));
        Ok(())
    }

    /// `dm_obj_ref_rele`: `EACCES` without a reference. The file is destroyed
    /// if this was its last use and it has no name left (returned).
    pub fn obj_ref_rele(&self, who: Holder, h: &DmHandle) -> DmResult<Option<Destroyed>> {
        let who = who.token_needed()?;
        let ino = h.ino()?;
        if !self.refs.lock().remove(&(who, ino)) {
            return self.ino(h).and(Err(DmError::Acces("the token holds no reference on the object")));
        }
        self.close(ino)
    }

    /// `dm_obj_ref_query`.
    pub fn obj_ref_query(&self, who: Holder, h: &DmHandle) -> DmResult<bool> {
        let who = who.token_needed()?;
        if self.refs.lock().contains(&(who, h.ino()?)) {
            return Ok(true);
        }
        self.ino(h).map(|_| false)
    }

    fn close(&self, ino: u64) -> DmResult<Option<Destroyed>> {
        let slot = self.meta().slot(ino);
        {
            let mut st = slot.st.lock();
            st.opens = st.opens.saturating_sub(1);
        }
        match self.meta().ask(Req::Release { ino }).map_err(from_errno)? {
            Reply::Released { destroyed } | Reply::Changed { destroyed, .. } => Ok(destroyed),
            _ => Ok(None),
        }
    }

    /// `who`'s event moved to session `to` (`dm_move_event`): its rights and
    /// references go with it.
    pub fn move_token(&self, who: Holder, to: DmSessId) {
        let moved = Holder { sid: to, token: who.token };
        let mut r = self.rights.lock();
        let keys: Vec<(Holder, u64)> = r.keys().filter(|(h, _)| *h == who).copied().collect();
        for k in keys {
            if let Some(v) = r.remove(&k) {
                r.insert((moved, k.1), v);
            }
        }
        let mut refs = self.refs.lock();
        let keys: Vec<(Holder, u64)> = refs.iter().filter(|(h, _)| *h == who).copied().collect();
        for k in keys {
            refs.remove(&k);
            refs.insert((moved, k.1));
        }
    }
}

impl Drop for DmFs {
    fn drop(&mut self) {
        for ((_, ino), _) in self.rights.lock().drain() {
            self.data.meta.unpin(ino);
        }
        let _ = self.data.meta.flush_all();
        self.data.meta.close();
    }
}

/// `dt_change`: the inode's times (nanoseconds) and size folded together,
/// so any write, truncate or attribute change shows.
fn change_of(i: &Inode) -> u32 {
    let x = i.mtime_ns.get() ^ i.ctime_ns.get().rotate_left(21) ^ i.size.get().rotate_left(42);
    (x ^ (x >> 32)) as u32
}
