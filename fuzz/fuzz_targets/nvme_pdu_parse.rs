//! NVMe/TCP PDU header validation and every PDU / capsule struct parse
//! over arbitrary bytes: never panics, and a header that validates has a
//! consistent length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_wire::tcp::{CapsuleCmd, CapsuleResp, CommonHeader, DataHdr, IcReq, IcResp, TermReq, R2T};
use nvme_wire::zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let (flags, rest) = data.split_at(2);
    let Ok((ch, _)) = CommonHeader::read_from_prefix(rest) else { return };
    if let Ok(t) = ch.validate(flags[0] & 1 != 0, flags[0] & 2 != 0, u32::from(flags[1]) << 12) {
        assert_eq!(ch.hlen, t.hlen());
        assert!(ch.plen.get() >= u32::from(ch.hlen));
    }
    let _ = IcReq::read_from_prefix(rest);
    let _ = IcResp::read_from_prefix(rest);
    let _ = TermReq::read_from_prefix(rest);
    let _ = R2T::read_from_prefix(rest);
    let _ = DataHdr::read_from_prefix(rest);
    let _ = CapsuleResp::read_from_prefix(rest);
    if let Ok((c, tail)) = CapsuleCmd::read_from_prefix(rest) {
        let _ = nvme_wire::fabrics::Connect::from_sqe(&c.sqe);
        let _ = nvme_wire::fabrics::Property::from_sqe(&c.sqe);
        if let Ok((d, _)) = nvme_wire::fabrics::ConnectData::read_from_prefix(tail) {
            let _ = (d.subsysnqn(), d.hostnqn());
        }
    }
    let _ = nvme_wire::identify::parse_ns_descs(rest);
    if let Ok((ns, _)) = nvme_wire::identify::IdNs::read_from_prefix(rest) {
        let _ = ns.block_size();
    }
});
