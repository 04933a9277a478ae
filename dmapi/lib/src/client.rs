//! [`Dm`]: a DM application's handle on its node daemon, one method per XDSM call.
//!
//! ```no_run
//! use libdmapi::Dm;
//! use dmapi::types::*;
//! let dm = Dm::connect("/tmp/tidepool-node-1.sock").unwrap();
//! let sid = dm.dm_create_session(DM_NO_SESSION, b"hsm").unwrap();
//! let set: EventSet = [EventType::Read].into_iter().collect();
//! dm.dm_set_disp(sid, &DmHandle::fs(FsId(1)), DM_NO_TOKEN, set).unwrap();
//! ```

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dmapi::event::{parse_body, parse_eventmsgs, DmEvent, EventBody};
use dmapi::proto::Message;

use dmapi::types::{
    DmAttrName, DmConfig, DmHandle, DmMsgType, DmRegion, DmResponse, DmRight, DmSessId, DmStat, DmToken, EventClass,
    EventSet, EventType, ExtentType, FsId, HandleKind, NodeId, DM_MAX_ATTR_ON_DESTROY, DM_MAX_HANDLE_SIZE,
    DM_MAX_MESSAGE_DATA, DM_RR_WAIT,
};
use dmapi::{DmError, DmResult};
use parking_lot::Mutex;

use crate::channel::{error_from_errno, ByHandle, Channel, DioInfo, NodeStatus, ObjRefOp, Reply, Request, RightOp};
use crate::VERSION;

/// A DM application's handle on its node: each method forwards one XDSM call to
/// the node daemon over the local API. One call at a time per handle (a blocking
/// `dm_get_events` holds it); open one handle per thread for concurrency.
pub struct Dm {
    path: PathBuf,
    conn: Mutex<Channel>,
}

/// What [`Dm::generate`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    /// The session's answer (`DontCare` when no event was generated or it was async).
    pub response: DmResponse,
    /// How long the generating thread on the node was blocked.
    pub blocked: Duration,
}

impl Dm {
    /// Connects to the node daemon's API socket.
    pub fn connect(path: impl AsRef<Path>) -> std::io::Result<Dm> {
        let path = path.as_ref().to_path_buf();
        let s = Channel::connect(&path)?;
        Ok(Dm { path, conn: Mutex::new(s) })
    }

    /// The socket this handle talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One raw call.
    pub fn call(&self, req: &Request) -> DmResult<Reply> {
        let mut s = self.conn.lock();
        s.send(req).map_err(|e| DmError::Io(format!("node daemon: {e}")))?;
        let r: Reply = s.recv().map_err(|e| DmError::Io(format!("node daemon: {e}")))?;
        match r {
            Reply::Err { errno, msg, session_node } => {
                let sid = match req {
                    Request::DestroySession { sid }
                    | Request::GetEvents { sid, .. }
                    | Request::RespondEvent { sid, .. }
                    | Request::Pending { sid, .. }
                    | Request::MoveEvent { sid, .. }
                    | Request::FindEventmsg { sid, .. }
                    | Request::GetallTokens { sid, .. }
                    | Request::CreateUserevent { sid, .. }
                    | Request::SetDisp { sid, .. }
                    | Request::SetEventlist { sid, .. }
                    | Request::SetReturnOnDestroy { sid, .. } => DmSessId(*sid),
                    _ => DmSessId(0),
                };
                Err(error_from_errno(errno, &msg, session_node.map(|n| (sid, NodeId(n)))))
            }
            r => Ok(r),
        }
    }

    fn unexpected(r: Reply) -> DmError {
        DmError::Io(format!("node daemon answered {r:?}"))
    }

    fn ok(&self, req: Request) -> DmResult<()> {
        match self.call(&req)? {
            Reply::Ok => Ok(()),
            r => Err(Self::unexpected(r)),
        }
    }

    fn bytes(&self, req: Request) -> DmResult<Vec<u8>> {
        match self.call(&req)? {
            Reply::Bytes(b) => Ok(b),
            r => Err(Self::unexpected(r)),
        }
    }

