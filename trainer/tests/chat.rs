//! Chat data through the trainer: the loss counts exactly the assistant tokens of a
//! hand-checked conversation, and a run that names a chat JSONL directly, stopped and resumed,
//! ends with the uninterrupted run's weights without tokenizing a second time.
//!
//! The model is the recorded fixture `llama-gqa` (its tokenizer shares one vocabulary with the
//! chat template fixtures' tokenizers, so the recorded ids of tests/fixtures/chat apply).

use std::path::{Path, PathBuf};

use tessera_api::{
    manifest::parse_training_run_with,
    spec::{DataFormat, DataSpec, Tokenizer},
    token_cache::{TOKEN_CACHE_DIR, TOKEN_CACHE_RECORD},
};
use tessera_trainer::{
    backend::Backend,
    backend::cpu::CpuBackend,
    collective::Solo,
    data::{
        cache::resolve_run_data,
        loader::{EvalBatches, IGNORE_TARGET, TokenStream},
    },
    llama::{LlamaConfig, model::Llama},
    lm::LanguageModel,
    run::{RunOptions, RunSummary, train_ranked},
};

mod common;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn chat_fixture() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("chat/templates.json")).unwrap()).unwrap()
}

/// The conversation `multi_turn_training` of the chat fixtures, as a chat JSONL line.
const CONVERSATION: &str = r#"{"messages": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."}, {"role": "user", "content": "And a larger one?"}, {"role": "assistant", "content": "Eleven is larger."}]}"#;

