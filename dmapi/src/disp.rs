//! Dispositions: which session, on which node, receives which event type for which
//! file system (`dm_set_disp`, `dm_getall_disp`), the file-system event lists
//! (`dm_set_eventlist`, `dm_get_eventlist`) and `dm_set_return_on_destroy`.
//!
//! [`DispositionTable`] is a value: the session manager owns the master copy, and
//! every node holds an `Arc` of the latest version it received, replaced atomically
//! (`version` orders copies).
//!
//! ```
//! use dmapi::disp::{DispEntry, DispositionTable};
//! use dmapi::types::{DmHandle, DmSessId, EventSet, EventType, FsId, NodeId};
//! let mut t = DispositionTable::default();
//! let sid = DmSessId::compose(NodeId(1), 1).unwrap();
//! let fs = DmHandle::fs(FsId(3));
//! let set: EventSet = [EventType::Read, EventType::Write].into_iter().collect();
//! t.dm_set_disp(sid, NodeId(1), &fs, set).unwrap();
//! t.dm_set_eventlist(&fs, set).unwrap();
//! assert_eq!(t.route(FsId(3), EventType::Read), Some(DispEntry { node: NodeId(1), sid }));
//! assert_eq!(t.route(FsId(3), EventType::Create), None);
//! ```

use std::collections::BTreeMap;

use crate::error::{DmError, DmResult};
use crate::proto::{DispSpec, WireFsDisp, WireRoute};
use crate::types::{DmAttrName, DmHandle, DmSessId, EventSet, EventType, FsId, HandleKind, NodeId, DM_EVENT_MAX};
use crate::wire::WireError;

pub use crate::proto::DispChange;

/// Where one event type goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DispEntry {
    /// The session's node.
    pub node: NodeId,
    /// The session.
    pub sid: DmSessId,
}

/// Dispositions and event list of one file system (or of the global handle).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct FsDisp {
    events: [Option<DispEntry>; DM_EVENT_MAX as usize],
    eventlist: EventSet,
    return_on_destroy: Option<(DmSessId, DmAttrName)>,
}

impl FsDisp {
    fn is_empty(&self) -> bool {
        self.events.iter().all(Option::is_none) && self.eventlist.is_empty() && self.return_on_destroy.is_none()
    }
}

/// What a file system's mount needs to decide by itself whether an event
/// is generated at all, so that it asks its node only when one is: the
/// event types with a disposition, and the file system's event list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenerationView {
    /// Types disposed to some session (mount: globally or for the fs).
    pub disposed: EventSet,
    /// The file system's event list.
    pub fs_list: EventSet,
}

impl GenerationView {
    /// Whether [`DispositionTable::route_with_filelist`] routes `t` for a
    /// file with event list `file_events`.
    pub fn generates(&self, t: EventType, file_events: EventSet) -> bool {
        self.disposed.contains(t) && (t == EventType::Mount || self.fs_list.contains(t) || file_events.contains(t))
    }
}

/// The cluster's dispositions, versioned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DispositionTable {
    version: u64,
    global: FsDisp,
    fs: BTreeMap<FsId, FsDisp>,
}

impl DispositionTable {
    /// The version; every change increments it.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether this copy is newer than `other` (the receiver keeps the newer one).
    pub fn is_newer_than(&self, other: &DispositionTable) -> bool {
        self.version > other.version
    }

    fn slot(&self, h: &DmHandle) -> DmResult<Option<&FsDisp>> {
        match h.kind() {
            HandleKind::Global => Ok(Some(&self.global)),
            HandleKind::Fs => Ok(self.fs.get(&h.fsid())),
            HandleKind::File => Err(DmError::Inval("a file-system or global handle is needed")),
        }
    }

    fn slot_mut(&mut self, h: &DmHandle) -> DmResult<&mut FsDisp> {
        match h.kind() {
            HandleKind::Global => Ok(&mut self.global),
            HandleKind::Fs => Ok(self.fs.entry(h.fsid()).or_default()),
            HandleKind::File => Err(DmError::Inval("a file-system or global handle is needed")),
        }
    }

    fn tidy(&mut self) {
        self.fs.retain(|_, d| !d.is_empty());
    }

