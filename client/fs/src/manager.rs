//! The file-system manager: owns a file system's metadata on the shared
//! volume (a [`MetaStore`], journaled) and serves it to every mounting node
//! over TCP ([`super::rpc`]), with tokens so that nodes cache metadata and
//! move file data themselves.
//!
//! Tokens are per inode, shared or exclusive ([`Mode`]). A node caches an
//! inode's attributes and extents (and a directory's names) only under a
//! token, and writes file data only under an exclusive one. A request that
//! conflicts with tokens held elsewhere revokes them first: the holder
//! finishes its I/O on that inode, gives back the size and mtime it set, and
//! drops its cache; only then is the new token granted. So a read on one node
//! that starts after a write on another has returned sees that write.
//!
//! Namespace changes run here. They first take every affected inode away
//! from other holders (the requester keeps its token on the parent
//! directories, whose new state the reply carries), then commit one journal
//! transaction, then answer. Everything acknowledged is in the journal on
//! the shared volume; a restarted manager replays it, and clients reconnect
//! and re-acquire their tokens.
//!
//! Per inode, requests take turns (a ticket queue), so a revoke is always
//! written after the grant it revokes, and nobody starves. Waiting for a
//! revoke never holds the metadata lock, so a holder can still allocate
//! blocks to finish the write it is in.

use super::blockdev::BlockDev;
use super::format::Inode;
use super::locks::{LockSet, LockType, EOF};
use super::meta::{Cred, MetaError, MetaStore, SetAttr};
use super::rpc::{self, Destroyed, Kind, Mode, Reply, Req, RevokeDone};
use super::tokens::{Claim, Step, Tokens, Under};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A holder that has not given a token back this long, nor said it holds
/// it under a DM right, is expelled (its connection closed, its tokens
/// dropped).
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most inodes one scan reply carries.
pub const SCAN_MAX: usize = 4096;
/// How long a restarted manager keeps files unlinked while open, waiting
/// for the nodes that have them open to reconnect and say so.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// How long a started manager grants only the record locks nodes declare
/// again (held before a restart), so nobody takes one of them first. The
/// orphan grace, if shorter, bounds it too.
pub const LOCK_GRACE: Duration = Duration::from_secs(2);
/// How long a manager taking over from one that left tokens out grants
/// none (the nodes give back the sizes set under the old tokens first;
/// see [`super::tokens`]). The orphan grace, if shorter, bounds it too.
pub const TOKEN_GRACE: Duration = Duration::from_secs(2);

pub struct Manager {
    meta: Mutex<MetaStore>,
    dev: Arc<dyn BlockDev>,
    table: Mutex<Tokens>,
    cv: Condvar,
    conns: Mutex<HashMap<u64, Arc<Peer>>>,
    next_conn: AtomicU64,
    /// [`REVOKE_TIMEOUT`] unless set (milliseconds).
    revoke_timeout_ms: AtomicU64,
    /// The term served under ([`Manager::set_term`]).
    epoch: AtomicU64,
    /// Which nodes may connect (any that proves the key unless set).
    members: Mutex<rpc::Members>,
    /// Files open on the nodes. Taken after `meta`, never before.
    uses: Mutex<Uses>,
    /// Record locks. Taken before `conns`, never after.
    locks: Mutex<Locks>,
    locks_cv: Condvar,
    /// Until then only reclaimed locks are granted (see [`LOCK_GRACE`]).
    lock_grace_until: Instant,
    /// Group commit: whether a batch is being written, by whom the others
    /// wait for.
    gc: Mutex<GroupCommit>,
    gc_cv: Condvar,
    durable: Arc<AtomicU64>,
    /// The journal, for its header (incarnation, voided connections, the
    /// tokens-out mark) without the metadata lock.
    journal: Arc<Mutex<super::journal::Journal>>,
    /// Set when the handle is dropped: connections end because the
    /// manager stops, and their tokens are for the next one to recover,
    /// not void.
    stopping: AtomicBool,
    /// The journal header says tokens are out ([`Journal::set_tokens_out`](super::journal::Journal::set_tokens_out)).
    tokens_marked: AtomicBool,
}

#[derive(Default)]
struct GroupCommit {
    writing: bool,
}

/// The cluster's record locks, per inode, by (node connection, lock owner).
#[derive(Default)]
struct Locks {
    files: HashMap<u64, LockSet<(u64, u64)>>,
    /// Bumped, per (connection, owner, inode), when an owner lets go of a
    /// whole file (its process closed it, or died) or its node cancels its
    /// wait (a signal came): a wait still pending then ends with EINTR.
    cancels: HashMap<(u64, u64, u64), u64>,
    /// What each waiting owner waits for (inode, mode, range), to find
    /// deadlocks.
    waiting: HashMap<(u64, u64), (u64, LockType, u64, u64)>,
}

impl Locks {
    /// Whether `me` waiting for `holder` closes a cycle of waits (EDEADLK),
    /// following at most ten waits as Linux does.
    fn deadlocks(&self, me: (u64, u64), mut holder: (u64, u64)) -> bool {
        for _ in 0..10 {
            if holder == me {
                return true;
            }
            let Some(&(ino, typ, start, end)) = self.waiting.get(&holder) else { return false };
            let Some((next, _)) = self.files.get(&ino).and_then(|s| s.conflict(holder, typ, start, end)) else {
                return false;
            };
            holder = next;
        }
        false
    }
}

/// Opens per (node connection, inode), and per inode over all nodes.
#[derive(Default)]
struct Uses {
    per: HashMap<(u64, u64), u32>,
    total: HashMap<u64, u32>,
}

struct Peer {
    id: u64,
    /// The node it authenticated as, and its name (for logs).
    node: u32,
    name: String,
    out: Mutex<TcpStream>,
    /// Expelled: its tokens were taken from it, and nothing it still
    /// sends (a size under a token it lost) counts.
    expelled: AtomicBool,
}

impl Peer {
    fn expel(&self) {
        self.expelled.store(true, Ordering::Release);
        let _ = self.out.lock().shutdown(Shutdown::Both);
    }

    fn send<T: serde::Serialize>(&self, kind: Kind, id: u64, body: &T) {
        let mut w = self.out.lock();
        if let Err(e) = rpc::send(&mut *w, kind, id, body) {
            tracing::warn!(peer = self.id, error = %e, "cannot write to a client; dropping it");
            let _ = w.shutdown(Shutdown::Both);
        }
    }
}

/// A running manager; dropping it stops accepting new clients.
pub struct ManagerHandle {
    pub addr: SocketAddr,
    pub manager: Arc<Manager>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ManagerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Idle if no token is out: a grant after this check is never
        // received, its reply written after the connections are shut.
        self.manager.stopping.store(true, Ordering::Release);
        let idle = {
            let t = self.manager.table.lock();
            let idle = t.holders().next().is_none();
            for p in self.manager.conns.lock().values() {
                let _ = p.out.lock().shutdown(Shutdown::Both);
            }
            idle
        };
        if let Err(e) = self.manager.make_durable() {
            tracing::error!(errno = e, "metadata staged at shutdown: the journal write failed");
        }
        if idle && self.manager.tokens_marked.load(Ordering::Acquire) {
            let r = self.manager.journal.lock().set_tokens_out(false);
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not record that no token is out; the next manager recovers");
            }
        }
    }
}

fn err(e: MetaError) -> Reply {
    Reply::Err(e.errno())
}

impl Manager {
    /// Opens the file system on `dev` (replaying its journal).
    pub fn open(dev: Arc<dyn BlockDev>) -> super::Result<Arc<Manager>> {
        Self::open_with_grace(dev, ORPHAN_GRACE)
    }

