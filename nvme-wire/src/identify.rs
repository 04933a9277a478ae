//! Identify data structures (CNS 00h, 01h, 02h, 03h).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_DESC_LIST: u8 = 0x03;
}

/// Identify Controller data structure.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IdCtrl {
    pub vid: U16,
    pub ssvid: U16,
    pub sn: [u8; 20],
    pub mn: [u8; 40],
    pub fr: [u8; 8],
    pub rab: u8,
    pub ieee: [u8; 3],
    pub cmic: u8,
    pub mdts: u8,
    pub cntlid: U16,
    pub ver: U32,
    pub rtd3r: U32,
    pub rtd3e: U32,
    pub oaes: U32,
    pub ctratt: U32,
    pub rrls: U16,
    pub rsvd102: [u8; 9],
    pub cntrltype: u8,
    pub fguid: [u8; 16],
    pub crdt: [U16; 3],
    pub rsvd134: [u8; 122],
    pub oacs: U16,
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    pub npss: u8,
    pub avscc: u8,
    pub apsta: u8,
    pub wctemp: U16,
    pub cctemp: U16,
    pub mtfa: U16,
    pub hmpre: U32,
    pub hmmin: U32,
    pub tnvmcap: [u8; 16],
    pub unvmcap: [u8; 16],
    pub rpmbs: U32,
    pub edstt: U16,
    pub dsto: u8,
    pub fwug: u8,
    pub kas: U16,
    pub hctma: U16,
    pub mntmt: U16,
    pub mxtmt: U16,
    pub sanicap: U32,
    pub hmminds: U32,
    pub hmmaxd: U16,
    pub nsetidmax: U16,
    pub endgidmax: U16,
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: U32,
    pub nanagrpid: U32,
    pub pels: U32,
    pub rsvd356: [u8; 156],
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: U16,
    pub nn: U32,
    pub oncs: U16,
    pub fuses: U16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: U16,
    pub awupf: U16,
    pub nvscc: u8,
    pub nwpc: u8,
    pub acwu: U16,
    pub ocfs: U16,
    pub sgls: U32,
    pub mnan: U32,
    pub rsvd544: [u8; 224],
    pub subnqn: [u8; 256],
    pub rsvd1024: [u8; 768],
    pub ioccsz: U32,
    pub iorcsz: U32,
    pub icdoff: U16,
    pub fcatt: u8,
    pub msdbd: u8,
    pub ofcs: U16,
    pub rsvd1806: [u8; 242],
    pub psd: [[u8; 32]; 32],
    pub vs: [u8; 1024],
}
const _: () = assert!(size_of::<IdCtrl>() == 4096);
const _: () = assert!(core::mem::offset_of!(IdCtrl, cntlid) == 78);
const _: () = assert!(core::mem::offset_of!(IdCtrl, cntrltype) == 111);
const _: () = assert!(core::mem::offset_of!(IdCtrl, oacs) == 256);
const _: () = assert!(core::mem::offset_of!(IdCtrl, kas) == 320);
const _: () = assert!(core::mem::offset_of!(IdCtrl, sqes) == 512);
const _: () = assert!(core::mem::offset_of!(IdCtrl, oncs) == 520);
const _: () = assert!(core::mem::offset_of!(IdCtrl, sgls) == 536);
const _: () = assert!(core::mem::offset_of!(IdCtrl, subnqn) == 768);
const _: () = assert!(core::mem::offset_of!(IdCtrl, ioccsz) == 1792);
const _: () = assert!(core::mem::offset_of!(IdCtrl, psd) == 2048);

/// Controller type (CNTRLTYPE).
pub const CNTRLTYPE_IO: u8 = 1;
pub const CNTRLTYPE_DISCOVERY: u8 = 2;

/// ONCS bits.
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const DSM: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    pub const RESERVATIONS: u16 = 1 << 5;
}

/// LBA format descriptor.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LbaFormat {
    pub ms: U16,
    pub lbads: u8,
    pub rp: u8,
}
const _: () = assert!(size_of::<LbaFormat>() == 4);

/// Identify Namespace data structure (NVM command set).
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IdNs {
    pub nsze: U64,
    pub ncap: U64,
    pub nuse: U64,
    pub nsfeat: u8,
    pub nlbaf: u8,
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub dlfeat: u8,
    pub nawun: U16,
    pub nawupf: U16,
    pub nacwu: U16,
    pub nabsn: U16,
    pub nabo: U16,
    pub nabspf: U16,
    pub noiob: U16,
    pub nvmcap: [u8; 16],
    pub npwg: U16,
    pub npwa: U16,
    pub npdg: U16,
    pub npda: U16,
    pub nows: U16,
    pub mssrl: U16,
    pub mcl: U32,
    pub msrc: u8,
    pub rsvd81: [u8; 11],
    pub anagrpid: U32,
    pub rsvd96: [u8; 3],
    pub nsattr: u8,
    pub nvmsetid: U16,
    pub endgid: U16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub lbaf: [LbaFormat; 64],
    pub rsvd384: [u8; 3712],
}
const _: () = assert!(size_of::<IdNs>() == 4096);
const _: () = assert!(core::mem::offset_of!(IdNs, rescap) == 31);
const _: () = assert!(core::mem::offset_of!(IdNs, anagrpid) == 92);
const _: () = assert!(core::mem::offset_of!(IdNs, nguid) == 104);
const _: () = assert!(core::mem::offset_of!(IdNs, lbaf) == 128);

impl IdNs {
    /// Block size in bytes of the format in use.
    pub fn block_size(&self) -> Option<u32> {
        let lbads = self.lbaf.get((self.flbas & 0xf) as usize)?.lbads;
        (9..=16).contains(&lbads).then(|| 1u32 << lbads)
    }
}

/// Reservation capabilities (RESCAP): every type plus "ignore existing key".
pub const RESCAP_ALL: u8 = 0b1111_1110;

/// Namespace identification descriptor types (NIDT).
pub mod nidt {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
    pub const CSI: u8 = 4;
}

/// Header of one namespace identification descriptor; NIDL bytes follow.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct NsIdDesc {
    pub nidt: u8,
    pub nidl: u8,
    pub rsvd: [u8; 2],
}
const _: () = assert!(size_of::<NsIdDesc>() == 4);

/// Walks a namespace identification descriptor list.
pub fn parse_ns_descs(buf: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let (t, l) = (buf[off], buf[off + 1] as usize);
        if t == 0 || off + 4 + l > buf.len() {
            break;
        }
        out.push((t, buf[off + 4..off + 4 + l].to_vec()));
        off += 4 + l;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use zerocopy::FromZeros;

    #[test]
    fn block_size_comes_from_the_format_in_use() {
        let mut ns = IdNs::new_zeroed();
        ns.lbaf[0].lbads = 9;
        ns.lbaf[1].lbads = 12;
        ns.flbas = 1;
        assert_eq!(ns.block_size(), Some(4096));
        ns.flbas = 0;
        assert_eq!(ns.block_size(), Some(512));
        ns.lbaf[0].lbads = 40;
        assert_eq!(ns.block_size(), None);
    }

    #[test]
    fn ns_descs_parse_and_stop_at_garbage() {
        let mut b = vec![0u8; 64];
        b[0] = nidt::NGUID;
        b[1] = 16;
        b[4..20].copy_from_slice(&[0xab; 16]);
        b[20] = nidt::CSI;
        b[21] = 200; // runs past the end: ignored
        let d = parse_ns_descs(&b);
        assert_eq!(d, vec![(nidt::NGUID, vec![0xab; 16])]);
    }
}
