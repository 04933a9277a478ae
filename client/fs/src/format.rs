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
/// 2: extent maps of any length (a chain of extent leaves). Version 1
/// volumes are refused: make them again with `tidepool mkfs`.
pub const VERSION: u32 = 2;
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
    /// [`JHDR_TOKENS_OUT`] or 0.
    pub flags: u8,
    pub rsvd: [u8; 3],
    /// Sequence number of the oldest transaction not yet written home.
    pub head_seq: U64,
    /// Journal block (relative to the journal start) where it begins.
    pub head_pos: U64,
    /// Bumped by every manager that opens the file system: its tokens,
    /// and the sizes set under them, are of this incarnation.
    pub incarnation: U64,
    /// How many connection ids follow the header ([`JHDR_VOID_OVERFLOW`]
    /// if more were voided than the block holds): connections of this
    /// incarnation whose exclusive tokens were taken from them (expelled,
    /// or gone), so sizes set under them are never taken in again.
    pub nvoid: U32,
    pub rsvd2: U32,
}
const _: () = assert!(size_of::<JournalHeader>() == 40);
/// A manager has granted tokens and not taken them all back: the next one
/// starts in recovery (the nodes give back sizes set under them first).
pub const JHDR_TOKENS_OUT: u8 = 1;
/// More connections were voided than the header block lists: sizes under
/// any token of its incarnation are void.
pub const JHDR_VOID_OVERFLOW: u8 = 2;
/// Most voided connection ids the header block lists.
pub const JHDR_MAX_VOID: usize = 256;

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
    /// Device number of a character or block special file (`mknod`).
    pub rdev: U32,
    pub rsvd: [u8; 2],
    pub extents: [Extent; 6],
    /// The first extent leaf, for extents past the six inline (0: none).
    pub extent_block: U64,
    /// Block holding DM attributes and managed regions (0: none).
    pub dm_block: U64,
}
const _: () = assert!(size_of::<Inode>() == 248);
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

/// A managed region (XDSM `dm_region_t`): data events for accesses that
/// touch it, by its flags. `size` 0 reaches to the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Region {
    pub offset: u64,
    pub size: u64,
    pub flags: u32,
}

/// `dm_region_t.rg_flags`: the XDSM values, declared once in `dmapi`.
pub use dmapi::types::dm_region as region_flags;

impl Region {
    /// Does an access of `len` bytes at `off` (a truncate to `off` when
    /// `len` is 0) touch this region?
    pub fn touches(&self, off: u64, len: u64) -> bool {
        let end = if self.size == 0 { u64::MAX } else { self.offset.saturating_add(self.size) };
        let a_end = if len == 0 { u64::MAX } else { off.saturating_add(len) };
        off < end && self.offset < a_end
    }
}

/// A file's attributes beyond its inode: managed regions, DM attributes
/// and extended attributes, kept in one sealed block per file
/// (`Inode::dm_block`), so they must fit one block together.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DmInfo {
    /// `None` until a DM application sets regions; until then every read,
    /// write and truncate of the file is an event where a disposition asks
    /// for one (Tidepool's default: the whole file is managed).
    pub regions: Option<Vec<Region>>,
    /// (name of up to [`DM_ATTR_NAME_SIZE`] bytes, value)
    pub attrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Extended attributes (`user.x`, `security.selinux`...): (name of up
    /// to 255 bytes, value). Blocks written before they existed end with
    /// zeroes here, which reads as none.
    #[serde(default)]
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// On the root directory only: the file system's inheritable DM
    /// attributes (`dm_set_inherit`), as (name, file type `S_IFMT` bits).
    /// A new object of that type in a directory gets the directory's value
    /// of the attribute. Older blocks end before it: none.
    #[serde(default)]
    pub inherit: Vec<(Vec<u8>, u32)>,
}

/// One change to a file's DM block (`MetaStore::dm_change`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DmChange {
    /// `dm_set_dmattr`.
    SetAttr { name: Vec<u8>, value: Vec<u8> },
    /// `dm_remove_dmattr`: `NoAttr` if the file has none of that name.
    RemoveAttr { name: Vec<u8> },
    /// `dm_set_region`: these regions replace the file's.
    Regions(Vec<Region>),
    /// On the root: `dm_set_inherit` (`Some(file type)`) or
    /// `dm_clear_inherit` (`None`; `NoAttr` if not inheritable).
    Inherit { name: Vec<u8>, mode: Option<u32> },
}

/// XDSM `DM_ATTR_NAME_SIZE`.
pub const DM_ATTR_NAME_SIZE: usize = 8;
const DM_MAGIC: [u8; 4] = *b"TPDM";

impl DmInfo {
    pub fn is_empty(&self) -> bool {
        self.regions.is_none() && self.attrs.is_empty() && self.xattrs.is_empty() && self.inherit.is_empty()
    }

