//! Malformed and out-of-sequence input: the connection that sent it is
//! terminated with a C2HTermReq, nothing panics, other connections and
//! the data on the volume are unaffected. Also keep-alive expiry and
//! asynchronous events.

mod common;

use common::{pattern, Node, NQN};
use nvme_wire::fabrics::{Connect, ConnectData};
use nvme_wire::nvme::{opc, sqe};
use nvme_wire::tcp::{fes, CommonHeader, IcReq, PduType};
use nvme_wire::zerocopy::{FromZeros, IntoBytes};
use nvmf::{ConnectOpts, Controller, DataDir, QueuePair};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn raw(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn icreq(digest: u8) -> Vec<u8> {
    let mut r = IcReq::new_zeroed();
    r.ch = CommonHeader::new(PduType::IcReq, 0, 0, 128);
    r.digest = digest;
    r.as_bytes().to_vec()
}

/// Reads until the controller closes; returns the FES of the C2HTermReq it sent.
fn expect_term(s: &mut TcpStream) -> u16 {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    // Skip an ICResp if the exchange got that far.
    let mut at = 0;
    while at + 8 <= all.len() {
        let plen = u32::from_le_bytes(all[at + 4..at + 8].try_into().unwrap()) as usize;
        if all[at] == PduType::C2HTermReq as u8 {
            return u16::from_le_bytes([all[at + 8], all[at + 9]]);
        }
        at += plen.max(8);
    }
    panic!("no C2HTermReq in {} bytes", all.len());
}

fn after_icresp(addr: &str) -> TcpStream {
    let mut s = raw(addr);
    s.write_all(&icreq(0)).unwrap();
    let mut b = [0u8; 128];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0], PduType::IcResp as u8);
    s
}

