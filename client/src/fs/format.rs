//! On-disk format, version 1. Every metadata block ends in (or carries) a
//! CRC32C, so a torn or stray write is detected, never trusted.
//!
//! Volume layout, in file-system blocks:
//!
//! | blocks | what |
//! |--------|------|
//! | 0 | superblock |
//! | 1 .. 1+J | metadata journal (its block 0 is the journal header) |
//! | .. +B | allocation bitmap, one bit per block |
//! | .. +I | inode table, [`INODE_SIZE`] bytes per inode |
//! | rest | data and directory blocks |

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const MAGIC: [u8; 8] = *b"TIDEPOOL";
pub const VERSION: u32 = 1;
pub const INODE_SIZE: usize = 256;
pub const ROOT_INO: u64 = 1;

/// CRC32C of `block` with its last four bytes (the stored CRC) taken as zero.
pub fn block_crc(block: &[u8]) -> u32 {
    let n = block.len() - 4;
    crc32c::crc32c_append(crc32c::crc32c(&block[..n]), &[0; 4])
}

pub fn seal(block: &mut [u8]) {
    let c = block_crc(block);
    let n = block.len();
    block[n - 4..].copy_from_slice(&c.to_le_bytes());
}

pub fn sealed_ok(block: &[u8]) -> bool {
    let n = block.len();
    u32::from_le_bytes([block[n - 4], block[n - 3], block[n - 2], block[n - 1]]) == block_crc(block)
}

/// The superblock's fields (the rest of block 0 is zero, the CRC last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Superblock {
    pub magic: [u8; 8],
    pub version: U32,
    pub block_size: U32,
    pub fsid: [u8; 16],
    pub total_blocks: U64,
    pub journal_start: U64,
    pub journal_blocks: U64,
    pub bitmap_start: U64,
    pub bitmap_blocks: U64,
    pub inode_start: U64,
    pub inode_blocks: U64,
    pub inode_count: U64,
    pub data_start: U64,
    pub root_ino: U64,
    pub created_unix_ns: U64,
    pub label: [u8; 64],
}
const _: () = assert!(size_of::<Superblock>() == 184);
const _: () = assert!(core::mem::offset_of!(Superblock, total_blocks) == 32);
const _: () = assert!(core::mem::offset_of!(Superblock, label) == 120);

/// Magic of the journal header block and of descriptor / commit blocks.
pub const JHDR_MAGIC: [u8; 4] = *b"TPJH";
pub const JDESC_MAGIC: [u8; 4] = *b"TPJD";
pub const JCOMMIT_MAGIC: [u8; 4] = *b"TPJC";

/// Journal header: where replay starts.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct JournalHeader {
    pub magic: [u8; 4],
    pub rsvd: [u8; 4],
    /// Sequence number of the oldest transaction not yet written home.
    pub head_seq: U64,
    /// Journal block (relative to the journal start) where it begins.
    pub head_pos: U64,
}
const _: () = assert!(size_of::<JournalHeader>() == 24);

/// A transaction's descriptor block header; `count` home block numbers
/// (U64 each) follow it in the same block.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct JournalDesc {
    pub magic: [u8; 4],
    pub count: U32,
    pub seq: U64,
}
const _: () = assert!(size_of::<JournalDesc>() == 16);

/// A transaction's commit block: written in the same I/O as the rest of
/// the transaction, its CRC covers descriptor and images, so a torn
/// transaction never replays.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct JournalCommit {
    pub magic: [u8; 4],
    pub count: U32,
    pub seq: U64,
    pub tx_crc: U32,
    pub rsvd: [u8; 4],
}
const _: () = assert!(size_of::<JournalCommit>() == 24);

/// Inode: attributes, the first extents inline, DM event list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Inode {
    pub ino: U64,
    pub generation: U32,
    pub mode: U32,
    pub uid: U32,
    pub gid: U32,
    pub nlink: U32,
    pub flags: U32,
    pub size: U64,
    pub blocks: U64,
    pub atime_ns: U64,
    pub mtime_ns: U64,
    pub ctime_ns: U64,
    /// XDSM per-file event list (a `DmEventSet`).
    pub dm_events: U64,
    pub nextents: U16,
    pub rsvd: [u8; 6],
    pub extents: [Extent; 6],
    /// Block holding further extents (0: none).
    pub extent_block: U64,
}
const _: () = assert!(size_of::<Inode>() == 240);
const _: () = assert!(core::mem::offset_of!(Inode, extents) == 88);
const _: () = assert!(size_of::<Inode>() <= INODE_SIZE);

/// `len` blocks of the file from file block `lblk` live at `pblk`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Extent {
    pub lblk: U64,
    pub pblk: U64,
    pub len: U32,
    /// Bit 0: unwritten (allocated, reads as zero).
    pub flags: U32,
}
const _: () = assert!(size_of::<Extent>() == 24);

/// Where everything goes on a volume of `total` blocks of `bs` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub total: u64,
    pub journal_start: u64,
    pub journal_blocks: u64,
    pub bitmap_start: u64,
    pub bitmap_blocks: u64,
    pub inode_start: u64,
    pub inode_blocks: u64,
    pub inode_count: u64,
    pub data_start: u64,
}

impl Layout {
    /// One inode per `bytes_per_inode` of capacity; a journal of about 1%
    /// (at least 256 blocks, at most 32 Ki).
    pub fn compute(total: u64, bs: u32, bytes_per_inode: u64) -> Option<Layout> {
        let bs64 = bs as u64;
        let journal_blocks = (total / 100).clamp(256, 32 * 1024);
        let bitmap_blocks = total.div_ceil(bs64 * 8);
        let inode_count = (total * bs64 / bytes_per_inode).max(64);
        let inode_blocks = (inode_count * INODE_SIZE as u64).div_ceil(bs64);
        let journal_start = 1;
        let bitmap_start = journal_start + journal_blocks;
        let inode_start = bitmap_start + bitmap_blocks;
        let data_start = inode_start + inode_blocks;
        // Leave at least as many data blocks as metadata blocks.
        (data_start * 2 <= total).then_some(Layout {
            total,
            journal_start,
            journal_blocks,
            bitmap_start,
            bitmap_blocks,
            inode_start,
            inode_blocks,
            inode_count,
            data_start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_detects_any_flipped_bit() {
        let mut b = vec![0u8; 4096];
        b[..8].copy_from_slice(&MAGIC);
        seal(&mut b);
        assert!(sealed_ok(&b));
        for i in [0usize, 100, 4091, 4093] {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(!sealed_ok(&c), "flip at {i}");
        }
    }

    #[test]
    fn layout_fits_and_refuses_tiny_volumes() {
        let l = Layout::compute(16384, 4096, 64 * 1024).unwrap();
        assert_eq!(l.journal_start, 1);
        assert_eq!(l.bitmap_start, 1 + l.journal_blocks);
        assert!(l.bitmap_blocks * 4096 * 8 >= l.total);
        assert!(l.inode_blocks * 4096 >= l.inode_count * INODE_SIZE as u64);
        assert!(l.data_start < l.total);
        assert!(Layout::compute(300, 4096, 64 * 1024).is_none());
    }
}
