//! [`Store`] in memory with etcd's semantics (one revision counter, create
//! and mod revisions, leases that delete their keys), on a clock that only
//! moves when the caller says: unit tests and the deterministic simulation
//! decide when a lease expires.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::store::{Kv, LeaseId, Result, Rev, Store, StoreError};

#[derive(Default)]
struct State {
    rev: Rev,
    now: Duration,
    keys: BTreeMap<String, Kv>,
    /// Lease → (ttl, expiry).
    leases: HashMap<LeaseId, (Duration, Duration)>,
    next_lease: LeaseId,
    /// Every change: (revision, key), for `wait`.
    log: Vec<(Rev, String)>,
    down: bool,
}

impl State {
    fn change(&mut self, key: &str) -> Rev {
        self.rev += 1;
        self.log.push((self.rev, key.to_string()));
        self.rev
    }

    fn expire(&mut self) {
        let now = self.now;
        let dead: Vec<LeaseId> = self.leases.iter().filter(|(_, (_, at))| *at <= now).map(|(l, _)| *l).collect();
        for l in dead {
            self.drop_lease(l);
        }
    }

    fn drop_lease(&mut self, l: LeaseId) {
        self.leases.remove(&l);
        let gone: Vec<String> = self.keys.values().filter(|k| k.lease == l).map(|k| k.key.clone()).collect();
        for k in gone {
            self.keys.remove(&k);
            self.change(&k);
        }
    }

    fn set(&mut self, key: &str, value: &[u8], lease: LeaseId) -> Result<Rev> {
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(StoreError::LeaseGone(lease));
        }
        let rev = self.change(key);
        let create_rev = self.keys.get(key).map_or(rev, |k| k.create_rev);
        self.keys.insert(
            key.to_string(),
            Kv { key: key.to_string(), value: value.to_vec(), create_rev, mod_rev: rev, lease },
        );
        Ok(rev)
    }
}

/// An in-memory store; clone handles share it.
#[derive(Default)]
pub struct MemStore {
    st: Mutex<State>,
    changed: Condvar,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Moves the clock on by `d`; leases not kept alive meanwhile expire.
    pub fn advance(&self, d: Duration) {
        let mut st = self.st.lock();
        st.now += d;
        st.expire();
        drop(st);
        self.changed.notify_all();
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (an etcd
    /// outage, or a node cut off from it), or work again.
    pub fn set_down(&self, down: bool) {
        self.st.lock().down = down;
    }

    /// The store's revision now.
    pub fn revision(&self) -> Rev {
        self.st.lock().rev
    }

    fn lock(&self) -> Result<parking_lot::MutexGuard<'_, State>> {
        let mut st = self.st.lock();
        if st.down {
            return Err(StoreError::Unavailable("the store is down".into()));
        }
        st.expire();
        Ok(st)
    }

    fn done<T>(&self, st: parking_lot::MutexGuard<'_, State>, v: T) -> Result<T> {
        drop(st);
        self.changed.notify_all();
        Ok(v)
    }
}

impl Store for MemStore {
    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let mut st = self.lock()?;
        st.next_lease += 1;
        let (id, at) = (st.next_lease, st.now + ttl);
        st.leases.insert(id, (ttl, at));
        Ok(id)
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut st = self.lock()?;
        let now = st.now;
        match st.leases.get_mut(&lease) {
            Some((ttl, at)) => {
                *at = now + *ttl;
                Ok(())
            }
            None => Err(StoreError::LeaseGone(lease)),
        }
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut st = self.lock()?;
        st.drop_lease(lease);
        self.done(st, ())
    }

    fn get(&self, key: &str) -> Result<Option<Kv>> {
        Ok(self.lock()?.keys.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Kv>, Rev)> {
        let st = self.lock()?;
        let v = st.keys.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.clone());
        Ok((v.collect(), st.rev))
    }

