//! B6 and B9 end to end: a DM application on node A migrates a file's data
//! off the volume (invisible read, DM attribute, punched hole, managed
//! region), a program on node B reads the file, the read event reaches A,
//! which takes an exclusive right (B's access to the file waits, cluster
//! wide), recalls the data with an invisible write and answers CONTINUE;
//! B's read then returns the original bytes and the file's times are as
//! they were.
//!
//! Node daemons are real processes (the cluster harness); the mount on B
//! and the DM application on A are clients of one file-system manager.

mod common;

use common::{standard, Cluster};
use dmapi::event::EventBody;
use dmapi::types::{DmHandle, DmResponse, DmRight, DmSessId, EventSet, EventType, FsId, DM_EV_WAIT};
use node::dm::files::{DmFs, ExtentType};
use node::sink::SocketSink;
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tpfs::blockdev::{BlockDev, MemDev};
use tpfs::format::{region_flags, Region};
use tpfs::fuse::spawn_mount;

#[test]
fn hsm_migrates_and_recalls_under_an_exclusive_right() {
    if !common::fuse_available() {
        return;
    }
    let c = Cluster::start(&standard("", false));
    // The HSM's session on node 3 (A), for data events of fs 1.
    let api_a = libdmapi::Dm::connect(c.socket(3)).unwrap();
    let sid: DmSessId = api_a.dm_create_session(DmSessId(0), b"hsm").unwrap();
    let set: EventSet = [EventType::Read, EventType::Write, EventType::Truncate].into_iter().collect();
    api_a.dm_set_disp(sid, &DmHandle::fs(FsId(1)), set).unwrap();
    api_a.dm_set_eventlist(sid, &DmHandle::fs(FsId(1)), set).unwrap();
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);

    // Node 4 (B) mounts; the HSM on A is another client of the same manager.
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new(4096, 32 << 20));
    tpfs::mkfs::mkfs(&*dev, &Default::default()).unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let api_b = libdmapi::Dm::connect(c.socket(4)).unwrap();
    let mount = spawn_mount(dev.clone(), mnt.path(), Some(SocketSink::link(api_b, FsId(1)))).unwrap();
    let hsm = DmFs::connect(mount.manager_addr().unwrap(), dev.clone(), FsId(1), "hsm-on-A").unwrap();

    let f = mnt.path().join("cold");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    // The write raises synchronous events (no regions yet: the whole file
    // is managed); the HSM answers them while it runs.
    let (f1, d1) = (f.clone(), data.clone());
    let writer = std::thread::spawn(move || std::fs::write(&f1, &d1).unwrap());
    while !writer.is_finished() {
        drain_and_continue(&api_a, sid, Duration::from_millis(50));
    }
    writer.join().unwrap();
    let before = std::fs::metadata(&f).unwrap();
    let free_before = statvfs_free(mnt.path());

    // Migrate: under an exclusive right, copy out, mark, punch, manage.
    let h = hsm.path_to_handle(&f).unwrap();
    assert_eq!(h.ino().unwrap(), before.ino());
    assert!(hsm.punch_hole(&h, 0, 0).is_err(), "punching needs the exclusive right");
    hsm.request_right(&h, DmRight::Excl).unwrap();
    assert_eq!(hsm.query_right(&h).unwrap(), DmRight::Excl);
    let copy = hsm.read_invis(&h, 0, data.len() as u64).unwrap();
    assert_eq!(copy, data, "invisible read");
    let tier = tempfile::tempdir().unwrap();
    std::fs::write(tier.path().join("obj-1"), &copy).unwrap();
    hsm.set_dmattr(&h, b"hsm", b"obj-1").unwrap();
    assert_eq!(hsm.probe_hole(&h, 100, 10_000).unwrap(), (4096, 4096), "whole blocks only");
    hsm.punch_hole(&h, 0, 0).unwrap();
    let rw = region_flags::READ | region_flags::WRITE | region_flags::TRUNCATE;
    hsm.set_region(&h, &[Region { offset: 0, size: 0, flags: rw }]).unwrap();
    hsm.release_right(&h).unwrap();
    assert_eq!(hsm.get_allocinfo(&h).unwrap(), vec![(0, 303_104, ExtentType::Hole)], "all data off the volume");
    assert_eq!(hsm.get_dmattr(&h, b"hsm").unwrap(), b"obj-1");
    assert!(hsm.get_dmattr(&h, b"nope").is_err());
    assert!(hsm.set_dmattr(&h, b"too-long-name", b"x").is_err(), "bad DMAPI arguments get a clear error");
    assert!(statvfs_free(mnt.path()) >= free_before + 73, "punching freed the file's blocks");
    assert_eq!(std::fs::metadata(&f).unwrap().len(), data.len() as u64, "the size stays");

    // B reads the migrated file: its read blocks on the event.
    let (tx, rx) = mpsc::channel();
    let f2 = f.clone();
    std::thread::spawn(move || tx.send(std::fs::read(&f2).unwrap()).unwrap());
    let ev = next_event(&api_a, sid);
    assert_eq!(ev.ev_type, EventType::Read);
    assert_eq!(ev.source.0, 4, "B12: generated on node 4");
    let EventBody::Data { handle, .. } = ev.body else { panic!("{ev:?}") };
    assert_eq!(handle, h, "the event names the migrated file");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "B4: the read waits for the answer");

    // Recall under an exclusive right: any access to the file from B waits.
    hsm.request_right(&h, DmRight::Excl).unwrap();
    let (stx, srx) = mpsc::channel();
    let f3 = f.clone();
    std::thread::spawn(move || stx.send(std::fs::metadata(&f3).map(|m| m.len()).ok()).unwrap());
    assert!(srx.recv_timeout(Duration::from_millis(400)).is_err(), "B6: B's stat waits for A's right");
    let key = hsm.get_dmattr(&h, b"hsm").unwrap();
    let back = std::fs::read(tier.path().join(String::from_utf8(key).unwrap())).unwrap();
    assert_eq!(hsm.write_invis(&h, 0, &back, true).unwrap(), back.len());
    hsm.set_region(&h, &[]).unwrap();
    hsm.remove_dmattr(&h, b"hsm").unwrap();
    hsm.release_right(&h).unwrap();
    assert_eq!(srx.recv_timeout(Duration::from_secs(10)).unwrap(), Some(data.len() as u64), "released: B's stat runs");
    api_a.dm_respond_event(sid, ev.token, DmResponse::Continue, &[]).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("B's read completes after CONTINUE");
    assert_eq!(got, data, "B9: the recalled data");

    // Invisible I/O left the times alone; no regions: no more events.
    let after = std::fs::metadata(&f).unwrap();
    assert_eq!(after.mtime_nsec(), before.mtime_nsec());
    assert_eq!(after.mtime(), before.mtime());
    std::fs::read(&f).unwrap();
    match api_a.get_events(sid, 16, 0, 1 << 20) {
        Err(e) if e.errno() == libc::EAGAIN => {}
        other => panic!("no managed region: no event, and dm_get_events says so (EAGAIN); got {other:?}"),
    }
    assert_eq!(hsm.get_allocinfo(&h).unwrap(), vec![(0, 303_104, ExtentType::Res)]);
    drop(hsm);
    drop(mount);
}

fn next_event(api: &libdmapi::Dm, sid: DmSessId) -> dmapi::event::DmEvent {
    let v = api.get_events(sid, 1, DM_EV_WAIT, 1 << 20).unwrap();
    v.into_iter().next().expect("an event")
}

fn drain_and_continue(api: &libdmapi::Dm, sid: DmSessId, quiet: Duration) {
    let start = std::time::Instant::now();
    let mut last = start;
    while last.elapsed() < quiet && start.elapsed() < Duration::from_secs(10) {
        match api.get_events(sid, 64, 0, 1 << 20) {
            Ok(v) if !v.is_empty() => {
                for e in v {
                    let _ = api.dm_respond_event(sid, e.token, DmResponse::Continue, &[]);
                }
                last = std::time::Instant::now();
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn statvfs_free(p: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed out-struct.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bfree as u64
}
