//! Checkpoint tests: round trips, every way a checkpoint is refused, retention, crashes.

use std::path::Path;

use tessera_api::checkpoint::{
    CheckpointManifest, DataCursor, FORMAT_VERSION, RngState, checkpoint_dir_name,
};
use tessera_api::spec::{ResolvedModel, Sharding, TrainingRunSpec};

use super::background::BackgroundWriter;
use super::*;

fn spec() -> TrainingRunSpec {
    serde_json::from_value(serde_json::json!({
        "model": {"preset": "tiny"},
        "data": {"train": "data/train-*.bin", "tokenizer": "bytes"},
        "training": {"steps": 1000}
    }))
    .expect("a minimal spec parses")
}

fn manifest(step: u64) -> CheckpointManifest {
    CheckpointManifest {
        format_version: FORMAT_VERSION,
        step,
        generation: 3,
        world_size: 1,
        sharding: Sharding::None,
        config: spec(),
        model: ResolvedModel {
            architecture: Default::default(),
            layers: 4,
            heads: 4,
            width: 128,
            context: 128,
            vocab: 256,
            kv_heads: None,
            ffn_width: None,
            head_dim: None,
        },
        parameter_count: 10,
        data_cursor: DataCursor {
            seed: 7,
            next_step: step,
            tokens_seen: step * 4096,
        },
        rng: vec![RngState {
            name: "dropout".into(),
            words: vec![1, 2, 3, 4],
        }],
        files: Vec::new(),
        loss: Some(2.5),
        val_loss: None,
        created_unix_ms: 1_700_000_000_000,
        base: None,
    }
}

/// A flat parameter buffer with two tensors, and AdamW moments, all distinct per step;
/// includes values whose bits must survive exactly.
struct State {
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    step: u64,
}

const WTE_SHAPE: [usize; 2] = [2, 3];
const BIAS_SHAPE: [usize; 1] = [4];

impl State {
    fn new(step: u64) -> State {
        let s = step as f32;
        let mut params: Vec<f32> = (0..10).map(|i| i as f32 * 0.1 + s).collect();
        params[1] = -0.0;
        params[2] = f32::from_bits(0x7FC0_1234); // a NaN with a payload
        params[3] = f32::MIN_POSITIVE / 8.0; // subnormal
        State {
            params,
            m: (0..10).map(|i| i as f32 * -0.01 - s).collect(),
            v: (0..10).map(|i| i as f32 * 0.001 + s).collect(),
            step,
        }
    }

