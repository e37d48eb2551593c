//! Verifying one checkpoint directory: the commit marker, the manifest, and every listed
//! file's size and SHA-256, without loading tensors.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_api::checkpoint::{
    COMMIT_MARKER, CheckpointFile, CheckpointManifest, FORMAT_VERSION, PARTIAL_SUFFIX,
    parse_checkpoint_dir_name,
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

/// SHA-256 (hex) of a directory's commit marker as it lies on disk: what the store's commit
/// record of the step names (`tessera_api::records::CheckpointCommit`).
pub fn marker_sha256(dir: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(dir.join(COMMIT_MARKER))?;
    Ok(marker_digest(&bytes))
}

/// SHA-256 (hex) of commit-marker bytes.
pub fn marker_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads and checks a directory's manifest (the commit marker): it parses, has a known
/// version, names the directory's step, and lists only plain file names.
pub fn read_manifest(
    dir: &Path,
    dir_step: Option<u64>,
) -> Result<CheckpointManifest, InvalidReason> {
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

/// Checks a file's measured size and SHA-256 against its manifest entry.
pub fn compare(entry: &CheckpointFile, bytes: u64, sha256: &str) -> Result<(), InvalidReason> {
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
pub fn hash_file(dir: &Path, entry: &CheckpointFile) -> Result<(u64, String), InvalidReason> {
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
pub fn read_verified(dir: &Path, entry: &CheckpointFile) -> Result<Vec<u8>, InvalidReason> {
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
