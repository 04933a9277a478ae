//! The DM event path between two nodes over the real TCP transport, in one process:
//! a source engine on node 2 generates events, a session engine on node 1 queues them
//! for a DM application thread, and the responses travel back (B1, B4, B5, B12).
//! This is the wiring the node daemon does; multi-process tests come with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use dmapi::disp::DispositionTable;
use dmapi::event::{DmEvent, EventBody};
use dmapi::proto::Message;
use dmapi::session::{Caller, Outbound, SessionConfig, SessionEngine};
use dmapi::source::{OutEvent, SourceConfig, SourceEngine};
use dmapi::transport::tcp::{TcpConfig, TcpTransport};
use dmapi::transport::{Transport, TransportError};
use dmapi::types::*;
use dmapi::DmError;

struct Cluster {
    a: Arc<TcpTransport>,
    b: Arc<TcpTransport>,
    sess: Arc<SessionEngine>,
    src: Arc<SourceEngine>,
    sid: DmSessId,
}

fn start() -> Cluster {
    let any = "127.0.0.1:0".parse().unwrap();
    let a = Arc::new(TcpTransport::start(TcpConfig::new(NodeId(1), any, b"key")).unwrap());
    let b = Arc::new(TcpTransport::start(TcpConfig::new(NodeId(2), any, b"key")).unwrap());
    a.add_peer(NodeId(2), b.local_addr());
    b.add_peer(NodeId(1), a.local_addr());

    // Session node A: engine whose outbound goes over A's transport.
    let seq = Arc::new(AtomicU64::new(1));
    let (ta, sq) = (a.clone(), seq.clone());
    let sess = Arc::new(SessionEngine::new(
        NodeId(1),
        SessionConfig::default(),
        Arc::new(move |o: Outbound| {
            let (to, f) = o.to_frame(NodeId(1), sq.fetch_add(1, Ordering::Relaxed), NodeId(1));
            if to != NodeId(1) {
                let _ = ta.send(to, &f);
            }
        }),
    ));
    let sid = sess.dm_create_session(&Caller::root(), DM_NO_SESSION, b"hsm").unwrap();
    {
        let (a, sess) = (a.clone(), sess.clone());
        thread::spawn(move || loop {
            match a.recv(None) {
                Ok((_, f)) => {
                    if let Message::Event { sync, event, .. } = f.msg {
                        let _ = sess.deliver(f.sid, f.seq, sync, event);
                    }
                }
                Err(TransportError::Closed) => return,
                Err(_) => {}
            }
        });
    }

    // Source node B: engine whose outbound goes over B's transport.
    let tb = b.clone();
    let src = Arc::new(SourceEngine::new(
        NodeId(2),
        SourceConfig::default(),
        Arc::new(move |e: &OutEvent| tb.send(e.to, &e.to_frame()).map_err(DmError::from)),
    ));
    let srcs: Arc<OnceLock<Arc<SourceEngine>>> = Arc::new(OnceLock::new());
    let _ = srcs.set(src.clone());
    {
        let b = b.clone();
        thread::spawn(move || loop {
            match b.recv(None) {
                Ok((from, f)) => {
                    let s = srcs.get().unwrap();
                    match f.msg {
                        Message::Response { response, .. } => {
                            s.on_response(from, f.ref_seq, response);
                        }
                        Message::Pending { delay_ms } => {
                            s.on_pending(f.ref_seq, Duration::from_millis(delay_ms));
                        }
                        _ => {}
                    }
                }
                Err(TransportError::Closed) => return,
                Err(_) => {}
            }
        });
    }
    let mut t = DispositionTable::default();
    let fs = DmHandle::fs(FsId(1));
    let set: EventSet = [EventType::Read, EventType::Postcreate].into_iter().collect();
    t.dm_set_disp(sid, NodeId(1), &fs, set).unwrap();
    t.dm_set_eventlist(&fs, set).unwrap();
    src.install_dispositions(Arc::new(t));
    Cluster { a, b, sess, src, sid }
}

fn read_ev(offset: i64) -> DmEvent {
    DmEvent::new(
        EventType::Read,
        NodeId(0),
        EventBody::Data { handle: DmHandle::file(FsId(1), 10, 1), offset, length: 4096 },
    )
    .unwrap()
}

