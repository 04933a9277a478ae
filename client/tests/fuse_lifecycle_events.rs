//! The XDSM events of a file's and a mount's life, from real operations on a
//! FUSE mount node B's daemon (4) hosts, mounted and unmounted at run time
//! (`Dm::fuse_mount`, what `tidepool mount --node` asks), at a session on
//! node A (3): mount (synchronous),
//! attribute, close, destroy (only when the last link and the last open are
//! gone, with the attribute `dm_set_return_on_destroy` names), preunmount
//! (an ABORT keeps the file system mounted) and unmount, a mount that the
//! DM application refuses (ABORT fails it); link, postlink, postsymlink,
//! and attribute events for chmod, chown and utimes; and a per-file event
//! list enabling read events for one file only (B3).

mod common;

use common::{listen_port, standard, Cluster, Volume};
use dmapi::event::{DmEvent, EventBody};
use dmapi::types::{DmAttrName, DmHandle, DmResponse, DmSessId, EventSet, EventType, FsId, DM_EV_WAIT, DM_NO_TOKEN};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

struct Events {
    rx: Receiver<DmEvent>,
    seen: Vec<DmEvent>,
}

impl Events {
    /// The next event matching `f`; the others are kept in `seen`.
    fn wait(&mut self, what: &str, f: impl Fn(&DmEvent) -> bool) -> DmEvent {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.rx.recv_timeout(left).unwrap_or_else(|_| panic!("no {what} event; saw {:#?}", self.seen));
            self.seen.push(ev.clone());
            if f(&ev) {
                return ev;
            }
        }
    }

    /// Everything that arrives within `d`.
    fn settle(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while let Ok(ev) = self.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            self.seen.push(ev);
        }
    }
}

