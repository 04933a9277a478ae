//! Run a shell script as root in a throw-away QEMU guest through
//! `scripts/vm/run-guest.sh`.
//!
//! The guest runs Debian's kernel on the host's root file system (read-only,
//! tmpfs overlay), so every host tool and every built binary is usable in it
//! at the same path. Its 10.0.2.2 is the host's 127.0.0.1. The script's
//! writable share `$TP_OUT` is [`GuestRun::out_dir`] on the host.
//!
//! Only one guest runs at a time per test process: the machines this runs on
//! have two cores, and two emulated guests would only slow each other down.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::Skip;

/// Exit code of run-guest.sh meaning "qemu/kernel cannot run here".
pub const EXIT_SKIP: i32 = 77;
/// Exit code of run-guest.sh on its own timeout.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code of run-guest.sh when the guest never reported a result.
pub const EXIT_HARNESS: i32 = 125;

/// File the guest creates in `$TP_OUT` once it has booted (guest-stage2.sh).
const BOOTED_MARK: &str = ".tp-booted";

static ONE_GUEST: Mutex<()> = Mutex::new(());

/// What happened when a guest was asked to run.
#[derive(Debug)]
pub enum Outcome {
    /// The guest booted and the script ran (successfully or not).
    Ran(GuestRun),
    /// The guest could not start here; the reason says why.
    Skip(String),
}

impl Spawned {
    /// `Running` as `Ok`, anything else as `Err(Skip)`-or-failure: a script
    /// that ended before the host could act is an error, not a skip.
    pub fn into_result(self) -> Result<std::result::Result<RunningGuest, Skip>> {
        match self {
            Spawned::Running(g) => Ok(Ok(g)),
            Spawned::Skip(s) => Ok(Err(Skip::new(s))),
            Spawned::Finished(run) => {
                bail!("guest script ended before the host side started (exit {})\n{}", run.exit_code, run.transcript())
            }
        }
    }
}

impl Outcome {
    /// `Ran` as `Ok`, `Skip` as `Err(Skip)`, for [`crate::or_skip!`].
    pub fn into_result(self) -> std::result::Result<GuestRun, Skip> {
        match self {
            Outcome::Ran(r) => Ok(r),
            Outcome::Skip(s) => Err(Skip::new(s)),
        }
    }
}

/// The result of one guest run.
#[derive(Debug)]
pub struct GuestRun {
    /// The script's exit code (or the harness's, see the `EXIT_*` constants).
    pub exit_code: i32,
    /// Everything the script wrote to stdout and stderr.
    pub output: String,
    /// The harness's own messages (timeouts, console tail on failure).
    pub harness_stderr: String,
    /// Wall time of the whole run, boot included.
    pub elapsed: Duration,
    out_dir: TempDir,
}

impl GuestRun {
    /// Host directory the script saw as `$TP_OUT` (writable share).
    pub fn out_dir(&self) -> &Path {
        self.out_dir.path()
    }

    /// Lines the guest printed as `PASS: ...` (see `check` in guest-lib.sh).
    pub fn passes(&self) -> Vec<&str> {
        self.prefixed("PASS: ")
    }

    /// Lines the guest printed as `FAIL: ...`.
    pub fn failures(&self) -> Vec<&str> {
        self.prefixed("FAIL: ")
    }

    fn prefixed(&self, prefix: &str) -> Vec<&str> {
        self.output.lines().filter_map(|l| l.strip_prefix(prefix)).collect()
    }

    /// Panic with the full transcript unless the script exited 0 with no
    /// `FAIL:` line and at least `min_passes` `PASS:` lines (so a script that
    /// silently skipped its checks cannot pass).
    pub fn assert_checks(&self, min_passes: usize) {
        let fails = self.failures();
        let passes = self.passes();
        assert!(
            self.exit_code == 0 && fails.is_empty() && passes.len() >= min_passes,
            "guest run failed: exit {} ({}), {} PASS (want >= {}), FAIL: {:?}\n{}",
            self.exit_code,
            describe_exit(self.exit_code),
            passes.len(),
            min_passes,
            fails,
            self.transcript()
        );
    }