#[test]
fn sync_events_cross_tcp_and_block_until_answered() {
    let c = start();
    let (sess, sid) = (c.sess.clone(), c.sid);
    let app = thread::spawn(move || {
        let mut sources = Vec::new();
        for _ in 0..2 {
            let evs = sess.get_events_typed(sid, 1, DM_EV_WAIT, 4096).unwrap();
            let ev = &evs[0];
            sources.push(ev.source);
            let EventBody::Data { offset, .. } = ev.body else { panic!("not a data event") };
            let resp = if offset == 0 { DmResponse::Continue } else { DmResponse::Abort(libc::EPERM) };
            sess.dm_respond_event(sid, ev.token, resp, &[]).unwrap();
        }
        sources
    });
    assert_eq!(c.src.generate(FsId(1), read_ev(0)).unwrap(), DmResponse::Continue);
    assert_eq!(c.src.generate(FsId(1), read_ev(1)).unwrap_err(), DmError::Aborted(libc::EPERM));
    assert_eq!(app.join().unwrap(), vec![NodeId(2), NodeId(2)], "B12");
    c.src.shutdown();
    c.sess.shutdown();
    c.a.shutdown();
    c.b.shutdown();
}

/// Round-trip latency of synchronous events over loopback TCP, beside a raw frame
/// ping-pong over the same transport (printed, never asserted).
#[test]
fn sync_round_trip_latency_beside_raw_ping_pong() {
    let c = start();
    let n = 300;
    let (sess, sid) = (c.sess.clone(), c.sid);
    let app = thread::spawn(move || {
        for _ in 0..n {
            let evs = sess.get_events_typed(sid, 1, DM_EV_WAIT, 4096).unwrap();
            sess.dm_respond_event(sid, evs[0].token, DmResponse::Continue, &[]).unwrap();
        }
    });
    let mut ev_lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        c.src.generate(FsId(1), read_ev(i as i64)).unwrap();
        ev_lat.push(t0.elapsed());
    }
    app.join().unwrap();
    c.src.shutdown();
    c.sess.shutdown();
    c.a.shutdown();
    c.b.shutdown();

    // Baseline: raw frames of the same size bounced between two fresh transports.
    let any = "127.0.0.1:0".parse().unwrap();
    let x = Arc::new(TcpTransport::start(TcpConfig::new(NodeId(1), any, b"k")).unwrap());
    let y = Arc::new(TcpTransport::start(TcpConfig::new(NodeId(2), any, b"k")).unwrap());
    x.add_peer(NodeId(2), y.local_addr());
    y.add_peer(NodeId(1), x.local_addr());
    let echo = {
        let y = y.clone();
        thread::spawn(move || {
            for _ in 0..n {
                let (_, mut f) = y.recv(None).unwrap();
                f.source = NodeId(2);
                y.send(NodeId(1), &f).unwrap();
            }
        })
    };
    let mut raw_lat = Vec::with_capacity(n);
    for i in 0..n {
        let mut ev = read_ev(0);
        ev.source = NodeId(1);
        let f = OutEvent::to_frame(&OutEvent {
            to: NodeId(2),
            sid: DmSessId(1),
            seq: i as u64,
            sync: true,
            fs: FsId(1),
            event: ev,
            resend: false,
        });
        let t0 = Instant::now();
        x.send(NodeId(2), &f).unwrap();
        x.recv(None).unwrap();
        raw_lat.push(t0.elapsed());
    }
    echo.join().unwrap();
    ev_lat.sort();
    raw_lat.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    eprintln!(
        "sync DM event round trip over loopback TCP: p50 {:?} p99 {:?}; raw frame ping-pong p50 {:?} p99 {:?}; p50 ratio {:.2}",
        p(&ev_lat, 0.5),
        p(&ev_lat, 0.99),
        p(&raw_lat, 0.5),
        p(&raw_lat, 0.99),
        p(&ev_lat, 0.5).as_secs_f64() / p(&raw_lat, 0.5).as_secs_f64()
    );
}