    fn tensors(&self) -> CheckpointTensors<'_> {
        CheckpointTensors {
            model: vec![
                NamedTensor {
                    name: "wte",
                    shape: &WTE_SHAPE,
                    values: &self.params[..6],
                },
                NamedTensor {
                    name: "bias",
                    shape: &BIAS_SHAPE,
                    values: &self.params[6..],
                },
            ],
            optimizer: vec![
                NamedTensor {
                    name: "m.wte",
                    shape: &WTE_SHAPE,
                    values: &self.m[..6],
                },
                NamedTensor {
                    name: "m.bias",
                    shape: &BIAS_SHAPE,
                    values: &self.m[6..],
                },
                NamedTensor {
                    name: "v.wte",
                    shape: &WTE_SHAPE,
                    values: &self.v[..6],
                },
                NamedTensor {
                    name: "v.bias",
                    shape: &BIAS_SHAPE,
                    values: &self.v[6..],
                },
            ],
            optimizer_step: self.step,
        }
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn write(root: &Path, step: u64, keep: u32) -> CommittedCheckpoint {
    let state = State::new(step);
    write_checkpoint(root, manifest(step), &state.tensors(), keep).unwrap()
}

fn assert_is_state(loaded: &LoadedCheckpoint, step: u64) {
    let state = State::new(step);
    assert_eq!(loaded.manifest.step, step);
    assert_eq!(loaded.optimizer_step, step);
    let wte = loaded.model_tensor("wte").unwrap();
    assert_eq!(wte.shape, vec![2, 3]);
    assert_eq!(bits(&wte.values), bits(&state.params[..6]));
    let bias = loaded.model_tensor("bias").unwrap();
    assert_eq!(bias.shape, vec![4]);
    assert_eq!(bits(&bias.values), bits(&state.params[6..]));
    assert_eq!(
        bits(&loaded.optimizer_tensor("m.wte").unwrap().values),
        bits(&state.m[..6])
    );
    assert_eq!(
        bits(&loaded.optimizer_tensor("v.bias").unwrap().values),
        bits(&state.v[6..])
    );
    assert_eq!(loaded.model.len(), 2);
    assert_eq!(loaded.optimizer.len(), 4);
}

fn latest(root: &Path) -> CheckpointScan {
    find_latest_valid(root).unwrap()
}

#[test]
fn write_then_load_round_trips_bitwise() {
    let root = tempfile::tempdir().unwrap();
    let committed = write(root.path(), 100, 3);
    assert_eq!(committed.dir, root.path().join("step-0000000100"));
    let files: Vec<&str> = committed
        .manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(files, vec![MODEL_FILE, OPTIMIZER_FILE]);
    for f in &committed.manifest.files {
        assert_eq!(
            std::fs::metadata(committed.dir.join(&f.path))
                .unwrap()
                .len(),
            f.bytes
        );
        assert_eq!(f.sha256.len(), 64);
    }
    let scan = latest(root.path());
    assert!(scan.skipped.is_empty());
    let loaded = scan.loaded.unwrap();
    assert_is_state(&loaded, 100);
    let mut expected = manifest(100);
    expected.files = committed.manifest.files.clone();
    assert_eq!(loaded.manifest, expected);
    assert!(!root.path().join("step-0000000100.partial").exists());
    // The model file is plain safetensors that other tools can read.
    let bytes = std::fs::read(committed.dir.join(MODEL_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("wte").unwrap().shape(), &[2, 3]);
}

#[test]
fn verify_reports_every_file_and_agrees_with_the_manifest() {
    let root = tempfile::tempdir().unwrap();
    let committed = write(root.path(), 5, 3);
    let report = verify_checkpoint(&committed.dir);
    assert!(report.is_valid(), "{:?}", report.problems);
    assert_eq!(report.step, Some(5));
    assert_eq!(report.files.len(), 2);
    for check in &report.files {
        assert_eq!(check.actual_bytes, Some(check.entry.bytes));
        assert_eq!(
            check.actual_sha256.as_deref(),
            Some(check.entry.sha256.as_str())
        );
        assert!(check.problem.is_none());
    }
}

/// Writes steps 100 and 200, damages 200 with `damage`, and returns the scan.
fn scan_after_damaging_newest(damage: impl FnOnce(&Path)) -> CheckpointScan {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), 100, 5);
    let newest = write(root.path(), 200, 5);
    damage(&newest.dir);
    let scan = latest(root.path());
    let loaded = scan.loaded.as_ref().expect("the older checkpoint loads");
    assert_is_state(loaded, 100);
    assert_eq!(scan.skipped.len(), 1, "{:?}", scan.skipped);
    assert_eq!(scan.skipped[0].dir, newest.dir);
    assert_eq!(scan.skipped[0].step, Some(200));
    scan
}

#[test]
fn truncated_file_is_skipped_with_sizes_in_the_reason() {
    let scan = scan_after_damaging_newest(|dir| {
        let path = dir.join(MODEL_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 10).unwrap();
    });
    let reason = &scan.skipped[0].reason;
    assert!(
        matches!(reason, InvalidReason::Truncated { .. }),
        "{reason}"
    );
    let text = reason.to_string();
    assert!(
        text.starts_with("truncated: model.safetensors is "),
        "{text}"
    );
    assert!(text.contains("manifest says"), "{text}");
}

