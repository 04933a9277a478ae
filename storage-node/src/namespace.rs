//! A namespace: a backend, its block format, identifiers and reservations.

use crate::backend::Backend;
use crate::resv::ResvState;
use parking_lot::RwLock;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct Namespace {
    pub nsid: u32,
    pub backend: Box<dyn Backend>,
    /// log2 of the block size (9 or 12).
    pub block_shift: u32,
    pub nblocks: u64,
    pub uuid: [u8; 16],
    pub nguid: [u8; 16],
    pub resv: RwLock<ResvState>,
    pub stats: NsStats,
    /// Cleared while the namespace is taken out of service (for example
    /// while its backing device is replaced): I/O gets Namespace Not
    /// Ready, which hosts retry, instead of an error they would not.
    pub ready: AtomicBool,
    /// Where its reservations persist through a restart (as SPDK's
    /// `ptpl_file`), once a host asks for it (Register with CPTPL = 3).
    pub ptpl_file: Option<PathBuf>,
}

/// Counters for the SMART log, in blocks and commands.
#[derive(Default)]
pub struct NsStats {
    pub read_cmds: AtomicU64,
    pub write_cmds: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
}

impl NsStats {
    pub fn add_read(&self, bytes: u64) {
        self.read_cmds.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn add_write(&self, bytes: u64) {
        self.write_cmds.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Namespace {
    /// `uuid` identifies the namespace across restarts; the NGUID is
    /// derived from it so both stay stable.
    pub fn new(nsid: u32, backend: Box<dyn Backend>, block_size: u32, uuid: [u8; 16]) -> Result<Self, String> {
        if block_size != 512 && block_size != 4096 {
            return Err(format!("block size {block_size} is not 512 or 4096"));
        }
        if nsid == 0 || nsid == u32::MAX {
            return Err(format!("namespace id {nsid} is reserved"));
        }
        let block_shift = block_size.trailing_zeros();
        let nblocks = backend.size() >> block_shift;
        if nblocks == 0 {
            return Err("backend is smaller than one block".into());
        }
        let mut nguid = uuid;
        nguid.reverse();
        Ok(Self {
            nsid,
            backend,
            block_shift,
            nblocks,
            uuid,
            nguid,
            resv: RwLock::new(ResvState::default()),
            stats: NsStats::default(),
            ready: AtomicBool::new(true),
            ptpl_file: None,
        })
    }

    /// Keeps the reservations in `path` through restarts, loading what a
    /// previous run saved there.
    pub fn with_ptpl_file(mut self, path: PathBuf) -> Result<Self, String> {
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                let st = ResvState::from_ptpl_text(&t).map_err(|e| format!("{}: {e}", path.display()))?;
                tracing::info!(
                    nsid = self.nsid,
                    registrants = st.registrants.len(),
                    reserved = st.reservation.is_some(),
                    "reservations loaded (persist through power loss)"
                );
                *self.resv.get_mut() = st;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        self.ptpl_file = Some(path);
        Ok(self)
    }

    /// Saves `st` to the PTPL file (write, fsync, rename, fsync of the
    /// directory: a crash leaves the old state or the new one), or removes
    /// the file when persistence was turned off.
    pub fn save_ptpl(&self, st: &ResvState) -> std::io::Result<()> {
        let Some(path) = &self.ptpl_file else { return Ok(()) };
        if !st.ptpl {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(st.to_ptpl_text().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn block_size(&self) -> u32 {
        1 << self.block_shift
    }

    /// Byte range of `nlb` blocks from `slba`, or None if out of range.
    pub fn byte_range(&self, slba: u64, nlb: u64) -> Option<(u64, u64)> {
        let end = slba.checked_add(nlb)?;
        (end <= self.nblocks).then_some((slba << self.block_shift, nlb << self.block_shift))
    }
}
