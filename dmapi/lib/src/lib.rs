//! libdmapi: the DM application library, the one place a DM application (the
//! HSM, `tidepool dm`, C programs through the C ABI) reaches its node from.
//!
//! A DM application on any node of the cluster talks to the node daemon on its
//! own machine over the local DM channel ([`channel`]); [`Dm`] offers every XDSM
//! call by its XDSM name over it. This crate links neither FUSE nor the file
//! system: what it knows of Tidepool is the XDSM types (`dmapi`) and the channel.

pub mod capi;
pub mod channel;
pub mod client;
mod fhandle;
pub mod seqpacket;

pub use client::{Dm, Generated};

/// What `dm_init_service` hands back: SGI's version string (programs check
/// its prefix), then whose library it is.
pub const VERSION: &str = "SGI DMAPI (XDSM) API, Release 1.0. Tidepool libdmapi.";

use std::path::PathBuf;

use dmapi::{DmError, DmResult};

/// Where a DM application finds its node daemon's DM socket:
/// `$TIDEPOOL_DM_SOCKET`, else the `api_socket` (or, without one, the
/// `node_id`'s default `/tmp/tidepool-node-<id>.sock`) of the node
/// configuration at `$TIDEPOOL_NODE_CONFIG`, else `/etc/tidepool/node.toml`.
pub fn default_socket() -> DmResult<PathBuf> {
    if let Some(p) = std::env::var_os("TIDEPOOL_DM_SOCKET").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let cfg = std::env::var_os("TIDEPOOL_NODE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/tidepool/node.toml"));
    let text = std::fs::read_to_string(&cfg).map_err(|e| {
        DmError::Io(format!(
            "no node daemon named: TIDEPOOL_DM_SOCKET is not set and {} cannot be read ({e})",
            cfg.display()
        ))
    })?;
    socket_of_config(&text)
        .ok_or_else(|| DmError::Io(format!("{} names neither api_socket nor node_id", cfg.display())))
}

/// The socket a node configuration's text names (`api_socket`, else the
/// `node_id` default), read without the node crate's configuration types.
fn socket_of_config(text: &str) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Cfg {
        api_socket: Option<PathBuf>,
        node_id: Option<u32>,
    }
    let c: Cfg = toml::from_str(text).ok()?;
    c.api_socket.or_else(|| c.node_id.map(|id| PathBuf::from(format!("/tmp/tidepool-node-{id}.sock"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_comes_from_the_node_configuration() {
        let t = "node_id = 4\nlisten = \"127.0.0.1:7004\"\n[[peers]]\nid = 1\naddr = \"127.0.0.1:7001\"\n";
        assert_eq!(socket_of_config(t), Some(PathBuf::from("/tmp/tidepool-node-4.sock")));
        let t = "node_id = 4\napi_socket = \"/run/tp.sock\"\n";
        assert_eq!(socket_of_config(t), Some(PathBuf::from("/run/tp.sock")));
        assert_eq!(socket_of_config("listen = 3"), None);
    }
}
