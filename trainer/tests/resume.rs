//! The trainer binary end to end: a run killed mid-way and resumed ends with bit-identical
//! weights, and corrupt or uncommitted checkpoints are skipped for the previous good one.
//! Under a supervisor the run loads exactly the checkpoint it was handed.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tessera_api::manifest::parse_training_run_with;
use tessera_trainer::{
    backend::cpu::CpuBackend,
    collective::Solo,
    hook::{ResumeFrom, RunHook, Unsupervised},
    run::{RunOptions, RunSummary, train_ranked},
};

mod common;

const MANIFEST: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: resume-test
spec:
  model: {layers: 2, heads: 2, width: 32, context: 32}
  data: {train: data/train-*.bin, validation: data/val-*.bin, tokenizer: bytes}
  optimizer: {lr: 0.003, warmupSteps: 5, globalBatchTokens: 256, microBatch: 4}
  training: {steps: 60, seed: 7, evalInterval: 20, evalBatches: 2}
  checkpoint: {path: checkpoints, everySteps: 10, keep: 3}
"#;

/// A run directory with the manifest and byte-level shards of a generated text.
fn run_dir() -> tempfile::TempDir {
    common::run_dir_with(MANIFEST)
}

fn train(dir: &Path) -> (Json, String) {
    common::train(dir)
}

fn checkpoint(dir: &Path, step: u64) -> PathBuf {
    dir.join("checkpoints")
        .join(tessera_api::checkpoint::checkpoint_dir_name(step))
}

#[test]
fn a_killed_run_resumes_bit_identically() {
    let straight = run_dir();
    let (uninterrupted, _) = train(straight.path());
    assert_eq!(uninterrupted["resumedFrom"], Json::Null);

    let dir = run_dir();
    common::kill_after_checkpoint(dir.path(), 20);
    assert!(
        !checkpoint(dir.path(), 60).exists(),
        "the killed run must not have finished"
    );

    let (resumed, log) = train(dir.path());
    let from = resumed["resumedFrom"]
        .as_u64()
        .expect("the second run resumed");
    assert!((20..60).contains(&from), "resumed from {from}");
    assert!(log.contains("resumed from checkpoint"), "{log}");
    assert_eq!(
        resumed["weightsSha256"], uninterrupted["weightsSha256"],
        "weights differ after resume"
    );
    assert_eq!(resumed["finalValLoss"], uninterrupted["finalValLoss"]);
}

/// Damages the newest checkpoint (step 30) of a 30-step run, reruns, and checks the run
/// resumed from step 20, said why it skipped 30, and still ends with the same weights.
fn skips_damaged_checkpoint(damage: impl Fn(&Path), reason: &str) {
    let dir = run_dir();
    let yaml = MANIFEST
        .replace("steps: 60", "steps: 30")
        .replace("evalInterval: 20", "evalInterval: 10");
    std::fs::write(dir.path().join("run.yaml"), &yaml).unwrap();
    let (first, _) = train(dir.path());
    damage(&checkpoint(dir.path(), 30));
    let (second, log) = train(dir.path());
    assert!(
        log.contains("skipping checkpoint") && log.contains(reason),
        "expected a log line skipping step 30 for {reason:?}:\n{log}"
    );
    assert_eq!(second["resumedFrom"], 20, "{log}");
    assert_eq!(second["weightsSha256"], first["weightsSha256"]);
}

#[test]
fn a_truncated_checkpoint_is_skipped() {
    skips_damaged_checkpoint(
        |dir| {
            let file = dir.join("model.safetensors");
            let len = std::fs::metadata(&file).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        },
        "truncated: model.safetensors",
    );
}

#[test]
fn a_bit_flipped_checkpoint_is_skipped() {
    skips_damaged_checkpoint(
        |dir| {
            let file = dir.join("optimizer.safetensors");
            let mut bytes = std::fs::read(&file).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x10;
            std::fs::write(&file, bytes).unwrap();
        },
        "checksum mismatch: optimizer.safetensors",
    );
}

#[test]
fn an_uncommitted_checkpoint_is_skipped() {
    skips_damaged_checkpoint(
        |dir| std::fs::remove_file(dir.join(tessera_api::checkpoint::COMMIT_MARKER)).unwrap(),
        "no commit marker",
    );
}

/// A supervisor that hands the run a fixed resume decision, as an agent does.
struct Handed(ResumeFrom);

impl RunHook for Handed {
    fn resume_from(&self) -> ResumeFrom {
        self.0.clone()
    }
}

fn train_with(dir: &Path, steps: u64, hook: &mut dyn RunHook) -> RunSummary {
    let yaml = std::fs::read_to_string(dir.join("run.yaml")).unwrap();
    let set = |s: String| s.parse().unwrap();
    let run = parse_training_run_with(&yaml, &[set(format!("training.steps={steps}"))]).unwrap();
    let options = RunOptions::new(dir, "handed");
    train_ranked(
        CpuBackend::<f32>::new(),
        &run,
        &options,
        Box::new(Solo),
        hook,
    )
    .unwrap()
}

#[test]
fn a_supervised_run_loads_exactly_the_checkpoint_it_was_handed() {
    let dir = run_dir();
    train_with(dir.path(), 30, &mut Unsupervised);
    for step in [10, 20, 30] {
        assert!(checkpoint(dir.path(), step).join("manifest.json").is_file());
    }
    // Not the newest (30): the one the supervisor verified and handed down.
    let from_10 = train_with(
        dir.path(),
        40,
        &mut Handed(ResumeFrom::Checkpoint(checkpoint(dir.path(), 10))),
    );
    assert_eq!(from_10.resumed_from, Some(10));
    // The supervisor found nothing to resume: the run starts over although checkpoints exist.
    let fresh_dir = run_dir();
    train_with(fresh_dir.path(), 20, &mut Unsupervised);
    let fresh = train_with(fresh_dir.path(), 20, &mut Handed(ResumeFrom::Fresh));
    assert_eq!(fresh.resumed_from, None);
    assert_eq!(fresh.steps, 20);
    // Standalone, the run scans for the newest committed checkpoint (40, written above).
    let scanned = train_with(dir.path(), 50, &mut Unsupervised);
    assert_eq!(scanned.resumed_from, Some(40));
}