    /// [`open`](Self::open); files unlinked while open that nobody has
    /// reopened `grace` after the start are freed.
    pub fn open_with_grace(dev: Arc<dyn BlockDev>, grace: Duration) -> super::Result<Arc<Manager>> {
        let mut meta = MetaStore::open_keeping_orphans(dev.clone())?;
        meta.enable_group_commit();
        let durable = meta.durable();
        let orphans = meta.orphans();
        let journal = meta.journal();
        let (recovering, prior) = {
            let mut j = journal.lock();
            (j.tokens_out(), j.begin_incarnation()?)
        };
        let table = if recovering {
            tracing::info!(
                grace_ms = grace.min(TOKEN_GRACE).as_millis() as u64,
                prior = prior.incarnation,
                voided = prior.void.len(),
                "the last manager left tokens out; recovering them before granting any"
            );
            Tokens::recovering(Instant::now() + grace.min(TOKEN_GRACE), prior)
        } else {
            Tokens::new()
        };
        let m = Arc::new(Manager {
            meta: Mutex::new(meta),
            dev,
            table: Mutex::new(table),
            cv: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            revoke_timeout_ms: AtomicU64::new(REVOKE_TIMEOUT.as_millis() as u64),
            epoch: AtomicU64::new(0),
            members: Mutex::new(Arc::new(|_| true)),
            uses: Mutex::new(Uses::default()),
            locks: Mutex::new(Locks::default()),
            locks_cv: Condvar::new(),
            lock_grace_until: Instant::now() + grace.min(LOCK_GRACE),
            gc: Mutex::new(GroupCommit::default()),
            gc_cv: Condvar::new(),
            durable,
            tokens_marked: AtomicBool::new(recovering),
            stopping: AtomicBool::new(false),
            journal,
        });
        if !orphans.is_empty() {
            let weak = Arc::downgrade(&m);
            std::thread::Builder::new()
                .name("fsmgr-orphans".into())
                .spawn(move || {
                    std::thread::sleep(grace);
                    let Some(m) = weak.upgrade() else { return };
                    let mut freed = 0;
                    for ino in orphans {
                        if !m.uses.lock().total.contains_key(&ino) && m.retire(ino).is_some() {
                            freed += 1;
                        }
                    }
                    if let Err(e) = m.make_durable() {
                        tracing::error!(errno = e, "freeing orphans: the journal write failed");
                    }
                    tracing::info!(freed, "files unlinked while open that no node reopened are freed");
                })
                .map_err(|e| super::FsError::Io(e.to_string()))?;
        }
        Ok(m)
    }

    /// Waits until every metadata change made so far is in the journal:
    /// the first waiter writes the staged batch (every operation staged
    /// meanwhile in one FUA write), the others wait for it. Err(EIO) if
    /// the write that held them failed.
    fn make_durable(&self) -> Result<(), i32> {
        let (want, epoch) = self.meta.lock().wait_point();
        loop {
            if self.meta.lock().lost(epoch, want) {
                return Err(libc::EIO);
            }
            if self.durable.load(Ordering::Acquire) >= want {
                return Ok(());
            }
            let mut g = self.gc.lock();
            if self.durable.load(Ordering::Acquire) >= want {
                continue;
            }
            if g.writing {
                self.gc_cv.wait(&mut g);
                continue;
            }
            g.writing = true;
            drop(g);
            self.write_batch();
            self.gc.lock().writing = false;
            self.gc_cv.notify_all();
        }
    }

    /// One batch to the journal (a failed write is recorded in the store).
    fn write_batch(&self) {
        let mut m = self.meta.lock();
        let Some((id, blocks)) = m.take_batch() else { return };
        let journal = m.journal();
        // Taken before the store is let go: batches go in their order.
        let mut j = journal.lock();
        drop(m);
        let r = j.commit(&blocks);
        drop(j);
        match r {
            Ok(_) => {
                self.durable.fetch_max(id, Ordering::Release);
            }
            Err(e) => {
                tracing::error!(error = %e, batch = id, "journal write failed; metadata read back from the volume");
                self.meta.lock().lost_batch(id);
            }
        }
    }

    /// Sends a reply once what it tells of is durable.
    fn reply(&self, peer: &Peer, rid: u64, reply: &Reply) {
        match self.make_durable() {
            Ok(()) => peer.send(Kind::Reply, rid, reply),
            Err(e) => peer.send(Kind::Reply, rid, &Reply::Err(e)),
        }
    }

