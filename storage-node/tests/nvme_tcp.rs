//! End-to-end tests: a real storage-node process, driven over loopback
//! by Tidepool's initiator and by hand-made (also malformed) PDUs.

mod common;

use common::{pattern, Node, NQN};
use nvme_wire::nvme::{opc, sqe};
use nvme_wire::resv::action;
use nvme_wire::status::Status;
use nvmf::{ConnectOpts, Controller, DataDir, NvmfError};
use std::os::unix::fs::FileExt;

fn opts(host: &str) -> ConnectOpts {
    let mut o = ConnectOpts::default().with_hostnqn(host);
    o.io_queues = 2;
    o
}

fn status_of<T: std::fmt::Debug>(r: Result<T, NvmfError>) -> Status {
    r.unwrap_err().status().expect("an NVMe status")
}

#[test]
fn data_path_with_and_without_digests() {
    let node = Node::start("32M", &["--allow-any-host"]);
    for (hd, dd) in [(false, false), (true, true), (true, false)] {
        let mut o = opts("nqn.2026-11.io.tidepool:host-a");
        o.hdgst = hd;
        o.ddgst = dd;
        let c = Controller::connect(&node.addr, NQN, &o).unwrap();
        assert_eq!(c.io_queue_count(), 2);
        let ns = c.identify_ns(1).unwrap();
        assert_eq!(ns.block_size, 512);
        assert_eq!(ns.blocks, 32 << 11);
        // Small writes go in-capsule; 128 KiB ones go by R2T / H2CData.
        for (lba, len) in [(0u64, 512usize), (8, 4096), (100, 16384), (1000, 131072), (65535 - 256, 131072)] {
            let data = pattern(lba + hd as u64 * 7 + dd as u64 * 13, len);
            c.write(1, lba, &data, lba == 8).unwrap();
            let mut back = vec![0u8; len];
            c.read(1, lba, &mut back).unwrap();
            assert_eq!(back, data, "lba {lba} len {len} digests {hd}/{dd}");
            // The bytes are in the backing file where the LBA says.
            let mut file = vec![0u8; len];
            std::fs::File::open(node.volume()).unwrap().read_exact_at(&mut file, lba * 512).unwrap();
            assert_eq!(file, data);
            c.compare(1, lba, 512, &data).unwrap();
        }
        let mut wrong = pattern(1, 4096);
        wrong[10] ^= 1;
        assert_eq!(status_of(c.compare(1, 8, 512, &wrong)).code(), Status::COMPARE_FAILED.code());
        c.flush(1).unwrap();
        c.shutdown().unwrap();
    }
}

