//! Network namespaces for `tidepool cluster up --netns`: several hosts on
//! one machine, each node daemon with addresses of its own, joined by veth
//! pairs to bridges in a hub namespace, as machines are joined by switches.
//!
//! Two networks, as a real cluster often has: the cluster network
//! (10.77.0.0/24: etcd, node-to-node DM traffic, the metadata service) and
//! the storage network (10.77.1.0/24: NVMe/TCP to the storage node). The
//! hub holds both bridges, etcd (10.77.0.1) and the storage node
//! (10.77.1.1); node i is 10.77.0.(10+i) and 10.77.1.(10+i). Cutting a
//! node's cluster link (`tidepool cluster partition`) leaves its storage
//! path up: the case NVMe reservations exist for, a manager cut off from
//! the cluster that can still write to the volume.
//!
//! Every name lives inside the namespaces made here (interfaces are made in
//! the hub and their peers moved straight into the node's namespace), so
//! two clusters never collide, and no traffic leaves them.
//!
//! A thread joins a namespace with `setns(2)`, which moves that thread
//! alone; sockets it opens and processes it starts are in the namespace.
//! That is the only unsafe code here.

use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{bail, Context};

/// The cluster network's address of node `i` (the hub's is node 0's slot: .1).
pub fn cluster_ip(i: u32) -> String {
    if i == 0 {
        "10.77.0.1".into()
    } else {
        format!("10.77.0.{}", 10 + i)
    }
}

/// The storage network's address of node `i` (0: the hub, where the storage node is).
pub fn storage_ip(i: u32) -> String {
    if i == 0 {
        "10.77.1.1".into()
    } else {
        format!("10.77.1.{}", 10 + i)
    }
}

/// The namespace names of a cluster whose names start with `prefix`.
pub fn hub(prefix: &str) -> String {
    format!("{prefix}-hub")
}

/// Node `i`'s namespace.
pub fn node(prefix: &str, i: u32) -> String {
    format!("{prefix}-n{i}")
}

/// Node `i`'s end of its cluster link, in the hub.
pub fn cluster_link(i: u32) -> String {
    format!("c{i}")
}

/// Runs `ip ARGS`, failing with what it printed.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !o.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// Makes the hub and `nodes` node namespaces, linked and addressed. On a
/// failure what was made is removed again.
pub fn create(prefix: &str, nodes: u32) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("--netns needs root (it makes network namespaces)");
    }
    let r = build(prefix, nodes);
    if r.is_err() {
        destroy(prefix);
    }
    r
}

fn build(prefix: &str, nodes: u32) -> anyhow::Result<()> {
    let h = hub(prefix);
    ip(&["netns", "add", &h])?;
    ip(&["-n", &h, "link", "set", "lo", "up"])?;
    for (br, addr) in [("br0", cluster_ip(0)), ("br1", storage_ip(0))] {
        ip(&["-n", &h, "link", "add", br, "type", "bridge"])?;
        ip(&["-n", &h, "addr", "add", &format!("{addr}/24"), "dev", br])?;
        ip(&["-n", &h, "link", "set", br, "up"])?;
    }
    for i in 1..=nodes {
        let n = node(prefix, i);
        ip(&["netns", "add", &n])?;
        ip(&["-n", &n, "link", "set", "lo", "up"])?;
        for (link, eth, br, addr) in
            [(cluster_link(i), "eth0", "br0", cluster_ip(i)), (format!("s{i}"), "eth1", "br1", storage_ip(i))]
        {
            ip(&["-n", &h, "link", "add", &link, "type", "veth", "peer", "name", eth, "netns", &n])?;
            ip(&["-n", &h, "link", "set", &link, "master", br, "up"])?;
            ip(&["-n", &n, "addr", "add", &format!("{addr}/24"), "dev", eth])?;
            ip(&["-n", &n, "link", "set", eth, "up"])?;
        }
    }
    Ok(())
}

/// Removes the namespaces (their links go with them): every one named
/// with `prefix`, however many nodes were made before a failure.
pub fn destroy(prefix: &str) {
    let mine = |n: &str| n.strip_prefix(prefix).is_some_and(|rest| rest == "-hub" || rest.starts_with("-n"));
    let names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| mine(n)).collect())
        .unwrap_or_default();
    for n in names {
        let _ = ip(&["netns", "del", &n]);
    }
}

/// Sets node `i`'s cluster link down (`up == false`) or up again.
pub fn set_cluster_link(prefix: &str, i: u32, up: bool) -> anyhow::Result<()> {
    ip(&["-n", &hub(prefix), "link", "set", &cluster_link(i), if up { "up" } else { "down" }])
}

/// Runs `f` on a new thread that has joined namespace `name`: what it
/// connects to and what it spawns are in that namespace.
pub fn within<T: Send>(name: &str, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{name}");
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on a descriptor we hold open for the call; it
            // moves only this thread, which ends when `f` returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {name}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("a thread in namespace {name} panicked"))
    })
}