    /// `dm_set_disp`: session `sid` on `node` receives exactly the events of `set` for
    /// the file system `h` (replacing what it had there). The global handle accepts
    /// only `DM_EVENT_MOUNT`. An event already disposed to another session is `EBUSY`
    /// (one session per event type and file system); nothing changes on error.
    pub fn dm_set_disp(&mut self, sid: DmSessId, node: NodeId, h: &DmHandle, set: EventSet) -> DmResult<()> {
        if sid.node().is_none() {
            return Err(DmError::Inval("invalid session id"));
        }
        if set.0 & !EventSet::ALL.0 != 0 {
            return Err(DmError::Inval("event set names unknown events"));
        }
        if h.kind() == HandleKind::Global && set.iter().any(|t| t != EventType::Mount) {
            return Err(DmError::Inval("the global handle takes only DM_EVENT_MOUNT"));
        }
        if set.contains(EventType::User) || set.contains(EventType::Cancel) {
            return Err(DmError::Inval("user and cancel events have no disposition"));
        }
        let d = self.slot_mut(h)?;
        for t in set.iter() {
            if let Some(e) = d.events[t as usize] {
                if e.sid != sid {
                    return Err(DmError::Busy("event disposed to another session"));
                }
            }
        }
        for (i, e) in d.events.iter_mut().enumerate() {
            let wanted = set.0 & (1 << i) != 0;
            match (wanted, *e) {
                (true, _) => *e = Some(DispEntry { node, sid }),
                (false, Some(cur)) if cur.sid == sid => *e = None,
                _ => {}
            }
        }
        self.version += 1;
        self.tidy();
        Ok(())
    }

