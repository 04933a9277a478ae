//! The running HSM (`tidepool hsm run`): a session on this node, found
//! again after a restart by its info string and reclaimed with its events;
//! dispositions for the data events and destroy on each file system; an
//! event loop that hands recalls and requests to a bounded pool of workers,
//! each with its own connection to the node daemon.
//!
//! Readers of one migrated file on several nodes cause one recall: the
//! events of a file wait together until the first one's recall is done,
//! and are all answered with its outcome.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

use dmapi::event::{parse_eventmsgs, DmEvent, EventBody};
use dmapi::types::{
    DmAttrName, DmHandle, DmResponse, DmSessId, DmToken, EventSet, EventType, FsId, NodeId, DM_EV_WAIT, DM_NO_SESSION,
    DM_NO_TOKEN,
};
use dmapi::DmError;
use libdmapi::Dm;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::ops::Ops;
use crate::record::Record;
use crate::tier::Tier;
use crate::{request, HsmError, HsmResult, ATTR, SESSION_INFO};

/// `tidepool hsm run`'s settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node daemon's local DM socket.
    pub socket: PathBuf,
    /// The tier's URL (`file:///dir`).
    pub tier: String,
    /// The file systems managed.
    pub fs: Vec<FsId>,
    /// Recall and request workers.
    pub workers: usize,
}

enum Job {
    /// Data events are waiting on this file.
    Data(DmHandle),
    /// A command's request, answered on its token.
    Request(DmToken, Vec<u8>),
    /// A file with a tier copy was destroyed: the copy goes.
    Forget(Record),
}

struct Hsm {
    sid: DmSessId,
    tier: Tier,
    /// The data events waiting per inode, the first one's recall serving all.
    waiting: Mutex<HashMap<u64, Vec<(EventType, DmToken)>>>,
}

fn connect(socket: &std::path::Path) -> HsmResult<Dm> {
    Dm::connect(socket).map_err(|e| HsmError::Dm(DmError::Io(format!("node daemon at {}: {e}", socket.display()))))
}

/// This node's HSM session from before a restart, reclaimed with its
/// events, or a new one.
fn session(dm: &Dm) -> HsmResult<DmSessId> {
    let me = NodeId(dm.status()?.node);
    for sid in dm.dm_getall_sessions(4096)? {
        if sid.node() == Some(me) && dm.dm_query_session(sid).is_ok_and(|i| i == SESSION_INFO) {
            info!(%sid, "reclaiming the HSM session");
            return Ok(dm.dm_create_session(sid, SESSION_INFO)?);
        }
    }
    Ok(dm.dm_create_session(DM_NO_SESSION, SESSION_INFO)?)
}

