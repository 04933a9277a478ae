//! A mount's DM events through its node daemon's local API, for a mount
//! running in a process of its own (`tidepool mount --dm-socket`): the
//! [`EventSink`] the file system generates its events into.
//!
//! The daemon publishes a count of disposition changes in a file beside its
//! socket ([`disp_seq_path`]); the sink keeps the file system's
//! dispositions as of a count, so operations whose events nobody disposed
//! cost no round trip.

use dmapi::disp::GenerationView;
use dmapi::event::DmEvent;
use dmapi::types::{DmResponse, EventSet, FsId};
use libdmapi::channel::disp_seq_path;
use libdmapi::Dm;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;
use tpfs::fuse::{DmLink, EventSink};

pub struct SocketSink {
    path: PathBuf,
    /// Spare connections to the daemon: a synchronous event may wait long,
    /// so concurrent events use connections of their own.
    pool: Mutex<Vec<Dm>>,
    disp_seq: Option<std::fs::File>,
    /// The view at a count, and of which file system.
    view: Mutex<Option<(u64, FsId, GenerationView)>>,
}

impl SocketSink {
    pub fn new(api: Dm) -> SocketSink {
        let path = api.path().to_path_buf();
        let seq = disp_seq_path(&path);
        let disp_seq = std::fs::File::open(&seq)
            .map_err(|x| tracing::warn!(path = %seq.display(), error = %x, "no disposition count: asking the node before every operation"))
            .ok();
        SocketSink { path, pool: Mutex::new(vec![api]), disp_seq, view: Mutex::new(None) }
    }

    /// A mount's link to the node daemon `api` talks to, for file system `fs`.
    pub fn link(api: Dm, fs: FsId) -> DmLink {
        DmLink { sink: Arc::new(SocketSink::new(api)), fs }
    }

    fn conn(&self) -> std::io::Result<Dm> {
        let spare = self.pool.lock().pop();
        match spare {
            Some(c) => Ok(c),
            None => Dm::connect(&self.path),
        }
    }

    /// Runs `f` on a spare connection, kept for the next call if it worked.
    fn with_conn<T, E: ToString>(&self, f: impl FnOnce(&Dm) -> Result<T, E>) -> Result<T, String> {
        let c = self.conn().map_err(|e| e.to_string())?;
        let r = f(&c).map_err(|e| e.to_string());
        if r.is_ok() {
            self.pool.lock().push(c);
        }
        r
    }
}

impl EventSink for SocketSink {
    /// `None` when there is no count, an install is under way, or the
    /// node could not say.
    fn view(&self, fs: FsId) -> Option<GenerationView> {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 8];
        self.disp_seq.as_ref()?.read_exact_at(&mut b, 0).ok()?;
        let seq = u64::from_le_bytes(b);
        if !seq.is_multiple_of(2) {
            return None;
        }
        let mut cache = self.view.lock();
        if let Some((s, f, v)) = *cache {
            if s == seq && f == fs {
                return Some(v);
            }
        }
        // A view taken at or after `seq` includes every change made before it.
        let (s, v) = self.with_conn(|c| c.disp_view(fs)).ok()?;
        *cache = Some((s, fs, v));
        (s >= seq).then_some(v)
    }

    fn generate(
        &self,
        fs: FsId,
        ev: DmEvent,
        file_events: EventSet,
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<DmResponse, String> {
        self.with_conn(|c| c.generate_for_file(fs, ev, file_events, attrs)).map(|g| g.response)
    }

    fn mounted(&self, fs: FsId, yes: bool) -> Result<(), String> {
        self.with_conn(|c| c.mount(fs, yes))
    }
}
