//! The metadata store a file system's manager node runs: inodes, the
//! allocation bitmap, directories and extent maps, cached in memory and
//! persisted through the journal. An operation's changes go to the
//! journal whole, in one transaction: at once, or, with group commit (the
//! manager's way), staged with other operations' into one write that the
//! first caller waiting for durability makes ([`MetaStore::take_batch`]).
//! A manager that takes over replays the journal ([`MetaStore::open`]).
//!
//! Directories are blocks of packed entries; the store indexes them in
//! memory (name → entry), so lookups stay O(1) in directories of any size.

use super::blockdev::BlockDev;
use super::format::DmChange;
use super::format::{seal, sealed_ok, DmInfo, Extent, Inode, Layout, Superblock, INODE_SIZE, ROOT_INO};
use super::journal::{max_tx_blocks, Journal};
use super::mkfs::{inode_location, read_superblock};
use super::{FsError, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const DIR_MAGIC: [u8; 4] = *b"TPDR";
const DIR_HDR: usize = 8;
/// An extent leaf: magic, count, next leaf (0: the last), extents, CRC.
const EXT_MAGIC: [u8; 4] = *b"TPX2";
const EXT_HDR: usize = 16;
/// Blocks left free after a file's new run when its growth was cut off.
const GROW_ROOM: u64 = 64;
/// Blocks allocated at once around a write into a hole (64 KiB of 4 KiB).
const ALLOC_CHUNK: u64 = 16;
pub const NAME_MAX: usize = 255;

/// File type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Other = 4,
}

impl Kind {
    fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
    fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    /// Index into the directory's block list.
    block: usize,
}

struct Dir {
    entries: HashMap<Vec<u8>, DirEntry>,
    blocks: Vec<DirBlock>,
}

/// One directory block: where it is, its bytes in use and its names, so
/// rewriting it after a change touches only its own entries.
struct DirBlock {
    pblk: u64,
    used: usize,
    names: std::collections::BTreeSet<Vec<u8>>,
}

/// Who is asking, for ownership of new inodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
}

pub struct MetaStore {
    dev: Arc<dyn BlockDev>,
    sb: Superblock,
    layout: Layout,
    bs: usize,
    /// Shared with the manager's commit leader, which writes a batch
    /// without holding the store ([`take_batch`](Self::take_batch)).
    journal: Arc<parking_lot::Mutex<Journal>>,
    /// The newest image of every metadata block this store changed (staged
    /// or journaled): what an operation starts from instead of the volume.
    cache: HashMap<u64, Vec<u8>>,
    /// Group commit: operations' blocks wait here for one journal write
    /// for many ([`enable_group_commit`](Self::enable_group_commit)).
    group: bool,
    staged: BTreeMap<u64, Vec<u8>>,
    /// The id the staged batch gets when it is taken; ids count up from 1.
    next_batch: u64,
    /// Every batch up to this id is in the journal (or lost, below).
    durable: Arc<std::sync::atomic::AtomicU64>,
    /// Counts reloads after a lost batch; per epoch, the first batch id
    /// lost in it: those operations' waiters get EIO.
    epoch: u64,
    losses: HashMap<u64, u64>,
    bitmap: Vec<u8>,
    inodes: HashMap<u64, Inode>,
    free_inos: Vec<u64>,
    dirs: HashMap<u64, Dir>,
    /// The extent leaves of inodes whose map outgrew the inode, in file
    /// order (on the volume a chain from the inode's `extent_block`).
    ext_blocks: HashMap<u64, Vec<Leaf>>,
    /// DM attributes and managed regions of the inodes that have them.
    dm: HashMap<u64, DmInfo>,
    /// Inodes some node has open: at their last unlink they stay, with no
    /// links, until released (POSIX: an open file outlives its name).
    in_use: std::collections::HashSet<u64>,
    /// Blocks changed by the operation in progress.
    dirty: BTreeMap<u64, Vec<u8>>,
    free_blocks: u64,
    alloc_hint: u64,
}

/// Block images (home block, image) for one journal transaction.
pub type Batch = Vec<(u64, Vec<u8>)>;

