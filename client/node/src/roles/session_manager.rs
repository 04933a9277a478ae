//! The session manager (B10): the cluster's registry of sessions and the master
//! disposition table. Session nodes announce sessions here (`SessionCreate`,
//! `SessionReclaim`, `SessionDestroy`) and forward disposition calls (`DispChange`);
//! the manager mirrors the registry to every node (so queries work anywhere, B13,
//! and a restarted session node can restore its sessions for reclaim) and sends the
//! new table to each file system's manager (`DispSpec`), which passes it on (B11).
//!
//! With membership by etcd the role is elected, and the registry and the table
//! live in etcd too ([`Durable`]): every change is written there, guarded by the
//! term's epoch, before it is answered or passed on, so a newly elected session
//! manager starts from every session and disposition, and a deposed one can
//! change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dmapi::disp::DispChange;
use dmapi::disp::DispositionTable;
use dmapi::proto::{decode_frame, encode_frame, Frame, Message};
use dmapi::types::{DmSessId, NodeId};
use dmapi::{DmError, DmResult};
use parking_lot::Mutex;
use tracing::info;

use super::Sends;

struct State {
    registry: BTreeMap<DmSessId, (NodeId, Vec<u8>)>,
    table: DispositionTable,
}

/// The session manager's records in etcd: `sessions/<sid>` (the owner node,
/// little-endian, then the info string) and `dispositions` (the table's spec
/// as a DM frame), written only while the term of `epoch` holds.
pub struct Durable {
    store: Arc<dyn coord::Store>,
    prefix: String,
    guard: String,
    epoch: coord::Rev,
}

type Registry = BTreeMap<DmSessId, (NodeId, Vec<u8>)>;

impl Durable {
    /// The records of cluster `cluster`, written under the term `epoch` of
    /// the role whose key is `guard`.
    pub fn new(store: Arc<dyn coord::Store>, cluster: &str, guard: &str, epoch: coord::Rev) -> Durable {
        Durable { store, prefix: format!("{}sm/", coord::prefix(cluster)), guard: guard.into(), epoch }
    }

    fn check(&self, r: Result<bool, coord::StoreError>) -> DmResult<()> {
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(DmError::Inval("this node's session-manager term is over")),
            Err(e) => Err(DmError::Io(format!("recording in etcd: {e}"))),
        }
    }

    fn put_session(&self, sid: DmSessId, node: NodeId, info: &[u8]) -> DmResult<()> {
        let mut v = node.0.to_le_bytes().to_vec();
        v.extend_from_slice(info);
        let k = format!("{}sessions/{}", self.prefix, sid.0);
        self.check(self.store.put_guarded(&k, &v, &self.guard, self.epoch))
    }

    fn delete_session(&self, sid: DmSessId) -> DmResult<()> {
        let k = format!("{}sessions/{}", self.prefix, sid.0);
        self.check(self.store.delete_guarded(&k, &self.guard, self.epoch))
    }

    fn put_table(&self, t: &DispositionTable) -> DmResult<()> {
        let f = encode_frame(&Frame::new(NodeId(0), 0, Message::DispSpec(t.to_spec())))
            .map_err(|e| DmError::Io(format!("encoding the table: {e}")))?;
        let k = format!("{}dispositions", self.prefix);
        self.check(self.store.put_guarded(&k, &f, &self.guard, self.epoch))
    }

    /// The registry and the table as the last term left them.
    pub fn load(&self) -> DmResult<(Registry, DispositionTable)> {
        let io = |e: coord::StoreError| DmError::Io(format!("reading etcd: {e}"));
        let (kvs, _) = self.store.list(&format!("{}sessions/", self.prefix)).map_err(io)?;
        let mut reg = Registry::new();
        for kv in kvs {
            let sid = kv.key.rsplit('/').next().and_then(|s| s.parse().ok()).map(DmSessId);
            if let (Some(sid), Some(n)) = (sid, kv.value.get(..4)) {
                let node = NodeId(u32::from_le_bytes(n.try_into().unwrap_or_default()));
                reg.insert(sid, (node, kv.value[4..].to_vec()));
            }
        }
        let table = match self.store.get(&format!("{}dispositions", self.prefix)).map_err(io)? {
            None => DispositionTable::default(),
            Some(kv) => match decode_frame(&kv.value) {
                Ok((Frame { msg: Message::DispSpec(spec), .. }, _)) => DispositionTable::from_spec(&spec)
                    .map_err(|e| DmError::Io(format!("the recorded table does not hold together: {e}")))?,
                _ => return Err(DmError::Io("the recorded table is unreadable".into())),
            },
        };
        Ok((reg, table))
    }
}

