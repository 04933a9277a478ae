//! XDSM (DMAPI) for Tidepool: types, sessions, events and the cluster event protocol.
//!
//! Where an event goes, by module: the file system calls [`source::SourceEngine`]
//! (`generate`), which looks up [`disp::DispositionTable`], frames the event with
//! [`proto`]/[`wire`] and hands it to the node daemon's [`transport`]; on the session
//! node the daemon feeds it to [`session::SessionEngine::deliver`], the DM
//! application takes it with `dm_get_events` and answers with `dm_respond_event`,
//! whose response travels back the same way to `SourceEngine::on_response`.
//!
//! | module | what |
//! |--------|------|
//! | [`types`] | XDSM ids, handles, event types and sets, responses, rights, `dm_config_t` |
//! | [`error`] | [`DmError`], each with its XDSM errno |
//! | [`event`] | event messages per class and the `dm_eventmsg_t` buffer encoding |
//! | [`session`] | session-side engine: sessions, queues, tokens, the session/event calls |
//! | [`disp`] | versioned disposition table, event lists, routing |
//! | [`source`] | source-side engine: generate, block on sync events, re-send, timeouts |
//! | [`wire`] | the fixed frame header and bounded little-endian codec |
//! | [`proto`] | every cluster DM message and the frame decoder |
//! | [`transport`] | the transport trait and its authenticated TCP implementation |
//! | [`auth`] | the cluster-key challenge/response every cluster protocol opens with |
//!
//! The engines do no networking and start no threads: the node daemon owns the
//! transport, pumps received frames into them and sends what their hooks emit.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod disp;
pub mod error;
pub mod event;
pub mod proto;
pub mod session;
pub mod source;
pub mod transport;
pub mod types;
pub mod wire;

pub use error::{DmError, DmResult};
