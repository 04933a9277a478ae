//! Event generation for the file system: [`EventSource::generate`] is what a file
//! operation calls. It asks the node's copy of the dispositions whether and where an
//! event goes; a synchronous event is sent at once and the calling thread blocks
//! until the session answers (B4); asynchronous events are batched per session node
//! by a flusher thread (one `EventBatch` frame carries many) and never block.
//!
//! ```no_run
//! # fn f(src: &node::dm::source::EventSource) -> dmapi::DmResult<()> {
//! use dmapi::event::{DmEvent, EventBody};
//! use dmapi::types::*;
//! let ev = DmEvent::new(EventType::Read, NodeId(2),
//!     EventBody::Data { handle: DmHandle::file(FsId(1), 7, 0), offset: 0, length: 4096 })?;
//! match src.generate(FsId(1), ev) {
//!     Ok(_) => { /* perform the read */ }
//!     Err(e) => { /* fail the read with e.errno() */ }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dmapi::event::DmEvent;
use dmapi::proto::{BatchedEvent, Frame, Message};
use dmapi::source::{OutEvent, SourceConfig, SourceEngine};
use dmapi::transport::TransportError;
use dmapi::types::{DmResponse, EventSet, FsId, NodeId};
use dmapi::wire::MAX_PAYLOAD;
use dmapi::{DmError, DmResult};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, debug_span, warn};

/// Sends one frame to a node (the daemon's transport, or its loopback for itself).
pub type FrameSender = Arc<dyn Fn(NodeId, Frame) -> Result<(), TransportError> + Send + Sync>;

/// Most events in one batch frame; with the largest events it still fits
/// `MAX_PAYLOAD` most of the time, and the encoder refuses rather than truncates.
const MAX_BATCH: usize = 8192;

struct Outbox {
    queues: Mutex<HashMap<NodeId, Vec<OutEvent>>>,
    cv: Condvar,
    stop: AtomicBool,
}

/// The source side of a node: the entry point the file system calls.
pub struct EventSource {
    engine: Arc<SourceEngine>,
    outbox: Arc<Outbox>,
}

impl EventSource {
    /// A source for node `me`; frames leave through `send`, whose frame sequence
    /// numbers come from `seq`.
    pub fn new(me: NodeId, cfg: SourceConfig, send: FrameSender, seq: Arc<AtomicU64>) -> Arc<EventSource> {
        let outbox =
            Arc::new(Outbox { queues: Mutex::new(HashMap::new()), cv: Condvar::new(), stop: AtomicBool::new(false) });
        let (ob, snd) = (outbox.clone(), send.clone());
        let engine = Arc::new(SourceEngine::new(
            me,
            cfg,
            Arc::new(move |ev: &OutEvent| -> DmResult<()> {
                if ev.sync {
                    snd(ev.to, ev.to_frame()).map_err(DmError::from)
                } else {
                    // Batched; a failed batch is re-sent from the engine's unacked list.
                    ob.queues.lock().entry(ev.to).or_default().push(ev.clone());
                    ob.cv.notify_one();
                    Ok(())
                }
            }),
        ));
        let ob = outbox.clone();
        std::thread::Builder::new()
            .name(format!("dm-outbox-{me}"))
            .spawn(move || flush_loop(me, ob, send, seq))
            .map_err(|e| warn!(error = %e, "cannot start the event flusher"))
            .ok();
        Arc::new(EventSource { engine, outbox })
    }

    /// Generates `event` on file system `fs` if the dispositions ask for it; see
    /// [`SourceEngine::generate`]. Blocks on synchronous events until the answer:
    /// `Err(Aborted(errno))` means the operation must fail with `errno`.
    pub fn generate(&self, fs: FsId, event: DmEvent) -> DmResult<DmResponse> {
        self.generate_with_filelist(fs, event, EventSet::EMPTY)
    }

    /// [`generate`](Self::generate), with the event list of the file the
    /// event is about (`dm_set_eventlist` on a file handle) enabling it too.
    pub fn generate_with_filelist(&self, fs: FsId, event: DmEvent, file_events: EventSet) -> DmResult<DmResponse> {
        let _span = debug_span!("dm_event", %fs, ty = ?event.ev_type).entered();
        self.engine.generate_with_filelist(fs, event, file_events)
    }

