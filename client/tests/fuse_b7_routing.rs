//! B7 with real programs: the data events of the mount node B's daemon hosts go to the HSM
//! session on node A (3), its namespace events to an audit session on node
//! C (5), as the dispositions say; each session gets only its own kinds,
//! all stamped with B's node id (B12).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{field, standard_with_mounts};

const T: Duration = Duration::from_secs(20);

#[test]
fn data_events_to_one_node_namespace_events_to_another() {
    if !common::fuse_available() {
        return;
    }
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[4]);
    let mnt = &mnts[0];
    let mut hsm = c.listen(3, &["--info", "hsm", "--events", "read,write,truncate"]);
    let mut audit = c.listen(5, &["--info", "audit", "--events", "create,remove,rename,postrename"]);
    for (ev, node) in [("read", "3"), ("write", "3"), ("create", "5"), ("rename", "5"), ("postrename", "5")] {
        c.driver(4, &["wait-route", "--event", ev, "--node", node]);
    }

    let o = Command::new("sh")
        .arg("-c")
        .arg("touch x && echo hi > x && cat x && mv x y && truncate -s 1 y && rm y")
        .current_dir(mnt.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");

    for want in ["create", "rename", "postrename", "remove"] {
        let l = audit.expect(&format!("EVENT type={want} "), T);
        assert_eq!(field(&l, "source_node"), "4", "{l}");
    }
    for want in ["write", "read", "truncate"] {
        let l = hsm.expect(&format!("EVENT type={want} "), T);
        assert_eq!(field(&l, "source_node"), "4", "{l}");
    }
    hsm.drain(Duration::from_millis(300));
    audit.drain(Duration::from_millis(100));
    let kinds = |seen: &[String]| -> Vec<String> {
        seen.iter().filter(|l| l.starts_with("EVENT")).map(|l| field(l, "type")).collect()
    };
    let (h, a) = (kinds(&hsm.seen), kinds(&audit.seen));
    assert!(h.iter().all(|t| ["read", "write", "truncate"].contains(&t.as_str())), "HSM got {h:?}");
    assert!(a.iter().all(|t| ["create", "remove", "rename", "postrename"].contains(&t.as_str())), "audit got {a:?}");
    drop(c);
}
