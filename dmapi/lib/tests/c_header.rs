//! `include/dmapi.h` against the Rust side: a C program compiled against the
//! header prints every structure's size and key offsets and the values of the
//! XDSM constants; each must be what the C ABI (and SGI's layout) has.

use std::path::Path;
use std::process::Command;

use dmapi::types::{dm_at, EventType};
use libdmapi::capi::layout::LAYOUT;
use test_support::skip::{have_tool, skip};

fn include_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// Compiles `src` against the header and runs it: its standard output.
fn run_c(src: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("t.c");
    std::fs::write(&c, src).unwrap();
    let exe = dir.path().join("t");
    let out = Command::new("cc")
        .args(["-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&c)
        .arg("-I")
        .arg(include_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn structures_have_the_sizes_and_offsets_of_the_rust_side() {
    if !have_tool("cc") {
        return skip("no C compiler (cc)");
    }
    let mut src = String::from("#include <stdio.h>\n#include <stddef.h>\n#include <dmapi.h>\nint main(void) {\n");
    let mut want = String::new();
    for (name, size, fields) in LAYOUT {
        src += &format!("printf(\"{name} %zu\\n\", sizeof({name}));\n");
        want += &format!("{name} {size}\n");
        for (f, off) in *fields {
            src += &format!("printf(\"{name}.{f} %zu\\n\", offsetof({name}, {f}));\n");
            want += &format!("{name}.{f} {off}\n");
        }
    }
    src += "return 0; }\n";
    assert_eq!(run_c(&src), want);
}

#[test]
fn constants_have_the_xdsm_values() {
    if !have_tool("cc") {
        return skip("no C compiler (cc)");
    }
    let mut names: Vec<(String, i64)> = vec![
        ("DM_AT_MODE".into(), dm_at::MODE as i64),
        ("DM_AT_UID".into(), dm_at::UID as i64),
        ("DM_AT_GID".into(), dm_at::GID as i64),
        ("DM_AT_ATIME".into(), dm_at::ATIME as i64),
        ("DM_AT_MTIME".into(), dm_at::MTIME as i64),
        ("DM_AT_CTIME".into(), dm_at::CTIME as i64),
        ("DM_AT_SIZE".into(), dm_at::SIZE as i64),
        ("DM_AT_DTIME".into(), dm_at::DTIME as i64),
        ("DM_AT_HANDLE".into(), dm_at::HANDLE as i64),
        ("DM_AT_EMASK".into(), dm_at::EMASK as i64),
        ("DM_AT_PMANR".into(), dm_at::PMANR as i64),
        ("DM_AT_PATTR".into(), dm_at::PATTR as i64),
        ("DM_AT_STAT".into(), dm_at::STAT as i64),
        ("DM_AT_CFLAG".into(), dm_at::CFLAG as i64),
        ("DM_REGION_READ".into(), dmapi::types::dm_region::READ as i64),
        ("DM_REGION_WRITE".into(), dmapi::types::dm_region::WRITE as i64),
        ("DM_REGION_TRUNCATE".into(), dmapi::types::dm_region::TRUNCATE as i64),
        ("DM_EV_WAIT".into(), dmapi::types::DM_EV_WAIT as i64),
        ("DM_RR_WAIT".into(), dmapi::types::DM_RR_WAIT as i64),
        ("DM_NO_TOKEN".into(), dmapi::types::DM_NO_TOKEN.0 as i64),
        ("DM_SESSION_INFO_LEN".into(), dmapi::types::DM_SESSION_INFO_LEN as i64),
        ("DM_ATTR_NAME_SIZE".into(), dmapi::types::DM_ATTR_NAME_SIZE as i64),
        ("DM_EVENT_MAX".into(), EventType::ALL.len() as i64),
        ("DM_RESP_CONTINUE".into(), dmapi::types::DM_RESP_CONTINUE as i64),
        ("DM_RESP_ABORT".into(), dmapi::types::DM_RESP_ABORT as i64),
        ("DM_RESP_DONTCARE".into(), dmapi::types::DM_RESP_DONTCARE as i64),
    ];
    for t in EventType::ALL {
        names.push((format!("DM_EVENT_{}", format!("{t:?}").to_uppercase()), t as i64));
    }
    let mut src = String::from("#include <stdio.h>\n#include <dmapi.h>\nint main(void) {\n");
    let mut want = String::new();
    for (n, v) in &names {
        src += &format!("printf(\"{n} %lld\\n\", (long long)({n}));\n");
        want += &format!("{n} {v}\n");
    }
    // The event-set macros, on a set of their own.
    src += "dm_eventset_t s; DMEV_ZERO(s); DMEV_SET(DM_EVENT_READ, s); DMEV_SET(DM_EVENT_USER, s);\n\
            DMEV_CLR(DM_EVENT_USER, s); printf(\"set %llx %d %d\\n\", (unsigned long long)s,\n\
            DMEV_ISSET(DM_EVENT_READ, s), DMEV_ISSET(DM_EVENT_WRITE, s));\n";
    want += &format!("set {:x} 1 0\n", 1u64 << EventType::Read as u32);
    src += "return 0; }\n";
    assert_eq!(run_c(&src), want);
}

#[test]
fn xfs_programs_find_the_header_where_they_include_it() {
    if !have_tool("cc") {
        return skip("no C compiler (cc)");
    }
    let out = run_c("#include <stdio.h>\n#include <xfs/dmapi.h>\nint main(void) { printf(\"%zu\\n\", sizeof(dm_stat_t)); return 0; }\n");
    assert_eq!(out.trim(), "184");
}
