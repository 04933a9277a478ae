//! The file-system manager's token table, without I/O, threads or clocks
//! of its own: who holds which inode's token in which [`Mode`], who is
//! being asked to give one back, and whose turn it is. The manager
//! ([`super::manager`]) drives it from its connection threads and does
//! what each [`Step`] says (send a revoke, drop a connection, wait); the
//! token simulation (`tests/token_sim.rs`) drives the same table from a
//! seeded scheduler.
//!
//! - Per inode, requests take turns (a ticket queue): a revoke is always
//!   sent after the grant it revokes, and nobody starves.
//! - A claim that has its turn revokes every conflicting token (except its
//!   own requester's, where it keeps it) and waits for them to come back.
//!   A holder that neither gives its token back nor says a DM right holds
//!   it ([`Tokens::held`]) within the revoke timeout is expelled: taken
//!   out of the table at once, and nothing it says afterwards counts.
//! - A manager that takes over from one that did not stop cleanly starts in
//!   recovery ([`Tokens::recovering`]): it grants nothing until the grace
//!   ends, so the nodes first give back the sizes they set under the old
//!   manager's tokens ([`Tokens::may_set_size`]) and nobody reads past them.
//!   Only sizes set under the last manager's tokens count, and not those of
//!   connections it voided (took tokens from by force), which it recorded
//!   on the volume before anyone else could change the file.
//! - Sizes and mtimes set under an exclusive token count only while that
//!   token is held: a node that lost it (expelled, or its connection gone)
//!   cannot write a stale size over a newer change.

use super::journal::Prior;
use super::rpc::Mode;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A client connection of the manager.
pub type Conn = u64;

#[derive(Default)]
pub struct Tokens {
    inodes: HashMap<u64, Tok>,
    /// Until then nothing is granted (a takeover's recovery).
    recovery_until: Option<Instant>,
    /// Whose sizes are taken back in recovery: the last manager's.
    prior: Prior,
}

/// Which token a size was set under: the manager incarnation that granted
/// it, and that manager's connection id (what its `Hello` said).
pub type Under = (u64, Conn);

#[derive(Default)]
struct Tok {
    holders: HashMap<Conn, Mode>,
    revoking: HashSet<Conn>,
    /// Holders being revoked that last said, then, that a DM right holds
    /// their token: they are waited for, not expelled.
    held: HashMap<Conn, Instant>,
    next: u64,
    serving: u64,
}

/// One request's place in an inode's line, and what it needs there.
#[derive(Debug)]
pub struct Claim {
    pub ino: u64,
    mode: Mode,
    keep: Option<Conn>,
    ticket: u64,
    /// When the claim got its turn: the revoke timeout runs from then.
    since: Option<Instant>,
}

/// What the driver of a [`Claim`] does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The claim has its turn and nothing conflicts: go on, then
    /// [`Tokens::finish`] it.
    Clear,
    /// Send these holders a revoke, then step again.
    Revoke(Vec<Conn>),
    /// These holders did not answer in time and are out of the table:
    /// drop their connections, ignore what they still send, step again.
    Expel(Vec<Conn>),
    /// Wait for a change to the table (`None`), or until then at most.
    Wait(Option<Instant>),
}

impl Tokens {
    pub fn new() -> Tokens {
        Tokens::default()
    }

    /// A table that grants nothing before `until`: the nodes holding
    /// tokens of `prior`, a manager that did not take them all back, give
    /// back first the sizes they set under them.
    pub fn recovering(until: Instant, prior: Prior) -> Tokens {
        Tokens { recovery_until: Some(until), prior, ..Tokens::default() }
    }

    /// Whether the recovery grace is still on at `now`.
    pub fn in_recovery(&self, now: Instant) -> bool {
        self.recovery_until.is_some_and(|u| now < u)
    }

    /// Takes a place in `ino`'s line for a token in `mode`; `keep`: the
    /// requester, whose own token is not revoked.
    pub fn claim(&mut self, ino: u64, mode: Mode, keep: Option<Conn>) -> Claim {
        let tok = self.inodes.entry(ino).or_default();
        let ticket = tok.next;
        tok.next += 1;
        Claim { ino, mode, keep, ticket, since: None }
    }

    /// [`claim`](Self::claim), only if nobody has or waits for a turn on
    /// `ino`; the claim has its turn at once.
    pub fn try_claim(&mut self, ino: u64) -> Option<Claim> {
        let tok = self.inodes.entry(ino).or_default();
        if tok.serving != tok.next {
            return None;
        }
        Some(self.claim(ino, Mode::None, None))
    }

