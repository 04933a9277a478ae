//! The C structures of `include/dmapi.h` as Rust sees them, with the sizes
//! and offsets of SGI's layout (x86-64, LP64) asserted at compile time; the
//! test suite compiles a C program against the header and checks the same
//! numbers from the C side. Padding C leaves implicit is spelled out, so
//! that each structure is plain bytes.

use std::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `dm_vardata_t`: variable data at an offset from the containing structure.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VarData {
    pub vd_offset: i32,
    pub vd_length: u32,
}

/// `dm_stat_t` with its XFS part.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Stat {
    pub link: i32,
    pub dt_handle: VarData,
    pub dt_compname: VarData,
    pub dt_nevents: i32,
    pub dt_emask: u64,
    pub dt_pers: i32,
    pub dt_pmanreg: i32,
    pub dt_dtime: i64,
    pub dt_change: u32,
    pub dt_pad1: u32,
    pub dt_dev: i64,
    pub dt_ino: u64,
    pub dt_mode: i32,
    pub dt_nlink: i32,
    pub dt_uid: u32,
    pub dt_gid: u32,
    pub dt_rdev: i64,
    pub dt_pad2: u32,
    pub pad_size: u32,
    pub dt_size: i64,
    pub dt_atime: i64,
    pub dt_mtime: i64,
    pub dt_ctime: i64,
    pub dt_blksize: u32,
    pub pad_blocks: u32,
    pub dt_blocks: u64,
    pub dt_pad3: u64,
    pub dt_fstype: i32,
    pub xfs_igen: u32,
    pub xfs_xflags: u32,
    pub xfs_extsize: u32,
    pub xfs_extents: u32,
    pub xfs_aextents: u16,
    pub xfs_dmstate: u16,
}

/// `dm_xstat_t`: a `dm_stat_t` and one DM attribute's value.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XStat {
    pub stat: Stat,
    pub dx_attrdata: VarData,
}

/// `dm_fileattr_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FileAttr {
    pub fa_mode: u32,
    pub fa_uid: u32,
    pub fa_gid: u32,
    pub pad_atime: u32,
    pub fa_atime: i64,
    pub fa_mtime: i64,
    pub fa_ctime: i64,
    pub fa_dtime: i64,
    pub fa_pad1: u32,
    pub pad_size: u32,
    pub fa_size: i64,
}

/// `dm_region_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Region {
    pub rg_offset: i64,
    pub rg_size: u64,
    pub rg_flags: u32,
    pub rg_pad1: u32,
}

/// `dm_extent_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Extent {
    pub ex_type: u32,
    pub ex_pad1: u32,
    pub ex_offset: i64,
    pub ex_length: u64,
}

/// `dm_dispinfo_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DispInfo {
    pub link: i32,
    pub di_pad1: u32,
    pub di_fshandle: VarData,
    pub di_eventset: u64,
}

/// `dm_attrlist_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AttrList {
    pub link: i32,
    pub al_name: [u8; 8],
    pub al_data: VarData,
}

/// `dm_timestruct_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TimeStruct {
    pub dm_tv_sec: i64,
    pub dm_tv_nsec: i32,
    pub pad: u32,
}

/// `dm_eventmsg_t` (the Rust side writes it: `dmapi::event`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EventMsg {
    pub link: i32,
    pub ev_type: i32,
    pub ev_token: i32,
    pub ev_sequence: u32,
    pub ev_data: VarData,
}

/// `dm_dioinfo_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DioInfo {
    pub d_mem: u32,
    pub d_miniosz: u32,
    pub d_maxiosz: u32,
    pub d_dio_only: u32,
}

/// `dm_inherit_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Inherit {
    pub ih_name: [u8; 8],
    pub ih_filetype: u32,
}

