//! A DM application in C (`tests/c/dm_loop.c`), compiled with `cc` against
//! the header and library `scripts/install-dmapi.sh` installs, runs against
//! real node daemons hosting real mounts: its session on node A (3) holds
//! read and write dispositions; a program on node B (4) reads a file (the C
//! program takes an exclusive right, reads invisibly, answers CONTINUE: the
//! read returns the bytes) and one on node C (5) writes it (answered ABORT
//! with EPERM: the write fails with EPERM); the event's source node and
//! inode arrive as the C side reads them. Then the XDSM error cases from C.

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

/// A C program's stdout, line by line as it prints them.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(prog: &mut std::process::Child) -> Lines {
        let (tx, rx) = mpsc::channel();
        let out = prog.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Lines { rx, seen: Vec::new() }
    }

    /// The next line starting with `prefix` (a FAILED line first fails the test).
    fn expect(&mut self, prefix: &str) -> String {
        loop {
            match self.rx.recv_timeout(T) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    assert!(!l.starts_with("FAILED"), "the C program failed: {:?}", self.seen);
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!("no {prefix} line from the C program; saw {:?}", self.seen),
            }
        }
    }
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
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4, 5]);
    let (ma, mb, mc) = (&mnts[0], &mnts[1], &mnts[2]);
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
    let mut lines = Lines::of(&mut prog);
    let mut expect = |prefix: &str| lines.expect(prefix);
    let ready = expect("READY");
    assert!(ready.contains("version=SGI DMAPI (XDSM) API, Release 1.0."), "{ready}");
    for node in [4, 5] {
        c.driver(node, &["wait-route", "--event", "write", "--node", "3"]);
    }

    // Node B reads: the C program answers CONTINUE after its own invisible read.
    assert_eq!(std::fs::read(&f).unwrap(), b"tidepool says hi");
    let ev = expect("EVENT");
    assert_eq!(field(&ev, "type"), "16", "DM_EVENT_READ: {ev}");
    assert_eq!(field(&ev, "offset"), "0", "{ev}");
    assert_eq!(field(&ev, "node"), "4", "the source node, as C reads it: {ev}");
    assert_eq!(field(&ev, "ino"), ino.to_string());
    let peek = expect("PEEK");
    assert_eq!(peek, "PEEK right=2 tidepool", "an exclusive right, then dm_read_invis");

    // Node C writes: ABORT with EPERM, which the writer sees (at the write,
    // or at the fsync that pushes a cached write to the file system).
    let e = std::fs::OpenOptions::new().write(true).open(mc.path().join("data")).and_then(|mut h| {
        use std::io::Write;
        h.write_all(b"no")?;
        h.sync_all()
    });
    // (After the read events of the rest of the file.)
    let ev = expect("EVENT type=17");
    assert_eq!(field(&ev, "node"), "5", "the write came from node C: {ev}");
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

