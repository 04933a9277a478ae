//! `tidepool cluster up/status/down`: a whole cluster on this machine in
//! one command. `up` returns with every node's mount up (a file written on
//! node 1 is read on node 3), writes `cluster.env`, `status --json` names
//! pids, roles and mounts, a DM session shows up in it, and `down` stops
//! exactly what `up` started and leaves no mount behind; `up` again on the
//! same directory finds the file system and its files.

mod common;

use std::path::Path;
use std::process::Command;

use common::TIDEPOOL;

fn tidepool(args: &[&str]) -> String {
    let o = Command::new(TIDEPOOL).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "tidepool {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn env_of(dir: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(dir.join("cluster.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

fn mounted(p: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == Some(p))
}

/// Running, not a zombie waiting for a parent (the daemons' parent, `up`,
/// has exited) to reap it.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

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
