//! NVMe/RDMA transport binding (NVMe-oF 1.1 §7.3, NVMe RDMA Transport
//! Specification 1.0): RDMA CM private data exchanged when a queue pair
//! connects, the Keyed SGL Data Block descriptor that names host memory
//! for RDMA READ / WRITE, and the discovery log's RDMA transport-specific
//! address subtype (TSAS).
//!
//! ```
//! use nvme_wire::rdma::{CmRequest, KeyedSgl};
//! use zerocopy::IntoBytes;
//! let req = CmRequest::new(1, 128, 127);
//! let back = CmRequest::parse(req.as_bytes()).unwrap();
//! assert_eq!((back.qid.get(), back.hsqsize.get()), (1, 127));
//! let sgl = KeyedSgl { addr: 0x1000, len: 4096, key: 0xabcd, invalidate: true };
//! assert_eq!(KeyedSgl::decode(&sgl.encode()), Ok(sgl));
//! ```

use crate::nvme::{sgl, SglDesc};
use crate::WireError;
use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The only private data record format defined (RECFMT).
pub const RECFMT: u16 = 0;

/// RDMA_CM_REQUEST private data: the host's queue and queue sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CmRequest {
    pub recfmt: U16,
    /// Queue ID: 0 for the admin queue.
    pub qid: U16,
    /// Host receive queue size: responses the host can take at once.
    pub hrqsize: U16,
    /// Host send queue size, zero-based (SQSIZE): commands the host may
    /// have outstanding, so the controller posts HSQSIZE + 1 receives.
    pub hsqsize: U16,
    /// Controller ID the host wants (0xFFFF: dynamic), NVMe-oF 1.1.
    pub cntlid: U16,
    pub rsvd: [u8; 22],
}
const _: () = assert!(size_of::<CmRequest>() == 32);
const _: () = assert!(core::mem::offset_of!(CmRequest, hsqsize) == 6);
const _: () = assert!(core::mem::offset_of!(CmRequest, cntlid) == 8);

impl CmRequest {
    pub fn new(qid: u16, hrqsize: u16, hsqsize: u16) -> Self {
        let mut r = Self::new_zeroed();
        r.qid = qid.into();
        r.hrqsize = hrqsize.into();
        r.hsqsize = hsqsize.into();
        r.cntlid = 0xffff.into();
        r
    }

    /// Reads a connect request's private data. RDMA CM pads private data
    /// to the transport's full size, so longer input is normal; shorter
    /// than the record or an unknown record format is an error.
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let (r, _) = Self::read_from_prefix(b).map_err(|_| WireError::Short { need: 32, have: b.len() })?;
        if r.recfmt.get() != RECFMT {
            return Err(WireError::Field { field: "RECFMT", value: r.recfmt.get() as u64 });
        }
        Ok(r)
    }
}

/// RDMA_CM_ACCEPT private data: the controller's receive queue size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CmAccept {
    pub recfmt: U16,
    /// Controller receive queue size: receives posted for this queue.
    pub crqsize: U16,
    pub rsvd: [u8; 28],
}
const _: () = assert!(size_of::<CmAccept>() == 32);

impl CmAccept {
    pub fn new(crqsize: u16) -> Self {
        let mut a = Self::new_zeroed();
        a.crqsize = crqsize.into();
        a
    }

    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let (a, _) = Self::read_from_prefix(b).map_err(|_| WireError::Short { need: 32, have: b.len() })?;
        if a.recfmt.get() != RECFMT {
            return Err(WireError::Field { field: "RECFMT", value: a.recfmt.get() as u64 });
        }
        Ok(a)
    }
}

/// RDMA_CM_REJECT private data: why the controller refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CmReject {
    pub recfmt: U16,
    /// One of [`cm_status`].
    pub sts: U16,
}
const _: () = assert!(size_of::<CmReject>() == 4);

impl CmReject {
    pub fn new(sts: u16) -> Self {
        Self { recfmt: RECFMT.into(), sts: sts.into() }
    }
}

/// RDMA_CM_REJECT status codes.
pub mod cm_status {
    pub const INVALID_LEN: u16 = 0x01;
    pub const INVALID_RECFMT: u16 = 0x02;
    pub const INVALID_QID: u16 = 0x03;
    pub const INVALID_HSQSIZE: u16 = 0x04;
    pub const INVALID_HRQSIZE: u16 = 0x05;
    pub const NO_RESOURCES: u16 = 0x06;
    pub const INVALID_IRD: u16 = 0x07;
    pub const INVALID_ORD: u16 = 0x08;
    pub const INVALID_CNTLID: u16 = 0x09;
}

/// A Keyed SGL Data Block descriptor (SGL type 4h): host memory the
/// controller reaches by RDMA READ / WRITE with `key` (the host's rkey).
/// On the wire: address (8 bytes), length (3 bytes), key (4 bytes), type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedSgl {
    pub addr: u64,
    /// 24-bit length.
    pub len: u32,
    pub key: u32,
    /// Subtype Fh: the host asks the controller to invalidate `key` with
    /// its response (SEND with Invalidate).
    pub invalidate: bool,
}

impl KeyedSgl {
    /// Largest length the 24-bit field holds.
    pub const MAX_LEN: u32 = (1 << 24) - 1;