#[test]
fn the_loss_counts_exactly_the_assistant_tokens_of_a_hand_checked_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = chat_fixture();
    let chatml = &fixtures["templates"]["chatml"];
    std::fs::write(
        dir.path().join("chatml.jinja"),
        chatml["template"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("chat.jsonl"), format!("{CONVERSATION}\n")).unwrap();
    let context = 127u32;
    let data = DataSpec {
        train: "chat.jsonl".into(),
        tokenizer: Tokenizer::from(fixture("hf/llama-gqa").display().to_string()),
        chat_template: Some("chatml.jinja".into()),
        ..DataSpec::default()
    };
    let ckpt = tempfile::tempdir().unwrap();
    let resolved = resolve_run_data(&data, dir.path(), ckpt.path(), context).unwrap();
    assert_eq!(resolved.tokenized[0].record.format, Some(DataFormat::Chat));

    // The rendered conversation, tokenized (transformers' recorded ids):
    //   0..=63    system turn, user turn, "<|im_start|>assistant\n"      not counted
    //   64..=70   "Seven." <|im_end|> "\n"                                 counted
    //   71..=95   user turn, "<|im_start|>assistant\n"                     not counted
    //   96..=107  "Eleven is larger." <|im_end|> "\n"                      counted
    //   108       the EOS that ends the example (<|eot_id|>), then padding not counted
    let case = chatml["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "multi_turn_training")
        .unwrap();
    let recorded: Vec<u32> = case["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(recorded.len(), 108);
    assert_eq!((recorded[63], recorded[64], recorded[69]), (198, 50, 378));
    assert_eq!((recorded[95], recorded[96], recorded[106]), (198, 36, 378));
    let assistant: Vec<usize> = (64..=70).chain(96..=107).collect();

    let stream = TokenStream::open(&resolved.train).unwrap();
    assert_eq!(stream.row_len(), context + 1);
    let eval = EvalBatches::new(stream, 1, context, 1).unwrap();
    let batch = eval.batch(0).unwrap();
    let row: Vec<u32> = batch
        .inputs
        .iter()
        .copied()
        .chain([batch.targets[context as usize - 1]])
        .collect();
    assert_eq!(
        row[..108],
        recorded[..],
        "the row starts with the conversation"
    );
    assert_eq!(row[108], 376, "an EOS ends the example");
    // Target t is token t+1: counted exactly when token t+1 is the assistant's.
    let counted: Vec<usize> = (0..context as usize)
        .filter(|&t| batch.targets[t] != IGNORE_TARGET)
        .map(|t| t + 1)
        .collect();
    assert_eq!(counted, assistant);
    assert_eq!(batch.counted, 19);
    for &p in &assistant {
        assert_eq!(batch.targets[p - 1], recorded[p]);
    }

    // The masked loss is the mean of the per-position losses over exactly those positions.
    let config = LlamaConfig::from_dir(&fixture("hf/llama-gqa")).unwrap();
    let mut model = Llama::new(CpuBackend::<f32>::new(), config, 1, context as usize, 7).unwrap();
    let full_targets: Vec<u32> = row[1..].to_vec();
    model.forward(&batch.inputs, &full_targets).unwrap();
    let mut per_position = vec![0f32; context as usize];
    let state = model.state();
    state
        .backend
        .download(&state.losses, 0, &mut per_position)
        .unwrap();
    let expected: f64 = assistant
        .iter()
        .map(|&p| f64::from(per_position[p - 1]))
        .sum::<f64>()
        / assistant.len() as f64;
    let masked_sum = model
        .forward_sum(&batch.inputs, &batch.targets, 1.0 / 19.0)
        .unwrap();
    let masked = masked_sum / batch.counted as f64;
    assert!(
        (masked - expected).abs() < 1e-9 * expected.abs().max(1.0),
        "masked loss {masked} vs the mean over the assistant positions {expected}"
    );
    let unmasked_mean: f64 =
        per_position.iter().map(|&l| f64::from(l)).sum::<f64>() / f64::from(context);
    assert!(
        (masked - unmasked_mean).abs() > 1e-6,
        "the mask changed nothing"
    );
    // The evaluation uses the same mask.
    let val = tessera_trainer::run::evaluate_ranked(&mut model, &eval, &mut Solo).unwrap();
    assert!((val - expected).abs() < 1e-6, "{val} vs {expected}");
}

// === a run from raw chat JSONL, stopped and resumed ===

fn manifest(steps: u64) -> String {
    format!(
        r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: chat-test
spec:
  model: {{from: {}, context: 63}}
  data: {{train: chat.jsonl, validationFraction: 0.1}}
  optimizer: {{lr: 0.003, warmupSteps: 2, globalBatchTokens: 252, microBatch: 2}}
  training: {{steps: {steps}, seed: 5, evalInterval: 4}}
  checkpoint: {{path: checkpoints, everySteps: 2, keep: 10, async: false}}
"#,
        fixture("hf/llama-gqa").display()
    )
}

fn run(dir: &Path, stop_after: u64) -> RunSummary {
    let yaml = std::fs::read_to_string(dir.join("run.yaml")).unwrap();
    let run = parse_training_run_with(&yaml, &[]).unwrap();
    let options = RunOptions::new(dir, "chat-test");
    train_ranked(
        CpuBackend::<f32>::new(),
        &run,
        &options,
        Box::new(Solo),
        &mut common::StopAfter(stop_after),
    )
    .unwrap()
}

fn run_dir(steps: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chat.jsonl"), common::chat_jsonl(120)).unwrap();
    std::fs::write(dir.path().join("run.yaml"), manifest(steps)).unwrap();
    dir
}

/// The cache's one entry and its record's bytes.
fn cache_entry(dir: &Path) -> (Vec<PathBuf>, Vec<u8>) {
    let root = dir.join("checkpoints").join(TOKEN_CACHE_DIR);
    let entries: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let record = std::fs::read(entries[0].join(TOKEN_CACHE_RECORD)).unwrap();
    (entries, record)
}

#[test]
fn a_chat_jsonl_run_stopped_and_resumed_matches_the_uninterrupted_run_without_retokenizing() {
    let straight = run_dir(6);
    let uninterrupted = run(straight.path(), u64::MAX);
    assert_eq!(uninterrupted.steps, 6);
    assert!(uninterrupted.final_val_loss.is_some());
    // 2 rows of 64 tokens a micro-batch, 2 micro-steps: at most 4·63 targets a step, and the
    // user turns and padding are not counted.
    assert!(uninterrupted.trained_tokens > 0 && uninterrupted.trained_tokens < 6 * 252);

    let resumed_dir = run_dir(6);
    let stopped = run(resumed_dir.path(), 4);
    assert!(stopped.stopped_early && stopped.steps == 4);
    let (entries, record) = cache_entry(resumed_dir.path());
    assert_eq!(entries.len(), 1);
    let json: serde_json::Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(json["format"], "chat");
    assert_eq!(json["examples"]["examples"], 120);
    let again = run(resumed_dir.path(), u64::MAX);
    assert_eq!(again.resumed_from, Some(4));
    assert_eq!(
        again.weights_sha256, uninterrupted.weights_sha256,
        "the resumed run must end bit-identical to the uninterrupted one"
    );
    assert_eq!(again.trained_tokens, uninterrupted.trained_tokens);
    // The second start found the entry: the same one entry, its record untouched.
    assert_eq!(cache_entry(resumed_dir.path()), (entries, record));
}

#[test]
fn a_chat_jsonl_run_killed_mid_run_resumes_to_the_uninterrupted_weights() {
    let straight = run_dir(40);
    let (uninterrupted, _) = common::train(straight.path());

    let dir = run_dir(40);
    common::kill_after_checkpoint(dir.path(), 4);
    let (entries, record) = cache_entry(dir.path());

    let (resumed, _) = common::train(dir.path());
    common::assert_resumed_to(&resumed, &uninterrupted, 4, 40);
    // The second start reused the cache entry the first one wrote, untouched.
    assert_eq!(cache_entry(dir.path()), (entries, record));
}

#[test]
fn a_masked_chat_run_on_two_ranks_is_the_one_rank_run_with_the_whole_batch() {
    // 4 rows a step: 1 rank accumulates 2 micro-batches of 2, 2 ranks take 2 each. The loss
    // is normalised by the counted targets of the whole global batch on both layouts.
    let one = run_dir(4);
    let single = common::gang(one.path(), 1, &[], u64::MAX);
    let two = run_dir(4);
    let pair = common::gang(two.path(), 2, &[], u64::MAX);
    assert_eq!(pair[0].trained_tokens, single[0].trained_tokens);
    let loss = |root: &Path, step: u64| {
        let dir = root
            .join("checkpoints")
            .join(tessera_api::checkpoint::checkpoint_dir_name(step));
        tessera_trainer::checkpoint::load_checkpoint(&dir)
            .unwrap()
            .manifest
            .loss
            .unwrap()
    };
    // The first checkpointed step sees the same weights and batch: the same loss to rounding.
    let (a, b) = (loss(one.path(), 2), loss(two.path(), 2));
    assert!(
        (a - b).abs() < 1e-5 * a.abs(),
        "step 2 loss {a} on 1 rank, {b} on 2"
    );
    let weights = |root: &Path| {
        let dir = root
            .join("checkpoints")
            .join(tessera_api::checkpoint::checkpoint_dir_name(4));
        let loaded = tessera_trainer::checkpoint::load_checkpoint(&dir).unwrap();
        loaded
            .model
            .iter()
            .flat_map(|t| t.values.clone())
            .collect::<Vec<f32>>()
    };
    let (x, y) = (weights(one.path()), weights(two.path()));
    let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = x
        .iter()
        .zip(&y)
        .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(diff <= 1e-4 * scale, "weights differ by {diff} of {scale}");
}

#[test]
fn an_epochs_run_visits_every_example_and_resumes_to_the_same_weights() {
    // 108 training conversations (120, less the validation tenth) packed into rows of 64
    // tokens; 4 rows a step.
    let epochs_dir = || {
        let dir = run_dir(6);
        let yaml = std::fs::read_to_string(dir.path().join("run.yaml")).unwrap();
        let yaml = yaml.replace("steps: 6,", "epochs: 2,");
        assert!(yaml.contains("epochs: 2,"));
        std::fs::write(dir.path().join("run.yaml"), yaml).unwrap();
        dir
    };
    let straight = epochs_dir();
    let whole = run(straight.path(), u64::MAX);
    let rows = {
        let root = straight.path().join("checkpoints").join(TOKEN_CACHE_DIR);
        let entry = std::fs::read_dir(&root)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let train = TokenStream::open(&format!("{}/train-*.bin", entry.display())).unwrap();
        train.len() / u64::from(train.row_len())
    };
    assert!(rows > 4, "{rows} packed rows");
    assert_eq!(
        whole.steps,
        (2 * rows).div_ceil(4),
        "2 epochs of {rows} rows"
    );

    let resumed_dir = epochs_dir();
    let stopped = run(resumed_dir.path(), 2);
    assert_eq!(stopped.steps, 2);
    let again = run(resumed_dir.path(), u64::MAX);
    assert_eq!(again.resumed_from, Some(2));
    assert_eq!(again.steps, whole.steps);
    assert_eq!(again.weights_sha256, whole.weights_sha256);
}