    /// Panic with the full transcript unless the script exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.exit_code == 0,
            "guest script exited {} ({})\n{}",
            self.exit_code,
            describe_exit(self.exit_code),
            self.transcript()
        );
    }

    /// Output and harness messages, for failure reports.
    pub fn transcript(&self) -> String {
        format!(
            "----- guest output ({:.1}s) -----\n{}\n----- harness -----\n{}",
            self.elapsed.as_secs_f64(),
            self.output,
            self.harness_stderr
        )
    }
}

fn describe_exit(code: i32) -> &'static str {
    match code {
        0 => "ok",
        EXIT_TIMEOUT => "guest timed out",
        EXIT_HARNESS => "guest failed before the script reported a result",
        _ => "script failed",
    }
}

/// A guest to boot: forwards, modules, environment, limits.
#[derive(Debug, Clone)]
pub struct Guest {
    forwards: Vec<(u16, u16)>,
    modules: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Duration,
    mem_mb: u32,
    smp: u32,
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}

impl Guest {
    pub fn new() -> Self {
        Guest {
            forwards: Vec::new(),
            modules: Vec::new(),
            env: vec![("TP_REPO".into(), crate::workspace_root().display().to_string())],
            timeout: Duration::from_secs(180),
            mem_mb: 2048,
            smp: 2,
        }
    }

    /// Forward host `127.0.0.1:host_port` to the guest's `guest_port`.
    pub fn forward(mut self, host_port: u16, guest_port: u16) -> Self {
        self.forwards.push((host_port, guest_port));
        self
    }

    /// modprobe `name` in the guest before the script starts.
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_owned());
        self
    }

    /// Export `key=value` to the script (`TP_REPO` is always set).
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Bound on the whole run, boot included.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn mem_mb(mut self, mb: u32) -> Self {
        self.mem_mb = mb;
        self
    }

    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n;
        self
    }

    /// Boot, run `script`, power off; wait for all of it.
    pub fn run(&self, script: &str) -> Result<Outcome> {
        match self.spawn(script)? {
            Spawned::Running(g) => g.wait().map(Outcome::Ran),
            Spawned::Finished(run) => Ok(Outcome::Ran(run)),
            Spawned::Skip(s) => Ok(Outcome::Skip(s)),
        }
    }

    /// Boot and start `script` without waiting, so the test can act on the
    /// host while the guest runs (use [`RunningGuest::wait_for_file`] to
    /// synchronise through `$TP_OUT`).
    pub fn spawn(&self, script: &str) -> Result<Spawned> {
        let harness = crate::workspace_root().join("scripts/vm/run-guest.sh");
        if !harness.exists() {
            bail!("{} is missing", harness.display());
        }
        // Serialise guests; a panicking test must not wedge the others.
        let lock = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
        let out_dir =
            tempfile::Builder::new().prefix("tidepool-guest-out.").tempdir().context("temp dir for guest output")?;
        let script_file = out_dir.path().join(".script.sh");
        std::fs::write(&script_file, script).context("writing guest script")?;

        let mut cmd = Command::new(&harness);
        cmd.arg("--timeout")
            .arg(self.timeout.as_secs().max(1).to_string())
            .arg("--out")
            .arg(out_dir.path())
            .arg("--mem")
            .arg(self.mem_mb.to_string())
            .arg("--smp")
            .arg(self.smp.to_string());
        for (h, g) in &self.forwards {
            cmd.arg("--fwd").arg(format!("{h}:{g}"));
        }
        if !self.modules.is_empty() {
            cmd.arg("--modules").arg(self.modules.join(","));
        }
        for (k, v) in &self.env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg("--script-file").arg(&script_file);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        tracing::debug!(?cmd, "starting guest");
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting run-guest.sh")?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let mut g = RunningGuest {
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
            out_dir: Some(out_dir),
            started,
            timeout: self.timeout,
            _lock: lock,
        };
        // A skip is decided before the guest boots (missing tools, qemu
        // exiting at once), so wait for the guest's "booted" mark: callers
        // that spawn want to know before they start host-side work.
        let booted = g.out_dir().join(BOOTED_MARK);
        while !booted.exists() {
            if g.child_mut().try_wait()?.is_some() {
                let run = g.wait()?;
                if run.exit_code == EXIT_SKIP {
                    return Ok(Spawned::Skip(skip_reason(&run.harness_stderr)));
                }
                return Ok(Spawned::Finished(run));
            }
            if g.started.elapsed() > g.timeout + Duration::from_secs(30) {
                bail!("harness neither booted a guest nor exited within {:?}", g.timeout);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Spawned::Running(g))
    }
}