#[test]
fn zeroes_deallocate_and_errors() {
    let node = Node::start("16M", &["--allow-any-host"]);
    let c = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:host-z")).unwrap();
    let data = pattern(5, 65536);
    c.write(1, 0, &data, false).unwrap();
    c.write_zeroes(1, 8, 8, false).unwrap();
    let mut back = vec![0u8; 65536];
    c.read(1, 0, &mut back).unwrap();
    assert_eq!(&back[..4096], &data[..4096]);
    assert!(back[4096..8192].iter().all(|&b| b == 0), "write zeroes zeroed its range");
    assert_eq!(&back[8192..], &data[8192..]);
    c.deallocate(1, &[(16, 32), (64, 8)]).unwrap();
    c.read(1, 0, &mut back).unwrap();
    assert!(back[16 * 512..48 * 512].iter().all(|&b| b == 0));
    assert!(back[64 * 512..72 * 512].iter().all(|&b| b == 0));
    assert_eq!(&back[48 * 512..64 * 512], &data[48 * 512..64 * 512]);

    let blocks = 16 << 11;
    let mut one = vec![0u8; 512];
    assert_eq!(status_of(c.read(1, blocks, &mut one)), Status::LBA_RANGE);
    assert_eq!(status_of(c.read(1, blocks - 1, &mut vec![0u8; 1024])), Status::LBA_RANGE);
    assert_eq!(status_of(c.read_blocks(7, 0, 512, &mut one)), Status::INVALID_NS);
    assert_eq!(status_of(c.deallocate(1, &[(blocks, 1)])), Status::LBA_RANGE);
    // An opcode no NVM command set defines.
    let r = c.io_queue(0).exec(sqe(0x7e, 0, 1), DataDir::None, None);
    assert_eq!(status_of(r), Status::INVALID_OPCODE);
    // Identify with an unknown CNS, and an admin opcode that is not implemented.
    let mut s = sqe(opc::IDENTIFY, 0, 0);
    s.cdw10 = 0x55.into();
    assert_eq!(status_of(c.admin_exec(s, DataDir::FromCtrl(4096), None)), Status::INVALID_FIELD);
    assert_eq!(status_of(c.admin_exec(sqe(opc::CREATE_SQ, 0, 0), DataDir::None, None)), Status::INVALID_OPCODE);
    // Disconnect belongs to I/O queues; the admin queue ends by closing.
    let disc = nvme_wire::fabrics::fabrics_sqe(nvme_wire::nvme::fctype::DISCONNECT, 0);
    assert_eq!(status_of(c.admin_exec(disc, DataDir::None, None)), Status::INVALID_OPCODE);
    let big = 4096usize << c.id.mdts;
    // Ranges of many commands, several in flight: every byte where it goes;
    // one that runs past the end fails with the range error once every
    // command sent has come back.
    let wide = pattern(11, big * 5 + 4096);
    c.write_range(1, 128, 512, &wide, false).unwrap();
    let mut back_wide = vec![0u8; wide.len()];
    c.read_range(1, 128, 512, &mut back_wide).unwrap();
    assert!(back_wide == wide, "a pipelined range reads back what was written");
    let tail = blocks - (big as u64 / 512) * 2;
    assert_eq!(status_of(c.read_range(1, tail, 512, &mut vec![0u8; big * 4])), Status::LBA_RANGE);
    assert_eq!(status_of(c.write_range(1, tail, 512, &vec![1u8; big * 4], false)), Status::LBA_RANGE);
    c.read_range(1, 128, 512, &mut back_wide).unwrap();
    assert!(back_wide == wide, "the queue is in step after the failed ranges");
    // A transfer larger than MDTS.
    assert_eq!(status_of(c.read(1, 0, &mut vec![0u8; big * 2])), Status::INVALID_FIELD);
    // The connection is still good after all of that.
    c.read(1, 0, &mut one).unwrap();
    assert_eq!(&one[..], &data[..512]);
    // The failures are in the Error Information log, newest first.
    let mut log = vec![0u8; 64 * 32];
    c.get_log_page(nvme_wire::nvme::lid::ERROR, 0, &mut log).unwrap();
    let entry = |i: usize| {
        let e = &log[i * 64..i * 64 + 64];
        let count = u64::from_le_bytes(e[0..8].try_into().unwrap());
        let status = Status::from_cqe_field(u16::from_le_bytes([e[12], e[13]]));
        let nsid = u32::from_le_bytes(e[24..28].try_into().unwrap());
        (count, status, nsid)
    };
    let (newest, st, _) = entry(0);
    assert_eq!(st, Status::INVALID_FIELD, "the MDTS violation was last");
    let (older, _, _) = entry(1);
    assert_eq!(older + 1, newest);
    let all: Vec<_> = (0..32).map(entry).collect();
    assert!(all.iter().any(|&(_, s, n)| s == Status::INVALID_NS && n == 7));
    assert!(all.iter().any(|&(_, s, n)| s == Status::LBA_RANGE && n == 1));
}

#[test]
fn two_hosts_share_a_namespace() {
    let node = Node::start("16M", &["--allow-any-host"]);
    let a = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:host-1")).unwrap();
    // The second host polls its sockets instead of sleeping in the kernel.
    let mut ob = opts("nqn.2026-11.io.tidepool:host-2");
    ob.poll_mode = true;
    let b = Controller::connect(&node.addr, NQN, &ob).unwrap();
    assert_ne!(a.cntlid, b.cntlid);
    assert_eq!(a.identify_ns(1).unwrap().nguid, b.identify_ns(1).unwrap().nguid, "one namespace, one NGUID");
    let d = pattern(9, 8192);
    a.write(1, 40, &d, false).unwrap();
    let mut back = vec![0u8; 8192];
    b.read(1, 40, &mut back).unwrap();
    assert_eq!(back, d);
    let d2 = pattern(10, 8192);
    b.write(1, 40, &d2, false).unwrap();
    a.read(1, 40, &mut back).unwrap();
    assert_eq!(back, d2);
}

