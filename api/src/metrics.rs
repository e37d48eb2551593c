//! Metric names: one list shared by the binaries that export them, the Helm chart's alerts
//! and the Grafana dashboard, so a rename is one change.
//!
//! Prefixes say who exports a metric: `tessera_trainer_` (a rank, labelled `rank`),
//! `tessera_agent_` (a node agent, labelled `node`), `tessera_operator_`. Every per-run
//! metric carries `namespace` and `run` labels.

// === trainer ===
pub const TRAINER_STEP: &str = "tessera_trainer_step";
pub const TRAINER_LOSS: &str = "tessera_trainer_loss";
pub const TRAINER_VAL_LOSS: &str = "tessera_trainer_val_loss";
pub const TRAINER_LEARNING_RATE: &str = "tessera_trainer_learning_rate";
pub const TRAINER_GRAD_NORM: &str = "tessera_trainer_grad_norm";
pub const TRAINER_TOKENS_PER_SECOND: &str = "tessera_trainer_tokens_per_second";
pub const TRAINER_STEP_SECONDS: &str = "tessera_trainer_step_seconds";
pub const TRAINER_MFU: &str = "tessera_trainer_mfu_ratio";
pub const TRAINER_CHECKPOINT_SECONDS: &str = "tessera_trainer_checkpoint_write_seconds";
pub const TRAINER_CHECKPOINT_STALL_SECONDS: &str = "tessera_trainer_checkpoint_stall_seconds";
/// Parameters the optimizer trains (LoRA: the adapters), and all the model's.
pub const TRAINER_TRAINABLE_PARAMETERS: &str = "tessera_trainer_trainable_parameters";
pub const TRAINER_PARAMETERS: &str = "tessera_trainer_parameters";
/// Bytes of optimizer state this rank holds.
pub const TRAINER_OPTIMIZER_STATE_BYTES: &str = "tessera_trainer_optimizer_state_bytes";

// === agent ===
pub const AGENT_RANKS: &str = "tessera_agent_ranks";
pub const AGENT_RESTARTS_TOTAL: &str = "tessera_agent_restarts_total";
pub const AGENT_GENERATION: &str = "tessera_agent_generation";
pub const AGENT_HEARTBEAT_AGE_SECONDS: &str = "tessera_agent_heartbeat_age_seconds";
pub const AGENT_GPU_UTILIZATION: &str = "tessera_agent_gpu_utilization_ratio";
pub const AGENT_GPU_MEMORY_USED_BYTES: &str = "tessera_agent_gpu_memory_used_bytes";
pub const AGENT_GPU_TEMPERATURE_CELSIUS: &str = "tessera_agent_gpu_temperature_celsius";
pub const AGENT_GPU_HEALTHY: &str = "tessera_agent_gpu_healthy";
/// Seconds from a detected failure to the first step of the resumed generation.
pub const AGENT_RECOVERY_SECONDS: &str = "tessera_agent_recovery_seconds";
/// The step of the newest committed checkpoint the agent knows of (0 before the first).
pub const AGENT_CHECKPOINT_STEP: &str = "tessera_agent_checkpoint_step";
/// 1 while the agent's last exchange with the coordination store succeeded, 0 while it cannot
/// reach any endpoint.
pub const AGENT_STORE_REACHABLE: &str = "tessera_agent_store_reachable";
/// Times the agent lost the coordination store (each outage counts once).
pub const AGENT_STORE_OUTAGES_TOTAL: &str = "tessera_agent_store_outages_total";

// === operator ===
pub const OPERATOR_RECONCILE_TOTAL: &str = "tessera_operator_reconcile_total";
pub const OPERATOR_RECONCILE_ERRORS_TOTAL: &str = "tessera_operator_reconcile_errors_total";
pub const OPERATOR_RECONCILE_SECONDS: &str = "tessera_operator_reconcile_duration_seconds";
pub const OPERATOR_RUNS: &str = "tessera_operator_runs";
/// Seconds from a run's creation to its admission.
pub const OPERATOR_ADMISSION_WAIT_SECONDS: &str = "tessera_operator_admission_wait_seconds";
/// Gang restarts the operator performed, labelled by reason.
pub const OPERATOR_GANG_RESTARTS_TOTAL: &str = "tessera_operator_gang_restarts_total";
/// 1 while this replica holds the leader lease.
pub const OPERATOR_LEADER: &str = "tessera_operator_leader";

/// Every metric name, for checks that dashboards and alerts name only real metrics.
pub const ALL: &[&str] = &[
    TRAINER_STEP,
    TRAINER_LOSS,
    TRAINER_VAL_LOSS,
    TRAINER_LEARNING_RATE,
    TRAINER_GRAD_NORM,
    TRAINER_TOKENS_PER_SECOND,
    TRAINER_STEP_SECONDS,
    TRAINER_MFU,
    TRAINER_CHECKPOINT_SECONDS,
    TRAINER_CHECKPOINT_STALL_SECONDS,
    TRAINER_TRAINABLE_PARAMETERS,
    TRAINER_PARAMETERS,
    TRAINER_OPTIMIZER_STATE_BYTES,
    AGENT_RANKS,
    AGENT_RESTARTS_TOTAL,
    AGENT_GENERATION,
    AGENT_HEARTBEAT_AGE_SECONDS,
    AGENT_GPU_UTILIZATION,
    AGENT_GPU_MEMORY_USED_BYTES,
    AGENT_GPU_TEMPERATURE_CELSIUS,
    AGENT_GPU_HEALTHY,
    AGENT_RECOVERY_SECONDS,
    AGENT_CHECKPOINT_STEP,
    AGENT_STORE_REACHABLE,
    AGENT_STORE_OUTAGES_TOTAL,
    OPERATOR_RECONCILE_TOTAL,
    OPERATOR_RECONCILE_ERRORS_TOTAL,
    OPERATOR_RECONCILE_SECONDS,
    OPERATOR_RUNS,
    OPERATOR_ADMISSION_WAIT_SECONDS,
    OPERATOR_GANG_RESTARTS_TOTAL,
    OPERATOR_LEADER,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_prometheus_names() {
        let mut seen = std::collections::BTreeSet::new();
        for name in super::ALL {
            assert!(seen.insert(*name), "{name} listed twice");
            assert!(
                name.starts_with("tessera_"),
                "{name} lacks the tessera_ prefix"
            );
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is not snake_case"
            );
        }
    }
}