    /// `dm_getall_disp`: every (file-system or global handle, event set) for `sid`.
    pub fn dm_getall_disp(&self, sid: DmSessId) -> Vec<(DmHandle, EventSet)> {
        let set_of = |d: &FsDisp| {
            d.events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.is_some_and(|e| e.sid == sid))
                .fold(EventSet::EMPTY, |s, (i, _)| EventSet(s.0 | 1 << i))
        };
        let mut out = Vec::new();
        let g = set_of(&self.global);
        if !g.is_empty() {
            out.push((DmHandle::global(), g));
        }
        for (fsid, d) in &self.fs {
            let s = set_of(d);
            if !s.is_empty() {
                out.push((DmHandle::fs(*fsid), s));
            }
        }
        out
    }

    /// `dm_set_eventlist` on a file-system handle: the events generated for every
    /// object of the file system. Per-file lists are kept by the file system itself.
    pub fn dm_set_eventlist(&mut self, h: &DmHandle, set: EventSet) -> DmResult<()> {
        if h.kind() != HandleKind::Fs {
            return Err(DmError::Inval("file event lists are kept by the file system; pass a file-system handle"));
        }
        if set.0 & !EventSet::ALL.0 != 0 {
            return Err(DmError::Inval("event set names unknown events"));
        }
        self.slot_mut(h)?.eventlist = set;
        self.version += 1;
        self.tidy();
        Ok(())
    }

    /// `dm_get_eventlist` on a file-system handle.
    pub fn dm_get_eventlist(&self, h: &DmHandle) -> DmResult<EventSet> {
        if h.kind() != HandleKind::Fs {
            return Err(DmError::Inval("a file-system handle is needed"));
        }
        Ok(self.slot(h)?.map_or(EventSet::EMPTY, |d| d.eventlist))
    }

    /// `dm_set_return_on_destroy`: with `enable`, destroy events of the file system
    /// carry a copy of attribute `name`; without, the setting is cleared if `sid` made it.
    pub fn dm_set_return_on_destroy(
        &mut self,
        sid: DmSessId,
        h: &DmHandle,
        name: DmAttrName,
        enable: bool,
    ) -> DmResult<()> {
        if h.kind() != HandleKind::Fs {
            return Err(DmError::Inval("a file-system handle is needed"));
        }
        if sid.node().is_none() {
            return Err(DmError::Inval("invalid session id"));
        }
        let d = self.slot_mut(h)?;
        if enable {
            d.return_on_destroy = Some((sid, name));
        } else if d.return_on_destroy.is_some_and(|(s, _)| s == sid) {
            d.return_on_destroy = None;
        }
        self.version += 1;
        self.tidy();
        Ok(())
    }

    /// The attribute whose value destroy events of `fs` carry, if any.
    pub fn return_on_destroy(&self, fs: FsId) -> Option<DmAttrName> {
        self.fs.get(&fs).and_then(|d| d.return_on_destroy.map(|(_, n)| n))
    }

    /// Drops every disposition and setting of `sid` (the session was destroyed).
    pub fn remove_session(&mut self, sid: DmSessId) {
        let mut changed = false;
        for d in std::iter::once(&mut self.global).chain(self.fs.values_mut()) {
            for e in d.events.iter_mut() {
                if e.is_some_and(|e| e.sid == sid) {
                    *e = None;
                    changed = true;
                }
            }
            if d.return_on_destroy.is_some_and(|(s, _)| s == sid) {
                d.return_on_destroy = None;
                changed = true;
            }
        }
        if changed {
            self.version += 1;
            self.tidy();
        }
    }

    /// Re-points every disposition of `sid` at `node` (the session was reclaimed on
    /// another node).
    pub fn move_session(&mut self, sid: DmSessId, node: NodeId) {
        for d in std::iter::once(&mut self.global).chain(self.fs.values_mut()) {
            for e in d.events.iter_mut().flatten() {
                if e.sid == sid {
                    e.node = node;
                }
            }
        }
        self.version += 1;
    }

    /// Where an event of type `t` on file system `fs` goes, or `None` if no event is
    /// generated. Mount events follow the global disposition (or the file system's);
    /// other events need the type in the file system's event list and a disposition.
    pub fn route(&self, fs: FsId, t: EventType) -> Option<DispEntry> {
        self.route_with_filelist(fs, t, EventSet::EMPTY)
    }

    /// The [`GenerationView`] of file system `fs`.
    pub fn generation_view(&self, fs: FsId) -> GenerationView {
        let d = self.fs.get(&fs);
        let mut disposed = EventSet::EMPTY;
        for t in EventType::ALL {
            let global = t == EventType::Mount && self.global.events[t as usize].is_some();
            if global || d.is_some_and(|d| d.events[t as usize].is_some()) {
                disposed.insert(t);
            }
        }
        GenerationView { disposed, fs_list: d.map_or(EventSet::EMPTY, |d| d.eventlist) }
    }

    /// Like [`route`](Self::route), with the per-file event list of the object the
    /// event is about (kept by the file system) also enabling the event.
    pub fn route_with_filelist(&self, fs: FsId, t: EventType, file_events: EventSet) -> Option<DispEntry> {
        let d = self.fs.get(&fs);
        if t == EventType::Mount {
            return self.global.events[t as usize].or_else(|| d?.events[t as usize]);
        }
        let d = d?;
        if !d.eventlist.contains(t) && !file_events.contains(t) {
            return None;
        }
        d.events[t as usize]
    }

    /// Applies a disposition call forwarded to the session manager by session `sid`
    /// (what the session manager does on a [`DispChange`] message, B10).
    pub fn apply_change(&mut self, sid: DmSessId, change: &DispChange) -> DmResult<()> {
        match change {
            DispChange::SetDisp { node, handle, set } => self.dm_set_disp(sid, *node, handle, *set),
            DispChange::SetEventlist { handle, set } => self.dm_set_eventlist(handle, *set),
            DispChange::ReturnOnDestroy { handle, name, enable } => {
                self.dm_set_return_on_destroy(sid, handle, *name, *enable)
            }
        }
    }

    /// File systems that have any disposition or setting.
    pub fn filesystems(&self) -> impl Iterator<Item = FsId> + '_ {
        self.fs.keys().copied()
    }

    /// The table as the `DispSpec` message carries it.
    pub fn to_spec(&self) -> DispSpec {
        DispSpec {
            version: self.version,
            global: fsdisp_to_wire(&self.global),
            fs: self.fs.iter().map(|(f, d)| (*f, fsdisp_to_wire(d))).collect(),
        }
    }

    /// The table a `DispSpec` message carries; refuses one that names an
    /// event type twice or that is no event type, or a file system twice.
    pub fn from_spec(s: &DispSpec) -> Result<DispositionTable, WireError> {
        let mut fs = BTreeMap::new();
        for (fsid, w) in &s.fs {
            if fs.insert(*fsid, fsdisp_from_wire(w)?).is_some() {
                return Err(WireError::Invalid("duplicate fsid in dispositions"));
            }
        }
        Ok(DispositionTable { version: s.version, global: fsdisp_from_wire(&s.global)?, fs })
    }
}

/// Size of `dm_dispinfo_t` (`_link`, `di_pad1`, `di_fshandle`, `di_eventset`).
pub const DISPINFO_LEN: usize = 24;

