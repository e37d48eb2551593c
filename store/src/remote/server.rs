//! Serving a store over gRPC on a TCP listener: [`serve`] and the [`ServerHandle`] that stops it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::convert::{error_to_status, event_to_pb, kv_to_pb, lease_from_pb, txn_from_pb};
use super::pb;
use super::pb::store_server::StoreServer;
use crate::error::StoreError;
use crate::kv::WatchStream;
use crate::store::Store;

/// How long [`ServerHandle::shutdown`] lets calls in flight finish before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `store` on `listener` (bind it to a loopback address: the protocol has no
/// authentication) until the returned handle is shut down or dropped. Must be called within a
/// tokio runtime.
pub fn serve(store: Arc<dyn Store>, listener: TcpListener) -> Result<ServerHandle, StoreError> {
    let addr = listener.local_addr().map_err(|e| {
        StoreError::InvalidRequest(format!(
            "the listener to serve the store on is unusable: {e}"
        ))
    })?;
    let (stop, stopped) = watch::channel(false);
    let service = StoreServer::new(Service {
        store,
        stopped: stopped.clone(),
    });
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut signal = stopped;
    let task = tokio::spawn(async move {
        let shutdown = async move { stopping(&mut signal).await };
        let served = Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = served {
            tracing::warn!("the store server on {addr} stopped: {e}");
        }
    });
    Ok(ServerHandle {
        addr,
        stop,
        task: Some(task),
    })
}

/// A running store server. Dropping it stops the server (open watches end; clients then get
/// "unavailable" errors); [`ServerHandle::shutdown`] does the same and waits for it.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Where the store is served; clients connect to `tessera://{addr}`.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint string [`crate::connect`] takes to reach this server.
    pub fn endpoint(&self) -> String {
        format!("tessera://{}", self.addr)
    }

    /// Stops serving and waits (a few seconds at most) for calls in flight to finish.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The gRPC service over a store.
struct Service {
    store: Arc<dyn Store>,
    /// Turns true when the server stops, ending the watches it serves.
    stopped: watch::Receiver<bool>,
}

fn answer<T, U>(
    result: Result<T, StoreError>,
    f: impl FnOnce(T) -> U,
) -> Result<Response<U>, Status> {
    result.map(|v| Response::new(f(v))).map_err(error_to_status)
}

#[tonic::async_trait]
impl pb::store_server::Store for Service {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        if req.prefix {
            answer(self.store.range(&req.key).await, |r| pb::RangeResponse {
                kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
                revision: r.revision,
            })
        } else {
            // A single key: its revision is not needed by the client.
            answer(self.store.get(&req.key).await, |kv| pb::RangeResponse {
                kvs: kv.into_iter().map(kv_to_pb).collect(),
                revision: 0,
            })
        }
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let req = request.into_inner();
        let put = self
            .store
            .put(&req.key, req.value, lease_from_pb(req.lease));
        answer(put.await, |revision| pb::PutResponse { revision })
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = request.into_inner();
        let deleted = if req.prefix {
            self.store.delete_prefix(&req.key).await
        } else {
            self.store.delete(&req.key).await.map(u64::from)
        };
        answer(deleted, |deleted| pb::DeleteResponse {
            deleted,
            revision: 0,
        })
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let txn = txn_from_pb(request.into_inner()).map_err(error_to_status)?;
        answer(self.store.txn(txn).await, |o| pb::TxnResponse {
            succeeded: o.succeeded,
            revision: o.revision,
        })
    }

    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let secs = request.into_inner().ttl_seconds;
        let ttl = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        answer(self.store.grant_lease(ttl).await, |lease| {
            pb::LeaseGrantResponse {
                lease: lease.0,
                ttl_seconds: secs,
            }
        })
    }

    async fn lease_keep_alive(
        &self,
        request: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let lease = crate::kv::LeaseId(request.into_inner().lease);
        answer(self.store.keep_alive(lease).await, |ttl| {
            pb::LeaseKeepAliveResponse {
                ttl_seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            }
        })
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let lease = crate::kv::LeaseId(request.into_inner().lease);
        answer(self.store.revoke_lease(lease).await, |()| {
            pb::LeaseRevokeResponse {}
        })
    }

    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let start = (req.start_revision != 0).then_some(req.start_revision);
        let events = self
            .store
            .watch_prefix(&req.prefix, start)
            .await
            .map_err(error_to_status)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(forward(events, tx, self.stopped.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends a watch's events to its client until the client goes, the watch ends or the server
/// stops.
async fn forward(
    mut events: WatchStream,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopping(&mut stopped) => return,
            _ = tx.closed() => return,
            item = events.next() => match item {
                Some(Ok(event)) => {
                    if tx.send(Ok(event_to_pb(event))).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(error_to_status(e))).await;
                    return;
                }
                None => return,
            },
        }
    }
}

/// Resolves when the server is told to stop (or its handle is gone).
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    while !*stopped.borrow_and_update() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}
