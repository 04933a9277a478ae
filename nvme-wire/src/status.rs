//! NVMe completion status codes as `(SCT << 8) | SC` with DNR in bit 14,
//! the encoding of CQE DW3 bits 15:1 (the phase bit dropped).

/// A completion status: status code type, status code, and Do Not Retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

pub const SCT_GENERIC: u16 = 0;
pub const SCT_CMD_SPECIFIC: u16 = 1;
pub const SCT_MEDIA: u16 = 2;

const DNR: u16 = 1 << 14;

impl Status {
    pub const SUCCESS: Status = Status(0);
    pub const INVALID_OPCODE: Status = Status::generic(0x01);
    pub const INVALID_FIELD: Status = Status::generic(0x02);
    pub const CID_CONFLICT: Status = Status::generic(0x03);
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL: Status = Status::generic(0x06);
    pub const ABORT_REQUESTED: Status = Status::generic(0x07);
    pub const ABORT_SQ_DELETED: Status = Status::generic(0x08);
    pub const INVALID_NS: Status = Status::generic(0x0b);
    pub const CMD_SEQ_ERROR: Status = Status::generic(0x0c);
    pub const SGL_INVALID_LAST: Status = Status::generic(0x0d);
    pub const SGL_INVALID_DATA: Status = Status::generic(0x0f);
    pub const SGL_INVALID_TYPE: Status = Status::generic(0x11);
    pub const SGL_INVALID_OFFSET: Status = Status::generic(0x16);
    pub const HOST_ID_INCONSISTENT: Status = Status::generic(0x18);
    pub const KA_EXPIRED: Status = Status::generic(0x19);
    pub const KA_INVALID: Status = Status::generic(0x1a);
    pub const LBA_RANGE: Status = Status::generic(0x80);
    pub const CAP_EXCEEDED: Status = Status::generic(0x81);
    pub const NS_NOT_READY: Status = Status(0x82); // retryable: no DNR
    pub const RESERVATION_CONFLICT: Status = Status::generic(0x83);

    pub const INVALID_QID: Status = Status::specific(0x01);
    pub const INVALID_QSIZE: Status = Status::specific(0x02);
    pub const AER_LIMIT: Status = Status::specific(0x05);
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09);
    pub const FEATURE_NOT_SAVEABLE: Status = Status::specific(0x0d);
    pub const FEATURE_NOT_CHANGEABLE: Status = Status::specific(0x0e);
    pub const CONNECT_FORMAT: Status = Status::specific(0x80);
    pub const CONNECT_CTRL_BUSY: Status = Status::specific(0x81);
    pub const CONNECT_INVALID_PARAM: Status = Status::specific(0x82);
    pub const CONNECT_RESTART_DISC: Status = Status::specific(0x83);
    pub const CONNECT_INVALID_HOST: Status = Status::specific(0x84);

    pub const WRITE_FAULT: Status = Status::media(0x80);
    pub const UNRECOVERED_READ: Status = Status::media(0x81);
    pub const COMPARE_FAILED: Status = Status::media(0x85);

    pub const fn generic(sc: u8) -> Status {
        Status((SCT_GENERIC << 8) | sc as u16 | DNR)
    }
    pub const fn specific(sc: u8) -> Status {
        Status((SCT_CMD_SPECIFIC << 8) | sc as u16 | DNR)
    }
    pub const fn media(sc: u8) -> Status {
        Status((SCT_MEDIA << 8) | sc as u16 | DNR)
    }
    pub fn sct(self) -> u16 {
        (self.0 >> 8) & 0x7
    }
    pub fn sc(self) -> u8 {
        self.0 as u8
    }
    pub fn dnr(self) -> bool {
        self.0 & DNR != 0
    }
    pub fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }
    /// The same status, comparing only SCT and SC (not DNR/More).
    pub fn code(self) -> u16 {
        self.0 & 0x7ff
    }
    /// CQE status field value (phase bit 0 left clear: fabrics has no phase).
    pub fn to_cqe_field(self) -> u16 {
        self.0 << 1
    }
    pub fn from_cqe_field(v: u16) -> Status {
        Status(v >> 1)
    }
    pub fn name(self) -> &'static str {
        match (self.sct(), self.sc()) {
            (0, 0x00) => "Success",
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x03) => "Command ID Conflict",
            (0, 0x04) => "Data Transfer Error",
            (0, 0x06) => "Internal Error",
            (0, 0x07) => "Command Abort Requested",
            (0, 0x08) => "Command Aborted due to SQ Deletion",
            (0, 0x0b) => "Invalid Namespace or Format",
            (0, 0x0c) => "Command Sequence Error",
            (0, 0x0d) => "Invalid SGL Segment Descriptor",
            (0, 0x0f) => "Data SGL Length Invalid",
            (0, 0x11) => "SGL Descriptor Type Invalid",
            (0, 0x16) => "SGL Offset Invalid",
            (0, 0x18) => "Host Identifier Inconsistent Format",
            (0, 0x19) => "Keep Alive Timer Expired",
            (0, 0x1a) => "Keep Alive Timeout Invalid",
            (0, 0x80) => "LBA Out of Range",
            (0, 0x81) => "Capacity Exceeded",
            (0, 0x82) => "Namespace Not Ready",
            (0, 0x83) => "Reservation Conflict",
            (1, 0x01) => "Invalid Queue Identifier",
            (1, 0x02) => "Invalid Queue Size",
            (1, 0x05) => "Asynchronous Event Request Limit Exceeded",
            (1, 0x09) => "Invalid Log Page",
            (1, 0x0d) => "Feature Identifier Not Saveable",
            (1, 0x0e) => "Feature Not Changeable",
            (1, 0x80) => "Connect Incompatible Format",
            (1, 0x81) => "Connect Controller Busy",
            (1, 0x82) => "Connect Invalid Parameters",
            (1, 0x83) => "Connect Restart Discovery",
            (1, 0x84) => "Connect Invalid Host",
            (2, 0x80) => "Write Fault",
            (2, 0x81) => "Unrecovered Read Error",
            (2, 0x85) => "Compare Failure",
            _ => "Unknown Status",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (sct {:#x}, sc {:#04x}{})",
            self.name(),
            self.sct(),
            self.sc(),
            if self.dnr() { ", dnr" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_spec() {
        // Linux: NVME_SC_RESERVATION_CONFLICT 0x83, NVME_SC_CONNECT_INVALID_HOST 0x184,
        // NVME_SC_COMPARE_FAILED 0x285, NVME_SC_DNR 0x4000.
        assert_eq!(Status::RESERVATION_CONFLICT.0, 0x4083);
        assert_eq!(Status::CONNECT_INVALID_HOST.code(), 0x184);
        assert_eq!(Status::COMPARE_FAILED.code(), 0x285);
        assert!(!Status::NS_NOT_READY.dnr());
        let f = Status::LBA_RANGE.to_cqe_field();
        assert_eq!(Status::from_cqe_field(f), Status::LBA_RANGE);
        assert_eq!(Status::LBA_RANGE.to_string(), "LBA Out of Range (sct 0x0, sc 0x80, dnr)");
    }
}
