//! NVMe/TCP transport PDUs (NVMe TCP Transport Specification 1.0).
//!
//! A PDU is a common header, a PDU-specific header, an optional header
//! digest, padding up to the data offset (PDO), data, and an optional data
//! digest. Digests are CRC32C.

use crate::WireError;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// PDU types (TCP transport spec, figure "PDU Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl PduType {
    pub fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            0x00 => Self::IcReq,
            0x01 => Self::IcResp,
            0x02 => Self::H2CTermReq,
            0x03 => Self::C2HTermReq,
            0x04 => Self::CapsuleCmd,
            0x05 => Self::CapsuleResp,
            0x06 => Self::H2CData,
            0x07 => Self::C2HData,
            0x09 => Self::R2T,
            other => return Err(WireError::UnknownPduType(other)),
        })
    }

    /// The fixed header length (HLEN) the spec assigns to this PDU type.
    pub fn hlen(self) -> u8 {
        match self {
            Self::IcReq | Self::IcResp => 128,
            Self::H2CTermReq | Self::C2HTermReq => 24,
            Self::CapsuleCmd => 72,
            Self::CapsuleResp => 24,
            Self::H2CData | Self::C2HData | Self::R2T => 24,
        }
    }

    /// Whether a header digest follows the header when digests are enabled.
    pub fn may_have_hdgst(self) -> bool {
        !matches!(self, Self::IcReq | Self::IcResp | Self::H2CTermReq | Self::C2HTermReq)
    }

    /// Whether this PDU type can carry data (and so a data digest).
    pub fn may_have_data(self) -> bool {
        matches!(self, Self::CapsuleCmd | Self::H2CData | Self::C2HData | Self::H2CTermReq | Self::C2HTermReq)
    }
}

/// Common header flags.
pub mod flags {
    pub const HDGSTF: u8 = 0x01;
    pub const DDGSTF: u8 = 0x02;
    /// H2CData/C2HData: last PDU of this data transfer.
    pub const DATA_LAST: u8 = 0x04;
    /// C2HData: command completed successfully, no CapsuleResp follows.
    pub const DATA_SUCCESS: u8 = 0x08;
}

/// ICReq/ICResp DGST field bits.
pub mod digest {
    pub const HDGST_ENABLE: u8 = 0x01;
    pub const DDGST_ENABLE: u8 = 0x02;
}

/// Fatal error status (FES) of a termination request.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HDR_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const R2T_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

pub const COMMON_HEADER_LEN: usize = 8;
pub const DIGEST_LEN: usize = 4;
/// Largest header any PDU has (ICReq/ICResp).
pub const MAX_HLEN: usize = 128;
/// A termination request carries at most this much of the offending header.
pub const TERM_REQ_MAX_DATA: usize = 152 - 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: U32,
}
const _: () = assert!(size_of::<CommonHeader>() == 8);

impl CommonHeader {
    pub fn new(t: PduType, flags: u8, pdo: u8, plen: u32) -> Self {
        Self { pdu_type: t as u8, flags, hlen: t.hlen(), pdo, plen: plen.into() }
    }

    pub fn pdu_type(&self) -> Result<PduType, WireError> {
        PduType::from_u8(self.pdu_type)
    }

    /// Checks HLEN, PDO and PLEN against each other and the spec, returning
    /// the PDU type. `hdgst` says whether header digests were negotiated.
    pub fn validate(&self, hdgst: bool, ddgst: bool, max_plen: u32) -> Result<PduType, WireError> {
        let t = self.pdu_type()?;
        if self.hlen != t.hlen() {
            return Err(WireError::BadHlen { pdu: t, hlen: self.hlen, want: t.hlen() });
        }
        let plen = self.plen.get();
        if plen > max_plen {
            return Err(WireError::TooLong { plen, max: max_plen });
        }
        let hd = if hdgst && t.may_have_hdgst() { DIGEST_LEN as u32 } else { 0 };
        let hdr_end = self.hlen as u32 + hd;
        let bad = || WireError::BadPlen { plen, hlen: self.hlen, pdo: self.pdo };
        if plen < hdr_end {
            return Err(bad());
        }
        if plen > hdr_end {
            // Data present: it must start at or after the header (+digest).
            if !t.may_have_data() {
                return Err(bad());
            }
            let is_term = matches!(t, PduType::H2CTermReq | PduType::C2HTermReq);
            let data_off = if is_term { hdr_end } else { self.pdo as u32 };
            if data_off < hdr_end {
                return Err(bad());
            }
            let dd = if ddgst && !is_term { DIGEST_LEN as u32 } else { 0 };
            if plen < data_off + dd {
                return Err(bad());
            }
        }
        Ok(t)
    }
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IcReq {
    pub ch: CommonHeader,
    pub pfv: U16,
    pub hpda: u8,
    pub digest: u8,
    pub maxr2t: U32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(size_of::<IcReq>() == 128);
const _: () = assert!(core::mem::offset_of!(IcReq, pfv) == 8);
const _: () = assert!(core::mem::offset_of!(IcReq, hpda) == 10);
const _: () = assert!(core::mem::offset_of!(IcReq, maxr2t) == 12);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IcResp {
    pub ch: CommonHeader,
    pub pfv: U16,
    pub cpda: u8,
    pub digest: u8,
    pub maxh2cdata: U32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(size_of::<IcResp>() == 128);
const _: () = assert!(core::mem::offset_of!(IcResp, maxh2cdata) == 12);

/// H2CTermReq / C2HTermReq header; up to 128 bytes of the offending PDU
/// header follow as data.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TermReq {
    pub ch: CommonHeader,
    pub fes: U16,
    pub fei: U32,
    pub rsvd: [u8; 10],
}
const _: () = assert!(size_of::<TermReq>() == 24);

/// CapsuleCmd header: the common header then the 64-byte SQE.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CapsuleCmd {
    pub ch: CommonHeader,
    pub sqe: crate::nvme::Sqe,
}
const _: () = assert!(size_of::<CapsuleCmd>() == 72);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CapsuleResp {
    pub ch: CommonHeader,
    pub cqe: crate::nvme::Cqe,
}
const _: () = assert!(size_of::<CapsuleResp>() == 24);

/// H2CData and C2HData share one header layout.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DataHdr {
    pub ch: CommonHeader,
    pub cccid: U16,
    pub ttag: U16,
    pub datao: U32,
    pub datal: U32,
    pub rsvd: [u8; 4],
}
const _: () = assert!(size_of::<DataHdr>() == 24);
const _: () = assert!(core::mem::offset_of!(DataHdr, datao) == 12);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct R2T {
    pub ch: CommonHeader,
    pub cccid: U16,
    pub ttag: U16,
    pub r2to: U32,
    pub r2tl: U32,
    pub rsvd: [u8; 4],
}
const _: () = assert!(size_of::<R2T>() == 24);