/// The session-manager role of one node.
pub struct SessionManager {
    me: NodeId,
    nodes: Vec<NodeId>,
    fs_managers: BTreeSet<NodeId>,
    state: Mutex<State>,
    durable: Option<Durable>,
}

impl SessionManager {
    /// The role on node `me`, for a cluster of `nodes` whose file systems are managed
    /// by `fs_managers`.
    pub fn new(me: NodeId, nodes: Vec<NodeId>, fs_managers: impl IntoIterator<Item = NodeId>) -> Self {
        SessionManager {
            me,
            nodes,
            fs_managers: fs_managers.into_iter().collect(),
            state: Mutex::new(State { registry: BTreeMap::new(), table: DispositionTable::default() }),
            durable: None,
        }
    }

    /// The role elected through etcd: it starts from what `durable` holds and
    /// records every change there.
    pub fn elected(
        me: NodeId,
        nodes: Vec<NodeId>,
        fs_managers: impl IntoIterator<Item = NodeId>,
        durable: Durable,
    ) -> DmResult<Self> {
        let (registry, table) = durable.load()?;
        info!(sessions = registry.len(), version = table.version(), "session manager state loaded from etcd");
        let mut sm = SessionManager::new(me, nodes, fs_managers);
        sm.state = Mutex::new(State { registry, table });
        sm.durable = Some(durable);
        Ok(sm)
    }

    /// Every node: its registry and, for the file systems' managers, the table
    /// (what a newly elected session manager sends out).
    pub fn announce(&self) -> Sends {
        self.nodes.iter().filter(|n| **n != self.me).flat_map(|n| self.on_node_alive(*n)).collect()
    }

    /// The term this role plays under (0: a static role).
    pub fn epoch(&self) -> u64 {
        self.durable.as_ref().map_or(0, |d| super::epoch_of(d.epoch))
    }

    /// A frame of this role about `sid`, stamped with its term.
    fn frame(&self, sid: DmSessId, msg: Message) -> Frame {
        let mut f = Frame::new(self.me, 0, msg).in_term(self.epoch());
        f.sid = sid;
        f
    }

    fn record(&self, what: &str, r: DmResult<()>) {
        if let Err(e) = r {
            tracing::error!(error = %e, what, "the session registry in etcd is behind");
        }
    }

    fn to_all(&self, f: &Frame) -> Sends {
        self.nodes.iter().filter(|n| **n != self.me).map(|n| (*n, f.clone())).collect()
    }

    fn spec(&self, table: &DispositionTable) -> Sends {
        let f = self.frame(DmSessId(0), Message::DispSpec(table.to_spec()));
        self.fs_managers.iter().map(|n| (*n, f.clone())).collect()
    }

    /// A session was created on `node`: record it, mirror it everywhere.
    pub fn on_session_create(&self, sid: DmSessId, node: NodeId, info: &[u8]) -> Sends {
        if let Some(d) = &self.durable {
            self.record("session create", d.put_session(sid, node, info));
        }
        self.state.lock().registry.insert(sid, (node, info.to_vec()));
        info!(%sid, %node, "session registered");
        self.to_all(&self.frame(sid, Message::SessionCreate { node, info: info.to_vec() }))
    }

