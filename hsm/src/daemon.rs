//! The running HSM (`tidepool hsm run`): a session on this node, found
//! again after a restart by its info string and reclaimed with its events;
//! dispositions for the data events and destroy on each file system; an
//! event loop that hands recalls and requests to a bounded pool of workers,
//! each with its own connection to the node daemon.
//!
//! Readers of one migrated file on several nodes cause one recall: the
//! events of a file wait together until the first one's recall is done,
//! and are all answered with its outcome.
//!
//! A thread of its own runs the watermark policy ([`crate::policy`]) every
//! interval and at once when a write ran out of space (a nospace event,
//! answered when the round is done). `cancel` requests are answered on the
//! event loop itself, never queued behind the work they cancel. What is
//! running is published in the DM attribute [`STATUS_ATTR`] of each file
//! system's root, for `tidepool hsm status` on any node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use dmapi::event::{parse_eventmsgs, DmEvent, EventBody};
use dmapi::types::{
    DmAttrName, DmHandle, DmResponse, DmSessId, DmToken, EventSet, EventType, FsId, NodeId, DM_EV_WAIT, DM_NO_SESSION,
    DM_NO_TOKEN,
};
use dmapi::DmError;
use libdmapi::Dm;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::config::{Config, Policy};
use crate::ops::Ops;
use crate::policy::{self, Usage};
use crate::record::Record;
use crate::tier::Tier;
use crate::{request, HsmError, HsmResult, ATTR, SESSION_INFO};

enum Job {
    /// Data events are waiting on this file.
    Data(DmHandle),
    /// A command's request, answered on its token.
    Request(DmToken, request::Op, DmHandle),
    /// A file with a tier copy was destroyed: the copy goes.
    Forget(Record),
}

/// The DM attribute of a file system's root where the HSM says what it is
/// doing (one line of text).
pub const STATUS_ATTR: &[u8] = b"tphsmst";

/// Counts for the status line.
#[derive(Default)]
struct Stats {
    recalls: AtomicU64,
    migrations: AtomicU64,
    failures: AtomicU64,
    freed: AtomicU64,
}

/// Work on one inode, queued or running.
struct Work {
    what: &'static str,
    /// Raised by `cancel`.
    cancel: AtomicBool,
    /// Bytes copied so far.
    done: AtomicU64,
}

impl Work {
    fn new(what: &'static str) -> Arc<Work> {
        Arc::new(Work { what, cancel: AtomicBool::new(false), done: AtomicU64::new(0) })
    }
}

struct Hsm {
    sid: DmSessId,
    tier: Tier,
    /// The data events waiting per inode, the first one's recall serving all.
    waiting: Mutex<HashMap<u64, Vec<(EventType, DmToken)>>>,
    /// Work queued or running per inode.
    active: Mutex<HashMap<u64, Arc<Work>>>,
    stats: Stats,
}

