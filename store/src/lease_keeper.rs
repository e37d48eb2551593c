//! `LeaseKeeper`: grants a lease and refreshes it every ttl/3 in a background task, telling its
//! owner (a `tokio::sync::watch` channel) when the lease is in doubt or lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::StoreError;
use crate::kv::LeaseId;
use crate::store::{Store, ttl_seconds};

/// What a keeper knows about its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStatus {
    /// The last refresh succeeded.
    Alive,
    /// The last refresh failed with a transient error (the store is unreachable or restarting);
    /// the keeper keeps retrying, and the lease may well still be alive in the store (etcd keeps
    /// leases across its restarts).
    Unconfirmed(StoreError),
    /// The store says the lease is gone (it expired or was revoked): its keys are deleted. The
    /// keeper has stopped; grant a new lease to take part again.
    Lost(StoreError),
}

/// What the owner and the refresh task share: when the store last confirmed the lease, and
/// its status. Either side records a confirmation the same way ([`Confirmation::confirmed`]).
struct Confirmation {
    /// When the confirming request was sent (the lease surely lives `ttl` past it).
    at: Mutex<Instant>,
    status: watch::Sender<LeaseStatus>,
}

impl Confirmation {
    /// The store confirmed the lease in answer to a request sent at `asked`.
    fn confirmed(&self, asked: Instant) {
        if let Ok(mut at) = self.at.lock() {
            *at = (*at).max(asked);
        }
        self.status.send_if_modified(|s| {
            let changed = matches!(s, LeaseStatus::Unconfirmed(_));
            if changed {
                *s = LeaseStatus::Alive;
            }
            changed
        });
    }
}

/// Marks the lease lost when the refresh task ends for any reason (aborted, or a panic), so
/// an owner waiting in [`LeaseKeeper::lost`] never waits on a lease nobody refreshes.
struct LostOnExit(Arc<Confirmation>, LeaseId);

impl Drop for LostOnExit {
    fn drop(&mut self) {
        let lease = self.1;
        self.0.status.send_if_modified(|s| {
            let changed = !matches!(s, LeaseStatus::Lost(_));
            if changed {
                *s = LeaseStatus::Lost(StoreError::LeaseExpired(lease));
            }
            changed
        });
    }
}

/// A lease kept alive in the background. Dropping the keeper stops the refreshes (the lease then
/// expires after its TTL, as if the owner had crashed); [`LeaseKeeper::revoke`] ends it at once.
pub struct LeaseKeeper {
    store: Arc<dyn Store>,
    lease: LeaseId,
    ttl: Duration,
    status: watch::Receiver<LeaseStatus>,
    confirmation: Arc<Confirmation>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Grants a lease of `ttl` (whole seconds, rounded up) and starts refreshing it.
    pub async fn start(store: Arc<dyn Store>, ttl: Duration) -> Result<LeaseKeeper, StoreError> {
        let ttl = Duration::from_secs(ttl_seconds(ttl)?.unsigned_abs());
        let asked = Instant::now();
        let lease = store.grant_lease(ttl).await?;
        let (tx, status) = watch::channel(LeaseStatus::Alive);
        let confirmation = Arc::new(Confirmation {
            at: Mutex::new(asked),
            status: tx,
        });
        let task = tokio::spawn(refresh(
            store.clone(),
            lease,
            ttl,
            LostOnExit(confirmation.clone(), lease),
        ));
        Ok(LeaseKeeper {
            store,
            lease,
            ttl,
            status,
            confirmation,
            task,
        })
    }

    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long ago the store last confirmed the lease: measured from when the confirming
    /// request was sent, so the lease surely lives until `ttl` after that. Past `ttl` the lease
    /// may have expired in the store and the gang may have moved on without this owner.
    pub fn unconfirmed_for(&self) -> Duration {
        self.confirmation
            .at
            .lock()
            .map_or(Duration::MAX, |at| at.elapsed())
    }

    /// Refreshes the lease now (not waiting for the next period): after a store outage, this
    /// is how an owner learns at once whether its lease survived.
    pub async fn confirm(&self) -> Result<(), StoreError> {
        let asked = Instant::now();
        self.store.keep_alive(self.lease).await?;
        self.confirmation.confirmed(asked);
        Ok(())
    }

    /// The lease's status, updated as refreshes succeed or fail.
    pub fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Waits until the lease is lost; returns why.
    pub async fn lost(&self) -> StoreError {
        let mut status = self.status.clone();
        loop {
            if let LeaseStatus::Lost(e) = &*status.borrow_and_update() {
                return e.clone();
            }
            // The refresh task marks the lease lost however it ends (`LostOnExit`).
            if status.changed().await.is_err() {
                return StoreError::LeaseExpired(self.lease);
            }
        }
    }

    /// Stops refreshing and revokes the lease, deleting its keys now.
    pub async fn revoke(self) -> Result<(), StoreError> {
        self.task.abort();
        match self.store.revoke_lease(self.lease).await {
            Ok(()) | Err(StoreError::LeaseExpired(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Refreshes every ttl/3; after a transient failure retries sooner, every ttl/10.
async fn refresh(store: Arc<dyn Store>, lease: LeaseId, ttl: Duration, shared: LostOnExit) {
    let confirmation = shared.0.clone();
    let status = &confirmation.status;
    let period = ttl / 3;
    let retry = (ttl / 10).max(Duration::from_millis(50));
    // A refresh that takes longer than this is given up and tried again (a store without
    // quorum holds a request for long; a fresh try reaches it as soon as it answers again).
    let patience = period.max(Duration::from_millis(500));
    let mut delay = period;
    loop {
        tokio::time::sleep(delay).await;
        let asked = Instant::now();
        let refreshed = match tokio::time::timeout(patience, store.keep_alive(lease)).await {
            Ok(refreshed) => refreshed,
            Err(_) => Err(StoreError::Timeout {
                target: store.target(),
                operation: "lease keep-alive",
                after: patience,
            }),
        };
        match refreshed {
            Ok(_) => {
                confirmation.confirmed(asked);
                delay = period;
            }
            Err(e) if e.is_transient() => {
                // Said once per outage; the owner watches the status for the rest.
                if *status.borrow() == LeaseStatus::Alive {
                    tracing::warn!("cannot refresh lease {lease}: {e}; retrying");
                }
                status.send_replace(LeaseStatus::Unconfirmed(e));
                delay = retry;
            }
            Err(e) => {
                tracing::warn!("lease {lease} is lost: {e}");
                status.send_replace(LeaseStatus::Lost(e));
                return;
            }
        }
    }
}
