//! The challenge/response that every Tidepool cluster protocol opens with
//! (the DM transport and the file-system manager protocol): each side proves
//! it holds the pre-shared cluster key without sending it, over nonces from
//! both ends, so a recorded handshake cannot be replayed.
//!
//! Client C connects to server S with key K and nonces of [`AUTH_LEN`] bytes:
//! `C→S {C, n_c}`, `S→C {S, n_s, proof(K, "<proto> S", C, S, n_c, n_s)}`,
//! `C→S {proof(K, "<proto> C", C, S, n_s, n_c)}`. The role string differs per
//! direction and per protocol, so a proof is never good for another message.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Read;

/// Length of handshake nonces and proofs.
pub const AUTH_LEN: usize = 32;

/// The key of a cluster whose configuration names none: fine on one
/// machine for development, never for a real cluster (who knows it may join).
pub const DEV_CLUSTER_KEY: &str = "tidepool-development-cluster-key";

type HmacSha256 = Hmac<Sha256>;

/// A fresh nonce from the kernel's random source.
pub fn nonce() -> std::io::Result<[u8; AUTH_LEN]> {
    let mut n = [0u8; AUTH_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

fn mac(key: &[u8], role: &[u8], c: u32, s: u32, n1: &[u8], n2: &[u8]) -> HmacSha256 {
    // new_from_slice accepts keys of any length for HMAC.
    let mut m = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(role);
    m.update(&c.to_le_bytes());
    m.update(&s.to_le_bytes());
    m.update(n1);
    m.update(n2);
    m
}

/// HMAC-SHA256 of the handshake's parts under the cluster key.
pub fn proof(key: &[u8], role: &[u8], c: u32, s: u32, n1: &[u8], n2: &[u8]) -> [u8; AUTH_LEN] {
    mac(key, role, c, s, n1, n2).finalize().into_bytes().into()
}

/// Whether `got` is the proof of these parts (compared in constant time).
pub fn check(key: &[u8], role: &[u8], c: u32, s: u32, n1: &[u8], n2: &[u8], got: &[u8]) -> bool {
    mac(key, role, c, s, n1, n2).verify_slice(got).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_key_role_ids_and_nonces() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(a, b);
        let p = proof(b"k", b"x S", 1, 2, &a, &b);
        assert!(check(b"k", b"x S", 1, 2, &a, &b, &p));
        assert!(!check(b"K", b"x S", 1, 2, &a, &b, &p));
        assert!(!check(b"k", b"x C", 1, 2, &a, &b, &p));
        assert!(!check(b"k", b"x S", 2, 1, &a, &b, &p));
        assert!(!check(b"k", b"x S", 1, 2, &b, &a, &p));
        assert!(!check(b"k", b"x S", 1, 2, &a, &b, &p[..31]));
    }
}
