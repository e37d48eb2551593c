//! A Llama-family model from a Hugging Face directory through the whole trainer: fine-tuned
//! on 2 ranks with ZeRO-1, exported as a Hugging Face directory whose weights read back
//! identical and whose tensor names and config.json are what transformers writes for the same
//! model (the recorded fixture), and a killed run resuming bit-identically.
//!
//! The model is the recorded fixture `llama-gqa` (2 layers, width 64, 4 query heads over 2
//! key/value heads, llama3 RoPE scaling, a 384-token BPE tokenizer); the run tokenizes a text
//! with that tokenizer.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_json::Value as Json;
use tessera_trainer::{
    checkpoint::load_checkpoint,
    export::{ExportOptions, export_hf},
    llama::{LlamaConfig, LlamaWeights},
    run::RunSummary,
};

mod common;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn manifest(steps: u64) -> String {
    format!(
        r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: llama-test
spec:
  model: {{from: {}, context: 32}}
  data: {{train: corpus.txt, validationFraction: 0.1}}
  optimizer: {{lr: 0.003, warmupSteps: 2, globalBatchTokens: 256, microBatch: 4}}
  training: {{steps: {steps}, seed: 5, evalInterval: 0}}
  parallelism: {{sharding: optimizer}}
  checkpoint: {{path: checkpoints, everySteps: 3, keep: 10, async: false}}
"#,
        fixture("llama-gqa").display()
    )
}

/// A run directory with a generated English-like text (the fixture's tokenizer was trained on
/// Shakespeare, so plain words tokenize into short pieces).
fn run_dir(steps: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let words = [
        "the", "king", "shall", "come", "to", "our", "house", "and", "speak", "with", "thee",
        "good", "night", "my", "lord",
    ];
    let mut state = 99u64;
    let mut text = String::new();
    while text.len() < 40_000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(words[(state >> 33) as usize % words.len()]);
        text.push(if (state >> 20).is_multiple_of(7) {
            '\n'
        } else {
            ' '
        });
    }
    std::fs::write(dir.path().join("corpus.txt"), text).unwrap();
    std::fs::write(dir.path().join("run.yaml"), manifest(steps)).unwrap();
    dir
}

/// Trains the run in `dir` on `world` ranks (threads on a loopback ring).
fn gang(dir: &Path, world: u32, overrides: &[&str]) -> Vec<RunSummary> {
    common::gang(dir, world, overrides, u64::MAX)
}

/// [`gang`], stopped by the supervisor after step `stop_after`.
fn gang_until(dir: &Path, world: u32, overrides: &[&str], stop_after: u64) -> Vec<RunSummary> {
    common::gang(dir, world, overrides, stop_after)
}

fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join("checkpoints")
        .join(tessera_api::checkpoint::checkpoint_dir_name(step))
}

/// Every Hugging Face tensor of the directory, by name.
fn hf_tensors(dir: &Path) -> BTreeMap<String, tessera_trainer::llama::weights::Tensor> {
    let config = LlamaConfig::from_dir(dir).unwrap();
    LlamaWeights::read(dir, &config).unwrap().into_tensors()
}

