//! The daemon's end of the local DM channel ([`libdmapi::channel`]): one thread
//! per connection, each call checked against the caller's credentials
//! (`SO_PEERCRED`) and dispatched to the node's DM session API and event source.

use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use dmapi::event::{encode_chain, DmEvent};
use dmapi::proto::{decode_frame, Message};
use dmapi::session::{Caller, EventsWaiter, GetEvents};
use dmapi::types::{
    DmAttrName, DmHandle, DmMsgType, DmResponse, DmRight, DmSessId, DmToken, EventSet, EventType, FsId, HandleKind,
    DM_EV_WAIT,
};
use dmapi::{DmError, DmResult};
use libdmapi::channel::{err_reply, Channel, ObjRefOp, Reply, Request, RightOp};
use libdmapi::seqpacket::{SeqPacket, SeqPacketListener};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, info, warn};

use crate::config::FuseMountConfig;
use crate::daemon::Node;
use crate::dm::files::{DmFs, Holder};
use crate::peercred::peer_caller;
use tpfs::format::Region;

/// Serves the local API of `node` on `path` until the process exits.
pub fn serve(node: Arc<Node>, path: &Path) -> std::io::Result<()> {
    // A stale socket from a killed daemon would make bind fail.
    let _ = std::fs::remove_file(path);
    let l = SeqPacketListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    info!(path = %path.display(), "local API listening");
    thread::Builder::new().name("dm-api-accept".into()).spawn(move || loop {
        let Ok(s) = l.accept() else { continue };
        let n = node.clone();
        let _ = thread::Builder::new().name("dm-api".into()).spawn(move || serve_conn(n, s));
    })?;
    Ok(())
}

fn serve_conn(node: Arc<Node>, s: SeqPacket) {
    // Replies leave through their own handle: a parked dm_get_events is answered
    // by whichever thread queues the event, while this one reads the socket.
    let tx = match s.try_clone() {
        Ok(c) => Arc::new(Mutex::new(Channel::new(c))),
        Err(e) => {
            warn!(error = %e, "local API connection not served");
            return;
        }
    };
    let mut ch = Channel::new(s);
    let (caller, pid) = match peer_caller(ch.socket()) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "local API peer without credentials; refused");
            return;
        }
    };
    debug!(pid, uid = caller.uid, "local API client connected");
    let mut parked: Option<Park> = None;
    loop {
        let req: Request = match ch.recv() {
            Ok(r) => r,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    warn!(pid, error = %e, "bad local API message; connection closed");
                }
                if let Some(p) = parked.take() {
                    if p.withdraw(&node) {
                        info!(sid = %p.sid, "DM application went away while waiting for events; wait withdrawn");
                    }
                }
                return;
            }
        };
        // A client asks again only once answered; one that did not wait for its
        // dm_get_events (its own bug) gets EINTR for it before the new answer.
        if let Some(p) = parked.take() {
            if p.withdraw(&node) && tx.lock().send(&err_reply(DmError::Intr("dm_get_events abandoned"))).is_err() {
                return;
            }
        }
        let reply = match req {
            Request::GetEvents { sid, maxmsgs, flags, buflen } if flags & DM_EV_WAIT != 0 => {
                match park(&node, &tx, DmSessId(sid), maxmsgs, flags, buflen as usize) {
                    Ok(Some(p)) => {
                        parked = Some(p);
                        continue;
                    }
                    Ok(None) => continue,
                    Err(e) => err_reply(e),
                }
            }
            req => dispatch(&node, &caller, req),
        };
        if tx.lock().send(&reply).is_err() {
            return;
        }
    }
}

/// A `dm_get_events` of this connection parked in the session engine.
struct Park {
    sid: DmSessId,
    id: u64,
    /// Set once the engine called the waiter and its reply was sent.
    answered: Arc<(Mutex<bool>, Condvar)>,
}

impl Park {
    /// Withdraws the wait; `true` if it was still parked. If the engine had
    /// already taken it, waits until its reply is out, so replies keep their order.
    fn withdraw(&self, node: &Node) -> bool {
        if node.dm.engine().unpark(self.sid, self.id) {
            return true;
        }
        // Bounded: a waiter dropped uncalled (it should not be) must not
        // hang this connection for ever.
        let (m, cv) = &*self.answered;
        let mut done = m.lock();
        let until = Instant::now() + Duration::from_secs(5);
        while !*done && Instant::now() < until {
            cv.wait_until(&mut done, until);
        }
        false
    }
}