/// Encodes `dm_getall_disp`'s buffer: chained `dm_dispinfo_t`, each followed by its
/// handle bytes (offset relative to the structure) and padded to 8 bytes, native
/// endian. `E2BIG` with the whole length if `buflen` is too small.
pub fn encode_dispinfo(list: &[(DmHandle, EventSet)], buflen: usize) -> DmResult<Vec<u8>> {
    let entry_len = |h: &DmHandle| (DISPINFO_LEN + h.len() + 7) & !7;
    let needed: usize = list.iter().map(|(h, _)| entry_len(h)).sum();
    if needed > buflen {
        return Err(DmError::TooBig { needed });
    }
    let mut out = vec![0u8; needed];
    let mut at = 0;
    for (i, (h, set)) in list.iter().enumerate() {
        let len = entry_len(h);
        let link = if i + 1 == list.len() { 0 } else { len as i32 };
        let m = &mut out[at..at + len];
        m[0..4].copy_from_slice(&link.to_ne_bytes());
        m[8..12].copy_from_slice(&(DISPINFO_LEN as i32).to_ne_bytes());
        m[12..16].copy_from_slice(&(h.len() as u32).to_ne_bytes());
        m[16..24].copy_from_slice(&set.0.to_ne_bytes());
        m[DISPINFO_LEN..DISPINFO_LEN + h.len()].copy_from_slice(h.as_bytes());
        at += len;
    }
    Ok(out)
}

fn fsdisp_to_wire(d: &FsDisp) -> WireFsDisp {
    WireFsDisp {
        eventlist: d.eventlist,
        routes: d
            .events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.map(|e| WireRoute { event: i as u8, node: e.node, sid: e.sid }))
            .collect(),
        return_on_destroy: d.return_on_destroy,
    }
}

