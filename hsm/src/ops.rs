//! The HSM's operations on one file, each under a token that holds (or
//! here takes) the file's exclusive right: an event's token for a recall, a
//! request's for a migration. Answering the token gives the right back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dmapi::types::{dm_region, DmHandle, DmRegion, DmRight, DmSessId, DmToken, EventSet, EventType, DM_RR_WAIT};
use dmapi::DmError;
use libdmapi::Dm;
use tracing::{info, warn};

use crate::record::{Record, State};
use crate::tier::{Tier, PART};
use crate::{HsmError, HsmResult, ATTR};

/// Data moves in pieces of this size (within the local channel's 16 MiB).
const CHUNK: u64 = 4 << 20;

pub struct Ops<'a> {
    pub dm: &'a Dm,
    pub sid: DmSessId,
    pub tier: &'a Tier,
    /// Raised by `tidepool hsm cancel`: the copy stops at its next piece.
    pub cancel: Option<&'a AtomicBool>,
    /// Bytes copied so far, for the status line.
    pub progress: Option<&'a AtomicU64>,
}

/// The tier key of a file: its handle's parts, so a reused inode number
/// (another generation) gets an object of its own.
pub fn key_of(h: &DmHandle) -> HsmResult<String> {
    Ok(format!("fs{}/{}-{}", h.fsid().0, h.ino()?, h.igen()?))
}

