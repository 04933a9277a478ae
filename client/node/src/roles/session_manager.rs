//! The session manager (B10): the cluster's registry of sessions and the master
//! disposition table. Session nodes announce sessions here (`SessionCreate`,
//! `SessionReclaim`, `SessionDestroy`) and forward disposition calls (`DispChange`);
//! the manager mirrors the registry to every node (so queries work anywhere, B13,
//! and a restarted session node can restore its sessions for reclaim) and sends the
//! new table to each file system's manager (`DispSpec`), which passes it on (B11).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dmapi::disp::DispChange;
use dmapi::disp::DispositionTable;
use dmapi::proto::{Frame, Message};
use dmapi::types::{DmSessId, NodeId};
use dmapi::DmResult;
use parking_lot::Mutex;
use tracing::info;

use super::Sends;

struct State {
    registry: BTreeMap<DmSessId, (NodeId, Vec<u8>)>,
    table: DispositionTable,
}

/// The session-manager role of one node.
pub struct SessionManager {
    me: NodeId,
    nodes: Vec<NodeId>,
    fs_managers: BTreeSet<NodeId>,
    state: Mutex<State>,
}

fn frame(me: NodeId, sid: DmSessId, msg: Message) -> Frame {
    let mut f = Frame::new(me, 0, msg);
    f.sid = sid;
    f
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
        }
    }

    fn to_all(&self, f: &Frame) -> Sends {
        self.nodes.iter().filter(|n| **n != self.me).map(|n| (*n, f.clone())).collect()
    }

    fn spec(&self, table: &DispositionTable) -> Sends {
        let f = Frame::new(self.me, 0, Message::DispSpec(table.to_spec()));
        self.fs_managers.iter().map(|n| (*n, f.clone())).collect()
    }

    /// A session was created on `node`: record it, mirror it everywhere.
    pub fn on_session_create(&self, sid: DmSessId, node: NodeId, info: &[u8]) -> Sends {
        self.state.lock().registry.insert(sid, (node, info.to_vec()));
        info!(%sid, %node, "session registered");
        self.to_all(&frame(self.me, sid, Message::SessionCreate { node, info: info.to_vec() }))
    }

    /// A session was reclaimed on `node`: record where it lives, point its
    /// dispositions there, and tell every node so sources re-send its pending events.
    pub fn on_session_reclaim(&self, sid: DmSessId, node: NodeId, info: &[u8]) -> Sends {
        let mut st = self.state.lock();
        let moved = st.registry.insert(sid, (node, info.to_vec())).is_some_and(|(old, _)| old != node);
        info!(%sid, %node, moved, "session reclaimed");
        let mut out = Vec::new();
        if moved {
            st.table.move_session(sid, node);
            out.extend(self.spec(&st.table));
        }
        out.extend(self.to_all(&frame(self.me, sid, Message::SessionReclaim { node, info: info.to_vec() })));
        out
    }

    /// A session was destroyed: forget it and its dispositions.
    pub fn on_session_destroy(&self, sid: DmSessId) -> Sends {
        let mut st = self.state.lock();
        st.registry.remove(&sid);
        let v = st.table.version();
        st.table.remove_session(sid);
        let mut out = self.to_all(&frame(self.me, sid, Message::SessionDestroy));
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
        st.table.apply_change(sid, change)?;
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
            .map(|(sid, (n, info))| {
                (node, frame(self.me, *sid, Message::SessionCreate { node: *n, info: info.clone() }))
            })
            .collect();
        if self.fs_managers.contains(&node) && st.table.version() > 0 {
            out.push((node, Frame::new(self.me, 0, Message::DispSpec(st.table.to_spec()))));
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
}
