//! A mounting node's side of the manager protocol: one TCP connection to
//! the file system's manager, requests from many threads at once, and the
//! node's token cache.
//!
//! Grants and revokes are applied by the connection's receive thread in
//! the order the manager wrote them, so a revoke never overtakes the grant
//! it revokes. A revoke makes the token unusable at once (new users ask
//! the manager again); a worker thread then waits for the I/O already
//! running on that inode, and gives the token back with the size and mtime
//! set under it.
//!
//! If the manager goes away (crash, restart) every token is void: the
//! client reconnects in the background, flushes the sizes it still has to
//! give back, and requests that are safe to repeat are sent again; namespace
//! changes that were in flight fail with EIO because nobody can say whether
//! they happened.

use super::format::{DmInfo, Extent, Inode};
use super::locks::{LockSet, LockType, EOF};
use super::rpc::{self, Kind, Mode, Reply, Req, RevokeDone};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a request waits for the manager to come back before EIO.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(60);

/// One inode's cached state on this node.
pub struct Slot {
    /// Data I/O holds this shared; giving the token back takes it exclusive,
    /// so a revoke waits for the reads and writes already under way.
    pub io: RwLock<()>,
    pub st: Mutex<SlotState>,
    /// Signalled when a pin (DM right) is released.
    pub unpinned: Condvar,
}

#[derive(Default)]
pub struct SlotState {
    pub mode: Option<Mode>,
    /// Bumped by every revoke: something read before a revoke is not
    /// cached after it.
    pub gen: u64,
    pub inode: Option<Inode>,
    pub extents: Vec<Extent>,
    /// Size and mtime set here under an exclusive token, not yet given back.
    pub dirty: Option<(u64, u64)>,
    /// The token `dirty` was set under ([`crate::tokens::Under`]): said
    /// when it is given back to a manager recovering from that one's.
    pub under: (u64, u64),
    /// Directory names looked up under a shared token (None: no such name).
    pub names: HashMap<Vec<u8>, Option<u64>>,
    /// Managed regions and DM attributes, as of the grant.
    pub dm: DmInfo,
    /// Held as a DM access right: a revoke waits until it is released.
    pub pins: u32,
    /// Opens of this file on this node, said again to a manager that
    /// restarted so that an unlinked open file is not freed under us.
    pub opens: u32,
}

impl SlotState {
    pub fn holds(&self, want: Mode) -> bool {
        self.mode.is_some_and(|m| m >= want) && self.inode.is_some()
    }
}

struct Waiter {
    done: Mutex<Option<io::Result<Reply>>>,
    cv: Condvar,
}

struct Link {
    out: Mutex<TcpStream>,
}

/// Where the manager is now (it moves when another node takes the role
/// over) and the term it holds the role in: asked again before every
/// reconnection attempt.
pub type Resolver = Arc<dyn Fn() -> io::Result<(SocketAddr, u64)> + Send + Sync>;

struct Inner {
    addr: Mutex<SocketAddr>,
    /// The manager's term as last resolved (0: any); one of an older term
    /// is refused at the handshake.
    epoch: AtomicU64,
    resolve: Mutex<Option<Resolver>>,
    name: String,
    creds: rpc::Credentials,
    link: Mutex<Option<Arc<Link>>>,
    link_cv: Condvar,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Arc<Waiter>>>,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    revokes: Mutex<Option<mpsc::Sender<u64>>>,
    closing: AtomicBool,
    hello: Mutex<Option<(u32, [u8; 16])>>,
    /// The manager incarnation and connection id of the current link:
    /// what tokens granted now are known by.
    under: Mutex<(u64, u64)>,
    /// The record locks this node's processes hold, by inode and lock
    /// owner, declared again to a manager that restarted; and how many
    /// waits for one each owner has outstanding.
    locks: Mutex<NodeLocks>,
}

#[derive(Default)]
struct NodeLocks {
    held: HashMap<u64, LockSet<u64>>,
    waiting: HashMap<(u64, u64), u32>,
}

/// The connection to a file system's manager, shared by all FUSE threads.
#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

fn eio(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, why.to_string())
}

impl MetaClient {
    /// Connects to the manager at `addr` as the node of `creds`; `name`
    /// identifies this client in the manager's log. A manager that does not
    /// prove the cluster key, or refuses this node, is an error of kind
    /// `PermissionDenied`.
    pub fn connect(addr: SocketAddr, name: &str, creds: &rpc::Credentials) -> io::Result<MetaClient> {
        Self::connect_in(addr, 0, None, name, creds)
    }

