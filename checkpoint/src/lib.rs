//! Finding and verifying checkpoint directories, read-only and without loading tensors: the
//! part of checkpoints that more than the trainer needs. The agent picks the checkpoint a
//! generation resumes from with it, the CLI lists and verifies (`tessera ckpt ls/verify`,
//! `tessera status`), and the trainer's loader (`tessera_trainer::checkpoint`) builds on it.
//! The manifest and directory layout are the contract in `tessera_api::checkpoint`; writing
//! and loading tensors stay in the trainer.
//!
//! ```text
//! root/step-0000000300.partial/   being written, or left by a crash → never committed
//! root/step-0000000200/           no manifest.json                   → not committed
//! root/step-0000000100/           manifest.json + files              → verify: sizes, SHA-256
//! ```
#![forbid(unsafe_code)]

mod list;
pub mod testing;
mod verify;

use std::path::{Path, PathBuf};

pub use list::{CheckpointListing, checkpoint_dirs, list_checkpoints};
pub use verify::{
    FileCheck, InvalidReason, VerifyReport, compare, hash_file, marker_digest, marker_sha256,
    read_manifest, read_verified, verify_checkpoint,
};

/// The checkpoint root could not be read.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint {path}: {source}")]
pub struct ListError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl ListError {
    pub fn new(path: &Path, source: std::io::Error) -> ListError {
        ListError {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
