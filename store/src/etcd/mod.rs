//! `EtcdStore`: the `Store` trait over etcd (etcd-client), the engine for runs that span
//! machines.
//!
//! Surviving an etcd restart: every call has a timeout and fails with a transient
//! [`StoreError`] (`Unavailable`/`Timeout`, see [`StoreError::is_transient`]) while etcd is down;
//! the connection is re-established underneath, so the same call succeeds once etcd is back.
//! Watches are re-established by the store itself from the revision after the last event
//! delivered, so a restart loses no event; only if etcd stays away longer than the reconnect
//! timeout (the one given to [`EtcdStore::connect`]) does the watch yield the transient error and
//! end, and the caller watches again. Leases survive a restart (etcd persists them and renews
//! them when it elects itself leader again) as long as their keeper keeps retrying.

mod errors;
mod watch;

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, GetOptions,
    PutOptions, Txn as EtcdTxn, TxnOp as EtcdTxnOp,
};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::StoreError;
use crate::kv::{Compare, KeyValue, LeaseId, Range, Txn, TxnOp, TxnOutcome, WatchStream};
use crate::store::{Store, check_key, check_start_revision, check_txn, ttl_seconds};
use errors::from_etcd;

/// How long one call may take before it fails with [`StoreError::Timeout`].
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of an etcd cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    target: String,
    /// How long a broken watch keeps trying to re-open before it gives up.
    reconnect_timeout: Duration,
    /// How many members the client was given.
    members: usize,
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`host:port` each), retrying with exponential backoff
    /// (each retry logged with `tracing::warn!`) until `timeout` has passed, then failing with
    /// [`StoreError::Unreachable`].
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<EtcdStore, StoreError> {
        let target = format!("etcd at {}", endpoints.join(","));
        if endpoints.is_empty() {
            return Err(StoreError::BadEndpoint {
                endpoint: "etcd://".to_string(),
                reason: "no etcd endpoint given".to_string(),
            });
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let last_error = match Client::connect(endpoints, Some(options.clone())).await {
                Ok(client) => {
                    let store = EtcdStore {
                        client,
                        target: target.clone(),
                        reconnect_timeout: timeout.max(Duration::from_secs(1)),
                        members: endpoints.len(),
                    };
                    // Connecting is lazy: a call proves etcd answers.
                    match store.get("/tessera/.probe").await {
                        Ok(_) => return Ok(store),
                        Err(e) if e.is_transient() => e.to_string(),
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => match from_etcd(e, &target, "connect", None) {
                    e if e.is_transient() => e.to_string(),
                    e => return Err(e),
                },
            };
            let waited = started.elapsed();
            let delay = backoff.next_delay();
            if waited + delay > timeout {
                return Err(StoreError::Unreachable {
                    target,
                    waited,
                    hint: "is etcd running? (--store etcd://host:port)".to_string(),
                    last_error,
                });
            }
            tracing::warn!(
                "cannot reach {target} yet ({last_error}); retrying in {delay:?} (giving up after {timeout:?})"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Runs one etcd call with the call timeout, mapping its error. A try that never reached
    /// a member (the connection to the endpoint the client picked was refused: a member is
    /// down) is made again at once, so the client's balancer moves on to another endpoint;
    /// nothing was sent, so even a transaction is safe to repeat. Twice as many tries as there
    /// are members, then the error is the caller's (every member refused).
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        lease: Option<LeaseId>,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let tries = async {
            let mut delay = Duration::from_millis(5);
            let mut left = 2 * self.members;
            loop {
                left = left.saturating_sub(1);
                match attempt().await {
                    Err(e) if never_sent(&e) && left > 0 => {
                        tracing::debug!(
                            "{operation} on {}: {e}; trying another member",
                            self.target
                        );
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(200));
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, tries).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(from_etcd(e, &self.target, operation, lease)),
            Err(_) => Err(StoreError::Timeout {
                target: self.target.clone(),
                operation,
                after: CALL_TIMEOUT,
            }),
        }
    }
}

/// Whether a call failed before anything reached etcd: the connection was refused.
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = match e {
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        etcd_client::Error::TransportError(e) => format!("{e:?}"),
        _ => return false,
    };
    text.contains("tcp connect error") || text.contains("Connection refused")
}

/// The revision in a response header (0 if etcd sent none).
fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

pub(crate) fn kv_from_etcd(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    }
}

fn compare_to_etcd(c: Compare) -> EtcdCompare {
    match c {
        Compare::ValueEquals { key, value } => EtcdCompare::value(key, CompareOp::Equal, value),
        Compare::ModRevisionEquals { key, revision } => {
            EtcdCompare::mod_revision(key, CompareOp::Equal, revision)
        }
        Compare::CreateRevisionEquals { key, revision } => {
            EtcdCompare::create_revision(key, CompareOp::Equal, revision)
        }
    }
}

fn op_to_etcd(op: TxnOp) -> EtcdTxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            let options = lease.map(|l| PutOptions::new().with_lease(l.0));
            EtcdTxnOp::put(key, value, options)
        }
        TxnOp::Delete { key } => EtcdTxnOp::delete(key, None),
        TxnOp::DeletePrefix { prefix } => {
            EtcdTxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()))
        }
    }
}