/// Result of [`Guest::spawn`].
#[derive(Debug)]
pub enum Spawned {
    /// Booting or running; finish with [`RunningGuest::wait`].
    Running(RunningGuest),
    /// The harness ended before the guest came up (a boot failure).
    Finished(GuestRun),
    /// The guest cannot run here.
    Skip(String),
}

/// A guest whose script is still running.
#[derive(Debug)]
pub struct RunningGuest {
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    out_dir: Option<TempDir>,
    started: Instant,
    timeout: Duration,
    _lock: MutexGuard<'static, ()>,
}

impl RunningGuest {
    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until wait")
    }

    /// Host directory the script sees as `$TP_OUT`.
    pub fn out_dir(&self) -> &Path {
        self.out_dir.as_ref().expect("out dir").path()
    }

    /// Wait until the guest creates `$TP_OUT/<name>`; fails if the guest
    /// exits first or `limit` passes.
    pub fn wait_for_file(&mut self, name: &str, limit: Duration) -> Result<PathBuf> {
        let path = self.out_dir().join(name);
        let until = Instant::now() + limit;
        loop {
            if path.exists() {
                return Ok(path);
            }
            if let Some(status) = self.child_mut().try_wait()? {
                bail!("guest ended ({status}) before creating {name}");
            }
            if Instant::now() > until {
                bail!("guest did not create {name} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Create `$TP_OUT/<name>` with `contents` (a signal to the guest).
    pub fn put_file(&self, name: &str, contents: &[u8]) -> Result<()> {
        let tmp = self.out_dir().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents)?;
        // Rename so the guest never sees a half-written file.
        std::fs::rename(&tmp, self.out_dir().join(name))?;
        Ok(())
    }

    /// Wait for the harness to finish (it bounds the guest by its own
    /// timeout; this adds a margin in case the harness itself hangs).
    pub fn wait(mut self) -> Result<GuestRun> {
        let limit = self.timeout + Duration::from_secs(30);
        let mut child = self.child.take().expect("child present");
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if self.started.elapsed() > limit {
                // Only our own harness, by PID; its trap kills its qemu.
                // SAFETY: kill(2) on a PID we spawned and have not reaped.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let output = join(self.stdout.take());
        let harness_stderr = join(self.stderr.take());
        let exit_code = status.code().unwrap_or(-1);
        Ok(GuestRun {
            exit_code,
            output,
            harness_stderr,
            elapsed: self.started.elapsed(),
            out_dir: self.out_dir.take().expect("out dir"),
        })
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM, not SIGKILL: the harness's trap then kills its qemu.
            // SAFETY: kill(2) on a PID we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<String> {
    let bytes = crate::host::drain_bytes(r);
    std::thread::spawn(move || String::from_utf8_lossy(&bytes.join().unwrap_or_default()).into_owned())
}

fn join(h: Option<JoinHandle<String>>) -> String {
    h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
}

fn skip_reason(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.split_once("SKIP: ").map(|(_, r)| r.to_owned()))
        .unwrap_or_else(|| format!("run-guest.sh could not start a guest: {}", stderr.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_reason_picks_the_harness_message() {
        let e = "noise\nrun-guest: SKIP: qemu-system-x86_64 not installed\n";
        assert_eq!(skip_reason(e), "qemu-system-x86_64 not installed");
        assert!(skip_reason("odd").contains("odd"));
    }
}
