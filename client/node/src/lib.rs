//! The Tidepool node daemon (`tidepool node run`): one process per node of the
//! cluster, hosting the node's DM engines, its cluster roles and the local DM
//! channel that DM applications on this machine reach it through.
//!
//! | module | what |
//! |--------|------|
//! | [`config`] | the TOML configuration: node id, peers, roles, mounts, timeouts |
//! | [`cluster`] | membership through etcd leases (`[etcd]`), the members a node sees |
//! | [`daemon`] | wiring: transport ↔ [`dm`] engines ↔ [`roles`], heartbeats |
//! | [`dm`] | the DM event path inside a node: source, session, file functions |
//! | [`roles`] | membership, session manager, file-system manager |
//! | [`fencing`] | NVMe reservations that fence a failed manager or a departed node off the volume |
//! | [`mounts`] | hosted FUSE mounts (DM events straight into the source engine) and metadata services |
//! | [`api`] | the daemon's end of the local DM channel (`libdmapi::channel`) |
//! | [`peercred`] | the caller's credentials on the local channel (`SO_PEERCRED`) |
//!
//! Where an event goes from node B to node A: `dm::source` (B's file system calls
//! `generate`) → `dmapi::proto` frame over `dmapi::transport` → [`daemon`] on A
//! → `dm::session` (A's DM application, directly or through the local channel)
//! → and back.

pub mod api;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dm;
pub mod fencing;
pub mod mounts;
pub mod peercred;
pub mod roles;
