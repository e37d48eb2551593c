//! `RemoteStore`: the `Store` trait over gRPC, against a store served by [`super::serve`].
//!
//! Watches are not resumed by this client: when the server goes away a watch yields an
//! "unavailable" error and ends; the caller watches again (from the revision after the last
//! event it saw) once the server is back.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use super::convert::{event_from_pb, kv_from_pb, lease_to_pb, status_to_error, txn_to_pb};
use super::pb;
use super::pb::store_client::StoreClient;
use crate::backoff::Backoff;
use crate::error::StoreError;
use crate::kv::{KeyValue, LeaseId, Range, Txn, TxnOutcome, WatchStream, end_after_error};
use crate::store::{Store, check_key, check_start_revision, check_txn, ttl_seconds};

/// How long one call may take before it fails with [`StoreError::Timeout`].
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of a served embedded store (`tessera://host:port`).
#[derive(Clone)]
pub struct RemoteStore {
    client: StoreClient<Channel>,
    target: String,
}

impl RemoteStore {
    /// Connects to the store served at `addr` (`host:port`), retrying with exponential backoff
    /// (each retry logged) until `timeout` has passed.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<RemoteStore, StoreError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| StoreError::BadEndpoint {
                endpoint: format!("tessera://{addr}"),
                reason: format!("{addr:?} is not a host:port ({e})"),
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let target = format!("the Tessera store at {addr}");
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let last_error = match endpoint.connect().await {
                Ok(channel) => {
                    let store = RemoteStore {
                        client: StoreClient::new(channel),
                        target: target.clone(),
                    };
                    // A call proves the server speaks this protocol.
                    match store.get("/tessera/.probe").await {
                        Ok(_) => return Ok(store),
                        Err(e) if e.is_transient() => e.to_string(),
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => format!("{e}: {}", source_chain(&e)),
            };
            let waited = started.elapsed();
            let delay = backoff.next_delay();
            if waited + delay > timeout {
                return Err(StoreError::Unreachable {
                    target,
                    waited,
                    hint: "is the `tessera run` serving it still running? (--store tessera://host:port)"
                        .to_string(),
                    last_error,
                });
            }
            tracing::warn!(
                "cannot reach {target} yet ({last_error}); retrying in {delay:?} (giving up after {timeout:?})"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Runs one call with the call timeout, turning a failed status into a `StoreError`.
    async fn call<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status_to_error(status, &self.target, operation)),
            Err(_) => Err(StoreError::Timeout {
                target: self.target.clone(),
                operation,
                after: CALL_TIMEOUT,
            }),
        }
    }
}

/// The causes under a transport error, whose own message is often just "transport error".
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    causes.join(": ")
}

#[async_trait]
impl Store for RemoteStore {
    fn target(&self) -> String {
        self.target.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        check_key(key)?;
        let req = pb::RangeRequest {
            key: key.to_string(),
            prefix: false,
        };
        let resp = self.call("get", self.client.clone().range(req)).await?;
        Ok(resp.kvs.into_iter().next().map(kv_from_pb))
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let req = pb::RangeRequest {
            key: prefix.to_string(),
            prefix: true,
        };
        let resp = self.call("range", self.client.clone().range(req)).await?;
        Ok(Range {
            kvs: resp.kvs.into_iter().map(kv_from_pb).collect(),
            revision: resp.revision,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, StoreError> {
        check_key(key)?;
        let req = pb::PutRequest {
            key: key.to_string(),
            value,
            lease: lease_to_pb(lease),
        };
        Ok(self
            .call("put", self.client.clone().put(req))
            .await?
            .revision)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let req = pb::DeleteRequest {
            key: key.to_string(),
            prefix: false,
        };
        Ok(self
            .call("delete", self.client.clone().delete(req))
            .await?
            .deleted
            > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let req = pb::DeleteRequest {
            key: prefix.to_string(),
            prefix: true,
        };
        Ok(self
            .call("delete", self.client.clone().delete(req))
            .await?
            .deleted)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        check_txn(&txn)?;
        let resp = self
            .call("txn", self.client.clone().txn(txn_to_pb(txn)))
            .await?;
        Ok(TxnOutcome {
            succeeded: resp.succeeded,
            revision: resp.revision,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let req = pb::LeaseGrantRequest {
            ttl_seconds: ttl_seconds(ttl)?,
        };
        let resp = self
            .call("lease grant", self.client.clone().lease_grant(req))
            .await?;
        Ok(LeaseId(resp.lease))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let req = pb::LeaseKeepAliveRequest { lease: lease.0 };
        let resp = self
            .call(
                "lease keep-alive",
                self.client.clone().lease_keep_alive(req),
            )
            .await?;
        Ok(Duration::from_secs(resp.ttl_seconds.unsigned_abs()))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let req = pb::LeaseRevokeRequest { lease: lease.0 };
        self.call("lease revoke", self.client.clone().lease_revoke(req))
            .await?;
        Ok(())
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: Option<i64>,
    ) -> Result<WatchStream, StoreError> {
        check_start_revision(start_revision)?;
        let req = pb::WatchRequest {
            prefix: prefix.to_string(),
            start_revision: start_revision.unwrap_or(0),
        };
        let stream = self.call("watch", self.client.clone().watch(req)).await?;
        let target = self.target.clone();
        let events = stream.map(move |item| match item {
            Ok(msg) => event_from_pb(msg).map_err(|message| StoreError::Protocol {
                target: target.clone(),
                operation: "watch",
                expected: "Tessera store (tessera://)",
                message,
            }),
            Err(status) => Err(status_to_error(status, &target, "watch")),
        });
        Ok(end_after_error(events))
    }
}
