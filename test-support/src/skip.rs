//! The one place that decides whether a test may skip.
//!
//! A test that cannot run here (no `/dev/fuse`, no `fio`, no qemu, no RDMA
//! device, not root, no network namespaces) calls [`skip`] with the reason
//! and returns. Locally that prints `SKIPPED: <reason>` and the test
//! passes; under `CI=true` it fails the test, unless the reason matches a
//! line of the checked-in allow-list `.config/skip-allow` (empty for CI on a
//! Debian 12 machine prepared by `scripts/setup.sh --all`). Every skip is
//! also appended to `$TIDEPOOL_SKIP_LOG` when set, so `scripts/test.sh` can
//! count the tests that skipped inside themselves and list their reasons.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The allow-list: one substring of a skip reason per line; `#` starts a
/// comment. Kept at the workspace root so every crate's tests read the same.
pub fn allow_list_path() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join(".config/skip-allow")
}

/// Whether `reason` is excused under `CI=true` by the allow-list `text`.
pub fn allowed_by(text: &str, reason: &str) -> bool {
    text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).any(|pat| !pat.is_empty() && reason.contains(pat))
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `binary::test_name` of the running test: the test binary without
/// cargo's hash, and libtest's name for the thread that runs the test.
pub fn current_test() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe.as_deref().and_then(Path::file_stem).and_then(|s| s.to_str()).unwrap_or("?");
    let binary = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => name,
        _ => stem,
    };
    let thread = std::thread::current();
    format!("{binary}::{}", thread.name().unwrap_or("?"))
}

/// What a skip of `reason` becomes: `Ok(())` (skip and say why) or
/// `Err(message)` (the test must fail with this message).
pub fn decide(reason: &str) -> Result<(), String> {
    let test = current_test();
    if under_ci() {
        let list = allow_list_path();
        let text = std::fs::read_to_string(&list).unwrap_or_default();
        if !allowed_by(&text, reason) {
            return Err(format!(
                "{test} cannot run here and CI=true forbids skipping it: {reason} \
                 (scripts/setup.sh --all installs what the suite needs; a machine that truly \
                 cannot run it lists the reason in {})",
                list.display()
            ));
        }
    }
    println!("SKIPPED: {reason}");
    eprintln!("SKIPPED: {test}: {reason}");
    if let Some(log) = std::env::var_os("TIDEPOOL_SKIP_LOG") {
        // One short line per append, so concurrent test processes do not interleave.
        let line = format!("{test}\t{}\n", reason.replace(['\n', '\t'], " "));
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(line.as_bytes());
        }
    }
    Ok(())
}

/// Skip the running test with `reason` (the caller returns next), or panic
/// under `CI=true` when the allow-list does not excuse it.
#[track_caller]
pub fn skip(reason: impl std::fmt::Display) {
    if let Err(msg) = decide(&reason.to_string()) {
        panic!("{msg}");
    }
}

/// `tool` as an executable file on `PATH`, if there is one.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn on_path(tool: &str) -> bool {
    find_tool(tool).is_some()
}

/// Whether FUSE mounts can be made here; skips (see [`skip`]) when not.
#[track_caller]
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists() && (on_path("fusermount3") || on_path("fusermount"));
    if !ok {
        skip("/dev/fuse or fusermount3 is missing (apt-get install fuse3)");
    }
    ok
}

/// Whether `tool` is on `PATH`; skips (see [`skip`]) when not.
#[track_caller]
pub fn have_tool(tool: &str) -> bool {
    let ok = on_path(tool);
    if !ok {
        skip(format!("{tool} is not installed (scripts/setup.sh --all installs it)"));
    }
    ok
}

/// Whether the test runs as root (other users' files, namespaces, mounts
/// with `allow_other`); skips (see [`skip`]) when not.
#[track_caller]
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let ok = unsafe { libc::geteuid() } == 0;
    if !ok {
        skip("the test needs root");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_matches_substrings_and_ignores_comments() {
        let list = "# machines without qemu\nqemu could not start  # KVM hosts\n\n  \n";
        assert!(allowed_by(list, "qemu could not start (exit 1): no TCG"));
        assert!(!allowed_by(list, "fio is not installed"));
        assert!(!allowed_by("", "anything"));
        assert!(!allowed_by("#only a comment", "only a comment"));
    }

    #[test]
    fn the_test_name_is_binary_and_test() {
        let name = current_test();
        assert!(name.ends_with("::skip::tests::the_test_name_is_binary_and_test"), "{name}");
        assert!(name.starts_with("test_support::"), "{name}");
    }
}