/// `tests/c/dm_calls.c`: the file functions, handles, bulk scans,
/// configuration and dispositions from C, each checked against the mount
/// and the Rust side.
#[test]
fn c_program_file_functions_handles_scans_and_config() {
    if !can_run() {
        return;
    }
    let (_prefix, exe) = build("dm_calls.c", "dm_calls");
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3]);
    let dir = mnts[0].path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let f = dir.join("f");
    std::fs::write(&f, vec![9u8; 20_000]).unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let ino = std::fs::metadata(&f).unwrap().ino();
    let mut prog = Command::new(&exe)
        .arg(&dir)
        .arg("20000")
        .env("TIDEPOOL_DM_SOCKET", c.socket(3))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the program holds its object reference; then the file loses its name.
    let mut stdout = BufReader::new(prog.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut l = String::new();
        assert!(stdout.read_line(&mut l).unwrap() > 0, "the C program ended early:\n{text}");
        text += &l;
        assert!(!l.starts_with("FAILED"), "{text}");
        if l.starts_with("HELD") {
            break;
        }
    }
    c.driver(3, &["wait-route", "--event", "destroy", "--node", "3"]);
    std::fs::remove_file(&f).unwrap();
    {
        use std::io::Write;
        prog.stdin.take().unwrap().write_all(b"unlinked\n").unwrap();
    }
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let out = prog.wait_with_output().unwrap();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = |k: &str| -> String {
        text.lines().find(|l| l.starts_with(k)).unwrap_or_else(|| panic!("no {k} line in:\n{text}")).to_string()
    };
    let (e2big, einval) = (libc::E2BIG.to_string(), libc::EINVAL.to_string());

    assert_eq!(line("FORK"), "FORK child=0 parent_bad=0", "a forked child's calls do not mix with its parent's");
    let l = line("HANDLE");
    for (k, v) in [("fsid", "1"), ("same", "1"), ("fs_same", "1"), ("hash_same", "1"), ("valid", "1")] {
        assert_eq!(field(&l, k), v, "{k}: {l}");
    }
    assert_eq!(
        (field(&l, "ino"), field(&l, "global_valid"), field(&l, "junk_valid")),
        (ino.to_string(), "1".into(), "0".into())
    );
    let l = line("STAT");
    assert_eq!(
        (field(&l, "ino"), field(&l, "size"), field(&l, "mode")),
        (ino.to_string(), "20000".into(), "644".into()),
        "{l}"
    );
    let l = line("DMATTR");
    assert_eq!(
        (field(&l, "value"), field(&l, "short"), field(&l, "need")),
        ("obj-1".into(), e2big.clone(), "5".into()),
        "{l}"
    );
    assert_eq!(field(&line("ATTRS"), "n"), "2");
    assert!(text.contains("ATTR name=hsm value=obj-1") && text.contains("ATTR name=tier value=s3"), "{text}");
    let l = line("REGIONS ");
    assert_eq!(l, "REGIONS n=2 exact=1 r0=0/4096/1 r1=8192/0/2");
    let l = line("REGIONS_SHORT");
    assert_eq!((field(&l, "errno"), field(&l, "n")), (e2big.clone(), "2".into()), "{l}");
    let l = line("HOLE");
    assert_eq!(field(&l, "probe"), "4096/4096", "{l}");
    assert!(l.contains(" 2:4096+4096"), "the punched block is a hole (DM_EXTENT_HOLE): {l}");
    let l = line("AFTER_RESPOND");
    assert_eq!((field(&l, "query_errno"), field(&l, "notoken_request_errno")), (einval.clone(), einval.clone()), "{l}");
    let l = line("BULK");
    assert!(field(&l, "files").parse::<u32>().unwrap() >= 3, "root, d and f at least: {l}");
    assert_eq!(
        (field(&l, "with_attr"), field(&l, "short_errno"), field(&l, "need_ok")),
        ("1".into(), e2big.clone(), "1".into()),
        "{l}"
    );
    let l = line("CONFIG");
    let (max_attr, total, regions) = tpfs::format::DmInfo::limits(4096);
    let events = ((1u64 << dmapi::types::EventType::ALL.len()) - 1) & !(1 << dmapi::types::EventType::Debut as u32);
    for (k, v) in [
        ("max_attr", max_attr.to_string()),
        ("total_attr", total.to_string()),
        ("regions", regions.to_string()),
        ("handle", dmapi::types::DM_MAX_HANDLE_SIZE.to_string()),
        ("msg", dmapi::types::DM_MAX_MESSAGE_DATA.to_string()),
        ("obj_ref", "1".into()),
        ("punch", "1".into()),
        ("events", format!("{events:x}")),
        ("n", dmapi::types::EventType::ALL.len().to_string()),
        ("bad", einval.clone()),
    ] {
        assert_eq!(field(&l, k), v, "{k}: {l}");
    }
    let l = line("SESSIONS");
    assert_eq!(
        (field(&l, "found"), field(&l, "disp"), field(&l, "short_errno")),
        ("1".into(), "1".into(), e2big),
        "{l}"
    );
    let l = line("HELD");
    assert_eq!(l, format!("HELD query=1 again={} notoken={}", libc::EBUSY, libc::EINVAL));
    let l = line("UNLINKED");
    assert_eq!(
        l,
        format!("UNLINKED read=4 query_errno={} rele_again={}", libc::EBADF, libc::EBADF),
        "readable while referenced; once released, gone"
    );
    assert_eq!(line("DESTROY"), format!("DESTROY ino={ino}"), "the reference's release destroyed the file");
    assert!(text.contains("DONE"));
    drop(c);
}

