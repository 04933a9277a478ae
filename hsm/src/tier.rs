//! The object-store tier, through the `object_store` crate: a local
//! directory (`file:///dir`) today; `s3://bucket/prefix` is the next step.
//!
//! The HSM's threads are plain threads; each call runs the store's future
//! on a small runtime of the tier's own.

use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::{HsmError, HsmResult};

pub struct Tier {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

fn tier_err(e: impl std::fmt::Display) -> HsmError {
    HsmError::Tier(e.to_string())
}

impl Tier {
    /// The tier at `url`: `file:///dir` (the directory is made if missing).
    pub fn open(url: &str) -> HsmResult<Tier> {
        let u = url::Url::parse(url).map_err(|e| HsmError::Request(format!("tier URL {url}: {e}")))?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match u.scheme() {
            "file" => {
                let dir = u.to_file_path().map_err(|_| HsmError::Request(format!("not a local path: {url}")))?;
                std::fs::create_dir_all(&dir).map_err(tier_err)?;
                (Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(tier_err)?), String::new())
            }
            s => return Err(HsmError::Request(format!("tier scheme {s}: use file:///dir"))),
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().map_err(tier_err)?;
        Ok(Tier { url: url.to_string(), store, prefix, rt })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> ObjPath {
        ObjPath::from(format!("{}{key}", self.prefix))
    }

    /// Stores `data` as `key`, replacing any object of that name.
    pub fn put(&self, key: &str, data: Vec<u8>) -> HsmResult<()> {
        let p = self.path(key);
        self.rt.block_on(self.store.put(&p, PutPayload::from(Bytes::from(data)))).map_err(tier_err)?;
        Ok(())
    }

    /// The object `key`, whole.
    pub fn get(&self, key: &str) -> HsmResult<Bytes> {
        let p = self.path(key);
        self.rt.block_on(async { self.store.get(&p).await?.bytes().await }).map_err(tier_err)
    }

    /// Removes `key`; one already gone is no error.
    pub fn delete(&self, key: &str) -> HsmResult<()> {
        let p = self.path(key);
        match self.rt.block_on(self.store.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(tier_err(e)),
        }
    }

    /// Whether `key` is in the tier.
    pub fn exists(&self, key: &str) -> HsmResult<bool> {
        let p = self.path(key);
        match self.rt.block_on(self.store.head(&p)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(tier_err(e)),
        }
    }
}