#[test]
fn bit_flipped_file_is_skipped_as_a_checksum_mismatch() {
    let scan = scan_after_damaging_newest(|dir| {
        let path = dir.join(OPTIMIZER_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    });
    let reason = &scan.skipped[0].reason;
    assert!(
        matches!(reason, InvalidReason::ChecksumMismatch { path, .. } if path == OPTIMIZER_FILE),
        "{reason}"
    );
    assert!(reason.to_string().starts_with("checksum mismatch"));
}

#[test]
fn checkpoint_without_commit_marker_is_skipped() {
    let scan = scan_after_damaging_newest(|dir| {
        std::fs::remove_file(dir.join("manifest.json")).unwrap();
    });
    assert_eq!(scan.skipped[0].reason, InvalidReason::NoCommitMarker);
    assert_eq!(
        scan.skipped[0].reason.to_string(),
        "no commit marker (manifest.json)"
    );
}

#[test]
fn missing_file_garbled_manifest_and_unknown_version_are_skipped() {
    let scan =
        scan_after_damaging_newest(|dir| std::fs::remove_file(dir.join(MODEL_FILE)).unwrap());
    assert!(matches!(
        scan.skipped[0].reason,
        InvalidReason::MissingFile { .. }
    ));

    let scan =
        scan_after_damaging_newest(|dir| std::fs::write(dir.join("manifest.json"), "{").unwrap());
    assert!(matches!(
        scan.skipped[0].reason,
        InvalidReason::BadManifest(_)
    ));

    let scan = scan_after_damaging_newest(|dir| {
        let path = dir.join("manifest.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["formatVersion"] = serde_json::json!(99);
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    });
    assert_eq!(
        scan.skipped[0].reason,
        InvalidReason::UnknownFormat { found: 99 }
    );

    let scan = scan_after_damaging_newest(|dir| {
        let path = dir.join("manifest.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["files"][0]["path"] = serde_json::json!("../../etc/passwd");
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    });
    assert!(matches!(
        scan.skipped[0].reason,
        InvalidReason::UnsafePath { .. }
    ));
}

#[test]
fn partial_directory_is_never_loaded_and_is_cleaned_on_the_next_write() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), 100, 5);
    // A crash after the files were written and even after the manifest, before the rename.
    let mut partial = PartialCheckpoint::begin(root.path(), 200).unwrap();
    let state = State::new(200);
    partial
        .write_tensor_file(MODEL_FILE, &state.tensors().model, Default::default())
        .unwrap();
    let partial_dir = partial.dir().to_path_buf();
    std::fs::write(partial_dir.join("manifest.json"), "{}").unwrap();
    drop(partial);

    let scan = latest(root.path());
    assert_is_state(scan.loaded.as_ref().unwrap(), 100);
    assert_eq!(scan.skipped.len(), 1);
    assert_eq!(scan.skipped[0].reason, InvalidReason::Partial);
    assert_eq!(scan.skipped[0].dir, partial_dir);
    let report = verify_checkpoint(&partial_dir);
    assert!(report.problems.contains(&InvalidReason::Partial));
    // Scanning is read-only; the next write removes the leftover.
    assert!(partial_dir.exists());
    write(root.path(), 300, 5);
    assert!(!partial_dir.exists());
    assert_is_state(latest(root.path()).loaded.as_ref().unwrap(), 300);
}

#[test]
fn a_crash_at_every_stage_of_a_write_never_yields_a_half_checkpoint() {
    // Replay a write of step 200 stage by stage, "crashing" after each: until the rename the
    // scan returns step 100 whole (the old set); once committed, step 200 whole.
    let state = State::new(200);
    for stage in 0..=4 {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), 100, 5);
        let expected_step = if stage == 4 {
            write(root.path(), 200, 5);
            200
        } else {
            let mut partial = PartialCheckpoint::begin(root.path(), 200).unwrap();
            if stage >= 1 {
                partial
                    .write_tensor_file(MODEL_FILE, &state.tensors().model, Default::default())
                    .unwrap();
            }
            if stage >= 2 {
                // A torn write of the second file: half its bytes reached the disk.
                partial
                    .write_tensor_file(
                        OPTIMIZER_FILE,
                        &state.tensors().optimizer,
                        Default::default(),
                    )
                    .unwrap();
                let path = partial.dir().join(OPTIMIZER_FILE);
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            }
            if stage >= 3 {
                // The manifest is durable but the rename never happened.
                let mut m = manifest(200);
                m.files = partial.files().to_vec();
                std::fs::write(
                    partial.dir().join("manifest.json"),
                    serde_json::to_vec(&m).unwrap(),
                )
                .unwrap();
            }
            100
        };
        let scan = latest(root.path());
        let loaded = scan.loaded.as_ref().expect("a checkpoint always loads");
        assert_is_state(loaded, expected_step);
        if stage < 4 {
            assert_eq!(scan.skipped.len(), 1, "stage {stage}: {:?}", scan.skipped);
            assert_eq!(scan.skipped[0].reason, InvalidReason::Partial);
        }
    }
}

#[test]
fn retention_keeps_exactly_the_newest_n() {
    let root = tempfile::tempdir().unwrap();
    let mut last = None;
    for step in [10, 20, 30, 40, 50] {
        last = Some(write(root.path(), step, 3));
    }
    assert_eq!(
        last.unwrap().pruned,
        vec![root.path().join(checkpoint_dir_name(20))]
    );
    let mut names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["step-0000000030", "step-0000000040", "step-0000000050"]
    );
    let listed: Vec<u64> = list_checkpoints(root.path())
        .unwrap()
        .iter()
        .map(|l| l.step)
        .collect();
    assert_eq!(listed, vec![50, 40, 30]);
    assert!(
        list_checkpoints(root.path())
            .unwrap()
            .iter()
            .all(|l| l.committed && l.bytes > 0)
    );
    assert!(matches!(
        write_checkpoint(root.path(), manifest(60), &State::new(60).tensors(), 0),
        Err(CheckpointError::KeepZero)
    ));
}

