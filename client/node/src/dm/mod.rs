//! The DM event path inside a node, around the `dmapi` engines:
//!
//! * [`source`]: where the file system generates events (the source node, B5). An
//!   event leaves through `dmapi::proto` frames over `dmapi::transport` ...
//! * [`session`]: ... and arrives on the session node, whose DM application takes it
//!   with `dm_get_events` and answers with `dm_respond_event`; the answer goes back
//!   the same way and unblocks the file-system thread on the source node.
//!
//! * [`files`]: the DMAPI functions on files (handles, invisible I/O, holes,
//!   regions, DM attributes, rights backed by the file-system manager's tokens).
//!
//! The daemon that carries frames between the two is `crate::daemon`.

pub mod files;
pub mod session;
pub mod source;