#[test]
fn reservations_fence_a_host() {
    let node = Node::start("16M", &["--allow-any-host"]);
    let a = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:mgr-a")).unwrap();
    let b = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:mgr-b")).unwrap();
    let d = pattern(3, 4096);
    a.resv_register(1, action::REGISTER, false, 0, 0xaaaa).unwrap();
    b.resv_register(1, action::REGISTER, false, 0, 0xbbbb).unwrap();
    a.resv_acquire(1, action::ACQUIRE, 1, 0xaaaa, 0).unwrap(); // Write Exclusive
    let (gen, rtype, regs) = b.resv_report(1).unwrap();
    assert_eq!(rtype, 1);
    assert_eq!(gen, 2);
    assert_eq!(regs.len(), 2);
    let holder: Vec<_> = regs.iter().filter(|r| r.rcsts & 1 == 1).map(|r| r.rkey.get()).collect();
    assert_eq!(holder, vec![0xaaaa]);
    a.write(1, 0, &d, false).unwrap();
    assert_eq!(status_of(b.write(1, 0, &d, false)), Status::RESERVATION_CONFLICT);
    let mut back = vec![0u8; 4096];
    b.read(1, 0, &mut back).unwrap(); // reads are allowed under Write Exclusive
    assert_eq!(back, d);
    // B fences A: preempt and abort, taking Exclusive Access.
    assert_eq!(status_of(b.resv_acquire(1, action::ACQUIRE, 1, 0xbbbb, 0)), Status::RESERVATION_CONFLICT);
    b.resv_acquire(1, action::PREEMPT_ABORT, 2, 0xbbbb, 0xaaaa).unwrap();
    assert_eq!(status_of(a.write(1, 0, &d, false)), Status::RESERVATION_CONFLICT);
    assert_eq!(status_of(a.read(1, 0, &mut back)), Status::RESERVATION_CONFLICT);
    let (_, rtype, regs) = a.resv_report(1).unwrap();
    assert_eq!((rtype, regs.len()), (2, 1));
    b.write(1, 0, &pattern(4, 4096), false).unwrap();
    b.resv_release(1, action::RELEASE, 2, 0xbbbb).unwrap();
    a.read(1, 0, &mut back).unwrap();
    assert_eq!(back, pattern(4, 4096));
}

#[test]
fn only_listed_hosts_connect() {
    let node = Node::start("8M", &["--allow-host", "nqn.2026-11.io.tidepool:allowed"]);
    let err = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:stranger")).unwrap_err();
    assert_eq!(err.status().map(|s| s.code()), Some(Status::CONNECT_INVALID_HOST.code()), "{err}");
    let err = Controller::connect(&node.addr, "nqn.2026-11.io.tidepool:nope", &opts("nqn.2026-11.io.tidepool:allowed"))
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.code()), Some(Status::CONNECT_INVALID_PARAM.code()), "{err}");
    let c = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:allowed")).unwrap();
    c.write(1, 0, &[1u8; 512], false).unwrap();
    // Discovery shows the subsystem only to hosts allowed into it.
    let d = node.discovery.as_ref().unwrap();
    let seen = nvmf::discover(d, &opts("nqn.2026-11.io.tidepool:allowed")).unwrap();
    assert!(seen.iter().any(|e| e.subnqn() == NQN && e.trsvcid() == node.addr.rsplit(':').next().unwrap()));
    let hidden = nvmf::discover(d, &opts("nqn.2026-11.io.tidepool:stranger")).unwrap();
    assert!(hidden.iter().all(|e| e.subnqn() != NQN));
}

