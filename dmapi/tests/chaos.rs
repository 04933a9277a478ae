//! Seeded chaos test of the DM event protocol in one process: two source nodes and
//! one session node joined by a simulated network that reorders, drops and
//! duplicates messages (decisions drawn from a seeded generator; thread timing is
//! not seeded), with a session-node crash, restore and reclaim in the middle.
//!
//! Checks: every synchronous operation ends with exactly the response the DM
//! application chose for *its* event (no loss, no mix-up), duplicates never surface
//! as a second answer to the operation, and no event stays pending.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dmapi::disp::DispositionTable;
use dmapi::event::{DmEvent, EventBody};
use dmapi::session::{Caller, Outbound, SessionConfig, SessionEngine};
use dmapi::source::{OutEvent, SourceConfig, SourceEngine};
use dmapi::types::*;
use dmapi::DmError;
use test_support::SimRng;

#[derive(Clone)]
enum Msg {
    ToSession(OutEvent),
    ToSource(NodeId, u64, DmResponse),
}

/// The answer the DM application gives to a read at `offset`: a pure function, so
/// the operation can check it got the answer to its own event.
fn answer(offset: i64) -> DmResponse {
    if offset % 3 == 0 {
        DmResponse::Continue
    } else {
        DmResponse::Abort((offset % 50 + 1) as i32)
    }
}

fn read_ev(offset: i64) -> DmEvent {
    DmEvent::new(
        EventType::Read,
        NodeId(0),
        EventBody::Data { handle: DmHandle::file(FsId(1), 1, 1), offset, length: 1 },
    )
    .unwrap()
}

