//! Tidepool client: the user-space NVMe-oF initiator ([`nvmf`]); the DM event path
//! ([`dm`]), the cluster roles ([`roles`]) and the node daemon ([`node`]). The file
//! system and the FUSE mount build on them.
//!
//! Where an event goes from node B to node A: `dm::source` (B's file system calls
//! `generate`) → `dmapi::proto` frame over `dmapi::transport` → `node::daemon` on A
//! → `dm::session` (A's DM application, directly or through `node::api`) → and back.

pub mod dm;
pub mod fs;
pub mod node;
pub mod nvmf;
pub mod roles;
