//! The file-system manager role (B11): for each file system it manages, the nodes
//! that mount it, and the latest disposition table from the session manager. A new
//! table goes to every mounting node; a node that mounts later gets the current
//! table in answer to its `Mount`.
//!
//! The table is cluster-wide (it is small and versioned), so every mounting node
//! receives one object and installs it if newer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dmapi::disp::DispositionTable;
use dmapi::proto::{Frame, Message};
use dmapi::types::{FsId, NodeId};
use parking_lot::Mutex;
use tracing::info;

use super::Sends;

struct State {
    table: Arc<DispositionTable>,
    mounted: BTreeMap<FsId, BTreeSet<NodeId>>,
}

/// The fs-manager role of one node, for the file systems it manages.
pub struct FsManager {
    me: NodeId,
    state: Mutex<State>,
}

impl FsManager {
    /// The role on node `me` for `managed` file systems.
    pub fn new(me: NodeId, managed: impl IntoIterator<Item = FsId>) -> Self {
        let mounted = managed.into_iter().map(|f| (f, BTreeSet::new())).collect();
        FsManager { me, state: Mutex::new(State { table: Arc::new(DispositionTable::default()), mounted }) }
    }

    /// The latest table (what a newly elected manager sends to every node).
    pub fn table(&self) -> Arc<DispositionTable> {
        self.state.lock().table.clone()
    }

    /// Whether this node manages `fs`.
    pub fn manages(&self, fs: FsId) -> bool {
        self.state.lock().mounted.contains_key(&fs)
    }

    /// A table from the session manager: if newer, keep it and send it to every
    /// node that mounts one of our file systems (this node installs it itself).
    pub fn on_spec(&self, table: &DispositionTable) -> Sends {
        let mut st = self.state.lock();
        if !table.is_newer_than(&st.table) {
            return Vec::new();
        }
        st.table = Arc::new(table.clone());
        let nodes: BTreeSet<NodeId> = st.mounted.values().flatten().copied().filter(|n| *n != self.me).collect();
        info!(version = table.version(), nodes = nodes.len(), "dispositions distributed to mounting nodes");
        let f = Frame::new(self.me, 0, Message::DispSpec(table.to_spec()));
        nodes.into_iter().map(|n| (n, f.clone())).collect()
    }

    /// `node` mounted (or unmounted) `fs`; a mount gets the current table.
    pub fn on_mount(&self, node: NodeId, fs: FsId, mounted: bool) -> Sends {
        let mut st = self.state.lock();
        let Some(set) = st.mounted.get_mut(&fs) else {
            return Vec::new();
        };
        if mounted {
            set.insert(node);
        } else {
            set.remove(&node);
        }
        info!(%node, %fs, mounted, "mount recorded");
        if mounted && node != self.me && st.table.version() > 0 {
            return vec![(node, Frame::new(self.me, 0, Message::DispSpec(st.table.to_spec())))];
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmapi::types::{DmHandle, DmSessId, EventSet, EventType};

    #[test]
    fn tables_reach_mounters_and_late_mounters() {
        let m = FsManager::new(NodeId(2), [FsId(1)]);
        assert!(m.on_mount(NodeId(4), FsId(1), true).is_empty());
        let mut t = DispositionTable::default();
        let sid = DmSessId::compose(NodeId(3), 1).unwrap();
        let set: EventSet = [EventType::Read].into_iter().collect();
        t.dm_set_disp(sid, NodeId(3), &DmHandle::fs(FsId(1)), set).unwrap();
        assert_eq!(m.on_spec(&t).len(), 1);
        assert!(m.on_spec(&t).is_empty(), "same version is not sent twice");
        assert_eq!(m.on_mount(NodeId(5), FsId(1), true).len(), 1);
        assert!(m.on_mount(NodeId(5), FsId(9), true).is_empty());
    }
}
