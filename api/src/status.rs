//! The TrainingRun status: what the operator (or `tessera run`) reports back about a run.
//!
//! Conditions follow the Kubernetes API conventions: one entry per `type`, with `status`,
//! a CamelCase `reason`, a human `message`, `lastTransitionTime` and `observedGeneration`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingRunStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The generation of the running gang: bumped on every coordinated restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    #[serde(default)]
    pub restarts: u32,
    /// Nodes in the current gang: `spec.parallelism.nodes`, or fewer after an elastic shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointRef>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

impl TrainingRunStatus {
    /// The condition of this type, if the status carries one.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of this type is present with status `True`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_)
            .is_some_and(|c| c.status == ConditionStatus::True)
    }

    /// Sets a condition, keeping its `lastTransitionTime` unless its status changes (the
    /// Kubernetes convention). Returns whether the status changed.
    pub fn set_condition(&mut self, update: Condition) -> bool {
        match self.conditions.iter_mut().find(|c| c.type_ == update.type_) {
            Some(existing) => {
                let transitioned = existing.status != update.status;
                let time = if transitioned {
                    update.last_transition_time
                } else {
                    std::mem::take(&mut existing.last_transition_time)
                };
                *existing = Condition {
                    last_transition_time: time,
                    ..update
                };
                transitioned
            }
            None => {
                self.conditions.push(update);
                true
            }
        }
    }
}

/// Where a run is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Waiting for the whole gang to fit.
    Pending,
    /// The gang fits; pods are being created.
    Admitted,
    Running,
    /// A failure was detected; the gang is resuming from its last committed checkpoint.
    Restarting,
    Suspended,
    Succeeded,
    Failed,
}

impl Phase {
    /// The name shown in `kubectl get tr` and used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Admitted => "Admitted",
            Phase::Running => "Running",
            Phase::Restarting => "Restarting",
            Phase::Suspended => "Suspended",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Admitted,
        Phase::Running,
        Phase::Restarting,
        Phase::Suspended,
        Phase::Succeeded,
        Phase::Failed,
    ];

    /// Terminal phases never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// A Kubernetes-style condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// e.g. `Admitted`, `Running`, `Complete`, `Failed`, `Suspended`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// CamelCase, machine-readable.
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// The newest committed checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRef {
    pub step: u64,
    pub path: String,
    /// RFC 3339.
    pub time: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(status: ConditionStatus, reason: &str, time: &str) -> Condition {
        Condition {
            type_: "Admitted".into(),
            status,
            reason: reason.into(),
            message: String::new(),
            last_transition_time: time.into(),
            observed_generation: None,
        }
    }

    #[test]
    fn set_condition_keeps_the_transition_time_while_the_status_holds() {
        let mut status = TrainingRunStatus::default();
        assert!(status.set_condition(condition(ConditionStatus::False, "Waiting", "t1")));
        assert!(!status.set_condition(condition(ConditionStatus::False, "StillWaiting", "t2")));
        let admitted = status.condition("Admitted").expect("set above");
        assert_eq!(admitted.last_transition_time, "t1");
        assert_eq!(admitted.reason, "StillWaiting");
        assert!(!status.is_true("Admitted"));
        assert!(status.set_condition(condition(ConditionStatus::True, "GangFits", "t3")));
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.conditions[0].last_transition_time, "t3");
        assert!(status.is_true("Admitted"));
    }
}
