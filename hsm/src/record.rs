//! A file's HSM record, kept in its DM attribute [`crate::ATTR`]: one line
//! of `name=value` fields, readable with any DM tool.

use crate::{HsmError, HsmResult};

/// Where a file's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Copied to the tier, still here.
    Premigrated,
    /// In the tier only: the data was punched out.
    Migrated,
    /// The tier copy is older than the data.
    Stale,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Premigrated => "premigrated",
            State::Migrated => "migrated",
            State::Stale => "stale",
        }
    }

    fn parse(s: &str) -> Option<State> {
        Some(match s {
            "premigrated" => State::Premigrated,
            "migrated" => State::Migrated,
            "stale" => State::Stale,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub state: State,
    /// The object's key in the tier.
    pub key: String,
    /// The data's length and CRC-32C when it was copied.
    pub size: u64,
    pub crc: u32,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        format!("v=1 state={} size={} crc={:08x} key={}", self.state.name(), self.size, self.crc, self.key).into_bytes()
    }

    pub fn decode(b: &[u8]) -> HsmResult<Record> {
        let bad = |why: &str| HsmError::Request(format!("HSM record {:?}: {why}", String::from_utf8_lossy(b)));
        let s = std::str::from_utf8(b).map_err(|_| bad("not UTF-8"))?;
        let (mut state, mut size, mut crc, mut key, mut v) = (None, None, None, None, None);
        for f in s.split(' ') {
            let (k, val) = f.split_once('=').ok_or_else(|| bad("a field without '='"))?;
            match k {
                "v" => v = Some(val),
                "state" => state = State::parse(val),
                "size" => size = val.parse().ok(),
                "crc" => crc = u32::from_str_radix(val, 16).ok(),
                "key" => key = Some(val.to_string()),
                _ => return Err(bad("an unknown field")),
            }
        }
        if v != Some("1") {
            return Err(bad("not version 1"));
        }
        match (state, size, crc, key) {
            (Some(state), Some(size), Some(crc), Some(key)) if !key.is_empty() => Ok(Record { state, key, size, crc }),
            _ => Err(bad("a field missing or malformed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_junk_is_refused() {
        for state in [State::Premigrated, State::Migrated, State::Stale] {
            let r = Record { state, key: "fs1/42-7".into(), size: 1 << 40, crc: 0xdead_beef };
            assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        }
        for junk in
            [&b""[..], b"v=1", b"v=2 state=migrated size=1 crc=0 key=k", b"v=1 state=gone size=1 crc=0 key=k", b"\xff"]
        {
            assert!(Record::decode(junk).is_err(), "{junk:?}");
        }
    }
}
