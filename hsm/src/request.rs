//! What `tidepool hsm` commands on any node ask the running HSM: a
//! synchronous DM user message to its session (`dm_send_msg`), which the
//! HSM answers CONTINUE when done or ABORT with the errno. The message is
//! text: the operation and the file's handle in hex.

use dmapi::types::{DmHandle, DmMsgType, DmSessId};
use libdmapi::Dm;

use crate::record::Record;
use crate::{HsmError, HsmResult, ATTR, SESSION_INFO};

/// What a command asks for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Migrate,
    Premigrate,
    Release,
    Recall,
    /// Stop the queued or running work on the file.
    Cancel,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Migrate => "migrate",
            Op::Premigrate => "premigrate",
            Op::Release => "release",
            Op::Recall => "recall",
            Op::Cancel => "cancel",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "migrate" => Op::Migrate,
            "premigrate" => Op::Premigrate,
            "release" => Op::Release,
            "recall" => Op::Recall,
            "cancel" => Op::Cancel,
            _ => return None,
        })
    }
}

pub fn encode(op: Op, h: &DmHandle) -> Vec<u8> {
    let hex: String = h.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("tphsm {} {hex}", op.name()).into_bytes()
}

pub fn decode(b: &[u8]) -> HsmResult<(Op, DmHandle)> {
    let bad = || HsmError::Request(format!("{:?}", String::from_utf8_lossy(b)));
    let s = std::str::from_utf8(b).map_err(|_| bad())?;
    let mut it = s.split(' ');
    if it.next() != Some("tphsm") {
        return Err(bad());
    }
    let op = it.next().and_then(Op::parse).ok_or_else(bad)?;
    let hex = it.next().ok_or_else(bad)?;
    if it.next().is_some() || hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    Ok((op, DmHandle::from_bytes(&bytes).map_err(|_| bad())?))
}

/// The running HSM's session, wherever in the cluster it is.
pub fn find_session(dm: &Dm) -> HsmResult<DmSessId> {
    for sid in dm.dm_getall_sessions(4096)? {
        if dm.dm_query_session(sid).is_ok_and(|info| info == SESSION_INFO) {
            return Ok(sid);
        }
    }
    Err(HsmError::Request("no HSM is running (no session \"tidepool-hsm\"): start `tidepool hsm run`".into()))
}

/// Asks the HSM to do `op` on `h` and waits for it.
pub fn send(dm: &Dm, hsm: DmSessId, op: Op, h: &DmHandle) -> HsmResult<()> {
    Ok(dm.dm_send_msg(hsm, DmMsgType::Sync, &encode(op, h))?)
}

/// A file's HSM record, read through a session of the caller's own (any
/// node: `dm_get_dmattr` needs a session, not the HSM's).
pub fn record_of(dm: &Dm, sid: DmSessId, h: &DmHandle) -> HsmResult<Option<Record>> {
    match dm.dm_get_dmattr(sid, h, dmapi::types::DM_NO_TOKEN, ATTR) {
        Ok(b) => Record::decode(&b).map(Some),
        Err(dmapi::DmError::NoEnt(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmapi::types::FsId;

    #[test]
    fn requests_round_trip_and_junk_is_refused() {
        let h = DmHandle::file(FsId(1), 42, 7);
        for op in [Op::Migrate, Op::Premigrate, Op::Release, Op::Recall, Op::Cancel] {
            assert_eq!(decode(&encode(op, &h)).unwrap(), (op, h));
        }
        for junk in [&b""[..], b"tphsm", b"tphsm migrate", b"tphsm fly 00", b"tphsm migrate zz", b"x migrate 00"] {
            assert!(decode(junk).is_err(), "{junk:?}");
        }
    }
}