    /// The engine (for the daemon's response, ack and failure plumbing).
    pub fn engine(&self) -> &Arc<SourceEngine> {
        &self.engine
    }

    /// Stops the flusher and cancels blocked callers.
    pub fn shutdown(&self) {
        self.outbox.stop.store(true, Ordering::Release);
        self.outbox.cv.notify_all();
        self.engine.shutdown();
    }
}

fn flush_loop(me: NodeId, ob: Arc<Outbox>, send: FrameSender, seq: Arc<AtomicU64>) {
    loop {
        let work: Vec<(NodeId, Vec<OutEvent>)> = {
            let mut q = ob.queues.lock();
            while q.values().all(Vec::is_empty) {
                if ob.stop.load(Ordering::Acquire) {
                    return;
                }
                ob.cv.wait_for(&mut q, Duration::from_millis(200));
            }
            q.iter_mut().filter(|(_, v)| !v.is_empty()).map(|(n, v)| (*n, std::mem::take(v))).collect()
        };
        for (to, evs) in work {
            let mut rest = &evs[..];
            while !rest.is_empty() {
                let n = batch_len(rest);
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let batch: Vec<BatchedEvent> = chunk
                    .iter()
                    .map(|e| BatchedEvent { seq: e.seq, sid: e.sid, sync: false, fs: e.fs, event: e.event.clone() })
                    .collect();
                let f = Frame::new(me, seq.fetch_add(1, Ordering::Relaxed), Message::EventBatch(batch));
                if let Err(e) = send(to, f) {
                    // The engine keeps them until acked and re-sends on reconnect.
                    debug!(%to, events = chunk.len(), error = %e, "event batch not sent");
                    break;
                }
            }
        }
    }
}

/// How many of `evs` go in the next batch: at most `MAX_BATCH`, and few enough
/// that the frame stays well under `MAX_PAYLOAD` (an event's wire size is below its
/// `dm_eventmsg_t` size plus 32 bytes of batch fields and lengths).
fn batch_len(evs: &[OutEvent]) -> usize {
    let mut bytes = 0;
    for (i, e) in evs.iter().enumerate().take(MAX_BATCH) {
        bytes += e.event.encoded_len() + 32;
        if bytes > MAX_PAYLOAD / 2 {
            return i.max(1);
        }
    }
    evs.len().min(MAX_BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmapi::event::EventBody;
    use dmapi::proto::encode_frame;
    use dmapi::types::{DmHandle, DmSessId, EventType, DM_MAX_NAME_LEN};

    fn out(name_len: usize, seq: u64) -> OutEvent {
        let event = DmEvent::new(
            EventType::Postcreate,
            NodeId(2),
            EventBody::Namespace {
                mode: 0,
                handle1: Some(DmHandle::file(FsId(1), 2, 0)),
                handle2: None,
                name1: vec![b'n'; name_len],
                name2: vec![b'm'; name_len],
                retcode: 0,
            },
        )
        .unwrap();
        OutEvent { to: NodeId(1), sid: DmSessId(1 << 20 | 1), seq, sync: false, fs: FsId(1), event, resend: false }
    }

    #[test]
    fn batches_of_the_largest_events_still_encode() {
        let evs: Vec<OutEvent> = (0..1000).map(|i| out(DM_MAX_NAME_LEN - 1, i)).collect();
        let n = batch_len(&evs);
        assert!(n > 1 && n < evs.len());
        let batch = evs[..n]
            .iter()
            .map(|e| BatchedEvent { seq: e.seq, sid: e.sid, sync: false, fs: e.fs, event: e.event.clone() })
            .collect();
        assert!(encode_frame(&Frame::new(NodeId(2), 1, Message::EventBatch(batch))).is_ok());
        let small: Vec<OutEvent> = (0..20_000).map(|i| out(4, i)).collect();
        assert!(batch_len(&small) > 1000, "small events still batch by the thousand");
        assert_eq!(batch_len(&small[..10]), 10);
    }
}
