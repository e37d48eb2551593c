//! One operator replica, start to finish: wait for the leader lease (when election is on),
//! run the controller while leading, stop on shutdown or when the lease is lost.
//!
//! ```text
//!  start ─► standby (ready, not writing) ─► lease acquired ─► controller (ready once synced)
//!                                                 │ lease lost ─► Err(LeaseLost): exit, restart
//!                                                 │ shutdown   ─► drain reconciles, release lease
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::controller::{ControllerSettings, run_controller};
use crate::leader::{LeaderElector, LeaseTimings};
use crate::metrics::Metrics;
use crate::progress::StoreProgress;

/// Where the leader lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaderElectionSettings {
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub timings: LeaseTimings,
}

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Health {
    /// Following the lease as a standby replica.
    standby: AtomicBool,
    /// Leading (or election off) with every watch synced.
    synced: CancellationToken,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Ready: a standby waiting for the lease, or a leader whose watches have synced.
    pub fn is_ready(&self) -> bool {
        self.standby.load(Ordering::SeqCst) || self.synced.is_cancelled()
    }

    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::SeqCst)
    }

    /// Resolves once the controller's watches have synced.
    pub async fn synced(&self) {
        self.synced.cancelled().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("lost the leader lease; stopping so that only one replica writes (the pod restarts)")]
    LeaseLost,
}

/// A task that ends with its owner: if the replica is aborted (its process killed), the
/// lease renewals stop too, as they would with the process.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the replica until `shutdown` is cancelled or the lease is lost.
pub async fn run_replica(
    client: Client,
    settings: ControllerSettings,
    election: Option<LeaderElectionSettings>,
    progress: StoreProgress,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), ReplicaError> {
    let elector = election.map(|e| {
        Arc::new(LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &e.lease_namespace),
            &e.lease_name,
            &e.identity,
            e.timings,
        ))
    });
    let stop = shutdown.child_token();
    let lost = CancellationToken::new();
    let mut keeper = None;
    if let Some(elector) = &elector {
        health.standby.store(true, Ordering::SeqCst);
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown.cancelled() => {
                health.standby.store(false, Ordering::SeqCst);
                return Ok(());
            }
        }
        health.standby.store(false, Ordering::SeqCst);
        metrics.set_leader(true);
        let (elector, stop, lost) = (elector.clone(), stop.clone(), lost.clone());
        keeper = Some(AbortOnDrop(tokio::spawn(async move {
            elector.keep().await;
            lost.cancel();
            stop.cancel();
        })));
    }
    run_controller(
        client,
        settings,
        progress,
        metrics.clone(),
        health.synced.clone(),
        stop,
    )
    .await;
    drop(keeper);
    metrics.set_leader(false);
    if lost.is_cancelled() {
        return Err(ReplicaError::LeaseLost);
    }
    if let Some(elector) = elector {
        elector.release().await;
    }
    Ok(())
}