/// `tests/c/dm_objects.c`: mount and direct-I/O information, paths from
/// handles, objects opened by handle (one this node's kernel never saw,
/// made on another node), inheritable DM attributes, and objects made again
/// with the handles they had.
#[test]
fn c_program_objects_by_handle_paths_mountinfo_and_inheritance() {
    if !can_run() {
        return;
    }
    let (_prefix, exe) = build("dm_objects.c", "dm_objects");
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4]);
    let (ma, mb) = (&mnts[0], &mnts[1]);
    let deep = mb.path().join("far/deep");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("file"), b"made on node 4").unwrap();
    let (dino, fino) = (std::fs::metadata(&deep).unwrap().ino(), std::fs::metadata(deep.join("file")).unwrap().ino());
    let out = Command::new(&exe)
        .arg(ma.path())
        .arg(dino.to_string())
        .arg(fino.to_string())
        .env("TIDEPOOL_DM_SOCKET", c.socket(3))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = |k: &str| -> String {
        text.lines().find(|l| l.starts_with(k)).unwrap_or_else(|| panic!("no {k} line in:\n{text}")).to_string()
    };
    let e = |n: i32| n.to_string();
    let mount = ma.path().display().to_string();

    let l = line("MOUNT");
    assert_eq!(field(&l, "path"), mount, "{l}");
    assert_eq!(field(&l, "media"), "node-3", "{l}");
    for (k, v) in [("fs_same", "1"), ("root_same", "1"), ("need_ok", "1")] {
        assert_eq!(field(&l, k), v, "{k}: {l}");
    }
    assert_eq!((field(&l, "short"), field(&l, "bad")), (e(libc::E2BIG), e(libc::EINVAL)), "{l}");
    assert_eq!(line("DIO"), format!("DIO mem=512 min=4096 max={} only=0 nullout={}", i32::MAX & !4095, libc::EFAULT));
    let l = line("PATH");
    assert_eq!(field(&l, "file"), format!("{mount}/d/f"), "{l}");
    assert_eq!(field(&l, "dir"), format!("{mount}/d"), "{l}");
    assert_eq!(field(&l, "len"), (mount.len() + 5).to_string(), "the length counts the NUL: {l}");
    assert_eq!((field(&l, "short"), field(&l, "need")), (e(libc::E2BIG), (mount.len() + 5).to_string()), "{l}");
    assert_eq!(field(&l, "notin"), e(libc::EINVAL), "{l}");
    assert_eq!(line("OPEN known"), "OPEN known=object bytes");
    let l = line("OPEN unseen");
    assert_eq!(
        l,
        format!("OPEN unseen=made on node 4 dir_ino={dino} dir=1 path={mount}/far/deep/file fs_handle={}", libc::EBADF)
    );
    assert_eq!(line("INHERIT_SHORT"), format!("INHERIT_SHORT errno={} n=1", libc::E2BIG));
    assert_eq!(
        line("INHERIT "),
        format!("INHERIT n=1 name=hsm type={:o} badmode={} onfile={}", libc::S_IFREG, libc::EINVAL, libc::EBADF)
    );
    assert_eq!(
        line("INHERITED"),
        format!(
            "INHERITED file=tier-a dir={} clear_again={} clear_none={} after_clear={}",
            libc::ENOENT,
            libc::ENOENT,
            libc::ENOENT,
            libc::ENOENT
        ),
        "a new file in d got d's attribute; a directory (not named) did not; none after the clear"
    );
    assert_eq!(line("REBORN file"), format!("REBORN file same=1 mode=100600 uid=0 again={} link=-", libc::EEXIST));
    assert_eq!(line("REBORN dir"), format!("REBORN dir same=1 mode=40700 uid=0 again={} link=-", libc::EEXIST));
    assert_eq!(
        line("REBORN link"),
        format!("REBORN link same=1 mode=120777 uid=0 again={} link=over/there", libc::EEXIST)
    );
    assert_eq!(
        line("BYHANDLE_ERR"),
        format!("BYHANDLE_ERR fs={} name={} exists={}", libc::EBADF, libc::EINVAL, libc::EEXIST)
    );
    // What node 4 sees of the object node 3's DM application made.
    assert_eq!(std::fs::read_link(mb.path().join("d/reborn-link")).unwrap(), Path::new("over/there"));
    assert!(text.contains("DONE"));
    drop(c);
}

