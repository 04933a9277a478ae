//! B1/B4/B12 with real programs: a Tidepool FUSE mount hosted by node B's
//! daemon generates DM events into that daemon's source engine; a DM
//! application on node A receives them
//! (with B's node id), and its answers decide the operations: CONTINUE lets
//! them run, ABORT makes `mv` fail with the chosen errno.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{field, standard_with_mounts};

const T: Duration = Duration::from_secs(20);

fn sh(dir: &std::path::Path, script: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap()
}

#[test]
fn file_operations_on_a_mount_raise_events_at_the_session_node() {
    if !common::fuse_available() {
        return;
    }
    // 32 MiB, so that a 64 MiB write fills it.
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[4]);
    let mnt = &mnts[0];
    let mut hsm = c.listen(
        3,
        &[
            "--info",
            "hsm",
            "--events",
            "read,write,truncate,create,remove,rename,postcreate,postremove,nospace",
            "--abort",
            "rename=1",
        ],
    );
    for ev in ["rename", "postcreate", "postremove", "nospace"] {
        c.driver(4, &["wait-route", "--event", ev, "--node", "3"]);
    }

    let o = sh(mnt.path(), "echo hello > f && cat f && truncate -s 2 f && cat f");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\nhe");
    let first = hsm.expect("EVENT", T);
    assert_eq!((field(&first, "type"), field(&first, "name1")), ("create".into(), "f".into()), "{first}");
    assert_eq!(field(&first, "source_node"), "4", "B12: the mount's node: {first}");
    let mut seen = vec![field(&hsm.expect("EVENT type=write", T), "type")];
    seen.push(field(&hsm.expect("EVENT type=read", T), "type"));
    let trunc = hsm.expect("EVENT type=truncate", T);
    assert_eq!(field(&trunc, "offset"), "2", "truncate carries the new size: {trunc}");
    // fallocate changes data as a write does, and raises its event.
    let o = sh(mnt.path(), "fallocate -o 4096 -l 65536 f");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fa = hsm.expect("EVENT type=write", T);
    assert_eq!((field(&fa, "offset"), field(&fa, "length")), ("4096".into(), "65536".into()), "{fa}");

    // ABORT from the DM application fails the operation with its errno.
    let o = sh(mnt.path(), "mv f g");
    assert!(!o.status.success(), "mv must fail");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not permitted"), "{}", String::from_utf8_lossy(&o.stderr));
    let ren = hsm.expect("EVENT type=rename", T);
    assert_eq!((field(&ren, "name1"), field(&ren, "name2")), ("f".into(), "g".into()));
    assert!(mnt.path().join("f").exists() && !mnt.path().join("g").exists());

    let o = sh(mnt.path(), "rm f");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    hsm.expect("EVENT type=remove", T);
    let post = hsm.expect("EVENT type=postremove", T);
    assert_eq!(field(&post, "name1"), "f");
    assert!(!mnt.path().join("f").exists());
    assert!(hsm.seen.iter().any(|l| l.starts_with("EVENT type=postcreate") && field(l, "name1") == "f"));

    // A full volume: a nospace event goes to the session, the writer gets
    // ENOSPC, and the file system stays usable.
    let o = sh(mnt.path(), "dd if=/dev/zero of=big bs=1M count=64 2>&1");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("No space left"), "{}", String::from_utf8_lossy(&o.stdout));
    hsm.expect("EVENT type=nospace", T);
    let o = sh(mnt.path(), "rm big && echo again > f && cat f");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "again\n");
    drop(c);
}
