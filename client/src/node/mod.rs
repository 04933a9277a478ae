//! The node daemon (`tidepool node run`): one process per node of the cluster.
//!
//! | module | what |
//! |--------|------|
//! | [`config`] | the TOML configuration: node id, peers, roles, mounts, timeouts |
//! | [`daemon`] | wiring: transport ↔ `crate::dm` engines ↔ `crate::roles`, heartbeats |
//! | [`api`] | the local API (Unix socket) and the [`api::Dm`] client handle |
//! | [`peercred`] | the caller's credentials on the local API (`SO_PEERCRED`) |
//! | [`sink`] | a separate mount process's DM events, through the local API |
//! | `cli.rs` | the `tidepool node ...` and `tidepool dm ...` commands (compiled into the
//! |  | `tidepool` binary by `main.rs`, not into this library, so it may print and use `anyhow`) |

pub mod api;
pub mod config;
pub mod daemon;
pub mod peercred;
pub mod sink;
