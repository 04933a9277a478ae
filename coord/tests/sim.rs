//! A deterministic simulation of Tidepool's coordination: nodes that join
//! through leases, campaign for a file system's manager role, fence the
//! last holder off a shared volume with reservations and write to it, all
//! on the real `Member` and `Election` code over `MemStore`, with seeded
//! faults: lost renewals, crashes and restarts, partitions from etcd,
//! clock jumps past the lease TTL. Checked on every step: no write is
//! accepted from a holder whose term a later one took over from (at most
//! one manager acts per epoch), and after the faults stop, one manager is
//! elected and writes again (every blocked campaign ends).
//!
//! Each seed is one run; a failure names its seed, and
//! `TIDEPOOL_SIM_SEED=<n> cargo test -p coord --test sim` replays it alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coord::mem::MemStore;
use coord::store::{Kv, LeaseId, Result, Rev, Store, StoreError};
use coord::{Election, Member, Term};
use test_support::SimRng;

const TTL: Duration = Duration::from_secs(3);

/// A node's view of the store: cut off (a partition) it fails every call.
struct View {
    inner: Arc<MemStore>,
    cut: AtomicBool,
}

impl View {
    fn check(&self) -> Result<()> {
        if self.cut.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("partitioned".into()));
        }
        Ok(())
    }
}

