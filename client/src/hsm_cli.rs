//! `tidepool hsm`: run the HSM on this node, or ask the running one (on any
//! node) to migrate, premigrate, release or recall files given by paths on
//! this node's mount; `ls` shows each file's state as `lfs hsm_state` does.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use dmapi::types::{FsId, DM_NO_SESSION};
use libdmapi::Dm;
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
        /// The tier: file:///dir.
        #[arg(long)]
        tier: String,
        /// File systems to manage.
        #[arg(long = "fs", default_value = "1")]
        fs: Vec<u64>,
        /// Recall and request workers.
        #[arg(long, default_value_t = 4)]
        workers: usize,
    },
    /// Copy to the tier and free the space.
    Migrate { paths: Vec<PathBuf> },
    /// Copy to the tier, keep the data.
    Premigrate { paths: Vec<PathBuf> },
    /// Free the space of premigrated files.
    Release { paths: Vec<PathBuf> },
    /// Bring migrated files' data back.
    Recall { paths: Vec<PathBuf> },
    /// Each file's HSM state.
    Ls { paths: Vec<PathBuf> },
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
        HsmCmd::Run { tier, fs, workers } => {
            let cfg =
                tidepool_hsm::daemon::Config { socket: sock, tier, fs: fs.into_iter().map(FsId).collect(), workers };
            return Ok(tidepool_hsm::daemon::run(&cfg)?);
        }
        HsmCmd::Ls { paths } => return ls(&sock, &paths),
        HsmCmd::Migrate { paths } => (Op::Migrate, paths),
        HsmCmd::Premigrate { paths } => (Op::Premigrate, paths),
        HsmCmd::Release { paths } => (Op::Release, paths),
        HsmCmd::Recall { paths } => (Op::Recall, paths),
    };
    let dm = Dm::connect(&sock).with_context(|| format!("node daemon at {}", sock.display()))?;
    let hsm = request::find_session(&dm)?;
    let mut failed = 0;
    for p in &op.1 {
        let r = dm
            .dm_path_to_handle(p)
            .map_err(tidepool_hsm::HsmError::from)
            .and_then(|h| request::send(&dm, hsm, op.0, &h));
        match r {
            Ok(()) => println!("{}: {}", p.display(), op.0.name()),
            Err(e) => {
                failed += 1;
                eprintln!("{}: {} failed: {e}", p.display(), op.0.name());
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files not done", op.1.len());
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
