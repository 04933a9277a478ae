//! The C ABI: `include/dmapi.h`'s functions over [`Dm`], for DM applications
//! written in C against the XDSM interface.
//!
//! Every function returns 0 (the byte count for the invisible I/O calls) or
//! -1 with `errno` set, as XDSM says; `E2BIG` reports the length that would
//! do through the call's length pointer. Each thread of a C program gets its
//! own connection to the node daemon (opened at its first call), so one
//! thread can wait in `dm_get_events` while others answer events. A panic
//! never crosses into C: it becomes `EIO`.
//!
//! The raw-pointer work is all in [`ffi`]; this module is safe Rust over it.

pub mod layout;

mod ffi;

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_uint, c_void, OsStr};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::Duration;

use dmapi::types::{
    dm_at, DmAttrName, DmConfig, DmHandle, DmMsgType, DmRegion, DmResponse, DmRight, DmSessId, DmStat, DmToken,
    EventSet, EventType, ExtentType, FsId, HandleKind, DM_ATTR_NAME_SIZE, DM_MAX_HANDLE_SIZE, DM_SESSION_INFO_LEN,
};
use dmapi::{DmError, DmResult};
use zerocopy::IntoBytes;

use crate::channel::ByHandle;
use crate::Dm;
use ffi::{Buf, Out};
use layout::{AttrList, DioInfo, DispInfo, Extent, FileAttr, Inherit, Region, Stat, VarData};

/// `DM_WRITE_SYNC`.
const DM_WRITE_SYNC: c_int = 0x1;

/// [`crate::VERSION`], NUL-terminated for C, for the life of the process.
fn version_c() -> &'static std::ffi::CStr {
    static V: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
    V.get_or_init(|| std::ffi::CString::new(crate::VERSION).expect("no NUL in the version"))
}

