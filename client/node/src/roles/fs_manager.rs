//! The file-system manager role (B11): for each file system it manages, the nodes
//! that mount it, and the latest disposition table from the session manager. A new
//! table goes to every mounting node; a node that mounts later gets the current
//! table in answer to its `Mount`.
//!
//! The table is cluster-wide (it is small and versioned), so every mounting node
//! receives one object and installs it if newer. It is passed on stamped with
//! the term of the session manager that made it, as it came.

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
    /// The session-manager term `table` came with.
    epoch: u64,
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
        FsManager { me, state: Mutex::new(State { table: Arc::new(DispositionTable::default()), epoch: 0, mounted }) }
    }

    /// The latest table (what a newly elected manager sends to every node).
    pub fn table(&self) -> Arc<DispositionTable> {
        self.state.lock().table.clone()
    }

    /// The latest table as a frame, stamped as it came.
    pub fn table_frame(&self) -> Frame {
        let st = self.state.lock();
        Frame::new(self.me, 0, Message::DispSpec(st.table.to_spec())).in_term(st.epoch)
    }

    /// Whether this node manages `fs`.
    pub fn manages(&self, fs: FsId) -> bool {
        self.state.lock().mounted.contains_key(&fs)
    }

    /// A table from the session manager of term `epoch`: if newer, keep it
    /// and send it to every node that mounts one of our file systems (this
    /// node installs it itself).
    pub fn on_spec(&self, table: &DispositionTable, epoch: u64) -> Sends {
        let mut st = self.state.lock();
        if !table.is_newer_than(&st.table) {
            return Vec::new();
        }
        st.table = Arc::new(table.clone());
        st.epoch = epoch;
        let nodes: BTreeSet<NodeId> = st.mounted.values().flatten().copied().filter(|n| *n != self.me).collect();
        info!(version = table.version(), nodes = nodes.len(), "dispositions distributed to mounting nodes");
        let f = Frame::new(self.me, 0, Message::DispSpec(table.to_spec())).in_term(epoch);
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
            return vec![(node, Frame::new(self.me, 0, Message::DispSpec(st.table.to_spec())).in_term(st.epoch))];
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
        let sent = m.on_spec(&t, 12);
        assert!(matches!(&sent[..], [(NodeId(4), f)] if f.epoch == 12), "passed on in its term");
        assert!(m.on_spec(&t, 12).is_empty(), "same version is not sent twice");
        let late = m.on_mount(NodeId(5), FsId(1), true);
        assert!(matches!(&late[..], [(NodeId(5), f)] if f.epoch == 12));
        assert!(m.on_mount(NodeId(5), FsId(9), true).is_empty());
    }
}
