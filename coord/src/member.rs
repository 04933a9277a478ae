//! Membership: a node is in the cluster while its lease lives. Joining
//! grants a lease of the node's TTL and puts `members/<node>` on it; a
//! thread renews it every third of the TTL. A node whose lease expires (it
//! died, or was cut off from etcd for a whole TTL) is out: its key is gone
//! for everyone at once, and it must stop acting for the cluster itself
//! (the `lost` callback) before it may join again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{LeaseId, Result, Store, StoreError};

/// A member as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub node: u32,
    /// What the node published of itself (addresses, for instance).
    pub value: Vec<u8>,
    pub lease: LeaseId,
}

fn key(cluster: &str, node: u32) -> String {
    format!("{}members/{node:05}", crate::prefix(cluster))
}

/// This node's membership.
pub struct Member {
    store: Arc<dyn Store>,
    node: u32,
    key: String,
    lease: LeaseId,
    ttl: Duration,
    lost: Arc<AtomicBool>,
    /// With the background renewal: until when the lease is surely alive
    /// (the send time of the last renewal etcd granted, plus the TTL).
    /// Past it this node must act as out, whatever etcd says later.
    valid_until: Arc<Mutex<Option<Instant>>>,
    /// When the lease was asked for (its TTL counts from no earlier).
    granted_at: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    /// Joins cluster `cluster` as `node`, publishing `value`, with a lease
    /// of `ttl` (not renewed until [`Member::keep_alive_in_background`] or
    /// [`Member::renew`]).
    pub fn join(store: Arc<dyn Store>, cluster: &str, node: u32, value: &[u8], ttl: Duration) -> Result<Member> {
        // A grant that took half the TTL to come (etcd just reachable
        // again) leaves a lease this node must already count as nearly
        // expired, and it would be out again at once: asked for again.
        let mut tries = 0;
        let (granted_at, lease) = loop {
            let asked = Instant::now();
            let lease = store.grant(ttl)?;
            tries += 1;
            if asked.elapsed() < ttl / 2 || tries == 3 {
                break (asked, lease);
            }
            tracing::warn!(
                node,
                waited_ms = asked.elapsed().as_millis() as u64,
                "the lease came too late to be of use; asking again"
            );
            let _ = store.revoke(lease);
        };
        let key = key(cluster, node);
        store.put(&key, value, lease)?;
        tracing::info!(node, lease = format_args!("{lease:#x}"), ttl_ms = ttl.as_millis() as u64, "joined the cluster");
        Ok(Member {
            store,
            node,
            key,
            lease,
            ttl,
            lost: Arc::default(),
            valid_until: Arc::default(),
            granted_at,
            stop: Arc::default(),
            thread: None,
        })
    }

    pub fn node(&self) -> u32 {
        self.node
    }

