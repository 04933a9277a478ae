//! [`Store`] on a real etcd cluster through `etcd-client` (gRPC). The
//! client is async; this store owns a small tokio runtime and blocks the
//! calling thread on each call, so the node daemon's threads use etcd
//! like any other blocking service. Every call is bounded by a timeout:
//! an etcd that does not answer is [`StoreError::Unavailable`].

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::runtime::Runtime;

use crate::store::{Kv, LeaseId, Result, Rev, Store, StoreError};

/// How long one etcd request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to an etcd cluster.
pub struct EtcdStore {
    rt: Runtime,
    client: Client,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn err(e: etcd_client::Error) -> StoreError {
    // etcd says so in a status, or in the keep-alive stream's own error.
    if e.to_string().contains("lease not found") {
        return StoreError::LeaseGone(0);
    }
    match &e {
        etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable => unavailable(e),
        etcd_client::Error::GRpcStatus(_) => StoreError::Refused(e.to_string()),
        _ => unavailable(e),
    }
}

fn kv(k: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: k.value().to_vec(),
        create_rev: k.create_revision(),
        mod_rev: k.mod_revision(),
        lease: k.lease(),
    }
}

fn lease_opt(lease: LeaseId) -> Option<PutOptions> {
    (lease != 0).then(|| PutOptions::new().with_lease(lease))
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`).
    pub fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("coord-etcd")
            .enable_all()
            .build()
            .map_err(unavailable)?;
        let opts = ConnectOptions::new().with_connect_timeout(REQUEST_TIMEOUT).with_timeout(REQUEST_TIMEOUT);
        let client = rt.block_on(Client::connect(endpoints, Some(opts))).map_err(err)?;
        Ok(EtcdStore { rt, client })
    }

    fn run<T>(&self, f: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>) -> Result<T> {
        self.rt
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, f).await })
            .map_err(|_| unavailable("etcd did not answer in time"))?
            .map_err(err)
    }
}

impl Store for EtcdStore {
    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let mut c = self.client.clone();
        let secs = ttl.as_secs().max(1) as i64;
        Ok(self.run(async move { c.lease_grant(secs, None).await })?.id())
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut c = self.client.clone();
        let ttl = self.run(async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map_or(0, |r| r.ttl()))
        });
        match ttl {
            Ok(t) if t > 0 => Ok(()),
            Ok(_) | Err(StoreError::LeaseGone(_)) => Err(StoreError::LeaseGone(lease)),
            Err(e) => Err(e),
        }
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut c = self.client.clone();
        match self.run(async move { c.lease_revoke(lease).await }) {
            Ok(_) | Err(StoreError::LeaseGone(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Kv>> {
        let mut c = self.client.clone();
        let k = key.to_string();
        let r = self.run(async move { c.get(k, None).await })?;
        Ok(r.kvs().first().map(kv))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Kv>, Rev)> {
        let mut c = self.client.clone();
        let p = prefix.to_string();
        let r = self.run(async move { c.get(p, Some(GetOptions::new().with_prefix())).await })?;
        let rev = r.header().map_or(0, |h| h.revision());
        Ok((r.kvs().iter().map(kv).collect(), rev))
    }

    fn put(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<Rev> {
        let mut c = self.client.clone();
        let (k, v) = (key.to_string(), value.to_vec());
        let r = self.run(async move { c.put(k, v, lease_opt(lease)).await });
        match r {
            Ok(r) => Ok(r.header().map_or(0, |h| h.revision())),
            Err(StoreError::LeaseGone(_)) => Err(StoreError::LeaseGone(lease)),
            Err(e) => Err(e),
        }
    }

    fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<std::result::Result<Rev, Kv>> {
        let mut c = self.client.clone();
        let (k, v) = (key.to_string(), value.to_vec());
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), v, lease_opt(lease))])
            .or_else([TxnOp::get(k, None)]);
        let r = match self.run(async move { c.txn(txn).await }) {
            Err(StoreError::LeaseGone(_)) => return Err(StoreError::LeaseGone(lease)),
            r => r?,
        };
        if r.succeeded() {
            return Ok(Ok(r.header().map_or(0, |h| h.revision())));
        }
        for op in r.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(k) = g.kvs().first() {
                    return Ok(Err(kv(k)));
                }
            }
        }
        // Deleted between the compare and the get cannot happen in one txn;
        // an empty answer means etcd changed under us: say so.
        Err(StoreError::Refused("create: the key neither absent nor present".into()))
    }

    fn put_if(&self, key: &str, value: &[u8], lease: LeaseId, mod_rev: Rev) -> Result<bool> {
        let mut c = self.client.clone();
        let (k, v) = (key.to_string(), value.to_vec());
        let txn = Txn::new()
            .when([Compare::mod_revision(k.clone(), CompareOp::Equal, mod_rev)])
            .and_then([TxnOp::put(k, v, lease_opt(lease))]);
        match self.run(async move { c.txn(txn).await }) {
            Ok(r) => Ok(r.succeeded()),
            Err(StoreError::LeaseGone(_)) => Err(StoreError::LeaseGone(lease)),
            Err(e) => Err(e),
        }
    }

    fn put_guarded(&self, key: &str, value: &[u8], guard: &str, epoch: Rev) -> Result<bool> {
        let mut c = self.client.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(guard.to_string(), CompareOp::Equal, epoch)])
            .and_then([TxnOp::put(key.to_string(), value.to_vec(), None)]);
        Ok(self.run(async move { c.txn(txn).await })?.succeeded())
    }

    fn delete_guarded(&self, key: &str, guard: &str, epoch: Rev) -> Result<bool> {
        let mut c = self.client.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(guard.to_string(), CompareOp::Equal, epoch)])
            .and_then([TxnOp::delete(key.to_string(), None)]);
        Ok(self.run(async move { c.txn(txn).await })?.succeeded())
    }

    fn delete_if(&self, key: &str, mod_rev: Rev) -> Result<bool> {
        let mut c = self.client.clone();
        let k = key.to_string();
        let txn = Txn::new()
            .when([Compare::mod_revision(k.clone(), CompareOp::Equal, mod_rev)])
            .and_then([TxnOp::delete(k, None)]);
        Ok(self.run(async move { c.txn(txn).await })?.succeeded())
    }

    fn wait(&self, prefix: &str, after: Rev, timeout: Duration) -> Result<Option<Rev>> {
        let mut c = self.client.clone();
        let p = prefix.to_string();
        let opts = WatchOptions::new().with_prefix().with_start_revision(after + 1);
        self.rt.block_on(async move {
            let mut stream = c.watch(p, Some(opts)).await.map_err(err)?;
            let next = async {
                loop {
                    match stream.message().await {
                        Ok(Some(r)) => {
                            if let Some(e) = r.events().first() {
                                return Ok(e.kv().map_or(after + 1, |k| k.mod_revision()));
                            }
                            if r.canceled() {
                                // Compacted past `after`: something changed for sure.
                                return Ok(r.compact_revision().max(after + 1));
                            }
                        }
                        Ok(None) => return Err(unavailable("the watch ended")),
                        Err(e) => return Err(err(e)),
                    }
                }
            };
            match tokio::time::timeout(timeout, next).await {
                Ok(r) => r.map(Some),
                Err(_) => Ok(None),
            }
        })
    }
}