/// A waiting `dm_get_events`: answered now if events are queued (`Ok(None)`, the
/// reply sent), else parked, to be answered on the thread that queues the next
/// event: the DM application is woken by that thread's send, directly.
fn park(
    node: &Node,
    tx: &Arc<Mutex<Channel>>,
    sid: DmSessId,
    maxmsgs: u32,
    flags: u32,
    buflen: usize,
) -> DmResult<Option<Park>> {
    let answered = Arc::new((Mutex::new(false), Condvar::new()));
    let (t, a) = (tx.clone(), answered.clone());
    let waiter: EventsWaiter = Box::new(move |r| {
        let sent = send_events(&t, r, buflen);
        let (m, cv) = &*a;
        *m.lock() = true;
        cv.notify_all();
        sent
    });
    match node.dm.engine().get_events_or_park(sid, maxmsgs, flags, buflen, waiter)? {
        GetEvents::Parked(id) => Ok(Some(Park { sid, id, answered })),
        GetEvents::Ready(evs) => match send_events(tx, Ok(evs), buflen) {
            Ok(()) => Ok(None),
            Err(evs) => {
                // The client is gone; a later reader gets them.
                node.dm.engine().requeue(sid, evs);
                Ok(None)
            }
        },
    }
}

/// Sends `dm_get_events`' reply: the chained `dm_eventmsg_t` buffer, or the error.
/// Gives the events back if they could not be sent.
fn send_events(tx: &Mutex<Channel>, r: DmResult<Vec<DmEvent>>, buflen: usize) -> Result<(), Vec<DmEvent>> {
    let reply = match &r {
        Ok(evs) => match encode_chain(evs.iter(), evs.len(), buflen) {
            Ok((buf, _)) => Reply::Bytes(buf),
            Err(e) => err_reply(e),
        },
        Err(e) => err_reply(e.clone()),
    };
    match (tx.lock().send(&reply), r) {
        (Ok(()), _) => Ok(()),
        (Err(_), Ok(evs)) => Err(evs),
        (Err(_), Err(_)) => Ok(()),
    }
}

fn handle_of(b: &[u8]) -> DmResult<DmHandle> {
    DmHandle::from_bytes(b)
}

/// Calls that need root or the DM admin group.
fn privileged(req: &Request) -> bool {
    use Request::*;
    matches!(
        req,
        Generate { .. }
            | Mount { .. }
            | FuseMount { .. }
            | FuseUnmount { .. }
            | HandleOf { .. }
            | GetFileattr { .. }
            | SetFileattr { .. }
            | Bulk { .. }
            | GetDirattrs { .. }
            | InitAttrloc { .. }
            | ReadInvis { .. }
            | WriteInvis { .. }
            | SyncByHandle { .. }
            | ProbeHole { .. }
            | PunchHole { .. }
            | GetAllocinfo { .. }
            | SetRegion { .. }
            | GetRegion { .. }
            | SetDmattr { .. }
            | GetDmattr { .. }
            | RemoveDmattr { .. }
            | GetallDmattr { .. }
            | Right { .. }
            | ObjRef { .. }
            | Inherit { .. }
            | GetallInherit { .. }
            | ByHandle { .. }
            | HandleToPath { .. }
            | GetMountinfo { .. }
            | GetDioinfo { .. }
            | MountPath { .. }
    ) || matches!(req, SetEventlist { handle, .. } | GetEventlist { handle, .. }
            if DmHandle::from_bytes(handle).is_ok_and(|h| h.kind() != HandleKind::Fs))
}

/// What every file function starts with: the session and token checked,
/// the handle parsed, and the file system's file functions.
fn file_call(node: &Node, sid: i32, token: i32, handle: &[u8]) -> DmResult<(Arc<DmFs>, DmHandle)> {
    node.check_token(DmSessId(sid), DmToken(token))?;
    let h = handle_of(handle)?;
    Ok((node.files(h.fsid())?, h))
}

/// Where `fs` is mounted on this node: `EINVAL` if it is not (XFS's
/// libdm failed the same way when no mount table entry had the file system).
fn mount_path(node: &Node, fs: FsId) -> DmResult<std::path::PathBuf> {
    node.mounts().path_of_fs(fs).ok_or(DmError::Inval("the file system is not mounted on this node"))
}

