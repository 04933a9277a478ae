//! Failures, bad input and security across real node processes (issue 3 §5): a
//! session node SIGKILLed with synchronous events pending, reclaimed or not within
//! the session-failure timeout; a source node killed while its event is
//! outstanding; malformed, oversized and unauthenticated connections; unprivileged
//! session creation.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::peer::handshake;
use common::{field, outcome, standard, Cluster, KEY, TIDEPOOL};
use dmapi::proto::{encode_frame, Frame, Message};
use dmapi::types::NodeId;
use dmapi::wire::MsgHeader;

const T: Duration = Duration::from_secs(20);

/// The session node dies with two synchronous events outstanding; it restarts, the
/// restarted DM application reclaims its session (found by its info string) and
/// receives both events again; the blocked operations on B then complete.
#[test]
fn session_node_killed_then_reclaimed_loses_nothing() {
    let mut c = Cluster::start(&standard("session_failure_timeout_ms = 30000", false));
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read,write", "--hold"]);
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);
    let op1 = c.driver_bg(4, &["generate", "--event", "read", "--ino", "101"]);
    let op2 = c.driver_bg(4, &["generate", "--event", "write", "--ino", "102"]);
    hsm.expect("EVENT", T);
    hsm.expect("EVENT", T);
    c.kill(3);
    hsm.kill();
    assert!(c.wait_log(4, "session node failed; events wait for reclaim", T), "node 4 log:\n{}", c.log(4));

    c.restart(3);
    let mut again = c.listen(3, &["--info", "hsm", "--reclaim"]);
    assert!(again.seen[0].contains("reclaimed=true"), "{:?}", again.seen);
    assert_eq!(again.sid, hsm.sid, "the same session id is reclaimed");
    let mut inos = vec![field(&again.expect("EVENT", T), "ino"), field(&again.expect("EVENT", T), "ino")];
    inos.sort();
    assert_eq!(inos, vec!["101", "102"], "both pending events are delivered again");
    for op in [op1, op2] {
        let o = outcome(op);
        assert_eq!(field(&o, "response"), "continue", "{o}");
    }
}

/// A DM application killed while it waits in dm_get_events (its wait parked in
/// the daemon, to be answered by the thread that queues the next event) takes no
/// event with it: the wait is withdrawn when its socket closes, and the event
/// generated afterwards goes to the application that reclaims the session.
#[test]
fn dm_application_killed_in_get_events_takes_no_event_with_it() {
    let mut c = Cluster::start(&standard("", false));
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read"]);
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);
    hsm.kill();
    assert!(c.wait_log(3, "wait withdrawn", T), "node 3 log:\n{}", c.log(3));
    let op = c.driver_bg(4, &["generate", "--event", "read", "--ino", "77"]);
    let mut again = c.listen(3, &["--info", "hsm", "--reclaim"]);
    assert_eq!(again.sid, hsm.sid, "the same session id is reclaimed");
    assert_eq!(field(&again.expect("EVENT", T), "ino"), "77");
    let o = outcome(op);
    assert_eq!(field(&o, "response"), "continue", "{o}");
}

/// The session node dies and nobody reclaims the session within the configured
/// session-failure timeout: the blocked operation fails with EIO and the source
/// node logs why.
#[test]
fn unreclaimed_session_fails_blocked_operations_after_the_timeout() {
    let mut c = Cluster::start(&standard("session_failure_timeout_ms = 1000", false));
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read", "--hold"]);
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);
    let op = c.driver_bg(4, &["generate", "--event", "read"]);
    hsm.expect("EVENT", T);
    c.kill(3);
    hsm.kill();
    let o = outcome(op);
    assert_eq!((field(&o, "response"), field(&o, "errno")), ("error".into(), libc::EIO.to_string()), "{o}");
    assert!(c.wait_log(4, "was not reclaimed within", T), "node 4 log:\n{}", c.log(4));
}

