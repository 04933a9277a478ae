//! Cluster coordination for Tidepool, as GPFS's cluster manager does it,
//! on etcd: who is in the cluster, who plays each role, and the records a
//! newly elected role holder needs.
//!
//! | module | what |
//! |--------|------|
//! | [`store`] | the small part of etcd's v3 API Tidepool uses, as a blocking trait |
//! | [`etcd`] | that trait on a real etcd cluster (crate `etcd-client`) |
//! | [`mem`] | the same semantics in memory, on a clock the caller moves (unit tests, the simulation) |
//! | [`member`] | membership: a node is in the cluster while its lease lives |
//! | [`election`] | one holder per role, each term with an epoch (the revision that elected it) |
//!
//! Every key lives under `/tidepool/<cluster>/`. An epoch orders the terms
//! of a role: a message or a write stamped with an older epoch than the
//! current one comes from a holder that lost the role, and is refused.

#![forbid(unsafe_code)]

pub mod election;
pub mod etcd;
pub mod mem;
pub mod member;
pub mod store;

pub use election::{Election, Leader, Term};
pub use member::{Member, MemberInfo};
pub use store::{Kv, LeaseId, Rev, Store, StoreError};

/// The key prefix of cluster `name`.
pub fn prefix(cluster: &str) -> String {
    format!("/tidepool/{cluster}/")
}
