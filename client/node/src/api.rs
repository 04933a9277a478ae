//! The daemon's end of the local DM channel ([`libdmapi::channel`]): one thread
//! per connection, each call checked against the caller's credentials
//! (`SO_PEERCRED`) and dispatched to the node's DM session API and event source.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use dmapi::event::EventBody;
use dmapi::proto::{decode_frame, Message};
use dmapi::session::Caller;
use dmapi::types::{
    DmAttrName, DmHandle, DmMsgType, DmResponse, DmSessId, DmToken, EventSet, EventType, FsId, DM_EV_WAIT,
};
use dmapi::{DmError, DmResult};
use libdmapi::channel::{disp_seq_path, err_reply, read_msg, write_msg, Reply, Request};
use tracing::{debug, info, warn};

use crate::daemon::Node;
use crate::peercred::{peer_caller, peer_hung_up};

/// Serves the local API of `node` on `path` until the process exits.
pub fn serve(node: Arc<Node>, path: &Path) -> std::io::Result<()> {
    // A stale socket from a killed daemon would make bind fail.
    let _ = std::fs::remove_file(path);
    node.publish_disp_seq(&disp_seq_path(path))?;
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    info!(path = %path.display(), "local API listening");
    thread::Builder::new().name("dm-api-accept".into()).spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let n = node.clone();
            let _ = thread::Builder::new().name("dm-api".into()).spawn(move || serve_conn(n, s));
        }
    })?;
    Ok(())
}

fn serve_conn(node: Arc<Node>, mut s: UnixStream) {
    let (caller, pid) = match peer_caller(&s) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "local API peer without credentials; refused");
            return;
        }
    };
    debug!(pid, uid = caller.uid, "local API client connected");
    loop {
        let req: Request = match read_msg(&mut s) {
            Ok(r) => r,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    warn!(pid, error = %e, "bad local API message; connection closed");
                }
                return;
            }
        };
        let watch = match &req {
            Request::GetEvents { sid, flags, .. } if flags & DM_EV_WAIT != 0 => watch_hangup(&s, &node, DmSessId(*sid)),
            _ => None,
        };
        let reply = dispatch(&node, &caller, req);
        if let Some(done) = watch {
            done.store(true, Ordering::Release);
        }
        if write_msg(&mut s, &reply).is_err() {
            return;
        }
    }
}

/// While a `dm_get_events` waits for `sid`, watches the client's socket: if the
/// client goes away (a killed DM application), the wait is interrupted, so that no
/// event is taken off the queue for a reader that no longer exists. Returns the
/// flag that tells the watcher the call ended normally.
fn watch_hangup(s: &UnixStream, node: &Arc<Node>, sid: DmSessId) -> Option<Arc<AtomicBool>> {
    let c = s.try_clone().ok()?;
    let done = Arc::new(AtomicBool::new(false));
    let (d, n) = (done.clone(), node.clone());
    thread::Builder::new()
        .name("dm-api-watch".into())
        .spawn(move || {
            while !d.load(Ordering::Acquire) {
                if peer_hung_up(&c, 100) {
                    info!(%sid, "DM application went away while waiting for events; wait interrupted");
                    let _ = n.dm.engine().interrupt(sid);
                    return;
                }
            }
        })
        .ok()?;
    Some(done)
}

fn handle_of(b: &[u8]) -> DmResult<DmHandle> {
    DmHandle::from_bytes(b)
}

fn dispatch(node: &Node, caller: &Caller, req: Request) -> Reply {
    let dm = &node.dm;
    // Generating events and mounting stand in for the file system, which runs with
    // the daemon's authority: only root or the DM admin group may ask for them.
    if matches!(req, Request::Generate { .. } | Request::Mount { .. }) {
        let admin = node.config().dm_admin_gid.is_some_and(|g| caller.gids.contains(&g));
        if caller.uid != 0 && !admin {
            return err_reply(DmError::Perm("generating events or mounting needs privilege"));
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
                Reply::Ok
            }
            Request::Pending { sid, token, delay_ms } => {
                dm.dm_pending(DmSessId(sid), DmToken(token), Duration::from_millis(delay_ms))?;
                Reply::Ok
            }
            Request::MoveEvent { sid, token, target } => {
                Reply::Token(dm.dm_move_event(DmSessId(sid), DmToken(token), DmSessId(target))?.0)
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
            Request::SetDisp { sid, handle, set } => {
                dm.dm_set_disp(DmSessId(sid), &handle_of(&handle)?, EventSet(set))?;
                Reply::Ok
            }
            Request::GetallDisp { sid } => Reply::Disp(
                dm.dm_getall_disp(DmSessId(sid))?.into_iter().map(|(h, s)| (h.as_bytes().to_vec(), s.0)).collect(),
            ),
            Request::SetEventlist { sid, handle, set } => {
                dm.dm_set_eventlist(DmSessId(sid), &handle_of(&handle)?, EventSet(set))?;
                Reply::Ok
            }
            Request::GetEventlist { sid, handle } => {
                Reply::Set(dm.dm_get_eventlist(DmSessId(sid), &handle_of(&handle)?)?.0)
            }
            Request::SetReturnOnDestroy { sid, handle, attr, enable } => {
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
                let Message::Event { fs, mut event, .. } = f.msg else {
                    return Err(DmError::Inval("generate: not an event frame"));
                };
                if let EventBody::Destroy { attrname, attrcopy, .. } = &mut event.body {
                    if let Some(name) = node.table().return_on_destroy(fs) {
                        *attrname = name;
                        let n = &name.an_chars[..name.an_chars.iter().position(|&c| c == 0).unwrap_or(8)];
                        *attrcopy = attrs.into_iter().find(|(a, _)| a == n).map(|(_, v)| v).unwrap_or_default();
                    }
                }
                let t0 = Instant::now();
                let r = node.source.generate_with_filelist(fs, event, EventSet(file_events));
                let blocked_ns = t0.elapsed().as_nanos() as u64;
                let (response, reterror) = match r {
                    Ok(resp) => resp.to_raw(),
                    Err(DmError::Aborted(e)) => DmResponse::Abort(e).to_raw(),
                    Err(e) => return Err(e),
                };
                Reply::Generated { response, reterror, blocked_ns }
            }
            Request::DispView { fs } => {
                let (seq, v) = node.disp_view(FsId(fs));
                Reply::DispView { seq, disposed: v.disposed.0, fs_list: v.fs_list.0 }
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
