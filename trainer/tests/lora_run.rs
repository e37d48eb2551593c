//! LoRA through the whole trainer: a fine-tune of the llama-gqa fixture directory on a chat
//! JSONL lowers the held-out loss well below the base model's while the optimizer holds state
//! for the adapters alone; stopped, killed or moved to another rank count, it resumes to the
//! uninterrupted run's adapters bit for bit; its checkpoints name the base by SHA-256 and
//! refuse a changed one.

use std::path::{Path, PathBuf};

use tessera_trainer::{
    backend::cpu::CpuBackend,
    checkpoint::load_checkpoint,
    export::{ExportOptions, export_hf, export_peft},
    run::RunSummary,
    sample::{evaluate, load_model},
};

mod common;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// A copy of the llama-gqa fixture directory (the base; a test may change its weights).
fn base_dir(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for entry in std::fs::read_dir(fixture("llama-gqa")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, base.join(path.file_name().unwrap())).unwrap();
    }
    base
}

const RANK: u64 = 8;

fn run_dir(steps: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let base = base_dir(dir.path());
    std::fs::write(dir.path().join("chat.jsonl"), common::chat_jsonl(120)).unwrap();
    let manifest = format!(
        r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: lora-test
spec:
  model: {{from: {}, context: 63}}
  data: {{train: chat.jsonl, validationFraction: 0.1}}
  optimizer: {{lr: 0.01, warmupSteps: 2, globalBatchTokens: 252, microBatch: 2}}
  training:
    steps: {steps}
    seed: 5
    evalInterval: 0
    lora: {{rank: {RANK}, alpha: 16, dropout: 0.1, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}}
  checkpoint: {{path: checkpoints, everySteps: 2, keep: 10, async: false}}
"#,
        base.display()
    );
    std::fs::write(dir.path().join("run.yaml"), manifest).unwrap();
    dir
}

fn gang(dir: &Path, world: u32, overrides: &[&str], stop_after: u64) -> Vec<RunSummary> {
    common::gang(dir, world, overrides, stop_after)
}