    /// The block image; `None` when it does not fit one block.
    pub fn encode(&self, bs: usize) -> Option<Vec<u8>> {
        let mut b = Vec::with_capacity(bs);
        b.extend_from_slice(&DM_MAGIC);
        let regions = self.regions.as_deref().unwrap_or(&[]);
        b.push(self.regions.is_some() as u8);
        b.extend_from_slice(&(regions.len() as u16).to_le_bytes());
        b.extend_from_slice(&(self.attrs.len() as u16).to_le_bytes());
        for r in regions {
            b.extend_from_slice(&r.offset.to_le_bytes());
            b.extend_from_slice(&r.size.to_le_bytes());
            b.extend_from_slice(&r.flags.to_le_bytes());
        }
        for (n, v) in &self.attrs {
            if n.len() > DM_ATTR_NAME_SIZE || v.len() > u16::MAX as usize {
                return None;
            }
            let mut name = [0u8; DM_ATTR_NAME_SIZE];
            name[..n.len()].copy_from_slice(n);
            b.extend_from_slice(&name);
            b.extend_from_slice(&(v.len() as u16).to_le_bytes());
            b.extend_from_slice(v);
        }
        b.extend_from_slice(&(self.xattrs.len() as u16).to_le_bytes());
        for (n, v) in &self.xattrs {
            if n.is_empty() || n.len() > 255 || v.len() > u16::MAX as usize {
                return None;
            }
            b.push(n.len() as u8);
            b.extend_from_slice(&(v.len() as u16).to_le_bytes());
            b.extend_from_slice(n);
            b.extend_from_slice(v);
        }
        b.extend_from_slice(&(self.inherit.len() as u16).to_le_bytes());
        for (n, mode) in &self.inherit {
            if n.is_empty() || n.len() > DM_ATTR_NAME_SIZE {
                return None;
            }
            let mut name = [0u8; DM_ATTR_NAME_SIZE];
            name[..n.len()].copy_from_slice(n);
            b.extend_from_slice(&name);
            b.extend_from_slice(&mode.to_le_bytes());
        }
        if b.len() + 4 > bs {
            return None;
        }
        b.resize(bs, 0);
        seal(&mut b);
        Some(b)
    }

    /// Bytes of a DM block outside its entries: magic, flags, the four
    /// counts and the seal.
    const OVERHEAD: usize = 4 + 1 + 2 + 2 + 2 + 2 + 4;
    /// One region's bytes, and one DM attribute's besides its value.
    const REGION_LEN: usize = 20;
    const ATTR_HEAD: usize = DM_ATTR_NAME_SIZE + 2;

    /// (largest DM attribute value, bytes for all DM attributes with their
    /// names, most regions) a block of `bs` bytes holds, each alone in it.
    pub fn limits(bs: usize) -> (usize, usize, usize) {
        let room = bs.saturating_sub(Self::OVERHEAD);
        (room.saturating_sub(Self::ATTR_HEAD).min(u16::MAX as usize), room, room / Self::REGION_LEN)
    }

    pub fn decode(b: &[u8]) -> Option<DmInfo> {
        if b.len() < 16 || !sealed_ok(b) || b[..4] != DM_MAGIC {
            return None;
        }
        let has_regions = b[4] != 0;
        let nr = u16::from_le_bytes([b[5], b[6]]) as usize;
        let na = u16::from_le_bytes([b[7], b[8]]) as usize;
        let mut at = 9usize;
        // Never into the seal at the end.
        let body = &b[..b.len() - 4];
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = body.get(at..at + n)?;
            at += n;
            Some(s)
        };
        let mut regions = Vec::with_capacity(nr.min(256));
        for _ in 0..nr {
            let x = take(20)?;
            regions.push(Region {
                offset: u64::from_le_bytes(x[..8].try_into().ok()?),
                size: u64::from_le_bytes(x[8..16].try_into().ok()?),
                flags: u32::from_le_bytes(x[16..20].try_into().ok()?),
            });
        }
        let mut attrs = Vec::with_capacity(na.min(256));
        for _ in 0..na {
            let name = take(DM_ATTR_NAME_SIZE)?;
            let name = name[..name.iter().position(|&c| c == 0).unwrap_or(DM_ATTR_NAME_SIZE)].to_vec();
            let l = take(2)?;
            let len = u16::from_le_bytes([l[0], l[1]]) as usize;
            attrs.push((name, take(len)?.to_vec()));
        }
        let nx = take(2).map_or(0, |x| u16::from_le_bytes([x[0], x[1]]) as usize);
        let mut xattrs = Vec::with_capacity(nx.min(256));
        for _ in 0..nx {
            let h = take(3)?;
            let (nl, vl) = (h[0] as usize, u16::from_le_bytes([h[1], h[2]]) as usize);
            let name = take(nl)?.to_vec();
            xattrs.push((name, take(vl)?.to_vec()));
        }
        let ni = take(2).map_or(0, |x| u16::from_le_bytes([x[0], x[1]]) as usize);
        let mut inherit = Vec::with_capacity(ni.min(256));
        for _ in 0..ni {
            let name = take(DM_ATTR_NAME_SIZE)?;
            let len = name.iter().position(|&c| c == 0).unwrap_or(DM_ATTR_NAME_SIZE);
            if len == 0 {
                return None;
            }
            let mode = u32::from_le_bytes(take(4)?.try_into().ok()?);
            inherit.push((name[..len].to_vec(), mode));
        }
        Some(DmInfo { regions: has_regions.then_some(regions), attrs, xattrs, inherit })
    }
}

