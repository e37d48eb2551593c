//! Leader election with a `coordination.k8s.io/v1` Lease, so two replicas never both write.
//!
//! ```text
//! acquire: get lease ─► absent: create it (holder = me)
//!                    ├► held by me: renew (replace with my resourceVersion)
//!                    ├► held by another, unchanged for leaseDuration (my clock): take it
//!                    └► otherwise: wait retry_period and look again
//! keep:    renew every retry_period; a 409 or another holder means lost; no successful
//!          renew for renew_deadline means lost (stop writing before another can take over)
//! release: on graceful shutdown, clear the holder so another replica takes over at once
//! ```
//!
//! Expiry is judged by when *this* replica last saw the lease change, not by the renew time
//! written in it, so clock skew between replicas does not matter (as client-go does).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

use crate::error::is_not_found;

/// Timings of the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a lease not renewed stays with its holder.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops leading.
    pub renew_deadline: Duration,
    /// How often to renew, or to try to acquire.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What this replica last saw of the lease, and when.
#[derive(Clone, Debug, PartialEq)]
struct ObservedRecord {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    transitions: Option<i32>,
}

/// One replica's side of the election.
pub struct LeaderElector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    observed: Mutex<Option<(ObservedRecord, Instant)>>,
}

impl LeaderElector {
    pub fn new(leases: Api<Lease>, name: &str, identity: &str, timings: LeaseTimings) -> Self {
        LeaderElector {
            leases,
            name: name.to_string(),
            identity: identity.to_string(),
            timings,
            observed: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, lease = %self.name, "became the leader");
                    return;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "could not read or write the leader lease"),
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
    }

    /// Renews the lease until it is lost; returns then. The caller must stop writing.
    pub async fn keep(&self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    tracing::warn!(identity = %self.identity, "another replica holds the leader lease");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not renew the leader lease");
                    if last_renewed.elapsed() >= self.timings.renew_deadline {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up (graceful shutdown), so another replica need not wait it out.
    pub async fn release(&self) {
        let Ok(mut lease) = self.leases.get(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(error) = self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(%error, "could not release the leader lease");
        }
    }

    /// One round: takes or renews the lease if it may; returns whether this replica holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = match self.leases.get(&self.name).await {
            Ok(lease) => lease,
            Err(e) if is_not_found(&e) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, now, 0)),
                };
                return match self.leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let spec = current.spec.clone().unwrap_or_default();
        let record = ObservedRecord {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions,
        };
        let held_by_me = record.holder.as_deref() == Some(self.identity.as_str());
        let expired = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let seen_at = match observed.as_ref() {
                Some((seen, at)) if *seen == record => *at,
                _ => {
                    *observed = Some((record.clone(), Instant::now()));
                    Instant::now()
                }
            };
            let duration = spec
                .lease_duration_seconds
                .map_or(self.timings.lease_duration, |s| {
                    Duration::from_secs(u64::try_from(s).unwrap_or(0))
                });
            record.holder.is_none() || seen_at.elapsed() >= duration
        };
        if !held_by_me && !expired {
            return Ok(false);
        }
        let (acquired, transitions) = if held_by_me {
            (
                spec.acquire_time.map_or(now, |t| t.0),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (now, spec.lease_transitions.unwrap_or(0) + 1)
        };
        let mut updated = current;
        updated.spec = Some(self.spec(acquired, now, transitions));
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}
