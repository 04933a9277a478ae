//! Tidepool client: the DM event path ([`dm`]), the cluster roles
//! ([`roles`]) and the node daemon ([`node`]), over the file system with
//! its FUSE mount (crate `tpfs`) and the user-space NVMe-oF initiator
//! (crate `nvmf`).
//!
//! Where an event goes from node B to node A: `dm::source` (B's file system calls
//! `generate`) → `dmapi::proto` frame over `dmapi::transport` → `node::daemon` on A
//! → `dm::session` (A's DM application, directly or through `node::api`) → and back.

pub mod dm;
pub mod node;
pub mod roles;
