//! libdmapi: the DM application library, the one place a DM application (the
//! HSM, `tidepool dm`, C programs through the C ABI) reaches its node from.
//!
//! A DM application on any node of the cluster talks to the node daemon on its
//! own machine over the local DM channel ([`channel`]); [`Dm`] offers every XDSM
//! call by its XDSM name over it. This crate links neither FUSE nor the file
//! system: what it knows of Tidepool is the XDSM types (`dmapi`) and the channel.

pub mod channel;
pub mod client;
pub mod seqpacket;

pub use client::{Dm, Generated};