#[cfg(test)]
mod dm_tests {
    use super::*;
    use proptest::prelude::*;

    /// The limits dm_get_config reports are exactly what a block holds.
    #[test]
    fn limits_are_what_one_block_holds() {
        for bs in [4096usize, 8192] {
            let (value, total, regions) = DmInfo::limits(bs);
            let attr = |n: usize| DmInfo { attrs: vec![(b"hsm".to_vec(), vec![1u8; n])], ..DmInfo::default() };
            assert!(attr(value).encode(bs).is_some(), "the largest value fits");
            assert!(attr(value + 1).encode(bs).is_none() || value == u16::MAX as usize);
            let two = DmInfo {
                attrs: vec![(b"a".to_vec(), vec![0; total / 2 - 10]), (b"b".to_vec(), vec![0; total - total / 2 - 10])],
                ..DmInfo::default()
            };
            assert!(two.encode(bs).is_some(), "attributes may use the total between them");
            let reg = |n: usize| DmInfo {
                regions: Some(vec![Region { offset: 0, size: 1, flags: 1 }; n]),
                ..DmInfo::default()
            };
            assert!(reg(regions).encode(bs).is_some());
            assert!(reg(regions + 1).encode(bs).is_none());
        }
    }

    proptest! {
        /// A sealed block with any contents decodes or is refused, never a
        /// panic, and what decodes encodes back to a block that decodes the same.
        #[test]
        fn any_sealed_attribute_block_decodes_safely(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut b = DM_MAGIC.to_vec();
            b.extend_from_slice(&body);
            b.resize(4096, 0);
            seal(&mut b);
            if let Some(d) = DmInfo::decode(&b) {
                if let Some(img) = d.encode(4096) {
                    prop_assert_eq!(DmInfo::decode(&img), Some(d));
                }
            }
        }
    }

    #[test]
    fn dm_block_round_trip_and_refusals() {
        let d = DmInfo {
            regions: Some(vec![Region { offset: 0, size: 0, flags: region_flags::READ | region_flags::WRITE }]),
            attrs: vec![(b"hsm".to_vec(), b"tier=/x/y".to_vec()), (b"8bytes!!".to_vec(), vec![])],
            xattrs: vec![(b"user.origin".to_vec(), b"tape 7".to_vec()), (b"security.selinux".to_vec(), vec![0; 3])],
            inherit: vec![(b"hsm".to_vec(), libc::S_IFREG), (b"dirs".to_vec(), libc::S_IFDIR)],
        };
        let b = d.encode(4096).unwrap();
        assert_eq!(DmInfo::decode(&b).unwrap(), d);
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(DmInfo::decode(&bad).is_none(), "a flipped bit fails the CRC");
        let big = DmInfo { attrs: vec![(b"a".to_vec(), vec![0; 5000])], ..Default::default() };
        let xbig = DmInfo { xattrs: vec![(b"user.a".to_vec(), vec![0; 5000])], ..Default::default() };
        assert!(xbig.encode(4096).is_none());
        assert!(big.encode(4096).is_none());
        let long = DmInfo { attrs: vec![(b"ninechars".to_vec(), vec![])], ..Default::default() };
        assert!(long.encode(4096).is_none());
        assert_eq!(DmInfo::decode(&DmInfo::default().encode(4096).unwrap()).unwrap(), DmInfo::default());
    }

    #[test]
    fn regions_touch_as_xdsm_says() {
        let r = Region { offset: 4096, size: 4096, flags: 0 };
        assert!(r.touches(4000, 100) && r.touches(8191, 1) && !r.touches(8192, 10) && !r.touches(0, 4096));
        assert!(r.touches(0, 0), "a truncate below the region touches it");
        assert!(Region { offset: 10, size: 0, flags: 0 }.touches(1 << 40, 1), "size 0 reaches the end");
    }
}