    /// The next thing to do for `c` at `now`, given the revoke timeout.
    pub fn step(&mut self, c: &mut Claim, timeout: Duration, now: Instant) -> Step {
        if let Some(until) = self.recovery_until {
            if now < until {
                return Step::Wait(Some(until));
            }
            self.recovery_until = None;
        }
        let tok = self.inodes.entry(c.ino).or_default();
        if tok.serving != c.ticket {
            return Step::Wait(None);
        }
        let since = *c.since.get_or_insert(now);
        let conflicts: Vec<Conn> =
            tok.holders.iter().filter(|(h, m)| Some(**h) != c.keep && c.mode.conflicts(**m)).map(|(h, _)| *h).collect();
        if conflicts.is_empty() {
            return Step::Clear;
        }
        let fresh: Vec<Conn> = conflicts.iter().copied().filter(|h| tok.revoking.insert(*h)).collect();
        if !fresh.is_empty() {
            return Step::Revoke(fresh);
        }
        // Each holder's time runs from the turn or its last note.
        let due = |h: &Conn| tok.held.get(h).copied().unwrap_or(since).max(since) + timeout;
        let late: Vec<Conn> = conflicts.iter().copied().filter(|h| now >= due(h)).collect();
        if !late.is_empty() {
            for h in &late {
                tok.holders.remove(h);
                tok.revoking.remove(h);
                tok.held.remove(h);
            }
            return Step::Expel(late);
        }
        Step::Wait(conflicts.iter().map(due).min())
    }

    /// `conn` holds `ino` in `mode` at least. Only for a connection still
    /// taken in: one whose end was already handled ([`drop_conn`](Self::drop_conn))
    /// would keep a token nobody can revoke.
    pub fn grant(&mut self, ino: u64, conn: Conn, mode: Mode) {
        let h = self.inodes.entry(ino).or_default().holders.entry(conn).or_insert(Mode::None);
        *h = (*h).max(mode);
    }

    /// Ends `c`'s turn.
    pub fn finish(&mut self, c: Claim) {
        if let Some(tok) = self.inodes.get_mut(&c.ino) {
            // A claim ends only after its turn came (the driver steps it to
            // `Clear` first); otherwise the line would stand still.
            debug_assert_eq!(tok.serving, c.ticket, "a claim finished out of turn");
            if tok.serving == c.ticket {
                tok.serving += 1;
            }
            if tok.serving == tok.next && tok.holders.is_empty() {
                self.inodes.remove(&c.ino);
            }
        }
    }

    /// The mode `conn` holds `ino` in, if any.
    pub fn mode(&self, ino: u64, conn: Conn) -> Option<Mode> {
        self.inodes.get(&ino).and_then(|t| t.holders.get(&conn).copied())
    }

    /// Whether `conn` may record a size and mtime for `ino`: it holds the
    /// exclusive token; or, during the recovery grace, the size was set
    /// `under` a token of the last manager on a connection it did not void
    /// (one whose tokens it took back by force: others may have changed the
    /// file since, and the size would undo that).
    pub fn may_set_size(&self, ino: u64, conn: Conn, under: Option<Under>, now: Instant) -> bool {
        if self.mode(ino, conn) == Some(Mode::Write) {
            return true;
        }
        let Some((incarnation, old)) = under else { return false };
        self.in_recovery(now)
            && incarnation == self.prior.incarnation
            && !self.prior.all_void
            && !self.prior.void.contains(&old)
    }

    /// `conn`'s exclusive token on `ino` becomes a shared one.
    pub fn downgrade(&mut self, ino: u64, conn: Conn) {
        if let Some(h) = self.inodes.get_mut(&ino).and_then(|t| t.holders.get_mut(&conn)) {
            if *h == Mode::Write {
                *h = Mode::Read;
            }
        }
    }

    /// `conn` gave its token on `ino` back; what it held.
    pub fn give_back(&mut self, ino: u64, conn: Conn) -> Option<Mode> {
        let tok = self.inodes.get_mut(&ino)?;
        tok.revoking.remove(&conn);
        tok.held.remove(&conn);
        let had = tok.holders.remove(&conn);
        if tok.serving == tok.next && tok.holders.is_empty() {
            self.inodes.remove(&ino);
        }
        had
    }

    /// `conn`, asked to give `ino` back, says at `now` that a DM right
    /// holds it: its time to answer starts again.
    pub fn held(&mut self, ino: u64, conn: Conn, now: Instant) {
        if let Some(tok) = self.inodes.get_mut(&ino) {
            if tok.revoking.contains(&conn) {
                tok.held.insert(conn, now);
            }
        }
    }

