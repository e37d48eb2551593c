//! Hand-made checkpoint directories for tests, here and in the crates that pick checkpoints
//! (the agent): a minimal manifest, and a committed directory of one file.

use std::path::Path;

use sha2::{Digest, Sha256};
use tessera_api::checkpoint::{
    COMMIT_MARKER, CheckpointFile, CheckpointManifest, DataCursor, FORMAT_VERSION,
    checkpoint_dir_name,
};
use tessera_api::spec::{ResolvedModel, Sharding, TrainingRunSpec};

/// A manifest of a one-layer `tiny` run at `step`, listing `files`.
pub fn manifest(step: u64, files: Vec<CheckpointFile>) -> CheckpointManifest {
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

/// A committed checkpoint of one file holding `contents`, generation 1.
pub fn committed(root: &Path, step: u64, contents: &[u8]) -> std::path::PathBuf {
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