fn connect(socket: &Path) -> HsmResult<Dm> {
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

/// Runs the HSM on the node daemon at `socket` until the daemon goes away
/// (or the process is killed: a restart reclaims the session and finishes
/// what was pending).
pub fn run(socket: &Path, cfg: &Config) -> HsmResult<()> {
    cfg.check()?;
    let rate = Some(cfg.tier.max_mib_per_sec << 20).filter(|r| *r > 0);
    let tier = Tier::open(&cfg.tier.url, cfg.tier_timeout())?.with_rate(rate);
    let dm = connect(socket)?;
    let sid = session(&dm)?;
    let mut data: EventSet =
        [EventType::Read, EventType::Write, EventType::Truncate, EventType::Destroy].into_iter().collect();
    let mut fs_events: EventSet = [EventType::Destroy].into_iter().collect();
    if cfg.policy.is_some() {
        data.insert(EventType::Nospace);
        fs_events.insert(EventType::Nospace);
    }
    let fss: Vec<FsId> = cfg.fs.iter().copied().map(FsId).collect();
    for fs in &fss {
        let h = DmHandle::fs(*fs);
        dm.dm_set_disp(sid, &h, DM_NO_TOKEN, data)?;
        // Destroy (with the record, so the copy can go) and nospace from the
        // whole file system; data events only where a file's own list asks.
        dm.dm_set_eventlist(sid, &h, DM_NO_TOKEN, fs_events)?;
        dm.dm_set_return_on_destroy(sid, &h, DM_NO_TOKEN, DmAttrName::new(ATTR)?, true)?;
    }
    info!(%sid, tier = tier.url(), fs = ?cfg.fs, workers = cfg.workers, "HSM running");
    let hsm = Arc::new(Hsm {
        sid,
        tier,
        waiting: Mutex::new(HashMap::new()),
        active: Mutex::new(HashMap::new()),
        stats: Stats::default(),
    });
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new().name(name).spawn(f).map(drop).map_err(|e| HsmError::Tier(e.to_string()))
    };
    for i in 0..cfg.workers.max(1) {
        let (hsm, rx, wdm) = (hsm.clone(), rx.clone(), connect(socket)?);
        spawn(
            format!("hsm-worker-{i}"),
            Box::new(move || loop {
                let job = rx.lock().recv();
                match job {
                    Ok(j) => hsm.work(&wdm, j),
                    Err(_) => return,
                }
            }),
        )?;
    }
    let (nospace_tx, nospace_rx) = mpsc::channel::<DmToken>();
    if let Some(policy) = cfg.policy.clone() {
        let (h2, pdm, f2) = (hsm.clone(), connect(socket)?, fss.clone());
        spawn("hsm-policy".into(), Box::new(move || h2.policy_loop(&pdm, &f2, &policy, nospace_rx)))?;
    }
    let (h3, sdm) = (hsm.clone(), connect(socket)?);
    spawn("hsm-status".into(), Box::new(move || h3.status_loop(&sdm, &fss)))?;
    let queues = Queues { work: tx, nospace: nospace_tx };
    // Events this session held when its last HSM died: handled again.
    for t in dm.dm_getall_tokens(sid, 1 << 16)? {
        match dm.dm_find_eventmsg(sid, t, 1 << 20).map(|b| parse_eventmsgs(&b)) {
            Ok(Ok(evs)) => evs.into_iter().for_each(|ev| hsm.dispatch(&dm, ev, &queues)),
            Ok(Err(e)) | Err(e) => warn!(token = %t, error = %e, "a pending event could not be read"),
        }
    }
    loop {
        match dm.get_events(sid, 64, DM_EV_WAIT, 1 << 20) {
            Ok(evs) => evs.into_iter().for_each(|ev| hsm.dispatch(&dm, ev, &queues)),
            Err(DmError::Intr(_)) | Err(DmError::Again(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

struct Queues {
    work: mpsc::Sender<Job>,
    nospace: mpsc::Sender<DmToken>,
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Hsm {
    fn respond(&self, dm: &Dm, t: DmToken, r: DmResponse) {
        if let Err(e) = dm.dm_respond_event(self.sid, t, r, &[]) {
            warn!(token = %t, error = %e, "answering an event");
        }
    }

    /// Marks work on `ino` as queued or running; its flag is what `cancel`
    /// raises. False if the inode has work already.
    fn begin(&self, ino: u64, what: &'static str) -> bool {
        use std::collections::hash_map::Entry;
        match self.active.lock().entry(ino) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Work::new(what));
                true
            }
        }
    }

    fn work_on(&self, ino: u64) -> Option<Arc<Work>> {
        self.active.lock().get(&ino).cloned()
    }

    fn end(&self, ino: u64) {
        self.active.lock().remove(&ino);
    }

    fn dispatch(&self, dm: &Dm, ev: DmEvent, q: &Queues) {
        let tx = &q.work;
        match (ev.ev_type, ev.body) {
            (EventType::Read | EventType::Write | EventType::Truncate, EventBody::Data { handle, .. }) => {
                let Ok(ino) = handle.ino() else { return self.respond(dm, ev.token, DmResponse::Continue) };
                let mut w = self.waiting.lock();
                let first = !w.contains_key(&ino);
                w.entry(ino).or_default().push((ev.ev_type, ev.token));
                drop(w);
                if first {
                    // A request's migration may hold the inode: the recall
                    // queues behind it all the same (it waits on the right).
                    self.active.lock().entry(ino).or_insert_with(|| Work::new("recall"));
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
            // No policy running: nothing to free, the write goes on (and fails).
            (EventType::Nospace, _) if ev.token.0 > 0 && q.nospace.send(ev.token).is_err() => {
                self.respond(dm, ev.token, DmResponse::Continue);
            }
            (EventType::Nospace, _) => {}
            (EventType::User, EventBody::User { data }) if ev.token.0 > 0 => match request::decode(&data) {
                // Answered here: a cancel never waits behind what it cancels.
                Ok((request::Op::Cancel, h)) => {
                    let r = match h.ino().ok().and_then(|i| self.work_on(i)) {
                        Some(w) => {
                            w.cancel.store(true, Ordering::Relaxed);
                            info!(ino = h.ino().unwrap_or(0), "cancel asked");
                            DmResponse::Continue
                        }
                        None => DmResponse::Abort(libc::ENOENT),
                    };
                    self.respond(dm, ev.token, r);
                }
                Ok((op, h)) => match h.ino() {
                    Ok(ino) if self.begin(ino, "request") => {
                        let _ = tx.send(Job::Request(ev.token, op, h));
                    }
                    _ => self.respond(dm, ev.token, DmResponse::Abort(libc::EBUSY)),
                },
                Err(e) => {
                    warn!(error = %e, "request refused");
                    self.respond(dm, ev.token, DmResponse::Abort(e.errno()));
                }
            },
            _ if ev.token.0 > 0 => self.respond(dm, ev.token, DmResponse::Continue),
            _ => {}
        }
    }

    fn work(&self, dm: &Dm, job: Job) {
        let mut ops = Ops { dm, sid: self.sid, tier: &self.tier, cancel: None, progress: None };
        match job {
            Job::Data(h) => {
                let Ok(ino) = h.ino() else { return };
                let Some((_, t)) = self.waiting.lock().get(&ino).and_then(|v| v.first().copied()) else { return };
                let work = self.work_on(ino);
                ops.cancel = work.as_ref().map(|w| &w.cancel);
                ops.progress = work.as_ref().map(|w| &w.done);
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
                self.count(&r, &self.stats.recalls);
                // A request running on the inode keeps its entry.
                if self.active.lock().get(&ino).is_some_and(|w| w.what == "recall") {
                    self.end(ino);
                }
                // The first token last: it holds the file's right.
                for (_, tok) in waiters.iter().skip(1) {
                    self.respond(dm, *tok, resp);
                }
                self.respond(dm, t, resp);
            }
            Job::Request(t, op, h) => {
                let ino = h.ino().unwrap_or(0);
                let work = self.work_on(ino);
                ops.cancel = work.as_ref().map(|w| &w.cancel);
                ops.progress = work.as_ref().map(|w| &w.done);
                let r = {
                    use request::Op::*;
                    match op {
                        Migrate => ops.migrate(&h, t),
                        Premigrate => ops.premigrate(&h, t).map(|_| ()),
                        Release => ops.release(&h, t),
                        Recall => ops.recall(&h, t),
                        Cancel => Ok(()),
                    }
                };
                self.end(ino);
                match op {
                    request::Op::Recall => self.count(&r, &self.stats.recalls),
                    _ => self.count(&r, &self.stats.migrations),
                }
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

    fn count(&self, r: &HsmResult<()>, ok: &AtomicU64) {
        match r {
            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.failures.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// This node's mount point and root of `fs` (the HSM's node must mount
    /// the file systems whose space it manages).
    fn mount_of(&self, dm: &Dm, fs: FsId) -> HsmResult<(PathBuf, DmHandle)> {
        use std::os::unix::ffi::OsStrExt;
        match dm.dm_get_mountinfo(self.sid, &DmHandle::fs(fs), DM_NO_TOKEN)? {
            EventBody::Mount { mountpoint_path, root_handle: Some(root), .. } => {
                Ok((PathBuf::from(std::ffi::OsStr::from_bytes(&mountpoint_path)), root))
            }
            _ => Err(HsmError::State("no mount of the file system on the HSM's node")),
        }
    }

    /// Rounds of the watermark policy: every interval, and whenever writes
    /// ran out of space (their events are answered after the round).
    fn policy_loop(&self, dm: &Dm, fss: &[FsId], p: &Policy, nospace: mpsc::Receiver<DmToken>) {
        let interval = Duration::from_secs(p.interval_secs);
        loop {
            let mut tokens: Vec<DmToken> = match nospace.recv_timeout(interval) {
                Ok(t) => vec![t],
                Err(mpsc::RecvTimeoutError::Timeout) => vec![],
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            tokens.extend(nospace.try_iter());
            for fs in fss {
                if let Err(e) = self.free_space(dm, *fs, p, !tokens.is_empty()) {
                    warn!(fs = fs.0, error = %e, "policy round");
                }
            }
            for t in tokens {
                self.respond(dm, t, DmResponse::Continue);
            }
        }
    }

    /// One policy round on `fs`: above the high mark (or out of space),
    /// migrates the least recently used files the rules allow until the
    /// volume is down to the low mark.
    fn free_space(&self, dm: &Dm, fs: FsId, p: &Policy, nospace: bool) -> HsmResult<()> {
        let (mount, root) = self.mount_of(dm, fs)?;
        let usage = |m: &Path| Usage::of(m).map_err(|e| HsmError::Tier(format!("statvfs {}: {e}", m.display())));
        let u = usage(&mount)?;
        if u.percent() < p.high_watermark as u64 && !nospace {
            return Ok(());
        }
        let need = u.above(p.low_watermark);
        if need == 0 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let cands = policy::scan(dm, self.sid, &DmHandle::fs(fs))?;
        let path_of = |h: &DmHandle| {
            let abs = dm.dm_handle_to_path(&root, h).ok()?;
            Some(format!("/{}", abs.strip_prefix(&mount).ok()?.display()))
        };
        let chosen = policy::choose(p, cands, need, now(), path_of);
        info!(fs = fs.0, used_pct = u.percent(), need, files = chosen.len(), nospace, "policy round");
        let (mut files, mut freed) = (0, 0);
        for c in chosen {
            let Ok(ino) = c.handle.ino() else { continue };
            if !self.begin(ino, "policy") {
                continue;
            }
            let work = self.work_on(ino);
            let ops = Ops {
                dm,
                sid: self.sid,
                tier: &self.tier,
                cancel: work.as_ref().map(|w| &w.cancel),
                progress: work.as_ref().map(|w| &w.done),
            };
            // A token of the HSM's own to hold the file's right meanwhile.
            let r = dm.dm_create_userevent(self.sid, b"tphsm policy").map_err(HsmError::from).and_then(|t| {
                let r = ops.migrate(&c.handle, t);
                self.respond(dm, t, DmResponse::Continue);
                r
            });
            self.end(ino);
            self.count(&r, &self.stats.migrations);
            match r {
                Ok(()) => {
                    files += 1;
                    freed += c.bytes;
                }
                Err(e) => warn!(ino, error = %e, "policy migration"),
            }
            if usage(&mount)?.used <= u.used - need {
                break;
            }
        }
        self.stats.freed.fetch_add(freed, Ordering::Relaxed);
        let after = usage(&mount)?;
        info!(
            fs = fs.0,
            files,
            freed,
            used_pct = after.percent(),
            ms = started.elapsed().as_millis() as u64,
            "policy round done"
        );
        Ok(())
    }

    /// The status line, as `tidepool hsm status` shows it, without its
    /// time (`at=`, added when it is published).
    fn status_line(&self) -> String {
        let running: Vec<String> = {
            let a = self.active.lock();
            let mut v: Vec<_> =
                a.iter().map(|(ino, w)| format!("{}:{ino}@{}", w.what, w.done.load(Ordering::Relaxed))).collect();
            v.sort();
            v.truncate(64);
            v
        };
        let waiting: usize = self.waiting.lock().values().map(Vec::len).sum();
        let s = &self.stats;
        format!(
            "sid={} recalls={} migrations={} failures={} freed={} waiting_accesses={} active={}",
            self.sid,
            s.recalls.load(Ordering::Relaxed),
            s.migrations.load(Ordering::Relaxed),
            s.failures.load(Ordering::Relaxed),
            s.freed.load(Ordering::Relaxed),
            waiting,
            if running.is_empty() { "-".to_string() } else { running.join(",") },
        )
    }

    /// Publishes the status line on each file system's root when it changes
    /// (and every few seconds, so a reader sees it is alive).
    fn status_loop(&self, dm: &Dm, fss: &[FsId]) {
        let mut roots: HashMap<FsId, DmHandle> = HashMap::new();
        let mut last = (String::new(), std::time::Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let body = self.status_line();
            if body == last.0 && last.1.elapsed() < Duration::from_secs(5) {
                continue;
            }
            let line = format!("v=1 at={} {body}", now());
            for fs in fss {
                if !roots.contains_key(fs) {
                    match self.mount_of(dm, *fs) {
                        Ok((_, root)) => {
                            roots.insert(*fs, root);
                        }
                        Err(_) => continue,
                    }
                }
                if let Err(e) = dm.dm_set_dmattr(self.sid, &roots[fs], DM_NO_TOKEN, STATUS_ATTR, line.as_bytes()) {
                    warn!(fs = fs.0, error = %e, "publishing the status");
                }
            }
            last = (body, std::time::Instant::now());
        }
    }
}