    fn put(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<Rev> {
        let mut st = self.lock()?;
        let r = st.set(key, value, lease)?;
        self.done(st, r)
    }

    fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<std::result::Result<Rev, Kv>> {
        let mut st = self.lock()?;
        if let Some(k) = st.keys.get(key) {
            return Ok(Err(k.clone()));
        }
        let r = st.set(key, value, lease)?;
        self.done(st, Ok(r))
    }

    fn put_if(&self, key: &str, value: &[u8], lease: LeaseId, mod_rev: Rev) -> Result<bool> {
        let mut st = self.lock()?;
        if st.keys.get(key).map_or(0, |k| k.mod_rev) != mod_rev {
            return Ok(false);
        }
        st.set(key, value, lease)?;
        self.done(st, true)
    }

    fn put_guarded(&self, key: &str, value: &[u8], guard: &str, epoch: Rev) -> Result<bool> {
        let mut st = self.lock()?;
        if st.keys.get(guard).map(|k| k.create_rev) != Some(epoch) {
            return Ok(false);
        }
        st.set(key, value, 0)?;
        self.done(st, true)
    }

    fn delete_guarded(&self, key: &str, guard: &str, epoch: Rev) -> Result<bool> {
        let mut st = self.lock()?;
        if st.keys.get(guard).map(|k| k.create_rev) != Some(epoch) {
            return Ok(false);
        }
        if st.keys.remove(key).is_some() {
            st.change(key);
        }
        self.done(st, true)
    }

    fn delete_if(&self, key: &str, mod_rev: Rev) -> Result<bool> {
        let mut st = self.lock()?;
        if st.keys.get(key).map(|k| k.mod_rev) != Some(mod_rev) {
            return Ok(false);
        }
        st.keys.remove(key);
        st.change(key);
        self.done(st, true)
    }

    fn wait(&self, prefix: &str, after: Rev, timeout: Duration) -> Result<Option<Rev>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.lock()?;
        loop {
            if let Some((r, _)) = st.log.iter().find(|(r, k)| *r > after && k.starts_with(prefix)) {
                return Ok(Some(*r));
            }
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                return Ok(None);
            }
            if st.down {
                return Err(StoreError::Unavailable("the store is down".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_leases_and_compare() {
        let s = MemStore::new();
        let l = s.grant(Duration::from_secs(3)).unwrap();
        let r1 = s.create("/a", b"1", l).unwrap().unwrap();
        assert_eq!(s.create("/a", b"2", 0).unwrap().unwrap_err().value, b"1");
        let r2 = s.put("/a", b"3", l).unwrap();
        let a = s.get("/a").unwrap().unwrap();
        assert_eq!((a.create_rev, a.mod_rev, a.lease), (r1, r2, l));
        assert!(!s.put_if("/a", b"4", 0, r1).unwrap());
        assert!(s.put_guarded("/g", b"x", "/a", r1).unwrap());
        assert!(!s.put_guarded("/g", b"y", "/a", r1 + 100).unwrap());
        assert!(!s.delete_guarded("/g", "/nothing", r1).unwrap());
        assert_eq!(s.get("/g").unwrap().unwrap().value, b"x");
        assert!(s.delete_guarded("/g", "/a", r1).unwrap());
        assert_eq!(s.get("/g").unwrap(), None);
        assert!(s.put_if("/a", b"4", l, r2).unwrap());
        s.advance(Duration::from_secs(2));
        s.keep_alive(l).unwrap();
        s.advance(Duration::from_secs(2));
        assert!(s.get("/a").unwrap().is_some(), "kept alive");
        let before = s.revision();
        s.advance(Duration::from_secs(2));
        assert_eq!(s.get("/a").unwrap(), None, "expired with its lease");
        assert_eq!(s.keep_alive(l), Err(StoreError::LeaseGone(l)));
        assert_eq!(s.put("/b", b"", l), Err(StoreError::LeaseGone(l)));
        assert_eq!(s.wait("/a", before, Duration::ZERO).unwrap(), Some(before + 1));
        assert_eq!(s.wait("/b", before, Duration::from_millis(1)).unwrap(), None);
        s.set_down(true);
        assert!(matches!(s.get("/a"), Err(StoreError::Unavailable(_))));
    }
}