/// A source node dies while its synchronous event is outstanding on A: A learns it
/// from the missing heartbeats, retires the token and tells the DM application
/// with a cancel event; no token is left.
#[test]
fn source_node_killed_with_event_outstanding_is_cleaned_up() {
    let mut c = Cluster::start(&standard("", false));
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read", "--hold"]);
    let sid = hsm.sid.to_string();
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);
    let mut op = c.driver_bg(4, &["generate", "--event", "read"]);
    let token = field(&hsm.expect("EVENT type=read", T), "token");
    assert_eq!(c.dm_ok(3, &["tokens", "--sid", &sid]).trim(), format!("TOKENS {token}"));
    c.kill(4);
    let _ = op.kill();
    let _ = op.wait();
    let cancel = hsm.expect("EVENT type=cancel", T);
    assert_eq!(field(&cancel, "cancelled_token"), token);
    assert_eq!(field(&cancel, "source_node"), "4");
    assert_eq!(c.dm_ok(3, &["tokens", "--sid", &sid]).trim(), "TOKENS");
    let o = c.dm(3, &["respond", "--sid", &sid, "--token", &token]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("ESRCH"), "the retired token is gone");
}

/// Whether the peer closed `s` (EOF or reset) within the read timeout.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Garbage, a wrong cluster key, an oversized frame and a malformed frame each get
/// their connection dropped with an error log; the cluster keeps working.
#[test]
fn bad_connections_are_dropped_and_other_peers_are_unaffected() {
    let c = Cluster::start(&standard("", false));
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read"]);
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);
    let addr = format!("{}:{}", common::dm_ip(), c.node(3).port);

    // Not a Tidepool node at all.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(closed(&mut s), "garbage must be refused");
    assert!(c.wait_log(3, "incoming DM connection refused", T));

    // Wrong cluster key: refused, and nothing it sends is taken.
    let mut s = handshake(&addr, 3, b"not the key");
    let _ = s.write_all(&encode_frame(&Frame::new(NodeId(99), 1, Message::Heartbeat { now_ns: 1 })).unwrap());
    assert!(closed(&mut s), "an unauthenticated peer must be refused");
    assert!(c.wait_log(3, "node 99 failed authentication", T), "node 3 log:\n{}", c.log(3));

    // Authenticated, then a header announcing a 2 MiB payload.
    let mut s = handshake(&addr, 3, KEY.as_bytes());
    let mut h = MsgHeader::new(15, 2 << 20, 99, 1, 0).to_bytes().to_vec();
    h.extend_from_slice(&[0u8; 64]);
    s.write_all(&h).unwrap();
    assert!(closed(&mut s), "an oversized frame must drop the connection");
    assert!(c.wait_log(3, "dropping connection", T), "node 3 log:\n{}", c.log(3));

    // Authenticated, then an unknown message type.
    let mut s = handshake(&addr, 3, KEY.as_bytes());
    let mut f = encode_frame(&Frame::new(NodeId(99), 1, Message::Ack)).unwrap();
    f[5] = 200;
    s.write_all(&f).unwrap();
    assert!(closed(&mut s), "a malformed frame must drop the connection");
    assert!(c.wait_log(3, "malformed frame; dropping connection", T), "node 3 log:\n{}", c.log(3));

    // The real peers never noticed.
    assert!(c.driver(4, &["generate", "--event", "read"]).contains("response=continue"));
    assert_eq!(field(&hsm.expect("EVENT", T), "source_node"), "4");
}

