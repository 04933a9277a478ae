//! Persistent reservations of one namespace (NVMe Base 2.0, 8.19).
//!
//! Registrants are hosts, keyed by their 128-bit host identifier: every
//! controller of one host shares its registration, as NVMe-oF requires.
//! Commands are checked under the namespace's reservation read lock and
//! reservation changes take the write lock, so once a preempt returns,
//! no command of a preempted host is still executing: that is what makes
//! "preempt and abort" a fence.

use nvme_wire::resv::{action, ResvType};
use nvme_wire::status::Status;

pub type HostId = [u8; 16];

#[derive(Debug, Clone)]
pub struct Registrant {
    pub hostid: HostId,
    pub key: u64,
    /// Controller that registered, for the Reservation Report.
    pub cntlid: u16,
}

#[derive(Debug, Default, Clone)]
pub struct ResvState {
    pub generation: u32,
    pub registrants: Vec<Registrant>,
    /// Current reservation: its type and, unless an "all registrants"
    /// type, the holder.
    pub reservation: Option<(ResvType, HostId)>,
    /// Persist Through Power Loss is active (a host registered with
    /// CPTPL = 3 and the namespace has a PTPL file): every change is saved
    /// before it is acknowledged, and a restarted target loads it.
    pub ptpl: bool,
}

/// The first line of a PTPL file, with its format version.
const PTPL_MAGIC: &str = "tidepool-ptpl 1";

fn hex16(h: &HostId) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex16(s: &str) -> Option<HostId> {
    let mut h = [0u8; 16];
    if s.len() != 32 {
        return None;
    }
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(h)
}

/// What a reservation change did, so the target can notify other hosts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Hosts whose registration was removed by another host's preempt.
    pub preempted: Vec<HostId>,
    /// The reservation was released or cleared while others were registered.
    pub released_for: Vec<HostId>,
    /// Commands of `preempted` hosts must be aborted.
    pub abort: bool,
}

impl ResvState {
    /// The persisted form: text, one item a line, so an operator can read
    /// what a restart will bring back.
    pub fn to_ptpl_text(&self) -> String {
        let mut t = format!("{PTPL_MAGIC}\ngeneration {}\n", self.generation);
        for r in &self.registrants {
            t += &format!("registrant {} {:016x}\n", hex16(&r.hostid), r.key);
        }
        if let Some((ty, holder)) = self.reservation {
            t += &format!("reservation {} {}\n", ty as u8, hex16(&holder));
        }
        t
    }

