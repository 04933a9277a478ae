//! One holder per role (the session manager, each file system's manager),
//! elected through one key, `roles/<role>`, created on the candidate's
//! membership lease: whoever creates it holds the role until the key goes
//! (it resigns, or its lease expires). A term's epoch is the key's create
//! revision, so every later term has a larger epoch, and anything stamped
//! with an older one comes from a holder that lost the role.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Kv, LeaseId, Result, Rev, Store};

/// A term of a role: who holds it, since which revision, and what the
/// holder published (its service address, for instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub holder: u32,
    pub epoch: Rev,
    pub value: Vec<u8>,
    /// The revision of the key's last change (for resigning).
    mod_rev: Rev,
    lease: LeaseId,
}

/// The current holder of a role, as [`Election::leader`] reads it.
pub type Leader = Term;

fn term(kv: Kv) -> Option<Term> {
    let holder = u32::from_le_bytes(kv.value.get(..4)?.try_into().ok()?);
    Some(Term { holder, epoch: kv.create_rev, value: kv.value[4..].to_vec(), mod_rev: kv.mod_rev, lease: kv.lease })
}

/// A role's election.
#[derive(Clone)]
pub struct Election {
    store: Arc<dyn Store>,
    key: String,
}

impl Election {
    pub fn new(store: Arc<dyn Store>, cluster: &str, role: &str) -> Election {
        Election { store, key: format!("{}roles/{role}", crate::prefix(cluster)) }
    }

    /// The role's key (the guard of a holder's writes: see
    /// [`crate::Store::put_guarded`]).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Who holds the role now, if anyone.
    pub fn leader(&self) -> Result<Option<Leader>> {
        Ok(self.store.get(&self.key)?.and_then(term))
    }

    /// One attempt by `node` (its membership lease `lease`): the new term
    /// if nobody held the role, else the term that holds it. A key left by
    /// an earlier life of this node (another lease) is taken over at once:
    /// that life is over, since this one runs with the same node id.
    pub fn try_campaign(&self, node: u32, value: &[u8], lease: LeaseId) -> Result<std::result::Result<Term, Term>> {
        let mut v = node.to_le_bytes().to_vec();
        v.extend_from_slice(value);
        loop {
            match self.store.create(&self.key, &v, lease)? {
                Ok(rev) => {
                    return Ok(Ok(Term { holder: node, epoch: rev, value: value.to_vec(), mod_rev: rev, lease }))
                }
                Err(kv) => match term(kv.clone()) {
                    Some(t) if t.holder == node && t.lease == lease => return Ok(Ok(t)),
                    Some(t) if t.holder != node => return Ok(Err(t)),
                    // Ours from an earlier life, or unreadable: clear it and try again.
                    _ => {
                        tracing::info!(node, role = %self.key, "taking over a role key left by an earlier life");
                        self.store.delete_if(&self.key, kv.mod_rev)?;
                    }
                },
            }
        }
    }

    /// Campaigns until `node` holds the role, or `give_up()` (asked at
    /// least every `poll`) says stop (`None`).
    pub fn campaign(
        &self,
        node: u32,
        value: &[u8],
        lease: LeaseId,
        poll: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Option<Term>> {
        loop {
            let holder = match self.try_campaign(node, value, lease)? {
                Ok(t) => return Ok(Some(t)),
                Err(h) => h,
            };
            // Wait for the holder's key to change (resigned, expired).
            loop {
                if give_up() {
                    return Ok(None);
                }
                if self.store.wait(&self.key, holder.mod_rev, poll)?.is_some() {
                    break;
                }
            }
        }
    }

    /// Whether `t` is still the current term.
    pub fn holds(&self, t: &Term) -> Result<bool> {
        Ok(self.leader()?.is_some_and(|l| l.epoch == t.epoch && l.holder == t.holder))
    }

    /// Ends term `t` (if it is still current), so another may win at once.
    pub fn resign(&self, t: &Term) -> Result<bool> {
        self.store.delete_if(&self.key, t.mod_rev)
    }

    /// Waits until the role's key changes after revision `after`, at most
    /// `timeout` (to follow who holds it).
    pub fn wait_change(&self, after: Rev, timeout: Duration) -> Result<Option<Rev>> {
        self.store.wait(&self.key, after, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemStore;
    use crate::member::Member;

    #[test]
    fn one_holder_per_term_and_epochs_grow() {
        let s = Arc::new(MemStore::new());
        let ttl = Duration::from_secs(3);
        let (a, b) =
            (Member::join(s.clone(), "c", 1, b"", ttl).unwrap(), Member::join(s.clone(), "c", 2, b"", ttl).unwrap());
        let e = Election::new(s.clone(), "c", "fs-1");
        let t1 = e.try_campaign(1, b"10.0.0.1:7600", a.lease()).unwrap().unwrap();
        let seen = e.try_campaign(2, b"10.0.0.2:7600", b.lease()).unwrap().unwrap_err();
        assert_eq!((seen.holder, seen.epoch, &seen.value[..]), (1, t1.epoch, &b"10.0.0.1:7600"[..]));
        assert_eq!(
            e.try_campaign(1, b"10.0.0.1:7600", a.lease()).unwrap().unwrap(),
            t1,
            "asking again is the same term"
        );
        // The holder's lease runs out: the other wins, with a later epoch.
        s.advance(Duration::from_secs(2));
        b.renew().unwrap();
        s.advance(Duration::from_secs(2));
        assert!(!e.holds(&t1).unwrap());
        let t2 = e.campaign(2, b"10.0.0.2:7600", b.lease(), Duration::from_millis(1), &|| false).unwrap().unwrap();
        assert!(t2.epoch > t1.epoch && t2.holder == 2);
        assert_eq!(e.leader().unwrap().unwrap().holder, 2);
        // Node 1 comes back with a new lease: it waits its turn; 2 resigns and 1 wins.
        let a2 = Member::join(s.clone(), "c", 1, b"", ttl).unwrap();
        assert_eq!(e.try_campaign(1, b"", a2.lease()).unwrap().unwrap_err().holder, 2);
        assert!(e.resign(&t2).unwrap());
        let t3 = e.try_campaign(1, b"", a2.lease()).unwrap().unwrap();
        assert!(t3.epoch > t2.epoch);
        // A restarted node 1 (new lease, same id) takes its own key over with a new epoch.
        let a3 = Member::join(s.clone(), "c", 1, b"", ttl).unwrap();
        let t4 = e.try_campaign(1, b"", a3.lease()).unwrap().unwrap();
        assert!(t4.epoch > t3.epoch && !e.holds(&t3).unwrap());
        // Giving up ends a campaign that cannot win.
        assert_eq!(e.campaign(2, b"", b.lease(), Duration::from_millis(1), &|| true).unwrap(), None);
    }
}