    /// A session was reclaimed on `node`: record where it lives, point its
    /// dispositions there, and tell every node so sources re-send its pending events.
    pub fn on_session_reclaim(&self, sid: DmSessId, node: NodeId, info: &[u8]) -> Sends {
        let mut st = self.state.lock();
        let moved = st.registry.insert(sid, (node, info.to_vec())).is_some_and(|(old, _)| old != node);
        info!(%sid, %node, moved, "session reclaimed");
        if let Some(d) = &self.durable {
            self.record("session reclaim", d.put_session(sid, node, info));
        }
        let mut out = Vec::new();
        if moved {
            st.table.move_session(sid, node);
            if let Some(d) = &self.durable {
                self.record("dispositions", d.put_table(&st.table));
            }
            out.extend(self.spec(&st.table));
        }
        out.extend(self.to_all(&self.frame(sid, Message::SessionReclaim { node, info: info.to_vec() })));
        out
    }

    /// A session was destroyed: forget it and its dispositions.
    pub fn on_session_destroy(&self, sid: DmSessId) -> Sends {
        let mut st = self.state.lock();
        st.registry.remove(&sid);
        let v = st.table.version();
        st.table.remove_session(sid);
        if let Some(d) = &self.durable {
            self.record("session destroy", d.delete_session(sid));
            if st.table.version() != v {
                self.record("dispositions", d.put_table(&st.table));
            }
        }
        let mut out = self.to_all(&self.frame(sid, Message::SessionDestroy));
        if st.table.version() != v {
            out.extend(self.spec(&st.table));
        }
        info!(%sid, "session unregistered");
        out
    }

    /// A disposition call of session `sid`: applied to the master table (the error,
    /// if any, goes back to the caller) and the new table sent to the fs managers.
    pub fn on_disp_change(&self, sid: DmSessId, change: &DispChange) -> DmResult<Sends> {
        let mut st = self.state.lock();
        let before = st.table.clone();
        st.table.apply_change(sid, change)?;
        if let Some(d) = &self.durable {
            // Not recorded, not made: the caller hears why.
            if let Err(e) = d.put_table(&st.table) {
                st.table = before;
                return Err(e);
            }
        }
        info!(%sid, version = st.table.version(), "dispositions changed");
        Ok(self.spec(&st.table))
    }

    /// `node` came up (or back): it gets the registry, and the table if it manages a
    /// file system.
    pub fn on_node_alive(&self, node: NodeId) -> Sends {
        let st = self.state.lock();
        let mut out: Sends = st
            .registry
            .iter()
            .map(|(sid, (n, info))| (node, self.frame(*sid, Message::SessionCreate { node: *n, info: info.clone() })))
            .collect();
        if self.fs_managers.contains(&node) && st.table.version() > 0 {
            out.push((node, self.frame(DmSessId(0), Message::DispSpec(st.table.to_spec()))));
        }
        out
    }