#[test]
fn malformed_pdus_terminate_only_their_connection() {
    let node = Node::start("8M", &["--allow-any-host"]);
    let good = Controller::connect(&node.addr, NQN, &ConnectOpts::default()).unwrap();
    let data = pattern(1, 4096);
    good.write(1, 0, &data, false).unwrap();

    // 1. The first PDU is not an ICReq.
    let mut s = raw(&node.addr);
    let mut bogus = icreq(0);
    bogus[0] = PduType::CapsuleCmd as u8;
    s.write_all(&bogus).unwrap();
    assert_eq!(expect_term(&mut s), fes::INVALID_HEADER_FIELD);

    // 2. Unsupported PDU format version.
    let mut s = raw(&node.addr);
    let mut v = icreq(0);
    v[8] = 1;
    s.write_all(&v).unwrap();
    assert_eq!(expect_term(&mut s), fes::UNSUPPORTED_PARAMETER);

    // 3. A capsule with the wrong header length.
    let mut s = after_icresp(&node.addr);
    let mut ch = CommonHeader::new(PduType::CapsuleCmd, 0, 0, 72);
    ch.hlen = 64;
    let mut pdu = ch.as_bytes().to_vec();
    pdu.extend_from_slice(sqe(opc::IDENTIFY, 1, 0).as_bytes());
    s.write_all(&pdu).unwrap();
    assert_eq!(expect_term(&mut s), fes::INVALID_HEADER_FIELD);

    // 4. An unknown PDU type.
    let mut s = after_icresp(&node.addr);
    s.write_all(&[0x0b, 0, 24, 0, 24, 0, 0, 0]).unwrap();
    s.write_all(&[0u8; 16]).unwrap();
    assert_eq!(expect_term(&mut s), fes::INVALID_HEADER_FIELD);

    // 5. A PDU claiming to be enormous.
    let mut s = after_icresp(&node.addr);
    let ch = CommonHeader::new(PduType::CapsuleCmd, 0, 72, 0x7fff_ffff);
    s.write_all(ch.as_bytes()).unwrap();
    s.write_all(&[0u8; 64]).unwrap();
    assert_eq!(expect_term(&mut s), fes::DATA_OUT_OF_RANGE);

    // 6. Header digest negotiated but wrong.
    let mut s = raw(&node.addr);
    s.write_all(&icreq(nvme_wire::tcp::digest::HDGST_ENABLE)).unwrap();
    let mut b = [0u8; 128];
    s.read_exact(&mut b).unwrap();
    let ch = CommonHeader::new(PduType::CapsuleCmd, 1, 0, 76);
    let mut pdu = ch.as_bytes().to_vec();
    pdu.extend_from_slice(sqe(opc::IDENTIFY, 1, 0).as_bytes());
    pdu.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    s.write_all(&pdu).unwrap();
    assert_eq!(expect_term(&mut s), fes::HDR_DIGEST_ERROR);

    // 7. H2CData nobody asked for.
    let mut s = after_icresp(&node.addr);
    let h = nvme_wire::tcp::DataHdr {
        ch: CommonHeader::new(PduType::H2CData, 0, 24, 24 + 512),
        cccid: 3.into(),
        ttag: 9.into(),
        datao: 0.into(),
        datal: 512.into(),
        rsvd: [0; 4],
    };
    s.write_all(h.as_bytes()).unwrap();
    s.write_all(&[0u8; 512]).unwrap();
    assert_eq!(expect_term(&mut s), fes::INVALID_HEADER_FIELD);

    // 8. Truncated: the peer vanishes mid-PDU.
    let mut s = after_icresp(&node.addr);
    s.write_all(CommonHeader::new(PduType::CapsuleCmd, 0, 0, 72).as_bytes()).unwrap();
    s.write_all(&[0u8; 10]).unwrap();
    drop(s);

    // 9. Commands before Connect get Command Sequence Error, not a crash.
    let mut q = QueuePair::connect(&node.addr, 0, 32, false, false).unwrap();
    let mut id = sqe(opc::IDENTIFY, 0, 0);
    id.cdw10 = 1.into();
    let r = q.exec(id, DataDir::FromCtrl(4096), None).unwrap_err();
    assert_eq!(r.status(), Some(nvme_wire::status::Status::CMD_SEQ_ERROR));

    // 10. Random garbage after a valid ICReq, for good measure.
    for seed in 0..20u64 {
        let mut s = after_icresp(&node.addr);
        let junk = pattern(seed, 300);
        let _ = s.write_all(&junk);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }

    // The good connection and the data are untouched.
    let mut back = vec![0u8; 4096];
    good.read(1, 0, &mut back).unwrap();
    assert_eq!(back, data);
    let again = Controller::connect(&node.addr, NQN, &ConnectOpts::default()).unwrap();
    again.read(1, 0, &mut back).unwrap();
    assert_eq!(back, data);
}

fn connect_admin(addr: &str, kato_ms: u32) -> (QueuePair, u16) {
    let o = ConnectOpts::default();
    let mut q = QueuePair::connect(addr, 0, 32, false, false).unwrap();
    let c = Connect { recfmt: 0, qid: 0, sqsize: 31, cattr: 0, kato: kato_ms };
    let d = ConnectData::new(o.hostid, 0xffff, NQN, &o.hostnqn);
    let r = q.exec(c.to_sqe(0), DataDir::ToCtrl(d.as_bytes()), None).unwrap();
    (q, r.result as u16)
}

#[test]
fn keep_alive_timeout_tears_the_controller_down() {
    let node = Node::start("8M", &["--allow-any-host"]);
    let (mut q, _) = connect_admin(&node.addr, 300);
    // Keep it alive for a while, then go silent.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(100));
        q.exec(sqe(opc::KEEP_ALIVE, 0, 0), DataDir::None, None).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1200));
    let r = q.exec(sqe(opc::KEEP_ALIVE, 0, 0), DataDir::None, None);
    assert!(r.is_err(), "the controller should be gone after its keep-alive timeout");
}