    fn token(&self, req: Request) -> DmResult<DmToken> {
        match self.call(&req)? {
            Reply::Token(t) => Ok(DmToken(t)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_create_session` (EPERM unless root or in the node's `dm_admin_gid`).
    pub fn dm_create_session(&self, oldsid: DmSessId, info: &[u8]) -> DmResult<DmSessId> {
        match self.call(&Request::CreateSession { oldsid: oldsid.0, info: info.to_vec() })? {
            Reply::Sid(s) => Ok(DmSessId(s)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_destroy_session`.
    pub fn dm_destroy_session(&self, sid: DmSessId) -> DmResult<()> {
        self.ok(Request::DestroySession { sid: sid.0 })
    }

    /// `dm_query_session`.
    pub fn dm_query_session(&self, sid: DmSessId) -> DmResult<Vec<u8>> {
        self.bytes(Request::QuerySession { sid: sid.0 })
    }

    /// `dm_getall_sessions`.
    pub fn dm_getall_sessions(&self, nelem: usize) -> DmResult<Vec<DmSessId>> {
        match self.call(&Request::GetallSessions { nelem: nelem as u64 })? {
            Reply::Sids(v) => Ok(v.into_iter().map(DmSessId).collect()),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_get_events`: the chained `dm_eventmsg_t` buffer.
    pub fn dm_get_events(&self, sid: DmSessId, maxmsgs: u32, flags: u32, buflen: usize) -> DmResult<Vec<u8>> {
        self.bytes(Request::GetEvents { sid: sid.0, maxmsgs, flags, buflen: buflen as u64 })
    }

    /// `dm_get_events`, parsed.
    pub fn get_events(&self, sid: DmSessId, maxmsgs: u32, flags: u32, buflen: usize) -> DmResult<Vec<DmEvent>> {
        parse_eventmsgs(&self.dm_get_events(sid, maxmsgs, flags, buflen)?)
    }

    /// `dm_respond_event`.
    pub fn dm_respond_event(&self, sid: DmSessId, token: DmToken, response: DmResponse, data: &[u8]) -> DmResult<()> {
        let (response, reterror) = response.to_raw();
        self.ok(Request::RespondEvent { sid: sid.0, token: token.0, response, reterror, data: data.to_vec() })
    }

    /// `dm_pending`.
    pub fn dm_pending(&self, sid: DmSessId, token: DmToken, delay: Duration) -> DmResult<()> {
        self.ok(Request::Pending { sid: sid.0, token: token.0, delay_ms: delay.as_millis() as u64 })
    }

    /// `dm_move_event`.
    pub fn dm_move_event(&self, srcsid: DmSessId, token: DmToken, targetsid: DmSessId) -> DmResult<DmToken> {
        self.token(Request::MoveEvent { sid: srcsid.0, token: token.0, target: targetsid.0 })
    }

    /// `dm_find_eventmsg`.
    pub fn dm_find_eventmsg(&self, sid: DmSessId, token: DmToken, buflen: usize) -> DmResult<Vec<u8>> {
        self.bytes(Request::FindEventmsg { sid: sid.0, token: token.0, buflen: buflen as u64 })
    }

    /// `dm_getall_tokens`.
    pub fn dm_getall_tokens(&self, sid: DmSessId, nelem: usize) -> DmResult<Vec<DmToken>> {
        match self.call(&Request::GetallTokens { sid: sid.0, nelem: nelem as u64 })? {
            Reply::Tokens(v) => Ok(v.into_iter().map(DmToken).collect()),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_create_userevent`.
    pub fn dm_create_userevent(&self, sid: DmSessId, data: &[u8]) -> DmResult<DmToken> {
        self.token(Request::CreateUserevent { sid: sid.0, data: data.to_vec() })
    }

    /// `dm_send_msg`.
    pub fn dm_send_msg(&self, targetsid: DmSessId, msgtype: DmMsgType, data: &[u8]) -> DmResult<()> {
        self.ok(Request::SendMsg { sid: targetsid.0, msgtype: msgtype as i32, data: data.to_vec() })
    }

    /// `dm_set_disp`.
    pub fn dm_set_disp(&self, sid: DmSessId, fs_handle: &DmHandle, token: DmToken, set: EventSet) -> DmResult<()> {
        self.ok(Request::SetDisp { sid: sid.0, token: token.0, handle: hb(fs_handle), set: set.0 })
    }

    /// `dm_getall_disp`.
    pub fn dm_getall_disp(&self, sid: DmSessId) -> DmResult<Vec<(DmHandle, EventSet)>> {
        match self.call(&Request::GetallDisp { sid: sid.0 })? {
            Reply::Disp(v) => v.into_iter().map(|(h, s)| Ok((DmHandle::from_bytes(&h)?, EventSet(s)))).collect(),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_set_eventlist` on a file-system handle (a disposition) or a file's.
    pub fn dm_set_eventlist(&self, sid: DmSessId, h: &DmHandle, token: DmToken, set: EventSet) -> DmResult<()> {
        self.ok(Request::SetEventlist { sid: sid.0, token: token.0, handle: hb(h), set: set.0 })
    }

    /// `dm_get_eventlist` on a file-system handle or a file's.
    pub fn dm_get_eventlist(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<EventSet> {
        match self.call(&Request::GetEventlist { sid: sid.0, token: token.0, handle: hb(h) })? {
            Reply::Set(s) => Ok(EventSet(s)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_set_return_on_destroy`.
    pub fn dm_set_return_on_destroy(
        &self,
        sid: DmSessId,
        fs_handle: &DmHandle,
        token: DmToken,
        name: DmAttrName,
        enable: bool,
    ) -> DmResult<()> {
        self.ok(Request::SetReturnOnDestroy {
            sid: sid.0,
            token: token.0,
            handle: hb(fs_handle),
            attr: name.an_chars,
            enable,
        })
    }

    /// Generates `event` on file system `fs` on this node, as the file system would,
    /// and waits for the outcome (ABORT comes back as `response`, not as an error).
    pub fn generate(&self, fs: FsId, event: DmEvent) -> DmResult<Generated> {
        self.generate_for_file(fs, event, EventSet::EMPTY, Vec::new())
    }

    /// [`generate`](Self::generate) for an event about a file with event
    /// list `file_events`; a destroy event gives the file's DM `attrs`.
    pub fn generate_for_file(
        &self,
        fs: FsId,
        event: DmEvent,
        file_events: EventSet,
        attrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> DmResult<Generated> {
        let f = dmapi::proto::Frame::new(event.source, 0, Message::Event { fs, sync: false, event });
        let frame = dmapi::proto::encode_frame(&f).map_err(|_| DmError::Inval("event too large"))?;
        match self.call(&Request::Generate { frame, file_events: file_events.0, attrs })? {
            Reply::Generated { response, reterror, blocked_ns } => Ok(Generated {
                response: DmResponse::from_raw(response, reterror)?,
                blocked: Duration::from_nanos(blocked_ns),
            }),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Announces `fs` as mounted (or unmounted) on the node, as a mount does,
    /// without mounting anything (a file system's stand-in, for tests).
    pub fn mount(&self, fs: FsId, mounted: bool) -> DmResult<()> {
        self.ok(Request::Mount { fs: fs.0, mounted })
    }

    /// Where an event of type `t` on `fs` generated on the node would go.
    pub fn route(&self, fs: FsId, t: EventType) -> DmResult<Option<(NodeId, DmSessId)>> {
        match self.call(&Request::Route { fs: fs.0, event: t.raw() })? {
            Reply::Route(r) => Ok(r.map(|(n, s)| (NodeId(n), DmSessId(s)))),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Asks the node daemon to mount file system `fs` through FUSE at `path`
    /// and host the mount; returns once it is mounted.
    pub fn fuse_mount(&self, fs: FsId, path: &Path) -> DmResult<()> {
        self.ok(Request::FuseMount { fs: fs.0, path: path.display().to_string() })
    }

    /// Asks the node daemon to unmount its FUSE mount at `path`.
    pub fn fuse_unmount(&self, path: &Path) -> DmResult<()> {
        self.ok(Request::FuseUnmount { path: path.display().to_string() })
    }

    // ---- file functions -------------------------------------------------------

    fn handle_reply(&self, req: Request) -> DmResult<DmHandle> {
        DmHandle::from_bytes(&self.bytes(req)?)
    }

    /// `dm_path_to_handle`: `path` must be on a Tidepool mount the node hosts
    /// (resolved here, in this process's view of the file tree).
    pub fn dm_path_to_handle(&self, path: &Path) -> DmResult<DmHandle> {
        let md = std::fs::symlink_metadata(path).map_err(|e| io_errno(&e, "dm_path_to_handle"))?;
        self.handle_reply(Request::HandleOf { dev: md.dev(), ino: md.ino(), fs: false })
    }

    /// `dm_path_to_fshandle`.
    pub fn dm_path_to_fshandle(&self, path: &Path) -> DmResult<DmHandle> {
        let md = std::fs::symlink_metadata(path).map_err(|e| io_errno(&e, "dm_path_to_fshandle"))?;
        self.handle_reply(Request::HandleOf { dev: md.dev(), ino: md.ino(), fs: true })
    }

    /// `dm_fd_to_handle`.
    pub fn dm_fd_to_handle(&self, file: &std::fs::File) -> DmResult<DmHandle> {
        let md = file.metadata().map_err(|_| DmError::BadF("bad file descriptor"))?;
        self.handle_of(md.dev(), md.ino(), false)
    }

    /// The handle of the object with `st_dev` `dev` and `st_ino` `ino` (as
    /// this process's stat saw it), or of its file system with `fs`.
    pub fn handle_of(&self, dev: u64, ino: u64, fs: bool) -> DmResult<DmHandle> {
        self.handle_reply(Request::HandleOf { dev, ino, fs })
    }

    /// `dm_get_fileattr`.
    pub fn dm_get_fileattr(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<DmStat> {
        match self.call(&Request::GetFileattr { sid: sid.0, token: token.0, handle: hb(h) })? {
            Reply::Stat(s) => s.to_stat(),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_set_fileattr`: the fields `mask` (`dm_at::*`) names, from `st`.
    pub fn dm_set_fileattr(&self, sid: DmSessId, h: &DmHandle, token: DmToken, mask: u32, st: &DmStat) -> DmResult<()> {
        self.ok(Request::SetFileattr { sid: sid.0, token: token.0, handle: hb(h), mask, stat: st.into() })
    }

    fn stats(&self, req: Request) -> DmResult<(Vec<ScanStat>, u64)> {
        match self.call(&req)? {
            Reply::Stats { stats, next } => {
                let v = stats.into_iter().map(|(s, a)| Ok((s.to_stat()?, a))).collect::<DmResult<Vec<_>>>()?;
                Ok((v, next))
            }
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_get_bulkattr`: up to `max` files of the file system from `cookie`
    /// (start at 0) and the next cookie (0: all seen).
    pub fn dm_get_bulkattr(
        &self,
        sid: DmSessId,
        fs: &DmHandle,
        token: DmToken,
        cookie: u64,
        max: u32,
    ) -> DmResult<(Vec<DmStat>, u64)> {
        let req = Request::Bulk { sid: sid.0, token: token.0, handle: hb(fs), attr: Vec::new(), cookie, max };
        let (v, next) = self.stats(req)?;
        Ok((v.into_iter().map(|(s, _)| s).collect(), next))
    }

    /// `dm_get_bulkall`: [`dm_get_bulkattr`](Self::dm_get_bulkattr) with each
    /// file's DM attribute `attr` (`None` where the file has none).
    pub fn dm_get_bulkall(
        &self,
        sid: DmSessId,
        fs: &DmHandle,
        token: DmToken,
        attr: &[u8],
        cookie: u64,
        max: u32,
    ) -> DmResult<(Vec<ScanStat>, u64)> {
        if attr.is_empty() {
            return Err(DmError::Inval("DM attribute names are 1 to 8 bytes"));
        }
        self.stats(Request::Bulk { sid: sid.0, token: token.0, handle: hb(fs), attr: attr.to_vec(), cookie, max })
    }

    /// `dm_init_attrloc`: the cookie a scan of the file system (`h` its
    /// handle: `dm_get_bulkattr`, `dm_get_bulkall`) or of a directory
    /// (`dm_get_dirattrs`) starts from.
    pub fn dm_init_attrloc(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<u64> {
        match self.call(&Request::InitAttrloc { sid: sid.0, token: token.0, handle: hb(h) })? {
            Reply::Count(c) => Ok(c),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_get_dirattrs`: up to `max` entries of directory `dir` from `cookie`.
    pub fn dm_get_dirattrs(
        &self,
        sid: DmSessId,
        dir: &DmHandle,
        token: DmToken,
        cookie: u64,
        max: u32,
    ) -> DmResult<(Vec<DmStat>, u64)> {
        let (v, next) =
            self.stats(Request::GetDirattrs { sid: sid.0, token: token.0, handle: hb(dir), cookie, max })?;
        Ok((v.into_iter().map(|(s, _)| s).collect(), next))
    }

    /// `dm_read_invis`: no event, no access time.
    pub fn dm_read_invis(&self, sid: DmSessId, h: &DmHandle, token: DmToken, off: u64, len: u64) -> DmResult<Vec<u8>> {
        self.bytes(Request::ReadInvis { sid: sid.0, token: token.0, handle: hb(h), off, len })
    }

    /// `dm_write_invis` (`sync`: `DM_WRITE_SYNC`): the bytes written.
    pub fn dm_write_invis(
        &self,
        sid: DmSessId,
        h: &DmHandle,
        token: DmToken,
        sync: bool,
        off: u64,
        data: &[u8],
    ) -> DmResult<usize> {
        match self.call(&Request::WriteInvis {
            sid: sid.0,
            token: token.0,
            handle: hb(h),
            off,
            data: data.to_vec(),
            sync,
        })? {
            Reply::Count(n) => Ok(n as usize),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_sync_by_handle`.
    pub fn dm_sync_by_handle(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<()> {
        self.ok(Request::SyncByHandle { sid: sid.0, token: token.0, handle: hb(h) })
    }

    /// `dm_probe_hole`: what `dm_punch_hole` would free, as (offset, length).
    pub fn dm_probe_hole(
        &self,
        sid: DmSessId,
        h: &DmHandle,
        token: DmToken,
        off: u64,
        len: u64,
    ) -> DmResult<(u64, u64)> {
        match self.call(&Request::ProbeHole { sid: sid.0, token: token.0, handle: hb(h), off, len })? {
            Reply::Range(o, l) => Ok((o, l)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_punch_hole` (needs an exclusive right).
    pub fn dm_punch_hole(&self, sid: DmSessId, h: &DmHandle, token: DmToken, off: u64, len: u64) -> DmResult<()> {
        self.ok(Request::PunchHole { sid: sid.0, token: token.0, handle: hb(h), off, len })
    }

    /// `dm_get_allocinfo`: (offset, length, type) up to the end of the file.
    pub fn dm_get_allocinfo(
        &self,
        sid: DmSessId,
        h: &DmHandle,
        token: DmToken,
    ) -> DmResult<Vec<(u64, u64, ExtentType)>> {
        match self.call(&Request::GetAllocinfo { sid: sid.0, token: token.0, handle: hb(h) })? {
            Reply::Extents(v) => v.into_iter().map(|(o, l, t)| Ok((o, l, ExtentType::from_raw(t)?))).collect(),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_set_region`: replaces the managed regions; returns `exactflag`.
    pub fn dm_set_region(&self, sid: DmSessId, h: &DmHandle, token: DmToken, regions: &[DmRegion]) -> DmResult<bool> {
        let regions = regions.iter().map(|r| (r.offset, r.size, r.flags)).collect();
        match self.call(&Request::SetRegion { sid: sid.0, token: token.0, handle: hb(h), regions })? {
            Reply::Flag(exact) => Ok(exact),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_get_region`.
    pub fn dm_get_region(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<Vec<DmRegion>> {
        match self.call(&Request::GetRegion { sid: sid.0, token: token.0, handle: hb(h) })? {
            Reply::Regions(v) => {
                Ok(v.into_iter().map(|(offset, size, flags)| DmRegion { offset, size, flags }).collect())
            }
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_set_dmattr`.
    pub fn dm_set_dmattr(
        &self,
        sid: DmSessId,
        h: &DmHandle,
        token: DmToken,
        name: &[u8],
        value: &[u8],
    ) -> DmResult<()> {
        let req = Request::SetDmattr {
            sid: sid.0,
            token: token.0,
            handle: hb(h),
            name: name.to_vec(),
            value: value.to_vec(),
        };
        self.ok(req)
    }

    /// `dm_get_dmattr` (`ENOENT` when the file has no such attribute).
    pub fn dm_get_dmattr(&self, sid: DmSessId, h: &DmHandle, token: DmToken, name: &[u8]) -> DmResult<Vec<u8>> {
        self.bytes(Request::GetDmattr { sid: sid.0, token: token.0, handle: hb(h), name: name.to_vec() })
    }

    /// `dm_remove_dmattr`.
    pub fn dm_remove_dmattr(&self, sid: DmSessId, h: &DmHandle, token: DmToken, name: &[u8]) -> DmResult<()> {
        self.ok(Request::RemoveDmattr { sid: sid.0, token: token.0, handle: hb(h), name: name.to_vec() })
    }

    /// `dm_getall_dmattr`: (name, value) pairs.
    pub fn dm_getall_dmattr(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<Vec<(Vec<u8>, Vec<u8>)>> {
        match self.call(&Request::GetallDmattr { sid: sid.0, token: token.0, handle: hb(h) })? {
            Reply::Attrs(v) => Ok(v),
            r => Err(Self::unexpected(r)),
        }
    }

    fn right(&self, sid: DmSessId, h: &DmHandle, token: DmToken, op: RightOp) -> DmResult<Reply> {
        self.call(&Request::Right { sid: sid.0, token: token.0, handle: hb(h), op })
    }

    /// `dm_request_right`: with `DM_RR_WAIT` in `flags`, waits until every
    /// conflicting access in the cluster is done, then holds `right`; without
    /// it, `EAGAIN` when another token on this node holds a conflicting right.
    pub fn dm_request_right(
        &self,
        sid: DmSessId,
        h: &DmHandle,
        token: DmToken,
        flags: u32,
        right: DmRight,
    ) -> DmResult<()> {
        if flags & !DM_RR_WAIT != 0 {
            return Err(DmError::Inval("unknown dm_request_right flags"));
        }
        let right = match right {
            DmRight::Null => 0,
            DmRight::Shared => 1,
            DmRight::Excl => 2,
        };
        expect_ok(self.right(sid, h, token, RightOp::Request { right, wait: flags & DM_RR_WAIT != 0 })?)
    }

    /// `dm_release_right`.
    pub fn dm_release_right(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<()> {
        expect_ok(self.right(sid, h, token, RightOp::Release)?)
    }

    /// `dm_upgrade_right`: shared to exclusive.
    pub fn dm_upgrade_right(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<()> {
        expect_ok(self.right(sid, h, token, RightOp::Upgrade)?)
    }

    /// `dm_downgrade_right`: exclusive to shared.
    pub fn dm_downgrade_right(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<()> {
        expect_ok(self.right(sid, h, token, RightOp::Downgrade)?)
    }

    /// `dm_query_right`.
    pub fn dm_query_right(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<DmRight> {
        match self.right(sid, h, token, RightOp::Query)? {
            Reply::Count(0) => Ok(DmRight::Null),
            Reply::Count(1) => Ok(DmRight::Shared),
            Reply::Count(2) => Ok(DmRight::Excl),
            r => Err(Self::unexpected(r)),
        }
    }

    fn obj_ref(&self, sid: DmSessId, token: DmToken, h: &DmHandle, op: ObjRefOp) -> DmResult<Reply> {
        self.call(&Request::ObjRef { sid: sid.0, token: token.0, handle: hb(h), op })
    }

    /// `dm_obj_ref_hold`: the object is not destroyed (even with no name left)
    /// while the token holds the reference; answering the event releases it.
    pub fn dm_obj_ref_hold(&self, sid: DmSessId, token: DmToken, h: &DmHandle) -> DmResult<()> {
        expect_ok(self.obj_ref(sid, token, h, ObjRefOp::Hold)?)
    }

    /// `dm_obj_ref_rele`.
    pub fn dm_obj_ref_rele(&self, sid: DmSessId, token: DmToken, h: &DmHandle) -> DmResult<()> {
        expect_ok(self.obj_ref(sid, token, h, ObjRefOp::Rele)?)
    }

    /// `dm_obj_ref_query`: whether the token holds a reference on the object.
    pub fn dm_obj_ref_query(&self, sid: DmSessId, token: DmToken, h: &DmHandle) -> DmResult<bool> {
        match self.obj_ref(sid, token, h, ObjRefOp::Query)? {
            Reply::Flag(b) => Ok(b),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_set_inherit`: objects of file type `mode & S_IFMT` made from now
    /// on in a directory that has DM attribute `name` get a copy of it.
    pub fn dm_set_inherit(&self, sid: DmSessId, fs: &DmHandle, token: DmToken, name: &[u8], mode: u32) -> DmResult<()> {
        let req =
            Request::Inherit { sid: sid.0, token: token.0, handle: hb(fs), name: name.to_vec(), mode: Some(mode) };
        self.ok(req)
    }

    /// `dm_clear_inherit` (`ENOENT` if `name` was not inheritable).
    pub fn dm_clear_inherit(&self, sid: DmSessId, fs: &DmHandle, token: DmToken, name: &[u8]) -> DmResult<()> {
        self.ok(Request::Inherit { sid: sid.0, token: token.0, handle: hb(fs), name: name.to_vec(), mode: None })
    }

    /// `dm_getall_inherit`: (attribute name, file type) pairs.
    pub fn dm_getall_inherit(&self, sid: DmSessId, fs: &DmHandle, token: DmToken) -> DmResult<Vec<(Vec<u8>, u32)>> {
        match self.call(&Request::GetallInherit { sid: sid.0, token: token.0, handle: hb(fs) })? {
            Reply::Inherit(v) => Ok(v),
            r => Err(Self::unexpected(r)),
        }
    }

    fn by_handle(
        &self,
        sid: DmSessId,
        dir: &DmHandle,
        token: DmToken,
        h: &DmHandle,
        name: &[u8],
        what: ByHandle,
    ) -> DmResult<()> {
        let req =
            Request::ByHandle { sid: sid.0, token: token.0, dir: hb(dir), handle: hb(h), name: name.to_vec(), what };
        self.ok(req)
    }

    /// `dm_create_by_handle`: a regular file named `name` in `dir` with
    /// handle `h` (made with `dm_make_handle`, its inode free): root's, mode
    /// 0600, no event; set its attributes with `dm_set_fileattr`.
    pub fn dm_create_by_handle(
        &self,
        sid: DmSessId,
        dir: &DmHandle,
        token: DmToken,
        h: &DmHandle,
        name: &[u8],
    ) -> DmResult<()> {
        self.by_handle(sid, dir, token, h, name, ByHandle::File)
    }

    /// `dm_mkdir_by_handle` (mode 0700).
    pub fn dm_mkdir_by_handle(
        &self,
        sid: DmSessId,
        dir: &DmHandle,
        token: DmToken,
        h: &DmHandle,
        name: &[u8],
    ) -> DmResult<()> {
        self.by_handle(sid, dir, token, h, name, ByHandle::Dir)
    }

    /// `dm_symlink_by_handle`: a symbolic link to `target`.
    #[allow(clippy::too_many_arguments)]
    pub fn dm_symlink_by_handle(
        &self,
        sid: DmSessId,
        dir: &DmHandle,
        token: DmToken,
        h: &DmHandle,
        name: &[u8],
        target: &[u8],
    ) -> DmResult<()> {
        self.by_handle(sid, dir, token, h, name, ByHandle::Symlink(target.to_vec()))
    }

    /// `dm_handle_to_path`: the path on this node's mount of `target`, an
    /// entry of directory `dir` (or `dir` itself).
    pub fn dm_handle_to_path(&self, dir: &DmHandle, target: &DmHandle) -> DmResult<PathBuf> {
        use std::os::unix::ffi::OsStringExt;
        let b = self.bytes(Request::HandleToPath { dir: hb(dir), target: hb(target) })?;
        Ok(PathBuf::from(std::ffi::OsString::from_vec(b)))
    }

    /// `dm_get_mountinfo` as its raw `dm_mount_event_t` with variable data.
    pub fn dm_get_mountinfo_raw(&self, sid: DmSessId, fs: &DmHandle, token: DmToken) -> DmResult<Vec<u8>> {
        self.bytes(Request::GetMountinfo { sid: sid.0, token: token.0, handle: hb(fs) })
    }

    /// `dm_get_mountinfo`: this node's mount of the file system, as its mount
    /// event had it (an [`EventBody::Mount`]).
    pub fn dm_get_mountinfo(&self, sid: DmSessId, fs: &DmHandle, token: DmToken) -> DmResult<EventBody> {
        parse_body(EventClass::Mount, &self.dm_get_mountinfo_raw(sid, fs, token)?)
    }

    /// `dm_get_dioinfo`.
    pub fn dm_get_dioinfo(&self, sid: DmSessId, h: &DmHandle, token: DmToken) -> DmResult<DioInfo> {
        match self.call(&Request::GetDioinfo { sid: sid.0, token: token.0, handle: hb(h) })? {
            Reply::Dioinfo(d) => Ok(d),
            r => Err(Self::unexpected(r)),
        }
    }

    /// `dm_open_by_handle`: the object opened with `open(2)` `flags`, through
    /// this node's mount of its file system (`open_by_handle_at(2)`; needs
    /// `CAP_DAC_READ_SEARCH`, as XFS's did).
    pub fn dm_open_by_handle(&self, h: &DmHandle, flags: i32) -> DmResult<std::fs::File> {
        if h.kind() != dmapi::types::HandleKind::File {
            return Err(DmError::BadF("dm_open_by_handle takes an object handle"));
        }
        let mount = self.bytes(Request::MountPath { fs: h.fsid().0 })?;
        let mount = Path::new(std::ffi::OsStr::from_bytes(&mount));
        crate::fhandle::open(mount, h.ino()?, h.igen()?, flags).map_err(|e| match e.raw_os_error() {
            Some(libc::ESTALE) | Some(libc::ENOENT) => DmError::BadF("no such object"),
            Some(libc::EPERM) => DmError::Perm("dm_open_by_handle needs CAP_DAC_READ_SEARCH"),
            Some(errno) => DmError::from_errno(errno, "dm_open_by_handle"),
            None => DmError::Io(e.to_string()),
        })
    }

    /// `dm_init_service`: the version string, once the node daemon answers.
    pub fn dm_init_service(&self) -> DmResult<&'static str> {
        self.status()?;
        Ok(VERSION)
    }

    /// `dm_get_config`: what this implementation really does (booleans 1 or
    /// 0); the limits of a file's DM block come from its file system's block
    /// size, so `h` must be on a file system (the global handle is EBADF).
    pub fn dm_get_config(&self, h: &DmHandle, flag: DmConfig) -> DmResult<u64> {
        use DmConfig::*;
        Ok(match flag {
            // dt_dtime is the ctime (DtimeOverload); a nospace event's
            // CONTINUE retries the write (WillRetry); inheritance is kept in
            // the root's DM block (PersInheritAttribs).
            Bulkall | CreateByHandle | DtimeOverload | Legacy | LockUpgrade | ObjRef | Pending | PersAttributes
            | PersEvents | PersInheritAttribs | PersManagedRegions | PunchHole | WillRetry => {
                if h.kind() == HandleKind::Global {
                    return Err(DmError::BadF("the global handle names no file system"));
                }
                1
            }
            MaxAttrOnDestroy => DM_MAX_ATTR_ON_DESTROY as u64,
            MaxHandleSize => DM_MAX_HANDLE_SIZE as u64,
            MaxMessageData => DM_MAX_MESSAGE_DATA as u64,
            MaxAttributeSize => self.fs_limits(h)?.max_attribute_size,
            MaxManagedRegions => self.fs_limits(h)?.max_managed_regions,
            TotalAttributeSpace => self.fs_limits(h)?.total_attribute_space,
        })
    }

    /// `dm_get_config_events`: the events Tidepool generates, every XDSM
    /// event but debut.
    pub fn dm_get_config_events(&self, h: &DmHandle) -> DmResult<EventSet> {
        if h.kind() == HandleKind::Global {
            return Err(DmError::BadF("the global handle names no file system"));
        }
        Ok(EventType::ALL.iter().copied().filter(|t| *t != EventType::Debut).collect())
    }

    /// The DM limits of the file system `h` is on.
    pub fn fs_limits(&self, h: &DmHandle) -> DmResult<crate::channel::FsLimits> {
        match self.call(&Request::FsLimits { handle: hb(h) })? {
            Reply::Limits(l) => Ok(l),
            r => Err(Self::unexpected(r)),
        }
    }

    /// The node's status.
    pub fn status(&self) -> DmResult<NodeStatus> {
        match self.call(&Request::Status)? {
            Reply::Status(s) => Ok(s),
            r => Err(Self::unexpected(r)),
        }
    }
}

/// A file's attributes and, from `dm_get_bulkall`, one DM attribute.
pub type ScanStat = (DmStat, Option<Vec<u8>>);

fn hb(h: &DmHandle) -> Vec<u8> {
    h.as_bytes().to_vec()
}

fn expect_ok(r: Reply) -> DmResult<()> {
    match r {
        Reply::Ok => Ok(()),
        r => Err(Dm::unexpected(r)),
    }
}

/// A path that cannot be looked up, as XDSM reports it.
fn io_errno(e: &std::io::Error, call: &'static str) -> DmError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => DmError::NoEnt(call),
        Some(libc::EACCES) | Some(libc::EPERM) => DmError::Perm(call),
        _ => DmError::Inval(call),
    }
}
