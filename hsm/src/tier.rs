//! The object-store tier, through the `object_store` crate: a local
//! directory (`file:///dir`) or an S3 bucket (`s3://bucket/prefix`, with
//! the usual `AWS_*` variables: `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for
//! an S3-compatible server, keys, region).
//!
//! The HSM's threads are plain threads; each call runs the store's future
//! on the tier's own small runtime, bounded by the tier's timeout: a tier
//! that stops answering fails the call (`HsmError::Tier`) and never holds a
//! recall, and the reader waiting on it, for longer.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};

use crate::{HsmError, HsmResult};

/// A flag that stops a tier call at once when raised (a cancel).
pub type Stop<'a> = Option<&'a AtomicBool>;

/// Objects at most this large go up in one request; larger ones in parts of
/// this size (S3 takes parts of 5 MiB and more).
pub const PART: usize = 8 << 20;

/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

pub struct Tier {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
    /// Bytes per second all transfers together may move (None: no limit),
    /// and when the next byte may go.
    rate: Option<u64>,
    next: parking_lot::Mutex<Instant>,
}

fn tier_err(e: impl std::fmt::Display) -> HsmError {
    HsmError::Tier(e.to_string())
}

impl Tier {
    /// The tier at `url`, each call bounded by `timeout`: `file:///dir` (the
    /// directory is made if missing) or `s3://bucket[/prefix]`.
    pub fn open(url: &str, timeout: Duration) -> HsmResult<Tier> {
        let u = url::Url::parse(url).map_err(|e| HsmError::Request(format!("tier URL {url}: {e}")))?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match u.scheme() {
            "file" => {
                let dir = u.to_file_path().map_err(|_| HsmError::Request(format!("not a local path: {url}")))?;
                std::fs::create_dir_all(&dir).map_err(tier_err)?;
                (Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(tier_err)?), String::new())
            }
            "s3" => {
                // HTTPS through rustls with ring: one provider for the process.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let bucket = u.host_str().filter(|b| !b.is_empty());
                let bucket = bucket.ok_or_else(|| HsmError::Request(format!("no bucket in {url}")))?;
                // Each request within the bound; retries stop at it too.
                let client = ClientOptions::new().with_timeout(timeout).with_connect_timeout(timeout.min(SEC5));
                let retry = RetryConfig { retry_timeout: timeout, max_retries: 3, ..Default::default() };
                // The AWS_* variables after the client options (which would
                // replace AWS_ALLOW_HTTP and the like otherwise).
                let mut b = AmazonS3Builder::new().with_client_options(client).with_retry(retry);
                for (k, v) in std::env::vars() {
                    if let Some(key) = k.strip_prefix("AWS_").and_then(|_| k.to_ascii_lowercase().parse().ok()) {
                        b = b.with_config(key, v);
                    }
                }
                let s3 =
                    b.with_bucket_name(bucket).build().map_err(|e| HsmError::Request(format!("tier {url}: {e}")))?;
                let p = u.path().trim_matches('/');
                (Arc::new(s3), if p.is_empty() { String::new() } else { format!("{p}/") })
            }
            s => return Err(HsmError::Request(format!("tier scheme {s}: use file:///dir or s3://bucket/prefix"))),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hsm-tier")
            .enable_all()
            .build()
            .map_err(tier_err)?;
        Ok(Tier { url: url.to_string(), store, prefix, timeout, rt, rate: None, next: Instant::now().into() })
    }

    /// Limits what every transfer together moves to `bytes_per_sec` (none:
    /// as fast as the tier goes), so migrations and recalls leave the
    /// network and the tier to others.
    pub fn with_rate(mut self, bytes_per_sec: Option<u64>) -> Tier {
        self.rate = bytes_per_sec.filter(|r| *r > 0);
        self
    }

    /// When `bytes` more, reserved now, may have moved under the rate
    /// limit (None: no limit).
    fn reserve(&self, bytes: u64) -> Option<Instant> {
        let rate = self.rate?;
        let mut next = self.next.lock();
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        Some(*next)
    }

    /// Waits until `bytes` more may move under the rate limit (at once
    /// without one); a raised `stop` ends the wait.
    pub fn pace(&self, bytes: u64, stop: Stop) -> HsmResult<()> {
        let Some(until) = self.reserve(bytes) else { return Ok(()) };
        while Instant::now() < until {
            if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Err(HsmError::Cancelled);
            }
            std::thread::sleep((until - Instant::now().min(until)).min(Duration::from_millis(20)));
        }
        Ok(())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> ObjPath {
        ObjPath::from(format!("{}{key}", self.prefix))
    }

