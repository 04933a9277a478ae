//! NVMe over Fabrics commands: Connect, Property Get/Set (NVMe-oF 1.1).

use crate::nvme::{fctype, opc, Sqe};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The well-known NQN of a discovery controller.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
pub const NQN_MAX: usize = 223;

/// Connect command data (1024 bytes, sent as in-capsule data).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: U16,
    pub rsvd1: [u8; 238],
    pub subsysnqn: [u8; 256],
    pub hostnqn: [u8; 256],
    pub rsvd2: [u8; 256],
}
const _: () = assert!(size_of::<ConnectData>() == 1024);
const _: () = assert!(core::mem::offset_of!(ConnectData, subsysnqn) == 256);
const _: () = assert!(core::mem::offset_of!(ConnectData, hostnqn) == 512);

impl ConnectData {
    pub fn new(hostid: [u8; 16], cntlid: u16, subsysnqn: &str, hostnqn: &str) -> Self {
        let mut d = Self::new_zeroed();
        d.hostid = hostid;
        d.cntlid = cntlid.into();
        crate::put_padded(&mut d.subsysnqn, subsysnqn, 0);
        crate::put_padded(&mut d.hostnqn, hostnqn, 0);
        d
    }
    pub fn subsysnqn(&self) -> &str {
        crate::get_str(&self.subsysnqn)
    }
    pub fn hostnqn(&self) -> &str {
        crate::get_str(&self.hostnqn)
    }
}

/// Connect CATTR bit 2: the host asks to run the queue without SQ flow control.
pub const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;

/// Connect's fields as they sit in the SQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    pub recfmt: u16,
    pub qid: u16,
    /// Zero-based submission queue size.
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep-alive timeout in milliseconds (admin queue only).
    pub kato: u32,
}

impl Connect {
    pub fn from_sqe(s: &Sqe) -> Self {
        let c10 = s.cdw10.get();
        let c11 = s.cdw11.get();
        Self {
            recfmt: c10 as u16,
            qid: (c10 >> 16) as u16,
            sqsize: c11 as u16,
            cattr: (c11 >> 16) as u8,
            kato: s.cdw12.get(),
        }
    }
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut s = fabrics_sqe(fctype::CONNECT, cid);
        s.cdw10 = (self.recfmt as u32 | (self.qid as u32) << 16).into();
        s.cdw11 = (self.sqsize as u32 | (self.cattr as u32) << 16).into();
        s.cdw12 = self.kato.into();
        s
    }
}

/// Property Get/Set fields as they sit in the SQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Property {
    /// Size: false = 4 bytes, true = 8 bytes.
    pub eight: bool,
    pub offset: u32,
    pub value: u64,
}

impl Property {
    pub fn from_sqe(s: &Sqe) -> Self {
        Self {
            eight: s.cdw10.get() & 0x7 == 1,
            offset: s.cdw11.get(),
            value: s.cdw12.get() as u64 | (s.cdw13.get() as u64) << 32,
        }
    }
    pub fn get_sqe(&self, cid: u16) -> Sqe {
        let mut s = fabrics_sqe(fctype::PROPERTY_GET, cid);
        s.cdw10 = (self.eight as u32).into();
        s.cdw11 = self.offset.into();
        s
    }
    pub fn set_sqe(&self, cid: u16) -> Sqe {
        let mut s = self.get_sqe(cid);
        s.nsid = U32::new(fctype::PROPERTY_SET as u32);
        s.cdw12 = (self.value as u32).into();
        s.cdw13 = ((self.value >> 32) as u32).into();
        s
    }
}

pub fn fabrics_sqe(fct: u8, cid: u16) -> Sqe {
    Sqe { opcode: opc::FABRICS, cid: cid.into(), nsid: U32::new(fct as u32), ..Default::default() }
}

/// CAP register fields.
pub mod cap {
    pub const CQR: u64 = 1 << 16;
    pub const CSS_NVM: u64 = 1 << 37;
    pub fn mqes(cap: u64) -> u16 {
        cap as u16
    }
    pub fn to_500ms(cap: u64) -> u8 {
        (cap >> 24) as u8
    }
}

/// CC register fields.
pub mod cc {
    pub const EN: u32 = 1;
    pub fn css(cc: u32) -> u32 {
        (cc >> 4) & 0x7
    }
    pub fn mps(cc: u32) -> u32 {
        (cc >> 7) & 0xf
    }
    pub fn ams(cc: u32) -> u32 {
        (cc >> 11) & 0x7
    }
    pub fn shn(cc: u32) -> u32 {
        (cc >> 14) & 0x3
    }
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> 16) & 0xf
    }
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> 20) & 0xf
    }
    /// The CC value a host writes to enable a controller: NVM command set,
    /// 4 KiB pages, round robin, 64-byte SQEs and 16-byte CQEs.
    pub const ENABLE_DEFAULT: u32 = EN | (6 << 16) | (4 << 20);
    pub const SHN_NORMAL: u32 = 1 << 14;
}

/// CSTS register fields.
pub mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 2;
    pub const SHST_OCCURRING: u32 = 1 << 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;
    pub const SHST_MASK: u32 = 3 << 2;
}

/// The result DW0 of a failed Connect with Invalid Parameters says which
/// field was wrong: IATTR (bit 16: 1 = in the data) and IPO (bits 15:0).
pub fn connect_invalid_param_result(in_data: bool, offset: u16) -> u64 {
    ((in_data as u64) << 16) | offset as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_round_trips_through_the_sqe() {
        let c = Connect { recfmt: 0, qid: 3, sqsize: 127, cattr: 0, kato: 15000 };
        let s = c.to_sqe(9);
        assert_eq!(s.fctype(), fctype::CONNECT);
        assert_eq!(s.as_bytes()[42], 3, "QID sits at byte 42");
        assert_eq!(Connect::from_sqe(&s), c);
        let d = ConnectData::new([7; 16], 0xffff, "nqn.a", "nqn.host");
        assert_eq!(d.subsysnqn(), "nqn.a");
        assert_eq!(d.hostnqn(), "nqn.host");
        assert_eq!(&d.as_bytes()[256..261], b"nqn.a");
    }

    #[test]
    fn property_set_carries_a_64_bit_value() {
        let p = Property { eight: true, offset: prop_off(), value: 0x1234_5678_9abc_def0 };
        let s = p.set_sqe(1);
        assert_eq!(s.fctype(), fctype::PROPERTY_SET);
        assert_eq!(Property::from_sqe(&s), p);
        assert_eq!(s.as_bytes()[44], 0x14);
    }

    fn prop_off() -> u32 {
        crate::nvme::prop::CC
    }
}