/// A structure's C name, size and (field, offset) pairs.
pub type StructLayout = (&'static str, usize, &'static [(&'static str, usize)]);

/// (name, size, key offsets) of every structure, as `dmapi.h` must have them:
/// what the header test compares with `sizeof`/`offsetof` in C.
pub const LAYOUT: &[StructLayout] = &[
    ("dm_vardata_t", size_of::<VarData>(), &[("vd_offset", 0), ("vd_length", 4)]),
    (
        "dm_stat_t",
        size_of::<Stat>(),
        &[
            ("dt_handle", offset_of!(Stat, dt_handle)),
            ("dt_compname", offset_of!(Stat, dt_compname)),
            ("dt_emask", offset_of!(Stat, dt_emask)),
            ("dt_dtime", offset_of!(Stat, dt_dtime)),
            ("dt_dev", offset_of!(Stat, dt_dev)),
            ("dt_ino", offset_of!(Stat, dt_ino)),
            ("dt_mode", offset_of!(Stat, dt_mode)),
            ("dt_uid", offset_of!(Stat, dt_uid)),
            ("dt_rdev", offset_of!(Stat, dt_rdev)),
            ("dt_size", offset_of!(Stat, dt_size)),
            ("dt_atime", offset_of!(Stat, dt_atime)),
            ("dt_ctime", offset_of!(Stat, dt_ctime)),
            ("dt_blksize", offset_of!(Stat, dt_blksize)),
            ("dt_blocks", offset_of!(Stat, dt_blocks)),
            ("dt_fstype", offset_of!(Stat, dt_fstype)),
            ("dt_xfs_igen", offset_of!(Stat, xfs_igen)),
            ("dt_xfs_dmstate", offset_of!(Stat, xfs_dmstate)),
        ],
    ),
    (
        "dm_fileattr_t",
        size_of::<FileAttr>(),
        &[
            ("fa_uid", offset_of!(FileAttr, fa_uid)),
            ("fa_atime", offset_of!(FileAttr, fa_atime)),
            ("fa_dtime", offset_of!(FileAttr, fa_dtime)),
            ("fa_size", offset_of!(FileAttr, fa_size)),
        ],
    ),
    ("dm_xstat_t", size_of::<XStat>(), &[("dx_attrdata", offset_of!(XStat, dx_attrdata))]),
    ("dm_region_t", size_of::<Region>(), &[("rg_size", 8), ("rg_flags", 16)]),
    ("dm_extent_t", size_of::<Extent>(), &[("ex_offset", 8), ("ex_length", 16)]),
    ("dm_dispinfo_t", size_of::<DispInfo>(), &[("di_fshandle", 8), ("di_eventset", 16)]),
    ("dm_attrlist_t", size_of::<AttrList>(), &[("al_name", 4), ("al_data", 12)]),
    ("dm_timestruct_t", size_of::<TimeStruct>(), &[("dm_tv_nsec", 8)]),
    ("dm_eventmsg_t", size_of::<EventMsg>(), &[("ev_type", 4), ("ev_token", 8), ("ev_data", 16)]),
    ("dm_dioinfo_t", size_of::<DioInfo>(), &[("d_dio_only", 12)]),
    ("dm_inherit_t", size_of::<Inherit>(), &[("ih_filetype", offset_of!(Inherit, ih_filetype))]),
];

// SGI's numbers for x86-64.
const _: () = assert!(size_of::<VarData>() == 8);
const _: () = assert!(size_of::<Stat>() == 184);
const _: () = assert!(offset_of!(Stat, dt_emask) == 24);
const _: () = assert!(offset_of!(Stat, dt_dev) == 56);
const _: () = assert!(offset_of!(Stat, dt_size) == 104);
const _: () = assert!(offset_of!(Stat, dt_blocks) == 144);
const _: () = assert!(offset_of!(Stat, xfs_igen) == 164);
const _: () = assert!(size_of::<XStat>() == 192);
const _: () = assert!(size_of::<FileAttr>() == 64);
const _: () = assert!(offset_of!(FileAttr, fa_atime) == 16);
const _: () = assert!(offset_of!(FileAttr, fa_size) == 56);
const _: () = assert!(size_of::<Region>() == 24);
const _: () = assert!(size_of::<Extent>() == 24);
const _: () = assert!(size_of::<DispInfo>() == 24);
const _: () = assert!(size_of::<AttrList>() == 20);
const _: () = assert!(size_of::<TimeStruct>() == 16);
const _: () = assert!(size_of::<EventMsg>() == 24);
const _: () = assert!(size_of::<DioInfo>() == 16);
const _: () = assert!(size_of::<Inherit>() == 12);
