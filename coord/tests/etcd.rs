//! The coordination layer on a real etcd (Debian's etcd-server, started by
//! the test on loopback): leases, membership, elections with epochs, waits,
//! and an etcd that goes away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::etcd::EtcdStore;
use coord::{Election, Member, Store, StoreError};
use test_support::etcd::Etcd;

fn store(e: &Etcd) -> Arc<dyn Store> {
    Arc::new(EtcdStore::connect(&[e.endpoint()]).expect("connecting to etcd"))
}

#[test]
fn members_and_elections_on_a_real_etcd() {
    let Some(etcd) = Etcd::start() else { return };
    let s = store(&etcd);
    // etcd's smallest lease TTL is about two seconds.
    let ttl = Duration::from_secs(2);
    let mut a = Member::join(s.clone(), "t", 1, b"node a", ttl).unwrap();
    let b = Member::join(s.clone(), "t", 2, b"node b", ttl).unwrap();
    a.keep_alive_in_background(|| {});
    let listed = Member::list(&*s, "t").unwrap();
    assert_eq!(
        listed.iter().map(|m| (m.node, &m.value[..])).collect::<Vec<_>>(),
        [(1, &b"node a"[..]), (2, &b"node b"[..])]
    );

    let e = Election::new(s.clone(), "t", "fs-1");
    let t1 = e.try_campaign(2, b"10.0.0.2:7600", b.lease()).unwrap().unwrap();
    assert_eq!(e.try_campaign(1, b"10.0.0.1:7600", a.lease()).unwrap().unwrap_err().holder, 2);
    // Node 2 stops renewing (it died): its member key and its role go with
    // its lease, and node 1, waiting in campaign, wins a later epoch.
    let started = Instant::now();
    let t2 = e.campaign(1, b"10.0.0.1:7600", a.lease(), Duration::from_millis(100), &|| false).unwrap().unwrap();
    let took = started.elapsed();
    assert!(t2.holder == 1 && t2.epoch > t1.epoch, "{t1:?} then {t2:?}");
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(10), "won after {took:?}");
    assert!(!e.holds(&t1).unwrap() && e.holds(&t2).unwrap());
    assert_eq!(Member::list(&*s, "t").unwrap().iter().map(|m| m.node).collect::<Vec<_>>(), [1], "2 is out");
    assert_eq!(b.renew(), Err(StoreError::LeaseGone(b.lease())));
    assert!(!a.lost(), "the background renewal kept 1 in");
    assert_eq!(e.leader().unwrap().unwrap().value, b"10.0.0.1:7600");

    // A wait wakes on a change after the given revision, and times out otherwise.
    let (_, rev) = s.list("/tidepool/t/").unwrap();
    assert_eq!(s.wait("/tidepool/t/roles/", rev, Duration::from_millis(300)).unwrap(), None);
    let waiter = {
        let s = s.clone();
        std::thread::spawn(move || s.wait("/tidepool/t/roles/", rev, Duration::from_secs(10)))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(e.resign(&t2).unwrap());
    assert!(waiter.join().unwrap().unwrap().is_some_and(|r| r > rev));
    assert!(e.leader().unwrap().is_none());

    // Compare-and-set on revisions.
    let r = s.put("/tidepool/t/x", b"1", 0).unwrap();
    assert!(!s.put_if("/tidepool/t/x", b"2", 0, r - 1).unwrap());
    assert!(s.put_if("/tidepool/t/x", b"2", 0, r).unwrap());
    assert_eq!(s.get("/tidepool/t/x").unwrap().unwrap().value, b"2");
    assert_eq!(s.put("/tidepool/t/y", b"", b.lease()), Err(StoreError::LeaseGone(b.lease())));

    // etcd goes away: calls fail as unavailable within the request timeout,
    // and the renewing node declares itself out once a TTL has passed.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut c = Member::join(s.clone(), "t", 3, b"", ttl).unwrap();
    let l2 = lost.clone();
    c.keep_alive_in_background(move || l2.store(true, std::sync::atomic::Ordering::SeqCst));
    drop(etcd);
    let started = Instant::now();
    assert!(matches!(s.get("/tidepool/t/x"), Err(StoreError::Unavailable(_))));
    assert!(started.elapsed() < coord::etcd::REQUEST_TIMEOUT + Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lost.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the node did not notice it lost etcd");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.lost());
}