    /// Decodes `d`; anything but a keyed data block (subtype 0 or Fh) is
    /// an error the caller turns into an NVMe status.
    pub fn decode(d: &SglDesc) -> Result<Self, WireError> {
        let invalidate = match d.type_ {
            sgl::KEYED_DATA_BLOCK => false,
            sgl::KEYED_DATA_BLOCK_INVALIDATE => true,
            t => return Err(WireError::Field { field: "SGL descriptor type", value: t as u64 }),
        };
        let b = d.as_bytes();
        Ok(Self {
            addr: d.addr.get(),
            len: u32::from_le_bytes([b[8], b[9], b[10], 0]),
            key: u32::from_le_bytes([b[11], b[12], b[13], b[14]]),
            invalidate,
        })
    }

    pub fn encode(&self) -> SglDesc {
        debug_assert!(self.len <= Self::MAX_LEN, "keyed SGL length is 24 bits");
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..11].copy_from_slice(&self.len.to_le_bytes()[..3]);
        b[11..15].copy_from_slice(&self.key.to_le_bytes());
        b[15] = if self.invalidate { sgl::KEYED_DATA_BLOCK_INVALIDATE } else { sgl::KEYED_DATA_BLOCK };
        SglDesc::read_from_bytes(&b).expect("16 bytes make an SGL descriptor")
    }
}

/// RDMA transport-specific address subtype of a discovery log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Tsas {
    /// RDMA QP service type: [`QPTYPE_CONNECTED`].
    pub qptype: u8,
    /// RDMA provider type: [`PRTYPE_NOT_SPECIFIED`] and friends.
    pub prtype: u8,
    /// Connection management service: [`CMS_RDMA_CM`].
    pub cms: u8,
    pub rsvd3: [u8; 5],
    /// InfiniBand partition key; unused on RoCE and iWARP.
    pub pkey: U16,
    pub rsvd10: [u8; 246],
}
const _: () = assert!(size_of::<Tsas>() == 256);
const _: () = assert!(core::mem::offset_of!(Tsas, pkey) == 8);

/// Reliable connected queue pairs.
pub const QPTYPE_CONNECTED: u8 = 1;
/// Provider not specified (RoCE, InfiniBand or iWARP: whichever the address routes to).
pub const PRTYPE_NOT_SPECIFIED: u8 = 1;
pub const CMS_RDMA_CM: u8 = 1;

impl Tsas {
    /// What a storage node behind RDMA CM advertises.
    pub fn rdma_cm() -> Self {
        let mut t = Self::new_zeroed();
        t.qptype = QPTYPE_CONNECTED;
        t.prtype = PRTYPE_NOT_SPECIFIED;
        t.cms = CMS_RDMA_CM;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_parses_padded_and_rejects_short_or_unknown_format() {
        let r = CmRequest::new(3, 128, 127);
        let mut padded = r.as_bytes().to_vec();
        padded.resize(56, 0);
        let p = CmRequest::parse(&padded).unwrap();
        assert_eq!((p.qid.get(), p.hrqsize.get(), p.hsqsize.get(), p.cntlid.get()), (3, 128, 127, 0xffff));
        assert_eq!(CmRequest::parse(&padded[..31]), Err(WireError::Short { need: 32, have: 31 }));
        padded[0] = 1;
        assert!(matches!(CmRequest::parse(&padded), Err(WireError::Field { field: "RECFMT", value: 1 })));
    }

    #[test]
    fn accept_and_reject_layouts() {
        let a = CmAccept::new(32);
        assert_eq!(&a.as_bytes()[..4], &[0, 0, 32, 0]);
        assert_eq!(CmAccept::parse(a.as_bytes()).unwrap().crqsize.get(), 32);
        assert_eq!(CmReject::new(cm_status::INVALID_HSQSIZE).as_bytes(), &[0, 0, 4, 0]);
    }

    /// The bytes Linux's nvme-rdma host puts in a command for a 4 KiB read
    /// into a fast-registered MR: length 0x001000, key 0x12345678, type 4Fh.
    #[test]
    fn keyed_sgl_byte_layout() {
        let raw: [u8; 16] =
            [0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x78, 0x56, 0x34, 0x12, 0x4f];
        let d = SglDesc::read_from_bytes(&raw).unwrap();
        let k = KeyedSgl::decode(&d).unwrap();
        assert_eq!(k, KeyedSgl { addr: 0x1_0000_1000, len: 4096, key: 0x1234_5678, invalidate: true });
        assert_eq!(k.encode().as_bytes(), &raw);
        let mut other = d;
        other.type_ = sgl::DATA_BLOCK_OFFSET;
        assert!(KeyedSgl::decode(&other).is_err(), "an in-capsule descriptor is not keyed");
    }

    #[test]
    fn tsas_is_rdma_cm_connected() {
        let t = Tsas::rdma_cm();
        assert_eq!(&t.as_bytes()[..3], &[1, 1, 1]);
    }

    proptest! {
        #[test]
        fn keyed_sgl_round_trips(addr: u64, len in 0u32..=KeyedSgl::MAX_LEN, key: u32, invalidate: bool) {
            let k = KeyedSgl { addr, len, key, invalidate };
            prop_assert_eq!(KeyedSgl::decode(&k.encode()), Ok(k));
        }

        #[test]
        fn request_parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = CmRequest::parse(&b);
            let _ = CmAccept::parse(&b);
        }
    }
}
