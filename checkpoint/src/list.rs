//! Listing the checkpoint directories under a root, newest first, without hashing.

use std::path::{Path, PathBuf};

use tessera_api::checkpoint::{CheckpointManifest, PARTIAL_SUFFIX, parse_checkpoint_dir_name};

use crate::{ListError, read_manifest};

/// One entry of [`list_checkpoints`]: cheap facts, no hashing.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointListing {
    pub dir: PathBuf,
    pub step: u64,
    /// Committed name and a manifest that parses.
    pub committed: bool,
    pub manifest: Option<CheckpointManifest>,
    /// Sum of the listed files' sizes.
    pub bytes: u64,
}

/// Every checkpoint directory under `root`, newest first, without hashing.
pub fn list_checkpoints(root: &Path) -> Result<Vec<CheckpointListing>, ListError> {
    let mut listings = Vec::new();
    for (step, dir, partial) in checkpoint_dirs(root)? {
        let manifest = if partial {
            None
        } else {
            read_manifest(&dir, Some(step)).ok()
        };
        listings.push(CheckpointListing {
            step,
            committed: manifest.is_some(),
            bytes: manifest
                .as_ref()
                .map(|m| m.files.iter().map(|f| f.bytes).sum())
                .unwrap_or(0),
            manifest,
            dir,
        });
    }
    Ok(listings)
}

/// `(step, dir, is_partial)` for every `step-*` directory, newest first; at equal steps the
/// committed one comes first.
pub fn checkpoint_dirs(root: &Path) -> Result<Vec<(u64, PathBuf, bool)>, ListError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ListError::new(root, e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ListError::new(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = parse_checkpoint_dir_name(&name) {
            dirs.push((step, entry.path(), false));
        } else if let Some(stem) = name.strip_suffix(PARTIAL_SUFFIX) {
            // `step-N.partial`, and the `.replaced` / `.pruned` forms of it.
            let step_part = stem.split('.').next().unwrap_or(stem);
            if let Some(step) = parse_checkpoint_dir_name(step_part) {
                dirs.push((step, entry.path(), true));
            }
        }
    }
    dirs.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
    Ok(dirs)
}
