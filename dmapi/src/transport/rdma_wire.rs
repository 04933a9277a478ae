//! What the RDMA transport puts on the wire around the cluster frames: the
//! RDMA CM private data both ends exchange when a connection is made, and
//! the 8-byte header at the start of every SEND (a frame fragment or a
//! bare credit grant). Plain structs; parsers check every field, since
//! both arrive from the network.
//!
//! ```
//! use dmapi::transport::rdma_wire::{ConnParams, SendHdr, KIND_FRAME, MORE};
//! use zerocopy::IntoBytes;
//! let p = ConnParams::new(7, 64, 4096);
//! assert_eq!(ConnParams::parse(p.as_bytes()).unwrap().node.get(), 7);
//! let mut send = SendHdr::new(KIND_FRAME, MORE, 3, 5).as_bytes().to_vec();
//! send.extend_from_slice(b"hello");
//! let (h, body) = SendHdr::parse(&send).unwrap();
//! assert_eq!((h.credits.get(), body), (3, &b"hello"[..]));
//! ```

use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::wire::WireError;

/// `b"TPDM"`: a DM transport connection, not some other RDMA CM user.
pub const MAGIC: [u8; 4] = *b"TPDM";
/// This layout's version.
pub const VERSION: u8 = 1;
/// Fewest and most receive buffers a peer may announce.
pub const MIN_DEPTH: u16 = 4;
/// See [`MIN_DEPTH`].
pub const MAX_DEPTH: u16 = 1024;
/// Smallest and largest receive buffer a peer may announce.
pub const MIN_BUF: u32 = 256;
/// See [`MIN_BUF`].
pub const MAX_BUF: u32 = 1 << 20;

/// Private data of the connect request and of the accept: who is
/// connecting (claimed only; the in-band handshake proves it) and how many
/// receive buffers of what size this end has posted, which is the other
/// end's initial send credit and largest SEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ConnParams {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// [`VERSION`].
    pub version: u8,
    /// Zero.
    pub rsvd: u8,
    /// Receive buffers posted for this connection.
    pub recv_depth: U16,
    /// The sender's node id.
    pub node: U32,
    /// Bytes in each receive buffer.
    pub buf_size: U32,
}
const _: () = assert!(size_of::<ConnParams>() == 16);

impl ConnParams {
    /// Parameters of a node with `recv_depth` buffers of `buf_size` bytes.
    pub fn new(node: u32, recv_depth: u16, buf_size: u32) -> Self {
        ConnParams {
            magic: MAGIC,
            version: VERSION,
            rsvd: 0,
            recv_depth: recv_depth.into(),
            node: node.into(),
            buf_size: buf_size.into(),
        }
    }

    /// Reads private data; RDMA CM pads it, so longer input is normal.
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let (p, _) = Self::read_from_prefix(b).map_err(|_| WireError::Incomplete { needed: size_of::<Self>() })?;
        if p.magic != MAGIC {
            return Err(WireError::BadMagic(u32::from_le_bytes(p.magic)));
        }
        if p.version != VERSION {
            return Err(WireError::BadVersion(p.version));
        }
        let depth = p.recv_depth.get();
        if !(MIN_DEPTH..=MAX_DEPTH).contains(&depth) {
            return Err(WireError::Oversize { what: "receive depth", len: depth as usize, max: MAX_DEPTH as usize });
        }
        let buf = p.buf_size.get();
        if !(MIN_BUF..=MAX_BUF).contains(&buf) {
            return Err(WireError::Oversize { what: "receive buffer", len: buf as usize, max: MAX_BUF as usize });
        }
        Ok(p)
    }
}

/// A SEND carrying (part of) an encoded frame.
pub const KIND_FRAME: u8 = 1;
/// A SEND carrying only a credit grant.
pub const KIND_CREDIT: u8 = 2;
/// Flag: more fragments of this frame follow.
pub const MORE: u8 = 1;

