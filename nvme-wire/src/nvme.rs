//! NVMe submission and completion queue entries, opcodes and SGLs
//! (NVMe Base Specification 2.0, NVM Command Set Specification 1.0).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Submission queue entry (64 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Sqe {
    pub opcode: u8,
    /// FUSE in bits 1:0, PSDT in bits 7:6.
    pub flags: u8,
    pub cid: U16,
    /// NSID, or for fabrics commands FCTYPE in the first byte.
    pub nsid: U32,
    pub cdw2: U32,
    pub cdw3: U32,
    pub mptr: U64,
    pub dptr: SglDesc,
    pub cdw10: U32,
    pub cdw11: U32,
    pub cdw12: U32,
    pub cdw13: U32,
    pub cdw14: U32,
    pub cdw15: U32,
}
const _: () = assert!(size_of::<Sqe>() == 64);
const _: () = assert!(core::mem::offset_of!(Sqe, dptr) == 24);
const _: () = assert!(core::mem::offset_of!(Sqe, cdw10) == 40);

impl Sqe {
    /// Fabrics command type (valid when opcode is [`opc::FABRICS`]).
    pub fn fctype(&self) -> u8 {
        self.nsid.as_bytes()[0]
    }
    pub fn psdt(&self) -> u8 {
        self.flags >> 6
    }
    pub fn cdw(&self, n: usize) -> u32 {
        match n {
            10 => self.cdw10.get(),
            11 => self.cdw11.get(),
            12 => self.cdw12.get(),
            13 => self.cdw13.get(),
            14 => self.cdw14.get(),
            15 => self.cdw15.get(),
            _ => 0,
        }
    }
}

/// Completion queue entry (16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Cqe {
    pub result: U64,
    pub sq_head: U16,
    pub sq_id: U16,
    pub cid: U16,
    /// Phase tag in bit 0, then SC (8 bits), SCT (3), CRD (2), M, DNR.
    pub status: U16,
}
const _: () = assert!(size_of::<Cqe>() == 16);

impl Cqe {
    /// The status field without the phase bit, as `(sct << 8) | sc` plus
    /// the DNR/M bits: the same encoding as [`crate::status::Status`].
    pub fn status_code(&self) -> u16 {
        self.status.get() >> 1
    }
}

/// SGL descriptor (16 bytes). NVMe/TCP uses a Transport SGL Data Block
/// for data moved by R2T/C2HData and a Data Block with the Offset subtype
/// for in-capsule data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SglDesc {
    pub addr: U64,
    pub length: U32,
    pub rsvd: [u8; 3],
    /// Descriptor type in bits 7:4, subtype in bits 3:0.
    pub type_: u8,
}
const _: () = assert!(size_of::<SglDesc>() == 16);

pub mod sgl {
    /// Data Block, Offset subtype: in-capsule data at `addr` bytes into the capsule data.
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport SGL Data Block, transport-specific subtype A (NVMe/TCP).
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5A;
    /// Keyed SGL Data Block with the Address subtype (NVMe/RDMA).
    pub const KEYED_DATA_BLOCK: u8 = 0x40;
    pub const KEYED_DATA_BLOCK_INVALIDATE: u8 = 0x4F;
    /// PSDT value meaning "SGLs, metadata pointer is a buffer".
    pub const PSDT_SGL_MPTR_CONTIG: u8 = 0x1;
}

/// Opcodes.
pub mod opc {
    // Admin.
    pub const DELETE_SQ: u8 = 0x00;
    pub const CREATE_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_CQ: u8 = 0x04;
    pub const CREATE_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics commands on any queue.
    pub const FABRICS: u8 = 0x7f;
    // NVM I/O.
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DSM: u8 = 0x09;
    pub const RESV_REGISTER: u8 = 0x0d;
    pub const RESV_REPORT: u8 = 0x0e;
    pub const RESV_ACQUIRE: u8 = 0x11;
    pub const RESV_RELEASE: u8 = 0x15;
}

/// Fabrics command types (FCTYPE).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// Controller properties (register offsets).
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
    pub const NSSR: u32 = 0x20;
}

/// Feature identifiers.
pub mod feat {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MGMT: u8 = 0x02;
    pub const TEMP_THRESH: u8 = 0x04;
    pub const ERR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WC: u8 = 0x06;
    pub const NUM_QUEUES: u8 = 0x07;
    pub const IRQ_COALESCE: u8 = 0x08;
    pub const WRITE_ATOMIC: u8 = 0x0a;
    pub const ASYNC_EVENT: u8 = 0x0b;
    pub const KATO: u8 = 0x0f;
    pub const HOST_ID: u8 = 0x81;
    pub const RESV_MASK: u8 = 0x82;
    pub const RESV_PERSIST: u8 = 0x83;
}

/// Log page identifiers.
pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FW_SLOT: u8 = 0x03;
    pub const CHANGED_NS: u8 = 0x04;
    pub const CMD_EFFECTS: u8 = 0x05;
    pub const DISCOVERY: u8 = 0x70;
    pub const RESV_NOTIFICATION: u8 = 0x80;
}

/// Builds an SQE with the common fields set.
pub fn sqe(opcode: u8, cid: u16, nsid: u32) -> Sqe {
    Sqe { opcode, cid: cid.into(), nsid: nsid.into(), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sqe_round_trips(b in proptest::collection::vec(any::<u8>(), 64)) {
            let s = Sqe::read_from_bytes(&b[..]).unwrap();
            prop_assert_eq!(s.as_bytes(), &b[..]);
        }
    }

    #[test]
    fn fctype_is_byte_four() {
        let mut b = [0u8; 64];
        b[0] = opc::FABRICS;
        b[4] = fctype::CONNECT;
        let s = Sqe::read_from_bytes(&b[..]).unwrap();
        assert_eq!(s.fctype(), fctype::CONNECT);
    }
}
