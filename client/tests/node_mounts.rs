//! One daemon per node: `tidepool node run` hosts the node's FUSE mounts
//! (from its configuration and from `tidepool mount --node`), the manager
//! node serves the file system's metadata, and a file operation's DM event
//! goes from the FUSE thread into the daemon's own source engine. A daemon
//! stopped with SIGTERM unmounts; one killed with SIGKILL mounts again when
//! it restarts, over the dead mount it left.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{field, fuse_mount_toml, listen_port, Cluster, Spec, Volume, TIDEPOOL};

const T: Duration = Duration::from_secs(20);

fn sh(dir: &Path, script: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap()
}

fn ok(dir: &Path, script: &str) -> String {
    let o = sh(dir, script);
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether `path` is a mount point in this machine's mount table.
fn is_mounted(path: &Path) -> bool {
    let want = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == Some(&want))
}

#[test]
fn node_daemons_host_their_mounts_and_events_leave_from_the_fuse_thread() {
    if !common::fuse_available() {
        return;
    }
    let vol = Volume::new(64 << 20);
    // The mount points must exist before the nodes read their configuration.
    let dir = std::env::temp_dir().join(format!("tidepool-mnt-{}", std::process::id()));
    let (ma, mb, mc) = (dir.join("a"), dir.join("b"), dir.join("c"));
    for m in [&ma, &mb, &mc] {
        std::fs::create_dir_all(m).unwrap();
    }
    let specs: Vec<Spec> = (1..=5)
        .map(|id| Spec {
            id,
            mounts: vec![],
            extra: match id {
                3 => fuse_mount_toml(&ma),
                4 => fuse_mount_toml(&mb),
                _ => String::new(),
            },
        })
        .collect();
    let mut c = Cluster::start_with_fs(&specs, &vol.fs_toml(listen_port()));
    for m in [&ma, &mb, &mc] {
        c.adopt_mountpoint(m);
    }
    c.wait_mounted(3, &ma);
    c.wait_mounted(4, &mb);
    let st2 = libdmapi::Dm::connect(c.socket(2)).unwrap().status().unwrap();
    assert_eq!(st2.meta_served, vec![1], "the manager node serves fs 1's metadata");
    assert!(is_mounted(&ma) && is_mounted(&mb));

    // A DM session on A; a file written on B's mount is read on A's.
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "create,write,read"]);
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);
    ok(&mb, "echo hello > f");
    assert_eq!(ok(&ma, "cat f"), "hello\n");
    let create = hsm.expect("EVENT type=create", T);
    assert_eq!((field(&create, "name1"), field(&create, "source_node")), ("f".into(), "4".into()), "{create}");
    let w = hsm.expect("EVENT type=write", T);
    assert_eq!(field(&w, "source_node"), "4", "{w}");
    let r = hsm.expect("EVENT type=read", T);
    assert_eq!(field(&r, "source_node"), "3", "A's own read: {r}");

    // `tidepool mount --node` asks node 5's daemon, which hosts the mount.
    let mount_on_5 = |fs: &str| {
        Command::new(TIDEPOOL).args(["mount", "--node"]).arg(c.socket(5)).args(["--fs", fs]).arg(&mc).output().unwrap()
    };
    let o = mount_on_5("1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(ok(&mc, "cat f"), "hello\n");
    let st5 = libdmapi::Dm::connect(c.socket(5)).unwrap().status().unwrap();
    assert_eq!(st5.fuse.len(), 1, "{st5:?}");
    assert_eq!((st5.fuse[0].state.as_str(), st5.mounts.as_slice()), ("mounted", &[1u64][..]), "{st5:?}");
    let o = Command::new(TIDEPOOL).args(["umount", "--node"]).arg(c.socket(5)).arg(&mc).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!is_mounted(&mc));
    let st5 = libdmapi::Dm::connect(c.socket(5)).unwrap().status().unwrap();
    assert!(st5.fuse.is_empty() && st5.mounts.is_empty(), "{st5:?}");
    // A mount of a file system the node has no volume for is refused with the reason.
    let o = mount_on_5("7");
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not configured"), "{o:?}");

    // SIGTERM: the daemon unmounts before it exits.
    let st = c.stop(4);
    assert!(st.success(), "node 4 exit: {st:?}; log:\n{}", c.log(4));
    assert!(!is_mounted(&mb), "a stopped node leaves no mount");
    c.restart(4);
    c.wait_mounted(4, &mb);
    assert_eq!(ok(&mb, "cat f"), "hello\n");

    // SIGKILL leaves a dead mount; the restarted daemon detaches it and mounts.
    c.kill(4);
    assert!(sh(&dir, "ls b").status.code() != Some(0), "the killed node's mount is dead");
    c.restart(4);
    c.wait_mounted(4, &mb);
    ok(&mb, "echo again >> f");
    assert_eq!(ok(&ma, "cat f"), "hello\nagain\n");
    hsm.kill();
    drop(c);
    let _ = std::fs::remove_dir(&dir);
}
