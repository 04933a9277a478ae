//! Byte-range locks on one file: POSIX record locks (`F_SETLK`,
//! `F_SETLKW`, `F_GETLK`), which the file-system manager keeps for the
//! whole cluster, and each node mirrors for the locks it holds so it can
//! declare them again to a restarted manager.
//!
//! `flock` comes through FUSE as a whole-file lock of the open file's own
//! owner (the kernel's FUSE emulates flock with POSIX locks, and `fuser`
//! does not pass the flag that would tell them apart), so flock and
//! record locks share one lock space here, as on NFS.
//!
//! Ranges are inclusive, `end` = [`EOF`] meaning "to the end of the file,
//! however long", as FUSE sends them.

use serde::{Deserialize, Serialize};

/// "To the end of the file": the kernel's `OFFSET_MAX`.
pub const EOF: u64 = i64::MAX as u64;

/// A lock's mode; `F_UNLCK` is a request, never a held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockType {
    Read,
    Write,
}

impl LockType {
    /// From `F_RDLCK` / `F_WRLCK`; `None` for `F_UNLCK`; an error for anything else.
    pub fn from_fcntl(typ: i32) -> Result<Option<LockType>, i32> {
        match typ {
            libc::F_RDLCK => Ok(Some(LockType::Read)),
            libc::F_WRLCK => Ok(Some(LockType::Write)),
            libc::F_UNLCK => Ok(None),
            _ => Err(libc::EINVAL),
        }
    }

    pub fn to_fcntl(self) -> i32 {
        match self {
            LockType::Read => libc::F_RDLCK,
            LockType::Write => libc::F_WRLCK,
        }
    }
}

/// One held lock: an owner's range, its mode, and the process that took it
/// (what `F_GETLK` reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub typ: LockType,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

impl Lock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// The locks held on one file, by owner `K` (the manager: node connection
/// and the kernel's lock owner; a node: the lock owner alone).
#[derive(Debug, Clone)]
pub struct LockSet<K> {
    held: Vec<(K, Lock)>,
}

impl<K> Default for LockSet<K> {
    fn default() -> Self {
        LockSet { held: Vec::new() }
    }
}

impl<K: Copy + Eq> LockSet<K> {
    /// The first lock of another owner that a `typ` lock on
    /// `start..=end` by `who` would conflict with.
    pub fn conflict(&self, who: K, typ: LockType, start: u64, end: u64) -> Option<(K, Lock)> {
        self.held
            .iter()
            .find(|(k, l)| *k != who && l.overlaps(start, end) && (typ == LockType::Write || l.typ == LockType::Write))
            .copied()
    }

    /// Sets (`Some`) or removes (`None`) `who`'s lock on `start..=end` with
    /// POSIX semantics: the new range replaces whatever `who` held there
    /// (splitting a larger lock), and touching locks of the same mode merge.
    /// Conflicts are the caller's to check first.
    pub fn set(&mut self, who: K, typ: Option<LockType>, start: u64, end: u64, pid: u32) {
        debug_assert!(start <= end);
        let mut keep = Vec::with_capacity(self.held.len() + 2);
        let (mut start, mut end) = (start, end);
        for (k, l) in self.held.drain(..) {
            if k != who {
                keep.push((k, l));
                continue;
            }
            let touches =
                l.overlaps(start, end) || l.end.checked_add(1) == Some(start) || end.checked_add(1) == Some(l.start);
            if typ == Some(l.typ) && touches {
                // Same mode, touching or overlapping: one lock.
                start = start.min(l.start);
                end = end.max(l.end);
                continue;
            }
            if !l.overlaps(start, end) {
                keep.push((k, l));
                continue;
            }
            // The part of the old lock outside the new range survives.
            if l.start < start {
                keep.push((k, Lock { end: start - 1, ..l }));
            }
            if l.end > end {
                keep.push((k, Lock { start: end + 1, ..l }));
            }
        }
        if let Some(typ) = typ {
            keep.push((who, Lock { typ, start, end, pid }));
        }
        self.held = keep;
    }

    /// Drops every lock of the owners `gone` says are gone.
    pub fn retain_owners(&mut self, mut keep: impl FnMut(K) -> bool) {
        self.held.retain(|(k, _)| keep(*k));
    }

    pub fn holds_any(&self, who: K) -> bool {
        self.held.iter().any(|(k, _)| *k == who)
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(K, Lock)> {
        self.held.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::LockType::{Read, Write};
    use super::*;

    fn ranges(s: &LockSet<u8>, who: u8) -> Vec<(LockType, u64, u64)> {
        let mut v: Vec<_> = s.iter().filter(|(k, _)| *k == who).map(|(_, l)| (l.typ, l.start, l.end)).collect();
        v.sort_by_key(|r| r.1);
        v
    }

    #[test]
    fn readers_share_writers_exclude() {
        let mut s = LockSet::default();
        s.set(1u8, Some(Read), 0, 99, 10);
        assert_eq!(s.conflict(2, Read, 50, 60), None);
        assert_eq!(s.conflict(2, Write, 50, 60).map(|c| (c.0, c.1.pid)), Some((1, 10)));
        assert_eq!(s.conflict(2, Write, 100, 200), None, "past the range");
        assert_eq!(s.conflict(1, Write, 0, 99), None, "an owner never conflicts with itself");
        s.set(2, Some(Read), 50, 150, 20);
        assert!(s.conflict(3, Write, 120, 120).is_some());
    }

    #[test]
    fn a_new_range_splits_merges_and_converts_the_owners_own_locks() {
        let mut s = LockSet::default();
        s.set(1u8, Some(Write), 0, EOF, 1);
        s.set(1, None, 100, 199, 1);
        assert_eq!(ranges(&s, 1), [(Write, 0, 99), (Write, 200, EOF)], "unlock in the middle splits");
        s.set(1, Some(Read), 50, 250, 1);
        assert_eq!(ranges(&s, 1), [(Write, 0, 49), (Read, 50, 250), (Write, 251, EOF)], "converted in place");
        s.set(1, Some(Write), 50, 250, 1);
        assert_eq!(ranges(&s, 1), [(Write, 0, EOF)], "same mode touching: one lock");
        s.set(1, None, 0, EOF, 1);
        assert!(s.is_empty());
    }

    #[test]
    fn owners_leave_with_their_locks_only() {
        let mut s = LockSet::default();
        s.set(1u8, Some(Read), 0, 9, 1);
        s.set(2, Some(Read), 0, 9, 2);
        s.retain_owners(|k| k != 1);
        assert!(!s.holds_any(1) && s.holds_any(2));
        assert!(s.conflict(3, Write, 5, 5).is_some());
    }

    #[test]
    fn fcntl_types_map_both_ways() {
        assert_eq!(LockType::from_fcntl(libc::F_WRLCK), Ok(Some(Write)));
        assert_eq!(LockType::from_fcntl(libc::F_UNLCK), Ok(None));
        assert_eq!(LockType::from_fcntl(42), Err(libc::EINVAL));
        assert_eq!(Read.to_fcntl(), libc::F_RDLCK);
    }
}