#[test]
fn a_fine_tune_on_two_ranks_exports_a_directory_transformers_would_write() {
    let dir = run_dir(6);
    let summaries = gang(dir.path(), 2, &[]);
    assert_eq!(summaries[0].steps, 6);
    let first = summaries[0].final_loss.unwrap();
    assert!(first.is_finite(), "loss {first}");

    let checkpoint = load_checkpoint(&step_dir(dir.path(), 6)).unwrap();
    assert_eq!(
        checkpoint.manifest.model.architecture,
        tessera_api::spec::Architecture::Llama
    );
    let out = dir.path().join("hf");
    let exported = export_hf(&checkpoint, &out, ExportOptions::default()).unwrap();
    assert_eq!(exported.architecture, "LlamaForCausalLM");
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        assert!(out.join(file).is_file(), "{file} missing: {exported:?}");
    }

    // The weights read back exactly as the checkpoint holds them, and they moved away from
    // the starting point.
    let trained = hf_tensors(&out);
    let start = hf_tensors(&fixture("llama-gqa"));
    assert_eq!(
        trained.keys().collect::<Vec<_>>(),
        start.keys().collect::<Vec<_>>()
    );
    let by_name: BTreeMap<_, _> = checkpoint
        .model
        .iter()
        .map(|t| (t.name.as_str(), &t.values))
        .collect();
    let q = &trained["model.layers.1.self_attn.q_proj.weight"].values;
    let stacked = by_name["q_proj"];
    assert_eq!(
        q.as_slice(),
        &stacked[stacked.len() / 2..],
        "layer 1's q_proj"
    );
    assert_eq!(
        &trained["lm_head.weight"].values, by_name["lm_head"],
        "lm_head"
    );
    assert_ne!(
        trained["model.layers.0.mlp.down_proj.weight"].values,
        start["model.layers.0.mlp.down_proj.weight"].values,
        "training changed nothing"
    );

    // Tensor names, shapes and dtypes: what transformers wrote for this model.
    let recorded: Json = serde_json::from_slice(
        &std::fs::read(fixture("llama-gqa").join("tensor_names.json")).unwrap(),
    )
    .unwrap();
    let want: BTreeMap<String, Json> = recorded["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t["shape"].clone()))
        .collect();
    let got: BTreeMap<String, Json> = trained
        .iter()
        .map(|(name, t)| (name.clone(), serde_json::json!(t.shape)))
        .collect();
    assert_eq!(got, want, "tensor names and shapes");

    // config.json: every key transformers 4.55 wrote for this model (the form read by 4.x, 5.x
    // and vLLM, see verification.json), with its value, except
    // the ones that only record the writer (version, and defaults we leave to the reader).
    let written: Json =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let reference: Json = serde_json::from_slice(
        &std::fs::read(fixture("llama-gqa").join("config.v4.55.json")).unwrap(),
    )
    .unwrap();
    let writer_only = [
        "transformers_version",
        "initializer_range",
        "pretraining_tp",
        "use_cache",
    ];
    for (key, value) in reference.as_object().unwrap() {
        if writer_only.contains(&key.as_str()) {
            continue;
        }
        assert_eq!(written.get(key), Some(value), "config.json {key}");
    }

    // bf16, sharded: the same names; the values are the f32 ones rounded.
    let sharded = dir.path().join("hf-bf16");
    let exported = export_hf(
        &checkpoint,
        &sharded,
        ExportOptions {
            dtype: tessera_api::llama_config::WeightDtype::BF16,
            max_shard_bytes: 100_000,
            merged: false,
        },
    )
    .unwrap();
    assert!(
        exported
            .files
            .contains(&"model.safetensors.index.json".to_string())
            && exported
                .files
                .iter()
                .any(|f| f.ends_with("-of-00003.safetensors")),
        "{:?}",
        exported.files
    );
    let rounded = hf_tensors(&sharded);
    for (name, t) in &trained {
        let r = &rounded[name].values;
        for (a, b) in t.values.iter().zip(r) {
            assert!(
                (a - b).abs() <= a.abs() / 128.0,
                "{name}: {a} rounded to {b}"
            );
        }
    }
}

#[test]
fn a_stopped_llama_run_resumes_bit_identically_and_on_another_rank_count() {
    let every = "checkpoint.everySteps=1";
    let straight = run_dir(9);
    let uninterrupted = gang(straight.path(), 2, &[every]);

    // Stopped at step 6 and resumed on the same 2 ranks: bit-identical.
    let same = run_dir(9);
    let stopped = gang_until(same.path(), 2, &[every], 6);
    assert!(stopped[0].stopped_early && stopped[0].steps == 6);
    let again = gang(same.path(), 2, &[every]);
    assert_eq!(again[0].resumed_from, Some(6));
    assert_eq!(
        again[0].weights_sha256, uninterrupted[0].weights_sha256,
        "resuming on the same rank count must be bit-identical"
    );

    // Resumed on 1 rank (its optimizer state gathered from the 2 ranks' shards): the same
    // weights, optimizer state and batch at the first step after the resume, so the same loss
    // to rounding; later steps sum the gradients in another order.
    let other = run_dir(9);
    gang_until(other.path(), 2, &[every], 6);
    let one = gang(other.path(), 1, &[every]);
    assert_eq!(one[0].resumed_from, Some(6));
    let loss = |root: &Path, step: u64| {
        load_checkpoint(&step_dir(root, step))
            .unwrap()
            .manifest
            .loss
            .unwrap()
    };
    let (a, b) = (loss(other.path(), 7), loss(straight.path(), 7));
    assert!(
        (a - b).abs() < 1e-6,
        "step 7 loss {a} on 1 rank vs {b} on 2"
    );
}