/// The validation shard the run tokenized.
fn val_shards(dir: &Path) -> String {
    let entry = std::fs::read_dir(dir.join("checkpoints/tokens"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    format!("{}/val-*.bin", entry.display())
}

#[test]
fn a_lora_fine_tune_lowers_the_loss_with_optimizer_state_for_the_adapters_only() {
    let dir = run_dir(40);
    let summary = gang(dir.path(), 1, &[], u64::MAX).remove(0);
    assert_eq!(summary.steps, 40);

    // The adapters of the seven projections: rank × (in + out) per projection and layer
    // (llama-gqa: width 64, 4 heads of 16 over 2 key/value heads, MLP 160, 2 layers).
    let per_layer = (64 + 64) + (64 + 32) + (64 + 32) + (64 + 64) + 3 * (64 + 160);
    let adapters = RANK * 2 * per_layer;
    assert_eq!(summary.trainable_parameters, adapters);
    assert!(summary.total_parameters > 5 * adapters);
    // AdamW's m and v in f32 for the adapters, nothing for the frozen base.
    assert_eq!(summary.optimizer_state_bytes, (adapters * 8) as usize);

    let data = val_shards(dir.path());
    let base = load_model(&dir.path().join("base")).unwrap();
    let before = evaluate(CpuBackend::<f32>::new(), &base, &data, None).unwrap();
    // `tessera eval` on the LoRA checkpoint: the adapters merged into the base.
    let tuned = load_model(&dir.path().join("checkpoints")).unwrap();
    let after = evaluate(CpuBackend::<f32>::new(), &tuned, &data, None).unwrap();
    eprintln!(
        "held-out loss: base {:.4}, LoRA fine-tune {:.4} (nats per token over {} tokens)",
        before.loss, after.loss, after.tokens
    );
    assert_eq!(before.tokens, after.tokens);
    assert!(
        after.loss < 0.6 * before.loss,
        "LoRA loss {} against the base's {}",
        after.loss,
        before.loss
    );

    // The checkpoint is the adapters (and their optimizer state) and names its base.
    let checkpoint = load_checkpoint(&dir.path().join("checkpoints/step-0000000040")).unwrap();
    let base_ref = checkpoint
        .manifest
        .base
        .clone()
        .expect("a LoRA checkpoint names its base");
    assert_eq!(base_ref.sha256.len(), 64);
    assert_eq!(checkpoint.manifest.parameter_count, adapters);

    // Exports: PEFT adapters, and the merged model, whose held-out loss is the checkpoint's.
    let peft_dir = dir.path().join("peft");
    export_peft(&checkpoint, &peft_dir).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(peft_dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["r"], RANK);
    assert_eq!(config["lora_alpha"], 16.0);
    assert_eq!(config["lora_dropout"], 0.1);
    assert_eq!(config["base_model_name_or_path"], base_ref.path.as_str());
    let err = export_hf(
        &checkpoint,
        &dir.path().join("hf"),
        ExportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--peft") && err.contains("--merged"), "{err}");
    let merged_dir = dir.path().join("merged");
    export_hf(
        &checkpoint,
        &merged_dir,
        ExportOptions {
            merged: true,
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let merged = load_model(&merged_dir).unwrap();
    assert_eq!(merged.params, tuned.params);
}

#[test]
fn a_stopped_lora_run_resumes_to_the_uninterrupted_adapters_on_the_same_or_another_rank_count() {
    let straight = run_dir(8);
    let uninterrupted = gang(straight.path(), 1, &[], u64::MAX).remove(0);
    // The runs train with LoRA dropout 0.1: without it they end elsewhere.
    let plain = run_dir(8);
    let without = gang(plain.path(), 1, &["spec.training.lora.dropout=0"], u64::MAX).remove(0);
    assert_ne!(without.weights_sha256, uninterrupted.weights_sha256);

    let same = run_dir(8);
    let stopped = gang(same.path(), 1, &[], 4).remove(0);
    assert!(stopped.stopped_early && stopped.steps == 4);
    let resumed = gang(same.path(), 1, &[], u64::MAX).remove(0);
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(resumed.weights_sha256, uninterrupted.weights_sha256);

    // Two ranks with ZeRO-1 to step 4, then one rank to the end: the same adapters. (One
    // rank accumulates the step's two micro-batches; two ranks take one each: the same two
    // gradients summed.)
    let moved = run_dir(8);
    let pair = gang(moved.path(), 2, &["spec.parallelism.sharding=optimizer"], 4);
    assert_eq!(pair[0].steps, 4);
    assert_eq!(
        pair[0].trainable_parameters,
        uninterrupted.trainable_parameters
    );
    // ZeRO-1: each rank holds half the adapters' optimizer state.
    assert!(pair[0].optimizer_state_bytes < uninterrupted.optimizer_state_bytes * 6 / 10);
    let single = gang(moved.path(), 1, &[], u64::MAX).remove(0);
    assert_eq!(single.resumed_from, Some(4));
    assert_eq!(
        single.weights_sha256, uninterrupted.weights_sha256,
        "resumed on another rank count"
    );
}

#[test]
fn a_lora_checkpoint_refuses_a_changed_base() {
    let dir = run_dir(4);
    gang(dir.path(), 1, &[], 2);
    // Someone changes the base's weights in place: the last byte of the last tensor.
    let weights = dir.path().join("base/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&weights, bytes).unwrap();

    let err = load_model(&dir.path().join("checkpoints"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("LoRA adapters trained on") && err.contains("SHA-256"),
        "{err}"
    );
    // Resuming refuses too, and leaves the checkpoints as they were.
    let listing = |root: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(root.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = listing(dir.path());
    let yaml = std::fs::read_to_string(dir.path().join("run.yaml")).unwrap();
    let run = tessera_api::manifest::parse_training_run_with(&yaml, &[]).unwrap();
    let err = tessera_trainer::run::train_ranked(
        CpuBackend::<f32>::new(),
        &run,
        &tessera_trainer::run::RunOptions::new(dir.path(), "lora-test"),
        Box::new(tessera_trainer::collective::Solo),
        &mut common::StopAfter(u64::MAX),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("other weights") && err.contains("restore"),
        "{err}"
    );
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn a_killed_lora_run_resumes_to_the_uninterrupted_adapters() {
    let straight = run_dir(40);
    let (uninterrupted, _) = common::train(straight.path());
    let dir = run_dir(40);
    common::kill_after_checkpoint(dir.path(), 4);
    let (resumed, _) = common::train(dir.path());
    common::assert_resumed_to(&resumed, &uninterrupted, 4, 40);
    assert_eq!(
        resumed["trainableParameters"],
        uninterrupted["trainableParameters"]
    );
}

#[test]
fn gpt2_trains_lora_on_its_init_from_weights() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = fixture("gpt2");
    std::fs::write(
        dir.path().join("corpus.txt"),
        "the king shall come to our house and speak with thee good night my lord\n".repeat(200),
    )
    .unwrap();
    let manifest = format!(
        r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: gpt2-lora
spec:
  model: {{layers: 2, heads: 4, width: 64, context: 128, vocab: 384}}
  data: {{train: corpus.txt, tokenizer: {gpt2}, validationFraction: 0.1}}
  optimizer: {{lr: 0.01, warmupSteps: 1, globalBatchTokens: 512, microBatch: 4}}
  training: {{steps: 6, seed: 3, evalInterval: 0, initFrom: {gpt2}, lora: {{rank: 4, targets: [c_attn, c_proj, c_fc]}}}}
  checkpoint: {{path: checkpoints, everySteps: 3, keep: 3, async: false}}
"#,
        gpt2 = gpt2.display()
    );
    std::fs::write(dir.path().join("run.yaml"), manifest).unwrap();
    let summary = gang(dir.path(), 1, &[], u64::MAX).remove(0);
    // c_attn (64 → 192), attn.c_proj and mlp.c_proj (64 → 64, 256 → 64), c_fc (64 → 256).
    let per_layer = 4 * ((64 + 192) + (64 + 64) + (256 + 64) + (64 + 256));
    assert_eq!(summary.trainable_parameters, 2 * per_layer);
    let first = load_checkpoint(&dir.path().join("checkpoints/step-0000000003")).unwrap();
    let last = load_checkpoint(&dir.path().join("checkpoints/step-0000000006")).unwrap();
    assert!(last.manifest.loss.unwrap() < first.manifest.loss.unwrap());
    assert!(
        last.manifest
            .base
            .as_ref()
            .unwrap()
            .path
            .ends_with("model.safetensors")
    );
    let out = dir.path().join("peft");
    export_peft(&last, &out).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["fan_in_fan_out"], true);
    assert_eq!(
        config["base_model_name_or_path"],
        gpt2.display().to_string()
    );
    // The merged model loads as a plain GPT-2 and scores the held-out text.
    let merged = dir.path().join("merged");
    export_hf(
        &last,
        &merged,
        ExportOptions {
            merged: true,
            ..ExportOptions::default()
        },
    )
    .unwrap();
    assert!(load_model(&merged).is_ok());
}
