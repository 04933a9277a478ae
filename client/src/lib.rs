//! Tidepool client: the user-space NVMe-oF initiator ([`nvmf`]); the file
//! system, DM event generation, node roles and the FUSE mount build on it.

pub mod fs;
pub mod nvmf;
