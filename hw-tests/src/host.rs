//! Host-side helpers: find the project's built binaries, pick free loopback
//! ports, and run processes that are killed (by their own PID) when dropped.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Skip;

/// Locate a workspace binary: `$TIDEPOOL_BIN_DIR`, else the newest of
/// `target/{release,debug}` (also honouring `$CARGO_TARGET_DIR`). Not built is a
/// skip, not a failure: hw-tests cannot make cargo build another package's
/// binaries.
pub fn binary(name: &str) -> std::result::Result<PathBuf, Skip> {
    let mut dirs = Vec::new();
    if let Ok(d) = std::env::var("TIDEPOOL_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let mut targets = vec![crate::workspace_root().join("target")];
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        targets.insert(0, PathBuf::from(t));
    }
    for t in &targets {
        dirs.push(t.join("release"));
        dirs.push(t.join("debug"));
    }
    let found: Vec<PathBuf> = dirs.iter().map(|d| d.join(name)).filter(|p| is_executable(p)).collect();
    // An explicit TIDEPOOL_BIN_DIR wins; otherwise the newest build, so a
    // stale release binary never silently tests old code.
    let mtime = |p: &PathBuf| p.metadata().and_then(|m| m.modified()).ok();
    let pick =
        if std::env::var_os("TIDEPOOL_BIN_DIR").is_some() && found.first().is_some_and(|p| p.starts_with(&dirs[0])) {
            found.first().cloned()
        } else {
            found.iter().max_by_key(|p| mtime(p)).cloned()
        };
    if let Some(p) = pick {
        tracing::info!(path = %p.display(), "using binary");
        return Ok(p);
    }
    Err(Skip::new(format!(
        "binary `{name}` not built (looked in {}); build it with \
         `cargo build --release -p storage-node -p client` or set TIDEPOOL_BIN_DIR",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )))
}

/// Binary `name`, if it was built with the `rdma` feature (its `--version`
/// names the transports); built without it is a skip saying how to build.
pub fn binary_with_rdma(name: &str) -> Result<std::result::Result<PathBuf, Skip>> {
    let bin = match binary(name) {
        Ok(b) => b,
        Err(s) => return Ok(Err(s)),
    };
    let out = run_with_timeout(Command::new(&bin).arg("--version"), Duration::from_secs(20))?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !version.contains("rdma") {
        return Ok(Err(Skip::new(format!(
            "{} was built without the `rdma` feature ({}); build with \
             `--features client/rdma,storage-node/rdma` or point TIDEPOOL_BIN_DIR at such a build",
            bin.display(),
            version.trim()
        ))));
    }
    Ok(Ok(bin))
}

/// The newest integration-test executable `name` (cargo's
/// `target/debug/deps/<name>-<hash>`), for running a package's own tests
/// inside the guest. Not built is a skip.
pub fn test_binary(name: &str) -> std::result::Result<PathBuf, Skip> {
    let mut targets = vec![crate::workspace_root().join("target")];
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        targets.insert(0, PathBuf::from(t));
    }
    let prefix = format!("{name}-");
    let mut found: Vec<PathBuf> = Vec::new();
    for t in &targets {
        let Ok(rd) = std::fs::read_dir(t.join("debug").join("deps")) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let f = p.file_name().and_then(|f| f.to_str()).unwrap_or_default();
            // Executables only: cargo leaves .d and .rlib files beside them.
            if f.strip_prefix(&prefix).is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit())) && is_executable(&p) {
                found.push(p);
            }
        }
    }
    let mtime = |p: &PathBuf| p.metadata().and_then(|m| m.modified()).ok();
    found.into_iter().max_by_key(mtime).ok_or_else(|| {
        Skip::new(format!("test binary `{name}` not built: cargo build --workspace --tests (with the rdma features)"))
    })
}

/// An `rdma` crate binary, which only exists when built with its feature.
pub fn rdma_binary(name: &str) -> std::result::Result<PathBuf, Skip> {
    binary(name).map_err(|_| {
        Skip::new(format!(
            "`{name}` not built: cargo build -p rdma --features rdma \
             (needs libibverbs-dev, librdmacm-dev, libclang-dev; or set TIDEPOOL_BIN_DIR)"
        ))
    })
}

/// Locate a system tool on `PATH`; missing is a skip.
pub fn tool(name: &str) -> std::result::Result<PathBuf, Skip> {
    test_support::skip::find_tool(name)
        .ok_or_else(|| Skip::new(format!("`{name}` not installed (run scripts/vm/setup.sh)")))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// A currently free TCP port on 127.0.0.1. The kernel may hand it out again
/// before it is used, but loopback test runs are short enough for that to be
/// rare, and every user of the port reports a clear bind error if it happens.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// A child process that is killed by its PID (SIGTERM, then SIGKILL) and
/// reaped when dropped; its stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Start `cmd` with output appended to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<Daemon> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        tracing::info!(?cmd, "starting {name}");
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Daemon { name: name.to_owned(), child: Some(child), log: log.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `addr` accepts TCP connections; fail early, with the log,
    /// if the process exits first.
    pub fn wait_for_port(&mut self, addr: SocketAddr, limit: Duration) -> Result<()> {
        let until = Instant::now() + limit;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("{} exited ({st}) before listening on {addr}:\n{}", self.name, self.log());
                }
            }
            if Instant::now() > until {
                bail!("{} not listening on {addr} after {limit:?}:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `sig` to the process (by its PID only).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the PID of a child we spawned and have not
            // yet reaped, so the PID cannot have been reused.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Stop the process (SIGTERM, then SIGKILL after `grace`) and reap it.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else { return };
        if let Ok(None) = c.try_wait() {
            // SAFETY: as in `signal`: our own unreaped child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let until = Instant::now() + grace;
            while Instant::now() < until {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
        }
        let _ = c.wait();
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Run a command to completion with a time limit, capturing its output.
/// A command still running at the limit is killed (by PID) and reported.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (o, e) = (drain_bytes(stdout), drain_bytes(stderr));
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output { status, stdout: o.join().unwrap_or_default(), stderr: e.join().unwrap_or_default() })
}

/// Read `r` to its end on a thread (so a full pipe never blocks the child).
pub(crate) fn drain_bytes<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}
