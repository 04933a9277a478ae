//! A DM application in C (`tests/c/dm_loop.c`), compiled with `cc` against
//! the header and library `scripts/install-dmapi.sh` installs, runs against
//! real node daemons hosting real mounts: its session on node A (3) holds
//! read and write dispositions; a program on node B (4) reads a file (the C
//! program takes an exclusive right, reads invisibly, answers CONTINUE: the
//! read returns the bytes) and writes it (answered ABORT with EPERM: the
//! write fails with EPERM); the event's source node and inode arrive as
//! the C side reads them. Then the XDSM error cases from C.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{field, standard_with_mounts, TIDEPOOL};
use test_support::skip::{have_tool, skip};

const T: Duration = Duration::from_secs(30);

/// The built C library (`cargo build --lib`, as scripts/test.sh does).
fn built_lib() -> Option<PathBuf> {
    let p = Path::new(TIDEPOOL).parent()?.join("liblibdmapi.so");
    p.exists().then_some(p)
}

/// Installs the header and library under a fresh prefix and compiles `src`
/// there with `cc ... $(pkg-config --cflags --libs dmapi)`.
fn build(src: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    let prefix = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let lib = built_lib().unwrap();
    let out =
        Command::new(root.join("scripts/install-dmapi.sh")).arg(prefix.path()).arg("--lib").arg(&lib).output().unwrap();
    assert!(out.status.success(), "install-dmapi.sh: {}", String::from_utf8_lossy(&out.stderr));
    let pc = Command::new("pkg-config")
        .args(["--cflags", "--libs", "dmapi"])
        .env("PKG_CONFIG_PATH", prefix.path().join("lib/pkgconfig"))
        .output()
        .unwrap();
    assert!(pc.status.success(), "pkg-config: {}", String::from_utf8_lossy(&pc.stderr));
    let flags = String::from_utf8(pc.stdout).unwrap();
    let exe = prefix.path().join(name);
    let out = Command::new("cc")
        .args(["-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(src))
        .args(flags.split_whitespace())
        .output()
        .unwrap();
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    (prefix, exe)
}

fn can_run() -> bool {
    if !common::fuse_available() {
        return false;
    }
    for tool in ["cc", "pkg-config"] {
        if !have_tool(tool) {
            skip(format!("no {tool}"));
            return false;
        }
    }
    if built_lib().is_none() {
        skip("libdmapi's cdylib is not built (cargo build --workspace --lib)");
        return false;
    }
    true
}

#[test]
fn c_program_answers_events_from_another_node_and_sees_xdsm_errors() {
    if !can_run() {
        return;
    }
    let (_prefix, exe) = build("dm_loop.c", "dm_loop");
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4]);
    let (ma, mb) = (&mnts[0], &mnts[1]);
    let f = mb.path().join("data");
    std::fs::write(&f, b"tidepool says hi").unwrap();
    let ino = std::fs::metadata(&f).unwrap().ino();

    let mut prog = Command::new(&exe)
        .arg(ma.path())
        .arg("1")
        .env("TIDEPOOL_DM_SOCKET", c.socket(3))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = prog.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    let mut expect = |prefix: &str| -> String {
        loop {
            match rx.recv_timeout(T) {
                Ok(l) => {
                    seen.push(l.clone());
                    if l.starts_with("FAILED") {
                        panic!("the C program failed: {seen:?}");
                    }
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!("no {prefix} line from the C program; saw {seen:?}"),
            }
        }
    };
    let ready = expect("READY");
    assert!(ready.contains("version=SGI DMAPI (XDSM) API, Release 1.0."), "{ready}");
    c.driver(4, &["wait-route", "--event", "write", "--node", "3"]);

    // Node B reads: the C program answers CONTINUE after its own invisible read.
    assert_eq!(std::fs::read(&f).unwrap(), b"tidepool says hi");
    let ev = expect("EVENT");
    assert_eq!(field(&ev, "type"), "16", "DM_EVENT_READ: {ev}");
    assert_eq!(field(&ev, "offset"), "0", "{ev}");
    assert_eq!(field(&ev, "node"), "4", "the source node, as C reads it: {ev}");
    assert_eq!(field(&ev, "ino"), ino.to_string());
    let peek = expect("PEEK");
    assert_eq!(peek, "PEEK right=2 tidepool", "an exclusive right, then dm_read_invis");

    // Node B writes: ABORT with EPERM, which the writer sees (at the write,
    // or at the fsync that pushes a cached write to the file system).
    let e = std::fs::OpenOptions::new().write(true).open(&f).and_then(|mut h| {
        use std::io::Write;
        h.write_all(b"no")?;
        h.sync_all()
    });
    // (After the read events of the rest of the file.)
    let ev = expect("EVENT type=17");
    assert_eq!(field(&ev, "node"), "4", "{ev}");
    assert_eq!(e.map_err(|e| e.raw_os_error()), Err(Some(libc::EPERM)));

    let errs = expect("ERRORS");
    let want = [
        ("e2big", libc::E2BIG),
        ("badsid", libc::EINVAL),
        ("none", libc::EAGAIN),
        ("badtoken", libc::EINVAL),
        ("badhandle", libc::EBADF),
        ("nullout", libc::EFAULT),
        ("badresp", libc::EINVAL),
    ];
    for (k, v) in want {
        assert_eq!(field(&errs, k), v.to_string(), "{k}: {errs}");
    }
    assert_eq!(field(&errs, "need"), "7", "E2BIG reports the length: \"c-loop\" and its NUL");
    expect("DONE");
    let st = prog.wait().unwrap();
    assert!(st.success(), "{st}");
    drop(c);
}

#[test]
fn dm_init_service_without_a_daemon_fails_clearly() {
    if !have_tool("cc") || !have_tool("pkg-config") || built_lib().is_none() {
        return skip("no cc, pkg-config or built libdmapi");
    }
    let (prefix, exe) = build("dm_loop.c", "dm_loop");
    let out = Command::new(&exe)
        .args(["/nonexistent", "1"])
        .env("TIDEPOOL_DM_SOCKET", prefix.path().join("no-daemon.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED dm_init_service"), "{stdout}");
    assert!(stdout.contains(&format!("errno={}", libc::EIO)), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no Tidepool node daemon at") && stderr.contains("TIDEPOOL_DM_SOCKET"), "{stderr}");
}