    /// Connects to the manager `r` names, in the term it names, and finds
    /// it through `r` again whenever the connection is lost
    /// ([`MetaClient::set_resolver`]).
    pub fn connect_resolved(r: Resolver, name: &str, creds: &rpc::Credentials) -> io::Result<MetaClient> {
        let (addr, epoch) = r()?;
        Self::connect_in(addr, epoch, Some(r), name, creds)
    }

    fn connect_in(
        addr: SocketAddr,
        epoch: u64,
        resolve: Option<Resolver>,
        name: &str,
        creds: &rpc::Credentials,
    ) -> io::Result<MetaClient> {
        let (tx, rx) = mpsc::channel::<u64>();
        let inner = Arc::new(Inner {
            addr: Mutex::new(addr),
            epoch: AtomicU64::new(epoch),
            resolve: Mutex::new(resolve),
            name: name.to_string(),
            creds: creds.clone(),
            link: Mutex::new(None),
            link_cv: Condvar::new(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            revokes: Mutex::new(Some(tx)),
            closing: AtomicBool::new(false),
            hello: Mutex::new(None),
            under: Mutex::new((0, 0)),
            locks: Mutex::new(NodeLocks::default()),
        });
        let c = MetaClient { inner };
        c.open_link()?;
        let w = c.clone();
        std::thread::Builder::new().name("fs-revoke".into()).spawn(move || {
            for ino in rx {
                w.give_back(ino);
            }
        })?;
        Ok(c)
    }

    /// Finds the manager through `r` whenever the connection is lost (the
    /// role may have moved to another node), instead of the first address.
    pub fn set_resolver(&self, r: Resolver) {
        *self.inner.resolve.lock() = Some(r);
    }

    /// Asks the resolver where the manager is now; if that is not where
    /// this client is connected (the role moved, or nobody holds it: the
    /// holder may be frozen behind a live connection), drops the connection
    /// so that it reconnects to the holder. Whether it dropped it.
    pub fn recheck_manager(&self) -> bool {
        let Some(r) = self.inner.resolve.lock().clone() else { return false };
        let now = (*self.inner.addr.lock(), self.inner.epoch.load(Ordering::Acquire));
        if r().is_ok_and(|at| at == now) {
            return false;
        }
        let now = now.0;
        let link = self.inner.link.lock().clone();
        match link {
            Some(l) => {
                tracing::warn!(manager = %now, "the manager's role moved; reconnecting");
                let _ = l.out.lock().shutdown(Shutdown::Both);
                true
            }
            None => false,
        }
    }

    /// Where the manager is (as last connected to).
    pub fn manager_addr(&self) -> SocketAddr {
        *self.inner.addr.lock()
    }

    /// Block size and file-system id, as the manager reported them.
    pub fn fs_info(&self) -> (u32, [u8; 16]) {
        self.inner.hello.lock().unwrap_or((4096, [0; 16]))
    }

    fn open_link(&self) -> io::Result<()> {
        let addr = *self.inner.addr.lock();
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut r = BufReader::with_capacity(64 * 1024, s.try_clone()?);
        let mut out = s;
        // The handshake runs before the receive thread exists, bounded in time.
        out.set_read_timeout(Some(rpc::HANDSHAKE_WAIT))?;
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let w = rpc::handshake_client(&mut r, &mut out, &self.inner.creds, &self.inner.name, epoch)?;
        out.set_read_timeout(None)?;
        *self.inner.hello.lock() = Some((w.block_size, w.fsid));
        *self.inner.under.lock() = w.under;
        let link = Arc::new(Link { out: Mutex::new(out) });
        *self.inner.link.lock() = Some(link.clone());
        self.inner.link_cv.notify_all();
        let me = self.clone();
        std::thread::Builder::new().name("fs-recv".into()).spawn(move || me.receive(r, link))?;
        tracing::info!(manager = %addr, "connected to the file-system manager");
        Ok(())
    }

    fn receive(self, mut r: BufReader<TcpStream>, link: Arc<Link>) {
        let why = loop {
            let (kind, id, body) = match rpc::recv(&mut r) {
                Ok(m) => m,
                Err(e) => break e,
            };
            match kind {
                Kind::Reply => match rpc::decode::<Reply>(&body) {
                    Ok(reply) => {
                        self.apply(&reply);
                        if let Some(w) = self.inner.pending.lock().remove(&id) {
                            *w.done.lock() = Some(Ok(reply));
                            w.cv.notify_all();
                        }
                    }
                    Err(e) => break e,
                },
                Kind::Revoke => self.revoke(id),
                _ => break io::Error::new(io::ErrorKind::InvalidData, "unexpected message from the manager"),
            }
        };
        self.link_lost(&link, why);
    }

    /// Installs what a reply grants, before anything later on the wire.
    fn apply(&self, reply: &Reply) {
        match reply {
            Reply::Granted { ino, mode, inode, extents, dm } => {
                let (Ok(i), Ok(e)) = (rpc::inode_from(inode), rpc::extents_from(extents)) else { return };
                let slot = self.slot(*ino);
                let mut st = slot.st.lock();
                if *mode == Mode::None && st.mode.is_none() {
                    // A refresh of a file this node holds no token on: nothing to cache.
                    return;
                }
                st.mode = Some(st.mode.map_or(*mode, |m| m.max(*mode)));
                if st.dirty.is_none() {
                    st.under = *self.inner.under.lock();
                }
                st.dm = dm.clone();
                let keep_size = st.dirty.map(|d| d.0);
                st.inode = Some(i);
                if let (Some(sz), Some(i)) = (keep_size, st.inode.as_mut()) {
                    // Still ours to give back: the manager's copy lags.
                    if sz > i.size.get() {
                        i.size = sz.into();
                    }
                }
                st.extents = e;
            }
            Reply::Changed { inode, grant, parents, .. } => {
                if let (Some(b), Some(m)) = (inode, grant) {
                    if let Ok(i) = rpc::inode_from(b) {
                        let slot = self.slot(i.ino.get());
                        let mut st = slot.st.lock();
                        st.mode = Some(*m);
                        st.under = *self.inner.under.lock();
                        st.inode = Some(i);
                        st.extents.clear();
                        // A new inode: nothing of an earlier one of that number.
                        st.dm = DmInfo::default();
                        st.names.clear();
                    }
                }
                for p in parents.iter().filter_map(|b| rpc::inode_from(b).ok()) {
                    if let Some(slot) = self.inner.slots.lock().get(&p.ino.get()) {
                        let mut st = slot.st.lock();
                        if st.holds(Mode::Read) {
                            st.inode = Some(p);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn revoke(&self, ino: u64) {
        let slot = self.inner.slots.lock().get(&ino).cloned();
        match slot {
            Some(slot) => {
                let held = {
                    let mut st = slot.st.lock();
                    // Under a DM right the holder keeps using the token until
                    // it releases the right; it is given back then.
                    if st.pins == 0 {
                        st.mode = None;
                        st.gen += 1;
                        st.names.clear();
                    }
                    st.pins > 0
                };
                if held {
                    // A thread of its own, so the other inodes' revokes do
                    // not wait behind the right; the token goes back once
                    // every right on the inode here is released.
                    self.send_held(ino);
                    let me = self.clone();
                    let spawned =
                        std::thread::Builder::new().name("fs-revoke-held".into()).spawn(move || me.give_back(ino));
                    if spawned.is_ok() {
                        return;
                    }
                }
                if let Some(tx) = self.inner.revokes.lock().as_ref() {
                    let _ = tx.send(ino);
                }
            }
            None => self.send_done(RevokeDone { ino, dirty: None }),
        }
    }

    /// The revoke worker: wait for I/O in flight, then hand the token back.
    fn give_back(&self, ino: u64) {
        let Some(slot) = self.inner.slots.lock().get(&ino).cloned() else {
            return self.send_done(RevokeDone { ino, dirty: None });
        };
        {
            let mut st = slot.st.lock();
            // A DM right holds the token until the application releases it
            // (and keeps I/O under the right going meanwhile).
            // Said again and again, so the manager does not take this
            // node for dead while the application keeps its right.
            while st.pins > 0 {
                if slot.unpinned.wait_for(&mut st, rpc::HELD_NOTE).timed_out() && st.pins > 0 {
                    parking_lot::MutexGuard::unlocked(&mut st, || self.send_held(ino));
                }
            }
            st.mode = None;
            st.gen += 1;
            st.names.clear();
        }
        let _io = slot.io.write();
        let dirty = {
            let mut st = slot.st.lock();
            st.inode = None;
            st.extents.clear();
            st.dirty.take()
        };
        self.send_done(RevokeDone { ino, dirty });
    }

    /// Tells the manager a revoked token is held under a DM right.
    fn send_held(&self, ino: u64) {
        let link = self.inner.link.lock().clone();
        if let Some(l) = link {
            let _ = rpc::send(&mut *l.out.lock(), Kind::RevokeHeld, ino, &());
        }
    }

    fn send_done(&self, d: RevokeDone) {
        let link = self.inner.link.lock().clone();
        if let Some(l) = link {
            let _ = rpc::send(&mut *l.out.lock(), Kind::RevokeDone, d.ino, &d);
        }
    }

    fn link_lost(&self, link: &Arc<Link>, why: io::Error) {
        let _ = link.out.lock().shutdown(Shutdown::Both);
        {
            let mut cur = self.inner.link.lock();
            if cur.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
                *cur = None;
            }
        }
        for (_, w) in self.inner.pending.lock().drain() {
            *w.done.lock() = Some(Err(eio("connection to the manager lost")));
            w.cv.notify_all();
        }
        // Every token is void now; sizes still to give back stay in `dirty`.
        for slot in self.inner.slots.lock().values() {
            let mut st = slot.st.lock();
            st.mode = None;
            st.gen += 1;
            st.names.clear();
            st.inode = None;
            st.extents.clear();
        }
        if self.inner.closing.load(Ordering::Acquire) {
            return;
        }
        tracing::warn!(manager = %*self.inner.addr.lock(), error = %why, "lost the file-system manager; reconnecting");
        let me = self.clone();
        let _ = std::thread::Builder::new().name("fs-reconnect".into()).spawn(move || me.reconnect());
    }

    fn reconnect(self) {
        let start = Instant::now();
        loop {
            if self.inner.closing.load(Ordering::Acquire) {
                return;
            }
            let resolver = self.inner.resolve.lock().clone();
            if let Some(r) = resolver {
                match r() {
                    Ok((a, epoch)) => {
                        *self.inner.addr.lock() = a;
                        self.inner.epoch.store(epoch, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "no manager to reconnect to yet");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            }
            match self.open_link() {
                Ok(()) => break,
                Err(e) => {
                    if start.elapsed() > Duration::from_secs(5) {
                        tracing::debug!(error = %e, "manager still unreachable");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        tracing::info!(after_ms = start.elapsed().as_millis() as u64, "file-system manager back");
        // The files open here, before the restarted manager frees the
        // unlinked ones among them.
        let open: Vec<(u64, u32)> =
            self.inner.slots.lock().iter().map(|(k, v)| (*k, v.st.lock().opens)).filter(|(_, n)| *n > 0).collect();
        for (ino, n) in open {
            for _ in 0..n {
                if let Err(e) = self.call(Req::Open { ino }) {
                    tracing::error!(ino, error = %e, "could not tell the manager of an open file after reconnecting");
                }
            }
        }
        // The locks held here, before the restarted manager's grace ends.
        let held: Vec<(u64, u64, super::locks::Lock)> = {
            let l = self.inner.locks.lock();
            l.held.iter().flat_map(|(ino, set)| set.iter().map(|(owner, lk)| (*ino, *owner, *lk))).collect()
        };
        for (ino, owner, lk) in held {
            let req = Req::Lock {
                ino,
                owner,
                typ: Some(lk.typ),
                start: lk.start,
                end: lk.end,
                pid: lk.pid,
                wait: false,
                reclaim: true,
            };
            if !matches!(self.call(req), Ok(Reply::Done)) {
                tracing::error!(ino, owner, "a record lock held here could not be declared to the restarted manager");
            }
        }
        // Sizes written under tokens of the old manager: after the writes
        // still running finish.
        let slots: Vec<(u64, Arc<Slot>)> = self.inner.slots.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
        for (ino, slot) in slots {
            let _io = slot.io.write();
            let d = {
                let mut st = slot.st.lock();
                st.dirty.take().map(|d| (d, st.under))
            };
            if let Some(((size, mtime_ns), under)) = d {
                if let Err(e) = self.ask(Req::Flush { ino, size, mtime_ns, under: Some(under) }) {
                    // ESTALE: set under a token taken from this node (or
                    // given back too late): newer changes win.
                    tracing::error!(
                        ino,
                        size,
                        errno = e,
                        "a file size set here could not be given back after reconnecting; dropped"
                    );
                }
            }
        }
    }

    pub fn slot(&self, ino: u64) -> Arc<Slot> {
        self.inner
            .slots
            .lock()
            .entry(ino)
            .or_insert_with(|| {
                Arc::new(Slot { io: RwLock::new(()), st: Mutex::new(SlotState::default()), unpinned: Condvar::new() })
            })
            .clone()
    }

    /// Sends a request and waits for its reply. Safe-to-repeat requests
    /// ride out a manager restart; the others fail with an I/O error.
    pub fn call(&self, req: Req) -> io::Result<Reply> {
        let deadline = Instant::now() + RECONNECT_WAIT;
        loop {
            let link = {
                let mut l = self.inner.link.lock();
                while l.is_none() {
                    if self.inner.closing.load(Ordering::Acquire)
                        || self.inner.link_cv.wait_until(&mut l, deadline).timed_out()
                    {
                        return Err(eio("the file-system manager is unreachable"));
                    }
                }
                l.clone().unwrap_or_else(|| unreachable!())
            };
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let w = Arc::new(Waiter { done: Mutex::new(None), cv: Condvar::new() });
            self.inner.pending.lock().insert(id, w.clone());
            if rpc::send(&mut *link.out.lock(), Kind::Req, id, &req).is_err() {
                self.inner.pending.lock().remove(&id);
                let _ = link.out.lock().shutdown(Shutdown::Both);
                if req.idempotent() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                return Err(eio("connection to the manager lost"));
            }
            let mut d = w.done.lock();
            while d.is_none() {
                w.cv.wait(&mut d);
            }
            match d.take().unwrap_or_else(|| unreachable!()) {
                Ok(r) => return Ok(r),
                Err(e) if req.idempotent() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "repeating a request after losing the manager");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets (`typ` `Some`) or removes a record lock of the kernel's lock
    /// `owner` through the manager, waiting for it if `wait`, and keeps
    /// this node's copy of the locks it holds.
    #[allow(clippy::too_many_arguments)]
    pub fn lock(
        &self,
        ino: u64,
        owner: u64,
        typ: Option<LockType>,
        start: u64,
        end: u64,
        pid: u32,
        wait: bool,
    ) -> Result<(), i32> {
        let key = (ino, owner);
        if wait {
            *self.inner.locks.lock().waiting.entry(key).or_default() += 1;
        }
        let r = self.ask(Req::Lock { ino, owner, typ, start, end, pid, wait, reclaim: false });
        let mut l = self.inner.locks.lock();
        if wait {
            if let Some(n) = l.waiting.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    l.waiting.remove(&key);
                }
            }
        }
        if r.is_ok() {
            let set = l.held.entry(ino).or_default();
            set.set(owner, typ, start, end, pid);
            if set.is_empty() {
                l.held.remove(&ino);
            }
        }
        r.map(|_| ())
    }

    /// Lets go of every lock `owner` holds on `ino`, and of its waits (a
    /// close: POSIX locks go with any close by their process, flocks with
    /// the last close of their open file). Costs a manager round trip only
    /// if the owner holds or waits for one.
    pub fn unlock_all(&self, ino: u64, owner: u64) -> Result<(), i32> {
        let any = {
            let l = self.inner.locks.lock();
            l.held.get(&ino).is_some_and(|s| s.holds_any(owner)) || l.waiting.contains_key(&(ino, owner))
        };
        if !any {
            return Ok(());
        }
        self.lock(ino, owner, None, 0, EOF, 0, false)
    }

    /// Like [`call`](Self::call), with errors as errnos.
    pub fn ask(&self, req: Req) -> Result<Reply, i32> {
        match self.call(req) {
            Ok(Reply::Err(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(_) => Err(libc::EIO),
        }
    }

    /// This node's copy of `ino`'s attributes under a token of at least
    /// `mode`, asking the manager for one if needed.
    pub fn ensure(&self, ino: u64, mode: Mode) -> Result<(Arc<Slot>, Inode), i32> {
        let slot = self.slot(ino);
        for _ in 0..1000 {
            {
                let st = slot.st.lock();
                if st.holds(mode) {
                    if let Some(i) = st.inode {
                        return Ok((slot.clone(), i));
                    }
                }
            }
            match self.ask(Req::Acquire { ino, mode })? {
                Reply::Granted { inode, .. } => {
                    // Installed by the receive thread; if it was taken back at
                    // once, the attributes of the grant are still current as
                    // of the request, which is all a caller of attrs needs.
                    let st = slot.st.lock();
                    if !st.holds(mode) && mode == Mode::Read {
                        return rpc::inode_from(&inode).map(|i| (slot.clone(), i)).map_err(|_| libc::EIO);
                    }
                }
                _ => return Err(libc::EIO),
            }
        }
        Err(libc::EAGAIN)
    }

    /// Holds a token of at least `mode` on `ino` until [`unpin`](Self::unpin):
    /// a DM access right. Conflicting access anywhere in the cluster waits.
    pub fn pin(&self, ino: u64, mode: Mode) -> Result<(), i32> {
        for _ in 0..1000 {
            let (slot, _) = self.ensure(ino, mode)?;
            let mut st = slot.st.lock();
            if st.holds(mode) {
                st.pins += 1;
                return Ok(());
            }
        }
        Err(libc::EAGAIN)
    }

    /// Turns this node's exclusive token on `ino` into a shared one without
    /// giving it up (`dm_downgrade_right`): I/O under it finishes and the
    /// size and mtime set under it go back with the request, after which
    /// other nodes may read.
    pub fn downgrade(&self, ino: u64) -> Result<(), i32> {
        let slot = self.slot(ino);
        let _io = slot.io.write();
        let dirty = {
            let mut st = slot.st.lock();
            if st.mode != Some(Mode::Write) {
                return Ok(());
            }
            st.mode = Some(Mode::Read);
            st.dirty.take()
        };
        match self.ask(Req::Downgrade { ino, dirty }) {
            Ok(Reply::Done) => Ok(()),
            r => {
                // Still exclusive at the manager: keep it so here too.
                let mut st = slot.st.lock();
                st.mode = Some(Mode::Write);
                if st.dirty.is_none() {
                    st.dirty = dirty;
                }
                Err(r.err().unwrap_or(libc::EIO))
            }
        }
    }

    pub fn unpin(&self, ino: u64) {
        let slot = self.slot(ino);
        let mut st = slot.st.lock();
        st.pins = st.pins.saturating_sub(1);
        drop(st);
        slot.unpinned.notify_all();
    }

    /// Gives every token held here back (a clean unmount, nothing in
    /// flight), with the sizes set under them, so that the manager knows
    /// none is out. Returns once the manager has taken them in.
    pub fn give_back_all(&self) {
        let Some(l) = self.inner.link.lock().clone() else { return };
        let slots: Vec<(u64, Arc<Slot>)> = self.inner.slots.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
        for (ino, slot) in slots {
            let _io = slot.io.write();
            let mut st = slot.st.lock();
            // A DM right keeps its token (its application lets go of it).
            if st.mode.is_none() || st.pins > 0 {
                continue;
            }
            st.mode = None;
            st.gen += 1;
            st.names.clear();
            st.inode = None;
            st.extents.clear();
            let dirty = st.dirty.take();
            drop(st);
            let _ = rpc::send(&mut *l.out.lock(), Kind::RevokeDone, ino, &RevokeDone { ino, dirty });
        }
        // Taken in order on the connection: answered, it has them all.
        let _ = self.call(Req::StatFs);
    }

    /// Stops reconnecting; pending and later calls fail.
    pub fn close(&self) {
        self.inner.closing.store(true, Ordering::Release);
        *self.inner.revokes.lock() = None;
        if let Some(l) = self.inner.link.lock().take() {
            let _ = l.out.lock().shutdown(Shutdown::Both);
        }
        self.inner.link_cv.notify_all();
    }

    /// Gives back every size and mtime this node still holds (unmount, sync).
    pub fn flush_all(&self) -> Result<(), i32> {
        let slots: Vec<(u64, Arc<Slot>)> = self.inner.slots.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
        for (ino, slot) in slots {
            self.flush(ino, &slot)?;
        }
        Ok(())
    }

    /// Records this inode's size and mtime set here in the manager's journal.
    pub fn flush(&self, ino: u64, slot: &Slot) -> Result<(), i32> {
        let d = {
            let mut st = slot.st.lock();
            st.dirty.take().map(|d| (d, st.under))
        };
        if let Some(((size, mtime_ns), under)) = d {
            if let Err(e) = self.ask(Req::Flush { ino, size, mtime_ns, under: Some(under) }) {
                if e == libc::ESTALE {
                    // Set under a token the manager took from this node
                    // (expelled): newer changes win, so it is dropped.
                    tracing::error!(ino, size, "a size set under a token this node lost is dropped");
                    return Err(e);
                }
                let mut st = slot.st.lock();
                st.dirty = Some(st.dirty.map_or((size, mtime_ns), |(s, m)| (s.max(size), m.max(mtime_ns))));
                return Err(e);
            }
        }
        Ok(())
    }
}
