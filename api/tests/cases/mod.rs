//! The table of invalid TrainingRuns from the foundation issue, shared by the api crate's
//! validation tests and the CLI's end-to-end tests (`tessera run` must refuse each one before
//! anything starts). Each case is a base manifest plus edits.
#![allow(dead_code)] // each test binary uses a different subset

use serde_json::{Value as Json, json};

pub const BASE: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: tiny
  namespace: default
spec:
  model:
    preset: tiny
  data:
    train: data/train-*.bin
    validation: data/val-*.bin
    tokenizer: bytes
  optimizer:
    lr: 0.001
    warmupSteps: 10
    globalBatchTokens: 4096
    microBatch: 16
  training:
    steps: 100
    evalInterval: 50
  parallelism:
    nodes: 2
    gpusPerNode: 1
  checkpoint:
    everySteps: 25
  faultTolerance:
    minNodes: 1
"#;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layer {
    /// Rejected by the OpenAPI schema (types, enums, bounds).
    Schema,
    /// Rejected by a CEL rule.
    Cel,
}

pub struct Case {
    pub name: &'static str,
    /// (dotted path under the document, new value or None to remove)
    pub edits: Vec<(&'static str, Option<Json>)>,
    pub field: &'static str,
    pub layer: Layer,
}

fn case(
    name: &'static str,
    edits: Vec<(&'static str, Option<Json>)>,
    field: &'static str,
    layer: Layer,
) -> Case {
    Case {
        name,
        edits,
        field,
        layer,
    }
}

pub fn invalid_cases() -> Vec<Case> {
    use Layer::*;
    vec![
        case(
            "unknown preset",
            vec![("spec.model.preset", Some(json!("gpt5")))],
            "spec.model.preset",
            Schema,
        ),
        case(
            "heads do not divide width",
            vec![
                ("spec.model.preset", None),
                ("spec.model.layers", Some(json!(2))),
                ("spec.model.heads", Some(json!(7))),
                ("spec.model.width", Some(json!(128))),
                ("spec.model.context", Some(json!(128))),
            ],
            "spec.model.heads",
            Cel,
        ),
        case(
            "preset and explicit layers",
            vec![("spec.model.layers", Some(json!(6)))],
            "spec.model",
            Cel,
        ),
        case(
            "no preset and no width",
            vec![
                ("spec.model.preset", None),
                ("spec.model.layers", Some(json!(2))),
                ("spec.model.heads", Some(json!(2))),
                ("spec.model.context", Some(json!(128))),
            ],
            "spec.model",
            Cel,
        ),
        case(
            "zero layers",
            vec![
                ("spec.model.preset", None),
                ("spec.model.layers", Some(json!(0))),
                ("spec.model.heads", Some(json!(2))),
                ("spec.model.width", Some(json!(64))),
                ("spec.model.context", Some(json!(64))),
            ],
            "spec.model.layers",
            Schema,
        ),
        case(
            "context too long",
            vec![("spec.model.context", Some(json!(1_000_000)))],
            "spec.model.context",
            Schema,
        ),
        case(
            "vocab below the tokenizer's",
            vec![("spec.model.vocab", Some(json!(100)))],
            "spec.model.vocab",
            Cel,
        ),
        case(
            "empty train shards",
            vec![("spec.data.train", Some(json!("")))],
            "spec.data.train",
            Schema,
        ),
        case(
            "unknown tokenizer",
            vec![("spec.data.tokenizer", Some(json!("sentencepiece")))],
            "spec.data.tokenizer",
            Schema,
        ),
        case(
            "empty tokenizer path",
            vec![("spec.data.tokenizer", Some(json!("")))],
            "spec.data.tokenizer",
            Schema,
        ),
        case(
            "Hugging Face tokenizer without model.vocab",
            vec![("spec.data.tokenizer", Some(json!("models/llama")))],
            "spec.model.vocab",
            Cel,
        ),
        case(
            "model.from with a preset",
            vec![
                ("spec.model.from", Some(json!("models/llama"))),
                ("spec.model.context", Some(json!(128))),
                ("spec.data.tokenizer", None),
            ],
            "spec.model.from",
            Cel,
        ),
        case(
            "model.from without a context",
            vec![
                ("spec.model.preset", None),
                ("spec.model.from", Some(json!("models/llama"))),
                ("spec.data.tokenizer", None),
            ],
            "spec.model.context",
            Cel,
        ),
        case(
            "model.from with the byte tokenizer",
            vec![
                ("spec.model.preset", None),
                ("spec.model.from", Some(json!("models/llama"))),
                ("spec.model.context", Some(json!(128))),
            ],
            "spec.data.tokenizer",
            Cel,
        ),
        case(
            "llama without ffnWidth",
            vec![
                ("spec.model.preset", None),
                ("spec.model.architecture", Some(json!("llama"))),
                ("spec.model.layers", Some(json!(2))),
                ("spec.model.heads", Some(json!(4))),
                ("spec.model.width", Some(json!(64))),
                ("spec.model.context", Some(json!(128))),
            ],
            "spec.model.ffnWidth",
            Cel,
        ),
        case(
            "kvHeads that do not divide heads",
            vec![
                ("spec.model.preset", None),
                ("spec.model.architecture", Some(json!("llama"))),
                ("spec.model.layers", Some(json!(2))),
                ("spec.model.heads", Some(json!(4))),
                ("spec.model.kvHeads", Some(json!(3))),
                ("spec.model.width", Some(json!(64))),
                ("spec.model.ffnWidth", Some(json!(128))),
                ("spec.model.context", Some(json!(128))),
            ],
            "spec.model.kvHeads",
            Cel,
        ),
        case(
            "ffnWidth on a GPT-2 preset",
            vec![("spec.model.ffnWidth", Some(json!(512)))],
            "spec.model.ffnWidth",
            Cel,
        ),
        case(
            "both steps and epochs",
            vec![("spec.training.epochs", Some(json!(3)))],
            "spec.training.steps",
            Cel,
        ),
        case(
            "neither steps nor epochs",
            vec![("spec.training.steps", None)],
            "spec.training.steps",
            Cel,
        ),
        case(
            "zero epochs",
            vec![
                ("spec.training.steps", None),
                ("spec.training.epochs", Some(json!(0))),
            ],
            "spec.training.epochs",
            Schema,
        ),
        case(
            "lora without a base model",
            vec![("spec.training.lora", Some(json!({"rank": 4})))],
            "spec.training.lora",
            Cel,
        ),
        case(
            "lora target the family does not have",
            vec![
                (
                    "spec.training.initFrom",
                    Some(json!("gpt2/model.safetensors")),
                ),
                (
                    "spec.training.lora",
                    Some(json!({"rank": 4, "targets": ["q_proj"]})),
                ),
            ],
            "spec.training.lora.targets",
            Cel,
        ),
        case(
            "lora rank 0",
            vec![
                (
                    "spec.training.initFrom",
                    Some(json!("gpt2/model.safetensors")),
                ),
                ("spec.training.lora", Some(json!({"rank": 0}))),
            ],
            "spec.training.lora.rank",
            Schema,
        ),
        case(
            "lora dropout",
            vec![
                (
                    "spec.training.initFrom",
                    Some(json!("gpt2/model.safetensors")),
                ),
                (
                    "spec.training.lora",
                    Some(json!({"rank": 4, "dropout": 1.0})),
                ),
            ],
            "spec.training.lora.dropout",
            Cel,
        ),
        case(
            "unknown architecture",
            vec![("spec.model.architecture", Some(json!("mamba")))],
            "spec.model.architecture",
            Schema,
        ),
        case(
            "zero nodes",
            vec![("spec.parallelism.nodes", Some(json!(0)))],
            "spec.parallelism.nodes",
            Schema,
        ),
        case(
            "zero gpus per node",
            vec![("spec.parallelism.gpusPerNode", Some(json!(0)))],
            "spec.parallelism.gpusPerNode",
            Schema,
        ),
        case(
            "unknown sharding",
            vec![("spec.parallelism.sharding", Some(json!("zero4")))],
            "spec.parallelism.sharding",
            Schema,
        ),
        case(
            "minNodes above nodes",
            vec![("spec.faultTolerance.minNodes", Some(json!(3)))],
            "spec.faultTolerance.minNodes",
            Cel,
        ),
        case(
            "global batch not a multiple of micro-batch x context x world",
            vec![("spec.optimizer.globalBatchTokens", Some(json!(5000)))],
            "spec.optimizer.globalBatchTokens",
            Cel,
        ),
        case(
            "zero micro-batch",
            vec![("spec.optimizer.microBatch", Some(json!(0)))],
            "spec.optimizer.microBatch",
            Schema,
        ),
        case(
            "zero learning rate",
            vec![("spec.optimizer.lr", Some(json!(0.0)))],
            "spec.optimizer.lr",
            Cel,
        ),
        case(
            "negative learning rate",
            vec![("spec.optimizer.lr", Some(json!(-0.1)))],
            "spec.optimizer.lr",
            Schema,
        ),
        case(
            "beta2 of one",
            vec![("spec.optimizer.beta2", Some(json!(1.0)))],
            "spec.optimizer.beta2",
            Cel,
        ),
        case(
            "negative weight decay",
            vec![("spec.optimizer.weightDecay", Some(json!(-0.5)))],
            "spec.optimizer.weightDecay",
            Schema,
        ),
        case(
            "unknown schedule",
            vec![("spec.optimizer.schedule", Some(json!("exponential")))],
            "spec.optimizer.schedule",
            Schema,
        ),
        case(
            "warm-up longer than the run",
            vec![("spec.optimizer.warmupSteps", Some(json!(500)))],
            "spec.optimizer.warmupSteps",
            Cel,
        ),
        case(
            "zero steps",
            vec![("spec.training.steps", Some(json!(0)))],
            "spec.training.steps",
            Schema,
        ),
        case(
            "steps not a number",
            vec![("spec.training.steps", Some(json!("many")))],
            "spec.training.steps",
            Schema,
        ),
        case(
            "eval without validation data",
            vec![("spec.data.validation", None)],
            "spec.training.evalInterval",
            Cel,
        ),
        case(
            "validation fraction beside validation data",
            vec![("spec.data.validationFraction", Some(json!(0.1)))],
            "spec.data.validationFraction",
            Cel,
        ),
        case(
            "validation fraction above one half",
            vec![
                ("spec.data.validation", None),
                ("spec.data.validationFraction", Some(json!(0.9))),
            ],
            "spec.data.validationFraction",
            Schema,
        ),
        case(
            "chat template on instruction data",
            vec![
                ("spec.data.format", Some(json!("instruction"))),
                ("spec.data.chatTemplate", Some(json!("chat.jinja"))),
            ],
            "spec.data.chatTemplate",
            Cel,
        ),
        case(
            "loss mask on plain text",
            vec![
                ("spec.data.format", Some(json!("text"))),
                ("spec.data.trainOn", Some(json!("all"))),
            ],
            "spec.data.format",
            Cel,
        ),
        case(
            "unknown data format",
            vec![("spec.data.format", Some(json!("parquet")))],
            "spec.data.format",
            Schema,
        ),
        case(
            "checkpoint every zero steps",
            vec![("spec.checkpoint.everySteps", Some(json!(0)))],
            "spec.checkpoint.everySteps",
            Schema,
        ),
        case(
            "keep zero checkpoints",
            vec![("spec.checkpoint.keep", Some(json!(0)))],
            "spec.checkpoint.keep",
            Schema,
        ),
        case(
            "relative checkpoint path on a volume",
            vec![("spec.checkpoint.volume", Some(json!({"claimName": "ckpt"})))],
            "spec.checkpoint.path",
            Cel,
        ),
        case(
            "zero heartbeat timeout",
            vec![(
                "spec.faultTolerance.heartbeatTimeoutSeconds",
                Some(json!(0)),
            )],
            "spec.faultTolerance.heartbeatTimeoutSeconds",
            Schema,
        ),
        case(
            "negative restarts",
            vec![("spec.faultTolerance.maxRestarts", Some(json!(-1)))],
            "spec.faultTolerance.maxRestarts",
            Schema,
        ),
        case(
            "no spec.model",
            vec![("spec.model", None)],
            "spec.model",
            Schema,
        ),
    ]
}

pub fn base_document() -> Json {
    serde_yaml::from_str(BASE).expect("the base manifest is YAML")
}

pub fn apply(document: &mut Json, edits: &[(&str, Option<Json>)]) {
    for (path, value) in edits {
        let parts: Vec<&str> = path.split('.').collect();
        let (last, parents) = parts.split_last().expect("a path has a last part");
        let mut target = &mut *document;
        for part in parents {
            target = target
                .as_object_mut()
                .expect("edits walk objects")
                .entry(part.to_string())
                .or_insert_with(|| json!({}));
        }
        let object = target.as_object_mut().expect("edits end in an object");
        match value {
            Some(v) => {
                object.insert(last.to_string(), v.clone());
            }
            None => {
                object.remove(*last);
            }
        }
    }
}
