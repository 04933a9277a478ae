//! `tidepool cluster up/status/down`: a whole cluster on this machine in
//! one command. `up` returns with every node's mount up (a file written on
//! node 1 is read on node 3), writes `cluster.env`, `status --json` names
//! pids, roles and mounts, a DM session shows up in it, and `down` stops
//! exactly what `up` started and leaves no mount behind; `up` again on the
//! same directory finds the file system and its files.

mod common;

use std::path::Path;
use std::process::Command;

use common::cluster_up::*;
use common::TIDEPOOL;

#[test]
fn cluster_up_status_and_down() {
    if !common::fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = tidepool(&["cluster", "up", "--nodes", "3", "--dir", d, "--size", "64M"]);
    assert!(out.contains("node 3:"), "{out}");
    let env = env_of(dir.path());
    assert_eq!(env["TIDEPOOL_NODES"], "3");
    let (m1, m3) = (env["TIDEPOOL_NODE1_MOUNT"].clone(), env["TIDEPOOL_NODE3_MOUNT"].clone());
    std::fs::write(Path::new(&m1).join("hello"), b"from node 1").unwrap();
    assert_eq!(std::fs::read(Path::new(&m3).join("hello")).unwrap(), b"from node 1");

    // A DM session on node 3 shows in the status.
    let sid = tidepool(&["dm", "--socket", &env["TIDEPOOL_NODE3_DM_SOCKET"], "create-session", "--info", "ops"]);
    let sid: i64 = common::field(sid.trim(), "sid").parse().unwrap_or_else(|_| panic!("{sid}"));
    let st: serde_json::Value = serde_json::from_str(&tidepool(&["cluster", "status", "--dir", d, "--json"])).unwrap();
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let roles = |i: usize| -> Vec<String> {
        nodes[i]["roles"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect()
    };
    assert_eq!((roles(0), roles(1), roles(2)), (vec!["session-manager".into()], vec!["fs-manager:1".into()], vec![]));
    let pids: Vec<u64> = nodes.iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["id"].as_u64(), Some(i as u64 + 1));
        assert_eq!(n["mount_state"], "mounted", "{n}");
        assert!(alive(pids[i]));
    }
    assert_eq!(nodes[2]["sessions"][0]["sid"].as_i64(), Some(sid), "{st}");
    let text = tidepool(&["cluster", "status", "--dir", d]);
    assert!(text.contains("roles [session-manager]") && text.contains("session "), "{text}");

    // `up` twice is refused while the first runs.
    let o = Command::new(TIDEPOOL).args(["cluster", "up", "--dir", d]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already up"), "{o:?}");

    let storage = st["storage"]["pid"].as_u64().unwrap();
    tidepool(&["cluster", "down", "--dir", d]);
    for p in pids.iter().chain([&storage]) {
        assert!(!alive(*p), "pid {p} still runs after down");
    }
    assert!(!mounted(&m1) && !mounted(&m3), "down leaves no mount");
    assert!(!dir.path().join("cluster.env").exists());

    // The volume stays: up again finds the file.
    tidepool(&["cluster", "up", "--nodes", "1", "--dir", d]);
    let m1 = env_of(dir.path())["TIDEPOOL_NODE1_MOUNT"].clone();
    assert_eq!(std::fs::read(Path::new(&m1).join("hello")).unwrap(), b"from node 1");
    tidepool(&["cluster", "down", "--dir", d]);
    assert!(!mounted(&m1));
}

