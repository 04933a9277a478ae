//! `tidepool hsm`: run the HSM on this node, or ask the running one (on any
//! node) to migrate, premigrate, release or recall files given by paths on
//! this node's mount; `ls` shows each file's state as `lfs hsm_state` does.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use dmapi::types::{FsId, DM_NO_SESSION};
use libdmapi::Dm;
use tidepool_hsm::config::Config;
use tidepool_hsm::record::State;
use tidepool_hsm::request::{self, Op};

#[derive(Args)]
pub struct HsmArgs {
    /// The node daemon's DM socket (default: $TIDEPOOL_DM_SOCKET, else the
    /// node configuration's).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: HsmCmd,
}

#[derive(Subcommand)]
enum HsmCmd {
    /// Run the HSM: its session on this node, recalls and requests.
    Run {
        /// The tier: file:///dir or s3://bucket/prefix (overrides the
        /// configuration's).
        #[arg(long)]
        tier: Option<String>,
        /// hsm.toml: tier, file systems, workers, watermark policy.
        #[arg(long)]
        config: Option<PathBuf>,
        /// File systems to manage (overrides the configuration's).
        #[arg(long = "fs")]
        fs: Vec<u64>,
        /// Recall and request workers (overrides the configuration's).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Copy to the tier and free the space.
    Migrate { paths: Vec<PathBuf> },
    /// Copy to the tier, keep the data.
    Premigrate { paths: Vec<PathBuf> },
    /// Free the space of premigrated files.
    Release { paths: Vec<PathBuf> },
    /// Bring migrated files' data back.
    Recall { paths: Vec<PathBuf> },
    /// Stop the queued or running migration or recall of files.
    Cancel { paths: Vec<PathBuf> },
    /// Each file's HSM state.
    Ls { paths: Vec<PathBuf> },
    /// The HSM's work (running and waiting), and the files of a file system
    /// by state with the tier's usage.
    Status {
        #[arg(long = "fs", default_value_t = 1)]
        fs: u64,
    },
}

fn socket(a: &HsmArgs) -> anyhow::Result<PathBuf> {
    match &a.socket {
        Some(s) => Ok(s.clone()),
        None => Ok(libdmapi::default_socket()?),
    }
}

pub fn run(a: HsmArgs) -> anyhow::Result<()> {
    let sock = socket(&a)?;
    let op = match a.cmd {
        HsmCmd::Run { tier, config, fs, workers } => {
            let mut cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            if let Some(t) = tier {
                cfg.tier.url = t;
            }
            if !fs.is_empty() {
                cfg.fs = fs;
            }
            if let Some(w) = workers {
                cfg.workers = w;
            }
            return Ok(tidepool_hsm::daemon::run(&sock, &cfg)?);
        }
        HsmCmd::Ls { paths } => return ls(&sock, &paths),
        HsmCmd::Status { fs } => return status(&sock, FsId(fs)),
        HsmCmd::Cancel { paths } => (Op::Cancel, paths),
        HsmCmd::Migrate { paths } => (Op::Migrate, paths),
        HsmCmd::Premigrate { paths } => (Op::Premigrate, paths),
        HsmCmd::Release { paths } => (Op::Release, paths),
        HsmCmd::Recall { paths } => (Op::Recall, paths),
    };
    send_all(&sock, op.0, &op.1)
}

/// Asks the HSM for `op` on each path, a few files at once (the HSM's
/// workers do them in parallel), with a progress bar on a terminal.
fn send_all(sock: &std::path::Path, op: Op, paths: &[PathBuf]) -> anyhow::Result<()> {
    let dm = Dm::connect(sock).with_context(|| format!("node daemon at {}", sock.display()))?;
    let hsm = request::find_session(&dm)?;
    let bar = indicatif::ProgressBar::new(paths.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} files {elapsed} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(op.name());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    // Each sender's connection made here: one that cannot connect fails
    // the command instead of leaving files silently undone.
    let conns = (0..paths.len().clamp(1, 4))
        .map(|_| Dm::connect(sock).with_context(|| format!("node daemon at {}", sock.display())))
        .collect::<anyhow::Result<Vec<Dm>>>()?;
    std::thread::scope(|s| {
        for dm in conns {
            let (next, failed, bar) = (&next, &failed, &bar);
            s.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(p) = paths.get(i) else { return };
                let r = dm
                    .dm_path_to_handle(p)
                    .map_err(tidepool_hsm::HsmError::from)
                    .and_then(|h| request::send(&dm, hsm, op, &h));
                match r {
                    Ok(()) => bar.println(format!("{}: {}", p.display(), op.name())),
                    Err(e) => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        bar.suspend(|| eprintln!("{}: {} failed: {e}", p.display(), op.name()));
                    }
                }
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    let failed = failed.into_inner();
    if failed > 0 {
        anyhow::bail!("{failed} of {} files not done", paths.len());
    }
    Ok(())
}

fn ls(sock: &std::path::Path, paths: &[PathBuf]) -> anyhow::Result<()> {
    let dm = Dm::connect(sock).with_context(|| format!("node daemon at {}", sock.display()))?;
    let sid = dm.dm_create_session(DM_NO_SESSION, b"tidepool-hsm-ls")?;
    let r = (|| -> anyhow::Result<()> {
        for p in paths {
            let h = dm.dm_path_to_handle(p).with_context(|| p.display().to_string())?;
            let state = match request::record_of(&dm, sid, &h)? {
                None => "resident".to_string(),
                Some(r) => {
                    let lfs = match r.state {
                        State::Premigrated => "exists archived",
                        State::Migrated => "released exists archived",
                        State::Stale => "exists dirty archived",
                    };
                    format!("{} ({lfs}) key={} size={}", r.state.name(), r.key, r.size)
                }
            };
            println!("{}: {state}", p.display());
        }
        Ok(())
    })();
    dm.dm_destroy_session(sid)?;
    r
}

/// `status`: what the HSM says it is doing (its line on the file system's
/// root), then the file system's files by state and the tier's usage, from
/// a scan with a session of this command's own.
fn status(sock: &std::path::Path, fs: FsId) -> anyhow::Result<()> {
    use dmapi::types::{DmHandle, DM_NO_TOKEN};
    let dm = Dm::connect(sock).with_context(|| format!("node daemon at {}", sock.display()))?;
    let sid = dm.dm_create_session(DM_NO_SESSION, b"tidepool-hsm-status")?;
    let r = (|| -> anyhow::Result<()> {
        let fsh = DmHandle::fs(fs);
        let hsm = request::find_session(&dm);
        match (&hsm, dm.dm_get_mountinfo(sid, &fsh, DM_NO_TOKEN)) {
            (Err(e), _) => println!("hsm: not running ({e})"),
            (Ok(_), Ok(dmapi::event::EventBody::Mount { root_handle: Some(root), .. })) => {
                match dm.dm_get_dmattr(sid, &root, DM_NO_TOKEN, tidepool_hsm::daemon::STATUS_ATTR) {
                    Ok(line) => println!("hsm: {}", String::from_utf8_lossy(&line)),
                    Err(e) => println!("hsm: running, no status yet ({e})"),
                }
            }
            (Ok(s), _) => println!("hsm: running (session {s}); this node does not mount fs {}", fs.0),
        }
        let (mut n, mut bytes) = ([0u64; 4], [0u64; 4]);
        let mut tier = 0u64;
        tidepool_hsm::policy::for_each_file(&dm, sid, &fsh, |st, rec| {
            let i = match rec.as_ref().map(|r| r.state) {
                None => 0,
                Some(State::Premigrated) => 1,
                Some(State::Migrated) => 2,
                Some(State::Stale) => 3,
            };
            n[i] += 1;
            bytes[i] += st.size;
            tier += rec.map_or(0, |r| r.size);
        })?;
        for (i, name) in ["resident", "premigrated", "migrated", "stale"].iter().enumerate() {
            println!("{name:>12}: {:>8} files {:>14} bytes", n[i], bytes[i]);
        }
        println!("{:>12}: {:>8} objects {:>12} bytes", "tier", n[1] + n[2] + n[3], tier);
        Ok(())
    })();
    dm.dm_destroy_session(sid)?;
    r
}
