//! Finding and loading the newest checkpoint that verifies. Listing and verification are
//! `tessera_checkpoint`'s (shared with the agent and the CLI); this module adds the tensors.
//! Nothing here modifies the checkpoint root, so it is safe while a writer is active.
//!
//! ```text
//! root/step-0000000300/   no manifest.json        → skipped: no commit marker
//! root/step-0000000200/   model.safetensors short → skipped: truncated
//! root/step-0000000100/   verifies                → loaded
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_api::checkpoint::{CheckpointManifest, parse_checkpoint_dir_name};
use tessera_checkpoint::{
    InvalidReason, checkpoint_dirs, compare, hash_file, read_manifest, read_verified,
};

use super::{
    CheckpointError, MODEL_FILE, OPTIMIZER_FILE, OPTIMIZER_STEP_KEY, OptimizerShard, OwnedTensor,
};

/// A checkpoint directory that was passed over, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedCheckpoint {
    pub dir: PathBuf,
    pub step: Option<u64>,
    pub reason: InvalidReason,
}

/// A verified checkpoint, loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub manifest: CheckpointManifest,
    /// Parameters, in file order (sorted by name).
    pub model: Vec<OwnedTensor>,
    /// Optimizer state by tensor name, in file order (sorted by name); empty when sharded.
    pub optimizer: Vec<OwnedTensor>,
    /// Optimizer state of a sharded run, one slice per rank that wrote it, in rank order.
    pub optimizer_shards: Vec<OptimizerShard>,
    pub optimizer_step: u64,
}

impl LoadedCheckpoint {
    pub fn model_tensor(&self, name: &str) -> Option<&OwnedTensor> {
        self.model.iter().find(|t| t.name == name)
    }

    pub fn optimizer_tensor(&self, name: &str) -> Option<&OwnedTensor> {
        self.optimizer.iter().find(|t| t.name == name)
    }
}

/// The outcome of a scan: the newest valid checkpoint, if any, and every newer directory
/// passed over on the way, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointScan {
    pub loaded: Option<LoadedCheckpoint>,
    pub skipped: Vec<SkippedCheckpoint>,
}

// === scanning ===

/// Scans `root` newest first and loads the newest checkpoint that verifies. Directories
/// passed over are logged (`tracing::warn!`) and returned with their reasons. A missing root
/// is an empty scan.
pub fn find_latest_valid(root: &Path) -> Result<CheckpointScan, CheckpointError> {
    let mut skipped = Vec::new();
    for (step, dir, partial) in checkpoint_dirs(root)? {
        if partial {
            skip(&mut skipped, dir, Some(step), InvalidReason::Partial);
            continue;
        }
        match load_dir(&dir, Some(step)) {
            Ok(loaded) => {
                return Ok(CheckpointScan {
                    loaded: Some(loaded),
                    skipped,
                });
            }
            Err(reason) => skip(&mut skipped, dir, Some(step), reason),
        }
    }
    Ok(CheckpointScan {
        loaded: None,
        skipped,
    })
}

fn skip(
    skipped: &mut Vec<SkippedCheckpoint>,
    dir: PathBuf,
    step: Option<u64>,
    reason: InvalidReason,
) {
    tracing::warn!("skipping checkpoint {}: {reason}", dir.display());
    skipped.push(SkippedCheckpoint { dir, step, reason });
}

/// Loads one checkpoint directory after verifying it.
pub fn load_checkpoint(dir: &Path) -> Result<LoadedCheckpoint, InvalidReason> {
    let step = dir
        .file_name()
        .and_then(|n| parse_checkpoint_dir_name(&n.to_string_lossy()));
    load_dir(dir, step)
}

// === loading ===