/// The lease a transaction's puts name, so a "lease not found" answer can name it.
fn txn_lease(txn: &Txn) -> Option<LeaseId> {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            TxnOp::Put { lease, .. } => *lease,
            _ => None,
        })
}

#[async_trait]
impl Store for EtcdStore {
    fn target(&self) -> String {
        self.target.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        check_key(key)?;
        let resp = self
            .call("get", None, || {
                let mut kv = self.client.kv_client();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(kv_from_etcd))
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let resp = self
            .call("range", None, || {
                let mut kv = self.client.kv_client();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        // etcd answers in key order.
        Ok(Range {
            kvs: resp.kvs().iter().map(kv_from_etcd).collect(),
            revision: header_revision(resp.header()),
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, StoreError> {
        check_key(key)?;
        let resp = self
            .call("put", lease, || {
                let mut kv = self.client.kv_client();
                let options = lease.map(|l| PutOptions::new().with_lease(l.0));
                let value = value.clone();
                async move { kv.put(key, value, options).await }
            })
            .await?;
        Ok(header_revision(resp.header()))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let resp = self
            .call("delete", None, || {
                let mut kv = self.client.kv_client();
                async move { kv.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let resp = self
            .call("delete", None, || {
                let mut kv = self.client.kv_client();
                async move {
                    kv.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        Ok(resp.deleted().unsigned_abs())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        check_txn(&txn)?;
        let lease = txn_lease(&txn);
        let etcd_txn = EtcdTxn::new()
            .when(
                txn.compares
                    .into_iter()
                    .map(compare_to_etcd)
                    .collect::<Vec<_>>(),
            )
            .and_then(txn.success.into_iter().map(op_to_etcd).collect::<Vec<_>>())
            .or_else(txn.failure.into_iter().map(op_to_etcd).collect::<Vec<_>>());
        let resp = self
            .call("txn", lease, || {
                let mut kv = self.client.kv_client();
                let etcd_txn = etcd_txn.clone();
                async move { kv.txn(etcd_txn).await }
            })
            .await?;
        Ok(TxnOutcome {
            succeeded: resp.succeeded(),
            revision: header_revision(resp.header()),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl_seconds(ttl)?;
        let resp = self
            .call("lease grant", None, || {
                let mut leases = self.client.lease_client();
                async move { leases.grant(secs, None).await }
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Refused {
                target: self.target.clone(),
                operation: "lease grant",
                message: resp.error().to_string(),
            });
        }
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        // One round trip on a keep-alive stream refreshes the lease (and fails when it is gone).
        self.call("lease keep-alive", Some(lease), || {
            let mut leases = self.client.lease_client();
            async move { leases.keep_alive(lease.0).await }
        })
        .await?;
        let resp = self
            .call("lease keep-alive", Some(lease), || {
                let mut leases = self.client.lease_client();
                async move { leases.time_to_live(lease.0, None).await }
            })
            .await?;
        // etcd answers -1 for a lease that is gone; 0 only means "under a second left".
        if resp.ttl() < 0 {
            return Err(StoreError::LeaseExpired(lease));
        }
        Ok(Duration::from_secs(resp.granted_ttl().unsigned_abs()))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.call("lease revoke", Some(lease), || {
            let mut leases = self.client.lease_client();
            async move { leases.revoke(lease.0).await }
        })
        .await?;
        Ok(())
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: Option<i64>,
    ) -> Result<WatchStream, StoreError> {
        check_start_revision(start_revision)?;
        watch::open(self.clone(), prefix.to_string(), start_revision).await
    }
}