fn run(seed: u64) {
    let net: Arc<Mutex<Vec<Msg>>> = Arc::default();
    let srcs: Vec<Arc<SourceEngine>> = [2u32, 3]
        .into_iter()
        .map(|n| {
            let net = net.clone();
            Arc::new(SourceEngine::new(
                NodeId(n),
                SourceConfig { session_failure_timeout: Duration::from_secs(30), ..SourceConfig::default() },
                Arc::new(move |e: &OutEvent| {
                    net.lock().unwrap().push(Msg::ToSession(e.clone()));
                    Ok(())
                }),
            ))
        })
        .collect();
    let make_engine = {
        let (net, srcs) = (net.clone(), srcs.clone());
        move || {
            let (net, srcs) = (net.clone(), srcs.clone());
            Arc::new(SessionEngine::new(
                NodeId(1),
                SessionConfig::default(),
                Arc::new(move |o: Outbound| match o {
                    Outbound::Response { to, ref_seq, response, .. } => {
                        net.lock().unwrap().push(Msg::ToSource(to, ref_seq, response))
                    }
                    // The session manager would tell every source; here directly.
                    Outbound::SessionReclaimed { sid, .. } => {
                        for s in &srcs {
                            s.on_session_reclaimed(sid, NodeId(1));
                        }
                    }
                    _ => {}
                }),
            ))
        }
    };
    let engine = Arc::new(Mutex::new(make_engine()));
    let sid = engine.lock().unwrap().dm_create_session(&Caller::root(), DM_NO_SESSION, b"chaos").unwrap();
    let mut t = DispositionTable::default();
    let fs = DmHandle::fs(FsId(1));
    let set: EventSet = [EventType::Read].into_iter().collect();
    t.dm_set_disp(sid, NodeId(1), &fs, set).unwrap();
    t.dm_set_eventlist(&fs, set).unwrap();
    let t = Arc::new(t);
    for s in &srcs {
        s.install_dispositions(t.clone());
    }

    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));

    // The network: random order, 10% drops, 5% duplicates; when idle, the sources'
    // retransmit timers re-send pending events.
    let pump = {
        let (net, engine, srcs, done) = (net.clone(), engine.clone(), srcs.clone(), done.clone());
        thread::spawn(move || {
            let mut rng = SimRng::new(seed);
            let mut idle = 0;
            while !done.load(Ordering::Acquire) {
                let m = {
                    let mut q = net.lock().unwrap();
                    if q.is_empty() {
                        None
                    } else {
                        let i = (rng.below(q.len() as u64)) as usize;
                        let m = q.swap_remove(i);
                        if rng.percent(5) {
                            q.push(m.clone());
                        }
                        Some(m)
                    }
                };
                let Some(m) = m else {
                    idle += 1;
                    if idle > 5 {
                        for s in &srcs {
                            s.resend_pending_to(NodeId(1));
                        }
                        idle = 0;
                    }
                    thread::sleep(Duration::from_millis(1));
                    continue;
                };
                if rng.percent(10) {
                    continue;
                }
                match m {
                    Msg::ToSession(e) => {
                        let eng = engine.lock().unwrap().clone();
                        let _ = eng.deliver(e.sid, e.seq, e.sync, e.event);
                    }
                    Msg::ToSource(to, seq, r) => {
                        let s = &srcs[(to.0 - 2) as usize];
                        s.on_response(NodeId(1), seq, r);
                    }
                }
            }
        })
    };

    // The DM application: answers every event; after the crash it reclaims.
    let app = {
        let (engine, done) = (engine.clone(), done.clone());
        thread::spawn(move || {
            let mut answered = 0usize;
            loop {
                let eng = engine.lock().unwrap().clone();
                match eng.get_events_typed(sid, 16, DM_EV_WAIT, 1 << 16) {
                    Ok(evs) => {
                        for ev in evs {
                            let EventBody::Data { offset, .. } = ev.body else {
                                continue;
                            };
                            if eng.dm_respond_event(sid, ev.token, answer(offset), &[]).is_ok() {
                                answered += 1;
                            }
                        }
                    }
                    Err(e) if e.errno() == libc::EINTR => {
                        if done.load(Ordering::Acquire) {
                            return answered;
                        }
                        // Restarted application: reclaim the session on the new engine.
                        loop {
                            let new = engine.lock().unwrap().clone();
                            if !Arc::ptr_eq(&new, &eng)
                                && new.dm_create_session(&Caller::root(), sid, b"reclaimed").is_ok()
                            {
                                break;
                            }
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Err(e) => panic!("dm_get_events: {e}"),
                }
            }
        })
    };

    // File-system operations: 4 threads per source node, 40 reads each.
    let per_thread = 40i64;
    let ops: Vec<_> = srcs
        .iter()
        .enumerate()
        .flat_map(|(si, s)| {
            (0..4i64).map({
                let completed = completed.clone();
                move |ti| {
                    let (s, completed) = (s.clone(), completed.clone());
                    thread::spawn(move || {
                        for i in 0..per_thread {
                            let offset = (si as i64 * 1000 + ti * 100 + i) * 7 + 1;
                            let got = s.generate(FsId(1), read_ev(offset));
                            let want = match answer(offset) {
                                DmResponse::Abort(e) => Err(DmError::Aborted(e)),
                                r => Ok(r),
                            };
                            assert_eq!(got, want, "offset {offset}");
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                }
            })
        })
        .collect();
    let total = ops.len() * per_thread as usize;

    // Crash the session node a third of the way through.
    let t0 = Instant::now();
    while completed.load(Ordering::Relaxed) < total / 3 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress before crash");
        thread::sleep(Duration::from_millis(1));
    }
    let old = {
        let mut slot = engine.lock().unwrap();
        let fresh = make_engine();
        fresh.restore_session(sid, b"chaos").unwrap();
        std::mem::replace(&mut *slot, fresh)
    };
    old.shutdown();
    for s in &srcs {
        s.on_session_node_failed(NodeId(1));
    }

    for op in ops {
        op.join().unwrap();
    }
    assert!(t0.elapsed() < Duration::from_secs(60));
    done.store(true, Ordering::Release);
    engine.lock().unwrap().shutdown();
    let answered = app.join().unwrap();
    pump.join().unwrap();
    assert_eq!(completed.load(Ordering::Relaxed), total);
    assert!(answered >= total, "every event answered at least once");
    // De-duplication: despite 5% duplicated messages and re-sends after every drop,
    // the application sees each event once, plus at most one re-delivery after the
    // crash for each operation that was in flight then (one per thread).
    let in_flight_at_crash = 8;
    assert!(
        answered <= total + in_flight_at_crash,
        "{answered} answers for {total} events: duplicates reached the application"
    );
    for s in &srcs {
        assert!(s.pending_events().is_empty(), "nothing left pending");
    }
}

#[test]
fn seeded_chaos_with_session_node_crash() {
    for seed in [1, 0xdead_beef, 42] {
        run(seed);
    }
}
