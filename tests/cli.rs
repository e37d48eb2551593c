//! The `tessera` binary's front door: help, the CRD, manifest checks and bad input.

use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the tessera binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_the_subcommands() {
    let out = tessera(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["crd", "validate"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[test]
fn crd_prints_the_checked_in_definition() {
    let out = tessera(&["crd"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let checked_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/trainingrun.yaml"
    ))
    .unwrap();
    assert_eq!(text(&out.stdout), checked_in);
}

#[test]
fn the_examples_are_valid() {
    for example in [
        "examples/tiny.yaml",
        "examples/gpt2-124m.yaml",
        "examples/local.yaml",
        "examples/chat-finetune.yaml",
        "examples/llama-finetune.yaml",
        "examples/lora-finetune.yaml",
    ] {
        let out = tessera(&["validate", example]);
        assert!(out.status.success(), "{example}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("is valid"));
    }
}

#[test]
fn an_unknown_subcommand_fails_with_a_message() {
    let out = tessera(&["trian"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("unrecognized subcommand") && err.contains("trian"),
        "{err}"
    );
}

#[test]
fn a_missing_file_fails_naming_it() {
    let out = tessera(&["validate", "no/such/run.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no/such/run.yaml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn an_invalid_manifest_fails_naming_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tiny.yaml"))
        .unwrap()
        .lines()
        .map(|line| match line.trim_start().split(':').next() {
            Some("nodes") => "    nodes: 0",
            Some("lr") => "    lr: 0.0",
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, yaml).unwrap();
    let out = tessera(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("spec.parallelism.nodes") && err.contains("spec.optimizer.lr"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn data_prepare_takes_a_hugging_face_tokenizer_directory() {
    use tessera_api::spec::Tokenizer;
    use tessera_trainer::data::{shard::read_shard, tokenizer::TextTokenizer};

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("speech.txt");
    let speech = "First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(20);
    std::fs::write(&input, &speech).unwrap();
    let out_dir = dir.path().join("out");
    let llama = "trainer/tests/fixtures/hf/llama-gqa";
    let out = tessera(&[
        "data",
        "prepare",
        "--tokenizer",
        llama,
        "--val-fraction",
        "0",
        "--out",
        out_dir.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(llama), "{}", text(&out.stdout));
    let shard = read_shard(&out_dir.join("train-000000.bin")).unwrap();
    let tokenizer = TextTokenizer::load(
        &Tokenizer::from(format!("{}/{llama}", env!("CARGO_MANIFEST_DIR"))),
        "--tokenizer",
    )
    .unwrap();
    assert_eq!(shard.vocab_size, tokenizer.vocab_size());
    assert_eq!(shard.vocab_size, 384);
    let tokens = shard.tokens.to_u32();
    assert_eq!(tokens[0], tokenizer.end_of_text().unwrap());
    assert_eq!(tokenizer.decode(&tokens[1..]).unwrap(), speech);
}

#[test]
fn data_prepare_refuses_a_bad_tokenizer_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.txt");
    std::fs::write(&input, "some text").unwrap();
    let out_dir = dir.path().join("out");
    for (tokenizer, expected) in [
        ("llama", "./llama"),
        ("./no/such/model", "does not exist"),
        (
            "trainer/tests/fixtures/hf/gpt2-lora",
            "has no tokenizer.json",
        ),
    ] {
        let out = tessera(&[
            "data",
            "prepare",
            "--tokenizer",
            tokenizer,
            "--out",
            out_dir.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{tokenizer}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--tokenizer") && err.contains(tokenizer) && err.contains(expected),
            "{tokenizer}: {err}"
        );
    }
}

#[test]
fn greedy_sampling_from_a_hugging_face_directory_matches_transformers() {
    for model in ["llama-gqa", "qwen2-tied", "mistral"] {
        let dir = format!("trainer/tests/fixtures/hf/{model}");
        // Recorded by scripts/fixtures/greedy.py with transformers.
        let greedy: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/greedy.json")).unwrap())
                .unwrap();
        let out = tessera(&[
            "sample",
            &dir,
            "--prompt",
            greedy["prompt"].as_str().unwrap(),
            "--tokens",
            "20",
            "--temperature",
            "0",
            "--json",
        ]);
        assert!(out.status.success(), "{model}: {}", text(&out.stderr));
        let sampled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(sampled["promptIds"], greedy["prompt_ids"], "{model}");
        assert_eq!(
            sampled["continuationIds"], greedy["continuation_ids"],
            "{model}: greedy continuation"
        );
        assert_eq!(sampled["prompt"], greedy["prompt"], "{model}");
    }
}

#[test]
fn eval_scores_consecutive_windows_as_the_reference_model_does() {
    use tessera_trainer::{data::shard::read_shard, llama::LlamaReference};

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("speech.txt");
    std::fs::write(
        &input,
        "Before we proceed any further, hear me speak.\n".repeat(12),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let llama = "trainer/tests/fixtures/hf/llama-gqa";
    let out = tessera(&[
        "data",
        "prepare",
        "--tokenizer",
        llama,
        "--val-fraction",
        "0",
        "--out",
        out_dir.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shard_path = out_dir.join("train-000000.bin");
    let tokens = read_shard(&shard_path).unwrap().tokens.to_u32();

    let out = tessera(&[
        "eval",
        llama,
        "--data",
        shard_path.to_str().unwrap(),
        "--context",
        "16",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let windows = (tokens.len() - 1) / 16;
    assert_eq!(e["context"], 16);
    assert_eq!(e["windows"], windows);
    assert_eq!(e["tokens"], windows * 16);

    // The reference model over the same windows: window i's 17 tokens, labels unshifted.
    let reference = LlamaReference::<f64>::from_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(llama),
    )
    .unwrap();
    let mut total = 0.0;
    for w in 0..windows {
        let ids = &tokens[w * 16..w * 16 + 17];
        let labels: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        total += reference.loss(ids, &labels, 1, 17).unwrap();
    }
    let want = total / windows as f64;
    let got = e["loss"].as_f64().unwrap();
    assert!(
        (got - want).abs() < 1e-4,
        "eval loss {got}, reference {want}"
    );
    assert!((e["perplexity"].as_f64().unwrap() - want.exp()).abs() < 1e-2);
}

/// `tessera run` on a copy of the llama-gqa fixture changed by `edit`; returns its stderr
/// after checking it failed before training (no rank log, no checkpoint).
fn run_with_bad_model_dir(edit: impl Fn(&std::path::Path)) -> String {
    run_refused(edit, "{steps: 2, evalInterval: 0}")
}

/// `tessera run` on a copy of the llama-gqa fixture edited by `edit`, with `training`:
/// refused before any rank starts; returns the message.
fn run_refused(edit: impl Fn(&std::path::Path), training: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("trainer/tests/fixtures/hf/llama-gqa");
    for entry in std::fs::read_dir(&fixture).unwrap().flatten() {
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    edit(&model);
    std::fs::write(
        dir.path().join("text.txt"),
        "the king shall come to our house\n".repeat(300),
    )
    .unwrap();
    let manifest = dir.path().join("run.yaml");
    std::fs::write(
        &manifest,
        r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: bad-model}
spec:
  model: {from: model, context: 32}
  data: {train: text.txt, validationFraction: 0.1}
  optimizer: {globalBatchTokens: 256, microBatch: 8}
  training: TRAINING
"#
        .replace("TRAINING", training),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["run", "run.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a bad model directory was accepted");
    assert!(
        !dir.path()
            .join("runs/bad-model/logs/gen-1-rank-0.log")
            .exists(),
        "a rank started: {stderr}"
    );
    stderr
}

fn edit_config(model: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) {
    let path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn a_lora_plan_that_does_not_fit_the_model_is_refused_naming_the_field() {
    // llama-gqa's k_proj and v_proj are 32 × 64: rank 48 cannot factor them.
    let rank = run_refused(
        |_| {},
        "{steps: 2, evalInterval: 0, lora: {rank: 48, targets: [q_proj, k_proj]}}",
    );
    assert!(
        rank.contains("spec.training.lora.rank")
            && rank.contains("k_proj")
            && rank.contains("at most 32"),
        "{rank}"
    );
    // A GPT-2 projection on a Llama-family model.
    let target = run_refused(
        |_| {},
        "{steps: 2, evalInterval: 0, lora: {rank: 4, targets: [c_attn]}}",
    );
    assert!(
        target.contains("spec.training.lora.targets") && target.contains("q_proj"),
        "{target}"
    );
    // Not a projection name at all.
    let unknown = run_refused(
        |_| {},
        "{steps: 2, evalInterval: 0, lora: {rank: 4, targets: [attention]}}",
    );
    assert!(
        unknown.contains("targets") && unknown.contains("attention") && unknown.contains("q_proj"),
        "{unknown}"
    );
}

#[test]
fn a_bad_model_directory_is_refused_before_training_naming_field_and_file() {
    let missing = run_with_bad_model_dir(|m| std::fs::remove_file(m.join("config.json")).unwrap());
    assert!(
        missing.contains("spec.model.from") && missing.contains("model/config.json"),
        "{missing}"
    );
    let gemma = run_with_bad_model_dir(|m| edit_config(m, |c| c["model_type"] = "gemma".into()));
    assert!(
        gemma.contains("model_type") && gemma.contains("gemma"),
        "{gemma}"
    );
    let yarn = run_with_bad_model_dir(|m| {
        edit_config(m, |c| c["rope_parameters"]["rope_type"] = "yarn".into())
    });
    assert!(
        yarn.contains("rope_type") && yarn.contains("yarn") && yarn.contains("config.json"),
        "{yarn}"
    );
    let layers = run_with_bad_model_dir(|m| edit_config(m, |c| c["num_hidden_layers"] = 3.into()));
    assert!(
        layers.contains("model.layers.2.input_layernorm.weight is missing")
            && layers.contains("model.safetensors"),
        "{layers}"
    );
    // A tokenizer with 16 more tokens than the embedding has rows.
    let tokenizer = run_with_bad_model_dir(|m| {
        let path = m.join("tokenizer.json");
        let mut t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let added = t["added_tokens"].as_array_mut().unwrap();
        for i in 0..16 {
            added.push(serde_json::json!({
                "id": 384 + i, "content": format!("<|extra_{i}|>"), "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true
            }));
        }
        std::fs::write(&path, t.to_string()).unwrap();
    });
    assert!(
        tokenizer.contains("vocab_size in") && tokenizer.contains("config.json is 384"),
        "{tokenizer}"
    );
}