thread_local! {
    /// This thread's connection, and the process it was opened in: a forked
    /// child must not share its parent's (their calls and answers would mix).
    static CONN: RefCell<Option<(u32, Dm)>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's connection, opening it first if needed.
fn with_dm<T>(f: impl FnOnce(&Dm) -> DmResult<T>) -> DmResult<T> {
    CONN.with(|c| {
        let mut c = c.borrow_mut();
        let me = std::process::id();
        if c.as_ref().is_none_or(|(pid, _)| *pid != me) {
            let path = crate::default_socket()?;
            let dm = Dm::connect(&path).map_err(|e| no_daemon(&path, &e))?;
            *c = Some((me, dm));
        }
        match c.as_ref() {
            Some((_, dm)) => f(dm),
            None => Err(DmError::Io("no connection".into())),
        }
    })
}

fn no_daemon(path: &Path, e: &std::io::Error) -> DmError {
    DmError::Io(format!(
        "no Tidepool node daemon at {} ({e}): start `tidepool node run` or set TIDEPOOL_DM_SOCKET",
        path.display()
    ))
}

fn session(sid: c_int) -> DmSessId {
    DmSessId(sid)
}

fn token(t: c_int) -> DmToken {
    DmToken(t)
}

fn events_to_set(set: u64, maxevent: c_uint) -> DmResult<EventSet> {
    if maxevent as usize > EventType::ALL.len() {
        return Err(DmError::Inval("maxevent beyond DM_EVENT_MAX"));
    }
    Ok(EventSet(set & below(maxevent)))
}

/// The event numbers below `n`, as a set.
fn below(n: c_uint) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

fn attr_name(n: &[u8; DM_ATTR_NAME_SIZE]) -> DmResult<Vec<u8>> {
    let len = n.iter().position(|b| *b == 0).unwrap_or(DM_ATTR_NAME_SIZE);
    if len == 0 {
        return Err(DmError::Inval("empty DM attribute name"));
    }
    Ok(n[..len].to_vec())
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// A chained buffer of records (`_link` offsets, each record 8-byte aligned).
struct Chain {
    buf: Vec<u8>,
    last: Option<usize>,
}

impl Chain {
    fn new() -> Chain {
        Chain { buf: Vec::new(), last: None }
    }

    /// Appends a record: `head` then `tails`, each tail 8-byte aligned after
    /// the one before; `fix(head_bytes, tail_offsets)` fills the vardata fields.
    fn push(&mut self, head: &[u8], tails: &[&[u8]], fix: impl FnOnce(&mut [u8], &[(usize, usize)])) {
        let start = self.buf.len();
        if let Some(l) = self.last {
            let link = (start - l) as i32;
            self.buf[l..l + 4].copy_from_slice(&link.to_ne_bytes());
        }
        self.buf.extend_from_slice(head);
        let mut offs = Vec::with_capacity(tails.len());
        for t in tails {
            let at = align8(self.buf.len());
            self.buf.resize(at, 0);
            offs.push((at - start, t.len()));
            self.buf.extend_from_slice(t);
        }
        let end = align8(self.buf.len());
        self.buf.resize(end, 0);
        fix(&mut self.buf[start..start + head.len()], &offs);
        self.last = Some(start);
    }

    fn record_len(head: usize, tails: &[usize]) -> usize {
        let mut n = head;
        for t in tails {
            n = align8(n) + t;
        }
        align8(n)
    }
}

fn vardata(off_len: (usize, usize)) -> VarData {
    VarData { vd_offset: off_len.0 as i32, vd_length: off_len.1 as u32 }
}

fn stat_record(st: &DmStat) -> Stat {
    Stat {
        dt_emask: st.emask.0,
        dt_pmanreg: st.pmanreg as i32,
        dt_dtime: st.dtime,
        dt_ino: st.ino,
        dt_mode: st.mode as i32,
        dt_nlink: st.nlink as i32,
        dt_uid: st.uid,
        dt_gid: st.gid,
        dt_size: st.size as i64,
        dt_atime: st.atime,
        dt_mtime: st.mtime,
        dt_ctime: st.ctime,
        dt_blksize: st.blksize,
        dt_blocks: st.blocks,
        dt_change: st.change,
        dt_nevents: EventType::ALL.len() as i32,
        xfs_igen: st.handle.and_then(|h| h.igen().ok()).unwrap_or(0),
        ..Stat::default()
    }
}

/// `dm_stat_t` records for the bulk calls, handle (and name) after each.
fn encode_stats(stats: &[DmStat], with_name: bool) -> Vec<u8> {
    let mut c = Chain::new();
    for st in stats {
        let rec = stat_record(st);
        let h = st.handle.map(|h| h.as_bytes().to_vec()).unwrap_or_default();
        let mut name = st.compname.clone();
        name.push(0);
        let tails: Vec<&[u8]> = if with_name { vec![&h, &name] } else { vec![&h] };
        c.push(rec.as_bytes(), &tails, |head, offs| {
            let mut r = rec;
            r.dt_handle = vardata(offs[0]);
            if with_name {
                r.dt_compname = vardata(offs[1]);
            }
            head.copy_from_slice(r.as_bytes());
        });
    }
    c.buf
}

/// The largest record a bulk call may return (handle, and a 255-byte name).
fn stat_record_max(with_name: bool) -> usize {
    let tails: &[usize] = if with_name { &[DM_MAX_HANDLE_SIZE, 256] } else { &[DM_MAX_HANDLE_SIZE] };
    Chain::record_len(std::mem::size_of::<Stat>(), tails)
}

// ---- sessions and events ----

fn init_service() -> DmResult<()> {
    match with_dm(|dm| dm.dm_init_service().map(|_| ())) {
        Ok(()) => Ok(()),
        Err(e) => {
            // A C program has no other way to learn why.
            eprintln!("dm_init_service: {e}");
            CONN.with(|c| c.borrow_mut().take());
            Err(e)
        }
    }
}

fn create_session(oldsid: c_int, info: &[u8]) -> DmResult<c_int> {
    if info.len() > DM_SESSION_INFO_LEN {
        return Err(DmError::TooBig { needed: DM_SESSION_INFO_LEN });
    }
    with_dm(|dm| dm.dm_create_session(session(oldsid), info)).map(|s| s.0)
}

fn respond(sid: c_int, tok: c_int, response: c_int, reterror: c_int, data: &[u8]) -> DmResult<()> {
    let r = DmResponse::from_raw(response, reterror)?;
    with_dm(|dm| dm.dm_respond_event(session(sid), token(tok), r, data))
}

fn send_msg(sid: c_int, msgtype: c_int, data: &[u8]) -> DmResult<()> {
    let t = match msgtype {
        1 => DmMsgType::Sync,
        2 => DmMsgType::Async,
        _ => return Err(DmError::Inval("unknown dm_msgtype_t")),
    };
    with_dm(|dm| dm.dm_send_msg(session(sid), t, data))
}

fn getall_disp(sid: c_int) -> DmResult<Vec<u8>> {
    let v = with_dm(|dm| dm.dm_getall_disp(session(sid)))?;
    let mut c = Chain::new();
    for (h, set) in v {
        let rec = DispInfo { di_eventset: set.0, ..DispInfo::default() };
        c.push(rec.as_bytes(), &[h.as_bytes()], |head, offs| {
            let mut r = rec;
            r.di_fshandle = vardata(offs[0]);
            head.copy_from_slice(r.as_bytes());
        });
    }
    Ok(c.buf)
}

fn getall_dmattr(sid: c_int, h: &DmHandle, tok: c_int) -> DmResult<Vec<u8>> {
    let v = with_dm(|dm| dm.dm_getall_dmattr(session(sid), h, token(tok)))?;
    let mut c = Chain::new();
    for (name, value) in v {
        let mut al_name = [0u8; DM_ATTR_NAME_SIZE];
        let n = name.len().min(DM_ATTR_NAME_SIZE);
        al_name[..n].copy_from_slice(&name[..n]);
        let rec = AttrList { al_name, ..AttrList::default() };
        c.push(rec.as_bytes(), &[&value], |head, offs| {
            let mut r = rec;
            r.al_data = vardata(offs[0]);
            head.copy_from_slice(r.as_bytes());
        });
    }
    Ok(c.buf)
}

fn fileattr_to_stat(mask: u32, fa: &FileAttr) -> DmResult<DmStat> {
    let known =
        dm_at::MODE | dm_at::UID | dm_at::GID | dm_at::ATIME | dm_at::MTIME | dm_at::CTIME | dm_at::SIZE | dm_at::DTIME;
    if mask & !known != 0 {
        return Err(DmError::Inval("dm_set_fileattr mask names a field it cannot set"));
    }
    Ok(DmStat {
        mode: fa.fa_mode,
        uid: fa.fa_uid,
        gid: fa.fa_gid,
        atime: fa.fa_atime,
        mtime: fa.fa_mtime,
        ctime: fa.fa_ctime,
        dtime: fa.fa_dtime,
        size: u64::try_from(fa.fa_size).map_err(|_| DmError::Inval("negative size"))?,
        ..DmStat::default()
    })
}

fn right_of(r: c_int) -> DmResult<DmRight> {
    match r {
        0 => Ok(DmRight::Null),
        1 => Ok(DmRight::Shared),
        2 => Ok(DmRight::Excl),
        _ => Err(DmError::Inval("unknown dm_right_t")),
    }
}

fn right_value(r: DmRight) -> c_int {
    match r {
        DmRight::Null => 0,
        DmRight::Shared => 1,
        DmRight::Excl => 2,
    }
}

fn delay_of(sec: i64, nsec: i32) -> DmResult<Duration> {
    if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
        return Err(DmError::Inval("bad dm_timestruct_t"));
    }
    Ok(Duration::new(sec as u64, nsec as u32))
}

fn region_of(r: &Region) -> DmResult<DmRegion> {
    Ok(DmRegion {
        offset: u64::try_from(r.rg_offset).map_err(|_| DmError::Inval("negative region offset"))?,
        size: r.rg_size,
        flags: r.rg_flags,
    })
}

fn region_c(r: &DmRegion) -> Region {
    Region { rg_offset: r.offset as i64, rg_size: r.size, rg_flags: r.flags, rg_pad1: 0 }
}

fn extent_c(off: u64, len: u64, t: ExtentType) -> Extent {
    Extent { ex_type: t as u32, ex_pad1: 0, ex_offset: off as i64, ex_length: len }
}

/// The file system a handle is on (the global handle is on none).
fn fs_id(h: &DmHandle) -> DmResult<FsId> {
    if h.kind() == HandleKind::Global {
        return Err(DmError::BadF("the global handle has no file system"));
    }
    Ok(h.fsid())
}

/// An event set cut to the event numbers below `nelem` into `*eventsetp`,
/// and into `*nelemp` how many event numbers it speaks of (SGI's library).
fn put_eventset(set: EventSet, nelem: c_uint, eventsetp: *mut u64, nelemp: *mut c_uint) -> DmResult<()> {
    let (set_out, n_out) = (Out::new(eventsetp)?, Out::new(nelemp)?);
    set_out.set(set.0 & below(nelem))?;
    n_out.set(nelem.min(EventType::ALL.len() as c_uint))
}

/// Output helpers the shims share.
fn put_bytes(src: &[u8], buflen: usize, buf: Buf, rlen: Out<usize>) -> DmResult<()> {
    rlen.set(src.len())?;
    if src.len() > buflen {
        return Err(DmError::TooBig { needed: src.len() });
    }
    buf.write(src)
}

/// An event buffer the daemon built for `buflen` to the caller; its E2BIG
/// (the first message's length) to `*rlenp` too.
fn chain_out(r: DmResult<Vec<u8>>, buflen: usize, bufp: *mut c_void, rlen: Out<usize>) -> DmResult<()> {
    match r {
        Ok(b) => put_bytes(&b, buflen, Buf::new(bufp, buflen), rlen),
        Err(DmError::TooBig { needed }) => {
            rlen.set(needed)?;
            Err(DmError::TooBig { needed })
        }
        Err(e) => Err(e),
    }
}

/// Copies `items` into the caller's array of `nelem`, `*nelemp` = how many there
/// are; `E2BIG` if they do not fit.
fn put_array<T: IntoBytes + zerocopy::Immutable>(items: &[T], nelem: c_uint, buf: Buf, n: Out<c_uint>) -> DmResult<()> {
    n.set(items.len() as c_uint)?;
    if items.len() > nelem as usize {
        return Err(DmError::TooBig { needed: items.len() });
    }
    buf.write(items.as_bytes())
}

// ---- the C entry points ----
//
// Each one: arguments checked (ffi), the Rust call, results copied out; 0 or
// -1 and errno. Names and signatures are XDSM's.

type Sid = c_int;
type Tok = c_int;

#[no_mangle]
pub extern "C" fn dm_init_service(versionstrpp: *mut *mut c_char) -> c_int {
    ffi::call(-1, || {
        init_service()?;
        Out::new(versionstrpp)?.set(version_c().as_ptr() as *mut c_char)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_create_session(oldsid: Sid, sessinfop: *mut c_char, newsidp: *mut Sid) -> c_int {
    ffi::call(-1, || {
        let info = ffi::cstr_in(sessinfop)?;
        let out = Out::new(newsidp)?;
        let sid = create_session(oldsid, info)?;
        out.set(sid)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_destroy_session(sid: Sid) -> c_int {
    ffi::call(-1, || with_dm(|dm| dm.dm_destroy_session(session(sid))).map(|_| 0))
}

#[no_mangle]
pub extern "C" fn dm_query_session(sid: Sid, buflen: usize, bufp: *mut c_void, rlenp: *mut usize) -> c_int {
    ffi::call(-1, || {
        let mut info = with_dm(|dm| dm.dm_query_session(session(sid)))?;
        // The info string as the session was given it, NUL terminated.
        info.push(0);
        put_bytes(&info, buflen, Buf::new(bufp, buflen), Out::new(rlenp)?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_getall_sessions(nelem: c_uint, sidbufp: *mut Sid, nelemp: *mut c_uint) -> c_int {
    ffi::call(-1, || {
        let v: Vec<i32> = with_dm(|dm| dm.dm_getall_sessions(usize::MAX))?.into_iter().map(|s| s.0).collect();
        let size = nelem as usize * std::mem::size_of::<Sid>();
        put_array(&v, nelem, Buf::new(sidbufp.cast(), size), Out::new(nelemp)?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_get_events(
    sid: Sid,
    maxmsgs: c_uint,
    flags: c_uint,
    buflen: usize,
    bufp: *mut c_void,
    rlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let rlen = Out::new(rlenp)?;
        let r = with_dm(|dm| dm.dm_get_events(session(sid), maxmsgs, flags, buflen));
        chain_out(r, buflen, bufp, rlen).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_respond_event(
    sid: Sid,
    token: Tok,
    response: c_int,
    reterror: c_int,
    buflen: usize,
    respbufp: *mut c_void,
) -> c_int {
    ffi::call(-1, || {
        let data = ffi::bytes_in(respbufp, buflen)?;
        respond(sid, token, response, reterror, data).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_pending(sid: Sid, token: Tok, delay: *mut layout::TimeStruct) -> c_int {
    ffi::call(-1, || {
        let d = ffi::value_in(delay)?;
        let d = delay_of(d.dm_tv_sec, d.dm_tv_nsec)?;
        with_dm(|dm| dm.dm_pending(session(sid), self::token(token), d)).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_move_event(srcsid: Sid, token: Tok, targetsid: Sid, rtokenp: *mut Tok) -> c_int {
    ffi::call(-1, || {
        let out = Out::new(rtokenp)?;
        let t = with_dm(|dm| dm.dm_move_event(session(srcsid), self::token(token), session(targetsid)))?;
        out.set(t.0)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_find_eventmsg(sid: Sid, token: Tok, buflen: usize, bufp: *mut c_void, rlenp: *mut usize) -> c_int {
    ffi::call(-1, || {
        let rlen = Out::new(rlenp)?;
        let r = with_dm(|dm| dm.dm_find_eventmsg(session(sid), self::token(token), buflen));
        chain_out(r, buflen, bufp, rlen).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_getall_tokens(sid: Sid, nelem: c_uint, tokenbufp: *mut Tok, nelemp: *mut c_uint) -> c_int {
    ffi::call(-1, || {
        let v: Vec<i32> =
            with_dm(|dm| dm.dm_getall_tokens(session(sid), usize::MAX))?.into_iter().map(|t| t.0).collect();
        let size = nelem as usize * std::mem::size_of::<Tok>();
        put_array(&v, nelem, Buf::new(tokenbufp.cast(), size), Out::new(nelemp)?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_create_userevent(sid: Sid, msglen: usize, msgdatap: *mut c_void, tokenp: *mut Tok) -> c_int {
    ffi::call(-1, || {
        let data = ffi::bytes_in(msgdatap, msglen)?;
        let out = Out::new(tokenp)?;
        let t = with_dm(|dm| dm.dm_create_userevent(session(sid), data))?;
        out.set(t.0)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_send_msg(targetsid: Sid, msgtype: c_int, buflen: usize, bufp: *mut c_void) -> c_int {
    ffi::call(-1, || {
        let data = ffi::bytes_in(bufp, buflen)?;
        send_msg(targetsid, msgtype, data).map(|_| 0)
    })
}

/// `dm_set_disp` and `dm_set_eventlist`: an event set for a handle.
fn set_events(
    sid: Sid,
    (hanp, hlen): (*mut c_void, usize),
    token: Tok,
    eventsetp: *mut u64,
    maxevent: c_uint,
    f: fn(&Dm, DmSessId, &DmHandle, DmToken, EventSet) -> DmResult<()>,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let set = events_to_set(ffi::value_in(eventsetp)?, maxevent)?;
        with_dm(|dm| f(dm, session(sid), &h, self::token(token), set)).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_set_disp(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    eventsetp: *mut u64,
    maxevent: c_uint,
) -> c_int {
    set_events(sid, (hanp, hlen), token, eventsetp, maxevent, Dm::dm_set_disp)
}

#[no_mangle]
pub extern "C" fn dm_getall_disp(sid: Sid, buflen: usize, bufp: *mut c_void, rlenp: *mut usize) -> c_int {
    ffi::call(-1, || {
        let b = getall_disp(sid)?;
        put_bytes(&b, buflen, Buf::new(bufp, buflen), Out::new(rlenp)?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_set_eventlist(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    eventsetp: *mut u64,
    maxevent: c_uint,
) -> c_int {
    set_events(sid, (hanp, hlen), token, eventsetp, maxevent, Dm::dm_set_eventlist)
}

#[no_mangle]
pub extern "C" fn dm_get_eventlist(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    nelem: c_uint,
    eventsetp: *mut u64,
    nelemp: *mut c_uint,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        // Checked before the call changes anything.
        Out::new(eventsetp)?;
        Out::new(nelemp)?;
        let set = with_dm(|dm| dm.dm_get_eventlist(session(sid), &h, self::token(token)))?;
        put_eventset(set, nelem, eventsetp, nelemp).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_set_return_on_destroy(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    attrnamep: *mut DmAttrName,
    enable: c_uint,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let name = ffi::value_in(attrnamep)?;
        with_dm(|dm| dm.dm_set_return_on_destroy(session(sid), &h, self::token(token), name, enable != 0)).map(|_| 0)
    })
}

// ---- handles ----

#[no_mangle]
pub extern "C" fn dm_path_to_handle(path: *mut c_char, hanpp: *mut *mut c_void, hlenp: *mut usize) -> c_int {
    ffi::call(-1, || {
        let p = Path::new(OsStr::from_bytes(ffi::cstr_in(path)?));
        let h = with_dm(|dm| dm.dm_path_to_handle(p))?;
        ffi::handle_out(&h, hanpp, hlenp)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_path_to_fshandle(path: *mut c_char, hanpp: *mut *mut c_void, hlenp: *mut usize) -> c_int {
    ffi::call(-1, || {
        let p = Path::new(OsStr::from_bytes(ffi::cstr_in(path)?));
        let h = with_dm(|dm| dm.dm_path_to_fshandle(p))?;
        ffi::handle_out(&h, hanpp, hlenp)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_fd_to_handle(fd: c_int, hanpp: *mut *mut c_void, hlenp: *mut usize) -> c_int {
    ffi::call(-1, || {
        let (dev, ino) = ffi::fstat(fd)?;
        let h = with_dm(|dm| dm.handle_of(dev, ino, false))?;
        ffi::handle_out(&h, hanpp, hlenp)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_handle_free(hanp: *mut c_void, hlen: usize) {
    let _ = hlen;
    ffi::handle_free(hanp)
}

#[no_mangle]
pub extern "C" fn dm_handle_is_valid(hanp: *mut c_void, hlen: usize) -> c_uint {
    ffi::call(0, || Ok(ffi::handle_in(hanp, hlen).is_ok() as c_uint))
}

#[no_mangle]
pub extern "C" fn dm_handle_cmp(hanp1: *mut c_void, hlen1: usize, hanp2: *mut c_void, hlen2: usize) -> c_int {
    ffi::call(-1, || {
        let a = ffi::bytes_in(hanp1, hlen1)?;
        let b = ffi::bytes_in(hanp2, hlen2)?;
        Ok(match a.cmp(b) {
            std::cmp::Ordering::Less => -1,
            std::cmp::Ordering::Equal => 0,
            std::cmp::Ordering::Greater => 1,
        })
    })
}

#[no_mangle]
pub extern "C" fn dm_handle_hash(hanp: *mut c_void, hlen: usize) -> c_uint {
    ffi::call(0, || {
        // FNV-1a over the handle's bytes: stable across processes and nodes.
        let b = ffi::bytes_in(hanp, hlen)?;
        Ok(b.iter().fold(0x811c_9dc5u32, |h, x| (h ^ *x as u32).wrapping_mul(0x0100_0193)))
    })
}

#[no_mangle]
pub extern "C" fn dm_handle_to_fshandle(
    hanp: *mut c_void,
    hlen: usize,
    fshanpp: *mut *mut c_void,
    fshlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        ffi::handle_out(&DmHandle::fs(fs_id(&h)?), fshanpp, fshlenp)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_handle_to_fsid(hanp: *mut c_void, hlen: usize, fsidp: *mut u64) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        Out::new(fsidp)?.set(fs_id(&h)?.0)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_handle_to_ino(hanp: *mut c_void, hlen: usize, inop: *mut u64) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        Out::new(inop)?.set(h.ino()?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_handle_to_igen(hanp: *mut c_void, hlen: usize, igenp: *mut u32) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        Out::new(igenp)?.set(h.igen()?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_make_handle(
    fsidp: *mut u64,
    inop: *mut u64,
    igenp: *mut u32,
    hanpp: *mut *mut c_void,
    hlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let h = DmHandle::file(FsId(ffi::value_in(fsidp)?), ffi::value_in(inop)?, ffi::value_in(igenp)?);
        ffi::handle_out(&h, hanpp, hlenp)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_make_fshandle(fsidp: *mut u64, hanpp: *mut *mut c_void, hlenp: *mut usize) -> c_int {
    ffi::call(-1, || {
        ffi::handle_out(&DmHandle::fs(FsId(ffi::value_in(fsidp)?)), hanpp, hlenp)?;
        Ok(0)
    })
}

// ---- file functions ----

/// A call on `(hanp, hlen)` under `token` with nothing to return.
fn handle_call(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    f: fn(&Dm, DmSessId, &DmHandle, DmToken) -> DmResult<()>,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        with_dm(|dm| f(dm, session(sid), &h, self::token(token))).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_get_fileattr(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    mask: c_uint,
    statp: *mut Stat,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        if mask & !dm_at::ALL != 0 {
            return Err(DmError::Inval("unknown DM_AT_* bits in mask"));
        }
        let st = with_dm(|dm| dm.dm_get_fileattr(session(sid), &h, self::token(token)))?;
        let mut rec = stat_record(&st);
        // No variable data here: the caller's dm_stat_t has no room for it.
        rec.dt_handle = VarData::default();
        Buf::new(statp.cast(), std::mem::size_of::<Stat>()).write(rec.as_bytes())?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_set_fileattr(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    mask: c_uint,
    attrp: *mut FileAttr,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let fa = ffi::value_in(attrp)?;
        let st = fileattr_to_stat(mask, &fa)?;
        with_dm(|dm| dm.dm_set_fileattr(session(sid), &h, self::token(token), mask, &st)).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_init_attrloc(sid: Sid, hanp: *mut c_void, hlen: usize, token: Tok, locp: *mut i64) -> c_int {
    ffi::call(-1, || {
        let out = Out::new(locp)?;
        let h = ffi::handle_in(hanp, hlen)?;
        let start = with_dm(|dm| dm.dm_init_attrloc(session(sid), &h, self::token(token)))?;
        out.set(start as i64)?;
        Ok(0)
    })
}

/// The bulk scans: as many records (each at most `per` bytes) as `buflen`
/// surely holds, from the cookie in `*locp`; `fetch(cookie, max)` gets them,
/// encoded, with the next cookie. 1 when more remain, 0 at the end.
fn scan(
    per: usize,
    locp: *mut i64,
    buflen: usize,
    bufp: *mut c_void,
    rlenp: *mut usize,
    fetch: impl FnOnce(u64, u32) -> DmResult<(Vec<u8>, u64)>,
) -> DmResult<c_int> {
    let cookie = ffi::value_in(locp)? as u64;
    let (loc, rlen) = (Out::new(locp)?, Out::new(rlenp)?);
    let max = (buflen / per) as u32;
    if max == 0 {
        rlen.set(per)?;
        return Err(DmError::TooBig { needed: per });
    }
    let (b, next) = fetch(cookie, max)?;
    put_bytes(&b, buflen, Buf::new(bufp, buflen), rlen)?;
    loc.set(next as i64)?;
    Ok((next != 0) as c_int)
}

/// [`scan`] of `dm_stat_t` records.
fn scan_stats(
    with_name: bool,
    locp: *mut i64,
    buflen: usize,
    bufp: *mut c_void,
    rlenp: *mut usize,
    fetch: impl FnOnce(u64, u32) -> DmResult<(Vec<DmStat>, u64)>,
) -> DmResult<c_int> {
    scan(stat_record_max(with_name), locp, buflen, bufp, rlenp, |c, m| {
        fetch(c, m).map(|(stats, next)| (encode_stats(&stats, with_name), next))
    })
}

#[no_mangle]
pub extern "C" fn dm_get_bulkattr(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    mask: c_uint,
    locp: *mut i64,
    buflen: usize,
    bufp: *mut c_void,
    rlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let _ = mask;
        let t = self::token(token);
        scan_stats(false, locp, buflen, bufp, rlenp, |c, m| with_dm(|dm| dm.dm_get_bulkattr(session(sid), &h, t, c, m)))
    })
}

#[no_mangle]
pub extern "C" fn dm_get_dirattrs(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    mask: c_uint,
    locp: *mut i64,
    buflen: usize,
    bufp: *mut c_void,
    rlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let _ = mask;
        scan_stats(true, locp, buflen, bufp, rlenp, |c, m| {
            with_dm(|dm| dm.dm_get_dirattrs(session(sid), &h, self::token(token), c, m))
        })
    })
}

#[no_mangle]
pub extern "C" fn dm_read_invis(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    off: i64,
    len: u64,
    bufp: *mut c_void,
) -> i64 {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let off = u64::try_from(off).map_err(|_| DmError::Inval("negative offset"))?;
        let data = with_dm(|dm| dm.dm_read_invis(session(sid), &h, self::token(token), off, len))?;
        Buf::new(bufp, len as usize).write(&data)?;
        Ok(data.len() as i64)
    })
}

#[no_mangle]
pub extern "C" fn dm_write_invis(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    flags: c_int,
    off: i64,
    len: u64,
    bufp: *mut c_void,
) -> i64 {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        if flags & !DM_WRITE_SYNC != 0 {
            return Err(DmError::Inval("unknown dm_write_invis flags"));
        }
        let off = u64::try_from(off).map_err(|_| DmError::Inval("negative offset"))?;
        let data = ffi::bytes_in(bufp, len as usize)?;
        let sync = flags & DM_WRITE_SYNC != 0;
        let n = with_dm(|dm| dm.dm_write_invis(session(sid), &h, self::token(token), sync, off, data))?;
        Ok(n as i64)
    })
}

#[no_mangle]
pub extern "C" fn dm_sync_by_handle(sid: Sid, hanp: *mut c_void, hlen: usize, token: Tok) -> c_int {
    handle_call(sid, hanp, hlen, token, Dm::dm_sync_by_handle)
}

#[no_mangle]
pub extern "C" fn dm_probe_hole(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    off: i64,
    len: u64,
    roffp: *mut i64,
    rlenp: *mut u64,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let off = u64::try_from(off).map_err(|_| DmError::Inval("negative offset"))?;
        let (o, l) = with_dm(|dm| dm.dm_probe_hole(session(sid), &h, self::token(token), off, len))?;
        Out::new(roffp)?.set(o as i64)?;
        Out::new(rlenp)?.set(l)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_punch_hole(sid: Sid, hanp: *mut c_void, hlen: usize, token: Tok, off: i64, len: u64) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let off = u64::try_from(off).map_err(|_| DmError::Inval("negative offset"))?;
        with_dm(|dm| dm.dm_punch_hole(session(sid), &h, self::token(token), off, len)).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_get_allocinfo(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    offp: *mut i64,
    nelem: c_uint,
    extentp: *mut Extent,
    nelemp: *mut c_uint,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let start = u64::try_from(ffi::value_in(offp)?).map_err(|_| DmError::Inval("negative offset"))?;
        if nelem == 0 {
            return Err(DmError::Inval("nelem is 0"));
        }
        let all = with_dm(|dm| dm.dm_get_allocinfo(session(sid), &h, self::token(token)))?;
        // From the extent holding *offp on, as many as fit; *offp moves past
        // them, and 1 says more follow.
        let from: Vec<Extent> = all
            .iter()
            .filter(|(o, l, _)| o + l > start)
            .map(|&(o, l, t)| if o < start { extent_c(start, o + l - start, t) } else { extent_c(o, l, t) })
            .collect();
        let n = from.len().min(nelem as usize);
        let size = nelem as usize * std::mem::size_of::<Extent>();
        Buf::new(extentp.cast(), size).write(from[..n].as_bytes())?;
        Out::new(nelemp)?.set(n as c_uint)?;
        let next = from
            .get(n)
            .map_or_else(|| from.last().map_or(start, |e| (e.ex_offset as u64) + e.ex_length), |e| e.ex_offset as u64);
        Out::new(offp)?.set(next as i64)?;
        Ok((n < from.len()) as c_int)
    })
}

#[no_mangle]
pub extern "C" fn dm_set_region(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    nelem: c_uint,
    regbufp: *mut Region,
    exactflagp: *mut c_uint,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let regions = ffi::array_in(regbufp, nelem as usize)?.iter().map(region_of).collect::<DmResult<Vec<_>>>()?;
        let exact = Out::new(exactflagp)?;
        let e = with_dm(|dm| dm.dm_set_region(session(sid), &h, self::token(token), &regions))?;
        exact.set(e as c_uint)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_get_region(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    nelem: c_uint,
    regbufp: *mut Region,
    nelemp: *mut c_uint,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let v: Vec<Region> =
            with_dm(|dm| dm.dm_get_region(session(sid), &h, self::token(token)))?.iter().map(region_c).collect();
        let size = nelem as usize * std::mem::size_of::<Region>();
        put_array(&v, nelem, Buf::new(regbufp.cast(), size), Out::new(nelemp)?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_set_dmattr(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    attrnamep: *mut DmAttrName,
    setdtime: c_int,
    buflen: usize,
    bufp: *mut c_void,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let name = attr_name(&ffi::value_in(attrnamep)?.an_chars)?;
        let value = ffi::bytes_in(bufp, buflen)?;
        let _ = setdtime;
        with_dm(|dm| dm.dm_set_dmattr(session(sid), &h, self::token(token), &name, value)).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_get_dmattr(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    attrnamep: *mut DmAttrName,
    buflen: usize,
    bufp: *mut c_void,
    rlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let name = attr_name(&ffi::value_in(attrnamep)?.an_chars)?;
        let v = with_dm(|dm| dm.dm_get_dmattr(session(sid), &h, self::token(token), &name))?;
        put_bytes(&v, buflen, Buf::new(bufp, buflen), Out::new(rlenp)?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_remove_dmattr(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    setdtime: c_int,
    attrnamep: *mut DmAttrName,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let name = attr_name(&ffi::value_in(attrnamep)?.an_chars)?;
        let _ = setdtime;
        with_dm(|dm| dm.dm_remove_dmattr(session(sid), &h, self::token(token), &name)).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_getall_dmattr(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    buflen: usize,
    bufp: *mut c_void,
    rlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let b = getall_dmattr(sid, &h, token)?;
        put_bytes(&b, buflen, Buf::new(bufp, buflen), Out::new(rlenp)?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_request_right(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    flags: c_uint,
    right: c_int,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let r = right_of(right)?;
        with_dm(|dm| dm.dm_request_right(session(sid), &h, self::token(token), flags, r)).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_release_right(sid: Sid, hanp: *mut c_void, hlen: usize, token: Tok) -> c_int {
    handle_call(sid, hanp, hlen, token, Dm::dm_release_right)
}

#[no_mangle]
pub extern "C" fn dm_upgrade_right(sid: Sid, hanp: *mut c_void, hlen: usize, token: Tok) -> c_int {
    handle_call(sid, hanp, hlen, token, Dm::dm_upgrade_right)
}

#[no_mangle]
pub extern "C" fn dm_downgrade_right(sid: Sid, hanp: *mut c_void, hlen: usize, token: Tok) -> c_int {
    handle_call(sid, hanp, hlen, token, Dm::dm_downgrade_right)
}

#[no_mangle]
pub extern "C" fn dm_query_right(sid: Sid, hanp: *mut c_void, hlen: usize, token: Tok, rightp: *mut c_int) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let out = Out::new(rightp)?;
        let r = with_dm(|dm| dm.dm_query_right(session(sid), &h, self::token(token)))?;
        out.set(right_value(r))?;
        Ok(0)
    })
}

// ---- configuration ----

#[no_mangle]
pub extern "C" fn dm_get_config(hanp: *mut c_void, hlen: usize, flagname: c_int, retvalp: *mut u64) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let out = Out::new(retvalp)?;
        let flag = DmConfig::from_raw(flagname)?;
        out.set(with_dm(|dm| dm.dm_get_config(&h, flag))?)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_get_config_events(
    hanp: *mut c_void,
    hlen: usize,
    nelem: c_uint,
    eventsetp: *mut u64,
    nelemp: *mut c_uint,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let set = with_dm(|dm| dm.dm_get_config_events(&h))?;
        put_eventset(set, nelem, eventsetp, nelemp).map(|_| 0)
    })
}

/// `dm_xstat_t` records: a `dm_stat_t`, then the handle and the DM attribute's value.
fn encode_xstats(stats: &[(DmStat, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut c = Chain::new();
    for (st, attr) in stats {
        let rec = layout::XStat { stat: stat_record(st), dx_attrdata: VarData::default() };
        let h = st.handle.map(|h| h.as_bytes().to_vec()).unwrap_or_default();
        let value = attr.clone().unwrap_or_default();
        c.push(rec.as_bytes(), &[&h, &value], |head, offs| {
            let mut r = rec;
            r.stat.dt_handle = vardata(offs[0]);
            // No such attribute on the file: an empty value.
            r.dx_attrdata = if attr.is_some() { vardata(offs[1]) } else { VarData::default() };
            head.copy_from_slice(r.as_bytes());
        });
    }
    c.buf
}

#[no_mangle]
pub extern "C" fn dm_get_bulkall(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    mask: c_uint,
    attrnamep: *mut DmAttrName,
    locp: *mut i64,
    buflen: usize,
    bufp: *mut c_void,
    rlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let name = attr_name(&ffi::value_in(attrnamep)?.an_chars)?;
        let _ = mask;
        let t = self::token(token);
        // The largest record: the handle and the largest value a file can carry.
        let most = with_dm(|dm| dm.fs_limits(&h))?.max_attribute_size as usize;
        let per = Chain::record_len(std::mem::size_of::<layout::XStat>(), &[DM_MAX_HANDLE_SIZE, most]);
        scan(per, locp, buflen, bufp, rlenp, |c, m| {
            let (stats, next) = with_dm(|dm| dm.dm_get_bulkall(session(sid), &h, t, &name, c, m))?;
            Ok((encode_xstats(&stats), next))
        })
    })
}

// ---- object references ----

#[no_mangle]
pub extern "C" fn dm_obj_ref_hold(sid: Sid, token: Tok, hanp: *mut c_void, hlen: usize) -> c_int {
    handle_call(sid, hanp, hlen, token, |dm, s, h, t| dm.dm_obj_ref_hold(s, t, h))
}

#[no_mangle]
pub extern "C" fn dm_obj_ref_rele(sid: Sid, token: Tok, hanp: *mut c_void, hlen: usize) -> c_int {
    handle_call(sid, hanp, hlen, token, |dm, s, h, t| dm.dm_obj_ref_rele(s, t, h))
}

/// `DM_TRUE` if the token holds a reference on the object, `DM_FALSE` if
/// not, -1 on error.
#[no_mangle]
pub extern "C" fn dm_obj_ref_query(sid: Sid, token: Tok, hanp: *mut c_void, hlen: usize) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        with_dm(|dm| dm.dm_obj_ref_query(session(sid), self::token(token), &h)).map(c_int::from)
    })
}

// ---- inheritance ----

#[no_mangle]
pub extern "C" fn dm_set_inherit(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    attrnamep: *mut DmAttrName,
    mode: libc::mode_t,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let name = attr_name(&ffi::value_in(attrnamep)?.an_chars)?;
        with_dm(|dm| dm.dm_set_inherit(session(sid), &h, self::token(token), &name, mode)).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_clear_inherit(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    attrnamep: *mut DmAttrName,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let name = attr_name(&ffi::value_in(attrnamep)?.an_chars)?;
        with_dm(|dm| dm.dm_clear_inherit(session(sid), &h, self::token(token), &name)).map(|_| 0)
    })
}

#[no_mangle]
pub extern "C" fn dm_getall_inherit(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    nelem: c_uint,
    inheritbufp: *mut Inherit,
    nelemp: *mut c_uint,
) -> c_int {
    ffi::call(-1, || {
        let h = ffi::handle_in(hanp, hlen)?;
        let all = with_dm(|dm| dm.dm_getall_inherit(session(sid), &h, self::token(token)))?;
        let v: Vec<Inherit> = all
            .iter()
            .map(|(n, t)| {
                let mut ih_name = [0u8; DM_ATTR_NAME_SIZE];
                ih_name[..n.len().min(DM_ATTR_NAME_SIZE)].copy_from_slice(&n[..n.len().min(DM_ATTR_NAME_SIZE)]);
                Inherit { ih_name, ih_filetype: *t }
            })
            .collect();
        let size = nelem as usize * std::mem::size_of::<Inherit>();
        put_array(&v, nelem, Buf::new(inheritbufp.cast(), size), Out::new(nelemp)?)?;
        Ok(0)
    })
}

// ---- objects made with a given handle ----

/// `dir` and `obj`: (pointer, length) of the directory's and the new
/// object's handles.
fn by_handle(
    sid: Sid,
    token: Tok,
    (dirhanp, dirhlen): (*mut c_void, usize),
    (hanp, hlen): (*mut c_void, usize),
    cname: *mut c_char,
    what: ByHandle,
) -> DmResult<c_int> {
    let dir = ffi::handle_in(dirhanp, dirhlen)?;
    let h = ffi::handle_in(hanp, hlen)?;
    let name = ffi::cstr_in(cname)?;
    let (s, t) = (session(sid), self::token(token));
    with_dm(|dm| match &what {
        ByHandle::File => dm.dm_create_by_handle(s, &dir, t, &h, name),
        ByHandle::Dir => dm.dm_mkdir_by_handle(s, &dir, t, &h, name),
        ByHandle::Symlink(target) => dm.dm_symlink_by_handle(s, &dir, t, &h, name, target),
    })
    .map(|_| 0)
}

#[no_mangle]
pub extern "C" fn dm_create_by_handle(
    sid: Sid,
    dirhanp: *mut c_void,
    dirhlen: usize,
    token: Tok,
    hanp: *mut c_void,
    hlen: usize,
    cname: *mut c_char,
) -> c_int {
    ffi::call(-1, || by_handle(sid, token, (dirhanp, dirhlen), (hanp, hlen), cname, ByHandle::File))
}

#[no_mangle]
pub extern "C" fn dm_mkdir_by_handle(
    sid: Sid,
    dirhanp: *mut c_void,
    dirhlen: usize,
    token: Tok,
    hanp: *mut c_void,
    hlen: usize,
    cname: *mut c_char,
) -> c_int {
    ffi::call(-1, || by_handle(sid, token, (dirhanp, dirhlen), (hanp, hlen), cname, ByHandle::Dir))
}

#[no_mangle]
pub extern "C" fn dm_symlink_by_handle(
    sid: Sid,
    dirhanp: *mut c_void,
    dirhlen: usize,
    token: Tok,
    hanp: *mut c_void,
    hlen: usize,
    cname: *mut c_char,
    path: *mut c_char,
) -> c_int {
    ffi::call(-1, || {
        let target = ffi::cstr_in(path)?.to_vec();
        by_handle(sid, token, (dirhanp, dirhlen), (hanp, hlen), cname, ByHandle::Symlink(target))
    })
}

// ---- paths, mounts, direct I/O ----

/// The path is NUL-terminated in `pathbufp`; `*rlenp` counts the NUL, as
/// XFS's libdm did (E2BIG with that length when `buflen` is short).
#[no_mangle]
pub extern "C" fn dm_handle_to_path(
    dirhanp: *mut c_void,
    dirhlen: usize,
    targhanp: *mut c_void,
    targhlen: usize,
    buflen: usize,
    pathbufp: *mut c_char,
    rlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let rlen = Out::new(rlenp)?;
        if pathbufp.is_null() {
            return Err(DmError::Fault("pathbufp is NULL"));
        }
        let dir = ffi::handle_in(dirhanp, dirhlen)?;
        let target = ffi::handle_in(targhanp, targhlen)?;
        let p = with_dm(|dm| dm.dm_handle_to_path(&dir, &target))?;
        let mut b = p.into_os_string().into_vec();
        b.push(0);
        put_bytes(&b, buflen, Buf::new(pathbufp.cast(), buflen), rlen)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_get_mountinfo(
    sid: Sid,
    hanp: *mut c_void,
    hlen: usize,
    token: Tok,
    buflen: usize,
    bufp: *mut c_void,
    rlenp: *mut usize,
) -> c_int {
    ffi::call(-1, || {
        let rlen = Out::new(rlenp)?;
        let h = ffi::handle_in(hanp, hlen)?;
        let b = with_dm(|dm| dm.dm_get_mountinfo_raw(session(sid), &h, self::token(token)))?;
        put_bytes(&b, buflen, Buf::new(bufp, buflen), rlen)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn dm_get_dioinfo(sid: Sid, hanp: *mut c_void, hlen: usize, token: Tok, diop: *mut DioInfo) -> c_int {
    ffi::call(-1, || {
        let out = Out::new(diop)?;
        let h = ffi::handle_in(hanp, hlen)?;
        let d = with_dm(|dm| dm.dm_get_dioinfo(session(sid), &h, self::token(token)))?;
        out.set(DioInfo { d_mem: d.mem, d_miniosz: d.miniosz, d_maxiosz: d.maxiosz, d_dio_only: d.dio_only as u32 })?;
        Ok(0)
    })
}

/// An open file descriptor on the object (`mode`: `open(2)` flags), or -1.
#[no_mangle]
pub extern "C" fn dm_open_by_handle(hanp: *mut c_void, hlen: usize, mode: c_int) -> c_int {
    ffi::call(-1, || {
        use std::os::fd::IntoRawFd;
        let h = ffi::handle_in(hanp, hlen)?;
        Ok(with_dm(|dm| dm.dm_open_by_handle(&h, mode))?.into_raw_fd())
    })
}