    /// The master table.
    pub fn table(&self) -> Arc<DispositionTable> {
        Arc::new(self.state.lock().table.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmapi::types::{DmHandle, EventSet, EventType, FsId};

    #[test]
    fn disposition_changes_go_to_fs_managers_and_sessions_to_everyone() {
        let sm = SessionManager::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)], [NodeId(2)]);
        let sid = DmSessId::compose(NodeId(3), 1).unwrap();
        let out = sm.on_session_create(sid, NodeId(3), b"hsm");
        assert_eq!(out.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![NodeId(2), NodeId(3)]);
        let set: EventSet = [EventType::Read].into_iter().collect();
        let ch = DispChange::SetDisp { node: NodeId(3), handle: DmHandle::fs(FsId(1)), set };
        let out = sm.on_disp_change(sid, &ch).unwrap();
        assert!(matches!(&out[..], [(NodeId(2), f)] if matches!(f.msg, Message::DispSpec(_))));
        // A second session may not take the same event.
        let other = DmSessId::compose(NodeId(2), 1).unwrap();
        assert!(sm.on_disp_change(other, &ch).is_err());
        // A late fs manager gets registry and table.
        assert_eq!(sm.on_node_alive(NodeId(2)).len(), 2);
        sm.on_session_destroy(sid);
        assert_eq!(sm.table().dm_getall_disp(sid), vec![]);
    }

    /// With etcd: what one term records the next one starts from, and a
    /// deposed session manager can change nothing.
    #[test]
    fn an_elected_session_manager_starts_from_the_last_terms_records() {
        use coord::mem::MemStore;
        use coord::{Election, Member, Store};
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let ttl = std::time::Duration::from_secs(3);
        let (a, b) = (
            Member::join(store.clone(), "c", 1, b"", ttl).unwrap(),
            Member::join(store.clone(), "c", 2, b"", ttl).unwrap(),
        );
        let e = Election::new(store.clone(), "c", "session-manager");
        let nodes = vec![NodeId(1), NodeId(2), NodeId(3)];
        let t1 = e.try_campaign(1, b"", a.lease()).unwrap().unwrap();
        let first = SessionManager::elected(
            NodeId(1),
            nodes.clone(),
            [NodeId(2)],
            Durable::new(store.clone(), "c", e.key(), t1.epoch),
        )
        .unwrap();
        let (sid, gone) = (DmSessId::compose(NodeId(3), 1).unwrap(), DmSessId::compose(NodeId(3), 2).unwrap());
        first.on_session_create(sid, NodeId(3), b"hsm");
        first.on_session_create(gone, NodeId(3), b"short-lived");
        first.on_session_destroy(gone);
        let set: EventSet = [EventType::Read].into_iter().collect();
        let ch = DispChange::SetDisp { node: NodeId(3), handle: DmHandle::fs(FsId(1)), set };
        first.on_disp_change(sid, &ch).unwrap();
        // Node 1's term ends; node 2 is elected and loads the records.
        a.leave().unwrap();
        let t2 = e.try_campaign(2, b"", b.lease()).unwrap().unwrap();
        let second =
            SessionManager::elected(NodeId(2), nodes, [NodeId(2)], Durable::new(store.clone(), "c", e.key(), t2.epoch))
                .unwrap();
        assert_eq!(second.state.lock().registry.keys().copied().collect::<Vec<_>>(), vec![sid]);
        assert_eq!(second.table().dm_getall_disp(sid), first.table().dm_getall_disp(sid));
        let other = DmSessId::compose(NodeId(2), 1).unwrap();
        assert_eq!(second.on_disp_change(other, &ch).unwrap_err().errno(), libc::EBUSY, "the event is still taken");
        // The deposed one's change is refused, and its table stays as it was.
        let write: EventSet = [EventType::Write].into_iter().collect();
        let ch2 = DispChange::SetDisp { node: NodeId(3), handle: DmHandle::fs(FsId(1)), set: write };
        assert_eq!(first.on_disp_change(sid, &ch2).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(first.table().dm_getall_disp(sid), second.table().dm_getall_disp(sid));
        assert!(second
            .announce()
            .iter()
            .any(|(n, f)| *n == NodeId(3) && matches!(f.msg, Message::SessionCreate { .. })));
        // What each term sends carries its epoch, so nodes can tell the
        // deposed one's mirrors from the new one's.
        let (e1, e2) = (crate::roles::epoch_of(t1.epoch), crate::roles::epoch_of(t2.epoch));
        assert!(e2 > e1 && e1 > 0 && second.epoch() == e2);
        assert!(second.announce().iter().all(|(_, f)| f.epoch == e2));
        assert!(first.on_session_destroy(sid).iter().all(|(_, f)| f.epoch == e1));
    }
}
