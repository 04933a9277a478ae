//! Wire formats for NVMe over Fabrics with the TCP and RDMA transports.
//!
//! Every on-wire structure is declared once here, field by field, as a
//! `#[repr(C)]` struct of little-endian, alignment-1 fields with zerocopy
//! derives and a compile-time size assertion, so the target
//! (`storage-node`) and the initiator (`nvmf`) read and write the
//! same bytes. Parsers take untrusted bytes and return [`WireError`],
//! never panic.
//!
//! ```
//! use nvme_wire::tcp::{CommonHeader, PduType};
//! use zerocopy::FromBytes;
//! let bytes = [0x00u8, 0, 128, 0, 128, 0, 0, 0];
//! let ch = CommonHeader::ref_from_bytes(&bytes[..]).unwrap();
//! assert_eq!(ch.pdu_type().unwrap(), PduType::IcReq);
//! assert_eq!(ch.plen.get(), 128);
//! ```

pub mod fabrics;
pub mod identify;
pub mod log;
pub mod nvme;
pub mod rdma;
pub mod resv;
pub mod status;
pub mod tcp;

pub use zerocopy;

/// Why a byte sequence is not a valid PDU or structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("buffer too short: need {need} bytes, have {have}")]
    Short { need: usize, have: usize },
    #[error("unknown PDU type {0:#04x}")]
    UnknownPduType(u8),
    #[error("PDU {pdu:?}: header length {hlen} does not match the spec's {want}")]
    BadHlen { pdu: tcp::PduType, hlen: u8, want: u8 },
    #[error("PDU length {plen} is inconsistent with header length {hlen} / data offset {pdo}")]
    BadPlen { plen: u32, hlen: u8, pdo: u8 },
    #[error("PDU length {plen} exceeds the limit {max}")]
    TooLong { plen: u32, max: u32 },
    #[error("header digest mismatch: got {got:#010x}, computed {want:#010x}")]
    HeaderDigest { got: u32, want: u32 },
    #[error("data digest mismatch: got {got:#010x}, computed {want:#010x}")]
    DataDigest { got: u32, want: u32 },
    #[error("invalid field {field}: {value:#x}")]
    Field { field: &'static str, value: u64 },
}

/// Copies `s` into a fixed, space-padded ASCII field (identify strings).
pub fn put_padded(dst: &mut [u8], s: &str, pad: u8) {
    dst.fill(pad);
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Reads a NUL- or space-terminated ASCII field (NQNs, serials).
pub fn get_str(src: &[u8]) -> &str {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    std::str::from_utf8(&src[..end]).unwrap_or("").trim_end()
}