/// Runs the HSM until the node daemon goes away (or the process is killed:
/// a restart reclaims the session and finishes what was pending).
pub fn run(cfg: &Config) -> HsmResult<()> {
    let tier = Tier::open(&cfg.tier)?;
    let dm = connect(&cfg.socket)?;
    let sid = session(&dm)?;
    let data: EventSet =
        [EventType::Read, EventType::Write, EventType::Truncate, EventType::Destroy].into_iter().collect();
    for fs in &cfg.fs {
        let h = DmHandle::fs(*fs);
        dm.dm_set_disp(sid, &h, DM_NO_TOKEN, data)?;
        // Destroy from the whole file system (with the record, so the copy
        // can go); data events only where a file's own list asks.
        dm.dm_set_eventlist(sid, &h, DM_NO_TOKEN, [EventType::Destroy].into_iter().collect())?;
        dm.dm_set_return_on_destroy(sid, &h, DM_NO_TOKEN, DmAttrName::new(ATTR)?, true)?;
    }
    info!(%sid, tier = tier.url(), fs = ?cfg.fs, workers = cfg.workers, "HSM running");
    let hsm = Arc::new(Hsm { sid, tier, waiting: Mutex::new(HashMap::new()) });
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..cfg.workers.max(1) {
        let (hsm, rx, socket) = (hsm.clone(), rx.clone(), cfg.socket.clone());
        let wdm = connect(&socket)?;
        std::thread::Builder::new()
            .name(format!("hsm-worker-{i}"))
            .spawn(move || loop {
                let job = rx.lock().recv();
                match job {
                    Ok(j) => hsm.work(&wdm, j),
                    Err(_) => return,
                }
            })
            .map_err(|e| HsmError::Tier(e.to_string()))?;
    }
    // Events this session held when its last HSM died: handled again.
    for t in dm.dm_getall_tokens(sid, 1 << 16)? {
        match dm.dm_find_eventmsg(sid, t, 1 << 20).map(|b| parse_eventmsgs(&b)) {
            Ok(Ok(evs)) => evs.into_iter().for_each(|ev| hsm.dispatch(&dm, ev, &tx)),
            Ok(Err(e)) | Err(e) => warn!(token = %t, error = %e, "a pending event could not be read"),
        }
    }
    loop {
        match dm.get_events(sid, 64, DM_EV_WAIT, 1 << 20) {
            Ok(evs) => evs.into_iter().for_each(|ev| hsm.dispatch(&dm, ev, &tx)),
            Err(DmError::Intr(_)) | Err(DmError::Again(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Hsm {
    fn respond(&self, dm: &Dm, t: DmToken, r: DmResponse) {
        if let Err(e) = dm.dm_respond_event(self.sid, t, r, &[]) {
            warn!(token = %t, error = %e, "answering an event");
        }
    }

    fn dispatch(&self, dm: &Dm, ev: DmEvent, tx: &mpsc::Sender<Job>) {
        match (ev.ev_type, ev.body) {
            (EventType::Read | EventType::Write | EventType::Truncate, EventBody::Data { handle, .. }) => {
                let Ok(ino) = handle.ino() else { return self.respond(dm, ev.token, DmResponse::Continue) };
                let mut w = self.waiting.lock();
                let first = !w.contains_key(&ino);
                w.entry(ino).or_default().push((ev.ev_type, ev.token));
                drop(w);
                if first {
                    let _ = tx.send(Job::Data(handle));
                }
            }
            (EventType::Destroy, EventBody::Destroy { attrcopy, .. }) => {
                if !attrcopy.is_empty() {
                    match Record::decode(&attrcopy) {
                        Ok(r) => {
                            let _ = tx.send(Job::Forget(r));
                        }
                        Err(e) => warn!(error = %e, "a destroyed file's record"),
                    }
                }
                if ev.token.0 > 0 {
                    self.respond(dm, ev.token, DmResponse::Continue);
                }
            }
            (EventType::User, EventBody::User { data }) if ev.token.0 > 0 => {
                let _ = tx.send(Job::Request(ev.token, data));
            }
            _ if ev.token.0 > 0 => self.respond(dm, ev.token, DmResponse::Continue),
            _ => {}
        }
    }

    fn work(&self, dm: &Dm, job: Job) {
        let ops = Ops { dm, sid: self.sid, tier: &self.tier };
        match job {
            Job::Data(h) => {
                let Ok(ino) = h.ino() else { return };
                let Some((_, t)) = self.waiting.lock().get(&ino).and_then(|v| v.first().copied()) else { return };
                let recalled = ops.recall(&h, t);
                // Everything that came meanwhile is answered with this outcome;
                // later events start another round (which finds it recalled).
                let waiters = self.waiting.lock().remove(&ino).unwrap_or_default();
                let writes = waiters.iter().any(|(ty, _)| *ty != EventType::Read);
                let r = recalled.and_then(|()| if writes { ops.dirty(&h, t) } else { Ok(()) });
                let resp = match &r {
                    Ok(()) => DmResponse::Continue,
                    Err(e) => {
                        warn!(ino, error = %e, "recall failed; the accesses get EIO");
                        DmResponse::Abort(libc::EIO)
                    }
                };
                info!(ino, events = waiters.len(), ok = r.is_ok(), "accesses answered after one recall");
                // The first token last: it holds the file's right.
                for (_, tok) in waiters.iter().skip(1) {
                    self.respond(dm, *tok, resp);
                }
                self.respond(dm, t, resp);
            }
            Job::Request(t, data) => {
                let r = request::decode(&data).and_then(|(op, h)| {
                    use request::Op::*;
                    match op {
                        Migrate => ops.migrate(&h, t),
                        Premigrate => ops.premigrate(&h, t).map(|_| ()),
                        Release => ops.release(&h, t),
                        Recall => ops.recall(&h, t),
                    }
                });
                let resp = match r {
                    Ok(()) => DmResponse::Continue,
                    Err(e) => {
                        warn!(error = %e, "request refused");
                        DmResponse::Abort(e.errno())
                    }
                };
                self.respond(dm, t, resp);
            }
            Job::Forget(r) => match self.tier.delete(&r.key) {
                Ok(()) => info!(key = r.key, "tier copy of a destroyed file removed"),
                Err(e) => warn!(key = r.key, error = %e, "tier copy of a destroyed file not removed"),
            },
        }
    }
}
