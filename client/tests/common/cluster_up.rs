//! Helpers for the tests of `tidepool cluster up/status/down`: the guard
//! that takes a cluster down, and readers of its status and environment.

use std::path::Path;
use std::process::Command;

use super::TIDEPOOL;

/// Runs `cluster down` when dropped, so that a failing test leaves no
/// cluster behind (its mounts, their managers gone, would hang every
/// sync(2) on the machine).
pub struct Up(pub String);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new(TIDEPOOL).args(["cluster", "down", "--dir", &self.0]).output();
    }
}

/// `cluster status --json` of the cluster in `d`.
pub fn status_of(d: &str) -> serde_json::Value {
    serde_json::from_str(&tidepool(&["cluster", "status", "--dir", d, "--json"])).unwrap()
}

/// The nodes holding `role` (`fs-manager:1`, `session-manager`) in a status.
pub fn holders(st: &serde_json::Value, role: &str) -> Vec<u64> {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["roles"].as_array().unwrap().iter().any(|r| r == role))
        .map(|n| n["id"].as_u64().unwrap())
        .collect()
}

/// Sends `sig` to node `id` of the cluster a status describes.
pub fn signal_node(st: &serde_json::Value, id: u64, sig: i32) {
    let pid = st["nodes"][id as usize - 1]["pid"].as_u64().unwrap();
    // SAFETY: kill(2) on the pid of a node daemon this test's cluster started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// `cluster up --etcd` with `nodes` nodes in a fresh directory, torn down
/// when the guard drops; `None` after a skip (no FUSE or no etcd here).
pub fn etcd_cluster(nodes: u32) -> Option<(tempfile::TempDir, Up)> {
    etcd_cluster_with(nodes, &[])
}

/// The same with more arguments to `up` (`--netns`, `--lease-ttl-ms N`).
pub fn etcd_cluster_with(nodes: u32, extra: &[&str]) -> Option<(tempfile::TempDir, Up)> {
    if !super::fuse_available() || !test_support::have_tool("etcd") {
        return None;
    }
    if extra.contains(&"--netns") && !(test_support::is_root() && test_support::have_tool("ip")) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let n = nodes.to_string();
    let mut args = vec!["cluster", "up", "--etcd", "--nodes", &n, "--dir", &d, "--size", "64M"];
    args.extend_from_slice(extra);
    tidepool(&args);
    Some((dir, Up(d)))
}

pub fn tidepool(args: &[&str]) -> String {
    let o = Command::new(TIDEPOOL).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "tidepool {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

pub fn env_of(dir: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(dir.join("cluster.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

pub fn mounted(p: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == Some(p))
}

/// Running, not a zombie waiting for a parent (the daemons' parent, `up`,
/// has exited) to reap it.
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// `tidepool dm listen ARGS` on the node whose DM socket is `socket`, and
/// the lines it prints, as they come.
pub fn dm_listen(socket: &str, args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut app = Command::new(TIDEPOOL)
        .args(["dm", "--socket", socket, "listen"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let out = app.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (app, lines)
}
