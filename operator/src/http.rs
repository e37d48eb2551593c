//! The operator's HTTP endpoints: `/healthz` (the process serves), `/readyz` (standby, or
//! leading with synced watches), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::replica::Health;

#[derive(Clone)]
struct Endpoints {
    metrics: Metrics,
    health: Arc<Health>,
}

/// The router serving the three endpoints.
pub fn router(metrics: Metrics, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Endpoints { metrics, health })
}

async fn readyz(State(endpoints): State<Endpoints>) -> (StatusCode, &'static str) {
    if endpoints.health.is_standby() {
        (StatusCode::OK, "standby: waiting for the leader lease")
    } else if endpoints.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "watches have not synced yet",
        )
    }
}

async fn metrics_text(State(endpoints): State<Endpoints>) -> String {
    endpoints.metrics.render()
}

/// Binds `addr` (an error names it), then serves until `shutdown` is cancelled.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