fn object_ino(ev: &DmEvent) -> u64 {
    match &ev.body {
        EventBody::Namespace { handle1: Some(h), .. } => h.ino().unwrap_or(0),
        EventBody::Data { handle, .. } | EventBody::Destroy { handle, .. } => handle.ino().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn a_files_and_a_mounts_life_raise_their_events() {
    if !common::fuse_available() {
        return;
    }
    let vol = Volume::new(32 << 20);
    let mut c = Cluster::start_with_fs(&standard("", false), &vol.fs_toml(listen_port()));
    let api = libdmapi::Dm::connect(c.socket(3)).unwrap();
    let sid: DmSessId = api.dm_create_session(DmSessId(0), b"lifecycle").unwrap();
    let fs = DmHandle::fs(FsId(1));
    use EventType::*;
    let disp: EventSet =
        [Mount, Preunmount, Unmount, Attribute, Close, Destroy, Remove, Read, Link, Postlink].into_iter().collect();
    api.dm_set_disp(sid, &fs, DM_NO_TOKEN, disp).unwrap();
    // Read is disposed but not in the file system's event list: only files
    // whose own event list has it raise it.
    let fs_list: EventSet = disp.iter().filter(|t| *t != Read).collect();
    api.dm_set_eventlist(sid, &fs, DM_NO_TOKEN, fs_list).unwrap();
    api.dm_set_return_on_destroy(sid, &fs, DM_NO_TOKEN, DmAttrName::new(b"hsm").unwrap(), true).unwrap();
    for ev in ["mount", "destroy", "close"] {
        c.driver(4, &["wait-route", "--event", ev, "--node", "3"]);
    }

    // The DM application: every event goes to the test; the first
    // preunmount is refused with EBUSY, every mount after the first with
    // EPERM, everything else continues.
    let (tx, rx) = mpsc::channel();
    let responder = libdmapi::Dm::connect(c.socket(3)).unwrap();
    std::thread::spawn(move || {
        let (mut refused, mut mounts) = (false, 0);
        while let Ok(evs) = responder.get_events(sid, 64, DM_EV_WAIT, 1 << 20) {
            for e in evs {
                if e.token.0 > 0 {
                    let r = if e.ev_type == Preunmount && !refused {
                        refused = true;
                        DmResponse::Abort(libc::EBUSY)
                    } else if e.ev_type == Mount {
                        mounts += 1;
                        if mounts > 1 {
                            DmResponse::Abort(libc::EPERM)
                        } else {
                            DmResponse::Continue
                        }
                    } else {
                        DmResponse::Continue
                    };
                    let _ = responder.dm_respond_event(sid, e.token, r, &[]);
                }
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
    });
    let mut evs = Events { rx, seen: Vec::new() };

    let mnt = tempfile::tempdir().unwrap();
    c.adopt_mountpoint(mnt.path());
    let api_b = libdmapi::Dm::connect(c.socket(4)).unwrap();
    api_b.fuse_mount(FsId(1), mnt.path()).unwrap();
    let m = evs.wait("mount", |e| e.ev_type == Mount);
    assert_eq!(m.source.0, 4, "B12: {m:?}");
    let EventBody::Mount { mountpoint_path, root_handle, .. } = &m.body else { panic!("{m:?}") };
    assert_eq!(mountpoint_path.as_slice(), mnt.path().as_os_str().as_encoded_bytes());
    assert_eq!(root_handle.unwrap().ino().unwrap(), 1);

    let f = mnt.path().join("f");
    let g = mnt.path().join("g");
    std::fs::write(&f, b"precious bytes").unwrap();
    std::fs::write(&g, b"other").unwrap();
    let (fino, gino) = (std::fs::metadata(&f).unwrap().ino(), std::fs::metadata(&g).unwrap().ino());
    evs.wait("close of f", |e| e.ev_type == Close && object_ino(e) == fino);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    evs.wait("attribute of f (chmod)", |e| e.ev_type == Attribute && object_ino(e) == fino);
    std::os::unix::fs::chown(&f, Some(7), Some(7)).unwrap();
    evs.wait("attribute of f (chown)", |e| e.ev_type == Attribute && object_ino(e) == fino);
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(&f).unwrap().set_modified(t).unwrap();
    evs.wait("attribute of f (utimes)", |e| e.ev_type == Attribute && object_ino(e) == fino);
    assert_eq!(std::fs::metadata(&f).unwrap().mtime(), 1_000_000_000);

    // A hard link: link (synchronous: parent, the file, the new name),
    // then postlink with its outcome; the name goes again at once.
    let f2 = mnt.path().join("f2");
    std::fs::hard_link(&f, &f2).unwrap();
    let l = evs.wait("link", |e| e.ev_type == Link);
    let EventBody::Namespace { handle1, handle2, name1, .. } = &l.body else { panic!("{l:?}") };
    assert_eq!((handle1.unwrap().ino().unwrap(), handle2.unwrap().ino().unwrap()), (1, fino), "{l:?}");
    assert_eq!(name1.as_slice(), b"f2");
    assert!(l.token.0 > 0, "link is synchronous: {l:?}");
    let pl = evs.wait("postlink", |e| e.ev_type == Postlink);
    let EventBody::Namespace { name1, retcode, .. } = &pl.body else { panic!("{pl:?}") };
    assert_eq!((name1.as_slice(), *retcode), (&b"f2"[..], 0), "{pl:?}");
    assert_eq!(pl.token.0, 0, "postlink is asynchronous: {pl:?}");
    std::fs::remove_file(&f2).unwrap();
    evs.wait("remove of f2", |e| e.ev_type == Remove);

    // A disposition set while mounted: the mount, which decided locally
    // that symlinks raise nothing, sees the change and raises them.
    std::os::unix::fs::symlink("f", mnt.path().join("before")).unwrap();
    let with_symlink = EventSet(disp.0 | EventSet::from_iter([Symlink, Postsymlink]).0);
    api.dm_set_disp(sid, &fs, DM_NO_TOKEN, with_symlink).unwrap();
    api.dm_set_eventlist(sid, &fs, DM_NO_TOKEN, EventSet(fs_list.0 | with_symlink.0 & !EventSet::from_iter([Read]).0))
        .unwrap();
    c.driver(4, &["wait-route", "--event", "symlink", "--node", "3"]);
    std::os::unix::fs::symlink("f", mnt.path().join("after")).unwrap();
    let sl = evs.wait("symlink", |e| e.ev_type == Symlink);
    let EventBody::Namespace { name1, .. } = &sl.body else { panic!("{sl:?}") };
    assert_eq!(name1.as_slice(), b"after", "only the symlink made after the disposition");
    let ps = evs.wait("postsymlink", |e| e.ev_type == Postsymlink);
    let EventBody::Namespace { name1, name2, retcode, .. } = &ps.body else { panic!("{ps:?}") };
    assert_eq!((name1.as_slice(), name2.as_slice(), *retcode), (&b"after"[..], &b"f"[..], 0), "{ps:?}");

    // A per-file event list: reads of f are events, reads of g are not. The
    // file functions go through B's channel (the path is on B's mount), with
    // the session on A.
    let h = api_b.dm_path_to_handle(&f).unwrap();
    api_b.dm_set_eventlist(sid, &h, DM_NO_TOKEN, [Read].into_iter().collect()).unwrap();
    assert_eq!(api_b.dm_get_eventlist(sid, &h, DM_NO_TOKEN).unwrap(), [Read].into_iter().collect());
    api_b.dm_set_dmattr(sid, &h, DM_NO_TOKEN, b"hsm", b"obj-7").unwrap();
    assert_eq!(std::fs::read(&g).unwrap(), b"other");
    assert_eq!(std::fs::read(&f).unwrap(), b"precious bytes");
    let r = evs.wait("read of f", |e| e.ev_type == Read);
    assert_eq!(object_ino(&r), fino, "only f's own event list enables read events");

    // Unlinked while open: the file lives on until its last close, then
    // the destroy event carries the attribute asked for.
    let mut fd = std::fs::File::open(&f).unwrap();
    std::fs::remove_file(&f).unwrap();
    evs.wait("remove of f", |e| e.ev_type == Remove);
    assert!(!f.exists());
    let mut back = String::new();
    fd.read_to_string(&mut back).unwrap();
    assert_eq!(back, "precious bytes", "an open file outlives its name");
    assert_eq!(fd.metadata().unwrap().nlink(), 0);
    evs.settle(Duration::from_millis(300));
    assert!(!evs.seen.iter().any(|e| e.ev_type == Destroy), "destroyed while open: {:#?}", evs.seen);
    drop(fd);
    let d = evs.wait("destroy of f", |e| e.ev_type == Destroy);
    let EventBody::Destroy { handle, attrname, attrcopy } = &d.body else { panic!("{d:?}") };
    assert_eq!((handle.ino().unwrap(), *attrname), (fino, DmAttrName::new(b"hsm").unwrap()));
    assert_eq!(attrcopy.as_slice(), b"obj-7", "dm_set_return_on_destroy");
    // Its blocks and inode are free again: g's unlink destroys at once.
    std::fs::remove_file(&g).unwrap();
    let d = evs.wait("destroy of g", |e| e.ev_type == Destroy);
    assert_eq!(object_ino(&d), gino);
    assert!(evs.seen.iter().all(|e| e.ev_type != Read || object_ino(e) != gino), "g raised a read event");

    // Preunmount is synchronous: refused once (the mount stays), then allowed.
    let e = api_b.fuse_unmount(mnt.path()).unwrap_err();
    assert_eq!(e.errno(), libc::EBUSY, "{e}");
    evs.wait("preunmount", |e| e.ev_type == Preunmount);
    std::fs::write(mnt.path().join("still"), b"mounted").unwrap();
    api_b.fuse_unmount(mnt.path()).unwrap();
    let u = evs.wait("unmount", |e| e.ev_type == Unmount);
    let EventBody::Namespace { retcode, .. } = u.body else { panic!("{u:?}") };
    assert_eq!(retcode, 0);

    // A mount the DM application refuses (ABORT, EPERM) fails with its
    // errno, and nothing is mounted.
    let mnt2 = tempfile::tempdir().unwrap();
    let refused = api_b.fuse_mount(FsId(1), mnt2.path()).unwrap_err();
    assert_eq!(refused.errno(), libc::EPERM, "the refused mount's error: {refused}");
    evs.wait("the second mount", |e| e.ev_type == Mount);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(mnt2.path().to_str().unwrap()), "mounted although refused: {mounts}");
    assert!(evs.seen.iter().all(|e| e.source.0 == 4), "every event came from node B");
}
