//! The reconcile plan: a pure function from a TrainingRun and what was observed about it to
//! the actions that move the cluster toward it, and the status to report.
//!
//! ```text
//!   TrainingRun ─┐
//!   its pods ────┤                       ┌─► actions (create/delete pods, apply service and
//!   Cluster ─────┼──► plan() ──► Plan ───┤    pod group, force-delete, events, finalizer)
//!   queue ───────┤   (no I/O)            ├─► status (phase, conditions, progress)
//!   progress ────┤                       └─► requeue after
//!   now ─────────┘
//! ```
//!
//! [`lifecycle`] holds the transitions, [`capacity`] gang admission, [`observed`] the
//! reading of pods. The executor (`crate::execute`) applies a plan; nothing here talks to a
//! server, so every transition is tested with plain `#[test]`s (`tests`).

pub mod capacity;
pub mod lifecycle;
pub mod observed;
#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use tessera_api::{RunProgress, TrainingRunStatus};

use crate::build::pod_group::GangScheduler;

pub use capacity::{Cluster, GangDemand, NodeState, QueueState, QueuedRun, Readiness};
pub use lifecycle::plan;

/// Condition types a run's status carries.
pub mod condition {
    pub const ADMITTED: &str = "Admitted";
    pub const RUNNING: &str = "Running";
    pub const RESTARTING: &str = "Restarting";
    pub const SUSPENDED: &str = "Suspended";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
}

/// Everything observed about one run at one instant.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The run's worker pods, every generation.
    pub pods: Vec<&'a Pod>,
    /// Whether the run's headless Service exists.
    pub service_exists: bool,
    /// The `minMember` of the run's PodGroup, when one exists.
    pub pod_group_min_member: Option<u32>,
    pub cluster: &'a Cluster,
    /// The other runs competing for GPUs.
    pub queue: &'a [QueuedRun],
    /// The run's priority (from its PriorityClass; 0 without one).
    pub priority: i32,
    /// The newest progress its agents published.
    pub progress: Option<RunProgress>,
    pub now: Timestamp,
}

/// What to do about a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// The status to report; the executor writes it when it differs from the stored one.
    pub status: TrainingRunStatus,
    /// Plan again after this long even if nothing changes; `None` waits for a change.
    pub requeue_after: Option<Duration>,
}

/// One step the executor takes.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    AddFinalizer,
    /// Removes the finalizer, letting the API server delete the run.
    RemoveFinalizer,
    ApplyService(Box<Service>),
    /// The run's manifest, read by its agents (applied before any pod is created).
    ApplyManifest(Box<ConfigMap>),
    ApplyPodGroup {
        scheduler: GangScheduler,
        pod_group: Box<DynamicObject>,
    },
    CreatePod(Box<Pod>),
    /// Deletes a pod; `grace` overrides its termination grace period.
    DeletePod {
        name: String,
        grace: Option<Duration>,
    },
    /// Deletes a pod with no grace: its node is gone and will never confirm.
    ForceDeletePod {
        name: String,
    },
    /// Removes the run's keys from the coordination store.
    DeleteRunKeys,
    /// Deletes the TrainingRun itself (`ttlSecondsAfterFinished`).
    DeleteRun,
    Emit(RunEvent),
}

/// A Kubernetes Event about the run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunEvent {
    pub warning: bool,
    /// CamelCase, the same as the condition reason it reports.
    pub reason: String,
    pub note: String,
    /// What the operator did: `Admit`, `CreatePods`, `Restart`, `Suspend`...
    pub action: &'static str,
}