    /// Runs one of the store's futures within the tier's bound, given up
    /// (dropped: its request goes) as soon as `stop` is raised.
    fn run<T>(&self, what: &str, stop: Stop, f: impl Future<Output = object_store::Result<T>>) -> HsmResult<T> {
        let stopped = async {
            match stop {
                Some(s) => {
                    while !s.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let r = self.rt.block_on(async {
            tokio::select! {
                r = tokio::time::timeout(self.timeout, f) => Some(r),
                () = stopped => None,
            }
        });
        match r {
            None => Err(HsmError::Cancelled),
            Some(Ok(r)) => r.map_err(|e| HsmError::Tier(format!("{what}: {e}"))),
            Some(Err(_)) => Err(HsmError::Tier(format!("{what}: no answer from {} in {:?}", self.url, self.timeout))),
        }
    }

    /// Stores `data` as `key` in one request, replacing any object of that
    /// name.
    pub fn put(&self, key: &str, data: Bytes, stop: Stop) -> HsmResult<()> {
        let p = self.path(key);
        self.run("put", stop, self.store.put(&p, PutPayload::from(data)))?;
        Ok(())
    }

    /// An upload of `key` in parts, for data that comes in pieces; the
    /// object appears (replacing any of that name) when it is finished.
    pub fn upload<'a>(&'a self, key: &str, stop: Stop<'a>) -> HsmResult<Upload<'a>> {
        let p = self.path(key);
        let up = self.run("start upload", stop, self.store.put_multipart(&p))?;
        Ok(Upload { tier: self, stop, w: Some(WriteMultipart::new_with_chunk_size(up, PART)) })
    }

    /// The object's size.
    pub fn size(&self, key: &str, stop: Stop) -> HsmResult<u64> {
        let p = self.path(key);
        Ok(self.run("head", stop, self.store.head(&p))?.size)
    }

    /// `key` read from the start in one request, handed out in pieces of
    /// `piece` bytes (the last may be shorter) with up to two more on
    /// their way while the caller writes one: one GET for the whole object
    /// costs the store less than a range per piece.
    pub fn read<'a>(&'a self, key: &str, piece: usize, stop: Stop<'a>) -> ObjectReader<'a> {
        use futures::StreamExt;
        let (store, p) = (self.store.clone(), self.path(key));
        let (tx, rx) = tokio::sync::mpsc::channel::<object_store::Result<Bytes>>(2);
        let task = self.rt.spawn(async move {
            let mut s = match store.get(&p).await {
                Ok(r) => r.into_stream(),
                Err(e) => return drop(tx.send(Err(e)).await),
            };
            let mut buf = bytes::BytesMut::with_capacity(piece);
            while let Some(part) = s.next().await {
                match part {
                    Ok(mut b) => {
                        while !b.is_empty() {
                            let take = b.len().min(piece - buf.len());
                            buf.extend_from_slice(&b.split_to(take));
                            if buf.len() == piece && tx.send(Ok(buf.split().freeze())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => return drop(tx.send(Err(e)).await),
                }
            }
            if !buf.is_empty() {
                let _ = tx.send(Ok(buf.freeze())).await;
            }
        });
        ObjectReader { tier: self, stop, rx, task }
    }

    /// Removes `key`; one already gone is no error.
    pub fn delete(&self, key: &str) -> HsmResult<()> {
        let p = self.path(key);
        match self.run("delete", None, async { Ok(self.store.delete(&p).await) })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(tier_err(e)),
        }
    }

    /// Whether `key` is in the tier.
    pub fn exists(&self, key: &str) -> HsmResult<bool> {
        let p = self.path(key);
        match self.run("head", None, async { Ok(self.store.head(&p).await) })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(tier_err(e)),
        }
    }
}

const SEC5: Duration = Duration::from_secs(5);

/// An object coming in ([`Tier::read`]); dropped, its request goes.
pub struct ObjectReader<'a> {
    tier: &'a Tier,
    stop: Stop<'a>,
    rx: tokio::sync::mpsc::Receiver<object_store::Result<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl ObjectReader<'_> {
    /// The next piece (None at the end), within the tier's bound from now.
    pub fn next_piece(&mut self) -> HsmResult<Option<Bytes>> {
        let rx = &mut self.rx;
        self.tier.run("get", self.stop, async { rx.recv().await.transpose() })
    }
}

impl Drop for ObjectReader<'_> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An object being written in parts ([`Tier::upload`]); dropped unfinished,
/// the parts are thrown away.
pub struct Upload<'a> {
    tier: &'a Tier,
    stop: Stop<'a>,
    w: Option<WriteMultipart>,
}

impl Upload<'_> {
    /// Adds `data`, waiting while [`PARTS_IN_FLIGHT`] parts are on their way.
    pub fn write(&mut self, data: &[u8]) -> HsmResult<()> {
        let w = self.w.as_mut().expect("upload in progress");
        let tier = self.tier;
        tier.run("upload part", self.stop, w.wait_for_capacity(PARTS_IN_FLIGHT))?;
        // `write` spawns the part's request on the current runtime.
        let _g = tier.rt.enter();
        w.write(data);
        Ok(())
    }

    pub fn finish(mut self) -> HsmResult<()> {
        let w = self.w.take().expect("upload in progress");
        self.tier.run("finish upload", self.stop, w.finish())?;
        Ok(())
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.w.take() {
            let _ = self.tier.run("abort upload", None, w.abort());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_spaces_transfers_and_a_cancel_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let t = Tier::open(&url, Duration::from_secs(5)).unwrap();
        assert!(t.reserve(1 << 30).is_none(), "no limit: no wait");
        let t = t.with_rate(Some(1 << 20));
        let t0 = Instant::now();
        let a = t.reserve(1 << 20).unwrap();
        let b = t.reserve(2 << 20).unwrap();
        // One MiB a second: the second transfer's bytes go after the first's.
        assert!(a >= t0 + Duration::from_secs(1) && a < t0 + Duration::from_millis(1500), "{:?}", a - t0);
        assert_eq!(b - a, Duration::from_secs(2));
        let stop = AtomicBool::new(true);
        assert!(matches!(t.pace(1 << 20, Some(&stop)), Err(HsmError::Cancelled)));
    }
}