    /// The lease this node's keys (member key, roles it holds) go with.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the lease is known to be gone (this node is out), or, with
    /// the background renewal, may have expired unseen.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
            || self.valid_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| Instant::now() >= t)
    }

    /// Publishes `value` in this node's member key instead of what it
    /// joined with.
    pub fn publish(&self, value: &[u8]) -> Result<()> {
        self.store.put(&self.key, value, self.lease).map(|_| ())
    }

    /// Renews the lease once.
    pub fn renew(&self) -> Result<()> {
        let r = self.store.keep_alive(self.lease);
        if let Err(StoreError::LeaseGone(_)) = r {
            self.lost.store(true, Ordering::Release);
        }
        r
    }

    /// Renews the lease every third of the TTL from a thread; when it is
    /// gone, or no renewal was granted for a whole TTL (it may have expired
    /// unseen), calls `on_lost` once and stops. The renewals run on a
    /// second thread so that one stuck on an unreachable etcd cannot hold
    /// the verdict past the lease's end: the node is out at the deadline.
    pub fn keep_alive_in_background(&mut self, on_lost: impl FnOnce() + Send + 'static) {
        let (store, lease, ttl) = (self.store.clone(), self.lease, self.ttl);
        let (lost, stop, node) = (self.lost.clone(), self.stop.clone(), self.node);
        let valid = self.valid_until.clone();
        let mut until = self.granted_at + ttl;
        *valid.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
        let t = std::thread::Builder::new()
            .name("coord-lease".into())
            .spawn(move || {
                let (ask, asked) = std::sync::mpsc::channel::<()>();
                let (tell, told) = std::sync::mpsc::channel();
                let renewer = std::thread::Builder::new().name("coord-renew".into()).spawn(move || {
                    while asked.recv().is_ok() {
                        let sent = Instant::now();
                        if tell.send((sent, store.keep_alive(lease))).is_err() {
                            return;
                        }
                    }
                });
                if let Err(e) = renewer {
                    tracing::error!(node, error = %e, "cannot start the lease renewal thread");
                } else {
                    // The first renewal goes at once: the time since the
                    // grant was asked counts against the lease already.
                    let mut first = true;
                    'renewing: while !stop.load(Ordering::Acquire) {
                        if !std::mem::take(&mut first) {
                            std::thread::sleep(ttl / 3);
                        }
                        if ask.send(()).is_err() {
                            break;
                        }
                        let left = until.saturating_duration_since(Instant::now());
                        match told.recv_timeout(left) {
                            Ok((sent, Ok(()))) => {
                                until = until.max(sent + ttl);
                                *valid.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
                            }
                            Ok((_, Err(StoreError::LeaseGone(_)))) => break 'renewing,
                            Ok((_, Err(e))) if Instant::now() < until => {
                                tracing::warn!(node, error = %e, "lease renewal failed; retrying");
                            }
                            Ok((_, Err(e))) => {
                                tracing::error!(node, error = %e, "etcd unreachable for a whole lease TTL");
                                break 'renewing;
                            }
                            Err(_) => {
                                tracing::error!(node, "no lease renewal granted for a whole TTL");
                                break 'renewing;
                            }
                        }
                    }
                }
                if !stop.load(Ordering::Acquire) {
                    lost.store(true, Ordering::Release);
                    tracing::error!(node, "this node's cluster lease is gone: it is out of the cluster");
                    on_lost();
                }
            })
            .expect("spawning the lease thread");
        self.thread = Some(t);
    }

    /// Leaves the cluster now (revokes the lease, deleting the member key
    /// and every role key on it).
    pub fn leave(mut self) -> Result<()> {
        self.halt();
        self.store.revoke(self.lease)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Every member of `cluster` now, in node order.
    pub fn list(store: &dyn Store, cluster: &str) -> Result<Vec<MemberInfo>> {
        Ok(Member::list_at(store, cluster)?.0)
    }

    /// [`Member::list`], and the store's revision it was read at (to wait
    /// for the next change from).
    pub fn list_at(store: &dyn Store, cluster: &str) -> Result<(Vec<MemberInfo>, crate::Rev)> {
        let (kvs, rev) = store.list(&format!("{}members/", crate::prefix(cluster)))?;
        let members = kvs
            .into_iter()
            .filter_map(|kv| {
                let node = kv.key.rsplit('/').next()?.parse().ok()?;
                Some(MemberInfo { node, value: kv.value, lease: kv.lease })
            })
            .collect();
        Ok((members, rev))
    }

    /// This node's member key (for tests and logs).
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Dropped without leaving (a crash in spirit): the lease runs out.
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemStore;

    #[test]
    fn members_live_with_their_leases() {
        let s = Arc::new(MemStore::new());
        let ttl = Duration::from_secs(3);
        let a = Member::join(s.clone(), "c", 1, b"a", ttl).unwrap();
        let b = Member::join(s.clone(), "c", 2, b"b", ttl).unwrap();
        let _other = Member::join(s.clone(), "other", 7, b"", ttl).unwrap();
        let nodes = |s: &MemStore| Member::list(s, "c").unwrap().iter().map(|m| m.node).collect::<Vec<_>>();
        assert_eq!(nodes(&s), vec![1, 2]);
        s.advance(Duration::from_secs(2));
        a.renew().unwrap();
        s.advance(Duration::from_secs(2));
        assert_eq!(nodes(&s), vec![1], "2 did not renew");
        assert_eq!(b.renew(), Err(StoreError::LeaseGone(b.lease())));
        assert!(b.lost() && !a.lost());
        a.leave().unwrap();
        assert!(nodes(&s).is_empty());
    }
}