/// CRC32C as the spec's header and data digests use it.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continues a CRC32C over data that arrives in pieces.
#[inline]
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Data offset for a PDU with header length `hlen`: the header, its digest
/// if enabled, then padding to a multiple of `(pda + 1) * 4` bytes.
pub fn data_offset(hlen: usize, hdgst: bool, pda: u8) -> usize {
    let end = hlen + if hdgst { DIGEST_LEN } else { 0 };
    let align = (pda as usize + 1) * 4;
    end.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32c_matches_the_castagnoli_check_value() {
        // The check value of CRC-32C over "123456789" (RFC 3720 B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn validate_rejects_wrong_hlen_and_plen() {
        let mut ch = CommonHeader::new(PduType::CapsuleCmd, 0, 0, 72);
        assert_eq!(ch.validate(false, false, 1 << 20).unwrap(), PduType::CapsuleCmd);
        ch.hlen = 70;
        assert!(matches!(ch.validate(false, false, 1 << 20), Err(WireError::BadHlen { .. })));
        let ch = CommonHeader::new(PduType::CapsuleCmd, 0, 0, 60);
        assert!(matches!(ch.validate(false, false, 1 << 20), Err(WireError::BadPlen { .. })));
        // Data present but the data offset points inside the header.
        let ch = CommonHeader::new(PduType::CapsuleCmd, 0, 8, 72 + 512);
        assert!(ch.validate(false, false, 1 << 20).is_err());
        let ch = CommonHeader::new(PduType::CapsuleCmd, 0, 72, 72 + 512);
        assert!(ch.validate(false, false, 1 << 20).is_ok());
        // Header digest expected but PLEN leaves no room for it.
        let ch = CommonHeader::new(PduType::CapsuleResp, 0, 0, 24);
        assert!(ch.validate(true, false, 1 << 20).is_err());
        let ch = CommonHeader::new(PduType::R2T, 0, 0, 24 + 10);
        assert!(ch.validate(false, false, 1 << 20).is_err(), "R2T never carries data");
        let ch = CommonHeader::new(PduType::H2CData, 0, 24, 1 << 21);
        assert!(matches!(ch.validate(false, false, 1 << 20), Err(WireError::TooLong { .. })));
        assert!(matches!(PduType::from_u8(0x08), Err(WireError::UnknownPduType(8))));
    }

    #[test]
    fn data_offset_aligns() {
        assert_eq!(data_offset(72, false, 0), 72);
        assert_eq!(data_offset(72, true, 0), 76);
        assert_eq!(data_offset(72, true, 7), 96);
        assert_eq!(data_offset(24, false, 31), 128);
    }

    proptest! {
        #[test]
        fn common_header_round_trips(t in prop::sample::select(vec![0u8,1,2,3,4,5,6,7,9]), f: u8, pdo: u8, plen: u32) {
            let ch = CommonHeader::new(PduType::from_u8(t).unwrap(), f, pdo, plen);
            let back = CommonHeader::read_from_bytes(ch.as_bytes()).unwrap();
            prop_assert_eq!(back, ch);
        }

        #[test]
        fn validate_never_panics(b in prop::array::uniform8(any::<u8>()), hd: bool, dd: bool) {
            let ch = CommonHeader::read_from_bytes(&b[..]).unwrap();
            let _ = ch.validate(hd, dd, 1 << 20);
        }

        #[test]
        fn data_hdr_round_trips(cid: u16, ttag: u16, off: u32, len: u32) {
            let h = DataHdr {
                ch: CommonHeader::new(PduType::C2HData, flags::DATA_LAST, 24, 24 + len),
                cccid: cid.into(), ttag: ttag.into(), datao: off.into(), datal: len.into(), rsvd: [0; 4],
            };
            let back = DataHdr::read_from_bytes(h.as_bytes()).unwrap();
            prop_assert_eq!(back.cccid.get(), cid);
            prop_assert_eq!(back.datao.get(), off);
            prop_assert_eq!(back.datal.get(), len);
        }
    }
}