fn fsdisp_from_wire(w: &WireFsDisp) -> Result<FsDisp, WireError> {
    if w.eventlist.0 & !EventSet::ALL.0 != 0 {
        return Err(WireError::Invalid("eventlist"));
    }
    let mut out = FsDisp { eventlist: w.eventlist, return_on_destroy: w.return_on_destroy, ..FsDisp::default() };
    for r in &w.routes {
        let slot = out.events.get_mut(r.event as usize).ok_or(WireError::Invalid("disp event type"))?;
        if slot.replace(DispEntry { node: r.node, sid: r.sid }).is_some() {
            return Err(WireError::Invalid("duplicate disposition"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_generation_view_decides_as_route_does() {
        let mut t = DispositionTable::default();
        let (s1, fs) = (DmSessId::compose(NodeId(1), 1).unwrap(), DmHandle::fs(FsId(7)));
        let set = |v: &[EventType]| -> EventSet { v.iter().copied().collect() };
        t.dm_set_disp(s1, NodeId(1), &fs, set(&[EventType::Read, EventType::Create, EventType::Mount])).unwrap();
        t.dm_set_eventlist(&fs, set(&[EventType::Create, EventType::Write])).unwrap();
        t.dm_set_disp(s1, NodeId(1), &DmHandle::global(), set(&[EventType::Mount])).unwrap();
        for fsid in [FsId(7), FsId(8)] {
            let v = t.generation_view(fsid);
            for ty in EventType::ALL {
                for files in [EventSet::EMPTY, set(&[ty]), EventSet::ALL] {
                    assert_eq!(
                        v.generates(ty, files),
                        t.route_with_filelist(fsid, ty, files).is_some(),
                        "{fsid} {ty:?}"
                    );
                }
            }
        }
        assert!(t.generation_view(FsId(7)).generates(EventType::Read, set(&[EventType::Read])));
        assert!(!t.generation_view(FsId(7)).generates(EventType::Read, EventSet::EMPTY));
        assert!(t.generation_view(FsId(8)).generates(EventType::Mount, EventSet::EMPTY), "global mount disposition");
    }

    use super::*;

    fn sid(n: u32, c: u32) -> DmSessId {
        DmSessId::compose(NodeId(n), c).unwrap()
    }
    fn set(ts: &[EventType]) -> EventSet {
        ts.iter().copied().collect()
    }

    #[test]
    fn b7_event_types_of_one_fs_go_to_different_sessions() {
        let mut t = DispositionTable::default();
        let fs = DmHandle::fs(FsId(1));
        let hsm = sid(1, 1);
        let audit = sid(3, 1);
        let data = set(&[EventType::Read, EventType::Write, EventType::Truncate]);
        let ns = set(&[EventType::Create, EventType::Remove, EventType::Rename]);
        t.dm_set_disp(hsm, NodeId(1), &fs, data).unwrap();
        t.dm_set_disp(audit, NodeId(3), &fs, ns).unwrap();
        t.dm_set_eventlist(&fs, EventSet(data.0 | ns.0)).unwrap();
        for ty in data.iter() {
            assert_eq!(t.route(FsId(1), ty).unwrap().node, NodeId(1));
        }
        for ty in ns.iter() {
            assert_eq!(t.route(FsId(1), ty).unwrap().sid, audit);
        }
        assert_eq!(t.route(FsId(2), EventType::Read), None);
        assert_eq!(t.dm_getall_disp(hsm), vec![(fs, data)]);
        assert_eq!(t.dm_getall_disp(audit), vec![(fs, ns)]);
    }

    #[test]
    fn b3_no_event_without_eventlist_or_disposition() {
        let mut t = DispositionTable::default();
        let fs = DmHandle::fs(FsId(1));
        t.dm_set_disp(sid(1, 1), NodeId(1), &fs, set(&[EventType::Read])).unwrap();
        assert_eq!(t.route(FsId(1), EventType::Read), None);
        assert!(t.route_with_filelist(FsId(1), EventType::Read, set(&[EventType::Read])).is_some());
        t.dm_set_eventlist(&fs, set(&[EventType::Read, EventType::Write])).unwrap();
        assert!(t.route(FsId(1), EventType::Read).is_some());
        assert_eq!(t.route(FsId(1), EventType::Write), None);
        assert_eq!(t.dm_get_eventlist(&fs).unwrap(), set(&[EventType::Read, EventType::Write]));
    }

    #[test]
    fn set_disp_replaces_the_sessions_set() {
        let mut t = DispositionTable::default();
        let fs = DmHandle::fs(FsId(1));
        let s = sid(1, 1);
        t.dm_set_disp(s, NodeId(1), &fs, set(&[EventType::Read, EventType::Write])).unwrap();
        t.dm_set_disp(s, NodeId(1), &fs, set(&[EventType::Write])).unwrap();
        assert_eq!(t.dm_getall_disp(s), vec![(fs, set(&[EventType::Write]))]);
        t.dm_set_disp(s, NodeId(1), &fs, EventSet::EMPTY).unwrap();
        assert!(t.dm_getall_disp(s).is_empty());
    }

    #[test]
    fn set_disp_errnos() {
        let mut t = DispositionTable::default();
        let fs = DmHandle::fs(FsId(1));
        let a = sid(1, 1);
        t.dm_set_disp(a, NodeId(1), &fs, set(&[EventType::Read])).unwrap();
        let v = t.version();
        let e = t.dm_set_disp(sid(2, 1), NodeId(2), &fs, set(&[EventType::Read])).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY);
        assert_eq!(t.version(), v, "failed call changed nothing");
        let file = DmHandle::file(FsId(1), 5, 1);
        assert_eq!(t.dm_set_disp(a, NodeId(1), &file, EventSet::EMPTY).unwrap_err().errno(), libc::EINVAL);
        let g = DmHandle::global();
        assert!(t.dm_set_disp(a, NodeId(1), &g, set(&[EventType::Read])).is_err());
        assert!(t.dm_set_disp(crate::types::DM_NO_SESSION, NodeId(1), &fs, EventSet::EMPTY).is_err());
        assert!(t.dm_set_disp(a, NodeId(1), &fs, set(&[EventType::User])).is_err());
        assert!(t.dm_set_disp(a, NodeId(1), &fs, EventSet(1 << 40)).is_err());
    }

    #[test]
    fn mount_follows_the_global_disposition() {
        let mut t = DispositionTable::default();
        let s = sid(1, 1);
        t.dm_set_disp(s, NodeId(1), &DmHandle::global(), set(&[EventType::Mount])).unwrap();
        assert_eq!(t.route(FsId(42), EventType::Mount).unwrap().sid, s);
        assert_eq!(t.dm_getall_disp(s)[0].0, DmHandle::global());
    }

    #[test]
    fn eventlist_errnos() {
        let mut t = DispositionTable::default();
        let file = DmHandle::file(FsId(1), 5, 1);
        assert!(t.dm_set_eventlist(&file, EventSet::EMPTY).is_err());
        assert!(t.dm_get_eventlist(&DmHandle::global()).is_err());
        assert_eq!(t.dm_get_eventlist(&DmHandle::fs(FsId(9))).unwrap(), EventSet::EMPTY);
    }

    #[test]
    fn return_on_destroy_and_session_removal() {
        let mut t = DispositionTable::default();
        let fs = DmHandle::fs(FsId(1));
        let s = sid(1, 1);
        let name = DmAttrName::new(b"hsm").unwrap();
        t.dm_set_return_on_destroy(s, &fs, name, true).unwrap();
        assert_eq!(t.return_on_destroy(FsId(1)), Some(name));
        t.dm_set_return_on_destroy(sid(1, 2), &fs, name, false).unwrap();
        assert_eq!(t.return_on_destroy(FsId(1)), Some(name), "other session");
        t.dm_set_disp(s, NodeId(1), &fs, set(&[EventType::Destroy])).unwrap();
        t.remove_session(s);
        assert_eq!(t.return_on_destroy(FsId(1)), None);
        assert!(t.dm_getall_disp(s).is_empty());
        assert_eq!(t.filesystems().count(), 0);
        assert!(t.dm_set_return_on_destroy(s, &DmHandle::global(), name, true).is_err());
    }

    #[test]
    fn dispinfo_buffer_layout_and_e2big() {
        let list =
            vec![(DmHandle::global(), set(&[EventType::Mount])), (DmHandle::fs(FsId(5)), set(&[EventType::Read]))];
        // 24 + 1 -> 32, 24 + 16 -> 40.
        assert_eq!(encode_dispinfo(&list, 71).unwrap_err(), DmError::TooBig { needed: 72 });
        let b = encode_dispinfo(&list, 72).unwrap();
        let i32_at = |o: usize| i32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(i32_at(0), 32, "_link to the second entry");
        assert_eq!(i32_at(8), 24, "handle right after the struct");
        assert_eq!(b[24], 0, "global handle byte");
        assert_eq!(i32_at(32), 0, "last _link is 0");
        assert_eq!(u64::from_ne_bytes(b[48..56].try_into().unwrap()), 1 << EventType::Read as u32);
        assert_eq!(&b[56..72], DmHandle::fs(FsId(5)).as_bytes());
        assert!(encode_dispinfo(&[], 0).unwrap().is_empty());
    }

    #[test]
    fn session_manager_applies_forwarded_changes() {
        let mut t = DispositionTable::default();
        let s = sid(2, 1);
        let fs = DmHandle::fs(FsId(3));
        t.apply_change(s, &DispChange::SetDisp { node: NodeId(2), handle: fs, set: set(&[EventType::Write]) }).unwrap();
        t.apply_change(s, &DispChange::SetEventlist { handle: fs, set: set(&[EventType::Write]) }).unwrap();
        t.apply_change(
            s,
            &DispChange::ReturnOnDestroy { handle: fs, name: DmAttrName::new(b"a").unwrap(), enable: true },
        )
        .unwrap();
        assert_eq!(t.route(FsId(3), EventType::Write).unwrap().sid, s);
        assert!(t.return_on_destroy(FsId(3)).is_some());
        let e = t.apply_change(
            sid(4, 1),
            &DispChange::SetDisp { node: NodeId(4), handle: fs, set: set(&[EventType::Write]) },
        );
        assert_eq!(e.unwrap_err().errno(), libc::EBUSY);
    }

    #[test]
    fn versions_order_copies_and_encoding_round_trips() {
        let mut t = DispositionTable::default();
        let old = t.clone();
        let fs = DmHandle::fs(FsId(7));
        t.dm_set_disp(sid(1, 1), NodeId(1), &fs, set(&[EventType::Read])).unwrap();
        t.dm_set_eventlist(&fs, set(&[EventType::Read])).unwrap();
        t.dm_set_return_on_destroy(sid(1, 1), &fs, DmAttrName::new(b"x").unwrap(), true).unwrap();
        t.move_session(sid(1, 1), NodeId(4));
        assert_eq!(t.route(FsId(7), EventType::Read).unwrap().node, NodeId(4));
        assert!(t.is_newer_than(&old));
        assert_eq!(DispositionTable::from_spec(&t.to_spec()).unwrap(), t);
        let mut dup = t.to_spec();
        let r = dup.fs[0].1.routes[0];
        dup.fs[0].1.routes.push(r);
        assert!(DispositionTable::from_spec(&dup).is_err(), "an event type routed twice");
        let mut bad = t.to_spec();
        bad.fs[0].1.routes[0].event = 200;
        assert!(DispositionTable::from_spec(&bad).is_err(), "no such event type");
    }
}