    /// How long a holder may take to give a token back (or say a DM right
    /// holds it) before it is expelled; [`REVOKE_TIMEOUT`] by default.
    pub fn set_revoke_timeout(&self, d: Duration) {
        self.revoke_timeout_ms.store(d.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    fn revoke_timeout(&self) -> Duration {
        Duration::from_millis(self.revoke_timeout_ms.load(Ordering::Relaxed))
    }

    /// Which nodes are cluster members: only they may connect (checked at
    /// each connection's handshake). By default any node that proves it
    /// holds the cluster key.
    pub fn set_members(&self, members: rpc::Members) {
        *self.members.lock() = members;
    }

    /// The election term this manager serves under (etcd's revision; 0,
    /// the default, for static roles): told to clients in the handshake,
    /// and a client that found a later term in etcd is refused.
    pub fn set_term(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    /// Drops every connection of node `node` (it left the cluster): its
    /// tokens, opens and locks go as if it had disconnected. How many.
    pub fn expel_node(&self, node: u32) -> usize {
        let gone: Vec<Arc<Peer>> = self.conns.lock().values().filter(|p| p.node == node).cloned().collect();
        for p in &gone {
            tracing::warn!(client = %p.name, node, "expelling a node that left the cluster");
            // Its connection thread sees the end and drops what it held.
            p.expel();
        }
        gone.len()
    }

    /// Serves clients on `addr` from a background thread, as the node of
    /// `creds`: a client must prove it holds the same cluster key.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr, creds: rpc::Credentials) -> io::Result<ManagerHandle> {
        let l = TcpListener::bind(addr)?;
        let bound = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (me, stop2) = (self.clone(), stop.clone());
        tracing::info!(addr = %bound, "file-system manager listening");
        let thread = std::thread::Builder::new().name("fsmgr-accept".into()).spawn(move || {
            for s in l.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                match s {
                    Ok(s) => {
                        let (m, creds) = (me.clone(), creds.clone());
                        let _ = std::thread::Builder::new().name("fsmgr-conn".into()).spawn(move || m.conn(s, &creds));
                    }
                    Err(e) => tracing::warn!(error = %e, "accept"),
                }
            }
        })?;
        Ok(ManagerHandle { addr: bound, manager: self.clone(), stop, thread: Some(thread) })
    }

    fn conn(self: Arc<Self>, s: TcpStream, creds: &rpc::Credentials) {
        let _ = s.set_nodelay(true);
        let Ok(mut out) = s.try_clone() else { return };
        let from = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut r = BufReader::with_capacity(64 * 1024, s);
        // Nothing of an unauthenticated client reaches the tables.
        let _ = out.set_read_timeout(Some(rpc::HANDSHAKE_WAIT));
        let members = self.members.lock().clone();
        let epoch = self.epoch.load(Ordering::Acquire);
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let incarnation = self.journal.lock().incarnation();
        let hello = || {
            let m = self.meta.lock();
            Reply::Hello { block_size: m.block_size(), fsid: m.superblock().fsid, epoch, incarnation, conn: id }
        };
        let (node, name) = match rpc::handshake_server(&mut r, &mut out, creds, &*members, epoch, hello) {
            Ok(who) => who,
            Err(e) => {
                tracing::warn!(%from, reason = %e, "file-system client refused");
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
        };
        let _ = out.set_read_timeout(None);
        tracing::info!(client = %name, node, id, "client connected");
        let peer = Arc::new(Peer { id, node, name, out: Mutex::new(out), expelled: AtomicBool::new(false) });
        self.conns.lock().insert(id, peer.clone());
        let why = loop {
            let (kind, rid, body) = match rpc::recv(&mut r) {
                Ok(m) => m,
                Err(e) => break e,
            };
            // What was still buffered when it was expelled is not taken in.
            if peer.expelled.load(Ordering::Acquire) {
                break io::Error::new(io::ErrorKind::ConnectionAborted, "expelled");
            }
            match kind {
                Kind::Req => match rpc::decode::<Req>(&body) {
                    Ok(req) => self.dispatch(&peer, rid, req),
                    Err(e) => break e,
                },
                Kind::RevokeDone => match rpc::decode::<RevokeDone>(&body) {
                    Ok(d) => self.revoke_done(&peer, d),
                    Err(e) => break e,
                },
                Kind::RevokeHeld => self.revoke_held(id, rid),
                _ => break io::Error::new(io::ErrorKind::InvalidData, "unexpected message kind from a client"),
            }
        };
        tracing::info!(client = %peer.name, node = peer.node, reason = %why, "client gone; dropping its tokens");
        let _ = peer.out.lock().shutdown(Shutdown::Both);
        self.conns.lock().remove(&id);
        {
            let mut t = self.table.lock();
            // Sizes it set under them may still come, through the next
            // manager's recovery: void them first, on the volume.
            if !self.stopping.load(Ordering::Acquire) && t.holders().any(|(_, c, m)| c == id && m == Mode::Write) {
                self.void_conn(id);
            }
            t.drop_conn(id);
        }
        self.cv.notify_all();
        self.drop_uses(id);
        // Files only it had open may be gone with it.
        if let Err(e) = self.make_durable() {
            tracing::error!(errno = e, "a departed client's changes: the journal write failed");
        }
        // A node that goes away lets go of its locks; its waits end.
        let mut l = self.locks.lock();
        l.files.retain(|_, set| {
            set.retain_owners(|(c, _)| c != id);
            !set.is_empty()
        });
        l.cancels.retain(|(c, _, _), _| *c != id);
        l.waiting.retain(|(c, _), _| *c != id);
        drop(l);
        self.locks_cv.notify_all();
    }

    /// [`Req::Lock`]: set or remove a record lock of `(peer, owner)`, with
    /// a wait for conflicting locks to go if asked (on a thread of its own).
    #[allow(clippy::too_many_arguments)]
    fn lock(
        &self,
        peer: &Peer,
        ino: u64,
        owner: u64,
        typ: Option<LockType>,
        (start, end): (u64, u64),
        pid: u32,
        wait: bool,
        reclaim: bool,
    ) -> Reply {
        if start > end {
            return Reply::Err(libc::EINVAL);
        }
        let key = (peer.id, owner);
        let mut l = self.locks.lock();
        let Some(typ) = typ else {
            if let Some(set) = l.files.get_mut(&ino) {
                set.set(key, None, start, end, pid);
                if set.is_empty() {
                    l.files.remove(&ino);
                }
            }
            if start == 0 && end >= EOF {
                *l.cancels.entry((key.0, key.1, ino)).or_default() += 1;
            }
            drop(l);
            self.locks_cv.notify_all();
            return Reply::Done;
        };
        let ticket = l.cancels.get(&(key.0, key.1, ino)).copied().unwrap_or(0);
        let reply = loop {
            let grace = !reclaim && Instant::now() < self.lock_grace_until;
            if !grace {
                let set = l.files.entry(ino).or_default();
                match set.conflict(key, typ, start, end) {
                    None => {
                        set.set(key, Some(typ), start, end, pid);
                        break Reply::Done;
                    }
                    Some(_) if !wait => break Reply::Err(libc::EAGAIN),
                    Some((holder, _)) if l.deadlocks(key, holder) => break Reply::Err(libc::EDEADLK),
                    Some(_) => {}
                }
            }
            if l.cancels.get(&(key.0, key.1, ino)).copied().unwrap_or(0) != ticket
                || !self.conns.lock().contains_key(&peer.id)
            {
                break Reply::Err(libc::EINTR);
            }
            l.waiting.insert(key, (ino, typ, start, end));
            if grace {
                self.locks_cv.wait_until(&mut l, self.lock_grace_until);
            } else {
                self.locks_cv.wait(&mut l);
            }
        };
        l.waiting.remove(&key);
        reply
    }

    /// A node's opens end with its connection; files unlinked meanwhile go.
    fn drop_uses(&self, conn: u64) {
        let mut m = self.meta.lock();
        let mut u = self.uses.lock();
        let mine: Vec<(u64, u32)> = u.per.iter().filter(|((c, _), _)| *c == conn).map(|((_, i), n)| (*i, *n)).collect();
        let mut unused = Vec::new();
        for (ino, n) in mine {
            u.per.remove(&(conn, ino));
            if let Some(t) = u.total.get_mut(&ino) {
                *t = t.saturating_sub(n);
                if *t == 0 {
                    u.total.remove(&ino);
                    unused.push(ino);
                }
            }
        }
        drop(u);
        let orphans: Vec<u64> = unused.into_iter().filter(|&ino| !self.unuse_linked(&mut m, ino)).collect();
        drop(m);
        for ino in orphans {
            self.retire(ino);
        }
    }

    /// An inode nobody uses any more: `true` if it still has a name (and
    /// stays); `false` if it must be retired.
    fn unuse_linked(&self, m: &mut MetaStore, ino: u64) -> bool {
        if m.getattr(ino).is_ok_and(|i| i.nlink.get() == 0) {
            return false;
        }
        let _ = m.set_in_use(ino, false);
        true
    }

    /// Frees an unlinked inode whose last user let go, after taking every
    /// token on it back: no node may keep a copy of an inode whose number
    /// will be used again.
    fn retire(&self, ino: u64) -> Option<Destroyed> {
        let mut t = self.table.lock();
        let mut c = t.claim(ino, Mode::Write, None);
        self.settle(&mut t, &mut c);
        let d = MutexGuard::unlocked(&mut t, || {
            let mut m = self.meta.lock();
            if self.uses.lock().total.contains_key(&ino) {
                return None; // opened again meanwhile
            }
            let before = destroyed_info(&m, ino);
            match m.set_in_use(ino, false) {
                Ok(true) => before,
                Ok(false) => None,
                Err(e) => {
                    tracing::error!(ino, error = %e, "could not free a file its last user left unlinked");
                    None
                }
            }
        });
        t.finish(c);
        self.cv.notify_all();
        d
    }

    fn scan(&self, dir: Option<u64>, from: u64, max: usize, attr: Option<Vec<u8>>) -> Reply {
        let m = self.meta.lock();
        let entry = |name: Vec<u8>, i: Inode| {
            let dm = m.dm_info(i.ino.get());
            rpc::ScanEntry {
                name,
                inode: rpc::inode_bytes(&i),
                managed: dm.regions.is_some_and(|r| !r.is_empty()),
                attr: attr.as_ref().and_then(|a| dm.attrs.into_iter().find(|(n, _)| n == a).map(|(_, v)| v)),
            }
        };
        match dir {
            None => {
                let (inodes, next) = m.scan(from, max);
                Reply::Scanned { entries: inodes.into_iter().map(|i| entry(Vec::new(), i)).collect(), next }
            }
            Some(d) => match m.readdir(d) {
                Ok(list) => {
                    let start = (from as usize).min(list.len());
                    let end = (start + max).min(list.len());
                    let entries = list[start..end]
                        .iter()
                        .filter_map(|(n, ino, _)| m.getattr(*ino).ok().map(|i| entry(n.clone(), i)))
                        .collect();
                    Reply::Scanned { entries, next: if end < list.len() { end as u64 } else { 0 } }
                }
                Err(e) => err(e),
            },
        }
    }

    fn open_use(&self, m: &mut MetaStore, conn: u64, ino: u64) -> Result<(), MetaError> {
        m.getattr(ino)?;
        let mut u = self.uses.lock();
        *u.per.entry((conn, ino)).or_default() += 1;
        let t = u.total.entry(ino).or_default();
        *t += 1;
        if *t == 1 {
            m.set_in_use(ino, true)?;
        }
        Ok(())
    }

    /// Ends one open of `ino` by `conn`: `true` if the file was its last
    /// use and has no name left, so it must be retired.
    fn release_use(&self, m: &mut MetaStore, conn: u64, ino: u64) -> bool {
        let mut u = self.uses.lock();
        let Some(n) = u.per.get_mut(&(conn, ino)) else { return false };
        *n -= 1;
        if *n == 0 {
            u.per.remove(&(conn, ino));
        }
        let last = u.total.get_mut(&ino).is_some_and(|t| {
            *t = t.saturating_sub(1);
            *t == 0
        });
        if !last {
            return false;
        }
        u.total.remove(&ino);
        drop(u);
        !self.unuse_linked(m, ino)
    }

    /// Requests that never wait for another node run on the connection's
    /// thread; the rest get a thread, so that a client's token give-backs
    /// are never queued behind its own waiting request.
    fn dispatch(self: &Arc<Self>, peer: &Arc<Peer>, rid: u64, req: Req) {
        let reply = match req {
            // Handshake messages after the handshake.
            Req::Hello { .. } | Req::Auth { .. } => Reply::Err(libc::EPROTO),
            Req::Lookup { parent, name } => match self.meta.lock().lookup(parent, &name) {
                Ok(e) => Reply::Entry { ino: e.ino },
                Err(e) => err(e),
            },
            Req::Downgrade { ino, dirty } => {
                if let Some((size, mtime)) = dirty {
                    if let Err(e) = self.set_size(peer, ino, size, mtime, None) {
                        tracing::warn!(ino, errno = e, "size given back with a downgrade not recorded");
                    }
                }
                self.table.lock().downgrade(ino, peer.id);
                // A reader waiting in settle sees no conflict now.
                self.cv.notify_all();
                Reply::Done
            }
            Req::Parent { dir } => match self.meta.lock().parent_of(dir) {
                Ok((p, _)) => Reply::Entry { ino: p },
                Err(e) => err(e),
            },
            Req::PathOf { dir, target } => match self.meta.lock().path_of(dir, target) {
                Ok(p) => Reply::Path(p),
                Err(e) => err(e),
            },
            Req::ReadDir { dir } => match self.meta.lock().readdir(dir) {
                Ok(v) => Reply::Dir(v),
                Err(e) => err(e),
            },
            Req::StatFs => {
                let (blocks, bfree, files, ffree) = self.meta.lock().statfs();
                Reply::StatFs { blocks, bfree, files, ffree }
            }
            Req::GetLock { ino, owner, typ, start, end } => {
                let l = self.locks.lock();
                let held = l.files.get(&ino).and_then(|s| s.conflict((peer.id, owner), typ, start, end));
                Reply::Lock { held: held.map(|(_, lock)| lock) }
            }
            Req::CancelLockWait { ino, owner } => {
                *self.locks.lock().cancels.entry((peer.id, owner, ino)).or_default() += 1;
                self.locks_cv.notify_all();
                Reply::Done
            }
            // Unlocks never wait; locks may, on a thread of their own.
            Req::Lock { ino, owner, typ: None, start, end, pid, .. } => {
                self.lock(peer, ino, owner, None, (start, end), pid, false, false)
            }
            Req::Allocate { ino, lblk, count } => {
                let mut m = self.meta.lock();
                match m.allocate(ino, lblk, count) {
                    Ok(_) => Reply::Extents(rpc::extents_bytes(&m.extents(ino))),
                    Err(e) => err(e),
                }
            }
            Req::Flush { ino, size, mtime_ns, under } => match self.set_size(peer, ino, size, mtime_ns, under) {
                Ok(()) => Reply::Done,
                Err(e) => Reply::Err(e),
            },
            Req::Scan { dir, from, max, attr } => self.scan(dir, from, (max as usize).clamp(1, SCAN_MAX), attr),
            Req::Open { ino } => match self.open_use(&mut self.meta.lock(), peer.id, ino) {
                Ok(()) => Reply::Done,
                Err(e) => err(e),
            },
            Req::Release { ino } => {
                if !self.release_use(&mut self.meta.lock(), peer.id, ino) {
                    Reply::Released { destroyed: None }
                } else {
                    // Retiring waits for tokens to come back: not on this thread.
                    let (me, p) = (self.clone(), peer.clone());
                    let spawned = std::thread::Builder::new().name("fsmgr-retire".into()).spawn(move || {
                        let destroyed = me.retire(ino);
                        me.reply(&p, rid, &Reply::Released { destroyed });
                    });
                    if spawned.is_ok() {
                        return;
                    }
                    Reply::Err(libc::EAGAIN)
                }
            }
            other => {
                let (me, p) = (self.clone(), peer.clone());
                let spawned =
                    std::thread::Builder::new().name("fsmgr-op".into()).spawn(move || me.slow(&p, rid, other));
                if spawned.is_ok() {
                    return;
                }
                Reply::Err(libc::EAGAIN)
            }
        };
        self.reply(peer, rid, &reply);
    }

    /// Records a size and mtime `peer` set under its exclusive token on
    /// `ino` (or under the old manager's, in recovery). ESTALE if it does
    /// not hold that token: a size set under a token taken from it would
    /// undo changes made since by the node that got it.
    fn set_size(&self, peer: &Peer, ino: u64, size: u64, mtime: u64, under: Option<Under>) -> Result<(), i32> {
        // The store is held across the check: a grant to another node
        // reads the inode after this size, not before.
        let mut m = self.meta.lock();
        if !self.table.lock().may_set_size(ino, peer.id, under, Instant::now()) {
            tracing::warn!(client = %peer.name, node = peer.node, ino, "a size set under a token the node no longer holds; refused");
            return Err(libc::ESTALE);
        }
        m.apply_dirty(ino, size, mtime).map(|_| ()).map_err(|e| e.errno())
    }

    fn revoke_done(&self, peer: &Peer, d: RevokeDone) {
        if let Some((size, mtime)) = d.dirty {
            if let Err(e) = self.set_size(peer, d.ino, size, mtime, None) {
                tracing::warn!(ino = d.ino, errno = e, "size given back with a token not recorded");
            }
            // The holder has forgotten it: it must not be lost now.
            if let Err(e) = self.make_durable() {
                tracing::warn!(ino = d.ino, errno = e, "size given back with a token not recorded");
            }
        }
        self.table.lock().give_back(d.ino, peer.id);
        self.cv.notify_all();
    }

    /// A holder being revoked says a DM right holds its token: it is alive,
    /// and the revoke waits for the right's release.
    fn revoke_held(&self, conn: u64, ino: u64) {
        self.table.lock().held(ino, conn, Instant::now());
    }

    fn slow(&self, peer: &Arc<Peer>, rid: u64, req: Req) {
        match req {
            Req::Acquire { ino, mode } => self.acquire(peer, rid, ino, mode),
            Req::Create { parent, name, mode, uid, gid, symlink, open, rdev, at } => {
                self.op(peer, rid, &[(parent, true)], |m, p| {
                    let cred = Cred { uid, gid };
                    let made = match at {
                        Some(at) => m.create_at(parent, &name, mode, cred, at),
                        None => m.create_node(parent, &name, mode, cred, rdev),
                    };
                    let r = made.and_then(|i| {
                        if let Some(t) = &symlink {
                            self.write_symlink(m, i.ino.get(), t)
                        } else {
                            Ok(i)
                        }
                    });
                    // A new file comes with an exclusive token: its creator
                    // usually writes it next.
                    let grant = (symlink.is_none() && at.is_none()).then_some(Mode::Write);
                    let r = r.and_then(|i| {
                        if open {
                            self.open_use(m, p.id, i.ino.get())?;
                        }
                        Ok(i)
                    });
                    match r {
                        Ok(i) => (grant.map(|_| i.ino.get()), changed(m, Some(i), grant, &[parent], None)),
                        Err(e) => (None, err(e)),
                    }
                })
            }
            Req::Unlink { parent, name } => self.remove(peer, rid, parent, name, false),
            Req::Rmdir { parent, name } => self.remove(peer, rid, parent, name, true),
            Req::Link { ino, parent, name } => {
                self.op(peer, rid, &[(parent, true), (ino, false)], |m, _| match m.link(ino, parent, &name) {
                    Ok(i) => (None, changed(m, Some(i), None, &[parent], None)),
                    Err(e) => (None, err(e)),
                })
            }
            Req::Rename { sp, sname, dp, dname, noreplace } => self.rename(peer, rid, sp, sname, dp, dname, noreplace),
            Req::SetAttr { ino, set } => {
                self.op(peer, rid, &[(ino, false)], |m, _| match m.setattr(ino, &setattr_of(set)) {
                    Ok(i) => (None, Reply::Attr(rpc::inode_bytes(&i))),
                    Err(e) => (None, err(e)),
                })
            }
            Req::Fallocate { ino, mode, off, len } => {
                self.op(peer, rid, &[(ino, false)], |m, _| match m.fallocate(ino, mode, off, len) {
                    Ok(i) => (None, Reply::Attr(rpc::inode_bytes(&i))),
                    Err(e) => (None, err(e)),
                })
            }
            Req::DmChange { ino, change } => self.dm_op(peer, rid, ino, |m| m.dm_change(ino, &change)),
            Req::SetEventList { ino, mask } => self.dm_op(peer, rid, ino, |m| m.set_eventlist(ino, mask)),
            Req::Punch { ino, off, len } => self.dm_op(peer, rid, ino, |m| m.punch(ino, off, len)),
            Req::DmSetAttr { ino, set } => self.dm_op(peer, rid, ino, |m| m.setattr(ino, &setattr_of(set))),
            Req::SetXattr { ino, name, value, flags } => {
                self.dm_op(peer, rid, ino, |m| m.set_xattr(ino, &name, value.as_deref(), flags))
            }
            Req::Lock { ino, owner, typ, start, end, pid, wait, reclaim } => {
                let r = self.lock(peer, ino, owner, typ, (start, end), pid, wait, reclaim);
                self.reply(peer, rid, &r)
            }
            _ => self.reply(peer, rid, &Reply::Err(libc::EINVAL)),
        }
    }

    /// A DM change to one file: other nodes' tokens go, the requester keeps
    /// its own (a DM application changes files under its right) and gets
    /// the file's new state with it.
    fn dm_op(&self, peer: &Arc<Peer>, rid: u64, ino: u64, f: impl FnOnce(&mut MetaStore) -> Result<Inode, MetaError>) {
        // The holder of the exclusive token (a DM application under its
        // right) changes the file at once: nobody else holds anything, and
        // a node waiting for the token must not make it wait in turn.
        let exclusive = self.table.lock().mode(ino, peer.id);
        if exclusive == Some(Mode::Write) {
            let reply = {
                let mut m = self.meta.lock();
                match f(&mut m) {
                    Ok(i) => Reply::Granted {
                        ino,
                        mode: Mode::Write,
                        inode: rpc::inode_bytes(&i),
                        extents: rpc::extents_bytes(&m.extents(ino)),
                        dm: m.dm_info(ino),
                    },
                    Err(e) => err(e),
                }
            };
            self.reply(peer, rid, &reply);
            return;
        }
        self.op(peer, rid, &[(ino, true)], |m, p| match f(m) {
            Ok(i) => {
                let mode = self.table.lock().mode(ino, p.id);
                (
                    None,
                    Reply::Granted {
                        ino,
                        mode: mode.unwrap_or(Mode::None),
                        inode: rpc::inode_bytes(&i),
                        extents: rpc::extents_bytes(&m.extents(ino)),
                        dm: m.dm_info(ino),
                    },
                )
            }
            Err(e) => (None, err(e)),
        })
    }

    fn write_symlink(&self, m: &mut MetaStore, ino: u64, target: &[u8]) -> Result<Inode, MetaError> {
        let bs = m.block_size() as usize;
        let exts = m.allocate(ino, 0, target.len().div_ceil(bs).max(1) as u64)?;
        let mut buf = vec![0u8; target.len().div_ceil(bs).max(1) * bs];
        buf[..target.len()].copy_from_slice(target);
        let mut at = 0usize;
        for e in exts {
            let n = e.len.get() as usize * bs;
            self.dev.write(e.pblk.get(), &buf[at..at + n], true)?;
            at += n;
        }
        m.extend_size(ino, target.len() as u64)
    }

    // ---- tokens -------------------------------------------------------------

    /// Records that sizes set under connection `id`'s tokens are void
    /// ([`Journal::void_conn`](super::journal::Journal::void_conn)). If the
    /// write fails this manager is cut off the volume (fenced) or the
    /// volume failed; its journal writes fail the same way, so nothing it
    /// does after becomes durable.
    fn void_conn(&self, id: u64) {
        if let Err(e) = self.journal.lock().void_conn(id) {
            tracing::error!(conn = id, error = %e, "cannot record a client's tokens as taken back");
        }
    }

    /// Whether `peer` may still be granted tokens: not expelled, and its
    /// end not handled yet. Asked under the token table: the connection's
    /// end leaves `conns` before its tokens are dropped, so a grant either
    /// sees it gone or is dropped with the rest (the token simulation found
    /// a grant to a connection gone meanwhile staying behind, unrevocable).
    fn live(&self, peer: &Peer) -> bool {
        !peer.expelled.load(Ordering::Acquire) && self.conns.lock().contains_key(&peer.id)
    }

    /// Drives `c` until it is clear: its turn, and every conflicting token
    /// back (revokes sent, late holders expelled).
    fn settle(&self, t: &mut MutexGuard<'_, Tokens>, c: &mut Claim) {
        loop {
            match t.step(c, self.revoke_timeout(), Instant::now()) {
                Step::Clear => return,
                Step::Revoke(to) => {
                    let peers: Vec<Arc<Peer>> = {
                        let conns = self.conns.lock();
                        to.iter().filter_map(|id| conns.get(id).cloned()).collect()
                    };
                    MutexGuard::unlocked(t, || {
                        for p in peers {
                            p.send(Kind::Revoke, c.ino, &());
                        }
                    });
                }
                Step::Expel(late) => {
                    for id in late {
                        // Void on the volume before anyone else gets the token.
                        self.void_conn(id);
                        if let Some(p) = self.conns.lock().get(&id) {
                            tracing::error!(client = %p.name, node = p.node, ino = c.ino, "token not given back in time; expelling the client");
                            p.expel();
                        }
                    }
                    self.cv.notify_all();
                }
                Step::Wait(None) => self.cv.wait(t),
                Step::Wait(Some(until)) => {
                    self.cv.wait_until(t, until);
                }
            }
        }
    }

    /// Records, once, that tokens are out before the first is granted: a
    /// manager taking over then knows to recover them.
    fn mark_tokens_out(&self) -> Result<(), i32> {
        if self.tokens_marked.load(Ordering::Acquire) {
            return Ok(());
        }
        self.journal.lock().set_tokens_out(true).map_err(|e| {
            tracing::error!(error = %e, "cannot record in the journal that tokens are out; granting none");
            libc::EIO
        })?;
        self.tokens_marked.store(true, Ordering::Release);
        Ok(())
    }

    fn acquire(&self, peer: &Arc<Peer>, rid: u64, ino: u64, mode: Mode) {
        if let Err(e) = self.mark_tokens_out() {
            return self.reply(peer, rid, &Reply::Err(e));
        }
        let mut t = self.table.lock();
        let mut c = t.claim(ino, mode, Some(peer.id));
        self.settle(&mut t, &mut c);
        // Never hold the token table while waiting for the metadata lock:
        // namespace changes take them in the other order.
        let got = MutexGuard::unlocked(&mut t, || {
            let m = self.meta.lock();
            m.getattr(ino).map(|i| (i, m.extents(ino), m.dm_info(ino)))
        });
        let reply = match got {
            Ok((i, exts, dm)) => {
                if self.live(peer) {
                    t.grant(ino, peer.id, mode);
                }
                Reply::Granted { ino, mode, inode: rpc::inode_bytes(&i), extents: rpc::extents_bytes(&exts), dm }
            }
            Err(e) => err(e),
        };
        // Written before the turn ends: any revoke of this grant comes after it.
        MutexGuard::unlocked(&mut t, || self.reply(peer, rid, &reply));
        t.finish(c);
        self.cv.notify_all();
    }

    /// Runs a namespace change on `inos` (`true`: the requester keeps its
    /// token there), each taken from every other holder first. `f` returns
    /// the reply and a new inode to hold for the requester; the reply is
    /// written under the metadata lock, so nobody can learn of the new inode
    /// and revoke its token before the requester has it.
    fn op(
        &self,
        peer: &Arc<Peer>,
        rid: u64,
        inos: &[(u64, bool)],
        f: impl FnOnce(&mut MetaStore, &Peer) -> (Option<u64>, Reply),
    ) {
        let mut set: Vec<(u64, bool)> = Vec::new();
        for &(ino, keep) in inos {
            match set.iter_mut().find(|(i, _)| *i == ino) {
                Some(e) => e.1 &= keep,
                None => set.push((ino, keep)),
            }
        }
        set.sort();
        if let Err(e) = self.mark_tokens_out() {
            return self.reply(peer, rid, &Reply::Err(e));
        }
        let mut t = self.table.lock();
        let mut claims = Vec::with_capacity(set.len());
        for &(ino, keep) in &set {
            let mut c = t.claim(ino, Mode::Write, keep.then_some(peer.id));
            self.settle(&mut t, &mut c);
            claims.push(c);
        }
        MutexGuard::unlocked(&mut t, || {
            let (new, reply) = {
                let mut m = self.meta.lock();
                let (new, reply) = f(&mut m, peer);
                let mut turn = None;
                if let Some(ino) = new {
                    let mut t = self.table.lock();
                    if self.live(peer) {
                        t.grant(ino, peer.id, Mode::Write);
                    }
                    // The new inode's turn is held until the reply is out:
                    // nobody learns of it and has its token revoked before
                    // the requester has it (the reply waits for the
                    // journal, not under the store). If an old use of the
                    // number still has the turn, the batch is written here
                    // and the reply goes under the store instead.
                    turn = t.try_claim(ino);
                    if turn.is_none() {
                        drop(t);
                        let reply = match m.flush() {
                            Ok(()) => reply,
                            Err(e) => {
                                tracing::error!(error = %e, "journal write failed; metadata read back from the volume");
                                Reply::Err(libc::EIO)
                            }
                        };
                        return peer.send(Kind::Reply, rid, &reply);
                    }
                }
                (turn, reply)
            };
            self.reply(peer, rid, &reply);
            if let Some(c) = new {
                self.table.lock().finish(c);
                self.cv.notify_all();
            }
        });
        for c in claims {
            t.finish(c);
        }
        self.cv.notify_all();
    }

    fn remove(&self, peer: &Arc<Peer>, rid: u64, parent: u64, name: Vec<u8>, rmdir: bool) {
        let child = self.meta.lock().lookup(parent, &name).map(|e| e.ino);
        let Ok(child) = child else {
            return self.reply(peer, rid, &Reply::Err(libc::ENOENT));
        };
        self.op(peer, rid, &[(parent, true), (child, false)], |m, _| {
            // The entry may have changed while its tokens were taken back.
            if m.lookup(parent, &name).map(|e| e.ino).ok() != Some(child) {
                return (None, Reply::Err(libc::EAGAIN));
            }
            let before = destroyed_info(m, child);
            let r = if rmdir { m.rmdir(parent, &name) } else { m.unlink(parent, &name) };
            match r {
                Ok(()) => (None, changed(m, None, None, &[parent], gone(m, before))),
                Err(e) => (None, err(e)),
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn rename(&self, peer: &Arc<Peer>, rid: u64, sp: u64, sname: Vec<u8>, dp: u64, dname: Vec<u8>, noreplace: bool) {
        let (src, dst) = {
            let m = self.meta.lock();
            (m.lookup(sp, &sname).map(|e| e.ino), m.lookup(dp, &dname).map(|e| e.ino).ok())
        };
        let Ok(src) = src else {
            return self.reply(peer, rid, &Reply::Err(libc::ENOENT));
        };
        if noreplace && dst.is_some() {
            return self.reply(peer, rid, &Reply::Err(libc::EEXIST));
        }
        let mut inos = vec![(sp, true), (dp, true), (src, false)];
        if let Some(d) = dst {
            inos.push((d, false));
        }
        self.op(peer, rid, &inos, |m, _| {
            let now = (m.lookup(sp, &sname).map(|e| e.ino).ok(), m.lookup(dp, &dname).map(|e| e.ino).ok());
            if now != (Some(src), dst) {
                return (None, Reply::Err(libc::EAGAIN));
            }
            let before = dst.and_then(|d| destroyed_info(m, d));
            match m.rename(sp, &sname, dp, &dname) {
                Ok(()) => (None, changed(m, None, None, &[sp, dp], gone(m, before))),
                Err(e) => (None, err(e)),
            }
        })
    }
}

fn changed(
    m: &MetaStore,
    inode: Option<Inode>,
    grant: Option<Mode>,
    parents: &[u64],
    destroyed: Option<Destroyed>,
) -> Reply {
    Reply::Changed {
        inode: inode.map(|i| rpc::inode_bytes(&i)),
        grant,
        parents: parents.iter().filter_map(|p| m.getattr(*p).ok()).map(|i| rpc::inode_bytes(&i)).collect(),
        destroyed,
    }
}

fn setattr_of(set: rpc::WireSetAttr) -> SetAttr {
    SetAttr {
        mode: set.mode,
        uid: set.uid,
        gid: set.gid,
        size: set.size,
        atime_ns: set.atime_ns,
        mtime_ns: set.mtime_ns,
    }
}

/// What a destroy event says of `ino`, taken while it still exists.
fn destroyed_info(m: &MetaStore, ino: u64) -> Option<Destroyed> {
    let i = m.getattr(ino).ok()?;
    Some(Destroyed { ino, generation: i.generation.get(), attrs: m.dm_info(ino).attrs })
}

/// `before`, if the change freed that inode.
fn gone(m: &MetaStore, before: Option<Destroyed>) -> Option<Destroyed> {
    before.filter(|d| m.getattr(d.ino).is_err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDev;
    use crate::format::ROOT_INO;
    use crate::meta::MetaStore;
    use crate::remote::MetaClient;
    use crate::rpc::Credentials;
    use std::sync::atomic::AtomicBool;

    /// A volume whose FUA writes (the journal's) take 5 ms, counted, and
    /// can be made to fail.
    struct SlowFua {
        mem: MemDev,
        fua: AtomicU64,
        fail: AtomicBool,
    }

    impl BlockDev for SlowFua {
        fn block_size(&self) -> u32 {
            self.mem.block_size()
        }
        fn blocks(&self) -> u64 {
            self.mem.blocks()
        }
        fn read(&self, block: u64, buf: &mut [u8]) -> crate::Result<()> {
            self.mem.read(block, buf)
        }
        fn write(&self, block: u64, data: &[u8], fua: bool) -> crate::Result<()> {
            if fua {
                std::thread::sleep(Duration::from_millis(5));
                if self.fail.swap(false, Ordering::SeqCst) {
                    return Err(crate::FsError::Io("injected write error".into()));
                }
                self.fua.fetch_add(1, Ordering::SeqCst);
            }
            self.mem.write(block, data, fua)
        }
        fn flush(&self) -> crate::Result<()> {
            Ok(())
        }
    }

    fn create(c: &MetaClient, name: &str) -> Result<Reply, i32> {
        make(c, ROOT_INO, name, libc::S_IFREG | 0o644)
    }

    fn make(c: &MetaClient, parent: u64, name: &str, mode: u32) -> Result<Reply, i32> {
        c.ask(Req::Create {
            parent,
            name: name.as_bytes().to_vec(),
            mode,
            uid: 0,
            gid: 0,
            symlink: None,
            open: false,
            rdev: 0,
            at: None,
        })
    }

    fn volume() -> Arc<SlowFua> {
        let dev = Arc::new(SlowFua { mem: MemDev::new(4096, 64 << 20), fua: 0.into(), fail: false.into() });
        crate::mkfs::mkfs(&*dev, &Default::default()).unwrap();
        dev
    }

    /// Creates from eight clients at once, each in a directory of its own,
    /// share journal writes, and every one that was answered is on the
    /// volume after a crash (the volume's bytes as they are, no checkpoint,
    /// read by a new store).
    #[test]
    fn concurrent_creates_share_journal_writes_and_survive_a_crash() {
        let dev = volume();
        let h =
            Manager::open(dev.clone()).unwrap().serve("127.0.0.1:0".parse().unwrap(), Credentials::default()).unwrap();
        let setup = MetaClient::connect(h.addr, "setup", &Credentials::default()).unwrap();
        let dirs: Vec<u64> = (0..8)
            .map(|t| match make(&setup, ROOT_INO, &format!("d{t}"), libc::S_IFDIR | 0o755) {
                Ok(Reply::Changed { inode: Some(b), .. }) => rpc::inode_from(&b).unwrap().ino.get(),
                r => panic!("mkdir: {r:?}"),
            })
            .collect();
        let before = dev.fua.load(Ordering::SeqCst);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (addr, dir) = (h.addr, dirs[t]);
                std::thread::spawn(move || {
                    let c = MetaClient::connect(addr, &format!("t{t}"), &Credentials::default()).unwrap();
                    for k in 0..20 {
                        let r = make(&c, dir, &format!("f{k}"), libc::S_IFREG | 0o644);
                        assert!(matches!(r, Ok(Reply::Changed { .. })), "{r:?}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let writes = dev.fua.load(Ordering::SeqCst) - before;
        assert!(writes < 160, "160 creates, {writes} journal writes");
        let crashed = Arc::new(MemDev::new(4096, 64 << 20));
        crashed.restore(&dev.mem.snapshot());
        let m = MetaStore::open(crashed).unwrap();
        for (t, dir) in dirs.iter().enumerate() {
            for k in 0..20 {
                assert!(m.lookup(*dir, format!("f{k}").as_bytes()).is_ok(), "d{t}/f{k} after the crash");
            }
        }
        drop(h);
    }

    /// A journal write that fails: the operation it held gets EIO, memory
    /// goes back to the volume (the file is not there), and the next
    /// operation works.
    #[test]
    fn a_failed_journal_write_fails_its_operations_and_loses_nothing_else() {
        let dev = volume();
        let h =
            Manager::open(dev.clone()).unwrap().serve("127.0.0.1:0".parse().unwrap(), Credentials::default()).unwrap();
        let c = MetaClient::connect(h.addr, "c", &Credentials::default()).unwrap();
        assert!(matches!(create(&c, "kept"), Ok(Reply::Changed { .. })));
        dev.fail.store(true, Ordering::SeqCst);
        assert_eq!(create(&c, "lost").err(), Some(libc::EIO));
        let lookup = |n: &str| c.ask(Req::Lookup { parent: ROOT_INO, name: n.as_bytes().to_vec() });
        assert_eq!(lookup("lost").err(), Some(libc::ENOENT), "memory went back to the volume");
        assert!(lookup("kept").is_ok());
        assert!(matches!(create(&c, "after"), Ok(Reply::Changed { .. })));
        drop(h);
        let m = MetaStore::open(Arc::new({
            let d = MemDev::new(4096, 64 << 20);
            d.restore(&dev.mem.snapshot());
            d
        }))
        .unwrap();
        assert!(m.lookup(ROOT_INO, b"kept").is_ok() && m.lookup(ROOT_INO, b"after").is_ok());
        assert!(m.lookup(ROOT_INO, b"lost").is_err());
    }

    /// The manager protocol authenticates: a client with another cluster
    /// key, a node that is not a member, and a client that skips the
    /// handshake are all dropped before anything reaches the tables; a
    /// manager with another key is refused by the client.
    #[test]
    fn only_members_with_the_cluster_key_get_in() {
        use std::io::{Read, Write};
        let m = Manager::open(volume()).unwrap();
        m.set_members(Arc::new(|n| n == 1 || n == 2));
        let key = |node| Credentials::new(node, b"the key");
        let h = m.serve("127.0.0.1:0".parse().unwrap(), key(1)).unwrap();
        let denied = |r: io::Result<MetaClient>| r.err().map(|e| e.kind());
        let wrong = Credentials::new(2, b"another key");
        assert_eq!(denied(MetaClient::connect(h.addr, "wrong-key", &wrong)), Some(io::ErrorKind::PermissionDenied));
        assert_eq!(denied(MetaClient::connect(h.addr, "stranger", &key(9))), Some(io::ErrorKind::PermissionDenied));
        // Straight to a request, no hello: the connection is closed unanswered.
        let mut raw = TcpStream::connect(h.addr).unwrap();
        rpc::send(&mut raw, Kind::Req, 1, &Req::Lookup { parent: ROOT_INO, name: b"x".to_vec() }).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        assert_eq!(raw.read_to_end(&mut got).unwrap(), 0, "nothing answered: {got:?}");
        let _ = raw.write_all(b"more");
        assert!(m.conns.lock().is_empty(), "no refused client is on the books");
        // A member with the key works, and a manager with another key is refused.
        let c = MetaClient::connect(h.addr, "member", &key(2)).unwrap();
        assert!(matches!(create(&c, "in"), Ok(Reply::Changed { .. })));
        let other = Manager::open(volume()).unwrap().serve("127.0.0.1:0".parse().unwrap(), wrong.clone()).unwrap();
        assert_eq!(denied(MetaClient::connect(other.addr, "c", &key(2))), Some(io::ErrorKind::PermissionDenied));
    }

    /// A manager tells clients its term, and the handshake refuses a
    /// deposed one: a client that found a later term in etcd is turned away
    /// by a manager of an older one, and a client turns away a manager
    /// whose term is older than the one it looks for.
    #[test]
    fn a_manager_of_an_older_term_and_its_clients_refuse_each_other() {
        let m = Manager::open(volume()).unwrap();
        m.set_term(7);
        let h = m.serve("127.0.0.1:0".parse().unwrap(), Credentials::default()).unwrap();
        let at = |epoch: u64| -> crate::remote::Resolver { Arc::new(move || Ok((h.addr, epoch))) };
        let kind = |r: io::Result<MetaClient>| r.err().map(|e| e.kind());
        let newer = MetaClient::connect_resolved(at(9), "newer", &Credentials::default());
        assert_eq!(kind(newer), Some(io::ErrorKind::ConnectionRefused));
        assert!(m.conns.lock().is_empty(), "a refused client is not on the books");
        for epoch in [7, 3, 0] {
            let c = MetaClient::connect_resolved(at(epoch), "c", &Credentials::default()).unwrap();
            assert!(matches!(create(&c, &format!("in-{epoch}")), Ok(Reply::Changed { .. })), "term {epoch}");
        }
        // A manager of no term does not check, so the client refuses it
        // itself when it looks for one; a client of no term takes it.
        m.set_term(0);
        let c = MetaClient::connect_resolved(at(9), "c", &Credentials::default());
        assert_eq!(kind(c), Some(io::ErrorKind::ConnectionRefused), "a manager of no term, a client of term 9");
        assert!(MetaClient::connect_resolved(at(0), "c", &Credentials::default()).is_ok());
    }

    /// A node expelled (it left the cluster) loses its connections and
    /// tokens at once: another node's conflicting request is granted
    /// without waiting for a revoke to time out.
    #[test]
    fn an_expelled_node_loses_its_tokens_at_once() {
        let m = Manager::open(volume()).unwrap();
        m.set_revoke_timeout(Duration::from_secs(60));
        let h = m.serve("127.0.0.1:0".parse().unwrap(), Credentials::default()).unwrap();
        let gone = MetaClient::connect(h.addr, "gone", &Credentials::new(2, rpc::DEV_KEY)).unwrap();
        let other = MetaClient::connect(h.addr, "other", &Credentials::new(3, rpc::DEV_KEY)).unwrap();
        // Node 2 holds the root exclusive under a DM right, so a revoke would wait.
        let (slot, _) = gone.ensure(ROOT_INO, Mode::Write).unwrap();
        slot.st.lock().pins += 1;
        // Out of the cluster, as etcd would say: its reconnections are refused.
        m.set_members(Arc::new(|n| n != 2));
        assert_eq!(m.expel_node(2), 1);
        assert_eq!(m.expel_node(9), 0);
        let t = Instant::now();
        other.ensure(ROOT_INO, Mode::Write).unwrap();
        assert!(t.elapsed() < Duration::from_secs(30), "the grant waited for the expelled node");
        // (Its connection thread takes it out of the table after the tokens.)
        while m.conns.lock().values().any(|p| p.node == 2) {
            assert!(t.elapsed() < Duration::from_secs(10), "the expelled node is still connected");
            std::thread::sleep(Duration::from_millis(10));
        }
        gone.close();
    }

    /// Sizes count only under the token they were set under: refused from
    /// a node without one, taken from its holder; and a restarted manager
    /// takes back, in its recovery, those set under its predecessor's
    /// tokens, except on a connection that predecessor voided.
    #[test]
    fn sizes_count_under_their_token_and_a_successor_recovers_them() {
        let dev = volume();
        let m1 = Manager::open(dev.clone()).unwrap();
        let h1 = m1.serve("127.0.0.1:0".parse().unwrap(), Credentials::default()).unwrap();
        let a = MetaClient::connect(h1.addr, "a", &Credentials::default()).unwrap();
        let b = MetaClient::connect(h1.addr, "b", &Credentials::default()).unwrap();
        let ino = |r: Result<Reply, i32>| match r {
            Ok(Reply::Changed { inode: Some(i), grant: Some(Mode::Write), .. }) => {
                rpc::inode_from(&i).unwrap().ino.get()
            }
            r => panic!("create: {r:?}"),
        };
        let f = ino(create(&a, "f"));
        let g = ino(create(&b, "g"));
        let flush = |c: &MetaClient, ino: u64, size: u64, under: Option<Under>| {
            c.ask(Req::Flush { ino, size, mtime_ns: 1, under }).map(|_| ())
        };
        let a_tag = a.slot(f).st.lock().under;
        let b_tag = b.slot(g).st.lock().under;
        assert_ne!(a_tag.1, b_tag.1, "each connection has its own id");
        assert_eq!(flush(&b, f, 1 << 20, Some(b_tag)), Err(libc::ESTALE), "a size from a node without the token");
        assert_eq!(flush(&a, f, 4096, Some(a_tag)), Ok(()), "its holder's");
        // Node b goes holding an exclusive token: its sizes are void.
        b.close();
        let t = Instant::now();
        while m1.conns.lock().len() > 1 {
            assert!(t.elapsed() < Duration::from_secs(10), "b's connection did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The manager stops with a's tokens out; the next one recovers.
        drop(h1);
        drop(m1);
        a.close();
        let m2 = Manager::open_with_grace(dev.clone(), Duration::from_millis(600)).unwrap();
        let h2 = m2.serve("127.0.0.1:0".parse().unwrap(), Credentials::default()).unwrap();
        let c = MetaClient::connect(h2.addr, "c", &Credentials::default()).unwrap();
        assert_eq!(flush(&c, f, 8192, Some(a_tag)), Ok(()), "set under the last manager's token");
        assert_eq!(flush(&c, g, 8192, Some(b_tag)), Err(libc::ESTALE), "set on a connection it voided");
        assert_eq!(flush(&c, f, 1 << 20, Some((a_tag.0 - 1, a_tag.1))), Err(libc::ESTALE), "an older manager's");
        let t = Instant::now();
        let (_, i) = c.ensure(f, Mode::Read).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300), "granted during the recovery: {:?}", t.elapsed());
        assert_eq!(i.size.get(), 8192);
        assert_eq!(c.ensure(g, Mode::Read).unwrap().1.size.get(), 0);
        assert_eq!(flush(&c, f, 1 << 20, Some(a_tag)), Err(libc::ESTALE), "after the recovery");
        c.close();
    }
}
