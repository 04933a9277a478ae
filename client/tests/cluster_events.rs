//! The cluster DM event path across real node processes (five or six `tidepool node`
//! daemons on loopback): B1, B3, B4, B5, B7, B8, B10, B11, B12, B13.
//!
//! Layout (see `common::standard`): node 1 session manager, node 2 manager of fs 1,
//! node 3 = A (HSM session), node 4 = B (source), node 5 = C (audit session); A, B,
//! C mount fs 1; node 6 mounts late.

mod common;

use std::time::Duration;

use common::{field, outcome, standard, Cluster};

const T: Duration = Duration::from_secs(20);

/// B1/B5/B8/B12: an event generated on B reaches the session on A, and events from
/// several nodes including A itself reach that same session; each carries the id of
/// the node it was generated on, and the source's operation proceeds on CONTINUE.
#[test]
fn events_from_several_nodes_reach_one_session_with_their_source_id() {
    let c = Cluster::start(&standard("", false));
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read,write,truncate"]);
    for node in [4u32, 3, 5] {
        c.driver(node, &["wait-route", "--event", "read", "--node", "3"]);
    }
    for (node, ino) in [(4u32, "41"), (3, "31"), (5, "51")] {
        let o = c.driver(node, &["generate", "--event", "read", "--ino", ino]);
        assert!(o.contains("response=continue"), "node {node}: {o}");
        let ev = hsm.expect("EVENT", T);
        assert_eq!(field(&ev, "type"), "read");
        assert_eq!(field(&ev, "ino"), ino);
        assert_eq!(field(&ev, "source_node"), node.to_string(), "B12: the source node id: {ev}");
        assert_eq!(field(&ev, "sid"), hsm.sid.to_string());
    }
}

/// B3/B7: dispositions decide where each event type goes: read/write/truncate from B
/// to the HSM session on A, create/remove/rename from the same B to the audit
/// session on C; types without a disposition generate nothing.
#[test]
fn dispositions_route_event_types_to_different_session_nodes() {
    let c = Cluster::start(&standard("", false));
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read,write,truncate"]);
    let mut audit = c.listen(5, &["--info", "audit", "--events", "create,remove,rename"]);
    c.driver(4, &["wait-route", "--event", "truncate", "--node", "3"]);
    c.driver(4, &["wait-route", "--event", "rename", "--node", "5"]);
    for ev in ["read", "create", "write", "remove", "truncate", "rename"] {
        let o = c.driver(4, &["generate", "--event", ev]);
        assert!(o.contains("response=continue"), "{ev}: {o}");
        let l = if ["read", "write", "truncate"].contains(&ev) { &mut hsm } else { &mut audit };
        let line = l.expect("EVENT", T);
        assert_eq!(field(&line, "type"), ev, "{line}");
        assert_eq!(field(&line, "source_node"), "4");
    }
    // No disposition for link: nothing is generated and the operation is not held.
    let o = c.driver(4, &["generate", "--event", "link"]);
    assert!(o.contains("response=dontcare"), "{o}");
    let stray: Vec<String> =
        hsm.drain(Duration::from_millis(300)).into_iter().chain(audit.drain(Duration::ZERO)).collect();
    assert!(stray.iter().all(|l| !l.starts_with("EVENT")), "unexpected events: {stray:?}");
}

/// B4: a synchronous event blocks the operation's thread on B until A answers;
/// ABORT makes it fail with the given errno, CONTINUE lets it proceed;
/// asynchronous events return at once even while nobody answers anything.
#[test]
fn sync_events_block_until_the_response_and_async_never_block() {
    let mut c = Cluster::start(&standard("", false));
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read,write,postcreate", "--hold"]);
    c.driver(4, &["wait-route", "--event", "postcreate", "--node", "3"]);

    let op = c.driver_bg(4, &["generate", "--event", "write", "--ino", "9"]);
    let ev = hsm.expect("EVENT type=write", T);
    let token = field(&ev, "token");
    std::thread::sleep(Duration::from_millis(300));
    let mut op = op;
    assert!(op.try_wait().unwrap().is_none(), "the write must still be blocked on the unanswered event");
    c.dm_ok(3, &["respond", "--sid", &hsm.sid.to_string(), "--token", &token, "--abort", "122"]);
    let o = outcome(op);
    assert_eq!((field(&o, "response"), field(&o, "errno")), ("abort".into(), "122".into()), "{o}");

    let op = c.driver_bg(4, &["generate", "--event", "read"]);
    let token = field(&hsm.expect("EVENT type=read", T), "token");
    c.dm_ok(3, &["respond", "--sid", &hsm.sid.to_string(), "--token", &token]);
    assert_eq!(field(&outcome(op), "response"), "continue");

    // The listener holds every event, yet asynchronous ones do not wait for it.
    let o = c.driver(4, &["generate", "--event", "postcreate", "--name", "newfile", "--repeat", "3"]);
    assert_eq!(o.lines().filter(|l| l.contains("response=dontcare")).count(), 3, "{o}");
    for _ in 0..3 {
        let ev = hsm.expect("EVENT type=postcreate", T);
        assert_eq!(field(&ev, "token"), "0", "asynchronous events have no token");
    }
}

