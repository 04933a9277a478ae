//! Drives the NVMe/TCP queue state machine over a Unix socket pair, with
//! no network: the fuzzer and property tests feed it arbitrary bytes.

use super::tcp::{serve, TcpOpts};
use crate::target::Target;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// Sends `input` to a fresh queue of `target` as a host would, closes the
/// host's sending side, and returns everything the target sent back
/// before it closed the connection. Panics if the queue thread panicked.
pub fn drive(target: &Arc<Target>, input: &[u8]) -> Vec<u8> {
    let (host, ctrl) = UnixStream::pair().expect("socketpair");
    let t = target.clone();
    let server = std::thread::spawn(move || serve(t, ctrl, TcpOpts::default()));
    let mut rd = host.try_clone().expect("clone");
    // Read concurrently: the target blocks once the socket buffer is full.
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out);
        out
    });
    let mut w = &host;
    let _ = w.write_all(input);
    let _ = host.shutdown(Shutdown::Write);
    server.join().expect("queue thread panicked");
    let _ = host.shutdown(Shutdown::Both);
    reader.join().expect("reader panicked")
}

/// The bytes of a valid ICReq, then an admin-queue Connect to `subnqn`
/// with CC enabled: a prefix that gets generated input past the handshake.
pub fn connected_prefix(subnqn: &str) -> Vec<u8> {
    use nvme_wire::fabrics::{cc, Connect, ConnectData, Property};
    use nvme_wire::nvme::sgl;
    use nvme_wire::tcp::{CapsuleCmd, CommonHeader, IcReq, PduType};
    use nvme_wire::zerocopy::{FromZeros, IntoBytes};
    let mut out = Vec::new();
    let mut ic = IcReq::new_zeroed();
    ic.ch = CommonHeader::new(PduType::IcReq, 0, 0, 128);
    out.extend_from_slice(ic.as_bytes());
    let mut sqe = Connect { recfmt: 0, qid: 0, sqsize: 31, cattr: 0, kato: 0 }.to_sqe(1);
    sqe.flags = sgl::PSDT_SGL_MPTR_CONTIG << 6;
    sqe.dptr.length = 1024.into();
    sqe.dptr.type_ = sgl::DATA_BLOCK_OFFSET;
    let cap = CapsuleCmd { ch: CommonHeader::new(PduType::CapsuleCmd, 0, 72, 72 + 1024), sqe };
    out.extend_from_slice(cap.as_bytes());
    out.extend_from_slice(ConnectData::new([9; 16], 0xffff, subnqn, "nqn.2026-11.io.tidepool:fuzz").as_bytes());
    let en = Property { eight: false, offset: nvme_wire::nvme::prop::CC, value: cc::ENABLE_DEFAULT as u64 }.set_sqe(2);
    let cap = CapsuleCmd { ch: CommonHeader::new(PduType::CapsuleCmd, 0, 0, 72), sqe: en };
    out.extend_from_slice(cap.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use proptest::prelude::*;

    fn target() -> Arc<Target> {
        let cfg = Config::single_memory("nqn.2026-11.io.tidepool:pair", 1 << 20, "127.0.0.1:0");
        let t = Target::new(cfg.target_opts());
        let s = t.add_subsystem(cfg.subsystem[0].build_subsystem()).unwrap();
        s.add_namespace(cfg.subsystem[0].namespace[0].build("nqn.2026-11.io.tidepool:pair").unwrap()).unwrap();
        t
    }

    #[test]
    fn the_prefix_connects_and_enables() {
        let t = target();
        let out = drive(&t, &connected_prefix("nqn.2026-11.io.tidepool:pair"));
        // ICResp (128) + two CapsuleResps (24 each), all successful.
        assert_eq!(out.len(), 128 + 24 + 24, "{out:?}");
        assert_eq!(out[0], 0x01);
        for r in [&out[128..152], &out[152..176]] {
            assert_eq!(r[0], 0x05);
            assert_eq!(u16::from_le_bytes([r[22], r[23]]) >> 1, 0, "status");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
        /// Arbitrary bytes after a valid handshake never panic the queue,
        /// and whatever comes back starts with the ICResp.
        #[test]
        fn arbitrary_input_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..600), connect: bool) {
            let t = target();
            let mut input = if connect { connected_prefix("nqn.2026-11.io.tidepool:pair") } else { Vec::new() };
            input.extend_from_slice(&tail);
            let out = drive(&t, &input);
            if connect {
                prop_assert_eq!(out[0], 0x01);
            }
        }
    }
}