fn load_dir(dir: &Path, step: Option<u64>) -> Result<LoadedCheckpoint, InvalidReason> {
    let manifest = read_manifest(dir, step)?;
    // Every listed file must verify, even ones this loader does not read.
    let mut contents: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut shard_entries = Vec::new();
    for entry in &manifest.files {
        if entry.path == MODEL_FILE || entry.path == OPTIMIZER_FILE {
            contents.insert(&entry.path, read_verified(dir, entry)?);
        } else if let (Some(rank), Some(range)) = (entry.rank, entry.flat_range) {
            shard_entries.push((rank, range, read_verified(dir, entry)?, &entry.path));
        } else {
            let (bytes, sha) = hash_file(dir, entry)?;
            compare(entry, bytes, &sha)?;
        }
    }
    let model_bytes = contents
        .get(MODEL_FILE)
        .ok_or(InvalidReason::MissingEntry(MODEL_FILE))?;
    let (model, _) = parse_tensors(MODEL_FILE, model_bytes)?;
    let step_of = |path: &str, metadata: &BTreeMap<String, String>| {
        metadata
            .get(OPTIMIZER_STEP_KEY)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| InvalidReason::BadTensors {
                path: path.to_string(),
                message: format!("its metadata has no integer {OPTIMIZER_STEP_KEY}"),
            })
    };
    let (optimizer, optimizer_step, optimizer_shards) = if shard_entries.is_empty() {
        let optimizer_bytes = contents
            .get(OPTIMIZER_FILE)
            .ok_or(InvalidReason::MissingEntry(OPTIMIZER_FILE))?;
        let (optimizer, metadata) = parse_tensors(OPTIMIZER_FILE, optimizer_bytes)?;
        let optimizer_step = step_of(OPTIMIZER_FILE, &metadata)?;
        (optimizer, optimizer_step, Vec::new())
    } else {
        shard_entries.sort_by_key(|(rank, ..)| *rank);
        let mut shards = Vec::with_capacity(shard_entries.len());
        let mut steps = Vec::new();
        for (rank, [start, end], bytes, path) in shard_entries {
            let (tensors, metadata) = parse_tensors(path, &bytes)?;
            steps.push(step_of(path, &metadata)?);
            let take = |name: &str| {
                tensors
                    .iter()
                    .find(|t| t.name == name && t.values.len() as u64 == end.saturating_sub(start))
                    .map(|t| t.values.clone())
                    .ok_or_else(|| InvalidReason::BadTensors {
                        path: path.clone(),
                        message: format!(
                            "no tensor {name} of {} values for range {start}..{end}",
                            end.saturating_sub(start)
                        ),
                    })
            };
            shards.push(OptimizerShard {
                rank,
                flat_range: start as usize..end as usize,
                m: take("m")?,
                v: take("v")?,
                master: take("master").ok(),
            });
        }
        if steps.windows(2).any(|w| w[0] != w[1]) {
            return Err(InvalidReason::BadTensors {
                path: "optimizer-rank-*".into(),
                message: format!("shards disagree on the optimizer step: {steps:?}"),
            });
        }
        (Vec::new(), steps[0], shards)
    };
    Ok(LoadedCheckpoint {
        dir: dir.to_path_buf(),
        manifest,
        model,
        optimizer,
        optimizer_shards,
        optimizer_step,
    })
}

/// AdamW moments over the whole flat space, and the master weights when saved.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatOptimizerState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub master: Option<Vec<f32>>,
}

/// The whole flat AdamW state `(m, v)` of a loaded checkpoint over `tensors` (name and range
/// of each parameter tensor, in layout order), from named tensors or from rank shards —
/// whichever the checkpoint has — so a run resumes on any number of ranks. `None` names
/// what is missing. With the state come the fp32 master weights when the checkpoint holds
/// them for the whole space (`master.<tensor>`, or `master` in every shard).
pub fn flat_optimizer_state(
    loaded: &LoadedCheckpoint,
    tensors: &[(&str, std::ops::Range<usize>)],
    total: usize,
) -> Result<FlatOptimizerState, String> {
    let (mut m, mut v) = (vec![0.0f32; total], vec![0.0f32; total]);
    let mut master = Some(vec![0.0f32; total]);
    if loaded.optimizer_shards.is_empty() {
        for (name, range) in tensors {
            for (dst, prefix) in [(&mut m, "m"), (&mut v, "v")] {
                let full = format!("{prefix}.{name}");
                let t = loaded
                    .optimizer_tensor(&full)
                    .filter(|t| t.values.len() == range.len())
                    .ok_or_else(|| format!("{full} with {} values", range.len()))?;
                dst[range.clone()].copy_from_slice(&t.values);
            }
            let kept = loaded
                .optimizer_tensor(&format!("master.{name}"))
                .filter(|t| t.values.len() == range.len());
            master = match (master, kept) {
                (Some(mut all), Some(t)) => {
                    all[range.clone()].copy_from_slice(&t.values);
                    Some(all)
                }
                _ => None,
            };
        }
        return Ok(FlatOptimizerState { m, v, master });
    }
    let mut next = 0;
    for shard in &loaded.optimizer_shards {
        if shard.flat_range.start != next || shard.flat_range.end > total {
            return Err(format!(
                "optimizer shards covering 0..{total} without gaps (rank {} covers {:?}, expected \
                 a range starting at {next})",
                shard.rank, shard.flat_range
            ));
        }
        m[shard.flat_range.clone()].copy_from_slice(&shard.m);
        v[shard.flat_range.clone()].copy_from_slice(&shard.v);
        master = match (master, &shard.master) {
            (Some(mut all), Some(part)) => {
                all[shard.flat_range.clone()].copy_from_slice(part);
                Some(all)
            }
            _ => None,
        };
        next = shard.flat_range.end;
    }
    if next != total {
        return Err(format!(
            "optimizer shards covering 0..{total}; they end at {next}"
        ));
    }
    Ok(FlatOptimizerState { m, v, master })
}

fn parse_tensors(
    file: &str,
    bytes: &[u8],
) -> Result<(Vec<OwnedTensor>, BTreeMap<String, String>), InvalidReason> {
    let bad = |message: String| InvalidReason::BadTensors {
        path: file.to_string(),
        message,
    };
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let extra: BTreeMap<String, String> = metadata
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, view) in tensors.iter() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "tensor {name} is {:?}, expected F32",
                view.dtype()
            )));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        owned.push(OwnedTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            values,
        });
    }
    owned.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((owned, extra))
}
