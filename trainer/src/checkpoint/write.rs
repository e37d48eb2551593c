//! Writing a checkpoint: stage every file in `step-N.partial/`, make each durable, write the
//! manifest (the commit marker) last, then rename the directory into its committed name.
//!
//! ```text
//! PartialCheckpoint::begin(root, N)      step-N.partial/ created empty
//!   .write_tensor_file("model...", ..)   file written, fsynced, size + SHA-256 → CheckpointFile
//!   .commit_fenced(manifest, fence)      the fence confirms the marker's SHA-256 (or refuses:
//!                                        nothing committed), then
//!                                        manifest.json written + fsynced, dir fsynced,
//!                                        rename → step-N, root fsynced, prune beyond keep
//! ```
//!
//! Several ranks can share one partial directory (each writes its own files, rank 0
//! commits); [`write_checkpoint`] is the single-writer path used when one rank holds it all.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_api::checkpoint::{
    COMMIT_MARKER, CheckpointFile, CheckpointManifest, FORMAT_VERSION, PARTIAL_SUFFIX,
    checkpoint_dir_name, parse_checkpoint_dir_name,
};
use tessera_checkpoint::marker_digest;

use super::{
    CheckpointError, CheckpointTensors, CommitFence, MODEL_FILE, NamedTensor, OPTIMIZER_FILE,
    OPTIMIZER_STEP_KEY, optimizer_shard_file,
};

/// What a successful commit produced.
#[derive(Clone, Debug, PartialEq)]
pub struct CommittedCheckpoint {
    pub dir: PathBuf,
    /// The manifest as written, with every file listed.
    pub manifest: CheckpointManifest,
    /// Bytes written, manifest included.
    pub bytes: u64,
    /// Older committed checkpoints removed to keep `keep`.
    pub pruned: Vec<PathBuf>,
}

/// A checkpoint being written: a `step-N.partial` directory.
#[derive(Debug)]
pub struct PartialCheckpoint {
    root: PathBuf,
    step: u64,
    dir: PathBuf,
    files: Vec<CheckpointFile>,
}

impl PartialCheckpoint {
    /// Creates `root/step-N.partial/`, empty (a leftover from a crash at the same step is
    /// removed first).
    pub fn begin(root: &Path, step: u64) -> Result<PartialCheckpoint, CheckpointError> {
        std::fs::create_dir_all(root).map_err(|e| CheckpointError::io(root, e))?;
        let dir = root.join(partial_dir_name(step));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
        Ok(PartialCheckpoint {
            root: root.to_path_buf(),
            step,
            dir,
            files: Vec::new(),
        })
    }

