//! Fuzzes the file-system manager protocol's framing and body decoding with
//! untrusted bytes (what a manager reads from any client, and a client from
//! the manager): never a panic, never a huge allocation, and every request it
//! accepts re-encodes to a message that decodes the same. The same bytes go
//! to the manager's side of the handshake first, which must refuse them
//! (they cannot carry a proof of the key for the nonce it just drew).
#![no_main]

use tpfs::rpc::{self, Credentials, Kind, Reply, Req, RevokeDone};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut answer = Vec::new();
    let who = rpc::handshake_server(&mut &data[..], &mut answer, &Credentials::default(), &|_| true, || Reply::Done);
    assert!(who.is_err(), "a client got in without the key: {who:?}");
    let mut rest = data;
    while let Ok((kind, id, body)) = rpc::recv(&mut rest) {
        match kind {
            Kind::Req => {
                if let Ok(req) = rpc::decode::<Req>(&body) {
                    let mut out = Vec::new();
                    rpc::send(&mut out, Kind::Req, id, &req).expect("a decoded request re-encodes");
                    let (k2, id2, b2) = rpc::recv(&mut &out[..]).expect("a re-encoded request frames");
                    assert_eq!((k2, id2), (Kind::Req, id));
                    let again = rpc::decode::<Req>(&b2).expect("a re-encoded request decodes");
                    assert_eq!(format!("{again:?}"), format!("{req:?}"));
                }
            }
            Kind::Reply => {
                if let Ok(Reply::Granted { inode, extents, .. }) = rpc::decode::<Reply>(&body) {
                    let _ = rpc::inode_from(&inode);
                    let _ = rpc::extents_from(&extents);
                }
            }
            Kind::RevokeDone => {
                let _ = rpc::decode::<RevokeDone>(&body);
            }
            Kind::Revoke | Kind::RevokeHeld => {}
        }
    }
});
