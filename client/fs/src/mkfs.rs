//! `mkfs`: lays out and writes a fresh file system.

use super::blockdev::BlockDev;
use super::format::{seal, sealed_ok, Inode, Layout, Superblock, INODE_SIZE, MAGIC, ROOT_INO, VERSION};
use super::journal::Journal;
use super::{FsError, Result};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

#[derive(Debug, Clone)]
pub struct MkfsOpts {
    pub label: String,
    /// One inode per this many bytes of capacity.
    pub bytes_per_inode: u64,
}

impl Default for MkfsOpts {
    fn default() -> Self {
        Self { label: "tidepool".into(), bytes_per_inode: 64 * 1024 }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Writes superblock, journal, allocation bitmap (metadata blocks marked
/// used), inode table and an empty root directory inode.
pub fn mkfs(dev: &dyn BlockDev, opts: &MkfsOpts) -> Result<Superblock> {
    let bs = dev.block_size();
    if !(4096..=65536).contains(&bs) || !bs.is_power_of_two() {
        return Err(FsError::Invalid(format!("block size {bs} must be a power of two in 4 KiB..64 KiB")));
    }
    if opts.label.len() > 64 {
        return Err(FsError::Invalid("label longer than 64 bytes".into()));
    }
    let l = Layout::compute(dev.blocks(), bs, opts.bytes_per_inode.max(4096))
        .ok_or_else(|| FsError::Invalid(format!("a volume of {} blocks is too small", dev.blocks())))?;
    let bsz = bs as usize;
    Journal::format(dev, l.journal_start, l.journal_blocks)?;
    // Bitmap: every block before data_start is in use.
    let zero = vec![0u8; bsz];
    for i in 0..l.bitmap_blocks {
        let mut b = zero.clone();
        let first = i * bsz as u64 * 8;
        for bit in 0..(bsz as u64 * 8) {
            let blk = first + bit;
            if blk < l.data_start || blk >= l.total {
                b[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
        dev.write(l.bitmap_start + i, &b, false)?;
    }
    // Inode table: zeroed, then the root directory.
    let chunk = vec![0u8; bsz * 64];
    let mut at = 0;
    while at < l.inode_blocks {
        let n = (l.inode_blocks - at).min(64);
        dev.write(l.inode_start + at, &chunk[..n as usize * bsz], false)?;
        at += n;
    }
    let t = now_ns();
    let mut root = Inode::new_zeroed();
    root.ino = ROOT_INO.into();
    root.generation = 1.into();
    root.mode = (libc::S_IFDIR | 0o755).into();
    root.nlink = 2.into();
    root.atime_ns = t.into();
    root.mtime_ns = t.into();
    root.ctime_ns = t.into();
    let (blk, off) = inode_location(&l, bs, ROOT_INO);
    let mut b = zero.clone();
    b[off..off + size_of::<Inode>()].copy_from_slice(root.as_bytes());
    dev.write(blk, &b, false)?;
    let mut sb = Superblock::new_zeroed();
    sb.magic = MAGIC;
    sb.version = VERSION.into();
    sb.block_size = bs.into();
    sb.fsid = *uuid::Uuid::new_v4().as_bytes();
    sb.total_blocks = l.total.into();
    sb.journal_start = l.journal_start.into();
    sb.journal_blocks = l.journal_blocks.into();
    sb.bitmap_start = l.bitmap_start.into();
    sb.bitmap_blocks = l.bitmap_blocks.into();
    sb.inode_start = l.inode_start.into();
    sb.inode_blocks = l.inode_blocks.into();
    sb.inode_count = l.inode_count.into();
    sb.data_start = l.data_start.into();
    sb.root_ino = ROOT_INO.into();
    sb.created_unix_ns = t.into();
    nvme_wire::put_padded(&mut sb.label, &opts.label, 0);
    // Everything else is durable before the superblock makes it a file system.
    dev.flush()?;
    let mut b = zero;
    b[..size_of::<Superblock>()].copy_from_slice(sb.as_bytes());
    seal(&mut b);
    dev.write(0, &b, true)?;
    Ok(sb)
}

/// Block and byte offset of inode `ino` (inode numbers start at 1).
pub fn inode_location(l: &Layout, bs: u32, ino: u64) -> (u64, usize) {
    let per = bs as u64 / INODE_SIZE as u64;
    let idx = ino - 1;
    (l.inode_start + idx / per, ((idx % per) as usize) * INODE_SIZE)
}

/// Reads and checks the superblock.
pub fn read_superblock(dev: &dyn BlockDev) -> Result<Superblock> {
    let mut b = vec![0u8; dev.block_size() as usize];
    dev.read(0, &mut b)?;
    let sb = Superblock::read_from_prefix(&b).map_err(|_| FsError::NotFormatted("short block".into()))?.0;
    if sb.magic != MAGIC {
        return Err(FsError::NotFormatted("no Tidepool superblock".into()));
    }
    if !sealed_ok(&b) {
        return Err(FsError::Corrupt { block: 0, why: "superblock checksum".into() });
    }
    if sb.version.get() != VERSION {
        return Err(FsError::NotFormatted(format!(
            "on-disk format version {}, and this Tidepool reads version {VERSION} only \
             (no upgrade in place: copy the files off, `tidepool mkfs`, and copy them back)",
            sb.version.get()
        )));
    }
    if sb.block_size.get() != dev.block_size() || sb.total_blocks.get() > dev.blocks() {
        return Err(FsError::Corrupt { block: 0, why: "geometry does not match the device".into() });
    }
    Ok(sb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDev;
    use crate::format::Layout;
    use std::sync::Arc;

    #[test]
    fn mkfs_writes_a_readable_file_system() {
        let dev = Arc::new(MemDev::new(4096, 64 << 20));
        let sb = mkfs(&*dev, &MkfsOpts::default()).unwrap();
        let back = read_superblock(&*dev).unwrap();
        assert_eq!(back, sb);
        assert_eq!(nvme_wire::get_str(&back.label), "tidepool");
        let l = Layout::compute(dev.blocks(), 4096, 64 * 1024).unwrap();
        assert_eq!(back.data_start.get(), l.data_start);
        // The root inode is a directory.
        let (blk, off) = inode_location(&l, 4096, ROOT_INO);
        let mut b = vec![0u8; 4096];
        dev.read(blk, &mut b).unwrap();
        let root = Inode::read_from_prefix(&b[off..]).unwrap().0;
        assert_eq!(root.mode.get() & libc::S_IFMT, libc::S_IFDIR);
        // Metadata blocks are marked used in the bitmap, the first data block is free.
        dev.read(l.bitmap_start, &mut b).unwrap();
        let used = |blk: u64| b[(blk / 8) as usize] & (1 << (blk % 8)) != 0;
        assert!(used(0) && used(l.data_start - 1));
        assert!(!used(l.data_start));
        // The journal opens empty.
        let (_, n) = Journal::open(dev.clone(), l.journal_start, l.journal_blocks).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn corrupt_or_foreign_volumes_are_refused() {
        let dev = MemDev::new(4096, 64 << 20);
        assert!(matches!(read_superblock(&dev), Err(FsError::NotFormatted(_))));
        mkfs(&dev, &MkfsOpts::default()).unwrap();
        let mut raw = dev.snapshot();
        raw[40] ^= 0xff;
        dev.restore(&raw);
        assert!(matches!(read_superblock(&dev), Err(FsError::Corrupt { .. })));
        let tiny = MemDev::new(4096, 4096 * 100);
        assert!(mkfs(&tiny, &MkfsOpts::default()).is_err());
        let odd = MemDev::new(512, 64 << 20);
        assert!(mkfs(&odd, &MkfsOpts::default()).is_err());
    }
}
