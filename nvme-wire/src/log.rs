//! Log pages: discovery (70h), SMART / health (02h), error (01h),
//! changed namespace list (04h), reservation notification (80h).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DiscoveryLogHeader {
    pub genctr: U64,
    pub numrec: U64,
    pub recfmt: U16,
    pub rsvd: [u8; 1006],
}
const _: () = assert!(size_of::<DiscoveryLogHeader>() == 1024);

/// Transport types (TRTYPE).
pub mod trtype {
    pub const RDMA: u8 = 1;
    pub const TCP: u8 = 3;
}
pub const ADRFAM_IPV4: u8 = 1;
pub const ADRFAM_IPV6: u8 = 2;
/// Subsystem types (SUBTYPE).
pub const SUBTYPE_NVME: u8 = 2;
pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
/// TREQ: secure channel not required.
pub const TREQ_NOT_REQUIRED: u8 = 2;

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DiscoveryLogEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: U16,
    pub cntlid: U16,
    pub asqsz: U16,
    pub eflags: U16,
    pub rsvd12: [u8; 20],
    pub trsvcid: [u8; 32],
    pub rsvd64: [u8; 192],
    pub subnqn: [u8; 256],
    pub traddr: [u8; 256],
    pub tsas: [u8; 256],
}
const _: () = assert!(size_of::<DiscoveryLogEntry>() == 1024);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, trsvcid) == 32);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, subnqn) == 256);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, traddr) == 512);

impl DiscoveryLogEntry {
    pub fn subnqn(&self) -> &str {
        crate::get_str(&self.subnqn)
    }
    pub fn traddr(&self) -> &str {
        crate::get_str(&self.traddr)
    }
    pub fn trsvcid(&self) -> &str {
        crate::get_str(&self.trsvcid)
    }
}

/// SMART / Health Information log page.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SmartLog {
    pub critical_warning: u8,
    pub temperature: U16,
    pub avail_spare: u8,
    pub spare_thresh: u8,
    pub percent_used: u8,
    pub endu_grp_crit_warn: u8,
    pub rsvd7: [u8; 25],
    /// Counts in thousands of 512-byte units, 128-bit little endian.
    pub data_units_read: [u8; 16],
    pub data_units_written: [u8; 16],
    pub host_reads: [u8; 16],
    pub host_writes: [u8; 16],
    pub ctrl_busy_time: [u8; 16],
    pub power_cycles: [u8; 16],
    pub power_on_hours: [u8; 16],
    pub unsafe_shutdowns: [u8; 16],
    pub media_errors: [u8; 16],
    pub num_err_log_entries: [u8; 16],
    pub rsvd192: [u8; 320],
}
const _: () = assert!(size_of::<SmartLog>() == 512);
const _: () = assert!(core::mem::offset_of!(SmartLog, data_units_read) == 32);
const _: () = assert!(core::mem::offset_of!(SmartLog, host_reads) == 64);

pub fn u128_le(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}

/// Error Information log entry.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ErrorLogEntry {
    pub error_count: U64,
    pub sqid: U16,
    pub cmdid: U16,
    pub status_field: U16,
    pub param_error_location: U16,
    pub lba: U64,
    pub nsid: U32,
    pub vs: u8,
    pub trtype: u8,
    pub rsvd30: [u8; 2],
    pub cs: U64,
    pub trtype_spec_info: U16,
    pub rsvd42: [u8; 22],
}
const _: () = assert!(size_of::<ErrorLogEntry>() == 64);

/// Reservation Notification log page.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ResvNotificationLog {
    pub count: U64,
    pub log_type: u8,
    pub num_avail: u8,
    pub rsvd10: [u8; 2],
    pub nsid: U32,
    pub rsvd16: [u8; 48],
}
const _: () = assert!(size_of::<ResvNotificationLog>() == 64);

/// Reservation notification types.
pub mod resv_notif {
    pub const REGISTRATION_PREEMPTED: u8 = 1;
    pub const RESERVATION_RELEASED: u8 = 2;
    pub const RESERVATION_PREEMPTED: u8 = 3;
}

/// Asynchronous event completion DW0: type, info, log page.
pub fn aen_result(event_type: u8, info: u8, log_page: u8) -> u32 {
    (event_type as u32 & 0x7) | (info as u32) << 8 | (log_page as u32) << 16
}
pub mod aen {
    pub const TYPE_NOTICE: u8 = 2;
    pub const TYPE_IO_CMD_SPECIFIC: u8 = 6;
    pub const NOTICE_NS_CHANGED: u8 = 0x00;
    pub const NOTICE_DISC_CHANGED: u8 = 0xf0;
    pub const IO_RESV_LOG_AVAIL: u8 = 0x00;
    /// Async Event Configuration bits (feature 0Bh).
    pub const CFG_NS_ATTR: u32 = 1 << 8;
    pub const CFG_DISC_CHANGE: u32 = 1 << 31;
}