    /// Reads [`ResvState::to_ptpl_text`]'s form back (persistence active).
    /// Registrants come back with no controller (cntlid 0xffff) until one
    /// of their host's controllers connects.
    pub fn from_ptpl_text(text: &str) -> Result<ResvState, String> {
        let mut lines = text.lines();
        if lines.next() != Some(PTPL_MAGIC) {
            return Err(format!("not a PTPL file (no '{PTPL_MAGIC}' line)"));
        }
        let mut st = ResvState { ptpl: true, ..Default::default() };
        for (n, l) in lines.enumerate() {
            let bad = || format!("line {}: cannot read '{l}'", n + 2);
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [] => {}
                ["generation", g] => st.generation = g.parse().map_err(|_| bad())?,
                ["registrant", h, k] => st.registrants.push(Registrant {
                    hostid: unhex16(h).ok_or_else(bad)?,
                    key: u64::from_str_radix(k, 16).map_err(|_| bad())?,
                    cntlid: 0xffff,
                }),
                ["reservation", t, h] => {
                    let t = t.parse::<u8>().ok().and_then(ResvType::from_u8).ok_or_else(bad)?;
                    st.reservation = Some((t, unhex16(h).ok_or_else(bad)?));
                }
                _ => return Err(bad()),
            }
        }
        if let Some((t, h)) = st.reservation {
            if !t.all_registrants() && !st.is_registered(&h) {
                return Err("the reservation's holder is not registered".into());
            }
        }
        Ok(st)
    }

    fn find(&self, h: &HostId) -> Option<usize> {
        self.registrants.iter().position(|r| &r.hostid == h)
    }

    pub fn is_registered(&self, h: &HostId) -> bool {
        self.find(h).is_some()
    }

    pub fn is_holder(&self, h: &HostId) -> bool {
        match self.reservation {
            Some((t, _)) if t.all_registrants() => self.is_registered(h),
            Some((_, holder)) => &holder == h,
            None => false,
        }
    }

    /// May host `h` run a command that reads (`write == false`) or writes?
    pub fn check_access(&self, h: &HostId, write: bool) -> Result<(), Status> {
        let Some((t, _)) = self.reservation else { return Ok(()) };
        if self.is_holder(h) || (t.registrants_allowed() && self.is_registered(h)) {
            return Ok(());
        }
        if write || t.blocks_reads() {
            Err(Status::RESERVATION_CONFLICT)
        } else {
            Ok(())
        }
    }

    fn key_matches(&self, h: &HostId, key: u64, iekey: bool) -> Result<usize, Status> {
        let i = self.find(h).ok_or(Status::RESERVATION_CONFLICT)?;
        if iekey || self.registrants[i].key == key {
            Ok(i)
        } else {
            Err(Status::RESERVATION_CONFLICT)
        }
    }

    fn drop_reservation_if_holder_left(&mut self, h: &HostId) -> bool {
        match self.reservation {
            Some((t, holder)) if !t.all_registrants() && &holder == h => {
                self.reservation = None;
                true
            }
            Some((t, _)) if t.all_registrants() && self.registrants.is_empty() => {
                self.reservation = None;
                true
            }
            _ => false,
        }
    }

    pub fn register(
        &mut self,
        h: HostId,
        cntlid: u16,
        rrega: u8,
        iekey: bool,
        crkey: u64,
        nrkey: u64,
    ) -> Result<Effects, Status> {
        let mut fx = Effects::default();
        match rrega {
            action::REGISTER => match self.find(&h) {
                // Registering again with the same key is a no-op success.
                Some(i) if self.registrants[i].key == nrkey => return Ok(fx),
                Some(_) => return Err(Status::RESERVATION_CONFLICT),
                None => self.registrants.push(Registrant { hostid: h, key: nrkey, cntlid }),
            },
            action::UNREGISTER => {
                let i = self.key_matches(&h, crkey, iekey)?;
                self.registrants.remove(i);
                let was_holder = self.drop_reservation_if_holder_left(&h);
                if was_holder {
                    fx.released_for = self.registrants.iter().map(|r| r.hostid).collect();
                }
            }
            action::REPLACE => {
                let i = self.key_matches(&h, crkey, iekey)?;
                self.registrants[i].key = nrkey;
            }
            _ => return Err(Status::INVALID_FIELD),
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(fx)
    }

    pub fn acquire(
        &mut self,
        h: HostId,
        racqa: u8,
        iekey: bool,
        rtype: u8,
        crkey: u64,
        prkey: u64,
    ) -> Result<Effects, Status> {
        let t = ResvType::from_u8(rtype).ok_or(Status::INVALID_FIELD)?;
        self.key_matches(&h, crkey, iekey)?;
        let mut fx = Effects::default();
        match racqa {
            action::ACQUIRE => match self.reservation {
                None => self.reservation = Some((t, h)),
                Some((cur, _)) if self.is_holder(&h) && cur == t => {}
                Some(_) => return Err(Status::RESERVATION_CONFLICT),
            },
            action::PREEMPT | action::PREEMPT_ABORT => {
                fx.abort = racqa == action::PREEMPT_ABORT;
                match self.reservation {
                    None => {
                        if prkey == 0 {
                            return Err(Status::INVALID_FIELD);
                        }
                        fx.preempted = self.remove_by_key(prkey, &h);
                    }
                    Some((cur, _)) if cur.all_registrants() => {
                        if prkey == 0 {
                            // Every other registrant goes; the issuer takes a new reservation.
                            fx.preempted = self.remove_all_but(&h);
                            self.reservation = Some((t, h));
                        } else {
                            fx.preempted = self.remove_by_key(prkey, &h);
                        }
                    }
                    Some((_, holder)) => {
                        let holder_key = self.find(&holder).map(|i| self.registrants[i].key);
                        if holder_key == Some(prkey) {
                            fx.preempted = self.remove_by_key(prkey, &h);
                            self.reservation = Some((t, h));
                        } else {
                            if prkey == 0 {
                                return Err(Status::INVALID_FIELD);
                            }
                            fx.preempted = self.remove_by_key(prkey, &h);
                        }
                    }
                }
                self.generation = self.generation.wrapping_add(1);
            }
            _ => return Err(Status::INVALID_FIELD),
        }
        Ok(fx)
    }

    pub fn release(&mut self, h: HostId, rrela: u8, iekey: bool, rtype: u8, crkey: u64) -> Result<Effects, Status> {
        self.key_matches(&h, crkey, iekey)?;
        let mut fx = Effects::default();
        match rrela {
            action::RELEASE => {
                let Some((cur, _)) = self.reservation else { return Ok(fx) };
                if !self.is_holder(&h) {
                    return Ok(fx);
                }
                if cur as u8 != rtype {
                    return Err(Status::INVALID_FIELD);
                }
                self.reservation = None;
                if cur.registrants_allowed() {
                    fx.released_for = self.registrants.iter().filter(|r| r.hostid != h).map(|r| r.hostid).collect();
                }
            }
            action::CLEAR => {
                fx.preempted = self.registrants.iter().filter(|r| r.hostid != h).map(|r| r.hostid).collect();
                self.registrants.clear();
                self.reservation = None;
                self.generation = self.generation.wrapping_add(1);
            }
            _ => return Err(Status::INVALID_FIELD),
        }
        Ok(fx)
    }

    fn remove_by_key(&mut self, key: u64, keep: &HostId) -> Vec<HostId> {
        let gone: Vec<HostId> =
            self.registrants.iter().filter(|r| r.key == key && &r.hostid != keep).map(|r| r.hostid).collect();
        self.registrants.retain(|r| !gone.contains(&r.hostid));
        gone
    }

    fn remove_all_but(&mut self, keep: &HostId) -> Vec<HostId> {
        let gone: Vec<HostId> = self.registrants.iter().filter(|r| &r.hostid != keep).map(|r| r.hostid).collect();
        self.registrants.retain(|r| &r.hostid == keep);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const A: HostId = [1; 16];
    const B: HostId = [2; 16];
    const C: HostId = [3; 16];
    const WE: u8 = ResvType::WriteExclusive as u8;
    const EA: u8 = ResvType::ExclusiveAccess as u8;
    const WERO: u8 = ResvType::WriteExclusiveRegOnly as u8;
    const EAAR: u8 = ResvType::ExclusiveAccessAllRegs as u8;

    #[test]
    fn the_ptpl_text_round_trips_and_bad_files_are_refused() {
        let mut s = ResvState::default();
        reg(&mut s, A, 0xa);
        reg(&mut s, B, 0xbbbb_0000_0000_0001);
        s.acquire(A, action::ACQUIRE, false, WERO, 0xa, 0).unwrap();
        let back = ResvState::from_ptpl_text(&s.to_ptpl_text()).unwrap();
        assert!(back.ptpl);
        assert_eq!(back.generation, s.generation);
        assert_eq!(back.reservation, s.reservation);
        let keys = |s: &ResvState| s.registrants.iter().map(|r| (r.hostid, r.key)).collect::<Vec<_>>();
        assert_eq!(keys(&back), keys(&s));
        assert_eq!(back.check_access(&C, true), Err(Status::RESERVATION_CONFLICT), "the fence holds after a restart");
        assert!(back.check_access(&B, true).is_ok());
        for bad in [
            "",
            "tidepool-ptpl 2\n",
            "tidepool-ptpl 1\ngeneration x\n",
            "tidepool-ptpl 1\nregistrant 0102 0a\n",
            "tidepool-ptpl 1\nreservation 9 01010101010101010101010101010101\n",
            "tidepool-ptpl 1\nreservation 1 01010101010101010101010101010101\n",
            "tidepool-ptpl 1\nsomething else\n",
        ] {
            assert!(ResvState::from_ptpl_text(bad).is_err(), "{bad:?} was read");
        }
    }

    fn reg(s: &mut ResvState, h: HostId, key: u64) {
        s.register(h, 1, action::REGISTER, false, 0, key).unwrap();
    }

    #[test]
    fn write_exclusive_blocks_writes_of_others_only() {
        let mut s = ResvState::default();
        reg(&mut s, A, 0xa);
        reg(&mut s, B, 0xb);
        assert_eq!(s.generation, 2);
        s.acquire(A, action::ACQUIRE, false, WE, 0xa, 0).unwrap();
        assert!(s.check_access(&A, true).is_ok());
        assert_eq!(s.check_access(&B, true), Err(Status::RESERVATION_CONFLICT));
        assert!(s.check_access(&B, false).is_ok());
        assert_eq!(s.check_access(&C, true), Err(Status::RESERVATION_CONFLICT));
        // B cannot acquire while A holds it.
        assert_eq!(s.acquire(B, action::ACQUIRE, false, WE, 0xb, 0).unwrap_err(), Status::RESERVATION_CONFLICT);
        // A wrong key is a conflict, an unregistered host too.
        assert_eq!(s.acquire(A, action::ACQUIRE, false, WE, 0xdead, 0).unwrap_err(), Status::RESERVATION_CONFLICT);
        assert_eq!(s.acquire(C, action::ACQUIRE, false, WE, 0, 0).unwrap_err(), Status::RESERVATION_CONFLICT);
    }

    #[test]
    fn exclusive_access_blocks_reads_and_registrants_only_admits_registrants() {
        let mut s = ResvState::default();
        reg(&mut s, A, 1);
        reg(&mut s, B, 2);
        s.acquire(A, action::ACQUIRE, false, EA, 1, 0).unwrap();
        assert!(s.check_access(&B, false).is_err());
        s.release(A, action::RELEASE, false, EA, 1).unwrap();
        s.acquire(A, action::ACQUIRE, false, WERO, 1, 0).unwrap();
        assert!(s.check_access(&B, true).is_ok(), "registrant may write under WE-RegOnly");
        assert!(s.check_access(&C, true).is_err());
        assert!(s.check_access(&C, false).is_ok());
        // Release with the wrong type fails; by a non-holder is a silent no-op.
        assert_eq!(s.release(A, action::RELEASE, false, WE, 1).unwrap_err(), Status::INVALID_FIELD);
        s.release(B, action::RELEASE, false, WERO, 2).unwrap();
        assert!(s.reservation.is_some());
    }

    #[test]
    fn preempt_and_abort_fences_the_old_holder() {
        let mut s = ResvState::default();
        reg(&mut s, A, 1);
        reg(&mut s, B, 2);
        s.acquire(A, action::ACQUIRE, false, WE, 1, 0).unwrap();
        let fx = s.acquire(B, action::PREEMPT_ABORT, false, EA, 2, 1).unwrap();
        assert_eq!(fx.preempted, vec![A]);
        assert!(fx.abort);
        assert!(s.is_holder(&B));
        assert!(!s.is_registered(&A));
        assert!(s.check_access(&A, false).is_err(), "the fenced host can no longer read");
        // A's old key no longer works.
        assert!(s.register(A, 1, action::UNREGISTER, false, 1, 0).is_err());
    }

    #[test]
    fn all_registrants_type_and_unregister_of_last() {
        let mut s = ResvState::default();
        reg(&mut s, A, 1);
        reg(&mut s, B, 2);
        s.acquire(A, action::ACQUIRE, false, EAAR, 1, 0).unwrap();
        assert!(s.is_holder(&B), "every registrant holds an all-registrants reservation");
        assert!(s.check_access(&C, false).is_err());
        s.register(A, 1, action::UNREGISTER, false, 1, 0).unwrap();
        assert!(s.reservation.is_some(), "B still holds it");
        s.register(B, 1, action::UNREGISTER, false, 2, 0).unwrap();
        assert!(s.reservation.is_none());
    }

    #[test]
    fn replace_ignore_key_and_clear() {
        let mut s = ResvState::default();
        reg(&mut s, A, 1);
        assert_eq!(s.register(A, 1, action::REGISTER, false, 0, 9).unwrap_err(), Status::RESERVATION_CONFLICT);
        s.register(A, 1, action::REPLACE, true, 0xbad, 7).unwrap();
        assert_eq!(s.registrants[0].key, 7);
        reg(&mut s, B, 8);
        s.acquire(A, action::ACQUIRE, false, WE, 7, 0).unwrap();
        let fx = s.release(B, action::CLEAR, false, 0, 8).unwrap();
        assert_eq!(fx.preempted, vec![A]);
        assert!(s.registrants.is_empty() && s.reservation.is_none());
        assert_eq!(s.register(A, 1, 5, false, 0, 1).unwrap_err(), Status::INVALID_FIELD);
    }
}
