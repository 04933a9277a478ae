//! NVMe persistent reservations that fence nodes off a shared volume, when
//! membership is by etcd lease (GPFS does the same with SCSI-3 persistent
//! reservations). Every node registers a key of its own on the namespace
//! (one per membership: node id and lease, so a node that rejoined has a
//! new one); the file system's manager holds a Write Exclusive - Registrants
//! Only reservation, so every registered node may write and nobody else.
//! Taking over from a failed manager preempts and aborts its key (its
//! commands still queued are aborted, later ones refused), and a node that
//! left the cluster has its key preempted the same way: one that comes back
//! from a partition with dirty data cannot write it over newer data.
//!
//! A node registers only when it joins (a new lease); it never registers
//! again because a write was refused, which would undo its fence.

use nvme_wire::resv::{action, ResvType};
use nvmf::Controller;

/// The reservation type the manager holds.
pub const RTYPE: u8 = ResvType::WriteExclusiveRegOnly as u8;

/// The reservation key of `node` for its membership `lease` (never 0).
pub fn key(node: u32, lease: i64) -> u64 {
    ((node as u64) << 48) | (lease as u64 & 0xffff_ffff_ffff)
}

/// The node a key belongs to.
pub fn node_of(key: u64) -> u32 {
    (key >> 48) as u32
}

/// Registers this host on namespace `nsid` with `key`, replacing the key of
/// an earlier life of this node if it had one, and asks the target to keep
/// the reservations through a restart (Persist Through Power Loss), so a
/// restarted storage node still fences who was fenced. A target that cannot
/// persist them (Invalid Field) gets the registration without, and a warning.
pub fn register(ctrl: &Controller, nsid: u32, key: u64) -> nvmf::Result<()> {
    let invalid = |e: &nvmf::NvmfError| e.status() == Some(nvme_wire::status::Status::INVALID_FIELD);
    let with = |cptpl: u8| match ctrl.resv_register_ptpl(nsid, action::REGISTER, false, 0, key, cptpl) {
        // Registered already (another key): replace it, whatever it was.
        Err(e) if !invalid(&e) => ctrl.resv_register_ptpl(nsid, action::REPLACE, true, 0, key, cptpl),
        r => r,
    };
    match with(PERSIST) {
        Err(e) if invalid(&e) => {
            tracing::warn!(
                nsid,
                "the storage node keeps reservations in memory only: a restart of it drops every fence"
            );
            with(0)
        }
        r => r,
    }
}

/// CPTPL: persist the reservations through power loss.
const PERSIST: u8 = 3;

/// Takes the reservation for this host (registered with `key`) as the file
/// system's manager: acquired if nobody holds it, else the holder preempted
/// and its commands aborted. The key preempted, if any.
pub fn take(ctrl: &Controller, nsid: u32, key: u64) -> nvmf::Result<Option<u64>> {
    let (_, rtype, regs) = ctrl.resv_report(nsid)?;
    let holder = regs.iter().find(|r| r.rcsts & 1 != 0).map(|r| r.rkey.get());
    match holder {
        Some(k) if k == key && rtype == RTYPE => Ok(None),
        Some(k) => {
            ctrl.resv_acquire(nsid, action::PREEMPT_ABORT, RTYPE, key, k)?;
            Ok(Some(k))
        }
        None => {
            ctrl.resv_acquire(nsid, action::ACQUIRE, RTYPE, key, 0)?;
            Ok(None)
        }
    }
}

/// Removes the registration of `victim` (a node that left the cluster),
/// aborting its queued commands: its writes are refused from now on.
pub fn fence(ctrl: &Controller, nsid: u32, key: u64, victim: u64) -> nvmf::Result<()> {
    ctrl.resv_acquire(nsid, action::PREEMPT_ABORT, RTYPE, key, victim)
}