/// One extent leaf block and the extents it holds (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leaf {
    pblk: u64,
    exts: Vec<Extent>,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn name_ok(name: &[u8]) -> MResult<()> {
    if name.len() > NAME_MAX {
        return Err(MetaError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
        return Err(MetaError::Invalid(format!("bad name {:?}", String::from_utf8_lossy(name))));
    }
    Ok(())
}

/// Errors that carry a specific errno.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("operation not supported")]
    NotSupported,
    #[error("not a regular file")]
    NoDevice,
    #[error("no space left on the volume")]
    NoSpace,
    #[error("DM attributes and regions do not fit their block")]
    NoRoom,
    #[error("no such extended attribute")]
    NoAttr,
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Refused before it ran (a DM application's ABORT), with this errno.
    #[error("refused with errno {0}")]
    Refused(i32),
}

impl MetaError {
    pub fn errno(&self) -> i32 {
        match self {
            MetaError::NotFound => libc::ENOENT,
            MetaError::Exists => libc::EEXIST,
            MetaError::NotDir => libc::ENOTDIR,
            MetaError::IsDir => libc::EISDIR,
            MetaError::NotEmpty => libc::ENOTEMPTY,
            MetaError::Invalid(_) => libc::EINVAL,
            MetaError::NameTooLong => libc::ENAMETOOLONG,
            MetaError::NotSupported => libc::EOPNOTSUPP,
            MetaError::NoDevice => libc::ENODEV,
            MetaError::NoSpace => libc::ENOSPC,
            MetaError::NoRoom => libc::E2BIG,
            MetaError::NoAttr => libc::ENODATA,
            MetaError::Fs(e) => e.errno(),
            MetaError::Refused(e) => *e,
        }
    }
}

pub type MResult<T> = std::result::Result<T, MetaError>;

impl MetaStore {
    /// Opens the file system on `dev`: replays the journal, loads the
    /// bitmap, inode table and directories, and frees the files that were
    /// unlinked while still open when the last manager stopped (nobody can
    /// reach them any more).
    pub fn open(dev: Arc<dyn BlockDev>) -> Result<MetaStore> {
        let mut m = MetaStore::load(dev)?;
        for ino in m.orphans() {
            if let Err(e) = m.run(|m| m.free_inode(ino)) {
                tracing::error!(ino, error = %e, "could not free an orphaned inode");
            }
        }
        Ok(m)
    }

    /// Opens the file system but leaves the files unlinked while open in
    /// place: a manager that restarts gives the nodes that still have them
    /// open time to say so ([`orphans`](Self::orphans)).
    pub fn open_keeping_orphans(dev: Arc<dyn BlockDev>) -> Result<MetaStore> {
        MetaStore::load(dev)
    }

    /// Files with no name left (unlinked while open).
    pub fn orphans(&self) -> Vec<u64> {
        self.inodes.values().filter(|i| i.nlink.get() == 0).map(|i| i.ino.get()).collect()
    }

    /// The metadata as the volume has it, after replaying the journal.
    fn load(dev: Arc<dyn BlockDev>) -> Result<MetaStore> {
        let sb = read_superblock(&*dev)?;
        let layout = Layout {
            total: sb.total_blocks.get(),
            journal_start: sb.journal_start.get(),
            journal_blocks: sb.journal_blocks.get(),
            bitmap_start: sb.bitmap_start.get(),
            bitmap_blocks: sb.bitmap_blocks.get(),
            inode_start: sb.inode_start.get(),
            inode_blocks: sb.inode_blocks.get(),
            inode_count: sb.inode_count.get(),
            data_start: sb.data_start.get(),
        };
        let bs = sb.block_size.get() as usize;
        let (journal, _) = Journal::open(dev.clone(), layout.journal_start, layout.journal_blocks)?;
        let mut bitmap = vec![0u8; layout.bitmap_blocks as usize * bs];
        dev.read(layout.bitmap_start, &mut bitmap)?;
        let mut table = vec![0u8; layout.inode_blocks as usize * bs];
        dev.read(layout.inode_start, &mut table)?;
        let mut inodes = HashMap::new();
        let mut free_inos = Vec::new();
        for ino in (1..=layout.inode_count).rev() {
            let off = (ino as usize - 1) * INODE_SIZE;
            let i = Inode::read_from_prefix(&table[off..])
                .map_err(|_| FsError::Corrupt { block: 0, why: "inode".into() })?
                .0;
            if i.mode.get() == 0 {
                free_inos.push(ino);
            } else {
                if i.ino.get() != ino {
                    return Err(FsError::Corrupt {
                        block: layout.inode_start + off as u64 / bs as u64,
                        why: format!("inode {ino} says it is {}", i.ino.get()),
                    });
                }
                inodes.insert(ino, i);
            }
        }
        let used = (0..layout.total).filter(|&b| bitmap[(b / 8) as usize] & (1 << (b % 8)) != 0).count() as u64;
        let mut m = MetaStore {
            dev,
            sb,
            layout,
            bs,
            journal: Arc::new(parking_lot::Mutex::new(journal)),
            cache: HashMap::new(),
            group: false,
            staged: BTreeMap::new(),
            next_batch: 1,
            durable: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            epoch: 0,
            losses: HashMap::new(),
            bitmap,
            inodes,
            free_inos,
            dirs: HashMap::new(),
            ext_blocks: HashMap::new(),
            dm: HashMap::new(),
            in_use: Default::default(),
            dirty: BTreeMap::new(),
            free_blocks: layout.total - used,
            alloc_hint: layout.data_start,
        };
        let with_overflow: Vec<(u64, u64)> = m
            .inodes
            .values()
            .filter(|i| i.extent_block.get() != 0)
            .map(|i| (i.ino.get(), i.extent_block.get()))
            .collect();
        for (ino, first) in with_overflow {
            let mut leaves = Vec::new();
            let mut blk = first;
            while blk != 0 {
                // A chain longer than the volume has blocks loops.
                if leaves.len() as u64 > m.layout.total {
                    return Err(FsError::Corrupt { block: blk, why: format!("extent chain of inode {ino} loops") });
                }
                let (exts, next) = m.read_leaf(blk)?;
                leaves.push(Leaf { pblk: blk, exts });
                blk = next;
            }
            m.ext_blocks.insert(ino, leaves);
        }
        let with_dm: Vec<(u64, u64)> =
            m.inodes.values().filter(|i| i.dm_block.get() != 0).map(|i| (i.ino.get(), i.dm_block.get())).collect();
        for (ino, blk) in with_dm {
            let mut b = vec![0u8; m.bs];
            m.dev.read(blk, &mut b)?;
            let info = DmInfo::decode(&b).ok_or(FsError::Corrupt { block: blk, why: "DM attribute block".into() })?;
            m.dm.insert(ino, info);
        }
        let dirs: Vec<u64> =
            m.inodes.values().filter(|i| Kind::of_mode(i.mode.get()) == Kind::Dir).map(|i| i.ino.get()).collect();
        for d in dirs {
            let dir = m.load_dir(d)?;
            m.dirs.insert(d, dir);
        }
        Ok(m)
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn block_size(&self) -> u32 {
        self.bs as u32
    }

    /// Extents per leaf block.
    fn leaf_cap(&self) -> usize {
        (self.bs - EXT_HDR - 4) / size_of::<Extent>()
    }

    /// One extent leaf: its extents and the next leaf's block.
    fn read_leaf(&self, blk: u64) -> Result<(Vec<Extent>, u64)> {
        let bad = |why: &str| FsError::Corrupt { block: blk, why: why.into() };
        if blk < self.layout.data_start || blk >= self.layout.total {
            return Err(bad("extent leaf outside the data area"));
        }
        let mut b = vec![0u8; self.bs];
        self.dev.read(blk, &mut b)?;
        if !sealed_ok(&b) || b[..4] != EXT_MAGIC {
            return Err(bad("extent leaf"));
        }
        let n = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
        let next = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
        if n == 0 || n > self.leaf_cap() {
            return Err(bad("extent leaf count"));
        }
        let exts = (0..n)
            .map(|i| Extent::read_from_prefix(&b[EXT_HDR + i * 24..]).map(|x| x.0).map_err(|_| bad("extent")))
            .collect::<Result<Vec<_>>>()?;
        Ok((exts, next))
    }

    fn leaf_image(&self, exts: &[Extent], next: u64) -> Vec<u8> {
        let mut img = vec![0u8; self.bs];
        img[..4].copy_from_slice(&EXT_MAGIC);
        img[4..8].copy_from_slice(&(exts.len() as u32).to_le_bytes());
        img[8..16].copy_from_slice(&next.to_le_bytes());
        for (k, e) in exts.iter().enumerate() {
            img[EXT_HDR + k * 24..EXT_HDR + (k + 1) * 24].copy_from_slice(e.as_bytes());
        }
        seal(&mut img);
        img
    }

    /// All extents of an inode, in file order.
    pub fn extents(&self, ino: u64) -> Vec<Extent> {
        let Some(i) = self.inodes.get(&ino) else { return Vec::new() };
        let mut v: Vec<Extent> = i.extents[..(i.nextents.get() as usize).min(6)].to_vec();
        for leaf in self.ext_blocks.get(&ino).into_iter().flatten() {
            v.extend_from_slice(&leaf.exts);
        }
        v
    }

    fn load_dir(&self, ino: u64) -> Result<Dir> {
        let mut dir = Dir { entries: HashMap::new(), blocks: Vec::new() };
        let mut names = std::collections::BTreeSet::new();
        let mut b = vec![0u8; self.bs];
        for e in self.extents(ino) {
            for k in 0..e.len.get() as u64 {
                let blk = e.pblk.get() + k;
                self.dev.read(blk, &mut b)?;
                if !sealed_ok(&b) || b[..4] != DIR_MAGIC {
                    return Err(FsError::Corrupt { block: blk, why: format!("directory block of inode {ino}") });
                }
                let used = u16::from_le_bytes([b[4], b[5]]) as usize;
                let idx = dir.blocks.len();
                let mut at = DIR_HDR;
                while at + 10 <= used.min(self.bs - 4) {
                    let child = u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
                    let kind = Kind::from_u8(b[at + 8]);
                    let n = b[at + 9] as usize;
                    if at + 10 + n > self.bs - 4 {
                        return Err(FsError::Corrupt { block: blk, why: "directory entry runs past the block".into() });
                    }
                    let name = b[at + 10..at + 10 + n].to_vec();
                    names.insert(name.clone());
                    dir.entries.insert(name, DirEntry { ino: child, kind, block: idx });
                    at += 10 + n;
                }
                dir.blocks.push(DirBlock { pblk: blk, used: used.max(DIR_HDR), names: std::mem::take(&mut names) });
            }
        }
        Ok(dir)
    }

    // ---- transaction plumbing --------------------------------------------

    fn block_image(&mut self, blk: u64) -> Result<&mut Vec<u8>> {
        if !self.dirty.contains_key(&blk) {
            // What this store wrote last (the home block may be older: the
            // journal holds it, or a batch not written yet).
            let b = match self.cache.get(&blk) {
                Some(img) => img.clone(),
                None => {
                    let mut b = vec![0u8; self.bs];
                    self.dev.read(blk, &mut b)?;
                    b
                }
            };
            self.dirty.insert(blk, b);
        }
        Ok(self.dirty.get_mut(&blk).expect("just inserted"))
    }

    fn put_inode(&mut self, i: Inode) -> Result<()> {
        let (blk, off) = inode_location(&self.layout, self.bs as u32, i.ino.get());
        let img = self.block_image(blk)?;
        img[off..off + INODE_SIZE].fill(0);
        img[off..off + size_of::<Inode>()].copy_from_slice(i.as_bytes());
        if i.mode.get() == 0 {
            self.inodes.remove(&i.ino.get());
        } else {
            self.inodes.insert(i.ino.get(), i);
        }
        Ok(())
    }

    fn set_bit(&mut self, blk: u64, used: bool) -> Result<()> {
        let byte = (blk / 8) as usize;
        let mask = 1u8 << (blk % 8);
        let was = self.bitmap[byte] & mask != 0;
        if was == used {
            return Ok(());
        }
        if used {
            self.bitmap[byte] |= mask;
            self.free_blocks -= 1;
        } else {
            self.bitmap[byte] &= !mask;
            self.free_blocks += 1;
        }
        let bmblk = byte / self.bs;
        let start = bmblk * self.bs;
        let copy = self.bitmap[start..start + self.bs].to_vec();
        let home = self.layout.bitmap_start + bmblk as u64;
        *self.block_image(home)? = copy;
        Ok(())
    }

    /// Commits the blocks the operation dirtied as one transaction.
    fn commit(&mut self) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        if self.dirty.len() > max_tx_blocks(self.bs) {
            self.dirty.clear();
            return Err(FsError::Invalid("operation touches more blocks than one transaction holds".into()));
        }
        let blocks = std::mem::take(&mut self.dirty);
        for (h, b) in &blocks {
            self.cache.insert(*h, b.clone());
        }
        if !self.group {
            let batch: Batch = blocks.into_iter().collect();
            self.journal.lock().commit(&batch)?;
            return Ok(());
        }
        // An operation's blocks never span two transactions.
        let new = blocks.keys().filter(|h| !self.staged.contains_key(h)).count();
        if self.staged.len() + new > max_tx_blocks(self.bs) {
            self.flush_staged()?;
        }
        self.staged.extend(blocks);
        Ok(())
    }

    /// Group commit from now on: an operation's changes are staged, and
    /// reach the journal with others' in one write, made by whoever waits
    /// for them first ([`take_batch`](Self::take_batch)). The caller must
    /// not answer anyone about a change before [`durable`](Self::durable)
    /// reaches the id [`wait_point`](Self::wait_point) gave.
    pub fn enable_group_commit(&mut self) {
        self.group = true;
    }

    /// Writes what is staged to the journal now, under the store.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_staged()
    }

    fn flush_staged(&mut self) -> Result<()> {
        let Some((id, blocks)) = self.take_batch() else { return Ok(()) };
        let r = self.journal.lock().commit(&blocks);
        match r {
            Ok(_) => {
                self.durable.fetch_max(id, std::sync::atomic::Ordering::Release);
                Ok(())
            }
            Err(e) => {
                self.lost_batch(id);
                Err(e)
            }
        }
    }

    /// The staged batch, with its id, for one journal write; None if
    /// nothing is staged. The caller takes [`journal`](Self::journal)'s
    /// lock before it lets go of the store, so batches reach the journal in
    /// the order they were taken.
    pub fn take_batch(&mut self) -> Option<(u64, Batch)> {
        if self.staged.is_empty() {
            return None;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        Some((id, std::mem::take(&mut self.staged).into_iter().collect()))
    }

    /// What a caller about to answer waits for: the id of the batch that
    /// holds every change made so far, and the epoch it was read in.
    pub fn wait_point(&self) -> (u64, u64) {
        let id = if self.staged.is_empty() { self.next_batch - 1 } else { self.next_batch };
        (id, self.epoch)
    }

    /// Whether the batch `id` of `epoch` was lost (its operations failed).
    pub fn lost(&self, epoch: u64, id: u64) -> bool {
        self.losses.get(&epoch).is_some_and(|first| id >= *first)
    }

    /// Every batch up to this id is in the journal (set by whoever wrote it).
    pub fn durable(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.durable.clone()
    }

    pub fn journal(&self) -> Arc<parking_lot::Mutex<Journal>> {
        self.journal.clone()
    }

    /// Batch `id` could not be written: it and everything after it in this
    /// epoch (what was staged meanwhile, built on it) are lost; memory goes
    /// back to what the volume holds, in a new epoch.
    pub fn lost_batch(&mut self, id: u64) {
        self.losses.insert(self.epoch, id);
        self.staged.clear();
        self.reload();
        self.epoch += 1;
        // Nothing of the new epoch waits for the lost ids.
        self.durable.fetch_max(self.next_batch - 1, std::sync::atomic::Ordering::Release);
    }

    /// Rebuilds the store from the volume (the journal holds every
    /// committed change), keeping what lives only in memory.
    fn reload(&mut self) {
        match MetaStore::load(self.dev.clone()) {
            Ok(mut fresh) => {
                fresh.in_use = std::mem::take(&mut self.in_use);
                fresh.group = self.group;
                fresh.next_batch = self.next_batch;
                fresh.durable = self.durable.clone();
                fresh.epoch = self.epoch;
                fresh.losses = std::mem::take(&mut self.losses);
                *self = fresh;
            }
            Err(e) => tracing::error!(error = %e, "reloading metadata after a failed operation"),
        }
    }

    /// Forgets an operation that failed: if it had changed anything, the
    /// cache is rebuilt from the volume (the journal holds every committed
    /// change), so memory never keeps what the disk does not.
    fn abort(&mut self) {
        if std::mem::take(&mut self.dirty).is_empty() {
            return;
        }
        // Others' staged changes are good: they go to the journal first, so
        // the volume has them when the store is read back.
        if let Err(e) = self.flush_staged() {
            tracing::error!(error = %e, "writing staged metadata before a reload");
        }
        // The files in use are not on the volume: they stay as they were.
        self.reload();
    }

    fn run<T>(&mut self, f: impl FnOnce(&mut Self) -> MResult<T>) -> MResult<T> {
        debug_assert!(self.dirty.is_empty(), "an operation is already in progress");
        match f(self) {
            Ok(v) => {
                self.commit()?;
                Ok(v)
            }
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    // ---- allocation -------------------------------------------------------

    fn is_used(&self, b: u64) -> bool {
        self.bitmap[(b / 8) as usize] & (1 << (b % 8)) != 0
    }

    /// Allocates up to `want` contiguous blocks (at least one), from the
    /// allocation hint on.
    fn alloc_run(&mut self, want: u64) -> MResult<(u64, u64)> {
        if self.free_blocks == 0 {
            return Err(MetaError::NoSpace);
        }
        let (lo, hi) = (self.layout.data_start, self.layout.total);
        let mut b = self.alloc_hint.clamp(lo, hi - 1);
        for _ in 0..(hi - lo) {
            if let Some((p, n)) = self.alloc_at(b, want)? {
                self.alloc_hint = p + n;
                return Ok((p, n));
            }
            b = if b + 1 >= hi { lo } else { b + 1 };
        }
        Err(MetaError::NoSpace)
    }

    /// Up to `want` blocks from `goal` if `goal` is free: a file grows
    /// where it ends, so that writers running side by side do not
    /// interleave their blocks into one extent each.
    fn alloc_at(&mut self, goal: u64, want: u64) -> MResult<Option<(u64, u64)>> {
        let (lo, hi) = (self.layout.data_start, self.layout.total);
        if goal < lo || goal >= hi || self.is_used(goal) {
            return Ok(None);
        }
        let mut n = 1;
        while n < want && goal + n < hi && !self.is_used(goal + n) {
            n += 1;
        }
        for k in 0..n {
            self.set_bit(goal + k, true)?;
        }
        Ok(Some((goal, n)))
    }

    fn alloc_ino(&mut self) -> MResult<u64> {
        self.free_inos.pop().ok_or(MetaError::NoSpace)
    }

    /// Replaces an inode's extent map (sorted by file block). The first
    /// six live in the inode; the rest in a chain of leaves, each extent
    /// going to the leaf whose range it falls in, so a change rewrites only
    /// the leaves it touches: a full leaf splits, an emptied one is freed.
    fn set_extents(&mut self, ino: u64, exts: &[Extent]) -> MResult<()> {
        debug_assert!(exts.windows(2).all(|w| w[0].lblk.get() < w[1].lblk.get()), "extents in file order");
        let mut i = *self.inodes.get(&ino).ok_or(MetaError::NotFound)?;
        let inline = exts.len().min(6);
        i.extents = [Extent::default(); 6];
        i.extents[..inline].copy_from_slice(&exts[..inline]);
        i.nextents = (inline as u16).into();
        let rest = &exts[inline..];
        let old = self.ext_blocks.remove(&ino).unwrap_or_default();
        // Each extent to the last old leaf starting at or before it.
        let mut groups: Vec<(Option<u64>, Vec<Extent>)> = old.iter().map(|l| (Some(l.pblk), Vec::new())).collect();
        if groups.is_empty() {
            groups.push((None, Vec::new()));
        }
        let starts: Vec<u64> = old.iter().map(|l| l.exts[0].lblk.get()).collect();
        for e in rest {
            let k = starts.partition_point(|&s| s <= e.lblk.get()).saturating_sub(1);
            groups[k].1.push(*e);
        }
        let cap = self.leaf_cap();
        let mut leaves: Vec<Leaf> = Vec::new();
        for (pblk, g) in groups {
            if g.is_empty() {
                if let Some(p) = pblk {
                    self.set_bit(p, false)?;
                }
                continue;
            }
            for (n, chunk) in g.chunks(cap).enumerate() {
                let pblk = match (n, pblk) {
                    (0, Some(p)) => p,
                    _ => self.alloc_run(1)?.0,
                };
                leaves.push(Leaf { pblk, exts: chunk.to_vec() });
            }
        }
        // Write the leaves whose extents or next pointer changed.
        let was: HashMap<u64, (&[Extent], u64)> = old
            .iter()
            .enumerate()
            .map(|(k, l)| (l.pblk, (&l.exts[..], old.get(k + 1).map_or(0, |n| n.pblk))))
            .collect();
        for (k, l) in leaves.iter().enumerate() {
            let next = leaves.get(k + 1).map_or(0, |n| n.pblk);
            if was.get(&l.pblk) != Some(&(&l.exts[..], next)) {
                let img = self.leaf_image(&l.exts, next);
                *self.block_image(l.pblk)? = img;
            }
        }
        i.extent_block = leaves.first().map_or(0, |l| l.pblk).into();
        if !leaves.is_empty() {
            self.ext_blocks.insert(ino, leaves);
        }
        self.put_inode(i)?;
        Ok(())
    }

    // ---- directories --------------------------------------------------------

    fn dir_block_image(&mut self, dir: u64, idx: usize) -> MResult<Vec<u8>> {
        let d = self.dirs.get(&dir).ok_or(MetaError::NotDir)?;
        let mut img = vec![0u8; self.bs];
        img[..4].copy_from_slice(&DIR_MAGIC);
        let mut at = DIR_HDR;
        for name in &d.blocks[idx].names {
            let e = &d.entries[name];
            img[at..at + 8].copy_from_slice(&e.ino.to_le_bytes());
            img[at + 8] = e.kind as u8;
            img[at + 9] = name.len() as u8;
            img[at + 10..at + 10 + name.len()].copy_from_slice(name);
            at += 10 + name.len();
        }
        img[4..6].copy_from_slice(&(at as u16).to_le_bytes());
        seal(&mut img);
        Ok(img)
    }

    fn write_dir_block(&mut self, dir: u64, idx: usize) -> MResult<()> {
        let img = self.dir_block_image(dir, idx)?;
        let blk = self.dirs[&dir].blocks[idx].pblk;
        *self.block_image(blk)? = img;
        Ok(())
    }

    fn dir_add(&mut self, dir: u64, name: &[u8], ino: u64, kind: Kind) -> MResult<()> {
        let need = 10 + name.len();
        let room = self.bs - 4;
        let idx = match self.dirs.get(&dir).ok_or(MetaError::NotDir)?.blocks.iter().position(|b| b.used + need <= room)
        {
            Some(i) => i,
            None => {
                let (b, _) = self.alloc_run(1)?;
                let mut exts = self.extents(dir);
                let nblocks: u64 = exts.iter().map(|e| e.len.get() as u64).sum();
                match exts.last_mut() {
                    Some(l) if l.pblk.get() + l.len.get() as u64 == b => l.len = (l.len.get() + 1).into(),
                    _ => exts.push(Extent { lblk: nblocks.into(), pblk: b.into(), len: 1.into(), flags: 0.into() }),
                }
                self.set_extents(dir, &exts)?;
                let d = self.dirs.get_mut(&dir).ok_or(MetaError::NotDir)?;
                d.blocks.push(DirBlock { pblk: b, used: DIR_HDR, names: Default::default() });
                let mut i = self.inodes[&dir];
                i.size = ((nblocks + 1) * self.bs as u64).into();
                i.blocks = (i.blocks.get() + 1).into();
                self.put_inode(i)?;
                self.dirs.get(&dir).map_or(0, |d| d.blocks.len()) - 1
            }
        };
        let d = self.dirs.get_mut(&dir).ok_or(MetaError::NotDir)?;
        d.entries.insert(name.to_vec(), DirEntry { ino, kind, block: idx });
        d.blocks[idx].used += need;
        d.blocks[idx].names.insert(name.to_vec());
        self.write_dir_block(dir, idx)
    }

    fn dir_remove(&mut self, dir: u64, name: &[u8]) -> MResult<DirEntry> {
        let d = self.dirs.get_mut(&dir).ok_or(MetaError::NotDir)?;
        let e = d.entries.remove(name).ok_or(MetaError::NotFound)?;
        d.blocks[e.block].used -= 10 + name.len();
        d.blocks[e.block].names.remove(name);
        self.write_dir_block(dir, e.block)?;
        Ok(e)
    }

    fn touch(&mut self, ino: u64, m: bool, c: bool) -> MResult<()> {
        let mut i = *self.inodes.get(&ino).ok_or(MetaError::NotFound)?;
        let t = now_ns();
        if m {
            i.mtime_ns = t.into();
        }
        if c {
            i.ctime_ns = t.into();
        }
        self.put_inode(i)?;
        Ok(())
    }

    /// A new inode; `at`: this inode number and generation (a DM
    /// application recreating an object with the handle it had).
    fn new_inode(&mut self, mode: u32, cred: Cred, nlink: u32, at: Option<(u64, u32)>) -> MResult<Inode> {
        let ino = match at {
            None => self.alloc_ino()?,
            Some((ino, _)) => {
                if self.inodes.contains_key(&ino) {
                    return Err(MetaError::Exists);
                }
                let k = self
                    .free_inos
                    .iter()
                    .position(|&x| x == ino)
                    .ok_or_else(|| MetaError::Invalid(format!("no inode {ino} on this volume")))?;
                self.free_inos.swap_remove(k);
                ino
            }
        };
        let t = now_ns();
        let mut i = Inode::new_zeroed();
        i.ino = ino.into();
        i.generation = at.map_or((t as u32) | 1, |(_, g)| g).into();
        i.mode = mode.into();
        i.uid = cred.uid.into();
        i.gid = cred.gid.into();
        i.nlink = nlink.into();
        i.atime_ns = t.into();
        i.mtime_ns = t.into();
        i.ctime_ns = t.into();
        Ok(i)
    }

    fn free_inode(&mut self, ino: u64) -> MResult<()> {
        let exts = self.extents(ino);
        for e in &exts {
            for k in 0..e.len.get() as u64 {
                self.set_bit(e.pblk.get() + k, false)?;
            }
        }
        let i = *self.inodes.get(&ino).ok_or(MetaError::NotFound)?;
        let leaves: Vec<u64> = self.ext_blocks.get(&ino).into_iter().flatten().map(|l| l.pblk).collect();
        for b in leaves {
            self.set_bit(b, false)?;
        }
        if i.dm_block.get() != 0 {
            self.set_bit(i.dm_block.get(), false)?;
        }
        self.ext_blocks.remove(&ino);
        self.dm.remove(&ino);
        self.dirs.remove(&ino);
        let mut z = Inode::new_zeroed();
        z.ino = ino.into();
        self.put_inode(z)?;
        self.free_inos.push(ino);
        Ok(())
    }

    // ---- the operations -----------------------------------------------------

    pub fn getattr(&self, ino: u64) -> MResult<Inode> {
        self.inodes.get(&ino).copied().ok_or(MetaError::NotFound)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> MResult<DirEntry> {
        let d = self.dirs.get(&parent).ok_or(MetaError::NotDir)?;
        d.entries.get(name).copied().ok_or(MetaError::NotFound)
    }

    /// Up to `max` live inodes numbered `from` or more, and the number to
    /// go on from (0: none left).
    pub fn scan(&self, from: u64, max: usize) -> (Vec<Inode>, u64) {
        let mut inos: Vec<u64> = self.inodes.keys().copied().filter(|&i| i >= from).collect();
        inos.sort_unstable();
        let next = inos.get(max).copied().unwrap_or(0);
        (inos.iter().take(max).map(|i| self.inodes[i]).collect(), next)
    }

    /// Entries of a directory, sorted by name, each with its `DT_*` type
    /// (the entry keeps only file, directory, symlink or other; the inode
    /// says which other).
    pub fn readdir(&self, dir: u64) -> MResult<Vec<(Vec<u8>, u64, u8)>> {
        let d = self.dirs.get(&dir).ok_or(MetaError::NotDir)?;
        let dt = |e: &DirEntry| match e.kind {
            Kind::File => libc::DT_REG,
            Kind::Dir => libc::DT_DIR,
            Kind::Symlink => libc::DT_LNK,
            Kind::Other => match self.inodes.get(&e.ino).map(|i| i.mode.get() & libc::S_IFMT) {
                Some(libc::S_IFIFO) => libc::DT_FIFO,
                Some(libc::S_IFSOCK) => libc::DT_SOCK,
                Some(libc::S_IFCHR) => libc::DT_CHR,
                Some(libc::S_IFBLK) => libc::DT_BLK,
                _ => libc::DT_UNKNOWN,
            },
        };
        let mut v: Vec<_> = d.entries.iter().map(|(n, e)| (n.clone(), e.ino, dt(e))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    /// Creates a regular file, directory or symlink named `name` in `parent`.
    pub fn create(&mut self, parent: u64, name: &[u8], mode: u32, cred: Cred) -> MResult<Inode> {
        self.create_node(parent, name, mode, cred, 0)
    }

    /// [`create`](Self::create) with a device number (`mknod` of a
    /// character or block special file).
    pub fn create_node(&mut self, parent: u64, name: &[u8], mode: u32, cred: Cred, rdev: u32) -> MResult<Inode> {
        self.make(parent, name, mode, cred, rdev, None)
    }

    /// [`create`](Self::create) with inode number and generation `at`
    /// (`dm_create_by_handle`, `dm_mkdir_by_handle`, `dm_symlink_by_handle`):
    /// `Exists` if that inode is in use.
    pub fn create_at(&mut self, parent: u64, name: &[u8], mode: u32, cred: Cred, at: (u64, u32)) -> MResult<Inode> {
        self.make(parent, name, mode, cred, 0, Some(at))
    }

    fn make(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        cred: Cred,
        rdev: u32,
        at: Option<(u64, u32)>,
    ) -> MResult<Inode> {
        name_ok(name)?;
        self.run(|m| {
            let pmode = m.getattr(parent)?.mode.get();
            if Kind::of_mode(pmode) != Kind::Dir {
                return Err(MetaError::NotDir);
            }
            if m.lookup(parent, name).is_ok() {
                return Err(MetaError::Exists);
            }
            let kind = Kind::of_mode(mode);
            // A set-group-ID directory gives what is made in it its group,
            // and its SGID bit to subdirectories (BSD group semantics).
            let (mut cred, mut mode) = (cred, mode);
            if pmode & libc::S_ISGID != 0 {
                cred.gid = m.getattr(parent)?.gid.get();
                if kind == Kind::Dir {
                    mode |= libc::S_ISGID;
                }
            }
            let mut i = m.new_inode(mode, cred, if kind == Kind::Dir { 2 } else { 1 }, at)?;
            i.rdev = rdev.into();
            m.put_inode(i)?;
            if kind == Kind::Dir {
                m.dirs.insert(i.ino.get(), Dir { entries: HashMap::new(), blocks: Vec::new() });
                let mut p = m.getattr(parent)?;
                p.nlink = (p.nlink.get() + 1).into();
                m.put_inode(p)?;
            }
            m.dir_add(parent, name, i.ino.get(), kind)?;
            m.inherit_dm(parent, i.ino.get(), mode)?;
            m.touch(parent, true, true)?;
            Ok(m.inodes[&i.ino.get()])
        })
    }

    /// The file system's inheritable DM attributes (`dm_set_inherit`, kept
    /// on the root) that name a new object's type: each the parent
    /// directory has goes to the new object with the directory's value.
    fn inherit_dm(&mut self, parent: u64, ino: u64, mode: u32) -> MResult<()> {
        let Some(root) = self.dm.get(&ROOT_INO).filter(|r| !r.inherit.is_empty()) else { return Ok(()) };
        let Some(pattrs) = self.dm.get(&parent).map(|d| &d.attrs) else { return Ok(()) };
        let attrs: Vec<(Vec<u8>, Vec<u8>)> = root
            .inherit
            .iter()
            .filter(|(_, t)| *t == mode & libc::S_IFMT)
            .filter_map(|(n, _)| pattrs.iter().find(|(pn, _)| pn == n).cloned())
            .collect();
        if attrs.is_empty() {
            return Ok(());
        }
        self.put_dm_info(ino, DmInfo { attrs, ..DmInfo::default() }).map(|_| ())
    }

    /// The parent of directory `dir` and `dir`'s name in it. Directories
    /// keep no parent pointer: this searches the directories in memory,
    /// which `dm_handle_to_path` and the FUSE export lookup can afford.
    pub fn parent_of(&self, dir: u64) -> MResult<(u64, Vec<u8>)> {
        if !self.dirs.contains_key(&dir) {
            return Err(MetaError::NotDir);
        }
        if dir == ROOT_INO {
            return Ok((ROOT_INO, Vec::new()));
        }
        self.dirs
            .iter()
            .find_map(|(p, d)| {
                d.entries.iter().find(|(_, e)| e.ino == dir && e.kind == Kind::Dir).map(|(n, _)| (*p, n.clone()))
            })
            .ok_or(MetaError::NotFound)
    }

    /// The path from the root of `target`, an entry of directory `dir` or
    /// `dir` itself (`dm_handle_to_path`): names joined by `/`, empty for
    /// the root. Of several names of a file in `dir`, the first in order.
    pub fn path_of(&self, dir: u64, target: u64) -> MResult<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        if target != dir {
            let d = self.dirs.get(&dir).ok_or(MetaError::NotDir)?;
            let name = d.entries.iter().filter(|(_, e)| e.ino == target).map(|(n, _)| n).min();
            parts.push(name.ok_or(MetaError::NotFound)?.clone());
        }
        let mut cur = dir;
        while cur != ROOT_INO {
            let (p, name) = self.parent_of(cur)?;
            parts.push(name);
            cur = p;
            if parts.len() > self.dirs.len() + 1 {
                return Err(MetaError::Invalid("a directory loop".into()));
            }
        }
        parts.reverse();
        Ok(parts.join(&b'/'))
    }

    /// Removes a non-directory entry; frees the inode at its last link.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> MResult<()> {
        self.run(|m| {
            let e = m.lookup(parent, name)?;
            if e.kind == Kind::Dir {
                return Err(MetaError::IsDir);
            }
            m.dir_remove(parent, name)?;
            m.drop_link(e.ino)?;
            m.touch(parent, true, true)
        })
    }

    fn drop_link(&mut self, ino: u64) -> MResult<()> {
        let mut i = self.getattr(ino)?;
        let n = i.nlink.get().saturating_sub(1);
        if n == 0 && !self.in_use.contains(&ino) {
            self.free_inode(ino)
        } else {
            i.nlink = n.into();
            i.ctime_ns = now_ns().into();
            self.put_inode(i)?;
            Ok(())
        }
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> MResult<()> {
        self.run(|m| {
            let e = m.lookup(parent, name)?;
            if e.kind != Kind::Dir {
                return Err(MetaError::NotDir);
            }
            if !m.dirs.get(&e.ino).is_some_and(|d| d.entries.is_empty()) {
                return Err(MetaError::NotEmpty);
            }
            m.dir_remove(parent, name)?;
            m.free_inode(e.ino)?;
            let mut p = m.getattr(parent)?;
            p.nlink = (p.nlink.get().saturating_sub(1)).into();
            m.put_inode(p)?;
            m.touch(parent, true, true)
        })
    }

    /// A hard link to a non-directory.
    pub fn link(&mut self, ino: u64, parent: u64, name: &[u8]) -> MResult<Inode> {
        name_ok(name)?;
        self.run(|m| {
            let mut i = m.getattr(ino)?;
            if Kind::of_mode(i.mode.get()) == Kind::Dir {
                return Err(MetaError::IsDir);
            }
            if m.lookup(parent, name).is_ok() {
                return Err(MetaError::Exists);
            }
            i.nlink = (i.nlink.get() + 1).into();
            i.ctime_ns = now_ns().into();
            m.put_inode(i)?;
            m.dir_add(parent, name, ino, Kind::of_mode(i.mode.get()))?;
            m.touch(parent, true, true)?;
            Ok(i)
        })
    }

    /// Renames, replacing an existing target as POSIX rename does (a
    /// directory only by an empty directory, a file only by a non-directory).
    pub fn rename(&mut self, sp: u64, sname: &[u8], dp: u64, dname: &[u8]) -> MResult<()> {
        name_ok(dname)?;
        self.run(|m| {
            let src = m.lookup(sp, sname)?;
            if !m.dirs.contains_key(&dp) {
                return Err(MetaError::NotDir);
            }
            if src.kind == Kind::Dir && (src.ino == dp || m.is_ancestor(src.ino, dp)) {
                return Err(MetaError::Invalid("cannot move a directory into itself".into()));
            }
            if let Ok(old) = m.lookup(dp, dname) {
                if old.ino == src.ino {
                    return Ok(());
                }
                match (src.kind == Kind::Dir, old.kind == Kind::Dir) {
                    (true, false) => return Err(MetaError::NotDir),
                    (false, true) => return Err(MetaError::IsDir),
                    (true, true) if !m.dirs.get(&old.ino).is_some_and(|d| d.entries.is_empty()) => {
                        return Err(MetaError::NotEmpty)
                    }
                    _ => {}
                }
                m.dir_remove(dp, dname)?;
                if old.kind == Kind::Dir {
                    m.free_inode(old.ino)?;
                    let mut p = m.getattr(dp)?;
                    p.nlink = (p.nlink.get().saturating_sub(1)).into();
                    m.put_inode(p)?;
                } else {
                    m.drop_link(old.ino)?;
                }
            }
            m.dir_remove(sp, sname)?;
            m.dir_add(dp, dname, src.ino, src.kind)?;
            if src.kind == Kind::Dir && sp != dp {
                let mut a = m.getattr(sp)?;
                a.nlink = (a.nlink.get().saturating_sub(1)).into();
                m.put_inode(a)?;
                let mut b = m.getattr(dp)?;
                b.nlink = (b.nlink.get() + 1).into();
                m.put_inode(b)?;
            }
            m.touch(sp, true, true)?;
            m.touch(dp, true, true)?;
            m.touch(src.ino, false, true)
        })
    }

    fn is_ancestor(&self, dir: u64, of: u64) -> bool {
        // Walk down from `dir`: is `of` inside it?
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            if let Some(x) = self.dirs.get(&d) {
                for e in x.entries.values().filter(|e| e.kind == Kind::Dir) {
                    if e.ino == of {
                        return true;
                    }
                    stack.push(e.ino);
                }
            }
        }
        false
    }

    /// Changes mode, owner, size or times. A smaller size frees the blocks past it.
    pub fn setattr(&mut self, ino: u64, set: &SetAttr) -> MResult<Inode> {
        self.run(|m| {
            let mut i = m.getattr(ino)?;
            if let Some(mode) = set.mode {
                i.mode = ((i.mode.get() & libc::S_IFMT) | (mode & 0o7777)).into();
            }
            if let Some(uid) = set.uid {
                i.uid = uid.into();
            }
            if let Some(gid) = set.gid {
                i.gid = gid.into();
            }
            if let Some(t) = set.atime_ns {
                i.atime_ns = t.into();
            }
            if let Some(t) = set.mtime_ns {
                i.mtime_ns = t.into();
            }
            i.ctime_ns = now_ns().into();
            m.put_inode(i)?;
            if let Some(size) = set.size {
                if Kind::of_mode(i.mode.get()) == Kind::Dir {
                    return Err(MetaError::IsDir);
                }
                let old = i.size.get();
                m.truncate_blocks(ino, size)?;
                let bs = m.bs as u64;
                if size < old && size % bs != 0 {
                    // What lay past the new end must read as zeroes if the
                    // file grows again.
                    if let Some((p, _)) = crate::data::map(&m.extents(ino), size / bs) {
                        let mut blk = vec![0u8; m.bs];
                        m.dev.read(p, &mut blk)?;
                        blk[(size % bs) as usize..].fill(0);
                        m.dev.write(p, &blk, false)?;
                    }
                }
                let mut i = m.getattr(ino)?;
                i.size = size.into();
                // An explicit mtime in the same call wins over the truncate's.
                i.mtime_ns = set.mtime_ns.unwrap_or_else(now_ns).into();
                m.put_inode(i)?;
            }
            Ok(m.inodes[&ino])
        })
    }

    fn truncate_blocks(&mut self, ino: u64, size: u64) -> MResult<()> {
        let keep = size.div_ceil(self.bs as u64);
        let mut out = Vec::new();
        let mut freed = 0u64;
        for e in self.extents(ino) {
            let (l, p, n) = (e.lblk.get(), e.pblk.get(), e.len.get() as u64);
            if l >= keep {
                for k in 0..n {
                    self.set_bit(p + k, false)?;
                }
                freed += n;
            } else if l + n > keep {
                let stay = keep - l;
                for k in stay..n {
                    self.set_bit(p + k, false)?;
                }
                freed += n - stay;
                out.push(Extent { len: (stay as u32).into(), ..e });
            } else {
                out.push(e);
            }
        }
        self.set_extents(ino, &out)?;
        let mut i = self.getattr(ino)?;
        i.blocks = (i.blocks.get().saturating_sub(freed)).into();
        self.put_inode(i)?;
        Ok(())
    }

    /// Maps file blocks `lblk..lblk+count` of `ino`, allocating what is
    /// not mapped yet; returns the extents covering the range. Data then
    /// goes straight between the client and the storage node.
    pub fn allocate(&mut self, ino: u64, lblk: u64, count: u64) -> MResult<Vec<Extent>> {
        self.run(|m| {
            let i = m.getattr(ino)?;
            if Kind::of_mode(i.mode.get()) == Kind::Dir {
                return Err(MetaError::IsDir);
            }
            let mut exts = m.extents(ino);
            // A write into a hole (not where the file's blocks end) gets the
            // whole aligned chunk around it, so that random writes into a
            // sparse file make few extents rather than one per block.
            let appending = exts.iter().any(|e| e.lblk.get() + e.len.get() as u64 == lblk) || lblk == 0;
            let (from, to) = if appending {
                (lblk, lblk + count)
            } else {
                (lblk / ALLOC_CHUNK * ALLOC_CHUNK, (lblk + count).div_ceil(ALLOC_CHUNK) * ALLOC_CHUNK)
            };
            let size_blocks = i.size.get().div_ceil(m.bs as u64);
            let fresh = m.fill_gaps(&mut exts, from, to)?;
            let added: u64 = fresh.iter().map(|f| f.2).sum();
            // Fresh blocks read as zeroes, except those the writer fills
            // whole beyond the end of the file.
            for (l0, p0, n) in fresh {
                let (mut a, end) = (l0, l0 + n);
                while a < end {
                    let skip = a >= size_blocks && a >= lblk && a < lblk + count;
                    let mut b = a + 1;
                    while b < end && (b >= size_blocks && b >= lblk && b < lblk + count) == skip {
                        b += 1;
                    }
                    if !skip {
                        m.dev.write_zeroes(p0 + (a - l0), b - a)?;
                    }
                    a = b;
                }
            }
            if added > 0 {
                m.set_extents(ino, &exts)?;
                let mut i = m.getattr(ino)?;
                i.blocks = (i.blocks.get() + added).into();
                m.put_inode(i)?;
            }
            Ok(m.extents(ino)
                .into_iter()
                .filter(|e| e.lblk.get() < lblk + count && e.lblk.get() + e.len.get() as u64 > lblk)
                .collect())
        })
    }

    /// Allocates every unmapped block of file blocks `from..to` into
    /// `exts` (kept in file order), a run growing where the file's blocks
    /// end if it can; returns the fresh runs as (file block, device block,
    /// count). The caller zeroes what must read as zeroes.
    fn fill_gaps(&mut self, exts: &mut Vec<Extent>, from: u64, to: u64) -> MResult<Vec<(u64, u64, u64)>> {
        let mut fresh = Vec::new();
        let mut l = from;
        while l < to {
            if let Some(e) = exts.iter().find(|e| e.lblk.get() <= l && l < e.lblk.get() + e.len.get() as u64) {
                l = e.lblk.get() + e.len.get() as u64;
                continue;
            }
            // Up to the next mapped block, or the end of the range.
            let next = exts.iter().map(|e| e.lblk.get()).filter(|&s| s > l).min().unwrap_or(u64::MAX);
            let want = (to.min(next) - l).min(u32::MAX as u64);
            let goal =
                exts.iter().find(|e| e.lblk.get() + e.len.get() as u64 == l).map(|e| e.pblk.get() + e.len.get() as u64);
            let (p, n) = match goal.map(|g| self.alloc_at(g, want)).transpose()?.flatten() {
                Some(r) => r,
                None => {
                    let r = self.alloc_run(want)?;
                    if goal.is_some() {
                        // Another file took this one's next blocks: leave
                        // room after the new run for it to grow into.
                        self.alloc_hint = self.alloc_hint.saturating_add(GROW_ROOM);
                    }
                    r
                }
            };
            match exts
                .iter_mut()
                .find(|e| e.lblk.get() + e.len.get() as u64 == l && e.pblk.get() + e.len.get() as u64 == p)
            {
                Some(e) => e.len = (e.len.get() + n as u32).into(),
                None => {
                    let at = exts.partition_point(|e| e.lblk.get() < l);
                    exts.insert(at, Extent { lblk: l.into(), pblk: p.into(), len: (n as u32).into(), flags: 0.into() })
                }
            }
            fresh.push((l, p, n));
            l += n;
        }
        Ok(fresh)
    }

    /// Frees file blocks `first..last` of `ino`; returns how many were mapped.
    fn unmap(&mut self, ino: u64, first: u64, last: u64) -> MResult<u64> {
        if first >= last {
            return Ok(0);
        }
        let mut out = Vec::new();
        let mut freed = 0u64;
        for e in self.extents(ino) {
            let (l, p, n) = (e.lblk.get(), e.pblk.get(), e.len.get() as u64);
            let (a, b) = (l.max(first), (l + n).min(last));
            if a >= b {
                out.push(e);
                continue;
            }
            for k in a..b {
                self.set_bit(p + (k - l), false)?;
            }
            freed += b - a;
            if a > l {
                out.push(Extent { len: ((a - l) as u32).into(), ..e });
            }
            if b < l + n {
                out.push(Extent { lblk: b.into(), pblk: (p + (b - l)).into(), len: ((l + n - b) as u32).into(), ..e });
            }
        }
        if freed > 0 {
            self.set_extents(ino, &out)?;
            let mut i = self.getattr(ino)?;
            i.blocks = i.blocks.get().saturating_sub(freed).into();
            self.put_inode(i)?;
        }
        Ok(freed)
    }

    /// Zeroes bytes `from..to` of `ino` where they lie in mapped blocks
    /// (the partial blocks at the edges of a punched or zeroed range).
    fn zero_bytes(&mut self, ino: u64, from: u64, to: u64) -> MResult<()> {
        let bs = self.bs as u64;
        let exts = self.extents(ino);
        let mut at = from;
        while at < to {
            let blk_end = (at / bs + 1) * bs;
            let end = to.min(blk_end);
            if let Some((p, _)) = crate::data::map(&exts, at / bs) {
                let mut blk = vec![0u8; self.bs];
                self.dev.read(p, &mut blk)?;
                blk[(at % bs) as usize..(end - at / bs * bs) as usize].fill(0);
                self.dev.write(p, &blk, false)?;
            }
            at = end;
        }
        Ok(())
    }

    /// `fallocate(2)` on `off..off+len`: mode 0 allocates (zeroed) and
    /// grows the size, `KEEP_SIZE` allocates only, `PUNCH_HOLE | KEEP_SIZE`
    /// frees the whole blocks and zeroes the partial ones, `ZERO_RANGE`
    /// (optionally `KEEP_SIZE`) leaves the range allocated and zero. One
    /// transaction: on ENOSPC nothing has changed.
    pub fn fallocate(&mut self, ino: u64, mode: i32, off: u64, len: u64) -> MResult<Inode> {
        use libc::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH, FALLOC_FL_ZERO_RANGE as ZERO};
        let end = off.checked_add(len).filter(|&e| len > 0 && e <= i64::MAX as u64).ok_or(MetaError::Invalid(
            "fallocate needs a length above zero and an end within the largest file offset".into(),
        ))?;
        if mode & !(KEEP | PUNCH | ZERO) != 0 {
            return Err(MetaError::NotSupported);
        }
        if mode & PUNCH != 0 && (mode & KEEP == 0 || mode & ZERO != 0) {
            return Err(MetaError::Invalid("PUNCH_HOLE goes with KEEP_SIZE alone".into()));
        }
        self.run(|m| {
            let i = m.getattr(ino)?;
            match Kind::of_mode(i.mode.get()) {
                Kind::File => {}
                Kind::Dir => return Err(MetaError::IsDir),
                _ => return Err(MetaError::NoDevice),
            }
            let bs = m.bs as u64;
            let size = i.size.get();
            let mut changed = false;
            if mode & (PUNCH | ZERO) != 0 {
                // The partial blocks at the edges are cleared in place (as
                // far as the file goes); the whole ones are freed.
                let (head, tail) = (off.div_ceil(bs) * bs, end / bs * bs);
                let edges = if head > tail { vec![(off, end)] } else { vec![(off, head), (tail, end)] };
                for (a, b) in edges {
                    if a < b.min(size) {
                        m.zero_bytes(ino, a, b.min(size))?;
                    }
                }
                changed |= m.unmap(ino, off.div_ceil(bs), end / bs)? > 0;
            }
            if mode & PUNCH == 0 {
                let mut exts = m.extents(ino);
                let fresh = m.fill_gaps(&mut exts, off / bs, end.div_ceil(bs))?;
                for &(_, p, n) in &fresh {
                    m.dev.write_zeroes(p, n)?;
                }
                if !fresh.is_empty() {
                    m.set_extents(ino, &exts)?;
                    let mut i = m.getattr(ino)?;
                    i.blocks = (i.blocks.get() + fresh.iter().map(|f| f.2).sum::<u64>()).into();
                    m.put_inode(i)?;
                }
            }
            let mut i = m.getattr(ino)?;
            let t = now_ns();
            if mode & KEEP == 0 && end > size {
                i.size = end.into();
                changed = true;
            }
            if changed || mode & ZERO != 0 {
                i.mtime_ns = t.into();
            }
            i.ctime_ns = t.into();
            m.put_inode(i)?;
            Ok(i)
        })
    }

    /// Grows the recorded size to `size` if it is larger (after a write
    /// past the end) and stamps the modification time.
    pub fn extend_size(&mut self, ino: u64, size: u64) -> MResult<Inode> {
        self.run(|m| {
            let mut i = m.getattr(ino)?;
            if size > i.size.get() {
                i.size = size.into();
            }
            let t = now_ns();
            i.mtime_ns = t.into();
            i.ctime_ns = t.into();
            m.put_inode(i)?;
            Ok(i)
        })
    }

    /// Marks an inode used (or not) by some node; an unlinked inode is
    /// freed when its last user lets go. `Ok(true)`: it was freed now.
    pub fn set_in_use(&mut self, ino: u64, used: bool) -> MResult<bool> {
        if used {
            self.in_use.insert(ino);
            return Ok(false);
        }
        self.in_use.remove(&ino);
        if self.inodes.get(&ino).is_some_and(|i| i.nlink.get() == 0) {
            self.run(|m| m.free_inode(ino))?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A file's DM attributes and managed regions (empty if it has none).
    pub fn dm_info(&self, ino: u64) -> DmInfo {
        self.dm.get(&ino).cloned().unwrap_or_default()
    }

    /// Replaces a file's DM attributes and regions: one transaction, with
    /// the block allocated on first use and freed when nothing is left.
    pub fn set_dm_info(&mut self, ino: u64, info: DmInfo) -> MResult<Inode> {
        self.run(|m| m.put_dm_info(ino, info))
    }

    fn put_dm_info(&mut self, ino: u64, info: DmInfo) -> MResult<Inode> {
        let mut i = self.getattr(ino)?;
        if info.is_empty() {
            if i.dm_block.get() != 0 {
                self.set_bit(i.dm_block.get(), false)?;
                i.dm_block = 0.into();
            }
            self.dm.remove(&ino);
        } else {
            let img = info.encode(self.bs).ok_or(MetaError::NoRoom)?;
            if i.dm_block.get() == 0 {
                let (b, _) = self.alloc_run(1)?;
                i.dm_block = b.into();
            }
            *self.block_image(i.dm_block.get())? = img;
            self.dm.insert(ino, info);
        }
        i.ctime_ns = now_ns().into();
        self.put_inode(i)?;
        Ok(i)
    }

    /// One change to a file's DM block, made on the manager's own copy:
    /// DM applications on two nodes changing the same file lose neither
    /// change (each once sent back the whole block it had read).
    pub fn dm_change(&mut self, ino: u64, change: &DmChange) -> MResult<Inode> {
        let mut info = self.dm_info(ino);
        match change {
            DmChange::SetAttr { name, value } => match info.attrs.iter_mut().find(|(n, _)| n == name) {
                Some(a) => a.1.clone_from(value),
                None => info.attrs.push((name.clone(), value.clone())),
            },
            DmChange::RemoveAttr { name } => {
                let before = info.attrs.len();
                info.attrs.retain(|(n, _)| n != name);
                if info.attrs.len() == before {
                    return Err(MetaError::NoAttr);
                }
            }
            DmChange::Regions(r) => info.regions = Some(r.clone()),
            DmChange::Inherit { name, mode } => {
                if ino != ROOT_INO {
                    return Err(MetaError::Invalid("inheritance is kept on the root".into()));
                }
                let pos = info.inherit.iter().position(|(n, _)| n == name);
                match (mode, pos) {
                    (Some(t), Some(k)) => info.inherit[k].1 = *t,
                    (Some(t), None) => info.inherit.push((name.clone(), *t)),
                    (None, Some(k)) => {
                        info.inherit.remove(k);
                    }
                    (None, None) => return Err(MetaError::NoAttr),
                }
            }
        }
        self.set_dm_info(ino, info)
    }

    /// Sets (`Some`) or removes (`None`) an extended attribute, with
    /// `setxattr`'s `XATTR_CREATE` / `XATTR_REPLACE` flags.
    pub fn set_xattr(&mut self, ino: u64, name: &[u8], value: Option<&[u8]>, flags: i32) -> MResult<Inode> {
        if name.is_empty() || name.len() > 255 {
            return Err(MetaError::Invalid("extended attribute names are 1 to 255 bytes".into()));
        }
        let mut info = self.dm_info(ino);
        let pos = info.xattrs.iter().position(|(n, _)| n == name);
        match (value, pos) {
            (None, None) => return Err(MetaError::NoAttr),
            (None, Some(i)) => {
                info.xattrs.remove(i);
            }
            (Some(_), Some(_)) if flags & libc::XATTR_CREATE != 0 => return Err(MetaError::Exists),
            (Some(_), None) if flags & libc::XATTR_REPLACE != 0 => return Err(MetaError::NoAttr),
            (Some(v), Some(i)) => info.xattrs[i].1 = v.to_vec(),
            (Some(v), None) => info.xattrs.push((name.to_vec(), v.to_vec())),
        }
        // They share the file's one attribute block: full is ENOSPC, as on ext4.
        self.set_dm_info(ino, info).map_err(|e| if matches!(e, MetaError::NoRoom) { MetaError::NoSpace } else { e })
    }

    /// The file's XDSM event list (`dm_set_eventlist`), as an event-set mask.
    pub fn set_eventlist(&mut self, ino: u64, mask: u64) -> MResult<Inode> {
        self.run(|m| {
            let mut i = m.getattr(ino)?;
            i.dm_events = mask.into();
            m.put_inode(i)?;
            Ok(i)
        })
    }

    /// Frees the whole blocks inside `off..off+len` (`len` 0: to the end of
    /// the file); the size stays, the range reads as zeroes (`dm_punch_hole`).
    pub fn punch(&mut self, ino: u64, off: u64, len: u64) -> MResult<Inode> {
        self.run(|m| {
            let i = m.getattr(ino)?;
            if Kind::of_mode(i.mode.get()) != Kind::File {
                return Err(MetaError::Invalid("holes are punched in regular files".into()));
            }
            let bs = m.bs as u64;
            let first = off.div_ceil(bs);
            let last = if len == 0 { u64::MAX } else { (off.saturating_add(len)) / bs };
            m.unmap(ino, first, last)?;
            let mut i = m.getattr(ino)?;
            i.ctime_ns = now_ns().into();
            m.put_inode(i)?;
            Ok(i)
        })
    }

    /// Size and mtime a client set under an exclusive token, given back:
    /// one transaction. The size only grows here (truncation is a setattr).
    pub fn apply_dirty(&mut self, ino: u64, size: u64, mtime_ns: u64) -> MResult<Inode> {
        self.run(|m| {
            let mut i = m.getattr(ino)?;
            if size > i.size.get() {
                i.size = size.into();
            }
            if mtime_ns > i.mtime_ns.get() {
                i.mtime_ns = mtime_ns.into();
                i.ctime_ns = mtime_ns.into();
            }
            m.put_inode(i)?;
            Ok(i)
        })
    }

    /// Stamps the modification time in memory only (an overwrite inside the
    /// file): it reaches the volume with the inode's next journaled change,
    /// so a crash can lose a timestamp but never data or structure.
    pub fn touch_lazy(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            let t = now_ns();
            i.mtime_ns = t.into();
            i.ctime_ns = t.into();
        }
    }

    /// (total blocks, free blocks, total inodes, free inodes)
    pub fn statfs(&self) -> (u64, u64, u64, u64) {
        (self.layout.total, self.free_blocks, self.layout.inode_count, self.free_inos.len() as u64)
    }

    /// Sequence number the next metadata transaction will get.
    pub fn next_transaction(&self) -> u64 {
        self.journal.lock().next_seq()
    }

    /// Writes every journaled change home and trims the journal.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.flush_staged()?;
        self.journal.lock().checkpoint()
    }
}

/// What [`MetaStore::setattr`] changes; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<u64>,
    pub mtime_ns: Option<u64>,
}

pub const ROOT: u64 = ROOT_INO;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDev;
    use crate::mkfs::{mkfs, MkfsOpts};

    const FILE: u32 = libc::S_IFREG | 0o644;
    const DIR: u32 = libc::S_IFDIR | 0o755;
    const ME: Cred = Cred { uid: 1000, gid: 1000 };

    fn fresh(bytes: u64) -> (Arc<MemDev>, MetaStore) {
        let dev = Arc::new(MemDev::new(4096, bytes));
        mkfs(&*dev, &MkfsOpts { bytes_per_inode: 8192, ..Default::default() }).unwrap();
        let m = MetaStore::open(dev.clone()).unwrap();
        (dev, m)
    }

    fn errno<T: std::fmt::Debug>(r: MResult<T>) -> i32 {
        r.unwrap_err().errno()
    }

    /// Changes to one file's DM block from two writers both stay (each is
    /// applied to the store's copy), and survive a reload.
    #[test]
    fn dm_changes_apply_to_the_current_block() {
        let (dev, mut m) = fresh(64 << 20);
        let f = m.create(ROOT, b"f", FILE, ME).unwrap().ino.get();
        let set = |n: &[u8], v: &[u8]| DmChange::SetAttr { name: n.to_vec(), value: v.to_vec() };
        m.dm_change(f, &set(b"a", b"1")).unwrap();
        m.set_xattr(f, b"user.x", Some(b"kept"), 0).unwrap();
        m.dm_change(f, &set(b"b", b"2")).unwrap();
        m.dm_change(f, &DmChange::Regions(vec![crate::format::Region { offset: 0, size: 0, flags: 1 }])).unwrap();
        m.dm_change(f, &set(b"a", b"3")).unwrap();
        assert_eq!(errno(m.dm_change(f, &DmChange::RemoveAttr { name: b"zz".to_vec() })), libc::ENODATA);
        let big = set(b"c", &vec![0u8; 5000]);
        assert_eq!(errno(m.dm_change(f, &big)), libc::E2BIG, "more than a block holds");
        let m = MetaStore::open(dev).unwrap();
        let d = m.dm_info(f);
        assert_eq!(d.attrs, vec![(b"a".to_vec(), b"3".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
        assert_eq!(d.xattrs, vec![(b"user.x".to_vec(), b"kept".to_vec())], "a DM change keeps the xattrs");
        assert_eq!(d.regions.map(|r| r.len()), Some(1));
    }

    /// `dm_create_by_handle`: a free inode number is taken with the
    /// generation given; one in use or off the volume is refused.
    #[test]
    fn objects_are_made_again_with_their_handles() {
        let (dev, mut m) = fresh(64 << 20);
        let old = m.create(ROOT, b"victim", FILE, ME).unwrap();
        let (ino, gen) = (old.ino.get(), old.generation.get());
        m.unlink(ROOT, b"victim").unwrap();
        let again = m.create_at(ROOT, b"reborn", FILE, ME, (ino, gen)).unwrap();
        assert_eq!((again.ino.get(), again.generation.get()), (ino, gen));
        assert_eq!(errno(m.create_at(ROOT, b"twice", FILE, ME, (ino, gen))), libc::EEXIST);
        assert_eq!(errno(m.create_at(ROOT, b"far", FILE, ME, (u64::MAX / 2, 1))), libc::EINVAL);
        // The next ordinary create does not get the number taken.
        let next = m.create(ROOT, b"next", FILE, ME).unwrap();
        assert_ne!(next.ino.get(), ino);
        let m = MetaStore::open(dev).unwrap();
        assert_eq!(m.lookup(ROOT, b"reborn").unwrap().ino, ino);
        assert_eq!(m.getattr(ino).unwrap().generation.get(), gen);
    }

    #[test]
    fn paths_and_parents_of_directories() {
        let (_, mut m) = fresh(64 << 20);
        let a = m.create(ROOT, b"a", DIR, ME).unwrap().ino.get();
        let b = m.create(a, b"b", DIR, ME).unwrap().ino.get();
        let f = m.create(b, b"f", FILE, ME).unwrap().ino.get();
        assert_eq!(m.parent_of(b).unwrap(), (a, b"b".to_vec()));
        assert_eq!(m.parent_of(ROOT).unwrap().0, ROOT);
        assert_eq!(errno(m.parent_of(f)), libc::ENOTDIR);
        assert_eq!(m.path_of(b, f).unwrap(), b"a/b/f");
        assert_eq!(m.path_of(b, b).unwrap(), b"a/b");
        assert_eq!(m.path_of(ROOT, ROOT).unwrap(), b"");
        assert_eq!(errno(m.path_of(a, f)), libc::ENOENT, "f is not in a");
        m.rename(a, b"b", ROOT, b"moved").unwrap();
        assert_eq!(m.path_of(b, f).unwrap(), b"moved/f");
    }

    /// `dm_set_inherit`: a new object of the named type gets its parent's
    /// attribute; other types and directories without it get nothing.
    #[test]
    fn inheritable_dm_attributes() {
        let (_, mut m) = fresh(64 << 20);
        let d = m.create(ROOT, b"d", DIR, ME).unwrap().ino.get();
        let inherit = |t: Option<u32>| DmChange::Inherit { name: b"hsm".to_vec(), mode: t };
        m.dm_change(d, &DmChange::SetAttr { name: b"hsm".to_vec(), value: b"tier".to_vec() }).unwrap();
        assert_eq!(errno(m.dm_change(d, &inherit(Some(libc::S_IFREG)))), libc::EINVAL, "kept on the root only");
        m.dm_change(ROOT, &inherit(Some(libc::S_IFREG))).unwrap();
        let f = m.create(d, b"f", FILE, ME).unwrap().ino.get();
        let sub = m.create(d, b"sub", DIR, ME).unwrap().ino.get();
        let top = m.create(ROOT, b"top", FILE, ME).unwrap().ino.get();
        assert_eq!(m.dm_info(f).attrs, vec![(b"hsm".to_vec(), b"tier".to_vec())]);
        assert!(m.dm_info(sub).attrs.is_empty(), "directories are not named");
        assert!(m.dm_info(top).attrs.is_empty(), "the root has no such attribute");
        m.dm_change(ROOT, &inherit(None)).unwrap();
        assert_eq!(errno(m.dm_change(ROOT, &inherit(None))), libc::ENODATA);
        let g = m.create(d, b"g", FILE, ME).unwrap().ino.get();
        assert!(m.dm_info(g).attrs.is_empty());
    }

    #[test]
    fn posix_namespace_operations() {
        let (_, mut m) = fresh(64 << 20);
        let a = m.create(ROOT, b"a", FILE, ME).unwrap();
        assert_eq!((a.uid.get(), a.nlink.get()), (1000, 1));
        let d = m.create(ROOT, b"d", DIR, ME).unwrap();
        assert_eq!(m.getattr(ROOT).unwrap().nlink.get(), 3, "root gains a link per subdirectory");
        assert_eq!(errno(m.create(ROOT, b"a", FILE, ME)), libc::EEXIST);
        assert_eq!(errno(m.create(a.ino.get(), b"x", FILE, ME)), libc::ENOTDIR);
        assert_eq!(errno(m.create(ROOT, b"a/b", FILE, ME)), libc::EINVAL);
        assert_eq!(errno(m.create(ROOT, b"..", FILE, ME)), libc::EINVAL);
        // Hard link, then unlink one name: the inode lives on.
        let l = m.link(a.ino.get(), d.ino.get(), b"a2").unwrap();
        assert_eq!(l.nlink.get(), 2);
        m.unlink(ROOT, b"a").unwrap();
        assert_eq!(m.getattr(a.ino.get()).unwrap().nlink.get(), 1);
        assert_eq!(errno(m.lookup(ROOT, b"a")), libc::ENOENT);
        assert_eq!(errno(m.link(d.ino.get(), ROOT, b"dl")), libc::EISDIR);
        assert_eq!(errno(m.unlink(ROOT, b"d")), libc::EISDIR);
        assert_eq!(errno(m.rmdir(ROOT, b"d")), libc::ENOTEMPTY);
        // Rename over an existing file frees the old target.
        let b = m.create(ROOT, b"b", FILE, ME).unwrap();
        m.rename(d.ino.get(), b"a2", ROOT, b"b").unwrap();
        assert_eq!(m.lookup(ROOT, b"b").unwrap().ino, a.ino.get());
        assert_eq!(errno(m.getattr(b.ino.get())), libc::ENOENT);
        // Directories: not into themselves, not over a file.
        let sub = m.create(d.ino.get(), b"sub", DIR, ME).unwrap();
        assert_eq!(errno(m.rename(ROOT, b"d", sub.ino.get(), b"loop")), libc::EINVAL);
        assert_eq!(errno(m.rename(ROOT, b"d", ROOT, b"b")), libc::ENOTDIR);
        m.rename(d.ino.get(), b"sub", ROOT, b"sub2").unwrap();
        assert_eq!(m.getattr(ROOT).unwrap().nlink.get(), 4);
        assert_eq!(m.getattr(d.ino.get()).unwrap().nlink.get(), 2);
        m.rmdir(ROOT, b"d").unwrap();
        let names: Vec<Vec<u8>> = m.readdir(ROOT).unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(names, vec![b"b".to_vec(), b"sub2".to_vec()]);
    }

    #[test]
    fn every_acknowledged_change_survives_a_manager_crash() {
        let (dev, mut m) = fresh(64 << 20);
        let d = m.create(ROOT, b"dir", DIR, ME).unwrap();
        let f = m.create(d.ino.get(), b"file", FILE, ME).unwrap();
        m.allocate(f.ino.get(), 0, 10).unwrap();
        m.setattr(f.ino.get(), &SetAttr { size: Some(40960), mode: Some(0o600), ..Default::default() }).unwrap();
        let before = (m.readdir(ROOT).unwrap(), m.getattr(f.ino.get()).unwrap(), m.extents(f.ino.get()), m.statfs());
        // Crash: no checkpoint, nothing written home but the journal.
        drop(m);
        let m = MetaStore::open(dev.clone()).unwrap();
        let after = (m.readdir(ROOT).unwrap(), m.getattr(f.ino.get()).unwrap(), m.extents(f.ino.get()), m.statfs());
        assert_eq!(before, after);
        assert_eq!(after.1.mode.get(), libc::S_IFREG | 0o600);
        assert_eq!(m.lookup(d.ino.get(), b"file").unwrap().ino, f.ino.get());
    }

    #[test]
    fn allocation_truncation_and_many_extents() {
        let (dev, mut m) = fresh(64 << 20);
        let a = m.create(ROOT, b"a", FILE, ME).unwrap().ino.get();
        let b = m.create(ROOT, b"b", FILE, ME).unwrap().ino.get();
        let (_, free0, _, _) = m.statfs();
        // Two files written block by block side by side: each grows where
        // it ends, so neither is cut into an extent per block.
        for k in 0..20 {
            m.allocate(a, k, 1).unwrap();
            m.allocate(b, k, 1).unwrap();
        }
        assert!(m.extents(a).len() <= 2 && m.extents(b).len() <= 2, "{:?}", m.extents(a));
        assert_eq!(m.statfs().1, free0 - 40);
        // Already mapped blocks are not allocated again.
        let again = m.allocate(a, 5, 3).unwrap();
        assert!((5..8).all(|k| crate::data::map(&again, k).is_some()), "{again:?}");
        assert_eq!(m.statfs().1, free0 - 40);
        // More extents than the inode holds inline: every other block of
        // a 40-block file punched out.
        let c = m.create(ROOT, b"c", FILE, ME).unwrap().ino.get();
        m.allocate(c, 0, 40).unwrap();
        for k in (1..40).step_by(2) {
            m.punch(c, k * 4096, 4096).unwrap();
        }
        assert_eq!(m.extents(c).len(), 20);
        assert_eq!(m.statfs().1, free0 - 40 - 20 - 1, "20 blocks of c and its overflow extent block");
        m.setattr(a, &SetAttr { size: Some(3 * 4096), ..Default::default() }).unwrap();
        assert_eq!(m.extents(a).iter().map(|e| e.len.get()).sum::<u32>(), 3);
        assert_eq!(m.getattr(a).unwrap().blocks.get(), 3);
        drop(m);
        let mut m = MetaStore::open(dev).unwrap();
        assert_eq!(m.extents(c).len(), 20);
        assert_eq!(m.extents(a).iter().map(|e| e.len.get()).sum::<u32>(), 3);
        for n in [&b"a"[..], b"b", b"c"] {
            m.unlink(ROOT, n).unwrap();
        }
        assert_eq!(m.statfs().1, free0, "every block comes back");
    }

    #[test]
    fn writes_into_holes_allocate_zeroed_chunks() {
        let (dev, mut m) = fresh(16 << 20);
        let f = m.create(ROOT, b"f", FILE, ME).unwrap().ino.get();
        // Dirty the blocks a later file will get, then free them.
        let junk = m.create(ROOT, b"junk", FILE, ME).unwrap().ino.get();
        let exts = m.allocate(junk, 0, 64).unwrap();
        for e in &exts {
            dev.write(e.pblk.get(), &vec![0xAB; e.len.get() as usize * 4096], false).unwrap();
        }
        m.unlink(ROOT, b"junk").unwrap();
        m.setattr(f, &SetAttr { size: Some(64 * 4096), ..Default::default() }).unwrap();
        // Random single-block writes into the sparse file: one chunk each.
        for k in [37u64, 3, 50, 20, 9, 63] {
            m.allocate(f, k, 1).unwrap();
        }
        assert!(m.extents(f).len() <= 4, "chunks, not blocks: {:?}", m.extents(f));
        // Every fresh block inside the file reads as zeroes, not as junk.
        for e in m.extents(f) {
            let mut buf = vec![1u8; e.len.get() as usize * 4096];
            dev.read(e.pblk.get(), &mut buf).unwrap();
            assert!(buf.iter().all(|&x| x == 0), "extent {e:?} shows old data");
        }
    }

    #[test]
    fn a_lazy_mtime_costs_no_transaction_and_survives_as_structure() {
        let (dev, mut m) = fresh(16 << 20);
        let f = m.create(ROOT, b"f", FILE, ME).unwrap().ino.get();
        m.allocate(f, 0, 4).unwrap();
        let before = m.getattr(f).unwrap();
        let seq = m.next_transaction();
        std::thread::sleep(std::time::Duration::from_millis(2));
        m.touch_lazy(f);
        assert_eq!(m.next_transaction(), seq, "no journal write");
        assert!(m.getattr(f).unwrap().mtime_ns.get() > before.mtime_ns.get());
        // The next journaled change of the inode carries the new time.
        m.setattr(f, &SetAttr { mode: Some(0o600), ..Default::default() }).unwrap();
        let t = m.getattr(f).unwrap().mtime_ns.get();
        drop(m);
        let m = MetaStore::open(dev).unwrap();
        assert_eq!(m.getattr(f).unwrap().mtime_ns.get(), t);
        assert_eq!(m.extents(f).len(), 1);
    }

    #[test]
    fn a_full_volume_says_enospc_and_stays_consistent() {
        let (dev, mut m) = fresh(8 << 20);
        let f = m.create(ROOT, b"big", FILE, ME).unwrap().ino.get();
        let mut got = 0;
        for step in [64u64, 1] {
            loop {
                let free = m.statfs().1;
                match m.allocate(f, got, step) {
                    Ok(_) => got += step,
                    Err(e) => {
                        assert_eq!(e.errno(), libc::ENOSPC);
                        assert_eq!(m.statfs().1, free, "a failed allocation allocates nothing");
                        break;
                    }
                }
            }
        }
        assert_eq!(m.statfs().1, 0);
        assert_eq!(m.getattr(f).unwrap().blocks.get(), got);
        assert_eq!(errno(m.create(ROOT, b"more", FILE, ME).and_then(|i| m.allocate(i.ino.get(), 0, 1))), libc::ENOSPC);
        drop(m);
        let m = MetaStore::open(dev).unwrap();
        assert_eq!(m.statfs().1, 0);
        assert!(m.lookup(ROOT, b"big").is_ok());
    }

    #[test]
    fn large_directories_stay_fast_and_persist() {
        let dev = Arc::new(MemDev::new(4096, 512 << 20));
        mkfs(&*dev, &MkfsOpts { bytes_per_inode: 4096, ..Default::default() }).unwrap();
        let mut m = MetaStore::open(dev.clone()).unwrap();
        let d = m.create(ROOT, b"big", DIR, ME).unwrap().ino.get();
        let n = 100_000;
        for i in 0..n {
            m.create(d, format!("entry-{i:06}").as_bytes(), FILE, ME).unwrap();
        }
        m.checkpoint().unwrap();
        for i in (0..n).step_by(97) {
            m.unlink(d, format!("entry-{i:06}").as_bytes()).unwrap();
        }
        let left = m.readdir(d).unwrap().len();
        drop(m);
        let m = MetaStore::open(dev).unwrap();
        assert_eq!(m.readdir(d).unwrap().len(), left);
        assert!(m.lookup(d, b"entry-000001").is_ok());
        assert_eq!(errno(m.lookup(d, b"entry-000097")), libc::ENOENT);
    }

    /// Thousands of extents: any number works (a chain of leaves), each
    /// change rewrites only the leaves it touches, and the map survives a
    /// journal replay and frees all its blocks with the file.
    #[test]
    fn extent_maps_of_any_length_survive_a_replay() {
        let (dev, mut m) = fresh(256 << 20);
        let f = m.create(ROOT, b"sparse", FILE, ME).unwrap().ino.get();
        let free0 = m.statfs().1;
        // Writes far apart in a sparse file: one extent (a 16-block chunk) each.
        let n = 2_000u64;
        for k in 0..n {
            m.allocate(f, (k * 7919 % n) * 1024, 1).unwrap();
        }
        let exts = m.extents(f);
        assert_eq!(exts.len() as u64, n, "one extent per far-apart write");
        assert!(exts.windows(2).all(|w| w[0].lblk.get() + w[0].len.get() as u64 <= w[1].lblk.get()), "in order");
        let leaves = m.ext_blocks[&f].len();
        assert!(leaves >= (n as usize - 6).div_ceil(m.leaf_cap()), "{leaves} leaves");
        // A change in the middle rewrites one leaf, not the chain.
        let seq = m.next_transaction();
        m.allocate(f, 1000 * 1024 + 512, 1).unwrap();
        assert_eq!(m.next_transaction(), seq + 1);
        assert_eq!(m.extents(f).len() as u64, n + 1);
        let before = m.extents(f);
        let m2 = MetaStore::open(dev.clone()).unwrap();
        assert_eq!(m2.extents(f), before, "the whole map after a journal replay");
        drop(m2);
        // Punching out the middle and truncating give every block back.
        m.punch(f, 500 * 1024 * 4096, 500 * 1024 * 4096).unwrap();
        assert!(m.extents(f).len() < before.len());
        assert_eq!(MetaStore::open(dev.clone()).unwrap().extents(f), m.extents(f));
        m.setattr(f, &SetAttr { size: Some(0), ..Default::default() }).unwrap();
        assert!(m.extents(f).is_empty() && !m.ext_blocks.contains_key(&f));
        assert_eq!(m.statfs().1, free0, "every data and leaf block is free again");
        assert_eq!(MetaStore::open(dev.clone()).unwrap().statfs().1, free0);
        m.unlink(ROOT, b"sparse").unwrap();
    }

    /// A file that fills a fragmented volume: as many extents as the free
    /// space has pieces, up to ENOSPC, and intact after a replay.
    #[test]
    fn a_file_fills_a_fragmented_volume() {
        let (dev, mut m) = fresh(64 << 20);
        // Small files side by side, every other one removed: holes of 2 blocks.
        let mut k = 0;
        while m.statfs().1 > 64 {
            let Ok(f) = m.create(ROOT, format!("f{k}").as_bytes(), FILE, ME) else { break };
            if m.allocate(f.ino.get(), 0, 2).is_err() {
                break;
            }
            k += 1;
        }
        for j in (0..k).step_by(2) {
            m.unlink(ROOT, format!("f{j}").as_bytes()).unwrap();
        }
        let big = m.create(ROOT, b"big", FILE, ME).unwrap().ino.get();
        let mut l = 0;
        loop {
            match m.allocate(big, l, 1) {
                Ok(_) => l += 1,
                Err(e) => {
                    assert_eq!(e.errno(), libc::ENOSPC);
                    break;
                }
            }
        }
        let exts = m.extents(big);
        assert!(exts.len() > 1_000, "{} extents", exts.len());
        assert_eq!(exts.iter().map(|e| e.len.get() as u64).sum::<u64>(), l);
        assert_eq!(MetaStore::open(dev).unwrap().extents(big), exts);
    }

    #[test]
    fn fallocate_modes_and_all_or_nothing() {
        use libc::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH, FALLOC_FL_ZERO_RANGE as ZERO};
        let (dev, mut m) = fresh(64 << 20);
        let f = m.create(ROOT, b"f", FILE, ME).unwrap().ino.get();
        let blocks = |m: &MetaStore| m.getattr(f).unwrap().blocks.get();
        let size = |m: &MetaStore| m.getattr(f).unwrap().size.get();
        // Mode 0: allocated, zeroed, and the size grows.
        m.fallocate(f, 0, 0, 1 << 20).unwrap();
        assert_eq!((size(&m), blocks(&m)), (1 << 20, 256));
        // KEEP_SIZE: blocks past the end, the size stays.
        m.fallocate(f, KEEP, 1 << 20, 1 << 20).unwrap();
        assert_eq!((size(&m), blocks(&m)), (1 << 20, 512));
        // Data in the file, then PUNCH_HOLE | KEEP_SIZE from the middle of
        // block 1 to 1 KiB into block 4: blocks 2 and 3 freed, the edges
        // zeroed in place.
        let exts = m.extents(f);
        let p = |l: u64| crate::data::map(&exts, l).unwrap().0;
        for l in 0..6 {
            dev.write(p(l), &vec![0xab; 4096], false).unwrap();
        }
        m.fallocate(f, PUNCH | KEEP, 4096 + 2048, 4096 * 3 - 1024).unwrap();
        assert_eq!((size(&m), blocks(&m)), (1 << 20, 510), "two whole blocks freed");
        let mut b = vec![0u8; 4096];
        dev.read(p(1), &mut b).unwrap();
        assert!(b[..2048].iter().all(|&x| x == 0xab) && b[2048..].iter().all(|&x| x == 0));
        dev.read(p(4), &mut b).unwrap();
        assert!(b[..1024].iter().all(|&x| x == 0) && b[1024..].iter().all(|&x| x == 0xab));
        assert!(crate::data::map(&m.extents(f), 2).is_none() && crate::data::map(&m.extents(f), 3).is_none());
        // ZERO_RANGE: the hole allocated again, everything in range zero, past the end the size grows.
        m.fallocate(f, ZERO, 4096, 4096 * 5).unwrap();
        assert_eq!(blocks(&m), 512);
        let exts = m.extents(f);
        for l in 1..6 {
            dev.read(crate::data::map(&exts, l).unwrap().0, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0), "block {l} zero");
        }
        dev.read(crate::data::map(&exts, 0).unwrap().0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0xab), "outside the range untouched");
        m.fallocate(f, ZERO, (1 << 20) - 10, 4106).unwrap();
        assert_eq!(size(&m), (1 << 20) + 4096);
        // ENOSPC: all or nothing.
        let (free, ext) = (m.statfs().1, m.extents(f));
        assert_eq!(errno(m.fallocate(f, 0, 8 << 20, 128 << 20)), libc::ENOSPC);
        assert_eq!((m.statfs().1, m.extents(f), size(&m)), (free, ext, (1 << 20) + 4096));
        // Bad arguments.
        assert_eq!(errno(m.fallocate(f, PUNCH, 0, 4096)), libc::EINVAL, "PUNCH_HOLE without KEEP_SIZE");
        assert_eq!(errno(m.fallocate(f, 0, 0, 0)), libc::EINVAL, "zero length");
        assert_eq!(errno(m.fallocate(f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096)), libc::EOPNOTSUPP);
        assert_eq!(errno(m.fallocate(ROOT, 0, 0, 4096)), libc::EISDIR);
        // Survives a replay.
        let m2 = MetaStore::open(dev).unwrap();
        assert_eq!((m2.extents(f), m2.getattr(f).unwrap().size.get()), (m.extents(f), size(&m)));
    }

    #[test]
    fn an_older_format_is_refused_with_a_clear_message() {
        let (dev, m) = fresh(16 << 20);
        drop(m);
        let mut sb = vec![0u8; 4096];
        dev.read(0, &mut sb).unwrap();
        let mut s = Superblock::read_from_prefix(&sb).unwrap().0;
        s.version = 1.into();
        sb[..size_of::<Superblock>()].copy_from_slice(s.as_bytes());
        seal(&mut sb);
        dev.write(0, &sb, true).unwrap();
        let err = MetaStore::open(dev).err().expect("a version 1 volume is refused").to_string();
        assert!(err.contains("version 1") && err.contains("mkfs"), "{err}");
    }
}
