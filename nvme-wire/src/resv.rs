//! Reservation command fields and data (NVMe Base 2.0, 7.2–7.5; 8.19).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Reservation types (RTYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResvType {
    WriteExclusive = 1,
    ExclusiveAccess = 2,
    WriteExclusiveRegOnly = 3,
    ExclusiveAccessRegOnly = 4,
    WriteExclusiveAllRegs = 5,
    ExclusiveAccessAllRegs = 6,
}

impl ResvType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::WriteExclusive,
            2 => Self::ExclusiveAccess,
            3 => Self::WriteExclusiveRegOnly,
            4 => Self::ExclusiveAccessRegOnly,
            5 => Self::WriteExclusiveAllRegs,
            6 => Self::ExclusiveAccessAllRegs,
            _ => return None,
        })
    }
    /// Every registrant holds an "all registrants" reservation.
    pub fn all_registrants(self) -> bool {
        matches!(self, Self::WriteExclusiveAllRegs | Self::ExclusiveAccessAllRegs)
    }
    /// Registrants (not only the holder) may access under this type.
    pub fn registrants_allowed(self) -> bool {
        !matches!(self, Self::WriteExclusive | Self::ExclusiveAccess)
    }
    /// Reads are blocked for those without access (the "Exclusive Access" family).
    pub fn blocks_reads(self) -> bool {
        matches!(self, Self::ExclusiveAccess | Self::ExclusiveAccessRegOnly | Self::ExclusiveAccessAllRegs)
    }
}

/// Register action (RREGA), Acquire action (RACQA), Release action (RRELA).
pub mod action {
    pub const REGISTER: u8 = 0;
    pub const UNREGISTER: u8 = 1;
    pub const REPLACE: u8 = 2;
    pub const ACQUIRE: u8 = 0;
    pub const PREEMPT: u8 = 1;
    pub const PREEMPT_ABORT: u8 = 2;
    pub const RELEASE: u8 = 0;
    pub const CLEAR: u8 = 1;
}

/// CDW10 of Register/Acquire/Release: action in bits 2:0, IEKEY bit 3,
/// RTYPE in bits 15:8 (Acquire/Release), CPTPL in bits 31:30 (Register).
pub fn cdw10(action: u8, iekey: bool, rtype: u8, cptpl: u8) -> u32 {
    (action as u32 & 7) | (iekey as u32) << 3 | (rtype as u32) << 8 | (cptpl as u32 & 3) << 30
}

/// Register / Acquire data: current key and new / preempt key.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct KeyPair {
    pub crkey: U64,
    pub nrkey: U64,
}
const _: () = assert!(size_of::<KeyPair>() == 16);

/// Reservation Status data structure header (extended form, 64 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ResvStatusExtHdr {
    pub gen: U32,
    pub rtype: u8,
    pub regctl: U16,
    pub rsvd7: [u8; 2],
    pub ptpls: u8,
    pub rsvd10: [u8; 54],
}
const _: () = assert!(size_of::<ResvStatusExtHdr>() == 64);
const _: () = assert!(core::mem::offset_of!(ResvStatusExtHdr, regctl) == 5);

/// Registered Controller extended data structure (64 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RegCtrlExt {
    pub cntlid: U16,
    /// Bit 0: this host holds the reservation.
    pub rcsts: u8,
    pub rsvd3: [u8; 5],
    pub rkey: U64,
    pub hostid: [u8; 16],
    pub rsvd32: [u8; 32],
}
const _: () = assert!(size_of::<RegCtrlExt>() == 64);
