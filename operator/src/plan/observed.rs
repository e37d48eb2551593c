//! What the planner reads about a run's worker pods: which gang and rank each belongs to, and
//! what state it is in, reduced from the many fields of a Pod to the few that decide.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::names;

/// The state of one worker pod, as far as the gang is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum PodState {
    /// Created, not yet running (unscheduled, pulling its image, starting).
    Pending,
    Running,
    Succeeded,
    /// Exited with an error; `detail` says how (exit code, reason).
    Failed {
        detail: String,
    },
    /// Evicted or preempted by the cluster: not the run's fault.
    Disrupted {
        reason: String,
    },
    /// Being deleted since `requested` (its deletion timestamp less its grace period).
    Terminating {
        requested: Option<Timestamp>,
    },
}

impl PodState {
    /// Whether the pod may still be using its node and GPUs and has not been asked to stop.
    pub fn holds_node(&self) -> bool {
        matches!(
            self,
            PodState::Pending | PodState::Running | PodState::Disrupted { .. }
        )
    }

    /// Whether the pod is still holding its node (not finished and not on its way out).
    pub fn is_live(&self) -> bool {
        matches!(self, PodState::Pending | PodState::Running)
    }
}

/// One worker pod of the run, as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Worker {
    pub name: String,
    /// The gang generation from the pod's label; `None` for a pod without one.
    pub generation: Option<u64>,
    pub node_rank: Option<u32>,
    /// The node the pod is bound to, if scheduled.
    pub node: Option<String>,
    pub state: PodState,
}

impl Worker {
    pub fn observe(pod: &Pod) -> Worker {
        let labels = pod.metadata.labels.as_ref();
        let label = |key: &str| labels.and_then(|l| l.get(key));
        Worker {
            name: pod.metadata.name.clone().unwrap_or_default(),
            generation: label(names::LABEL_GENERATION).and_then(|v| v.parse().ok()),
            node_rank: label(names::LABEL_NODE_RANK).and_then(|v| v.parse().ok()),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            state: pod_state(pod),
        }
    }
}

/// Reduces a pod's status to a [`PodState`]. Disruption wins over deletion: a preempted pod is
/// deleted by the scheduler, and it is the preemption that the run must react to.
pub fn pod_state(pod: &Pod) -> PodState {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let disruption = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        })
        .map(|c| c.reason.clone().unwrap_or_else(|| "Disrupted".to_string()));
    let status_reason = status.and_then(|s| s.reason.clone());
    if phase != "Succeeded" {
        if let Some(reason) = disruption {
            return PodState::Disrupted { reason };
        }
        if let Some(reason @ ("Evicted" | "Preempting" | "Preempted")) = status_reason.as_deref() {
            return PodState::Disrupted {
                reason: reason.to_string(),
            };
        }
    }
    if let Some(deleted) = &pod.metadata.deletion_timestamp
        && phase != "Succeeded"
        && phase != "Failed"
    {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(0)
            .max(0);
        return PodState::Terminating {
            requested: deleted.0.checked_sub(SignedDuration::from_secs(grace)).ok(),
        };
    }
    match phase {
        "Running" => PodState::Running,
        "Succeeded" => PodState::Succeeded,
        "Failed" => PodState::Failed {
            detail: failure_detail(pod),
        },
        _ => PodState::Pending,
    }
}

/// How a failed pod failed: the agent container's exit code and reason, else the pod's.
fn failure_detail(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref());
    if let Some(t) = terminated {
        let mut detail = format!("exited with code {}", t.exit_code);
        if let Some(reason) = &t.reason {
            detail.push_str(&format!(" ({reason})"));
        }
        if let Some(message) = t.message.as_deref().filter(|m| !m.is_empty()) {
            detail.push_str(&format!(": {}", message.trim()));
        }
        return detail;
    }
    match (
        status.and_then(|s| s.reason.as_deref()),
        status.and_then(|s| s.message.as_deref()),
    ) {
        (Some(reason), Some(message)) => format!("failed ({reason}): {message}"),
        (Some(reason), None) => format!("failed ({reason})"),
        (None, Some(message)) => format!("failed: {message}"),
        (None, None) => "failed".to_string(),
    }
}