/// `up --etcd`: the nodes join through a local etcd's leases; a node
/// killed with SIGKILL leaves the cluster when its lease runs out (etcd
/// decides, not the heartbeats), its tokens go and the manager fences its
/// reservation key off the volume; the others go on; `down` stops etcd too.
#[test]
fn cluster_up_on_etcd_and_a_killed_node_leaves() {
    let Some((dir, _up)) = etcd_cluster(3) else { return };
    let d = dir.path().to_str().unwrap();
    let status = || status_of(d);
    let members = |st: &serde_json::Value| -> Vec<u64> {
        st["etcd"]["members"].as_array().unwrap_or_else(|| panic!("{st}")).iter().map(|m| m.as_u64().unwrap()).collect()
    };
    let st = status();
    assert_eq!(members(&st), [1, 2, 3]);
    let etcd_pid = st["etcd"]["pid"].as_u64().unwrap();
    // Node 1 is no manager candidate (2 and 3 are): kill it.
    let mgr = *holders(&st, "fs-manager:1").first().unwrap_or_else(|| panic!("no manager: {st}"));
    signal_node(&st, 1, libc::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while members(&status()) != [2, 3] {
        assert!(std::time::Instant::now() < deadline, "node 1 is still a member: {}", status());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The manager sees it leave (its follower may act a moment after etcd
    // lists it gone). Its connection to the manager ended with its process
    // (a live one cut off from etcd would be expelled), and its
    // reservation key is fenced.
    let mlog = dir.path().join(format!("node{mgr}/node.log"));
    let seen = |log: &str| {
        log.contains("node left the cluster")
            && log.contains("node=1")
            && log.contains("client gone; dropping its tokens client=node-1")
            && log.contains("fenced the departed node off the volume")
    };
    while !seen(&std::fs::read_to_string(&mlog).unwrap()) {
        let log = std::fs::read_to_string(&mlog).unwrap();
        assert!(std::time::Instant::now() < deadline, "the manager did not expel and fence node 1: {log}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The survivors' mounts work on.
    let env = env_of(dir.path());
    let m2 = env["TIDEPOOL_NODE2_MOUNT"].clone();
    std::fs::write(Path::new(&m2).join("after"), b"node 1 left").unwrap();
    assert_eq!(std::fs::read(Path::new(&env["TIDEPOOL_NODE3_MOUNT"]).join("after")).unwrap(), b"node 1 left");
    let ctrl = nvmf::Controller::connect(&env["TIDEPOOL_STORAGE"], &env["TIDEPOOL_NQN"], &nvmf::ConnectOpts::default())
        .unwrap();
    let (_, _, regs) = ctrl.resv_report(1).unwrap();
    assert!(regs.iter().all(|r| node::fencing::node_of(r.rkey.get()) != 1), "node 1 is still registered");
    let _ = ctrl.shutdown();
    tidepool(&["cluster", "down", "--dir", d]);
    assert!(!alive(etcd_pid), "etcd still runs after down");
    assert!(!mounted(&env["TIDEPOOL_NODE1_MOUNT"]), "down detaches the killed node's mount");
}

/// `up --etcd` elects the file system's manager among two candidates. The
/// manager is killed with SIGKILL: the other candidate wins the next term,
/// preempts the dead manager's reservation before it replays the journal,
/// and the mounts find it through etcd; a file written and fsynced before
/// the kill is intact on every node, and the first create after the kill
/// completes once the new manager serves. It plays the file system's
/// disposition role too: a disposition changed after the failover reaches
/// node 4 (neither manager) through it.
#[test]
fn a_killed_manager_is_replaced_fenced_and_loses_nothing() {
    let Some((dir, _up)) = etcd_cluster(4) else { return };
    let d = dir.path().to_str().unwrap();
    let status = || status_of(d);
    let manager = |st: &serde_json::Value| holders(st, "fs-manager:1");
    let st = status();
    let old = manager(&st);
    assert!(old == [2] || old == [3], "one of the candidates manages: {st}");
    let (old, new) = (old[0], 5 - old[0]);
    let env = env_of(dir.path());
    let m1 = Path::new(&env["TIDEPOOL_NODE1_MOUNT"]).to_path_buf();
    let mnew = Path::new(&env[&format!("TIDEPOOL_NODE{new}_MOUNT")]).to_path_buf();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(m1.join("before")).unwrap();
        f.write_all(&[7u8; 100_000]).unwrap();
        f.sync_all().unwrap();
    }
    let s4 = env["TIDEPOOL_NODE4_DM_SOCKET"].clone();
    let dm4 = |args: &[&str]| {
        let mut a = vec!["dm", "--socket", &s4];
        a.extend_from_slice(args);
        tidepool(&a)
    };
    let sid = common::field(dm4(&["create-session", "--info", "hsm"]).trim(), "sid");
    // Namespace events nothing here raises (nobody answers this session's events).
    dm4(&["set-disp", "--sid", &sid, "--fs", "1", "--events", "remove"]);
    signal_node(&st, old, libc::SIGKILL);
    let killed = std::time::Instant::now();
    std::fs::write(m1.join("after"), b"made after the kill").unwrap();
    println!(
        "FIGURE failover: kill -9 of the manager to the first create on a survivor: {} ms (lease TTL 3 s)",
        killed.elapsed().as_millis()
    );
    assert_eq!(manager(&status()), [new], "the other candidate manages now");
    assert_eq!(std::fs::read(m1.join("before")).unwrap(), vec![7u8; 100_000]);
    assert_eq!(std::fs::read(mnew.join("before")).unwrap(), vec![7u8; 100_000]);
    assert_eq!(std::fs::read(mnew.join("after")).unwrap(), b"made after the kill");
    let log = std::fs::read_to_string(dir.path().join(format!("node{new}/node.log"))).unwrap();
    assert!(log.contains("preempted the last manager's reservation") && log.contains(&format!("node={old}")), "{log}");
    // The volume's reservation: held by the new manager, the old one no longer registered.
    let ctrl = nvmf::Controller::connect(&env["TIDEPOOL_STORAGE"], &env["TIDEPOOL_NQN"], &nvmf::ConnectOpts::default())
        .unwrap();
    let (_, rtype, regs) = ctrl.resv_report(1).unwrap();
    let holder: Vec<u32> =
        regs.iter().filter(|r| r.rcsts & 1 != 0).map(|r| node::fencing::node_of(r.rkey.get())).collect();
    assert_eq!((rtype, holder), (node::fencing::RTYPE, vec![new as u32]));
    assert!(
        regs.iter().all(|r| node::fencing::node_of(r.rkey.get()) != old as u32),
        "the old manager is still registered"
    );
    let _ = ctrl.shutdown();
    // Node 4 is neither manager: its table comes through the new one. (The
    // session manager may have died with the manager: wait for its successor.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while holders(&status(), "session-manager").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no session manager: {}", status());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    dm4(&["set-disp", "--sid", &sid, "--fs", "1", "--events", "remove,rename"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dm4(&["disp", "--sid", &sid]).contains("rename") {
        assert!(std::time::Instant::now() < deadline, "node 4 did not get the new dispositions");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.path().join(format!("node{new}/node.log"))).unwrap();
    assert!(log.contains("elected manager: the dispositions go to every node"), "{log}");
    tidepool(&["cluster", "down", "--dir", d]);
}

/// A manager frozen (SIGSTOP) past its lease, as a partition or a long
/// pause would leave it: the other candidate takes over and preempts its
/// reservation; a create on another node, whose connection to the frozen
/// manager stays open, moves to the new manager once etcd says the old
/// one is out; the frozen host's writes are refused by the storage node
/// (Reservation Conflict); woken (SIGCONT), the old manager finds its
/// lease gone and stops serving.
#[test]
fn a_frozen_manager_is_fenced_and_stops_serving_when_it_wakes() {
    let Some((dir, _up)) = etcd_cluster(3) else { return };
    let d = dir.path().to_str().unwrap();
    let st = status_of(d);
    let has_role = |st: &serde_json::Value, i: u64| holders(st, "fs-manager:1").contains(&i);
    let old = *holders(&st, "fs-manager:1").first().unwrap_or_else(|| panic!("no manager: {st}"));
    let new = 5 - old;
    let env = env_of(dir.path());
    let m1 = Path::new(&env["TIDEPOOL_NODE1_MOUNT"]).to_path_buf();
    std::fs::write(m1.join("before"), b"written before the freeze").unwrap();
    signal_node(&st, old, libc::SIGSTOP);
    std::fs::write(m1.join("during"), b"made while the old manager was frozen").unwrap();
    let log = std::fs::read_to_string(dir.path().join(format!("node{new}/node.log"))).unwrap();
    assert!(log.contains("preempted the last manager's reservation"), "{log}");
    // Any write of the frozen host (its journal's too) is refused now: one
    // rewriting a block with what it holds, so nothing changes if it were not.
    let hostnqn = format!("nqn.2026-11.io.tidepool:node-{old}");
    let opts = nvmf::ConnectOpts::default().with_hostnqn(&hostnqn);
    let ctrl = nvmf::Controller::connect(&env["TIDEPOOL_STORAGE"], &env["TIDEPOOL_NQN"], &opts).unwrap();
    let mut block = vec![0u8; 4096];
    ctrl.read(1, 0, &mut block).unwrap();
    let e = ctrl.write(1, 0, &block, true).expect_err("the fenced host wrote to the volume");
    assert!(e.to_string().contains("Reservation Conflict"), "{e}");
    let _ = ctrl.shutdown();
    signal_node(&st, old, libc::SIGCONT);
    let old_log = dir.path().join(format!("node{old}/node.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&old_log).unwrap().contains("stopping its metadata services") {
        assert!(std::time::Instant::now() < deadline, "the woken manager did not stop serving");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let st = status_of(d);
    assert!(has_role(&st, new) && !has_role(&st, old), "{st}");
    let mnew = Path::new(&env[&format!("TIDEPOOL_NODE{new}_MOUNT")]).to_path_buf();
    assert_eq!(std::fs::read(mnew.join("before")).unwrap(), b"written before the freeze");
    assert_eq!(std::fs::read(mnew.join("during")).unwrap(), b"made while the old manager was frozen");
    tidepool(&["cluster", "down", "--dir", d]);
}

/// `up --etcd` elects the session manager among nodes 1 and 3, its registry
/// and disposition table kept in etcd. Killed with SIGKILL, it is replaced
/// by the other, which starts from etcd: the session (on node 2) keeps its
/// id and node, its disposition still holds (another session is refused the
/// same event), and it can change its dispositions again, which reach the
/// nodes. A session made on node 2 right after the kill, while etcd still
/// names the dead manager, is announced again to the next one.
#[test]
fn a_killed_session_manager_is_replaced_from_its_records_in_etcd() {
    let Some((dir, _up)) = etcd_cluster(3) else { return };
    let d = dir.path().to_str().unwrap();
    let status = || status_of(d);
    let sm = |st: &serde_json::Value| holders(st, "session-manager");
    let st = status();
    let old = sm(&st);
    assert!(old == [1] || old == [3], "one candidate is the session manager: {st}");
    let (old, new) = (old[0], 4 - old[0]);
    let env = env_of(dir.path());
    let s2 = env["TIDEPOOL_NODE2_DM_SOCKET"].clone();
    let dm = |args: &[&str]| {
        let mut a = vec!["dm", "--socket", &s2];
        a.extend_from_slice(args);
        Command::new(TIDEPOOL).args(&a).output().unwrap()
    };
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let sid = common::field(ok(dm(&["create-session", "--info", "hsm"])).trim(), "sid");
    // An event nothing here raises (nobody answers this session's events).
    ok(dm(&["set-disp", "--sid", &sid, "--fs", "1", "--events", "remove"]));
    signal_node(&st, old, libc::SIGKILL);
    // Made while etcd still names the dead manager (its lease lives on for
    // a while): announced to it, and lost with it unless announced again.
    let gap = common::field(ok(dm(&["create-session", "--info", "gap"])).trim(), "sid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sm(&status()) != [new] {
        assert!(std::time::Instant::now() < deadline, "no new session manager: {}", status());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(dir.path().join(format!("node{new}/node.log"))).unwrap();
    assert!(log.contains("session manager state loaded from etcd sessions=1"), "{log}");
    let sessions = ok(dm(&["sessions"]));
    assert!(sessions.contains(&format!("sid={sid} node=2 info=hsm")), "{sessions}");
    // The session made in the gap reaches the new manager, which mirrors it
    // to the other nodes.
    let snew = env[&format!("TIDEPOOL_NODE{new}_DM_SOCKET")].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let there = tidepool(&["dm", "--socket", &snew, "sessions"]);
        if there.contains(&format!("sid={gap} node=2 info=gap")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the session made in the gap was lost: {there}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The table came back: the event is still the first session's.
    let other = common::field(ok(dm(&["create-session", "--info", "other"])).trim(), "sid");
    let o = dm(&["set-disp", "--sid", &other, "--fs", "1", "--events", "remove"]);
    let why = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && why.contains("EBUSY"), "a second session took the first one's event: {o:?}");
    ok(dm(&["set-disp", "--sid", &sid, "--fs", "1", "--events", "remove,rename"]));
    // The new table travels to the nodes through the file system's manager.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let disp = ok(dm(&["disp", "--sid", &sid]));
        if disp.contains("remove") && disp.contains("rename") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new dispositions did not arrive: {disp}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    tidepool(&["cluster", "down", "--dir", d]);
}

/// The storage node killed (SIGKILL) and started again under a running
/// `up --etcd` cluster: the nodes connect to it again and go on (a write
/// on node 1 made while it is down completes once it is back and every
/// node reads it), what was acknowledged before is on the volume, and the
/// reservations come back from its PTPL file: the manager still holds the
/// volume, and a node fenced before the restart (killed, its key
/// preempted) is still refused after it.
#[test]
fn a_restarted_storage_node_keeps_data_and_fences_and_the_nodes_go_on() {
    let Some((dir, _up)) = etcd_cluster(3) else { return };
    let d = dir.path().to_str().unwrap();
    let st = status_of(d);
    let mgr = holders(&st, "fs-manager:1");
    assert!(mgr == [2] || mgr == [3], "{st}");
    let env = env_of(dir.path());
    let m = |i: u64| Path::new(&env[&format!("TIDEPOOL_NODE{i}_MOUNT")]).to_path_buf();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(m(2).join("before")).unwrap();
        f.write_all(&[5u8; 300_000]).unwrap();
        f.sync_all().unwrap();
    }
    // Node 1 (no candidate) dies and is fenced off the volume.
    signal_node(&st, 1, libc::SIGKILL);
    let mlog = dir.path().join(format!("node{}/node.log", mgr[0]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&mlog).unwrap().contains("fenced the departed node off the volume") {
        assert!(std::time::Instant::now() < deadline, "node 1 was not fenced");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = tidepool(&["cluster", "restart-storage", "--dir", d, "--kill"]);
    assert!(out.contains("storage node restarted"), "{out}");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(m(3).join("across")).unwrap();
        f.write_all(b"written across the restart").unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(std::fs::read(m(2).join("across")).unwrap(), b"written across the restart");
    assert_eq!(std::fs::read(m(3).join("before")).unwrap(), vec![5u8; 300_000]);
    let slog = std::fs::read_to_string(dir.path().join("storage-node.log")).unwrap();
    assert!(slog.contains("reservations loaded (persist through power loss)"), "{slog}");
    let logs: String =
        [2, 3].iter().map(|i| std::fs::read_to_string(dir.path().join(format!("node{i}/node.log"))).unwrap()).collect();
    assert!(logs.contains("connected again after losing the controller"), "{logs}");
    // The fences outlived the restart.
    let ctrl = nvmf::Controller::connect(&env["TIDEPOOL_STORAGE"], &env["TIDEPOOL_NQN"], &nvmf::ConnectOpts::default())
        .unwrap();
    let (_, rtype, regs) = ctrl.resv_report(1).unwrap();
    let holder: Vec<u32> =
        regs.iter().filter(|r| r.rcsts & 1 != 0).map(|r| node::fencing::node_of(r.rkey.get())).collect();
    assert_eq!((rtype, holder), (node::fencing::RTYPE, vec![mgr[0] as u32]));
    assert!(regs.iter().all(|r| node::fencing::node_of(r.rkey.get()) != 1), "node 1 registered again");
    let _ = ctrl.shutdown();
    let opts = nvmf::ConnectOpts::default().with_hostnqn("nqn.2026-11.io.tidepool:node-1");
    let ctrl = nvmf::Controller::connect(&env["TIDEPOOL_STORAGE"], &env["TIDEPOOL_NQN"], &opts).unwrap();
    let mut block = vec![0u8; 512];
    ctrl.read(1, 0, &mut block).unwrap();
    let e = ctrl.write(1, 0, &block, true).expect_err("the fenced node wrote after the restart");
    assert!(e.to_string().contains("Reservation Conflict"), "{e}");
    let _ = ctrl.shutdown();
    tidepool(&["cluster", "down", "--dir", d]);
}

/// What a session manager distributes is stamped with its term, and a node
/// refuses a frame of an older term: a disposition table from a deposed
/// manager (here a peer with the cluster key sending what one cut off by a
/// partition still could, with a version above anything installed) leaves
/// the node's table as the elected manager sent it, and the node says why.
/// The same table stamped with a later term is installed, so it is the
/// stamp alone that refused it.
#[test]
fn a_deposed_session_managers_table_is_refused() {
    use std::io::Write;
    let Some((dir, _up)) = etcd_cluster(3) else { return };
    let d = dir.path().to_str().unwrap();
    let env = env_of(dir.path());
    let dm = |args: &[&str]| {
        let mut a = vec!["dm", "--socket", &env["TIDEPOOL_NODE2_DM_SOCKET"]];
        a.extend_from_slice(args);
        tidepool(&a)
    };
    let sid = common::field(dm(&["create-session", "--info", "hsm"]).trim(), "sid");
    dm(&["set-disp", "--sid", &sid, "--fs", "1", "--events", "remove"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !dm(&["disp", "--sid", &sid]).contains("remove") {
        assert!(std::time::Instant::now() < deadline, "the disposition never reached node 2");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let toml = std::fs::read_to_string(dir.path().join("node2/node.toml")).unwrap();
    let setting = |k: &str| {
        let l = toml.lines().find(|l| l.starts_with(&format!("{k} = "))).unwrap();
        l.split_once(" = ").unwrap().1.trim_matches('"').to_string()
    };
    let mut peer = common::peer::handshake(&setting("listen"), 2, setting("cluster_key").as_bytes());
    let spec = |epoch: u64| {
        let mut s = dmapi::disp::DispositionTable::default().to_spec();
        s.version = 1 << 40;
        let f =
            dmapi::proto::Frame::new(dmapi::types::NodeId(common::peer::PEER), 1, dmapi::proto::Message::DispSpec(s));
        dmapi::proto::encode_frame(&f.in_term(epoch)).unwrap()
    };
    peer.write_all(&spec(1)).unwrap();
    let log = dir.path().join("node2/node.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !std::fs::read_to_string(&log).unwrap().contains("a frame of a deposed session manager's term; refused") {
        assert!(std::time::Instant::now() < deadline, "the stale table was not refused");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(dm(&["disp", "--sid", &sid]).contains("remove"), "the stale table replaced the elected manager's");
    peer.write_all(&spec(1 << 50)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while dm(&["disp", "--sid", &sid]).contains("remove") {
        assert!(std::time::Instant::now() < deadline, "a table of a later term was not installed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    tidepool(&["cluster", "down", "--dir", d]);
}

/// With membership by etcd, heartbeats only detect and etcd decides: a
/// source node frozen (SIGSTOP) past the heartbeats' failure timeout but
/// within its lease is suspected, not failed, so its outstanding
/// synchronous event is not cancelled; woken, its read is answered by the
/// DM application and completes. (Failed on silence alone, the session's
/// node would retire the token and send the application a cancel event.)
#[test]
fn a_node_silent_within_its_lease_is_suspected_not_failed() {
    let Some((dir, _up)) = etcd_cluster_with(3, &["--lease-ttl-ms", "12000"]) else { return };
    let d = dir.path().to_str().unwrap();
    let st = status_of(d);
    let env = env_of(dir.path());
    let m1 = Path::new(&env["TIDEPOOL_NODE1_MOUNT"]).to_path_buf();
    std::fs::write(m1.join("data"), b"read while its node was frozen").unwrap();
    let s2 = env["TIDEPOOL_NODE2_DM_SOCKET"].clone();
    let (mut app, lines) = dm_listen(&s2, &["--info", "hsm", "--events", "read", "--hold"]);
    let t = std::time::Duration::from_secs(20);
    let expect = |what: &str| loop {
        let l = lines.recv_timeout(t).unwrap_or_else(|_| panic!("the application never printed {what}"));
        if l.starts_with(what) {
            return l;
        }
    };
    let sid = common::field(&expect("SESSION"), "sid");
    expect("READY");
    let s1 = env["TIDEPOOL_NODE1_DM_SOCKET"].clone();
    let deadline = std::time::Instant::now() + t;
    while !tidepool(&["dm", "--socket", &s1, "disp", "--sid", &sid]).contains("read") {
        assert!(std::time::Instant::now() < deadline, "the disposition never reached node 1");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // One read(2), so one event: `cat` would read again for the end of file.
    let reader = Command::new("dd")
        .arg(format!("if={}", m1.join("data").display()))
        .args(["bs=4096", "count=1", "status=none"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let token = common::field(&expect("EVENT type=read"), "token");
    signal_node(&st, 1, libc::SIGSTOP);
    let log2 = dir.path().join("node2/node.log");
    let deadline = std::time::Instant::now() + t;
    while !std::fs::read_to_string(&log2).unwrap().contains("peer silent; still a member in etcd") {
        if std::time::Instant::now() > deadline {
            signal_node(&st, 1, libc::SIGCONT);
            panic!("node 2 never noticed node 1's silence");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    signal_node(&st, 1, libc::SIGCONT);
    let r = tidepool(&["dm", "--socket", &s2, "respond", "--sid", &sid, "--token", &token]);
    assert!(!r.contains("ESRCH"), "{r}");
    let o = reader.wait_with_output().unwrap();
    assert_eq!((o.status.success(), &o.stdout[..]), (true, &b"read while its node was frozen"[..]));
    let log = std::fs::read_to_string(&log2).unwrap();
    assert!(!log.contains("peer failed"), "node 1 was failed within its lease:\n{log}");
    while let Ok(l) = lines.try_recv() {
        assert!(!l.contains("type=cancel"), "the event was cancelled: {l}");
    }
    let _ = app.kill();
    let _ = app.wait();
    tidepool(&["cluster", "down", "--dir", d]);
}