    /// Joins a partial directory another rank began (after a barrier), to add this rank's
    /// files; this rank's [`CheckpointFile`]s must reach the committing rank.
    pub fn join(root: &Path, step: u64) -> Result<PartialCheckpoint, CheckpointError> {
        let dir = root.join(partial_dir_name(step));
        if !dir.is_dir() {
            return Err(CheckpointError::io(
                &dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no partial checkpoint to join; rank 0 must begin it before the barrier",
                ),
            ));
        }
        Ok(PartialCheckpoint {
            root: root.to_path_buf(),
            step,
            dir,
            files: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    /// The files written so far through this handle.
    pub fn files(&self) -> &[CheckpointFile] {
        &self.files
    }

    /// Writes `tensors` as the safetensors file `file_name`, fsyncs it, and records its size
    /// and SHA-256.
    pub fn write_tensor_file(
        &mut self,
        file_name: &str,
        tensors: &[NamedTensor<'_>],
        metadata: BTreeMap<String, String>,
    ) -> Result<CheckpointFile, CheckpointError> {
        check_file_name(file_name)?;
        let mut seen = HashSet::with_capacity(tensors.len());
        for t in tensors {
            let elements = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if elements != Some(t.values.len()) {
                return Err(CheckpointError::ShapeMismatch {
                    file: file_name.to_string(),
                    tensor: t.name.to_string(),
                    shape: t.shape.to_vec(),
                    elements: elements.unwrap_or(usize::MAX),
                    values: t.values.len(),
                });
            }
            if !seen.insert(t.name) {
                return Err(CheckpointError::DuplicateTensor {
                    file: file_name.to_string(),
                    tensor: t.name.to_string(),
                });
            }
        }
        let path = self.dir.join(file_name);
        let metadata: HashMap<String, String> = metadata.into_iter().collect();
        safetensors::serialize_to_file(
            tensors.iter().map(|t| (t.name, F32View(*t))),
            Some(metadata),
            &path,
        )
        .map_err(|e| CheckpointError::Serialize {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let (bytes, sha256) = sync_and_hash(&path)?;
        let file = CheckpointFile {
            path: file_name.to_string(),
            bytes,
            sha256,
            rank: None,
            flat_range: None,
        };
        self.files.push(file.clone());
        Ok(file)
    }

    /// Writes rank `rank`'s shard of the AdamW moments, covering `flat_range` of the flat
    /// parameter space, as `optimizer-rank-NNNNN.safetensors` (tensors `m` and `v`, and `master` where given), and
    /// records the rank and range in its [`CheckpointFile`].
    pub fn write_optimizer_shard(
        &mut self,
        rank: u32,
        flat_range: std::ops::Range<usize>,
        m: &[f32],
        v: &[f32],
        master: Option<&[f32]>,
        optimizer_step: u64,
    ) -> Result<CheckpointFile, CheckpointError> {
        let shape = [flat_range.len()];
        let mut tensors = vec![
            NamedTensor {
                name: "m",
                shape: &shape,
                values: m,
            },
            NamedTensor {
                name: "v",
                shape: &shape,
                values: v,
            },
        ];
        if let Some(master) = master {
            tensors.push(NamedTensor {
                name: "master",
                shape: &shape,
                values: master,
            });
        }
        let file = self.write_tensor_file(
            &optimizer_shard_file(rank),
            &tensors,
            BTreeMap::from([(OPTIMIZER_STEP_KEY.to_string(), optimizer_step.to_string())]),
        )?;
        let entry = self
            .files
            .last_mut()
            .ok_or_else(|| CheckpointError::Manifest("shard file was not recorded".into()))?;
        entry.rank = Some(rank);
        entry.flat_range = Some([flat_range.start as u64, flat_range.end as u64]);
        Ok(CheckpointFile {
            rank: entry.rank,
            flat_range: entry.flat_range,
            ..file
        })
    }

    /// Commits: writes `manifest` as the commit marker (its format version and step set, its
    /// `files` replaced by this handle's files followed by `other_ranks_files`), renames the
    /// directory into place, then removes committed checkpoints beyond the newest `keep`.
    /// A failure to prune is logged, not returned: the checkpoint is committed by then.
    pub fn commit(
        self,
        manifest: CheckpointManifest,
        other_ranks_files: Vec<CheckpointFile>,
        keep: u32,
    ) -> Result<CommittedCheckpoint, CheckpointError> {
        self.commit_fenced(manifest, other_ranks_files, keep, None)
    }

    /// [`PartialCheckpoint::commit`], first asking `fence` (with the commit marker's SHA-256)
    /// whether it may: a refusal writes no marker and renames nothing
    /// ([`CheckpointError::Refused`]); the partial directory stays for the next writer to
    /// remove (a writer that lost its generation must not touch what the gang may be writing).
    pub fn commit_fenced(
        self,
        mut manifest: CheckpointManifest,
        other_ranks_files: Vec<CheckpointFile>,
        keep: u32,
        fence: Option<&dyn CommitFence>,
    ) -> Result<CommittedCheckpoint, CheckpointError> {
        if keep == 0 {
            return Err(CheckpointError::KeepZero);
        }
        manifest.format_version = FORMAT_VERSION;
        manifest.step = self.step;
        manifest.files = self.files.clone();
        manifest.files.extend(other_ranks_files);
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| CheckpointError::Manifest(format!("cannot encode the manifest: {e}")))?;
        if let Some(fence) = fence {
            fence
                .confirm(self.step, &marker_digest(&json))
                .map_err(|reason| CheckpointError::Refused {
                    step: self.step,
                    reason,
                })?;
        }
        let marker = self.dir.join(COMMIT_MARKER);
        let mut out = File::create(&marker).map_err(|e| CheckpointError::io(&marker, e))?;
        out.write_all(&json)
            .and_then(|()| out.sync_all())
            .map_err(|e| CheckpointError::io(&marker, e))?;
        drop(out);
        sync_dir(&self.dir)?;

        let committed = self.root.join(checkpoint_dir_name(self.step));
        if committed.exists() {
            // An earlier checkpoint of this step (one that failed to verify, or a run
            // restarted from further back): move it aside under a never-loaded name first.
            let aside = self.root.join(format!(
                "{}.replaced{PARTIAL_SUFFIX}",
                checkpoint_dir_name(self.step)
            ));
            if aside.exists() {
                std::fs::remove_dir_all(&aside).map_err(|e| CheckpointError::io(&aside, e))?;
            }
            std::fs::rename(&committed, &aside).map_err(|e| CheckpointError::io(&committed, e))?;
            std::fs::remove_dir_all(&aside).map_err(|e| CheckpointError::io(&aside, e))?;
        }
        std::fs::rename(&self.dir, &committed).map_err(|e| CheckpointError::io(&self.dir, e))?;
        sync_dir(&self.root)?;

        let bytes = manifest.files.iter().map(|f| f.bytes).sum::<u64>() + json.len() as u64;
        let pruned = prune(&self.root, keep).unwrap_or_else(|e| {
            tracing::warn!(root = %self.root.display(), "checkpoint retention failed after commit: {e}");
            Vec::new()
        });
        Ok(CommittedCheckpoint {
            dir: committed,
            manifest,
            bytes,
            pruned,
        })
    }
}

/// Writes a whole checkpoint from one process: `model.safetensors`, `optimizer.safetensors`
/// and the manifest, committed atomically; then keeps the newest `keep` checkpoints. Partial
/// directories left by earlier crashes are removed first.
///
/// `manifest.files` is ignored and filled in; `manifest.step` names the directory.
pub fn write_checkpoint(
    root: &Path,
    manifest: CheckpointManifest,
    tensors: &CheckpointTensors<'_>,
    keep: u32,
) -> Result<CommittedCheckpoint, CheckpointError> {
    write_checkpoint_fenced(root, manifest, tensors, keep, None)
}

/// [`write_checkpoint`], committing only if `fence` confirms ([`PartialCheckpoint::commit_fenced`]).
pub fn write_checkpoint_fenced(
    root: &Path,
    manifest: CheckpointManifest,
    tensors: &CheckpointTensors<'_>,
    keep: u32,
    fence: Option<&dyn CommitFence>,
) -> Result<CommittedCheckpoint, CheckpointError> {
    if keep == 0 {
        return Err(CheckpointError::KeepZero);
    }
    remove_stale_partials(root)?;
    let mut partial = PartialCheckpoint::begin(root, manifest.step)?;
    let written = (|| {
        partial.write_tensor_file(MODEL_FILE, &tensors.model, BTreeMap::new())?;
        partial.write_tensor_file(
            OPTIMIZER_FILE,
            &tensors.optimizer,
            BTreeMap::from([(
                OPTIMIZER_STEP_KEY.to_string(),
                tensors.optimizer_step.to_string(),
            )]),
        )?;
        Ok(())
    })();
    match written {
        Ok(()) => partial.commit_fenced(manifest, Vec::new(), keep, fence),
        Err(e) => {
            // Nothing was committed; leave no partial behind either.
            let _ = std::fs::remove_dir_all(partial.dir());
            Err(e)
        }
    }
}

/// Removes every `step-*.partial` directory under `root`: call it only when no writer is
/// active (at startup, or from the single writer before it begins). Returns what it removed.
pub fn remove_stale_partials(root: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(CheckpointError::io(root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| CheckpointError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("step-") && name.ends_with(PARTIAL_SUFFIX) {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| CheckpointError::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Removes committed checkpoints beyond the newest `keep`, each renamed to a partial name
/// first so a crash mid-removal never leaves a half-deleted "committed" directory.
fn prune(root: &Path, keep: u32) -> Result<Vec<PathBuf>, CheckpointError> {
    let mut committed = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| CheckpointError::io(root, e))? {
        let entry = entry.map_err(|e| CheckpointError::io(root, e))?;
        if let Some(step) = parse_checkpoint_dir_name(&entry.file_name().to_string_lossy()) {
            committed.push((step, entry.path()));
        }
    }
    committed.sort_by_key(|&(step, _)| std::cmp::Reverse(step));
    let mut pruned = Vec::new();
    for (step, path) in committed.into_iter().skip(keep as usize) {
        let doomed = root.join(format!(
            "{}.pruned{PARTIAL_SUFFIX}",
            checkpoint_dir_name(step)
        ));
        std::fs::rename(&path, &doomed).map_err(|e| CheckpointError::io(&path, e))?;
        std::fs::remove_dir_all(&doomed).map_err(|e| CheckpointError::io(&doomed, e))?;
        pruned.push(path);
    }
    if !pruned.is_empty() {
        sync_dir(root)?;
    }
    Ok(pruned)
}

pub(super) fn partial_dir_name(step: u64) -> String {
    format!("{}{PARTIAL_SUFFIX}", checkpoint_dir_name(step))
}

fn check_file_name(file_name: &str) -> Result<(), CheckpointError> {
    let plain = !file_name.is_empty()
        && file_name != "."
        && file_name != ".."
        && file_name != COMMIT_MARKER
        && !file_name.contains(['/', '\\']);
    if plain {
        Ok(())
    } else {
        Err(CheckpointError::BadFileName {
            file: file_name.to_string(),
        })
    }
}

/// fsyncs a written file and returns its size and lower-case hex SHA-256.
fn sync_and_hash(path: &Path) -> Result<(u64, String), CheckpointError> {
    let io = |e| CheckpointError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    file.sync_all().map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Makes a directory's entries (creations, renames) durable.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CheckpointError::io(dir, e))
}

/// An f32 tensor as safetensors sees it.
pub(crate) struct F32View<'a>(pub(crate) NamedTensor<'a>);

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.0.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // safetensors stores little-endian; on little-endian machines the bytes are the
        // values as they lie in memory, so no copy is made.
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(self.0.values))
        } else {
            Cow::Owned(self.0.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }

    fn data_len(&self) -> usize {
        self.0.values.len() * 4
    }
}
