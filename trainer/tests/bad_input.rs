//! Bad input to `tessera-trainer` exits non-zero with a message naming the problem, never a
//! panic: unknown preset, heads not dividing width, a missing, empty or foreign shard, and a
//! model vocabulary smaller than the data's.

use std::{path::Path, process::Command};

use tessera_api::spec::Tokenizer;
use tessera_trainer::data::prepare::{PrepareOptions, prepare};

const MANIFEST: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: bad-input
spec:
  model: {layers: 1, heads: 2, width: 16, context: 16}
  data: {train: data/train-*.bin, tokenizer: bytes}
  optimizer: {globalBatchTokens: 32, microBatch: 2}
  training: {steps: 2}
"#;

/// Runs the trainer on `manifest` in `dir`; returns (exit code, stderr).
fn run(dir: &Path, manifest: &str) -> (Option<i32>, String) {
    std::fs::write(dir.join("run.yaml"), manifest).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-trainer"))
        .arg("--config")
        .arg(dir.join("run.yaml"))
        .arg("--base-dir")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs, expects exit 1 with every phrase in stderr, and returns stderr.
fn assert_refused(dir: &Path, manifest: &str, expected: &[&str]) -> String {
    let (code, stderr) = run(dir, manifest);
    assert_eq!(code, Some(1), "expected exit 1:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for phrase in expected {
        assert!(
            stderr.contains(phrase),
            "stderr lacks {phrase:?}:\n{stderr}"
        );
    }
    stderr
}

fn with_shard(bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/train-000000.bin"), bytes).unwrap();
    dir
}

#[test]
fn an_unknown_preset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = MANIFEST.replace(
        "{layers: 1, heads: 2, width: 16, context: 16}",
        "{preset: gpt5}",
    );
    assert_refused(dir.path(), &manifest, &["spec.model.preset", "gpt5"]);
}

#[test]
fn heads_that_do_not_divide_width_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = MANIFEST.replace("heads: 2", "heads: 3");
    assert_refused(
        dir.path(),
        &manifest,
        &["spec.model.heads", "must divide model.width"],
    );
}

#[test]
fn a_missing_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        MANIFEST,
        &["spec.data", "train-*.bin", "tessera data prepare"],
    );
}

#[test]
fn an_empty_shard_is_refused() {
    // A well-formed header (magic, version 1, u16 tokens, 0 tokens, vocab 256) and no tokens.
    let mut header = Vec::new();
    header.extend_from_slice(b"TSRSHARD");
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&2u32.to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes());
    header.extend_from_slice(&256u32.to_le_bytes());
    header.resize(64, 0);
    let dir = with_shard(&header);
    assert_refused(dir.path(), MANIFEST, &["train-000000.bin", "empty"]);
}

#[test]
fn a_shard_with_the_wrong_magic_is_refused() {
    let dir = with_shard(&[b'x'; 200]);
    let stderr = assert_refused(
        dir.path(),
        MANIFEST,
        &["train-000000.bin", "not a Tessera token shard"],
    );
    // The cause is said once, not repeated by each error layer that wraps it.
    assert_eq!(
        stderr.matches("not a Tessera token shard").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_vocabulary_smaller_than_the_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("text.txt");
    std::fs::write(
        &input,
        "tokens from the GPT-2 vocabulary do not fit in 256 ids ".repeat(20),
    )
    .unwrap();
    prepare(&PrepareOptions::new(
        Tokenizer::Gpt2,
        dir.path().join("data"),
        vec![input],
    ))
    .unwrap();
    assert_refused(dir.path(), MANIFEST, &["spec.model.vocab", "50257"]);
}
