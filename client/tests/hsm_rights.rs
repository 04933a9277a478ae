//! B6 and B9 end to end: a DM application on node A migrates a file's data
//! off the volume (invisible read, DM attribute, punched hole, managed
//! region), a program on node B reads the file, the read event reaches A,
//! which takes an exclusive right (B's access to the file waits, cluster
//! wide), recalls the data with an invisible write and answers CONTINUE;
//! B's read then returns the original bytes and the file's times are as
//! they were.
//!
//! Node daemons are real processes (the cluster harness) that host the
//! mounts on A and B; the DM application on A makes every call through its
//! node's local DM channel, which runs the file functions in A's daemon.

mod common;

use common::standard_with_mounts;
use dmapi::event::EventBody;
use dmapi::types::{
    dm_region, DmHandle, DmRegion, DmResponse, DmRight, DmSessId, EventSet, EventType, ExtentType, FsId, DM_EV_WAIT,
    DM_NO_TOKEN, DM_RR_WAIT,
};
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn hsm_migrates_and_recalls_under_an_exclusive_right() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4]);
    let (ma, mb) = (&mnts[0], &mnts[1]);
    // The HSM's session on node 3 (A), for data events of fs 1.
    let api_a = libdmapi::Dm::connect(c.socket(3)).unwrap();
    let sid: DmSessId = api_a.dm_create_session(DmSessId(0), b"hsm").unwrap();
    let set: EventSet = [EventType::Read, EventType::Write, EventType::Truncate].into_iter().collect();
    api_a.dm_set_disp(sid, &DmHandle::fs(FsId(1)), DM_NO_TOKEN, set).unwrap();
    api_a.dm_set_eventlist(sid, &DmHandle::fs(FsId(1)), DM_NO_TOKEN, set).unwrap();
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);

    let hsm = &api_a;
    let nt = DM_NO_TOKEN;
    let f = mb.path().join("cold");
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
    let free_before = statvfs_free(mb.path());

    // Migrate: under an exclusive right, copy out, mark, punch, manage. The
    // HSM names the file by its path on its own node's mount.
    let h = hsm.dm_path_to_handle(&ma.path().join("cold")).unwrap();
    assert_eq!(h.ino().unwrap(), before.ino());
    assert_eq!(hsm.dm_path_to_fshandle(ma.path()).unwrap(), DmHandle::fs(FsId(1)));
    let e = hsm.dm_path_to_handle(std::path::Path::new("/tmp")).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "a path on no Tidepool mount is refused: {e}");
    assert!(hsm.dm_get_fileattr(DmSessId(12345), &h, nt).is_err(), "a session that does not exist");
    // The file functions reach any file's data: an unprivileged user may not
    // call them, even naming a session that exists; root may.
    let read_as = |nobody: bool| {
        let mut cmd = std::process::Command::new(if nobody { "setpriv" } else { common::DRIVER });
        if nobody {
            cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--", common::DRIVER]);
        }
        let path = ma.path().join("cold");
        cmd.arg("--socket").arg(c.socket(3)).args(["read-invis", "--sid", &sid.0.to_string(), "--path"]).arg(&path);
        cmd.output().unwrap()
    };
    if test_support::have_tool("setpriv") {
        let o = read_as(true);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("EPERM"), "as nobody: {o:?}");
    }
    let o = read_as(false);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "READ 4096", "as root: {o:?}");
    // Rights are held by a token: the HSM's own work gets one from a user
    // event (XDSM), and answering that event gives its rights back.
    assert_eq!(hsm.dm_request_right(sid, &h, nt, DM_RR_WAIT, DmRight::Excl).unwrap_err().errno(), libc::EINVAL);
    let ut = hsm.dm_create_userevent(sid, b"migrate").unwrap();
    assert_eq!(hsm.dm_punch_hole(sid, &h, ut, 0, 0).unwrap_err().errno(), libc::EACCES, "punching needs the right");
    hsm.dm_request_right(sid, &h, ut, DM_RR_WAIT, DmRight::Excl).unwrap();
    assert_eq!(hsm.dm_query_right(sid, &h, ut).unwrap(), DmRight::Excl);
    let copy = hsm.dm_read_invis(sid, &h, ut, 0, data.len() as u64).unwrap();
    assert_eq!(copy, data, "invisible read");
    let tier = tempfile::tempdir().unwrap();
    std::fs::write(tier.path().join("obj-1"), &copy).unwrap();
    hsm.dm_set_dmattr(sid, &h, ut, b"hsm", b"obj-1").unwrap();
    assert_eq!(hsm.dm_probe_hole(sid, &h, ut, 100, 10_000).unwrap(), (4096, 4096), "whole blocks only");
    hsm.dm_punch_hole(sid, &h, ut, 0, 0).unwrap();
    let rw = dm_region::READ | dm_region::WRITE | dm_region::TRUNCATE;
    assert!(hsm.dm_set_region(sid, &h, ut, &[DmRegion { offset: 0, size: 0, flags: rw }]).unwrap());
    hsm.dm_respond_event(sid, ut, DmResponse::Continue, &[]).unwrap();
    assert_eq!(
        hsm.dm_request_right(sid, &h, ut, DM_RR_WAIT, DmRight::Shared).unwrap_err().errno(),
        libc::EINVAL,
        "an answered token is no longer outstanding: it holds nothing"
    );
    assert_eq!(
        hsm.dm_get_allocinfo(sid, &h, nt).unwrap(),
        vec![(0, 303_104, ExtentType::Hole)],
        "all data off the volume"
    );
    assert_eq!(hsm.dm_get_dmattr(sid, &h, nt, b"hsm").unwrap(), b"obj-1");
    assert!(hsm.dm_get_dmattr(sid, &h, nt, b"nope").is_err());
    assert!(hsm.dm_set_dmattr(sid, &h, nt, b"too-long-name", b"x").is_err(), "bad DMAPI arguments get a clear error");
    assert!(statvfs_free(mb.path()) >= free_before + 73, "punching freed the file's blocks");
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

    // Recall under an exclusive right, with the event's token: any access to
    // the file from B waits.
    let tok = ev.token;
    assert!(
        hsm.dm_request_right(sid, &h, dmapi::types::DmToken(777), DM_RR_WAIT, DmRight::Excl).is_err(),
        "no such token"
    );
    hsm.dm_request_right(sid, &h, tok, DM_RR_WAIT, DmRight::Excl).unwrap();
    let (stx, srx) = mpsc::channel();
    let f3 = f.clone();
    std::thread::spawn(move || stx.send(std::fs::metadata(&f3).map(|m| m.len()).ok()).unwrap());
    assert!(srx.recv_timeout(Duration::from_millis(400)).is_err(), "B6: B's stat waits for A's right");
    let key = hsm.dm_get_dmattr(sid, &h, tok, b"hsm").unwrap();
    let back = std::fs::read(tier.path().join(String::from_utf8(key).unwrap())).unwrap();
    assert_eq!(hsm.dm_write_invis(sid, &h, tok, true, 0, &back).unwrap(), back.len());
    hsm.dm_set_region(sid, &h, tok, &[]).unwrap();
    hsm.dm_remove_dmattr(sid, &h, tok, b"hsm").unwrap();
    hsm.dm_release_right(sid, &h, tok).unwrap();
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
    assert_eq!(hsm.dm_get_allocinfo(sid, &h, nt).unwrap(), vec![(0, 303_104, ExtentType::Res)]);
    drop(c);
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