#[test]
fn rewriting_a_step_replaces_the_old_directory() {
    let root = tempfile::tempdir().unwrap();
    let first = write(root.path(), 100, 5);
    std::fs::remove_file(first.dir.join(MODEL_FILE)).unwrap();
    write(root.path(), 100, 5);
    let scan = latest(root.path());
    assert!(scan.skipped.is_empty());
    assert_is_state(scan.loaded.as_ref().unwrap(), 100);
}

#[test]
fn empty_or_missing_root_has_no_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let scan = latest(root.path());
    assert!(scan.loaded.is_none() && scan.skipped.is_empty());
    let scan = latest(&root.path().join("never-created"));
    assert!(scan.loaded.is_none() && scan.skipped.is_empty());
    assert!(
        list_checkpoints(&root.path().join("never-created"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn bad_tensor_input_is_a_typed_error_and_leaves_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let values = [1.0f32, 2.0, 3.0];
    let wrong_shape = CheckpointTensors {
        model: vec![NamedTensor {
            name: "w",
            shape: &[2, 2],
            values: &values,
        }],
        optimizer: vec![],
        optimizer_step: 0,
    };
    let err = write_checkpoint(root.path(), manifest(1), &wrong_shape, 2).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::ShapeMismatch {
                elements: 4,
                values: 3,
                ..
            }
        ),
        "{err}"
    );
    let twice = CheckpointTensors {
        model: vec![
            NamedTensor {
                name: "w",
                shape: &[3],
                values: &values,
            },
            NamedTensor {
                name: "w",
                shape: &[3],
                values: &values,
            },
        ],
        optimizer: vec![],
        optimizer_step: 0,
    };
    let err = write_checkpoint(root.path(), manifest(1), &twice, 2).unwrap_err();
    assert!(
        matches!(err, CheckpointError::DuplicateTensor { .. }),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    let mut partial = PartialCheckpoint::begin(root.path(), 2).unwrap();
    assert!(matches!(
        partial.write_tensor_file("../escape.safetensors", &[], Default::default()),
        Err(CheckpointError::BadFileName { .. })
    ));
}

#[test]
fn background_writer_commits_and_reports_in_order() {
    let root = tempfile::tempdir().unwrap();
    let mut writer = BackgroundWriter::new(root.path(), 2).unwrap();
    assert!(writer.poll().unwrap().is_none());
    let first = CheckpointSnapshot::capture(&State::new(10).tensors());
    assert!(writer.submit(manifest(10), first).unwrap().is_none());
    assert_eq!(writer.in_flight_step(), Some(10));
    let second = CheckpointSnapshot::capture(&State::new(20).tensors());
    let previous = writer
        .submit(manifest(20), second)
        .unwrap()
        .expect("step 10 finished");
    assert_eq!(previous.manifest.step, 10);
    let done = writer.wait().unwrap().expect("step 20 finished");
    assert_eq!(done.manifest.step, 20);
    assert!(writer.wait().unwrap().is_none());
    assert_is_state(latest(root.path()).loaded.as_ref().unwrap(), 20);
}

#[test]
fn background_write_errors_are_returned_not_lost() {
    let root = tempfile::tempdir().unwrap();
    // A file where the checkpoint root should be: every write fails.
    let blocked = root.path().join("blocked");
    std::fs::write(&blocked, "not a directory").unwrap();
    let mut writer = BackgroundWriter::new(&blocked, 2).unwrap();
    writer
        .submit(
            manifest(10),
            CheckpointSnapshot::capture(&State::new(10).tensors()),
        )
        .unwrap();
    let err = loop {
        match writer.poll() {
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Ok(Some(c)) => panic!("write into a file succeeded: {c:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    assert!(err.to_string().contains("blocked"), "{err}");
    // Submitting after a failure that was not yet collected returns that failure.
    writer
        .submit(
            manifest(20),
            CheckpointSnapshot::capture(&State::new(20).tensors()),
        )
        .unwrap();
    let next = writer.submit(
        manifest(30),
        CheckpointSnapshot::capture(&State::new(30).tensors()),
    );
    assert!(next.is_err());
    assert_eq!(writer.in_flight_step(), None);
}

#[test]
fn master_weights_round_trip_in_single_and_sharded_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let state = State::new(5);
    let master: Vec<f32> = (0..10).map(|i| 1.0 + i as f32 * 1e-7).collect();
    let names = [("wte", 0..6), ("bias", 6..10)];

    // One process: master.<tensor> beside m.<tensor> and v.<tensor>.
    let mut tensors = state.tensors();
    tensors.optimizer.push(NamedTensor {
        name: "master.wte",
        shape: &WTE_SHAPE,
        values: &master[..6],
    });
    tensors.optimizer.push(NamedTensor {
        name: "master.bias",
        shape: &BIAS_SHAPE,
        values: &master[6..],
    });
    let single = dir.path().join("single");
    let done = write_checkpoint(&single, manifest(5), &tensors, 1).unwrap();
    let flat = flat_optimizer_state(&load_checkpoint(&done.dir).unwrap(), &names, 10).unwrap();
    assert_eq!(bits(&flat.m), bits(&state.m));
    assert_eq!(bits(flat.master.as_deref().unwrap()), bits(&master));

    // Without masters (the CPU backend's checkpoints) there are none to restore.
    let plain =
        write_checkpoint(&dir.path().join("plain"), manifest(5), &state.tensors(), 1).unwrap();
    let flat = flat_optimizer_state(&load_checkpoint(&plain.dir).unwrap(), &names, 10).unwrap();
    assert_eq!(flat.master, None);

    // Two ranks: each shard carries its range of the masters.
    let sharded = dir.path().join("sharded");
    let mut partial = PartialCheckpoint::begin(&sharded, 5).unwrap();
    partial
        .write_tensor_file(MODEL_FILE, &state.tensors().model, Default::default())
        .unwrap();
    for (rank, range) in [(0u32, 0..4usize), (1, 4..10)] {
        partial
            .write_optimizer_shard(
                rank,
                range.clone(),
                &state.m[range.clone()],
                &state.v[range.clone()],
                Some(&master[range]),
                5,
            )
            .unwrap();
    }
    let mut sharded_manifest = manifest(5);
    sharded_manifest.world_size = 2;
    let done = partial.commit(sharded_manifest, Vec::new(), 1).unwrap();
    let loaded = load_checkpoint(&done.dir).unwrap();
    assert_eq!(loaded.optimizer_shards.len(), 2);
    let flat = flat_optimizer_state(&loaded, &names, 10).unwrap();
    assert_eq!(bits(&flat.v), bits(&state.v));
    assert_eq!(bits(flat.master.as_deref().unwrap()), bits(&master));
}

/// A fence that grants the steps in `allow` and records what it was asked.
struct Fence {
    allow: Vec<u64>,
    asked: std::sync::Mutex<Vec<(u64, String)>>,
}

impl CommitFence for Fence {
    fn confirm(&self, step: u64, marker_sha256: &str) -> Result<(), String> {
        self.asked
            .lock()
            .unwrap()
            .push((step, marker_sha256.to_string()));
        if self.allow.contains(&step) {
            Ok(())
        } else {
            Err(format!("generation 1 ended; step {step} is not ours"))
        }
    }
}

#[test]
fn a_refused_commit_writes_no_marker_and_renames_nothing() {
    let root = tempfile::tempdir().unwrap();
    let fence = std::sync::Arc::new(Fence {
        allow: vec![10],
        asked: Default::default(),
    });
    let state = State::new(10);
    let done = write_checkpoint_fenced(
        root.path(),
        manifest(10),
        &state.tensors(),
        2,
        Some(&*fence),
    )
    .unwrap();
    // The fence was asked with the SHA-256 of the marker exactly as it lies on disk.
    let on_disk = tessera_checkpoint::marker_sha256(&done.dir).unwrap();
    assert_eq!(fence.asked.lock().unwrap()[0], (10, on_disk));

    // Refused in the background: an error naming the step and the reason, no step-20
    // directory, no marker anywhere but step 10's; the newest checkpoint is still step 10.
    let mut writer = BackgroundWriter::new(root.path(), 2)
        .unwrap()
        .with_fence(Some(fence.clone() as std::sync::Arc<dyn CommitFence>));
    writer
        .submit(
            manifest(20),
            CheckpointSnapshot::capture(&State::new(20).tensors()),
        )
        .unwrap();
    let err = writer.wait().unwrap_err();
    assert!(
        matches!(err, CheckpointError::Refused { step: 20, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("is not ours"), "{err}");
    assert!(!root.path().join(checkpoint_dir_name(20)).exists());
    let partial = root.path().join(format!(
        "{}{}",
        checkpoint_dir_name(20),
        tessera_api::checkpoint::PARTIAL_SUFFIX
    ));
    assert!(
        !partial
            .join(tessera_api::checkpoint::COMMIT_MARKER)
            .exists()
    );
    assert_is_state(latest(root.path()).loaded.as_ref().unwrap(), 10);
}
