//! The checkpoint manifest: what a committed checkpoint holds and how to verify it.
//!
//! ```text
//! {checkpoint.path}/
//!   step-0000000100/            committed: renamed into place after the manifest is durable
//!     model.safetensors         parameters (fp32 masters)
//!     optimizer.safetensors     AdamW moments (or a rank's shard of them: optimizer-rank-N...)
//!     manifest.json             the commit marker, written last; lists every file's checksum
//!   step-0000000200.partial/    being written; never loaded
//! ```
//!
//! A checkpoint is loaded only when its directory has the committed name, its manifest parses
//! with a known format version, and every listed file has the listed size and SHA-256.

use serde::{Deserialize, Serialize};

use crate::spec::{ResolvedModel, Sharding, TrainingRunSpec};

/// Bumped whenever the on-disk layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name; its presence, written last, is the commit marker.
pub const COMMIT_MARKER: &str = "manifest.json";
/// Suffix of a checkpoint directory still being written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// The directory name of the checkpoint taken after `step` optimizer steps.
pub fn checkpoint_dir_name(step: u64) -> String {
    format!("step-{step:010}")
}

/// The step of a committed checkpoint directory name, or `None` for anything else
/// (partial directories included).
pub fn parse_checkpoint_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointManifest {
    pub format_version: u32,
    /// Optimizer steps completed; a resumed run continues with this step.
    pub step: u64,
    /// The gang generation that wrote it.
    pub generation: u64,
    pub world_size: u32,
    pub sharding: Sharding,
    /// The run's whole spec, so a checkpoint says how it was made.
    pub config: TrainingRunSpec,
    pub model: ResolvedModel,
    /// Elements in the flat parameter space (before any padding for sharding).
    pub parameter_count: u64,
    pub data_cursor: DataCursor,
    /// Every random number generator's state, by name.
    pub rng: Vec<RngState>,
    pub files: Vec<CheckpointFile>,
    /// Training loss of the last step, and the last validation loss if one was computed.
    pub loss: Option<f64>,
    pub val_loss: Option<f64>,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The frozen base model a LoRA checkpoint's adapters were trained on (the checkpoint
    /// holds the adapters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseModelRef>,
}

/// A base model by place and content: a LoRA checkpoint refuses to resume on (or be merged
/// into) weights other than those it was trained on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaseModelRef {
    /// The Hugging Face directory or safetensors file, as the run resolved it.
    pub path: String,
    /// SHA-256 over the weight files' bytes, in file-name order (hex).
    pub sha256: String,
}

/// Where the data stream stands: the batch of step s is a pure function of (seed, s), so the
/// seed and the next step are all a resume needs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataCursor {
    pub seed: u64,
    pub next_step: u64,
    pub tokens_seen: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RngState {
    pub name: String,
    pub words: Vec<u64>,
}

/// One file of a checkpoint, with what it must hash to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointFile {
    /// Relative to the checkpoint directory.
    pub path: String,
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
    /// The rank that wrote it, for sharded state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// The half-open range of the flat parameter space it covers, for sharded state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flat_range: Option<[u64; 2]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip_and_partial_is_not_committed() {
        assert_eq!(checkpoint_dir_name(100), "step-0000000100");
        assert_eq!(parse_checkpoint_dir_name("step-0000000100"), Some(100));
        let partial = format!("{}{PARTIAL_SUFFIX}", checkpoint_dir_name(7));
        assert_eq!(parse_checkpoint_dir_name(&partial), None);
        assert_eq!(parse_checkpoint_dir_name("step-12"), None);
        assert_eq!(parse_checkpoint_dir_name("step-00000001x0"), None);
    }
}
