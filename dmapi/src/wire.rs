//! The one framing of every cluster DM message: a fixed 48-byte little-endian header
//! ([`MsgHeader`]) followed by `payload_len` bytes of payload (see [`crate::proto`]).
//!
//! Decoding takes untrusted bytes and never panics: every length is checked against
//! the buffer and against [`MAX_PAYLOAD`] before use.
//!
//! ```
//! use dmapi::wire::{decode_header, MsgHeader, HEADER_LEN};
//! let h = MsgHeader::new(3, 0, 7, 1, 99);
//! let bytes = h.to_bytes();
//! assert_eq!(bytes.len(), HEADER_LEN);
//! assert_eq!(decode_header(&bytes).unwrap(), h);
//! ```

use zerocopy::byteorder::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `b"TPDM"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TPDM");
/// Protocol version carried in every header.
pub const VERSION: u8 = 2;
/// Header length.
pub const HEADER_LEN: usize = 48;
/// Largest payload accepted; a longer frame is rejected before anything is allocated.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Frame flag: the sender wants an [`crate::proto::Message::Ack`] for this frame.
pub const FLAG_ACK_REQUESTED: u16 = 0x1;
/// Frame flag: this frame is a re-send of one sent before (same source and sequence).
pub const FLAG_RESEND: u16 = 0x2;

/// The fixed message header.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MsgHeader {
    /// [`MAGIC`].
    pub magic: U32,
    /// [`VERSION`].
    pub version: u8,
    /// Message type ([`crate::proto::MsgType`]).
    pub msg_type: u8,
    /// `FLAG_*` bits.
    pub flags: U16,
    /// Bytes of payload after the header.
    pub payload_len: U32,
    /// The node that sent this frame (B12 for events: where the event was generated).
    pub source_node: U32,
    /// The sender's sequence number for this frame; (source_node, seq) is unique and
    /// is the de-duplication key of at-least-once delivery.
    pub seq: U64,
    /// The sequence this frame refers to (the event a response, pending or ack is about).
    pub ref_seq: U64,
    /// The session the message is about, or 0.
    pub sid: I32,
    /// The event token the message is about, or 0.
    pub token: I32,
    /// The term of the role that sent (or first sent, if passed on) this
    /// frame: the session manager's election revision for what it
    /// distributes; 0 for everything else and under static roles. A node
    /// refuses a role's frame stamped older than a term it has heard of.
    pub epoch: U64,
}

const _: () = assert!(size_of::<MsgHeader>() == HEADER_LEN);
const _: () = assert!(std::mem::offset_of!(MsgHeader, msg_type) == 5);
const _: () = assert!(std::mem::offset_of!(MsgHeader, payload_len) == 8);
const _: () = assert!(std::mem::offset_of!(MsgHeader, source_node) == 12);
const _: () = assert!(std::mem::offset_of!(MsgHeader, seq) == 16);
const _: () = assert!(std::mem::offset_of!(MsgHeader, ref_seq) == 24);
const _: () = assert!(std::mem::offset_of!(MsgHeader, sid) == 32);
const _: () = assert!(std::mem::offset_of!(MsgHeader, token) == 36);
const _: () = assert!(std::mem::offset_of!(MsgHeader, epoch) == 40);

impl MsgHeader {
    /// A header with magic and version filled in, flags, sid, token and epoch zero.
    pub fn new(msg_type: u8, payload_len: u32, source_node: u32, seq: u64, ref_seq: u64) -> Self {
        MsgHeader {
            magic: U32::new(MAGIC),
            version: VERSION,
            msg_type,
            flags: U16::new(0),
            payload_len: U32::new(payload_len),
            source_node: U32::new(source_node),
            seq: U64::new(seq),
            ref_seq: U64::new(ref_seq),
            sid: I32::new(0),
            token: I32::new(0),
            epoch: U64::new(0),
        }
    }

    /// The header's 48 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b.copy_from_slice(self.as_bytes());
        b
    }
}

/// Why bytes could not be decoded. Every variant but `Incomplete` means the peer is
/// broken or hostile and the connection should be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// More bytes are needed: `needed` in total from the start of the frame.
    #[error("incomplete frame: {needed} bytes needed")]
    Incomplete {
        /// Total bytes the frame needs.
        needed: usize,
    },
    /// The magic number is wrong.
    #[error("bad magic {0:#x}")]
    BadMagic(u32),
    /// The protocol version is not ours.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// Unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A declared length exceeds its limit.
    #[error("{what} length {len} exceeds limit {max}")]
    Oversize {
        /// Which length.
        what: &'static str,
        /// The declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload ended before a field.
    #[error("payload truncated reading {0}")]
    Truncated(&'static str),
    /// The payload has bytes after its last field.
    #[error("{0} trailing bytes after payload")]
    Trailing(usize),
    /// A field holds a value that is not allowed.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Checks and returns the header at the start of `buf`.
pub fn decode_header(buf: &[u8]) -> Result<MsgHeader, WireError> {
    let (h, _) = MsgHeader::read_from_prefix(buf).map_err(|_| WireError::Incomplete { needed: HEADER_LEN })?;
    if h.magic.get() != MAGIC {
        return Err(WireError::BadMagic(h.magic.get()));
    }
    if h.version != VERSION {
        return Err(WireError::BadVersion(h.version));
    }
    let len = h.payload_len.get() as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::Oversize { what: "payload", len, max: MAX_PAYLOAD });
    }
    Ok(h)
}

/// Splits one frame off the front of `buf`: header, payload, and bytes consumed.
pub fn split_frame(buf: &[u8]) -> Result<(MsgHeader, &[u8], usize), WireError> {
    let h = decode_header(buf)?;
    let total = HEADER_LEN + h.payload_len.get() as usize;
    let payload = buf.get(HEADER_LEN..total).ok_or(WireError::Incomplete { needed: total })?;
    Ok((h, payload, total))
}

/// Little-endian payload writer.
#[derive(Debug, Default)]
pub struct Enc {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Enc {
    /// An empty writer.
    pub fn new() -> Self {
        Enc::default()
    }
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a little-endian i32.
    pub fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a little-endian i64.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u32 length then the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }
    /// Appends fixed bytes with no length.
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
}

/// Little-endian payload reader over untrusted bytes.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    /// Reads a byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.arr::<1>(what)?[0])
    }
    /// Reads a little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        self.arr(what).map(u32::from_le_bytes)
    }
    /// Reads a little-endian i32.
    pub fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        self.arr(what).map(i32::from_le_bytes)
    }
    /// Reads a little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        self.arr(what).map(u64::from_le_bytes)
    }
    /// Reads a little-endian i64.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        self.arr(what).map(i64::from_le_bytes)
    }
    /// Reads a u32 length (at most `max`) then that many bytes.
    pub fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(WireError::Oversize { what, len, max });
        }
        self.take(len, what)
    }
    /// Reads `N` fixed bytes.
    pub fn raw<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        self.arr(what)
    }
    /// Reads a count of following elements, each at least `min_elem` bytes, so a
    /// hostile count cannot make the caller allocate more than the payload justifies.
    pub fn count(&mut self, min_elem: usize, what: &'static str) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_elem.max(1)) > self.buf.len() {
            return Err(WireError::Oversize { what, len: n, max: self.buf.len() / min_elem.max(1) });
        }
        Ok(n)
    }
    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_is_little_endian() {
        let mut h = MsgHeader::new(4, 12, 0x0102_0304, 0x1122_3344_5566_7788, 9);
        h.sid = I32::new(-5);
        h.token = I32::new(77);
        h.flags = U16::new(FLAG_RESEND);
        h.epoch = U64::new(0x0a0b);
        let b = h.to_bytes();
        assert_eq!(&b[0..4], b"TPDM");
        assert_eq!(b[4], VERSION);
        assert_eq!(b[5], 4);
        assert_eq!(&b[12..16], &[4, 3, 2, 1]);
        assert_eq!(b[16], 0x88);
        assert_eq!(&b[40..42], &[0x0b, 0x0a]);
        assert_eq!(decode_header(&b).unwrap(), h);
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        let h = MsgHeader::new(1, 0, 1, 1, 0).to_bytes();
        assert_eq!(decode_header(&h[..10]), Err(WireError::Incomplete { needed: HEADER_LEN }));
        let mut b = h;
        b[0] = b'X';
        assert!(matches!(decode_header(&b), Err(WireError::BadMagic(_))));
        let mut b = h;
        b[4] = 9;
        assert_eq!(decode_header(&b), Err(WireError::BadVersion(9)));
        let big = MsgHeader::new(1, (MAX_PAYLOAD + 1) as u32, 1, 1, 0).to_bytes();
        assert!(matches!(decode_header(&big), Err(WireError::Oversize { .. })));
    }

    #[test]
    fn split_frame_waits_for_the_whole_payload() {
        let mut f = MsgHeader::new(1, 3, 1, 1, 0).to_bytes().to_vec();
        f.extend_from_slice(&[1, 2]);
        assert_eq!(split_frame(&f).unwrap_err(), WireError::Incomplete { needed: HEADER_LEN + 3 });
        f.extend_from_slice(&[3, 99]);
        let (_, p, used) = split_frame(&f).unwrap();
        assert_eq!(p, &[1, 2, 3]);
        assert_eq!(used, HEADER_LEN + 3);
    }

    #[test]
    fn dec_bounds_lengths_and_counts() {
        let mut e = Enc::new();
        e.u32(1000);
        let mut d = Dec::new(&e.buf);
        assert!(matches!(d.bytes(10, "x"), Err(WireError::Oversize { len: 1000, .. })));
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.bytes(2000, "x"), Err(WireError::Truncated("x")));
        let mut d = Dec::new(&e.buf);
        assert!(d.count(8, "n").is_err());
        let mut e = Enc::new();
        e.i64(-3);
        e.u8(1);
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.i64("a").unwrap(), -3);
        assert_eq!(Dec::new(&e.buf).finish(), Err(WireError::Trailing(9)));
        assert_eq!(d.u8("b").unwrap(), 1);
        d.finish().unwrap();
    }
}