#[test]
fn asynchronous_event_reports_a_new_namespace() {
    // In process, so the test can add a namespace while a host is connected.
    let cfg = storage_node::config::Config::single_memory(NQN, 8 << 20, "127.0.0.1:0");
    let node = storage_node::start(&cfg).unwrap();
    let addr = node.listeners[0].addr.to_string();
    let c = Controller::connect(&addr, NQN, &ConnectOpts::default()).unwrap();
    assert_eq!(c.active_namespaces().unwrap(), vec![1]);
    let cid = {
        let mut a = c.admin_queue();
        let cid = a.submit(sqe(opc::ASYNC_EVENT_REQUEST, 0, 0), DataDir::None, 77).unwrap();
        a.flush().unwrap();
        cid
    };
    std::thread::sleep(Duration::from_millis(100));
    let sub = node.target.subsystem(NQN).unwrap();
    let ns = storage_node::namespace::Namespace::new(
        2,
        Box::new(storage_node::backend::mem::MemBackend::new(4 << 20)),
        4096,
        [2; 16],
    )
    .unwrap();
    node.target.add_namespace(&sub, ns).unwrap();
    let mut out = Vec::new();
    c.admin_queue().poll(&mut out, 1).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].cid, out[0].tag), (cid, 77));
    assert!(out[0].status.is_success());
    // Notice, namespace attribute changed, log page 04h.
    assert_eq!(out[0].result as u32, 0x0004_0002);
    let mut log = vec![0u8; 4096];
    c.get_log_page(nvme_wire::nvme::lid::CHANGED_NS, 0, &mut log).unwrap();
    assert_eq!(&log[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.active_namespaces().unwrap(), vec![1, 2]);
    assert_eq!(c.identify_ns(2).unwrap().block_size, 4096);
    // Out of service: I/O is refused with a status the host may retry.
    let ns2 = sub.namespace(2).unwrap();
    ns2.ready.store(false, std::sync::atomic::Ordering::Release);
    let e = c.read_blocks(2, 0, 4096, &mut [0u8; 4096]).unwrap_err();
    assert_eq!(e.status(), Some(nvme_wire::status::Status::NS_NOT_READY));
    assert!(!nvme_wire::status::Status::NS_NOT_READY.dnr());
    ns2.ready.store(true, std::sync::atomic::Ordering::Release);
    c.write_blocks(2, 1, 4096, &[7u8; 4096], false).unwrap();
}

#[test]
fn a_preempted_host_hears_of_it() {
    use nvme_wire::resv::action;
    let node = Node::start("8M", &["--allow-any-host"]);
    let a =
        Controller::connect(&node.addr, NQN, &ConnectOpts::default().with_hostnqn("nqn.2026-11.io.tidepool:old-mgr"))
            .unwrap();
    let b =
        Controller::connect(&node.addr, NQN, &ConnectOpts::default().with_hostnqn("nqn.2026-11.io.tidepool:new-mgr"))
            .unwrap();
    a.resv_register(1, action::REGISTER, false, 0, 0xa).unwrap();
    b.resv_register(1, action::REGISTER, false, 0, 0xb).unwrap();
    a.resv_acquire(1, action::ACQUIRE, 2, 0xa, 0).unwrap();
    let cid = {
        let mut q = a.admin_queue();
        let cid = q.submit(sqe(opc::ASYNC_EVENT_REQUEST, 0, 0), DataDir::None, 0).unwrap();
        q.flush().unwrap();
        cid
    };
    b.resv_acquire(1, action::PREEMPT_ABORT, 2, 0xb, 0xa).unwrap();
    let mut out = Vec::new();
    a.admin_queue().poll(&mut out, 1).unwrap();
    assert_eq!(out[0].cid, cid);
    // I/O command specific event, reservation log page available, log 80h.
    assert_eq!(out[0].result as u32, 0x0080_0006);
    let mut log = vec![0u8; 64];
    a.get_log_page(nvme_wire::nvme::lid::RESV_NOTIFICATION, 0, &mut log).unwrap();
    assert_eq!(u64::from_le_bytes(log[0..8].try_into().unwrap()), 1, "count");
    assert_eq!(log[8], nvme_wire::log::resv_notif::REGISTRATION_PREEMPTED);
    assert_eq!(u32::from_le_bytes(log[12..16].try_into().unwrap()), 1, "nsid");
    // Reading removed it; the preempting host got nothing.
    a.get_log_page(nvme_wire::nvme::lid::RESV_NOTIFICATION, 0, &mut log).unwrap();
    assert_eq!(log[8], 0);
    b.get_log_page(nvme_wire::nvme::lid::RESV_NOTIFICATION, 0, &mut log).unwrap();
    assert_eq!(log[8], 0);
}
