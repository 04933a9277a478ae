//! A raw DM peer for the tests that speak the cluster protocol to a node
//! themselves: the handshake (as node 99) and frame reads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use dmapi::proto::{decode_frame, encode_frame, Frame, Message};
use dmapi::types::NodeId;
use dmapi::wire::HEADER_LEN;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The node id the raw peer claims.
pub const PEER: u32 = 99;

fn mac(key: &[u8], role: &[u8], c: u32, s: u32, n1: &[u8], n2: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in [role, &c.to_le_bytes(), &s.to_le_bytes(), n1, n2] {
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

/// Reads one whole frame from `s`.
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<Frame> {
    let mut buf = vec![0u8; HEADER_LEN];
    s.read_exact(&mut buf)?;
    let h = dmapi::wire::decode_header(&buf).map_err(std::io::Error::other)?;
    buf.resize(HEADER_LEN + h.payload_len.get() as usize, 0);
    s.read_exact(&mut buf[HEADER_LEN..])?;
    Ok(decode_frame(&buf).map_err(std::io::Error::other)?.0)
}

/// Connects to node `to` at `addr` as node [`PEER`] and runs the handshake
/// with `key`.
pub fn handshake(addr: &str, to: u32, key: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n_c = [7u8; 32];
    s.write_all(&encode_frame(&Frame::new(NodeId(PEER), 0, Message::Hello { nonce: n_c })).unwrap()).unwrap();
    let Message::Challenge { nonce: n_s, .. } = read_frame(&mut s).unwrap().msg else { panic!("no challenge") };
    let m = mac(key, b"tidepool-dm C", PEER, to, &n_s, &n_c);
    s.write_all(&encode_frame(&Frame::new(NodeId(PEER), 0, Message::Auth { mac: m })).unwrap()).unwrap();
    s
}