impl Store for View {
    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.check()?;
        self.inner.grant(ttl)
    }
    fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.check()?;
        self.inner.keep_alive(lease)
    }
    fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.check()?;
        self.inner.revoke(lease)
    }
    fn get(&self, key: &str) -> Result<Option<Kv>> {
        self.check()?;
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<(Vec<Kv>, Rev)> {
        self.check()?;
        self.inner.list(prefix)
    }
    fn put(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<Rev> {
        self.check()?;
        self.inner.put(key, value, lease)
    }
    fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<std::result::Result<Rev, Kv>> {
        self.check()?;
        self.inner.create(key, value, lease)
    }
    fn put_if(&self, key: &str, value: &[u8], lease: LeaseId, mod_rev: Rev) -> Result<bool> {
        self.check()?;
        self.inner.put_if(key, value, lease, mod_rev)
    }
    fn put_guarded(&self, key: &str, value: &[u8], guard: &str, epoch: Rev) -> Result<bool> {
        self.check()?;
        self.inner.put_guarded(key, value, guard, epoch)
    }
    fn delete_guarded(&self, key: &str, guard: &str, epoch: Rev) -> Result<bool> {
        self.check()?;
        self.inner.delete_guarded(key, guard, epoch)
    }
    fn delete_if(&self, key: &str, mod_rev: Rev) -> Result<bool> {
        self.check()?;
        self.inner.delete_if(key, mod_rev)
    }
    fn wait(&self, prefix: &str, after: Rev, _timeout: Duration) -> Result<Option<Rev>> {
        // The simulation never blocks: it polls.
        self.check()?;
        self.inner.wait(prefix, after, Duration::ZERO)
    }
}

/// The shared volume's reservations, as the storage node keeps them
/// (Write Exclusive - Registrants Only), and every write it accepted.
#[derive(Default)]
struct Volume {
    registered: HashMap<u32, u64>,
    holder: Option<u64>,
    /// The epoch of the term that took the volume last.
    epoch: Rev,
    accepted: u64,
}

impl Volume {
    fn register(&mut self, node: u32, key: u64) {
        self.registered.insert(node, key);
    }
    /// A new term takes the reservation, preempting the holder's key.
    fn take(&mut self, node: u32, key: u64, epoch: Rev) -> bool {
        if self.registered.get(&node) != Some(&key) {
            return false;
        }
        if let Some(old) = self.holder.filter(|k| *k != key) {
            self.registered.retain(|_, k| *k != old);
        }
        self.holder = Some(key);
        self.epoch = self.epoch.max(epoch);
        true
    }
    fn write(&mut self, node: u32, key: u64) -> bool {
        let ok = self.registered.get(&node) == Some(&key);
        self.accepted += ok as u64;
        ok
    }
}

struct Node {
    id: u32,
    view: Arc<View>,
    up: bool,
    member: Option<Member>,
    key: u64,
    /// The term this node believes it holds.
    term: Option<Term>,
}

fn key(node: u32, lease: LeaseId) -> u64 {
    ((node as u64) << 48) | (lease as u64 & 0xffff_ffff_ffff)
}

/// What a run saw.
#[derive(Debug, Default)]
struct Counts {
    terms: u64,
    writes_accepted: u64,
    writes_refused: u64,
    crashes: u64,
    partitions: u64,
    lost_renewals: u64,
}

/// The knobs a run turns; `reregister_on_refusal` is the bug the checker
/// must catch (a fenced node registering its key again).
#[derive(Clone, Copy)]
struct Knobs {
    nodes: u32,
    steps: u32,
    reregister_on_refusal: bool,
}

fn run(seed: u64, k: Knobs) -> std::result::Result<Counts, String> {
    let store = Arc::new(MemStore::new());
    let mut rng = SimRng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut vol = Volume::default();
    let mut c = Counts::default();
    let mut nodes: Vec<Node> = (1..=k.nodes)
        .map(|id| Node {
            id,
            view: Arc::new(View { inner: store.clone(), cut: AtomicBool::new(false) }),
            up: true,
            member: None,
            key: 0,
            term: None,
        })
        .collect();
    let role = |v: &Arc<View>| Election::new(v.clone(), "sim", "fs-1");
    for step in 0..k.steps + 400 {
        let faults = step < k.steps;
        if !faults {
            for n in &mut nodes {
                n.view.cut.store(false, Ordering::Relaxed);
                n.up = true;
            }
        }
        store.advance(Duration::from_millis(100 + rng.below(if faults { 1200 } else { 400 })));
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for i in order {
            let n = &mut nodes[i];
            if faults && n.up && rng.per_mille(8) {
                // Crash: everything in memory goes; the lease runs out by itself.
                n.up = false;
                n.member = None;
                n.term = None;
                c.crashes += 1;
            } else if !n.up {
                if !faults || rng.per_mille(100) {
                    n.up = true;
                }
                continue;
            }
            if faults && rng.per_mille(15) {
                let cut = !n.view.cut.load(Ordering::Relaxed);
                n.view.cut.store(cut, Ordering::Relaxed);
                c.partitions += cut as u64;
            }
            // Membership: join (a new key, registered once), or renew.
            match &n.member {
                None => {
                    if let Ok(m) = Member::join(n.view.clone(), "sim", n.id, b"", TTL) {
                        n.key = key(n.id, m.lease());
                        vol.register(n.id, n.key);
                        n.member = Some(m);
                    }
                }
                Some(m) => {
                    if faults && rng.per_mille(150) {
                        c.lost_renewals += 1;
                    } else if let Err(StoreError::LeaseGone(_)) = m.renew() {
                        // Out of the cluster: stop acting, rejoin later.
                        n.member = None;
                        n.term = None;
                        continue;
                    }
                }
            }
            let Some(m) = &n.member else { continue };
            let e = role(&n.view);
            match &n.term {
                None => {
                    if let Ok(Ok(t)) = e.try_campaign(n.id, b"", m.lease()) {
                        if vol.take(n.id, n.key, t.epoch) {
                            c.terms += 1;
                            n.term = Some(t);
                        } else {
                            // Fenced before it could take the volume: give the term up.
                            let _ = e.resign(&t);
                        }
                    }
                }
                Some(t) => {
                    // A holder that can see etcd checks its term; one cut off
                    // cannot, and goes on writing: the fence must stop it.
                    if let Ok(false) = e.holds(t) {
                        n.term = None;
                        continue;
                    }
                    let epoch = t.epoch;
                    if vol.write(n.id, n.key) {
                        c.writes_accepted += 1;
                        if epoch < vol.epoch {
                            return Err(format!(
                                "seed {seed} step {step}: node {} wrote with epoch {epoch} after epoch {} took the volume",
                                n.id, vol.epoch
                            ));
                        }
                    } else {
                        c.writes_refused += 1;
                        if k.reregister_on_refusal {
                            vol.register(n.id, n.key);
                        } else {
                            n.term = None;
                        }
                    }
                }
            }
        }
    }
    // Healed for 400 steps: one manager, elected and writing, every node in.
    let holders: Vec<u32> = nodes.iter().filter(|n| n.term.is_some()).map(|n| n.id).collect();
    if holders.len() != 1 {
        return Err(format!("seed {seed}: after healing, holders {holders:?}"));
    }
    if nodes.iter().any(|n| n.member.is_none()) {
        return Err(format!("seed {seed}: after healing, a node is out of the cluster"));
    }
    let before = vol.accepted;
    let h = nodes.iter().find(|n| n.term.is_some()).expect("one holder");
    if !vol.write(h.id, h.key) || vol.accepted != before + 1 {
        return Err(format!("seed {seed}: after healing, the manager cannot write"));
    }
    c.writes_accepted = vol.accepted;
    Ok(c)
}

fn seeds() -> Vec<u64> {
    test_support::sim_seeds(200)
}

#[test]
fn elections_and_fencing_hold_under_seeded_faults() {
    let k = Knobs { nodes: 5, steps: 600, reregister_on_refusal: false };
    let mut total = Counts::default();
    for seed in seeds() {
        let c = run(seed, k).unwrap_or_else(|e| panic!("{e} (replay: TIDEPOOL_SIM_SEED={seed})"));
        total.terms += c.terms;
        total.writes_accepted += c.writes_accepted;
        total.writes_refused += c.writes_refused;
        total.crashes += c.crashes;
        total.partitions += c.partitions;
        total.lost_renewals += c.lost_renewals;
    }
    println!("sim: {total:?}");
    // The faults happened: terms changed hands and fenced holders were refused.
    assert!(total.terms > 100 && total.writes_refused > 0 && total.crashes > 0, "{total:?}");
}

/// The checker can fail: a fenced node that registers its key again
/// (what `fencing::register` must never do on a refused write) writes
/// over a later term, and some seed shows it.
#[test]
fn the_checker_catches_a_fenced_node_that_registers_again() {
    let k = Knobs { nodes: 5, steps: 600, reregister_on_refusal: true };
    let caught = (1..=200).find_map(|seed| run(seed, k).err());
    assert!(caught.is_some_and(|e| e.contains("after epoch")), "no seed caught the re-registration");
}

/// A simulated cluster of 64 nodes, for the figures: its event counts.
#[test]
fn sixty_four_nodes() {
    let c = run(7, Knobs { nodes: 64, steps: 300, reregister_on_refusal: false }).unwrap();
    println!("sim 64 nodes: {c:?}");
    assert!(c.terms > 0 && c.writes_accepted > 0, "{c:?}");
}
