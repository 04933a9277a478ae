//! The file-system manager's wire protocol: every message is a fixed
//! 24-byte [`Header`] and a body encoded with `bincode`.
//!
//! Client → manager: [`Req`] (answered by a [`Reply`] with the same id) and
//! [`Kind::RevokeDone`] (a token given back, with the attributes the holder
//! changed under it) and [`Kind::RevokeHeld`] (not yet: a DM right holds it,
//! and the holder is alive). Manager → client: [`Reply`] and [`Kind::Revoke`]
//! (give this inode's token back). Bodies carry inodes and extents as their
//! on-disk bytes, so the manager and its clients share one layout.

use super::format::{DmChange, DmInfo, Extent, Inode};
use super::locks::{Lock, LockType};
use dmapi::auth::{self, AUTH_LEN};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const MAGIC: u32 = u32::from_le_bytes(*b"TPFS");
/// Largest body accepted: a directory listing of 100,000 long names fits.
pub const MAX_BODY: u32 = 64 << 20;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Header {
    pub magic: U32,
    pub kind: u8,
    pub rsvd: u8,
    pub rsvd2: U16,
    pub len: U32,
    pub rsvd3: U32,
    /// Request id (a reply repeats it); the inode for revokes.
    pub id: U64,
}
const _: () = assert!(size_of::<Header>() == 24);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Req = 1,
    Reply = 2,
    Revoke = 3,
    RevokeDone = 4,
    /// The inode's token is held under a DM right: it comes back when the
    /// right is released. Sent at once and then every [`HELD_NOTE`] while
    /// the revoke waits, so the manager tells a busy holder from a dead one.
    RevokeHeld = 5,
}

/// How often a holder says again that a revoked token is held under a DM
/// right (well inside any token timeout the manager may be given).
pub const HELD_NOTE: std::time::Duration = std::time::Duration::from_millis(500);

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Req,
            2 => Kind::Reply,
            3 => Kind::Revoke,
            4 => Kind::RevokeDone,
            5 => Kind::RevokeHeld,
            _ => return None,
        })
    }
}

/// Token modes on an inode: shared (cache attributes, extents and
/// directory names; read data) or exclusive (also write data and change
/// size and times locally, sent back when the token is given back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    None,
    Read,
    Write,
}

impl Mode {
    pub fn conflicts(self, other: Mode) -> bool {
        (self == Mode::Write && other != Mode::None) || (other == Mode::Write && self != Mode::None)
    }
}