/// Many commands in flight on one queue are gathered into backend
/// batches; each still gets its own status and data, including when some
/// in a batch fail (a read past the end of a shrunken file, a write
/// fenced off by a reservation).
#[test]
fn batched_io_keeps_each_command_s_result() {
    use nvmf::io_sqe;
    let node = Node::start("16M", &["--allow-any-host"]);
    let mut o = opts("nqn.2026-11.io.tidepool:batch-a");
    o.io_queues = 1;
    let a = Controller::connect(&node.addr, NQN, &o).unwrap();
    let data = pattern(77, 1 << 20);
    for (i, chunk) in data.chunks(65536).enumerate() {
        a.write(1, (i * 128) as u64, chunk, false).unwrap();
    }
    // The namespace keeps its size; the file behind it loses its second half.
    std::fs::OpenOptions::new().write(true).open(node.volume()).unwrap().set_len(512 << 10).unwrap();
    let mut q = a.io_queue(0);
    let mut want = std::collections::HashMap::new();
    for k in 0..32u64 {
        let lba = if k % 2 == 0 { k * 8 } else { 1024 + k * 8 };
        let cid = q.submit(io_sqe(false, 1, lba, 8), DataDir::FromCtrl(4096), k).unwrap();
        want.insert(cid, lba);
    }
    let mut out = Vec::new();
    while out.len() < 32 {
        q.poll(&mut out, 1).unwrap();
    }
    for c in &out {
        let lba = want[&c.cid] as usize;
        if lba < 1024 {
            assert!(c.status.is_success(), "lba {lba}: {}", c.status);
            assert_eq!(q.data(c.cid), &data[lba * 512..lba * 512 + 4096], "lba {lba}");
        } else {
            assert_eq!(c.status.code(), Status::UNRECOVERED_READ.code(), "lba {lba}");
        }
    }
    drop(q);

    // A fenced host's batch: its reads pass, its writes conflict.
    let b = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:batch-b")).unwrap();
    a.resv_register(1, action::REGISTER, false, 0, 1).unwrap();
    a.resv_acquire(1, action::ACQUIRE, 1, 1, 0).unwrap();
    let mut q = b.io_queue(0);
    let junk = pattern(5, 4096);
    let mut kinds = std::collections::HashMap::new();
    for k in 0..32u64 {
        let write = k % 3 == 0;
        let dir = if write { DataDir::ToCtrl(&junk) } else { DataDir::FromCtrl(4096) };
        let cid = q.submit(io_sqe(write, 1, k * 8, 8), dir, k).unwrap();
        kinds.insert(cid, (write, k * 8));
    }
    let mut out = Vec::new();
    while out.len() < 32 {
        q.poll(&mut out, 1).unwrap();
    }
    for c in &out {
        let (write, lba) = kinds[&c.cid];
        if write {
            assert_eq!(c.status, Status::RESERVATION_CONFLICT);
        } else {
            assert!(c.status.is_success());
            let lba = lba as usize;
            assert_eq!(q.data(c.cid), &data[lba * 512..lba * 512 + 4096]);
        }
    }
}

/// The registrants-only and all-registrants reservation types: a
/// registered host keeps the access its type gives registrants, an
/// unregistered one gets only what it gives everybody (reads under the
/// Write Exclusive kinds, nothing under the Exclusive Access kinds).
#[test]
fn registrant_reservation_types_fence_only_unregistered_hosts() {
    let node = Node::start("16M", &["--allow-any-host"]);
    let holder = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:rt-holder")).unwrap();
    let member = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:rt-member")).unwrap();
    let outsider = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:rt-outsider")).unwrap();
    holder.resv_register(1, action::REGISTER, false, 0, 0x1111).unwrap();
    member.resv_register(1, action::REGISTER, false, 0, 0x2222).unwrap();
    let d = pattern(9, 4096);
    let mut back = vec![0u8; 4096];
    // (type, name, outsiders may read)
    for (rtype, name, outsider_reads) in [
        (3u8, "Write Exclusive - Registrants Only", true),
        (4, "Exclusive Access - Registrants Only", false),
        (5, "Write Exclusive - All Registrants", true),
        (6, "Exclusive Access - All Registrants", false),
    ] {
        holder.resv_acquire(1, action::ACQUIRE, rtype, 0x1111, 0).unwrap();
        let (_, t, regs) = outsider.resv_report(1).unwrap();
        assert_eq!((t, regs.len()), (rtype, 2), "{name}");
        holder.write(1, 0, &d, false).unwrap_or_else(|e| panic!("{name}: the holder writes: {e}"));
        member.write(1, 8, &d, false).unwrap_or_else(|e| panic!("{name}: a registrant writes: {e}"));
        member.read(1, 0, &mut back).unwrap_or_else(|e| panic!("{name}: a registrant reads: {e}"));
        assert_eq!(back, d);
        assert_eq!(status_of(outsider.write(1, 0, &d, false)), Status::RESERVATION_CONFLICT, "{name}: outsider write");
        let read = outsider.read(1, 0, &mut back);
        if outsider_reads {
            read.unwrap_or_else(|e| panic!("{name}: an outsider reads: {e}"));
        } else {
            assert_eq!(status_of(read), Status::RESERVATION_CONFLICT, "{name}: outsider read");
        }
        // Releasing with another type than the one held is refused.
        let other = if rtype == 3 { 4 } else { 3 };
        assert!(holder.resv_release(1, action::RELEASE, other, 0x1111).is_err(), "{name}: release with type {other}");
        holder.resv_release(1, action::RELEASE, rtype, 0x1111).unwrap();
        outsider.write(1, 16, &d, false).unwrap_or_else(|e| panic!("{name}: released, the outsider writes: {e}"));
    }
}