fn dispatch(node: &Arc<Node>, caller: &Caller, req: Request) -> Reply {
    let dm = &node.dm;
    // Generating events and mounting stand in for the file system, and the file
    // functions reach any file's data and attributes whatever its mode: all
    // run with the daemon's authority, so only root or the DM admin group may
    // ask for them (a session id is no secret: they are small numbers).
    if privileged(&req) {
        let admin = node.config().dm_admin_gid.is_some_and(|g| caller.gids.contains(&g));
        if caller.uid != 0 && !admin {
            return err_reply(DmError::Perm("this call needs root or the node's dm_admin_gid"));
        }
    }
    let r: DmResult<Reply> = (|| {
        Ok(match req {
            Request::CreateSession { oldsid, info } => {
                Reply::Sid(dm.dm_create_session(caller, DmSessId(oldsid), &info)?.0)
            }
            Request::DestroySession { sid } => {
                dm.dm_destroy_session(DmSessId(sid))?;
                Reply::Ok
            }
            Request::QuerySession { sid } => Reply::Bytes(dm.dm_query_session(DmSessId(sid))?),
            Request::GetallSessions { nelem } => {
                Reply::Sids(dm.dm_getall_sessions(nelem as usize)?.into_iter().map(|s| s.0).collect())
            }
            Request::GetEvents { sid, maxmsgs, flags, buflen } => {
                Reply::Bytes(dm.dm_get_events(DmSessId(sid), maxmsgs, flags, buflen as usize)?)
            }
            Request::RespondEvent { sid, token, response, reterror, data } => {
                let r = DmResponse::from_raw(response, reterror)?;
                dm.dm_respond_event(DmSessId(sid), DmToken(token), r, &data)?;
                // XDSM: answering an event gives back the rights its token held.
                node.release_rights(Holder::new(DmSessId(sid), DmToken(token)));
                Reply::Ok
            }
            Request::Pending { sid, token, delay_ms } => {
                dm.dm_pending(DmSessId(sid), DmToken(token), Duration::from_millis(delay_ms))?;
                Reply::Ok
            }
            Request::MoveEvent { sid, token, target } => {
                let t = dm.dm_move_event(DmSessId(sid), DmToken(token), DmSessId(target))?;
                node.move_rights(Holder::new(DmSessId(sid), DmToken(token)), DmSessId(target));
                Reply::Token(t.0)
            }
            Request::FindEventmsg { sid, token, buflen } => {
                Reply::Bytes(dm.dm_find_eventmsg(DmSessId(sid), DmToken(token), buflen as usize)?)
            }
            Request::GetallTokens { sid, nelem } => {
                Reply::Tokens(dm.dm_getall_tokens(DmSessId(sid), nelem as usize)?.into_iter().map(|t| t.0).collect())
            }
            Request::CreateUserevent { sid, data } => Reply::Token(dm.dm_create_userevent(DmSessId(sid), &data)?.0),
            Request::SendMsg { sid, msgtype, data } => {
                dm.dm_send_msg(DmSessId(sid), DmMsgType::from_raw(msgtype)?, &data)?;
                Reply::Ok
            }
            Request::SetDisp { sid, token, handle, set } => {
                node.check_token(DmSessId(sid), DmToken(token))?;
                dm.dm_set_disp(DmSessId(sid), &handle_of(&handle)?, EventSet(set))?;
                Reply::Ok
            }
            Request::GetallDisp { sid } => Reply::Disp(
                dm.dm_getall_disp(DmSessId(sid))?.into_iter().map(|(h, s)| (h.as_bytes().to_vec(), s.0)).collect(),
            ),
            // A file system's event list is a disposition (the session manager
            // keeps it); a file's is in its inode.
            Request::SetEventlist { sid, token, handle, set } => {
                let h = handle_of(&handle)?;
                match h.kind() {
                    HandleKind::Fs => {
                        node.check_token(DmSessId(sid), DmToken(token))?;
                        dm.dm_set_eventlist(DmSessId(sid), &h, EventSet(set))?
                    }
                    _ => {
                        let (f, _) = file_call(node, sid, token, &handle)?;
                        f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Excl)?;
                        f.set_eventlist(&h, EventSet(set))?
                    }
                }
                Reply::Ok
            }
            Request::GetEventlist { sid, token, handle } => {
                let h = handle_of(&handle)?;
                match h.kind() {
                    HandleKind::Fs => {
                        node.check_token(DmSessId(sid), DmToken(token))?;
                        Reply::Set(dm.dm_get_eventlist(DmSessId(sid), &h)?.0)
                    }
                    _ => {
                        let (f, _) = file_call(node, sid, token, &handle)?;
                        f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                        Reply::Set(f.get_eventlist(&h)?.0)
                    }
                }
            }
            Request::SetReturnOnDestroy { sid, token, handle, attr, enable } => {
                node.check_token(DmSessId(sid), DmToken(token))?;
                dm.dm_set_return_on_destroy(
                    DmSessId(sid),
                    &handle_of(&handle)?,
                    DmAttrName { an_chars: attr },
                    enable,
                )?;
                Reply::Ok
            }
            Request::Generate { frame, file_events, attrs } => {
                let (f, _) = decode_frame(&frame).map_err(|_| DmError::Inval("generate: not an event frame"))?;
                let Message::Event { fs, event, .. } = f.msg else {
                    return Err(DmError::Inval("generate: not an event frame"));
                };
                let t0 = Instant::now();
                let r = node.generate_event(fs, event, EventSet(file_events), attrs)?;
                let (response, reterror) = r.to_raw();
                Reply::Generated { response, reterror, blocked_ns: t0.elapsed().as_nanos() as u64 }
            }
            Request::FuseMount { fs, path } => {
                let m =
                    FuseMountConfig { fs, path: path.into(), threads: tpfs::fuse::DEFAULT_THREADS, owner_only: false };
                node.mounts().mount(node, &m)?;
                Reply::Ok
            }
            Request::HandleOf { dev, ino, fs } => {
                let fsid =
                    node.mounts().fs_of_dev(dev).ok_or(DmError::Inval("not on a Tidepool mount of this node"))?;
                let h = if fs { DmHandle::fs(fsid) } else { node.files(fsid)?.handle_of(ino)? };
                Reply::Bytes(h.as_bytes().to_vec())
            }
            Request::GetFileattr { sid, token, handle } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                Reply::Stat((&f.get_fileattr(&h)?).into())
            }
            Request::SetFileattr { sid, token, handle, mask, stat } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Excl)?;
                f.set_fileattr(&h, mask, &stat.to_stat()?)?;
                Reply::Ok
            }
            Request::Bulk { sid, token, handle, attr, cookie, max } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                let (v, next) = if attr.is_empty() {
                    let (v, next) = f.get_bulkattr(&h, cookie, max)?;
                    (v.into_iter().map(|s| (s, None)).collect(), next)
                } else {
                    f.get_bulkall(&h, &attr, cookie, max)?
                };
                Reply::Stats { stats: v.iter().map(|(s, a)| (s.into(), a.clone())).collect(), next }
            }
            Request::InitAttrloc { sid, token, handle } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.init_attrloc(&h)?;
                Reply::Count(0)
            }
            Request::GetDirattrs { sid, token, handle, cookie, max } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                let (v, next) = f.get_dirattrs(&h, cookie, max)?;
                Reply::Stats { stats: v.iter().map(|s| (s.into(), None)).collect(), next }
            }
            Request::ReadInvis { sid, token, handle, off, len } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                Reply::Bytes(f.read_invis(&h, off, len)?)
            }
            Request::WriteInvis { sid, token, handle, off, data, sync } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                Reply::Count(f.write_invis(Holder::new(DmSessId(sid), DmToken(token)), &h, off, &data, sync)? as u64)
            }
            Request::SyncByHandle { sid, token, handle } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Excl)?;
                f.sync_by_handle(&h)?;
                Reply::Ok
            }
            Request::ProbeHole { sid, token, handle, off, len } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                let (o, l) = f.probe_hole(&h, off, len)?;
                Reply::Range(o, l)
            }
            Request::PunchHole { sid, token, handle, off, len } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.punch_hole(Holder::new(DmSessId(sid), DmToken(token)), &h, off, len)?;
                Reply::Ok
            }
            Request::GetAllocinfo { sid, token, handle } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                Reply::Extents(f.get_allocinfo(&h)?.into_iter().map(|(o, l, t)| (o, l, t as u32)).collect())
            }
            Request::SetRegion { sid, token, handle, regions } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Excl)?;
                let regions: Vec<Region> =
                    regions.into_iter().map(|(offset, size, flags)| Region { offset, size, flags }).collect();
                Reply::Flag(f.set_region(&h, &regions)?)
            }
            Request::GetRegion { sid, token, handle } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                Reply::Regions(f.get_region(&h)?.into_iter().map(|r| (r.offset, r.size, r.flags)).collect())
            }
            Request::SetDmattr { sid, token, handle, name, value } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Excl)?;
                f.set_dmattr(&h, &name, &value)?;
                Reply::Ok
            }
            Request::GetDmattr { sid, token, handle, name } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                Reply::Bytes(f.get_dmattr(&h, &name)?)
            }
            Request::RemoveDmattr { sid, token, handle, name } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Excl)?;
                f.remove_dmattr(&h, &name)?;
                Reply::Ok
            }
            Request::GetallDmattr { sid, token, handle } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                Reply::Attrs(f.getall_dmattr(&h)?)
            }
            Request::Right { sid, token, handle, op } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                let who = Holder::new(DmSessId(sid), DmToken(token));
                match op {
                    RightOp::Request { right, wait } => {
                        let r = match right {
                            0 => DmRight::Null,
                            1 => DmRight::Shared,
                            2 => DmRight::Excl,
                            _ => return Err(DmError::Inval("not a dm_right_t")),
                        };
                        f.request_right(who, &h, r, wait)?;
                        Reply::Ok
                    }
                    RightOp::Release => f.release_right(who, &h).map(|_| Reply::Ok)?,
                    RightOp::Upgrade => f.upgrade_right(who, &h).map(|_| Reply::Ok)?,
                    RightOp::Downgrade => f.downgrade_right(who, &h).map(|_| Reply::Ok)?,
                    RightOp::Query => Reply::Count(match f.query_right(who, &h)? {
                        DmRight::Null => 0,
                        DmRight::Shared => 1,
                        DmRight::Excl => 2,
                    }),
                }
            }
            Request::ObjRef { sid, token, handle, op } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                let who = Holder::new(DmSessId(sid), DmToken(token));
                match op {
                    ObjRefOp::Hold => f.obj_ref_hold(who, &h).map(|_| Reply::Ok)?,
                    ObjRefOp::Rele => {
                        if let Some(d) = f.obj_ref_rele(who, &h)? {
                            node.destroyed(h.fsid(), d);
                        }
                        Reply::Ok
                    }
                    ObjRefOp::Query => Reply::Flag(f.obj_ref_query(who, &h)?),
                }
            }
            Request::Inherit { sid, token, handle, name, mode } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                match mode {
                    Some(m) => f.set_inherit(&h, &name, m)?,
                    None => f.clear_inherit(&h, &name)?,
                }
                Reply::Ok
            }
            Request::GetallInherit { sid, token, handle } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                Reply::Inherit(f.getall_inherit(&h)?)
            }
            Request::ByHandle { sid, token, dir, handle, name, what } => {
                let (f, d) = file_call(node, sid, token, &dir)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &d, DmRight::Excl)?;
                f.create_by_handle(&d, &handle_of(&handle)?, &name, what)?;
                Reply::Ok
            }
            Request::HandleToPath { dir, target } => {
                let d = handle_of(&dir)?;
                let t = handle_of(&target)?;
                if t.fsid() != d.fsid() {
                    return Err(DmError::Inval("the object is on another file system"));
                }
                let mount = mount_path(node, d.fsid())?;
                let rel = node.files(d.fsid())?.path_of(&d, &t)?;
                let mut p = mount.into_os_string().into_vec();
                if !rel.is_empty() {
                    p.push(b'/');
                    p.extend_from_slice(&rel);
                }
                Reply::Bytes(p)
            }
            Request::GetMountinfo { sid, token, handle } => {
                node.check_token(DmSessId(sid), DmToken(token))?;
                let h = handle_of(&handle)?;
                if h.kind() != HandleKind::Fs {
                    return Err(DmError::Inval("dm_get_mountinfo takes a file system handle"));
                }
                let path = mount_path(node, h.fsid())?;
                let root = node.files(h.fsid())?.handle_of(tpfs::format::ROOT_INO)?;
                let media = format!("node-{}", node.config().node_id);
                Reply::Bytes(tpfs::fuse::mount_body(h.fsid(), root, &path, media.as_bytes()).to_bytes())
            }
            Request::GetDioinfo { sid, token, handle } => {
                let (f, h) = file_call(node, sid, token, &handle)?;
                f.need(Holder::new(DmSessId(sid), DmToken(token)), &h, DmRight::Shared)?;
                Reply::Dioinfo(f.dioinfo(&h)?)
            }
            Request::MountPath { fs } => Reply::Bytes(mount_path(node, FsId(fs))?.into_os_string().into_vec()),
            Request::FsLimits { handle } => {
                let h = handle_of(&handle)?;
                if h.kind() == HandleKind::Global {
                    return Err(DmError::BadF("the global handle names no file system"));
                }
                Reply::Limits(node.files(h.fsid())?.limits())
            }
            Request::FuseUnmount { path } => {
                node.mounts().unmount(Path::new(&path)).map_err(|e| DmError::from_errno(e, "unmount refused"))?;
                Reply::Ok
            }
            Request::Mount { fs, mounted } => {
                node.mount(FsId(fs), mounted);
                Reply::Ok
            }
            Request::Route { fs, event } => {
                Reply::Route(node.route(FsId(fs), EventType::from_raw(event)?).map(|e| (e.node.0, e.sid.0)))
            }
            Request::Status => Reply::Status(node.status()),
        })
    })();
    r.unwrap_or_else(err_reply)
}