/// What [`super::meta::SetAttr`] carries, on the wire.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct WireSetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<u64>,
    pub mtime_ns: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Req {
    /// First message: who this client is (its node id, and a name for
    /// logs) and its handshake nonce ([`handshake_client`]).
    Hello {
        name: String,
        node: u32,
        nonce: [u8; AUTH_LEN],
        /// The manager's term the client found in etcd (0: any, static
        /// roles): a manager of an older term refuses it.
        epoch: u64,
    },
    /// Second message: the client's proof that it holds the cluster key.
    Auth {
        proof: [u8; AUTH_LEN],
    },
    /// A token on `ino`; the reply carries its attributes and extents.
    Acquire {
        ino: u64,
        mode: Mode,
    },
    Lookup {
        parent: u64,
        name: Vec<u8>,
    },
    ReadDir {
        dir: u64,
    },
    /// Files, directories, nodes and symlinks (with their target).
    Create {
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        symlink: Option<Vec<u8>>,
        /// The creator opens the new file (`create`): counted as in use.
        open: bool,
        /// Device number (`mknod` of a device special file), else 0.
        rdev: u32,
        /// This inode number and generation (`dm_create_by_handle`): no
        /// token comes with the new object.
        at: Option<(u64, u32)>,
    },
    Unlink {
        parent: u64,
        name: Vec<u8>,
    },
    Rmdir {
        parent: u64,
        name: Vec<u8>,
    },
    Link {
        ino: u64,
        parent: u64,
        name: Vec<u8>,
    },
    Rename {
        sp: u64,
        sname: Vec<u8>,
        dp: u64,
        dname: Vec<u8>,
        noreplace: bool,
    },
    SetAttr {
        ino: u64,
        set: WireSetAttr,
    },
    /// Map file blocks `lblk..lblk+count`, allocating the unmapped ones.
    Allocate {
        ino: u64,
        lblk: u64,
        count: u64,
    },
    /// Size and mtime changed under an exclusive token (fsync), or under
    /// one of the last manager's (given back in its successor's recovery);
    /// `under` names the token ([`crate::tokens::Under`]).
    Flush {
        ino: u64,
        size: u64,
        mtime_ns: u64,
        under: Option<(u64, u64)>,
    },
    StatFs,
    /// Change a file's DM attributes, managed regions or (on the root) the
    /// inheritable attributes. This and the next two keep the requester's
    /// token and answer with a refreshed [`Reply::Granted`] (mode `None`
    /// when it holds none).
    DmChange {
        ino: u64,
        change: DmChange,
    },
    /// The requester's exclusive token on `ino` becomes a shared one; the
    /// size and mtime it set under it come with it ([`Reply::Done`]).
    Downgrade {
        ino: u64,
        dirty: Option<(u64, u64)>,
    },
    /// The parent directory of directory `dir` ([`Reply::Entry`]).
    Parent {
        dir: u64,
    },
    /// The path of `target` (an entry of `dir`, or `dir`) from the root
    /// ([`Reply::Path`]).
    PathOf {
        dir: u64,
        target: u64,
    },
    SetEventList {
        ino: u64,
        mask: u64,
    },
    /// `dm_punch_hole`: free the whole blocks of the range.
    Punch {
        ino: u64,
        off: u64,
        len: u64,
    },
    /// The node opened the file: it outlives its last name until released
    /// (POSIX). Counted per node, dropped with a node that goes away.
    Open {
        ino: u64,
    },
    /// The node closed the file ([`Reply::Released`]).
    Release {
        ino: u64,
    },
    /// `dm_set_fileattr`: like [`Req::SetAttr`], but the requester keeps
    /// its token (a DM application changes files under its right) and gets
    /// the new state as a [`Reply::Granted`].
    DmSetAttr {
        ino: u64,
        set: WireSetAttr,
    },
    /// Sets (`Some`) or removes (`None`) an extended attribute; the
    /// requester keeps its token and gets a [`Reply::Granted`].
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Option<Vec<u8>>,
        flags: i32,
    },
    /// Up to `max` inodes from inode number `from` on (`dm_get_bulkattr`),
    /// or, with `dir`, entries of that directory from index `from` on
    /// (`dm_get_dirattrs`). A snapshot of the manager's copies. With
    /// `attr`, each entry also carries that DM attribute (`dm_get_bulkall`).
    Scan {
        dir: Option<u64>,
        from: u64,
        max: u32,
        attr: Option<Vec<u8>>,
    },
    /// A POSIX record lock (or an flock, as a whole-file one) of the
    /// kernel's lock `owner` on this node: set (`typ` `Some`) or removed
    /// (`None`: every lock of the owner on `start..=end`, and any wait of
    /// its). Without `wait` a conflict answers EAGAIN; with it the answer
    /// comes when the lock is granted. `reclaim`: a lock this node held
    /// before the manager restarted, declared again within its grace.
    Lock {
        ino: u64,
        owner: u64,
        typ: Option<LockType>,
        start: u64,
        end: u64,
        pid: u32,
        wait: bool,
        reclaim: bool,
    },
    /// `fallocate(2)` with `mode` on `off..off+len` ([`Reply::Attr`]).
    Fallocate {
        ino: u64,
        mode: i32,
        off: u64,
        len: u64,
    },
    /// Ends a [`Req::Lock`] wait of `owner` on `ino` with EINTR (its
    /// process got a signal); a lock granted meanwhile stays granted.
    CancelLockWait {
        ino: u64,
        owner: u64,
    },
    /// `F_GETLK`: the first lock of another owner in the way of this one
    /// ([`Reply::Lock`]).
    GetLock {
        ino: u64,
        owner: u64,
        typ: LockType,
        start: u64,
        end: u64,
    },
}