/// B10/B11: setting a disposition goes to the session manager (node 1), which sends
/// the table to the manager of fs 1 (node 2), which sends it to every node that
/// mounts fs 1 (A, B, C) and, on mount, to a node that mounts later (node 6).
#[test]
fn dispositions_flow_through_session_and_fs_managers_to_mounting_nodes() {
    let c = Cluster::start(&standard("", true));
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read"]);
    for node in [3u32, 4, 5] {
        c.driver(node, &["wait-route", "--event", "read", "--node", "3"]);
    }
    assert!(c.wait_log(1, "dispositions changed", T), "session manager log:\n{}", c.log(1));
    assert!(c.wait_log(2, "dispositions distributed to mounting nodes", T), "fs manager log:\n{}", c.log(2));
    // Node 6 has not mounted fs 1: it has no dispositions and generates nothing.
    assert_eq!(c.driver(6, &["route", "--event", "read"]).trim(), "ROUTE none");
    assert!(c.driver(6, &["generate", "--event", "read"]).contains("response=dontcare"));
    // It mounts late and receives the specification from the fs manager.
    c.driver(6, &["mount", "--fs", "1"]);
    c.driver(6, &["wait-route", "--event", "read", "--node", "3"]);
    assert!(c.driver(6, &["generate", "--event", "read"]).contains("response=continue"));
    assert_eq!(field(&hsm.expect("EVENT", T), "source_node"), "6");
    // A change reaches every mounting node again, node 6 included.
    c.dm_ok(3, &["set-disp", "--sid", &hsm.sid.to_string(), "--fs", "1", "--events", "write"]);
    for node in [4u32, 6] {
        c.driver(node, &["wait-route", "--event", "read", "--none"]);
        c.driver(node, &["wait-route", "--event", "write", "--node", "3"]);
    }
    // Destroying the session withdraws its dispositions everywhere, through the
    // same path, and its id from every node's registry.
    let sid = hsm.sid.to_string();
    hsm.kill();
    c.dm_ok(3, &["destroy", "--sid", &sid]);
    for node in [4u32, 5, 6] {
        c.driver(node, &["wait-route", "--event", "write", "--none"]);
    }
    let deadline = std::time::Instant::now() + T;
    while c.dm_ok(4, &["sessions"]).contains(&sid) {
        assert!(std::time::Instant::now() < deadline, "node 4 still lists the destroyed session");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// B13: on a node other than the session node, queries work (dm_query_session,
/// dm_getall_sessions, dm_getall_disp, dm_get_eventlist) and calls that would change
/// the session or its events fail with EINVAL naming the session node.
#[test]
fn away_from_the_session_node_queries_work_and_changes_are_refused() {
    let mut c = Cluster::start(&standard("", false));
    let hsm = c.listen(3, &["--info", "hsm", "--events", "read"]);
    let sid = hsm.sid.to_string();
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);
    // The registry mirror reaches B.
    let deadline = std::time::Instant::now() + T;
    loop {
        let o = c.dm(4, &["query", "--sid", &sid]);
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "INFO hsm");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "query never worked on node 4");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.dm_ok(4, &["sessions"]).contains(&format!("sid={sid} node=3 info=hsm")));
    assert!(c.dm_ok(4, &["disp", "--sid", &sid]).contains("DISP fs=1 events=read"));

    // Queries about the session's events are forwarded to its node: an event taken
    // with `dm get` on A and left unanswered is visible from B by its token.
    drop(hsm);
    let op = c.driver_bg(5, &["generate", "--event", "read", "--ino", "77"]);
    let token = loop {
        let got = c.dm_ok(3, &["get", "--sid", &sid]);
        if let Some(l) = got.lines().find(|l| l.starts_with("EVENT")) {
            break field(l, "token");
        }
        assert!(std::time::Instant::now() < deadline, "the event never reached A");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(c.dm_ok(4, &["tokens", "--sid", &sid]).trim(), format!("TOKENS {token}"));
    let found = c.dm_ok(4, &["find", "--sid", &sid, "--token", &token]);
    assert_eq!((field(&found, "ino"), field(&found, "source_node")), ("77".into(), "5".into()), "{found}");

    for args in [
        vec!["get", "--sid", &sid],
        vec!["respond", "--sid", &sid, "--token", "1"],
        vec!["move", "--sid", &sid, "--token", "1", "--target", &sid],
        vec!["destroy", "--sid", &sid],
        vec!["set-disp", "--sid", &sid, "--fs", "1", "--events", "write"],
    ] {
        let o = c.dm(4, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} must fail on node 4");
        assert!(err.contains("EINVAL") && err.contains("lives on node 3"), "{args:?}: {err}");
    }
    // The refused calls changed nothing: the event is still outstanding and is
    // answered on its node.
    assert_eq!(c.dm_ok(3, &["tokens", "--sid", &sid]).trim(), format!("TOKENS {token}"));
    c.dm_ok(3, &["respond", "--sid", &sid, "--token", &token]);
    assert_eq!(field(&outcome(op), "response"), "continue");
}
