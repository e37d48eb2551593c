//! Finding, verifying and loading checkpoints. Nothing here modifies the checkpoint root, so
//! it is safe while a writer is active (`tessera ckpt verify`, an agent's scan).
//!
//! ```text
//! root/step-0000000300/   no manifest.json        → skipped: no commit marker
//! root/step-0000000200/   model.safetensors short → skipped: truncated
//! root/step-0000000100/   verifies                → loaded
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_api::checkpoint::{
    COMMIT_MARKER, CheckpointFile, CheckpointManifest, FORMAT_VERSION, PARTIAL_SUFFIX,
    parse_checkpoint_dir_name,
};

use super::{
    CheckpointError, MODEL_FILE, OPTIMIZER_FILE, OPTIMIZER_STEP_KEY, OptimizerShard, OwnedTensor,
};

/// Why a checkpoint directory is not loadable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("uncommitted: still being written or left by a crash ({PARTIAL_SUFFIX} directory)")]
    Partial,
    #[error("no commit marker ({COMMIT_MARKER})")]
    NoCommitMarker,
    #[error("{COMMIT_MARKER} does not parse: {0}")]
    BadManifest(String),
    #[error("format version {found} is unknown; this build reads version {FORMAT_VERSION}")]
    UnknownFormat { found: u32 },
    #[error("the directory is for step {dir_step} but its manifest says step {manifest_step}")]
    StepMismatch { dir_step: u64, manifest_step: u64 },
    #[error("the manifest lists {path:?}, which is not a plain file name inside the checkpoint")]
    UnsafePath { path: String },
    #[error("the manifest lists no {0}")]
    MissingEntry(&'static str),
    #[error("missing file: {path}")]
    MissingFile { path: String },
    #[error("truncated: {path} is {actual} bytes, manifest says {expected}")]
    Truncated {
        path: String,
        actual: u64,
        expected: u64,
    },
    #[error("size mismatch: {path} is {actual} bytes, manifest says {expected}")]
    Oversized {
        path: String,
        actual: u64,
        expected: u64,
    },
    #[error("checksum mismatch: {path} hashes to {actual}, manifest says {expected}")]
    ChecksumMismatch {
        path: String,
        actual: String,
        expected: String,
    },
    #[error("{path} is not a readable f32 safetensors file: {message}")]
    BadTensors { path: String, message: String },
    #[error("cannot read {path}: {message}")]
    Unreadable { path: String, message: String },
}

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

/// One file of a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCheck {
    pub entry: CheckpointFile,
    pub actual_bytes: Option<u64>,
    pub actual_sha256: Option<String>,
    pub problem: Option<InvalidReason>,
}

/// Everything `tessera ckpt verify` reports about one directory.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub step: Option<u64>,
    pub manifest: Option<CheckpointManifest>,
    pub files: Vec<FileCheck>,
    /// Every problem found, directory-level and per file; empty when the checkpoint is valid.
    pub problems: Vec<InvalidReason>,
}

impl VerifyReport {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

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

/// Verifies one checkpoint directory: the commit marker, the manifest, and every listed
/// file's size and SHA-256. Never loads tensors into memory whole.
pub fn verify_checkpoint(dir: &Path) -> VerifyReport {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let step = parse_checkpoint_dir_name(&name);
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        step,
        manifest: None,
        files: Vec::new(),
        problems: Vec::new(),
    };
    if name.ends_with(PARTIAL_SUFFIX) {
        report.problems.push(InvalidReason::Partial);
    }
    let manifest = match read_manifest(dir, step) {
        Ok(m) => m,
        Err(reason) => {
            report.problems.push(reason);
            return report;
        }
    };
    for entry in &manifest.files {
        let mut check = FileCheck {
            entry: entry.clone(),
            actual_bytes: None,
            actual_sha256: None,
            problem: None,
        };
        match hash_file(dir, entry) {
            Ok((bytes, sha)) => {
                check.actual_bytes = Some(bytes);
                check.actual_sha256 = Some(sha.clone());
                check.problem = compare(entry, bytes, &sha).err();
            }
            Err(reason) => check.problem = Some(reason),
        }
        report.problems.extend(check.problem.clone());
        report.files.push(check);
    }
    report.manifest = Some(manifest);
    report
}