impl Req {
    /// Safe to send again after the manager restarted: asking twice has the
    /// effect of asking once.
    pub fn idempotent(&self) -> bool {
        if let Req::DmChange { change, .. } = self {
            // A second removal finds nothing to remove.
            return !matches!(change, DmChange::RemoveAttr { .. } | DmChange::Inherit { mode: None, .. });
        }
        matches!(
            self,
            Req::Acquire { .. }
                | Req::Lookup { .. }
                | Req::ReadDir { .. }
                | Req::Allocate { .. }
                | Req::Flush { .. }
                | Req::StatFs
                | Req::Parent { .. }
                | Req::Downgrade { .. }
                | Req::PathOf { .. }
                | Req::SetEventList { .. }
                | Req::Punch { .. }
                // A lost connection drops the node's opens, so counting again is right.
                | Req::Open { .. }
                | Req::Release { .. }
                | Req::Scan { .. }
                | Req::DmSetAttr { .. }
                // Setting a lock its owner holds already changes nothing.
                | Req::Lock { .. }
                | Req::GetLock { .. }
                | Req::CancelLockWait { .. }
                // Allocating, punching or zeroing a range twice ends the same.
                | Req::Fallocate { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Failed with this errno.
    Err(i32),
    Done,
    /// The manager's answer to a hello: its node id, its nonce and its
    /// proof that it holds the cluster key.
    Challenge {
        node: u32,
        nonce: [u8; AUTH_LEN],
        proof: [u8; AUTH_LEN],
    },
    /// The handshake is done: the file system's geometry, the term the
    /// manager serves under (0: static roles), its incarnation and this
    /// connection's id there (what tokens granted on it are known by).
    Hello {
        block_size: u32,
        fsid: [u8; 16],
        epoch: u64,
        incarnation: u64,
        conn: u64,
    },
    /// A token granted: the inode, all its extents and its DM state.
    Granted {
        ino: u64,
        mode: Mode,
        inode: Vec<u8>,
        extents: Vec<u8>,
        dm: DmInfo,
    },
    Entry {
        ino: u64,
    },
    Dir(Vec<(Vec<u8>, u64, u8)>),
    /// A namespace change: the new or changed inode (with an exclusive token
    /// on a new one), and the directories it touched after the change.
    Changed {
        inode: Option<Vec<u8>>,
        grant: Option<Mode>,
        parents: Vec<Vec<u8>>,
        /// A file the change destroyed (its last link went, nobody had it open).
        destroyed: Option<Destroyed>,
    },
    /// What a [`Req::Scan`] found, and where to go on from (0: the end).
    Scanned {
        entries: Vec<ScanEntry>,
        next: u64,
    },
    /// A release; the file was destroyed if it was its last use with no link left.
    Released {
        destroyed: Option<Destroyed>,
    },
    Attr(Vec<u8>),
    /// A path from the root ([`Req::PathOf`]).
    Path(Vec<u8>),
    Extents(Vec<u8>),
    StatFs {
        blocks: u64,
        bfree: u64,
        files: u64,
        ffree: u64,
    },
    /// What a [`Req::GetLock`] found in the way, if anything.
    Lock {
        held: Option<Lock>,
    },
}

/// One file a [`Req::Scan`] found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanEntry {
    /// The directory entry's name (directory scans only).
    pub name: Vec<u8>,
    pub inode: Vec<u8>,
    /// Whether the file has managed regions.
    pub managed: bool,
    /// The DM attribute the scan asked for, if the file has it.
    pub attr: Option<Vec<u8>>,
}

/// A destroyed file, for the DM destroy event: its handle's parts and the
/// DM attributes it had (`dm_set_return_on_destroy` returns one of them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Destroyed {
    pub ino: u64,
    pub generation: u32,
    pub attrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A token given back: the inode, and the size and mtime its holder set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeDone {
    pub ino: u64,
    pub dirty: Option<(u64, u64)>,
}

/// A node as the manager protocol knows it: its node id and the cluster key.
#[derive(Clone)]
pub struct Credentials {
    pub node: u32,
    key: Arc<[u8]>,
}

impl Credentials {
    pub fn new(node: u32, key: &[u8]) -> Credentials {
        Credentials { node, key: key.into() }
    }
}

/// The development key's bytes ([`auth::DEV_CLUSTER_KEY`]).
pub const DEV_KEY: &[u8] = auth::DEV_CLUSTER_KEY.as_bytes();

impl Default for Credentials {
    /// Node 1 with the development key ([`auth::DEV_CLUSTER_KEY`]): one
    /// machine only.
    fn default() -> Credentials {
        Credentials::new(1, auth::DEV_CLUSTER_KEY.as_bytes())
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Credentials").field("node", &self.node).finish_non_exhaustive()
    }
}

/// Which nodes may use a manager: cluster members only.
pub type Members = Arc<dyn Fn(u32) -> bool + Send + Sync>;

const SERVER_ROLE: &[u8] = b"tidepool-fs S";
const CLIENT_ROLE: &[u8] = b"tidepool-fs C";
/// How long either side waits for the other's next handshake message.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

fn stale(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, why)
}

/// The client's side of the handshake, as node `me` called `name`, with
/// the manager of term `epoch` (0: any); the file system's block size and
/// id. A manager of an older term (deposed, not knowing it yet) is refused
/// with an error of kind `ConnectionRefused`, as one that refuses us
/// because it is.
/// What a finished handshake tells the client.
#[derive(Debug, Clone, Copy)]
pub struct Welcome {
    pub block_size: u32,
    pub fsid: [u8; 16],
    /// The manager's incarnation and this connection's id there.
    pub under: (u64, u64),
}

pub fn handshake_client(
    r: &mut impl Read,
    w: &mut impl Write,
    me: &Credentials,
    name: &str,
    epoch: u64,
) -> io::Result<Welcome> {
    let n_c = auth::nonce()?;
    send(w, Kind::Req, 0, &Req::Hello { name: name.to_string(), node: me.node, nonce: n_c, epoch })?;
    let (node, n_s) = match recv_reply(r)? {
        Reply::Challenge { node, nonce, proof }
            if auth::check(&me.key, SERVER_ROLE, me.node, node, &n_c, &nonce, &proof) =>
        {
            (node, nonce)
        }
        Reply::Challenge { node, .. } => {
            return Err(refused(format!("the manager (node {node}) failed authentication: another cluster key?")))
        }
        _ => return Err(bad("the manager did not answer the hello with a challenge")),
    };
    let proof = auth::proof(&me.key, CLIENT_ROLE, me.node, node, &n_s, &n_c);
    send(w, Kind::Req, 0, &Req::Auth { proof })?;
    match recv_reply(r)? {
        Reply::Hello { epoch: theirs, .. } if epoch != 0 && theirs < epoch => {
            Err(stale(format!("the manager (node {node}) serves term {theirs}, older than the elected term {epoch}")))
        }
        Reply::Hello { block_size, fsid, incarnation, conn, .. } => {
            Ok(Welcome { block_size, fsid, under: (incarnation, conn) })
        }
        Reply::Err(e) if e == libc::ESTALE => {
            Err(stale(format!("the manager (node {node}) is of an older term than {epoch}, the elected one")))
        }
        Reply::Err(e) if e == libc::EACCES => {
            Err(refused(format!("the manager refused node {}: not a cluster member, or another cluster key", me.node)))
        }
        _ => Err(bad("the manager did not finish the handshake")),
    }
}

fn recv_reply(r: &mut impl Read) -> io::Result<Reply> {
    match recv(r)? {
        (Kind::Reply, _, body) => decode(&body),
        _ => Err(bad("a handshake message of the wrong kind")),
    }
}

/// The manager's side of the handshake with one new connection, as the
/// manager of term `epoch` (0: static roles): the client's node id and name
/// once it proved the key and is a member, and after `hello` (the geometry)
/// went back; an error of kind `PermissionDenied` (with the reason, for the
/// log) when it is refused, `ConnectionRefused` when the client found a
/// later term in etcd than this manager's (this one is deposed).
pub fn handshake_server(
    r: &mut impl Read,
    w: &mut impl Write,
    me: &Credentials,
    members: &dyn Fn(u32) -> bool,
    epoch: u64,
    hello: impl FnOnce() -> Reply,
) -> io::Result<(u32, String)> {
    let (kind, _, body) = recv(r)?;
    let (name, node, n_c, wanted) = match (kind, decode::<Req>(&body)) {
        (Kind::Req, Ok(Req::Hello { name, node, nonce, epoch })) => (name, node, nonce, epoch),
        _ => return Err(refused("the first message is not a hello".into())),
    };
    let n_s = auth::nonce()?;
    let proof = auth::proof(&me.key, SERVER_ROLE, node, me.node, &n_c, &n_s);
    send(w, Kind::Reply, 0, &Reply::Challenge { node: me.node, nonce: n_s, proof })?;
    let (kind, _, body) = recv(r).map_err(|e| {
        refused(format!("node {node} ({name}) failed authentication: no proof (another cluster key?): {e}"))
    })?;
    let proven = matches!((kind, decode::<Req>(&body)),
        (Kind::Req, Ok(Req::Auth { proof })) if auth::check(&me.key, CLIENT_ROLE, node, me.node, &n_s, &n_c, &proof));
    if !proven {
        let _ = send(w, Kind::Reply, 0, &Reply::Err(libc::EACCES));
        return Err(refused(format!("node {node} ({name}) failed authentication: wrong cluster key")));
    }
    if !members(node) {
        let _ = send(w, Kind::Reply, 0, &Reply::Err(libc::EACCES));
        return Err(refused(format!("node {node} ({name}) is not a cluster member")));
    }
    if epoch != 0 && wanted > epoch {
        let _ = send(w, Kind::Reply, 0, &Reply::Err(libc::ESTALE));
        return Err(stale(format!(
            "node {node} ({name}) wants the manager of term {wanted}; this one serves {epoch}, an older term"
        )));
    }
    send(w, Kind::Reply, 0, &hello())?;
    Ok((node, name))
}

pub fn inode_bytes(i: &Inode) -> Vec<u8> {
    i.as_bytes().to_vec()
}

pub fn inode_from(b: &[u8]) -> io::Result<Inode> {
    Inode::read_from_bytes(b).map_err(|_| bad("inode of the wrong size"))
}

pub fn extents_bytes(e: &[Extent]) -> Vec<u8> {
    e.as_bytes().to_vec()
}

pub fn extents_from(b: &[u8]) -> io::Result<Vec<Extent>> {
    if !b.len().is_multiple_of(size_of::<Extent>()) {
        return Err(bad("extent list of the wrong size"));
    }
    Ok(b.chunks_exact(size_of::<Extent>())
        .map(|c| Extent::read_from_bytes(c).unwrap_or_else(|_| Extent::new_zeroed()))
        .collect())
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Writes one message (header and body in one `write`).
pub fn send<T: Serialize>(w: &mut impl Write, kind: Kind, id: u64, body: &T) -> io::Result<()> {
    let body = bincode::serialize(body).map_err(|e| bad(&e.to_string()))?;
    let h = Header {
        magic: MAGIC.into(),
        kind: kind as u8,
        rsvd: 0,
        rsvd2: 0.into(),
        len: (body.len() as u32).into(),
        rsvd3: 0.into(),
        id: id.into(),
    };
    let mut buf = Vec::with_capacity(size_of::<Header>() + body.len());
    buf.extend_from_slice(h.as_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)
}

/// Reads one message; malformed input is an error, never a panic.
pub fn recv(r: &mut impl Read) -> io::Result<(Kind, u64, Vec<u8>)> {
    let mut hb = [0u8; size_of::<Header>()];
    r.read_exact(&mut hb)?;
    let (kind, id, len) = parse_header(&hb)?;
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok((kind, id, body))
}

pub fn parse_header(hb: &[u8]) -> io::Result<(Kind, u64, u32)> {
    let h = Header::read_from_bytes(hb).map_err(|_| bad("short header"))?;
    if h.magic.get() != MAGIC {
        return Err(bad("bad magic"));
    }
    let kind = Kind::from_u8(h.kind).ok_or_else(|| bad("unknown message kind"))?;
    if h.len.get() > MAX_BODY {
        return Err(bad("message too large"));
    }
    Ok((kind, h.id.get(), h.len.get()))
}

pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> io::Result<T> {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_BODY as u64)
        .deserialize(body)
        .map_err(|e| bad(&e.to_string()))
}

use bincode::Options;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let mut buf = Vec::new();
        send(&mut buf, Kind::Req, 7, &Req::Lookup { parent: 1, name: b"a".to_vec() }).unwrap();
        let (k, id, body) = recv(&mut &buf[..]).unwrap();
        assert_eq!((k, id), (Kind::Req, 7));
        assert!(matches!(decode::<Req>(&body).unwrap(), Req::Lookup { parent: 1, .. }));
        // Bad magic, unknown kind, huge length, truncated body: errors.
        let mut b2 = buf.clone();
        b2[0] ^= 1;
        assert!(recv(&mut &b2[..]).is_err());
        let mut b3 = buf.clone();
        b3[4] = 9;
        assert!(recv(&mut &b3[..]).is_err());
        let mut b4 = buf.clone();
        b4[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(recv(&mut &b4[..]).is_err());
        assert!(recv(&mut &buf[..buf.len() - 1]).is_err());
        // A body that claims a 4 GiB vector is refused, not allocated.
        // Lookup { parent: 0, name: <u64::MAX bytes> }
        let evil = [2u32.to_le_bytes().to_vec(), vec![0; 8], u64::MAX.to_le_bytes().to_vec()].concat();
        assert!(decode::<Req>(&evil).is_err());
        assert!(extents_from(&[0u8; 25]).is_err());
        assert!(inode_from(&[0u8; 3]).is_err());
    }

    #[test]
    fn modes_conflict_as_readers_and_writers() {
        use Mode::*;
        assert!(!Read.conflicts(Read));
        assert!(Read.conflicts(Write) && Write.conflicts(Read) && Write.conflicts(Write));
        assert!(!None.conflicts(Write) && !Write.conflicts(None));
    }
}
