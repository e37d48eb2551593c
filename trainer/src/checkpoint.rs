//! Checkpoint files: writing a checkpoint so that a crash at any instant leaves either the old
//! set of committed checkpoints or the new one, and finding the newest one that verifies.
//!
//! ```text
//! root/
//!   step-0000000100/              committed (renamed into place after the manifest is durable)
//!     model.safetensors           parameters by name, f32, with shapes
//!     optimizer.safetensors       AdamW moments ("m.<param>", "v.<param>"), step in metadata,
//!                                 and fp32 master weights ("master.<param>") from backends
//!                                 that keep them apart from bf16 parameters (CUDA)
//!       or optimizer-rank-NNNNN.safetensors, one per rank of a sharded run: flat "m", "v"
//!       (and "master") over the rank's range of the flat parameter space (in the manifest)
//!     manifest.json               commit marker, written last: every file's size and SHA-256
//!   step-0000000200.partial/      being written, or left by a crash: never loaded
//!
//! write:  mkdir step-N.partial → write + fsync each file → write + fsync manifest.json
//!         → fsync dir → rename step-N.partial → step-N → fsync root → prune beyond `keep`
//! load:   committed dirs newest first → manifest parses, known version, every file has its
//!         size and SHA-256 → load; otherwise record why and try the next older
//! ```
//!
//! The manifest type is the contract in `tessera_api::checkpoint`; this module owns the bytes.
//! Listing and verification (no tensors) are `tessera_checkpoint`'s, re-exported here.
//! [`background`] runs the same write on a thread from an owned snapshot; [`gang`] writes a
//! gang's shards in the background and commits when all are durable.

#![forbid(unsafe_code)]

pub mod background;
pub mod gang;
mod load;
pub(crate) mod write;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use background::BackgroundWriter;
pub use gang::{GangWriter, ShardSnapshot};
pub use load::{
    CheckpointScan, FlatOptimizerState, LoadedCheckpoint, SkippedCheckpoint, find_latest_valid,
    flat_optimizer_state, load_checkpoint,
};
// Listing and verification live in `tessera_checkpoint` (the agent and the CLI use them
// without the trainer); re-exported so the trainer's callers find them here too.
pub use tessera_checkpoint::{
    CheckpointListing, FileCheck, InvalidReason, ListError, VerifyReport, list_checkpoints,
    verify_checkpoint,
};
pub use write::{
    CommittedCheckpoint, PartialCheckpoint, remove_stale_partials, write_checkpoint,
    write_checkpoint_fenced,
};

/// Whoever supervises the run decides whether a checkpoint may be committed: asked by the
/// committing rank after every file is durable and before the commit marker is written, with
/// the marker's SHA-256. Under an agent this is the store's fence (`supervised::AgentLink`):
/// the commit is recorded only while the rank's generation is current, so a rank that was
/// paused or cut off while the gang moved on is refused and commits nothing.
pub trait CommitFence: Send + Sync {
    /// `Err(why)`: do not commit.
    fn confirm(&self, step: u64, marker_sha256: &str) -> Result<(), String>;
}

/// The parameters' file in a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer state's file in a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// A sharded run's optimizer file for `rank`.
pub fn optimizer_shard_file(rank: u32) -> String {
    format!("optimizer-rank-{rank:05}.safetensors")
}

/// One rank's slice of the AdamW moments (and fp32 master weights, when the backend that
/// wrote it keeps them), from a sharded checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerShard {
    pub rank: u32,
    pub flat_range: std::ops::Range<usize>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub master: Option<Vec<f32>>,
}

/// Key in `optimizer.safetensors`' metadata holding the optimizer's step count.
pub const OPTIMIZER_STEP_KEY: &str = "optimizer_step";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checkpoint file {file}: tensor {tensor} has shape {shape:?} ({elements} elements) but {values} values; pass the tensor's own slice of the flat buffer"
    )]
    ShapeMismatch {
        file: String,
        tensor: String,
        shape: Vec<usize>,
        elements: usize,
        values: usize,
    },
    #[error(
        "checkpoint file {file}: tensor name {tensor} appears twice; tensor names must be unique within a file"
    )]
    DuplicateTensor { file: String, tensor: String },
    #[error(
        "checkpoint file name {file:?} is not a plain file name; use a name such as model.safetensors"
    )]
    BadFileName { file: String },
    #[error("cannot write checkpoint file {path}: {message}")]
    Serialize { path: PathBuf, message: String },
    #[error("keep = 0 would delete every checkpoint; keep at least 1")]
    KeepZero,
    #[error("{0}")]
    Manifest(String),
    #[error("the commit of checkpoint step {step} was refused, so nothing was committed: {reason}")]
    Refused { step: u64, reason: String },
    #[error("the background checkpoint writer stopped unexpectedly: {0}")]
    WriterLost(String),
}

impl From<tessera_checkpoint::ListError> for CheckpointError {
    fn from(e: tessera_checkpoint::ListError) -> CheckpointError {
        CheckpointError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            path: path.into(),
            source,
        }
    }
}

// === tensors in and out ===

/// One named tensor, borrowed: a view into the caller's (possibly flat) buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NamedTensor<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub values: &'a [f32],
}

/// One named tensor, owned: what a snapshot holds and what loading returns.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl OwnedTensor {
    pub fn view(&self) -> NamedTensor<'_> {
        NamedTensor {
            name: &self.name,
            shape: &self.shape,
            values: &self.values,
        }
    }
}

impl From<NamedTensor<'_>> for OwnedTensor {
    fn from(t: NamedTensor<'_>) -> OwnedTensor {
        OwnedTensor {
            name: t.name.to_string(),
            shape: t.shape.to_vec(),
            values: t.values.to_vec(),
        }
    }
}

/// The training state a checkpoint stores, borrowed from the trainer.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointTensors<'a> {
    /// Parameters, by name.
    pub model: Vec<NamedTensor<'a>>,
    /// AdamW moments, by convention named `m.<param>` and `v.<param>`.
    pub optimizer: Vec<NamedTensor<'a>>,
    /// Optimizer steps taken (AdamW's bias correction needs it).
    pub optimizer_step: u64,
}

/// An owned copy of [`CheckpointTensors`], for writing on a background thread while
/// training goes on.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointSnapshot {
    pub model: Vec<OwnedTensor>,
    pub optimizer: Vec<OwnedTensor>,
    pub optimizer_step: u64,
}

impl CheckpointSnapshot {
    /// Copies the borrowed state: the only part of an asynchronous checkpoint that stalls
    /// training.
    pub fn capture(tensors: &CheckpointTensors<'_>) -> CheckpointSnapshot {
        CheckpointSnapshot {
            model: tensors.model.iter().map(|&t| t.into()).collect(),
            optimizer: tensors.optimizer.iter().map(|&t| t.into()).collect(),
            optimizer_step: tensors.optimizer_step,
        }
    }

    pub fn as_tensors(&self) -> CheckpointTensors<'_> {
        CheckpointTensors {
            model: self.model.iter().map(OwnedTensor::view).collect(),
            optimizer: self.optimizer.iter().map(OwnedTensor::view).collect(),
            optimizer_step: self.optimizer_step,
        }
    }
}