/// The header of every SEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SendHdr {
    /// [`KIND_FRAME`] or [`KIND_CREDIT`].
    pub kind: u8,
    /// [`MORE`] or 0.
    pub flags: u8,
    /// Receive buffers the sender re-posted since its last grant: SENDs
    /// the receiver of this header may make in addition.
    pub credits: U16,
    /// Bytes after the header.
    pub len: U32,
}
/// Bytes of [`SendHdr`].
pub const HDR_LEN: usize = 8;
const _: () = assert!(size_of::<SendHdr>() == HDR_LEN);

impl SendHdr {
    /// A header for `len` bytes of `kind`.
    pub fn new(kind: u8, flags: u8, credits: u16, len: u32) -> Self {
        SendHdr { kind, flags, credits: credits.into(), len: len.into() }
    }

    /// Splits one received SEND into its header and body, checking the
    /// header against what arrived.
    pub fn parse(b: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let (h, body) = Self::read_from_prefix(b).map_err(|_| WireError::Incomplete { needed: HDR_LEN })?;
        match h.kind {
            KIND_FRAME if h.flags & !MORE == 0 && !body.is_empty() => {}
            KIND_CREDIT if h.flags == 0 && body.is_empty() => {}
            KIND_FRAME | KIND_CREDIT => return Err(WireError::Truncated("send header flags or length")),
            t => return Err(WireError::UnknownType(t)),
        }
        if h.len.get() as usize != body.len() {
            return Err(WireError::Oversize { what: "send body", len: h.len.get() as usize, max: body.len() });
        }
        Ok((h, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_private_data_is_refused() {
        let good = ConnParams::new(1, 64, 4096);
        assert!(ConnParams::parse(&good.as_bytes()[..10]).is_err(), "short");
        let mut p = good;
        p.magic = *b"NVMe";
        assert!(matches!(ConnParams::parse(p.as_bytes()), Err(WireError::BadMagic(_))));
        let mut p = good;
        p.version = 9;
        assert_eq!(ConnParams::parse(p.as_bytes()), Err(WireError::BadVersion(9)));
        let mut p = good;
        p.recv_depth = 1.into();
        assert!(ConnParams::parse(p.as_bytes()).is_err(), "depth 1 leaves no credit to grant credits with");
        let mut p = good;
        p.buf_size = 16.into();
        assert!(ConnParams::parse(p.as_bytes()).is_err(), "buffer smaller than a frame header");
        let mut padded = good.as_bytes().to_vec();
        padded.resize(56, 0);
        assert_eq!(ConnParams::parse(&padded), Ok(good), "CM pads private data");
    }

    #[test]
    fn send_headers_must_match_what_arrived() {
        let frame = |flags, len: u32, body: &[u8]| {
            let mut b = SendHdr::new(KIND_FRAME, flags, 0, len).as_bytes().to_vec();
            b.extend_from_slice(body);
            b
        };
        assert!(SendHdr::parse(&frame(0, 3, b"abc")).is_ok());
        assert!(SendHdr::parse(&frame(MORE, 3, b"abc")).is_ok());
        assert!(SendHdr::parse(&frame(0, 4, b"abc")).is_err(), "length beyond the SEND");
        assert!(SendHdr::parse(&frame(0, 0, b"")).is_err(), "empty fragment");
        assert!(SendHdr::parse(&frame(2, 3, b"abc")).is_err(), "unknown flag");
        let credit = SendHdr::new(KIND_CREDIT, 0, 9, 0);
        assert_eq!(SendHdr::parse(credit.as_bytes()).unwrap().0.credits.get(), 9);
        let mut c = credit.as_bytes().to_vec();
        c.push(1);
        assert!(SendHdr::parse(&c).is_err(), "a credit grant carries no body");
        assert_eq!(SendHdr::parse(SendHdr::new(7, 0, 0, 0).as_bytes()), Err(WireError::UnknownType(7)));
    }

    proptest! {
        /// Whatever arrives decodes or is refused; it never panics.
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SendHdr::parse(&b);
            let _ = ConnParams::parse(&b);
        }
    }
}