/// SMART / health, firmware slot and commands-supported-and-effects log
/// pages, and Get/Set Features, through Tidepool's own initiator.
#[test]
fn log_pages_and_features_through_the_initiator() {
    use nvme_wire::log::SmartLog;
    use nvme_wire::nvme::{feat, lid};
    use zerocopy::FromBytes;
    let node = Node::start("16M", &["--allow-any-host"]);
    let c = Controller::connect(&node.addr, NQN, &opts("nqn.2026-11.io.tidepool:logs")).unwrap();
    let smart = |c: &Controller| {
        let mut b = vec![0u8; 512];
        c.get_log_page(lid::SMART, 0, &mut b).unwrap();
        SmartLog::read_from_bytes(&b).unwrap()
    };
    let count = |v: [u8; 16]| u128::from_le_bytes(v);
    let s0 = smart(&c);
    assert_eq!((s0.critical_warning, s0.avail_spare, s0.spare_thresh), (0, 100, 10));
    assert!(s0.temperature.get() > 273, "kelvin: {}", s0.temperature.get());
    let d = pattern(1, 64 * 1024);
    for i in 0..10 {
        c.write(1, i * 128, &d, false).unwrap();
    }
    let mut back = vec![0u8; 64 * 1024];
    c.read(1, 0, &mut back).unwrap();
    let s1 = smart(&c);
    assert_eq!(count(s1.host_writes) - count(s0.host_writes), 10, "host write commands");
    assert!(count(s1.host_reads) > count(s0.host_reads));
    assert!(count(s1.data_units_written) >= 2, "640 KiB written: 1,280 units of 512 B, rounded up to thousands");

    let mut fw = vec![0u8; 512];
    c.get_log_page(lid::FW_SLOT, 0, &mut fw).unwrap();
    assert_eq!(fw[0] & 0x7, 1, "slot 1 active");
    let rev = String::from_utf8_lossy(&fw[8..16]).trim().to_string();
    assert!(!rev.is_empty() && rev.chars().all(|ch| ch.is_ascii_graphic()), "firmware revision {rev:?}");

    let mut fx = vec![0u8; 4096];
    c.get_log_page(lid::CMD_EFFECTS, 0, &mut fx).unwrap();
    let entry = |at: usize| u32::from_le_bytes(fx[at..at + 4].try_into().unwrap());
    let (admin, io) = (|op: u8| entry(op as usize * 4), |op: u8| entry(1024 + op as usize * 4));
    assert_eq!(admin(opc::IDENTIFY) & 1, 1, "Identify supported");
    assert_eq!(admin(0x7f), 0, "an opcode nobody implements");
    assert_eq!(io(opc::READ), 1, "Read: supported, changes no content");
    assert_eq!(io(opc::WRITE) & 0b11, 0b11, "Write: supported, changes logical block content");

    // Keep Alive Timer: set, then read back; Number of Queues as granted.
    assert_eq!(c.set_features(feat::KATO, 15_000).unwrap(), 0);
    assert_eq!(c.get_features(feat::KATO).unwrap(), 15_000);
    let q = c.get_features(feat::NUM_QUEUES).unwrap();
    assert_eq!((q & 0xffff, q >> 16), (1, 1), "two I/O queues granted: zero-based 1 and 1");
    assert_eq!(status_of(c.get_features(0xee)), Status::INVALID_FIELD, "an unknown feature");
    let mut bad = vec![0u8; 512];
    assert_eq!(status_of(c.get_log_page(0x7e, 0, &mut bad)), Status::INVALID_LOG_PAGE);
}
