//! The progress report agents publish under a run's `progress` key (see [`crate::store_keys`]),
//! read by the operator (into the TrainingRun status) and by `tessera status`.
//!
//! Kept small and stable: it is JSON in the coordination store, written by one binary and read
//! by others that may be of a different version, so unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::status::CheckpointRef;

/// The newest progress of a run, as its agents see it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunProgress {
    /// The gang generation the report comes from.
    pub generation: u64,
    /// The last completed optimizer step.
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointRef>,
    /// Coordinated restarts the agents performed in place (without the operator).
    #[serde(default)]
    pub restarts: u32,
}

impl RunProgress {
    /// Parses the JSON stored under the `progress` key.
    pub fn from_json(bytes: &[u8]) -> Result<RunProgress, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The JSON stored under the `progress` key.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a RunProgress always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_unknown_fields() {
        let progress = RunProgress {
            generation: 3,
            step: 120,
            loss: Some(2.5),
            val_loss: None,
            tokens_per_second: Some(1e5),
            last_checkpoint: Some(CheckpointRef {
                step: 100,
                path: "/ckpt/step-0000000100".into(),
                time: "2026-01-01T00:00:00Z".into(),
            }),
            restarts: 1,
        };
        assert_eq!(
            RunProgress::from_json(&progress.to_json()).unwrap(),
            progress
        );
        let newer = br#"{"generation":1,"step":5,"ranks":[{"rank":0}],"restarts":0}"#;
        assert_eq!(RunProgress::from_json(newer).unwrap().step, 5);
        assert!(RunProgress::from_json(b"{\"step\":\"five\"}").is_err());
        assert!(RunProgress::from_json(b"not json").is_err());
    }
}