impl Ops<'_> {
    fn check(&self) -> HsmResult<()> {
        match self.cancel {
            Some(f) if f.load(Ordering::Relaxed) => Err(HsmError::Cancelled),
            _ => Ok(()),
        }
    }

    /// `bytes` are done: paced to the tier's rate, counted for the status.
    fn moved(&self, done: u64, bytes: u64) -> HsmResult<()> {
        self.tier.pace(bytes, self.cancel)?;
        if let Some(p) = self.progress {
            p.store(done, Ordering::Relaxed);
        }
        Ok(())
    }

    fn excl(&self, h: &DmHandle, t: DmToken) -> HsmResult<()> {
        Ok(self.dm.dm_request_right(self.sid, h, t, DM_RR_WAIT, DmRight::Excl)?)
    }

    /// The file's record, if the HSM has one for it.
    pub fn record(&self, h: &DmHandle, t: DmToken) -> HsmResult<Option<Record>> {
        match self.dm.dm_get_dmattr(self.sid, h, t, ATTR) {
            Ok(b) => Record::decode(&b).map(Some),
            Err(DmError::NoEnt(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn put_record(&self, h: &DmHandle, t: DmToken, r: &Record) -> HsmResult<()> {
        Ok(self.dm.dm_set_dmattr(self.sid, h, t, ATTR, &r.encode())?)
    }

    /// What raises events on the file in `state`: its own event list and
    /// one managed region over all of it (the file system's list has only
    /// destroy, so files the HSM does not manage cost nothing).
    fn manage(&self, h: &DmHandle, t: DmToken, state: State) -> HsmResult<()> {
        use dm_region::{READ, TRUNCATE, WRITE};
        let (flags, events): (u32, &[EventType]) = match state {
            State::Premigrated => (WRITE | TRUNCATE, &[EventType::Write, EventType::Truncate, EventType::Destroy]),
            State::Migrated => {
                (READ | WRITE | TRUNCATE, &[EventType::Read, EventType::Write, EventType::Truncate, EventType::Destroy])
            }
            State::Stale => (0, &[EventType::Destroy]),
        };
        let regions = if flags == 0 { vec![] } else { vec![DmRegion { offset: 0, size: 0, flags }] };
        self.dm.dm_set_region(self.sid, h, t, &regions)?;
        let set: EventSet = events.iter().copied().collect();
        self.dm.dm_set_eventlist(self.sid, h, t, set)?;
        Ok(())
    }

    /// Streams `size` bytes of the file to the tier as `key`: small files in
    /// one request, large ones in parts, never more than a few parts in
    /// memory. Returns the data's CRC-32C.
    fn copy_out(&self, h: &DmHandle, t: DmToken, key: &str, size: u64) -> HsmResult<u32> {
        let changed = || HsmError::State("the file changed size while it was copied");
        let read = |off: u64, len: u64| -> HsmResult<Vec<u8>> {
            let part = self.dm.dm_read_invis(self.sid, h, t, off, len)?;
            if part.len() as u64 != len {
                return Err(changed());
            }
            Ok(part)
        };
        if size <= PART as u64 {
            let data = read(0, size)?;
            let crc = crc32c::crc32c(&data);
            self.moved(0, size)?;
            self.tier.put(key, data.into(), self.cancel)?;
            return Ok(crc);
        }
        let mut up = self.tier.upload(key, self.cancel)?;
        let (mut off, mut crc) = (0, 0);
        while off < size {
            self.check()?;
            let part = read(off, CHUNK.min(size - off))?;
            crc = crc32c::crc32c_append(crc, &part);
            self.moved(off, part.len() as u64)?;
            up.write(&part)?;
            off += part.len() as u64;
        }
        up.finish()?;
        Ok(crc)
    }

    /// Streams a migrated file's data back from the tier, the next piece
    /// coming in while this one is written, and checks it against the
    /// record (the caller punches it out again if anything is wrong).
    fn copy_in(&self, h: &DmHandle, t: DmToken, r: &Record) -> HsmResult<()> {
        let ino = h.ino()?;
        let have = self.tier.size(&r.key, self.cancel)?;
        if have != r.size {
            return Err(HsmError::Corrupt { ino, why: format!("{have} bytes, recorded {}", r.size) });
        }
        let (mut off, mut crc) = (0, 0);
        let mut obj = self.tier.read(&r.key, CHUNK as usize, self.cancel);
        while off < r.size {
            self.check()?;
            let Some(data) = obj.next_piece()? else {
                return Err(HsmError::Corrupt { ino, why: format!("the object ends at {off}, recorded {}", r.size) });
            };
            let end = off + data.len() as u64;
            if end > r.size {
                return Err(HsmError::Corrupt { ino, why: format!("more than the recorded {} bytes", r.size) });
            }
            crc = crc32c::crc32c_append(crc, &data);
            self.dm.dm_write_invis(self.sid, h, t, end == r.size, off, &data)?;
            self.moved(end, data.len() as u64)?;
            off = end;
        }
        if crc != r.crc {
            return Err(HsmError::Corrupt { ino, why: format!("CRC-32C {crc:08x}, recorded {:08x}", r.crc) });
        }
        Ok(())
    }

    /// Copies the data to the tier and records it: the file is premigrated.
    /// A premigrated file stays as it is; a migrated one is refused.
    ///
    /// The copy runs under a shared right: other nodes go on reading (and
    /// `stat`ing) the file meanwhile, writers wait. Then the right is given
    /// up and taken exclusive for the record, after a check (size and
    /// `dt_change`) that the file is as it was.
    pub fn premigrate(&self, h: &DmHandle, t: DmToken) -> HsmResult<Record> {
        self.dm.dm_request_right(self.sid, h, t, DM_RR_WAIT, DmRight::Shared)?;
        match self.record(h, t)? {
            Some(r) if r.state == State::Migrated => return Ok(r),
            Some(r) if r.state == State::Premigrated => return Ok(r),
            _ => {}
        }
        let started = std::time::Instant::now();
        let before = self.dm.dm_get_fileattr(self.sid, h, t)?;
        let size = before.size;
        let key = key_of(h)?;
        let crc = self.copy_out(h, t, &key, size)?;
        // Not an upgrade: writers queued for the file meanwhile hold their
        // turn at the manager ahead of it and wait for this right, so an
        // upgrade would wait for them forever. They go first; the check
        // below then sees their change and the copy is not recorded.
        self.dm.dm_release_right(self.sid, h, t)?;
        self.excl(h, t)?;
        let now = self.dm.dm_get_fileattr(self.sid, h, t)?;
        if (now.size, now.change) != (before.size, before.change) {
            return Err(HsmError::State("the file changed while it was copied"));
        }
        let r = Record { state: State::Premigrated, key, size, crc };
        self.put_record(h, t, &r)?;
        self.manage(h, t, State::Premigrated)?;
        info!(ino = h.ino()?, size, ms = started.elapsed().as_millis() as u64, "premigrated");
        Ok(r)
    }

    /// Frees a premigrated file's data: punched out, the space goes back to
    /// the volume; size, times, owner and mode stay.
    pub fn release(&self, h: &DmHandle, t: DmToken) -> HsmResult<()> {
        self.excl(h, t)?;
        let Some(mut r) = self.record(h, t)? else {
            return Err(HsmError::State("not premigrated: no tier copy"));
        };
        match r.state {
            State::Migrated => return Ok(()),
            State::Stale => return Err(HsmError::State("the tier copy is stale: premigrate again")),
            State::Premigrated => {}
        }
        if self.dm.dm_get_fileattr(self.sid, h, t)?.size != r.size {
            return Err(HsmError::State("the file's size is not its tier copy's"));
        }
        // Events first: from here on, any access is a recall.
        self.manage(h, t, State::Migrated)?;
        r.state = State::Migrated;
        self.put_record(h, t, &r)?;
        self.dm.dm_punch_hole(self.sid, h, t, 0, 0)?;
        info!(ino = h.ino()?, size = r.size, "released");
        Ok(())
    }

    /// Premigrate, then release.
    pub fn migrate(&self, h: &DmHandle, t: DmToken) -> HsmResult<()> {
        self.premigrate(h, t)?;
        self.release(h, t)
    }

    /// Brings a migrated file's data back from the tier, checked against its
    /// record; the file is premigrated again (the copy is still good). A
    /// file that is not migrated needs nothing.
    pub fn recall(&self, h: &DmHandle, t: DmToken) -> HsmResult<()> {
        self.excl(h, t)?;
        let Some(mut r) = self.record(h, t)? else { return Ok(()) };
        if r.state != State::Migrated {
            return Ok(());
        }
        let ino = h.ino()?;
        let started = std::time::Instant::now();
        if let Err(e) = self.copy_in(h, t, &r) {
            // The stub stays as it was: whatever came in goes out again.
            if let Err(p) = self.dm.dm_punch_hole(self.sid, h, t, 0, 0) {
                warn!(ino, error = %p, "punching out a failed recall's data");
            }
            return Err(e);
        }
        r.state = State::Premigrated;
        self.put_record(h, t, &r)?;
        self.manage(h, t, State::Premigrated)?;
        info!(ino, size = r.size, ms = started.elapsed().as_millis() as u64, "recalled");
        Ok(())
    }

    /// A write or truncate is coming: the data must be here (recalled if
    /// migrated), and the tier copy no longer matches it.
    pub fn dirty(&self, h: &DmHandle, t: DmToken) -> HsmResult<()> {
        self.recall(h, t)?;
        let Some(mut r) = self.record(h, t)? else { return Ok(()) };
        if r.state != State::Stale {
            r.state = State::Stale;
            self.put_record(h, t, &r)?;
            self.manage(h, t, State::Stale)?;
            info!(ino = h.ino()?, "tier copy stale");
        }
        Ok(())
    }
}