/// Every checkpoint directory under `root`, newest first, without hashing.
pub fn list_checkpoints(root: &Path) -> Result<Vec<CheckpointListing>, CheckpointError> {
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
fn checkpoint_dirs(root: &Path) -> Result<Vec<(u64, PathBuf, bool)>, CheckpointError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CheckpointError::io(root, e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CheckpointError::io(root, e))?;
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

// === verification ===

fn read_manifest(dir: &Path, dir_step: Option<u64>) -> Result<CheckpointManifest, InvalidReason> {
    let path = dir.join(COMMIT_MARKER);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InvalidReason::NoCommitMarker);
        }
        Err(e) => {
            return Err(InvalidReason::Unreadable {
                path: COMMIT_MARKER.to_string(),
                message: e.to_string(),
            });
        }
    };
    // Check the version before the full shape, so a newer layout says "unknown version"
    // rather than a confusing field error.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(found) = value.get("formatVersion").and_then(|v| v.as_u64())
        && found != u64::from(FORMAT_VERSION)
    {
        return Err(InvalidReason::UnknownFormat {
            found: u32::try_from(found).unwrap_or(u32::MAX),
        });
    }
    let manifest: CheckpointManifest =
        serde_json::from_slice(&bytes).map_err(|e| InvalidReason::BadManifest(e.to_string()))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(InvalidReason::UnknownFormat {
            found: manifest.format_version,
        });
    }
    if let Some(dir_step) = dir_step
        && dir_step != manifest.step
    {
        return Err(InvalidReason::StepMismatch {
            dir_step,
            manifest_step: manifest.step,
        });
    }
    for file in &manifest.files {
        let plain = !file.path.is_empty()
            && !file.path.contains(['/', '\\'])
            && file.path != "."
            && file.path != ".."
            && file.path != COMMIT_MARKER;
        if !plain {
            return Err(InvalidReason::UnsafePath {
                path: file.path.clone(),
            });
        }
    }
    Ok(manifest)
}

fn compare(entry: &CheckpointFile, bytes: u64, sha256: &str) -> Result<(), InvalidReason> {
    if bytes < entry.bytes {
        return Err(InvalidReason::Truncated {
            path: entry.path.clone(),
            actual: bytes,
            expected: entry.bytes,
        });
    }
    if bytes > entry.bytes {
        return Err(InvalidReason::Oversized {
            path: entry.path.clone(),
            actual: bytes,
            expected: entry.bytes,
        });
    }
    if !sha256.eq_ignore_ascii_case(&entry.sha256) {
        return Err(InvalidReason::ChecksumMismatch {
            path: entry.path.clone(),
            actual: sha256.to_string(),
            expected: entry.sha256.clone(),
        });
    }
    Ok(())
}

fn open_listed(dir: &Path, entry: &CheckpointFile) -> Result<File, InvalidReason> {
    File::open(dir.join(&entry.path)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            InvalidReason::MissingFile {
                path: entry.path.clone(),
            }
        } else {
            InvalidReason::Unreadable {
                path: entry.path.clone(),
                message: e.to_string(),
            }
        }
    })
}

/// Streams a listed file through SHA-256: `(bytes, hex digest)`.
fn hash_file(dir: &Path, entry: &CheckpointFile) -> Result<(u64, String), InvalidReason> {
    let mut file = open_listed(dir, entry)?;
    let unreadable = |e: std::io::Error| InvalidReason::Unreadable {
        path: entry.path.clone(),
        message: e.to_string(),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                bytes += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Reads a listed file whole, checking its size and SHA-256 on the bytes that will be used.
fn read_verified(dir: &Path, entry: &CheckpointFile) -> Result<Vec<u8>, InvalidReason> {
    let mut file = open_listed(dir, entry)?;
    let mut bytes = Vec::with_capacity(usize::try_from(entry.bytes).unwrap_or(0).min(1 << 34));
    file.read_to_end(&mut bytes)
        .map_err(|e| InvalidReason::Unreadable {
            path: entry.path.clone(),
            message: e.to_string(),
        })?;
    let sha = hex::encode(Sha256::digest(&bytes));
    compare(entry, bytes.len() as u64, &sha)?;
    Ok(bytes)
}

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