/// Creating a session (and generating events through the local API) needs root or
/// the configured DM admin group, checked on the caller's kernel credentials; an
/// ordinary user is refused with EPERM.
#[test]
fn unprivileged_session_creation_is_refused() {
    use std::os::unix::process::CommandExt;
    let c = Cluster::start(&standard("dm_admin_gid = 4242", false));
    let as_user = |uid: u32, gid: u32| {
        Command::new(TIDEPOOL)
            .args(["dm", "--socket"])
            .arg(c.socket(3))
            .args(["create-session", "--info", "user"])
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    let o = as_user(65534, 65534);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("EPERM"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = as_user(65534, 4242);
    assert!(o.status.success(), "the admin group may: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("SESSION sid="));
    // Nor may an ordinary user stand in for the file system.
    let o = Command::new(common::DRIVER)
        .arg("--socket")
        .arg(c.socket(3))
        .args(["generate", "--event", "read"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("response=error") && out.contains(&format!("errno={}", libc::EPERM)), "{out}");
}

/// A configured peer that takes connections and never answers (a stopped
/// process, or one whose host hangs): connecting to it blocks for the
/// handshake timeout (5 s). The node that lists it must go on sending
/// heartbeats to everyone else meanwhile, or they declare it failed.
#[test]
fn a_peer_that_never_answers_does_not_stall_heartbeats_to_the_others() {
    // Accepts (the kernel completes the TCP handshake) but never replies.
    let hung = std::net::TcpListener::bind((common::dm_ip().as_str(), common::listen_port())).unwrap();
    let addr = hung.local_addr().unwrap();
    let extra = format!("[[peers]]\nid = 9\naddr = \"{addr}\"\n");
    let mut specs = common::standard("", false);
    specs.truncate(3);
    specs[2].extra = extra;
    let c = Cluster::start(&specs);
    let dm = libdmapi::Dm::connect(c.socket(1)).unwrap();
    // Two handshake timeouts' worth: without background connects node 3's
    // heartbeat loop would sit 5 s on node 9 each round, and node 1 would
    // see it fail after 1.5 s.
    let until = std::time::Instant::now() + Duration::from_secs(11);
    while std::time::Instant::now() < until {
        let up = dm.status().unwrap().peers_up;
        assert!(up.contains(&3), "node 1 lost node 3 (peers up: {up:?}); node 1 log:\n{}", c.log(1));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!c.log(1).contains("peer failed"), "node 1 log:\n{}", c.log(1));
    drop(hung);
}

/// The file-system manager protocol authenticates as the DM transport
/// does: a mount with another cluster key, a mount from a node the
/// configuration does not name, and a client that skips the handshake are
/// refused, and the manager node logs each; the configured nodes' mounts
/// go on working.
#[test]
fn the_fs_manager_refuses_wrong_keys_strangers_and_skipped_handshakes() {
    if !common::fuse_available() {
        return;
    }
    let vol = common::Volume::new(32 << 20);
    let port = common::listen_port();
    let mnt = tempfile::tempdir().unwrap();
    let mut specs = standard("", false);
    specs[2].extra = common::fuse_mount_toml(mnt.path());
    let mut c = Cluster::start_with_fs(&specs, &vol.fs_toml(port));
    c.adopt_mountpoint(mnt.path());
    c.wait_mounted(3, mnt.path());
    let keys = tempfile::tempdir().unwrap();
    let (right, wrong) = (keys.path().join("right"), keys.path().join("wrong"));
    std::fs::write(&right, format!("{KEY}\n")).unwrap();
    std::fs::write(&wrong, "not the cluster key").unwrap();
    let manager = format!("127.0.0.1:{port}");
    let attempt = |node: u32, key: &std::path::Path| {
        let spare = tempfile::tempdir().unwrap();
        let mut child = Command::new(TIDEPOOL)
            .args(["mount", "--addr", &vol.addr.to_string(), "--nqn", &vol.nqn, "--manager", &manager])
            .args(["--node-id", &node.to_string(), "--cluster-key-file"])
            .arg(key)
            .arg(spare.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + T;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = Command::new("fusermount3").arg("-uz").arg(spare.path()).status();
                panic!("node {node} was let in: its mount kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = child.wait_with_output().unwrap();
        assert!(!o.status.success(), "node {node} mounted");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = attempt(4, &wrong);
    assert!(e.contains("failed authentication"), "wrong key: {e}");
    let e = attempt(9, &right);
    assert!(e.contains("not a cluster member"), "stranger: {e}");
    // A request with no handshake before it: closed unanswered.
    let mut raw = TcpStream::connect(&manager).unwrap();
    raw.write_all(&[0x54, 0x50, 0x46, 0x53, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    raw.set_read_timeout(Some(T)).unwrap();
    assert_eq!(raw.read(&mut [0u8; 64]).unwrap_or(0), 0, "the manager answered a client that skipped the handshake");
    for why in ["failed authentication", "is not a cluster member", "not a hello"] {
        assert!(c.wait_log(2, why, T), "the manager node did not log {why:?}:\n{}", c.log(2));
    }
    // The configured node's mount is untouched.
    std::fs::write(mnt.path().join("still"), b"here").unwrap();
    assert_eq!(std::fs::read(mnt.path().join("still")).unwrap(), b"here");
}