/// `tests/c/dm_hsm.c`, a small HSM in C: it migrates a file on node A (3)
/// to a directory and punches its data out; a read of the file on node B
/// (4) raises a read event that the C program answers by writing the data
/// back; the reader gets every byte, and a second read raises nothing.
/// Before that, B13 from C: on node B the session's queries work and its
/// changes are refused (EINVAL).
#[test]
fn c_hsm_migrates_and_recalls_on_a_read_from_another_node() {
    if !can_run() {
        return;
    }
    let (_prefix, exe) = build("dm_hsm.c", "dm_hsm");
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3, 4]);
    let (ma, mb) = (&mnts[0], &mnts[1]);
    let tier = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(ma.path().join("cold"), &body).unwrap();
    let ino = std::fs::metadata(ma.path().join("cold")).unwrap().ino();

    let mut prog = Command::new(&exe)
        .arg(ma.path())
        .arg(ma.path().join("cold"))
        .arg(tier.path())
        .arg(c.socket(4))
        .env("TIDEPOOL_DM_SOCKET", c.socket(3))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::of(&mut prog);
    let mut expect = |prefix: &str| lines.expect(prefix);
    let einval = libc::EINVAL.to_string();
    let l = expect("AWAY");
    for (k, v) in [("query", "0"), ("info", "c-hsm"), ("sessions", "0"), ("found", "1"), ("disp", "0")] {
        assert_eq!(field(&l, k), v, "B13: a query from node 4 works: {k}: {l}");
    }
    for k in ["respond", "getev", "userev", "setdisp", "destroy"] {
        assert_eq!(field(&l, k), einval, "B13: a change from node 4 is refused: {k}: {l}");
    }
    let l = expect("MIGRATED");
    assert_eq!(l, format!("MIGRATED ino={ino} size=20000 exact=1 resident=0 holes=1"));
    let copy = tier.path().join(ino.to_string());
    assert_eq!(std::fs::read(&copy).unwrap(), body, "the tier holds the data");
    expect("READY");
    c.driver(4, &["wait-route", "--event", "read", "--node", "3"]);
    let meta = std::fs::metadata(mb.path().join("cold")).unwrap();
    assert_eq!((meta.len(), meta.blocks()), (20_000, 0), "node B sees the size and no blocks: migrated");

    // Node B reads the migrated file: recalled before the read goes on.
    assert_eq!(std::fs::read(mb.path().join("cold")).unwrap(), body, "the reader on node B gets every byte");
    let l = expect("RECALLED");
    assert_eq!(l, format!("RECALLED node=4 offset=0 bytes=20000 from={}", copy.display()));
    assert_eq!(std::fs::read(mb.path().join("cold")).unwrap(), body, "read again");
    assert!(std::fs::metadata(ma.path().join("cold")).unwrap().blocks() > 0, "resident again");
    {
        use std::io::Write;
        prog.stdin.take().unwrap().write_all(b"read again\n").unwrap();
    }
    assert_eq!(expect("AFTER"), format!("AFTER none={} attr={}", libc::EAGAIN, libc::ENOENT));
    expect("DONE");
    assert!(prog.wait().unwrap().success());
    drop(c);
}

/// `tests/c/dm_errors.c`: every function that takes a session, a handle or
/// a token, called from C with a destroyed session (EINVAL), a malformed
/// handle (EBADF), a removed file's handle (EBADF) and a token that is no
/// event of the session (EINVAL); every call that needs a right, with a
/// token that holds none (EACCES), and a change under a shared right.
#[test]
fn c_program_meets_xdsm_errors_in_every_function() {
    if !can_run() {
        return;
    }
    let (_prefix, exe) = build("dm_errors.c", "dm_errors");
    let (mnts, _vol, c) = standard_with_mounts(32 << 20, &[3]);
    let dir = mnts[0].path().join("e");
    std::fs::create_dir(&dir).unwrap();
    let out = Command::new(&exe).arg(&dir).env("TIDEPOOL_DM_SOCKET", c.socket(3)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("DONE"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let cases: Vec<&str> = text.lines().filter(|l| l.starts_with("CASE ")).collect();
    let wrong: Vec<&&str> = cases.iter().filter(|l| field(l, "got") != field(l, "want")).collect();
    assert!(wrong.is_empty(), "{} of {} cases with the wrong errno:\n{wrong:#?}", wrong.len(), cases.len());
    for pass in ["badsid", "junkhandle", "stalehandle", "badtoken", "noright", "shared"] {
        assert!(cases.iter().any(|l| l.starts_with(&format!("CASE {pass} "))), "no {pass} case");
    }
    assert!(cases.len() > 150, "every function in each pass: {}", cases.len());
    drop(c);
}