    /// `conn` is gone: every token it held with it.
    pub fn drop_conn(&mut self, conn: Conn) {
        self.inodes.retain(|_, tok| {
            tok.holders.remove(&conn);
            tok.revoking.remove(&conn);
            tok.held.remove(&conn);
            tok.serving != tok.next || !tok.holders.is_empty()
        });
    }

    /// Every (inode, connection, mode) held, for checks.
    pub fn holders(&self) -> impl Iterator<Item = (u64, Conn, Mode)> + '_ {
        self.inodes.iter().flat_map(|(i, t)| t.holders.iter().map(move |(c, m)| (*i, *c, *m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn a_conflicting_holder_is_revoked_once_and_the_claim_clears_when_it_gives_back() {
        let now = Instant::now();
        let mut t = Tokens::new();
        t.grant(7, 1, Mode::Write);
        let mut c = t.claim(7, Mode::Read, Some(2));
        assert_eq!(t.step(&mut c, T, now), Step::Revoke(vec![1]));
        assert_eq!(t.step(&mut c, T, now), Step::Wait(Some(now + T)), "revoked once, then waited for");
        assert_eq!(t.give_back(7, 1), Some(Mode::Write));
        assert_eq!(t.step(&mut c, T, now), Step::Clear);
        t.grant(7, 2, Mode::Read);
        t.finish(c);
        assert_eq!(t.mode(7, 2), Some(Mode::Read));
        assert_eq!(t.give_back(7, 1), None, "what is given back twice counts once");
    }

    #[test]
    fn turns_are_kept_in_order() {
        let now = Instant::now();
        let mut t = Tokens::new();
        let mut a = t.claim(1, Mode::Write, Some(1));
        let mut b = t.claim(1, Mode::Write, Some(2));
        assert_eq!(t.step(&mut b, T, now), Step::Wait(None), "the second waits for the first");
        assert!(t.try_claim(1).is_none(), "nobody jumps the line");
        assert_eq!(t.step(&mut a, T, now), Step::Clear);
        t.grant(1, 1, Mode::Write);
        t.finish(a);
        assert_eq!(t.step(&mut b, T, now), Step::Revoke(vec![1]));
    }

    #[test]
    fn a_silent_holder_is_expelled_and_a_held_note_buys_time() {
        let now = Instant::now();
        let mut t = Tokens::new();
        t.grant(3, 1, Mode::Write);
        t.grant(3, 2, Mode::Read);
        let mut c = t.claim(3, Mode::Write, Some(9));
        let mut sent = match t.step(&mut c, T, now) {
            Step::Revoke(v) => v,
            s => panic!("{s:?}"),
        };
        sent.sort();
        assert_eq!(sent, [1, 2]);
        t.held(3, 2, now + T / 2);
        assert_eq!(t.step(&mut c, T, now + T), Step::Expel(vec![1]));
        assert!(
            t.mode(3, 1).is_none() && !t.may_set_size(3, 1, None, now + T),
            "an expelled holder's size counts no more"
        );
        assert_eq!(t.step(&mut c, T, now + T), Step::Wait(Some(now + T / 2 + T)));
        assert_eq!(t.step(&mut c, T, now + T / 2 + T), Step::Expel(vec![2]));
        assert_eq!(t.step(&mut c, T, now + T / 2 + T), Step::Clear);
    }

    #[test]
    fn recovery_grants_nothing_but_takes_sizes_back_until_the_grace_ends() {
        let now = Instant::now();
        let g = Duration::from_secs(1);
        let mut t = Tokens::recovering(now + g, Prior { incarnation: 4, void: vec![7], all_void: false });
        let mut c = t.claim(5, Mode::Read, Some(1));
        assert!(t.may_set_size(5, 2, Some((4, 3)), now), "a size set under the last manager's token");
        assert!(!t.may_set_size(5, 2, Some((4, 7)), now), "one under a token it took back by force");
        assert!(!t.may_set_size(5, 2, Some((3, 3)), now), "one under an older manager's token");
        assert!(!t.may_set_size(5, 2, None, now), "one under no token");
        assert_eq!(t.step(&mut c, T, now), Step::Wait(Some(now + g)));
        assert_eq!(t.step(&mut c, T, now + g), Step::Clear);
        assert!(!t.may_set_size(5, 2, Some((4, 3)), now + g), "after the grace only a holder sets sizes");
    }

    #[test]
    fn a_departed_connection_leaves_nothing_behind() {
        let mut t = Tokens::new();
        t.grant(1, 4, Mode::Write);
        t.grant(2, 4, Mode::Read);
        t.grant(2, 5, Mode::Read);
        t.drop_conn(4);
        let left: Vec<_> = t.holders().collect();
        assert_eq!(left, [(2, 5, Mode::Read)]);
    }
}
