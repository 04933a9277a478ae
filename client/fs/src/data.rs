//! The data path shared by the FUSE mount and DM applications: file data
//! moves straight between this node and the storage nodes by the extent
//! map cached under this node's token (shared to read, exclusive to write);
//! blocks are allocated by the manager.

use super::blockdev::BlockDev;
use super::format::Extent;
use super::remote::MetaClient;
use super::rpc::{self, Mode, Reply, Req};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

type R<T> = Result<T, i32>;

pub struct DataPath {
    pub meta: MetaClient,
    pub dev: Arc<dyn BlockDev>,
    pub bs: u64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The file block holding `lblk`: (physical block, blocks mapped from there).
pub fn map(exts: &[Extent], lblk: u64) -> Option<(u64, u64)> {
    exts.iter().find_map(|x| {
        let (l, p, n) = (x.lblk.get(), x.pblk.get(), x.len.get() as u64);
        (l <= lblk && lblk < l + n).then(|| (p + (lblk - l), l + n - lblk))
    })
}

impl DataPath {
    pub fn new(meta: MetaClient, dev: Arc<dyn BlockDev>) -> DataPath {
        let bs = meta.fs_info().0 as u64;
        DataPath { meta, dev, bs }
    }

    /// Reads `len` bytes at `off` of a file, holes as zeroes, clipped to its size.
    pub fn read(&self, ino: u64, off: u64, len: u64) -> R<Vec<u8>> {
        loop {
            let (slot, _) = self.meta.ensure(ino, Mode::Read)?;
            let _io = slot.io.read();
            let (size, exts) = {
                let st = slot.st.lock();
                match (st.holds(Mode::Read), st.inode) {
                    (true, Some(i)) => (i.size.get(), st.extents.clone()),
                    _ => continue,
                }
            };
            let end = (off + len).min(size);
            if off >= end {
                return Ok(Vec::new());
            }
            let (first, last) = (off / self.bs, (end - 1) / self.bs);
            let mut buf = vec![0u8; ((last - first + 1) * self.bs) as usize];
            self.read_blocks(&exts, first, &mut buf)?;
            let skip = (off - first * self.bs) as usize;
            buf.truncate(skip + (end - off) as usize);
            buf.drain(..skip);
            return Ok(buf);
        }
    }

    /// Fills `buf` with file blocks from `first`; unmapped blocks are zero.
    fn read_blocks(&self, exts: &[Extent], first: u64, buf: &mut [u8]) -> R<()> {
        let n = buf.len() as u64 / self.bs;
        let mut b = 0u64;
        while b < n {
            match map(exts, first + b) {
                Some((p, run)) => {
                    let k = run.min(n - b);
                    let at = (b * self.bs) as usize;
                    self.dev.read(p, &mut buf[at..at + (k * self.bs) as usize]).map_err(|e| e.errno())?;
                    b += k;
                }
                None => {
                    let at = (b * self.bs) as usize;
                    buf[at..at + self.bs as usize].fill(0);
                    b += 1;
                }
            }
        }
        Ok(())
    }

    /// Writes `data` at `off`; `stamp`: set mtime (false for `dm_write_invis`).
    pub fn write(&self, ino: u64, off: u64, data: &[u8], stamp: bool) -> R<()> {
        self.write_to(ino, Some(off), data, stamp)
    }

    /// Writes `data` at the end of the file (`O_APPEND`), wherever another
    /// node's appends left it: the end is read under the exclusive token,
    /// and appends on this node take turns.
    pub fn append(&self, ino: u64, data: &[u8]) -> R<()> {
        self.write_to(ino, None, data, true)
    }

    fn write_to(&self, ino: u64, at: Option<u64>, data: &[u8], stamp: bool) -> R<()> {
        if data.is_empty() {
            return Ok(());
        }
        loop {
            let (slot, _) = self.meta.ensure(ino, Mode::Write)?;
            let (_shared, _alone) = match at {
                Some(_) => (Some(slot.io.read()), None),
                None => (None, Some(slot.io.write())),
            };
            let (size, mut exts) = {
                let st = slot.st.lock();
                match (st.holds(Mode::Write), st.inode) {
                    (true, Some(i)) => (i.size.get(), st.extents.clone()),
                    _ => continue,
                }
            };
            let off = at.unwrap_or(size);
            let end = off + data.len() as u64;
            let (first, last) = (off / self.bs, (end - 1) / self.bs);
            if (first..=last).any(|b| map(&exts, b).is_none()) {
                match self.meta.ask(Req::Allocate { ino, lblk: first, count: last - first + 1 })? {
                    Reply::Extents(b) => exts = rpc::extents_from(&b).map_err(|_| libc::EIO)?,
                    _ => return Err(libc::EIO),
                }
                let blocks: u64 = exts.iter().map(|x| x.len.get() as u64).sum();
                let mut st = slot.st.lock();
                st.extents = exts.clone();
                if let Some(i) = st.inode.as_mut() {
                    i.blocks = blocks.into();
                }
            }
            // Whole blocks: keep what a partial first or last block does not cover.
            let mut buf = vec![0u8; ((last - first + 1) * self.bs) as usize];
            let head = (off - first * self.bs) as usize;
            let bsz = self.bs as usize;
            if head != 0 && first * self.bs < size {
                self.read_blocks(&exts, first, &mut buf[..bsz])?;
            }
            let tail_partial = !end.is_multiple_of(self.bs);
            if tail_partial && last * self.bs < size && (last != first || head == 0) {
                let at = buf.len() - bsz;
                self.read_blocks(&exts, last, &mut buf[at..])?;
            }
            buf[head..head + data.len()].copy_from_slice(data);
            let mut b = first;
            while b <= last {
                let (p, run) = map(&exts, b).ok_or(libc::EIO)?;
                let k = run.min(last + 1 - b);
                let at = ((b - first) * self.bs) as usize;
                self.dev.write(p, &buf[at..at + (k * self.bs) as usize], false).map_err(|e| e.errno())?;
                b += k;
            }
            // Size and mtime are this node's to keep until the token goes back.
            let mut st = slot.st.lock();
            let new_size = st.inode.map_or(end, |i| i.size.get().max(end));
            let mut t = st.inode.map_or(0, |i| i.mtime_ns.get());
            if let Some(i) = st.inode.as_mut() {
                i.size = new_size.into();
                if stamp {
                    t = now_ns();
                    i.mtime_ns = t.into();
                    i.ctime_ns = t.into();
                }
            }
            if stamp || new_size > size {
                let prev = st.dirty.unwrap_or((0, 0));
                st.dirty = Some((prev.0.max(new_size), prev.1.max(t)));
            }
            return Ok(());
        }
    }
}
