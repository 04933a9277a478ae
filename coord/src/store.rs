//! The operations Tidepool needs of etcd, blocking, with etcd's semantics:
//! a global revision bumped by every change, a key's create and mod
//! revisions, leases that delete their keys when they expire, and
//! compare-and-set on revisions.

use std::time::Duration;

/// An etcd revision (global, monotonic; 0: never).
pub type Rev = i64;
/// An etcd lease.
pub type LeaseId = i64;

/// A key and its value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the change that created the key (its current life).
    pub create_rev: Rev,
    /// Revision of its last change.
    pub mod_rev: Rev,
    /// The lease it goes with (0: none).
    pub lease: LeaseId,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// etcd cannot be reached (or did not answer in time).
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// The lease expired or was revoked.
    #[error("lease {0:#x} is gone")]
    LeaseGone(LeaseId),
    /// etcd refused the request.
    #[error("etcd refused the request: {0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The store: an etcd cluster, or [`crate::mem::MemStore`].
pub trait Store: Send + Sync {
    /// A new lease that lives `ttl` unless kept alive.
    fn grant(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews `lease` for its whole TTL again; [`StoreError::LeaseGone`] if
    /// it already expired.
    fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Ends `lease` now, deleting its keys.
    fn revoke(&self, lease: LeaseId) -> Result<()>;
    fn get(&self, key: &str) -> Result<Option<Kv>>;
    /// Every key under `prefix`, in key order, and the store's revision.
    fn list(&self, prefix: &str) -> Result<(Vec<Kv>, Rev)>;
    /// Sets `key`; the revision of the change.
    fn put(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<Rev>;
    /// Sets `key` only if it does not exist: `Ok(rev)` of the creation, or
    /// the key as it is.
    fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<std::result::Result<Rev, Kv>>;
    /// Sets `key` only if its last change is `mod_rev` (0: if absent);
    /// whether it did.
    fn put_if(&self, key: &str, value: &[u8], lease: LeaseId, mod_rev: Rev) -> Result<bool>;
    /// Sets `key` only while `guard` (a role key) was created at revision
    /// `epoch`: the write of a term's holder, refused once the term is over.
    /// Whether it did.
    fn put_guarded(&self, key: &str, value: &[u8], guard: &str, epoch: Rev) -> Result<bool>;
    /// Deletes `key` only while `guard` was created at revision `epoch`.
    fn delete_guarded(&self, key: &str, guard: &str, epoch: Rev) -> Result<bool>;
    /// Deletes `key` only if its last change is `mod_rev`; whether it did.
    fn delete_if(&self, key: &str, mod_rev: Rev) -> Result<bool>;
    /// Waits until a key under `prefix` changes after revision `after`, at
    /// most `timeout`: the revision of the change, or `None` on timeout.
    fn wait(&self, prefix: &str, after: Rev, timeout: Duration) -> Result<Option<Rev>>;
}
