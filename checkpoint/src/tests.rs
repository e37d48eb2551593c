//! Listing and verification on hand-made checkpoint directories (the trainer's tests cover
//! the directories its writer makes).

use std::path::Path;

use sha2::{Digest, Sha256};
use tessera_api::checkpoint::{
    COMMIT_MARKER, CheckpointFile, CheckpointManifest, DataCursor, FORMAT_VERSION,
    checkpoint_dir_name,
};
use tessera_api::spec::{ResolvedModel, Sharding, TrainingRunSpec};

use super::*;

fn manifest(step: u64, files: Vec<CheckpointFile>) -> CheckpointManifest {
    let config: TrainingRunSpec = serde_json::from_value(serde_json::json!({
        "model": {"preset": "tiny"},
        "data": {"train": "data/train-*.bin", "tokenizer": "bytes"},
        "training": {"steps": 100}
    }))
    .expect("a minimal spec parses");
    CheckpointManifest {
        format_version: FORMAT_VERSION,
        step,
        generation: 1,
        world_size: 1,
        sharding: Sharding::None,
        config,
        model: ResolvedModel {
            architecture: Default::default(),
            layers: 1,
            heads: 1,
            width: 8,
            context: 8,
            vocab: 256,
            kv_heads: None,
            ffn_width: None,
            head_dim: None,
        },
        parameter_count: 1,
        data_cursor: DataCursor {
            seed: 1,
            next_step: step,
            tokens_seen: 0,
        },
        rng: Vec::new(),
        files,
        loss: None,
        val_loss: None,
        created_unix_ms: 0,
        base: None,
    }
}

/// A committed checkpoint of one file holding `contents`.
fn committed(root: &Path, step: u64, contents: &[u8]) -> std::path::PathBuf {
    let dir = root.join(checkpoint_dir_name(step));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), contents).unwrap();
    let entry = CheckpointFile {
        path: "model.safetensors".into(),
        bytes: contents.len() as u64,
        sha256: hex::encode(Sha256::digest(contents)),
        rank: None,
        flat_range: None,
    };
    let json = serde_json::to_vec(&manifest(step, vec![entry])).unwrap();
    std::fs::write(dir.join(COMMIT_MARKER), json).unwrap();
    dir
}

#[test]
fn listing_orders_newest_first_and_tells_committed_from_not() {
    let root = tempfile::tempdir().unwrap();
    assert!(
        list_checkpoints(&root.path().join("never-created"))
            .unwrap()
            .is_empty()
    );
    committed(root.path(), 10, b"ten");
    committed(root.path(), 30, b"thirty");
    // Uncommitted: no marker, and a partial directory.
    std::fs::create_dir_all(root.path().join(checkpoint_dir_name(20))).unwrap();
    let partial = format!("{}.partial", checkpoint_dir_name(40));
    std::fs::create_dir_all(root.path().join(&partial)).unwrap();
    let listed: Vec<(u64, bool, u64)> = list_checkpoints(root.path())
        .unwrap()
        .iter()
        .map(|c| (c.step, c.committed, c.bytes))
        .collect();
    assert_eq!(
        listed,
        [(40, false, 0), (30, true, 6), (20, false, 0), (10, true, 3)]
    );
}

#[test]
fn verification_checks_the_marker_sizes_and_checksums() {
    let root = tempfile::tempdir().unwrap();
    let dir = committed(root.path(), 10, b"weights");
    let report = verify_checkpoint(&dir);
    assert!(report.is_valid(), "{:?}", report.problems);
    assert_eq!(report.step, Some(10));
    assert_eq!(report.files.len(), 1);

    std::fs::write(dir.join("model.safetensors"), b"weighTs").unwrap();
    let report = verify_checkpoint(&dir);
    assert!(matches!(
        report.problems.as_slice(),
        [InvalidReason::ChecksumMismatch { .. }]
    ));
    std::fs::write(dir.join("model.safetensors"), b"weigh").unwrap();
    assert!(matches!(
        verify_checkpoint(&dir).problems.as_slice(),
        [InvalidReason::Truncated { .. }]
    ));

    let unmarked = root.path().join(checkpoint_dir_name(20));
    std::fs::create_dir_all(&unmarked).unwrap();
    assert_eq!(
        verify_checkpoint(&unmarked).problems,
        [InvalidReason::NoCommitMarker]
    );
    // A manifest for another step than its directory's.
    let moved = root.path().join(checkpoint_dir_name(30));
    std::fs::rename(&dir, &moved).unwrap();
    assert!(matches!(
        verify_checkpoint(&moved).problems.as_slice(),
        [InvalidReason::StepMismatch {
            dir_step: 30,
            manifest_step: 10
        }]
    ));
}
