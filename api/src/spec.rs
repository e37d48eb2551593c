//! The TrainingRun custom resource: its spec (what the user asks for) and the model presets.
//!
//! One manifest serves both worlds: `kubectl apply` sends it to the API server, whose CRD
//! schema (generated from these types, see [`crate::crd`]) checks it; `tessera run` reads the
//! same YAML and checks it with [`crate::validate`], which expresses the same rules.
//!
//! Bounds live in the [`bounds`] module so the schema attributes and `validate()` share them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::TrainingRunStatus;

/// Numeric bounds shared by the CRD schema (`#[schemars(range)]`) and `validate()`.
pub mod bounds {
    pub const MAX_LAYERS: u32 = 256;
    pub const MAX_HEADS: u32 = 256;
    pub const MAX_WIDTH: u32 = 65_536;
    pub const MAX_FFN_WIDTH: u32 = 262_144;
    pub const MAX_CONTEXT: u32 = 131_072;
    /// Token ids are stored as u32; 2^24 is far above any real vocabulary.
    pub const MAX_VOCAB: u32 = 16_777_216;
    pub const MAX_NODES: u32 = 4_096;
    pub const MAX_GPUS_PER_NODE: u32 = 64;
    pub const MAX_MICRO_BATCH: u32 = 65_536;
    pub const MAX_LR: f64 = 10.0;
    pub const MAX_WEIGHT_DECAY: f64 = 10.0;
    pub const MAX_RESTARTS: u32 = 10_000;
    pub const MAX_BACKOFF_SECONDS: u32 = 86_400;
    pub const MAX_HEARTBEAT_TIMEOUT_SECONDS: u32 = 86_400;
    pub const MAX_KEEP: u32 = 10_000;
    pub const MAX_PATH_LEN: u32 = 4_096;
    pub const MAX_LORA_RANK: u32 = 4_096;
    pub const MAX_EPOCHS: u32 = 100_000;
    pub const MAX_LORA_ALPHA: f64 = 1_048_576.0;
}
use bounds::*;

/// A training run: one model trained on one data set by a gang of nodes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "TrainingRun",
    plural = "trainingruns",
    singular = "trainingrun",
    shortname = "tr",
    category = "tessera",
    namespaced,
    status = "TrainingRunStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.step"}"#,
    printcolumn = r#"{"name":"Loss","type":"number","jsonPath":".status.loss"}"#,
    printcolumn = r#"{"name":"Tokens/s","type":"number","jsonPath":".status.tokensPerSecond"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","jsonPath":".status.restarts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainingRunSpec {
    pub model: ModelSpec,
    pub data: DataSpec,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    pub training: TrainingSpec,
    #[serde(default)]
    pub parallelism: ParallelismSpec,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    #[serde(default)]
    pub fault_tolerance: FaultToleranceSpec,
    #[serde(default)]
    pub scheduling: SchedulingSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkerTemplate>,
}

impl TrainingRunSpec {
    /// The tokenizer the run uses: with `model.from`, the model directory's (taken from
    /// `base_dir` when relative), unless `data.tokenizer` names another tokenizer path.
    pub fn run_tokenizer(&self, base_dir: &std::path::Path) -> Tokenizer {
        match (&self.model.from, &self.data.tokenizer) {
            (Some(from), Tokenizer::Gpt2 | Tokenizer::Bytes) => Tokenizer::HuggingFace(
                crate::manifest::resolve_path(base_dir, from)
                    .to_string_lossy()
                    .into_owned(),
            ),
            (_, tokenizer) => tokenizer.clone(),
        }
    }
}

// === model ===

/// The model: a Hugging Face directory to start from (`from`), a preset, or explicit
/// dimensions. With a preset, `context` and `vocab` may still be set to override the preset's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// A Hugging Face model directory (config.json, safetensors weights, tokenizer.json) of
    /// model type llama, mistral or qwen2: the architecture and every dimension come from its
    /// config.json and its weights are the starting point. Needs `context` (the training
    /// sequence length); the preset and the other dimensions come from the directory. The
    /// directory's tokenizer is the run's unless `data.tokenizer` names another path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_PATH_LEN))]
    pub from: Option<String>,
    /// The architecture of a model trained from scratch: `gpt2` (the default) or `llama`
    /// (RMSNorm, rotary positions, SwiGLU, grouped-query attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<ModelPreset>,
    /// Transformer blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_LAYERS))]
    pub layers: Option<u32>,
    /// Attention heads per block; must divide `width`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_HEADS))]
    pub heads: Option<u32>,
    /// Embedding width (d_model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_WIDTH))]
    pub width: Option<u32>,
    /// Context length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_CONTEXT))]
    pub context: Option<u32>,
    /// Vocabulary size; defaults to the tokenizer's, and is required with a Hugging Face
    /// tokenizer (at least its size, added tokens included). GPT-2 pads it to a multiple of
    /// 128 internally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_VOCAB))]
    pub vocab: Option<u32>,
    /// Key/value heads of grouped-query attention (`architecture: llama`); must divide
    /// `heads`. Defaults to `heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_HEADS))]
    pub kv_heads: Option<u32>,
    /// The MLP's hidden width (`architecture: llama`, required with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_FFN_WIDTH))]
    pub ffn_width: Option<u32>,
}

/// Model architectures.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Architecture {
    /// GPT-2: LayerNorm, learned positions, GELU MLP, tied head.
    #[default]
    #[serde(rename = "gpt2")]
    Gpt2,
    /// The Llama family: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention.
    #[serde(rename = "llama")]
    Llama,
}

impl Architecture {
    /// The name used in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Gpt2 => "gpt2",
            Architecture::Llama => "llama",
        }
    }

    fn is_gpt2(&self) -> bool {
        *self == Architecture::Gpt2
    }
}

/// Named model shapes. `tiny` trains in minutes on a laptop CPU; the rest are the GPT-2 family.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ModelPreset {
    #[serde(rename = "tiny")]
    Tiny,
    #[serde(rename = "gpt2")]
    Gpt2,
    #[serde(rename = "gpt2-medium")]
    Gpt2Medium,
    #[serde(rename = "gpt2-large")]
    Gpt2Large,
    #[serde(rename = "gpt2-xl")]
    Gpt2Xl,
}

/// A preset's dimensions. `vocab` is the size before padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresetShape {
    pub layers: u32,
    pub heads: u32,
    pub width: u32,
    pub context: u32,
    pub vocab: u32,
}

impl ModelPreset {
    pub const ALL: [ModelPreset; 5] = [
        ModelPreset::Tiny,
        ModelPreset::Gpt2,
        ModelPreset::Gpt2Medium,
        ModelPreset::Gpt2Large,
        ModelPreset::Gpt2Xl,
    ];

    /// The name used in manifests.
    pub fn name(self) -> &'static str {
        match self {
            ModelPreset::Tiny => "tiny",
            ModelPreset::Gpt2 => "gpt2",
            ModelPreset::Gpt2Medium => "gpt2-medium",
            ModelPreset::Gpt2Large => "gpt2-large",
            ModelPreset::Gpt2Xl => "gpt2-xl",
        }
    }

    pub fn shape(self) -> PresetShape {
        let gpt2 = |layers, heads, width| PresetShape {
            layers,
            heads,
            width,
            context: 1024,
            vocab: GPT2_VOCAB,
        };
        match self {
            ModelPreset::Tiny => PresetShape {
                layers: 4,
                heads: 4,
                width: 128,
                context: 128,
                vocab: BYTES_VOCAB,
            },
            ModelPreset::Gpt2 => gpt2(12, 12, 768),
            ModelPreset::Gpt2Medium => gpt2(24, 16, 1024),
            ModelPreset::Gpt2Large => gpt2(36, 20, 1280),
            ModelPreset::Gpt2Xl => gpt2(48, 25, 1600),
        }
    }
}

/// GPT-2's BPE vocabulary size.
pub const GPT2_VOCAB: u32 = 50_257;
/// The byte tokenizer's vocabulary size.
pub const BYTES_VOCAB: u32 = 256;

/// The dimensions a model spec resolves to, after the preset and overrides are applied (or
/// read from `model.from`'s config.json). A checkpoint records them; a resume needs the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModel {
    #[serde(default, skip_serializing_if = "Architecture::is_gpt2")]
    pub architecture: Architecture,
    pub layers: u32,
    pub heads: u32,
    pub width: u32,
    /// The training sequence length.
    pub context: u32,
    pub vocab: u32,
    /// Key/value heads (llama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<u32>,
    /// The MLP's hidden width (llama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_width: Option<u32>,
    /// Dimensions per attention head where it is not width / heads (llama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u32>,
}

impl ModelSpec {
    /// The family the spec trains: the Llama family for a model directory, otherwise the
    /// `architecture` (GPT-2 by default).
    pub fn family(&self) -> Architecture {
        if self.from.is_some() {
            Architecture::Llama
        } else {
            self.architecture.unwrap_or_default()
        }
    }

    /// The context length this spec trains with, if it can be known.
    pub fn effective_context(&self) -> Option<u32> {
        self.context.or(self.preset.map(|p| p.shape().context))
    }

    /// Resolves the preset and overrides; `None` when neither a preset nor every explicit
    /// dimension is given (which `validate()` reports). The vocabulary defaults to the
    /// tokenizer's; a Hugging Face tokenizer's size is known only from its file, which the
    /// API server cannot read, so with one `model.vocab` is required (`validate()` says so) and
    /// the run checks it against the tokenizer when it loads it.
    ///
    /// A `from` directory is not read here (see [`crate::resolved::ResolvedRun::resolve`]):
    /// `None`.
    pub fn resolve(&self, tokenizer: &Tokenizer) -> Option<ResolvedModel> {
        if self.from.is_some() {
            return None;
        }
        let base = self.preset.map(ModelPreset::shape);
        let architecture = self.architecture.unwrap_or_default();
        let heads = self.heads.or(base.map(|b| b.heads))?;
        let llama = architecture == Architecture::Llama;
        Some(ResolvedModel {
            architecture,
            layers: self.layers.or(base.map(|b| b.layers))?,
            heads,
            width: self.width.or(base.map(|b| b.width))?,
            context: self.effective_context()?,
            vocab: self.vocab.or(tokenizer.vocab_size())?,
            kv_heads: llama.then(|| self.kv_heads.unwrap_or(heads)),
            ffn_width: if llama { Some(self.ffn_width?) } else { None },
            head_dim: None,
        })
    }
}

// === data ===

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSpec {
    /// The training data: token shards (a shard file, a directory of `*.bin` shards, or a glob
    /// such as `data/train-*.bin`), or text (a UTF-8 file, a directory of text files walked
    /// recursively, or a glob), which the run tokenizes with `tokenizer` into a cache beside
    /// the checkpoints before its first step.
    #[schemars(length(min = 1))]
    pub train: String,
    /// Held-out data for the validation loss; same forms as `train`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    /// For text `train` data: the fraction of every input file's tokens (its end) held out as
    /// the validation set, in place of `validation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub validation_fraction: Option<f64>,
    /// How the shards were tokenized, or how the run tokenizes text: `gpt2` (the default),
    /// `bytes`, or the path of a Hugging Face tokenizer (a model directory with
    /// `tokenizer.json`, or the file; a path has a `/` or ends in `.json`), which needs
    /// `model.vocab`.
    #[serde(default)]
    pub tokenizer: Tokenizer,
    /// A volume holding the shards, mounted read-only on every worker (Kubernetes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<DataVolume>,
    /// What `train` and `validation` hold; detected from the files when unset (`.jsonl` files
    /// by their first record's fields, `*.bin` and shard files as `shards`, anything else as
    /// `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// For chat data: a Jinja chat template file, in place of the tokenizer directory's
    /// (`chat_template` in tokenizer_config.json, or `chat_template.jinja`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_PATH_LEN))]
    pub chat_template: Option<String>,
    /// For instruction and chat data: which tokens the loss counts, `completions` (the
    /// completion / assistant tokens; the default) or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_on: Option<TrainOn>,
    /// For instruction and chat data: what happens to an example longer than the context,
    /// `truncate` (its end is cut; the default) or `drop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlong: Option<Overlong>,
}

/// What a data field holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// UTF-8 text files; each file is a document.
    Text,
    /// JSON Lines with a `text` field; each record is a document.
    Jsonl,
    /// JSON Lines with `prompt` and `completion` fields.
    Instruction,
    /// JSON Lines with `messages`: a list of `{role, content}` (system, user, assistant),
    /// rendered with the chat template.
    Chat,
    /// Token shards made by `tessera data prepare`.
    Shards,
}

impl DataFormat {
    /// The name a manifest spells it with.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Text => "text",
            DataFormat::Jsonl => "jsonl",
            DataFormat::Instruction => "instruction",
            DataFormat::Chat => "chat",
            DataFormat::Shards => "shards",
        }
    }

    /// Instruction and chat data are examples packed into rows, with a loss mask.
    pub fn is_examples(self) -> bool {
        matches!(self, DataFormat::Instruction | DataFormat::Chat)
    }
}

/// Which tokens of instruction and chat examples the loss counts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrainOn {
    /// Only completion / assistant tokens (and the end-of-sequence after a completion).
    #[default]
    Completions,
    /// Every token.
    All,
}

/// What happens to an example longer than the context.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep its first context + 1 tokens.
    #[default]
    Truncate,
    /// Leave it out (counted in the run's data report).
    Drop,
}

/// A PersistentVolumeClaim with the token shards, mounted read-only at `mountPath`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataVolume {
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// Where the claim is mounted; `train` and `validation` name paths below it.
    #[schemars(length(min = 1, max = MAX_PATH_LEN))]
    pub mount_path: String,
}

/// How text becomes tokens: a built-in tokenizer by name, or a Hugging Face tokenizer by path.
///
/// In a manifest (and on the command line) it is one string:
///
/// - `gpt2`: GPT-2's byte-pair encoding (50,257 tokens), the default;
/// - `bytes`: raw bytes (256 tokens);
/// - anything else is a path to a Hugging Face tokenizer: a model directory holding
///   `tokenizer.json` (and, for its BOS/EOS, `tokenizer_config.json` and
///   `generation_config.json`), or the `tokenizer.json` file itself. A path must contain a `/`
///   or end in `.json` (write `./gpt2` for a directory named `gpt2`), so a misspelt name is
///   refused instead of being looked up as a file. Relative paths resolve against the
///   manifest's directory, like the data paths.
///
/// A string keeps the CRD schema structural (a string-or-object field is not) and the names
/// spelt as they always were.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(from = "String", into = "String")]
pub enum Tokenizer {
    /// GPT-2's byte-pair encoding (50,257 tokens).
    #[default]
    Gpt2,
    /// Raw bytes (256 tokens).
    Bytes,
    /// A Hugging Face `tokenizer.json`, or the model directory holding it.
    HuggingFace(String),
}

/// What the CRD schema lets `spec.data.tokenizer` be: a name, or a path (a `/` in it, or a
/// `.json` ending). [`Tokenizer::problem`] is the same rule for `validate()`.
pub const TOKENIZER_PATTERN: &str = r"^(gpt2|bytes|.*/.*|.*\.json)$";

impl From<String> for Tokenizer {
    fn from(s: String) -> Tokenizer {
        match s.as_str() {
            "gpt2" => Tokenizer::Gpt2,
            "bytes" => Tokenizer::Bytes,
            _ => Tokenizer::HuggingFace(s),
        }
    }
}

impl From<&str> for Tokenizer {
    fn from(s: &str) -> Tokenizer {
        Tokenizer::from(s.to_string())
    }
}

impl From<Tokenizer> for String {
    fn from(t: Tokenizer) -> String {
        t.name().to_string()
    }
}

impl std::fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl JsonSchema for Tokenizer {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Tokenizer".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_PATH_LEN,
            "pattern": TOKENIZER_PATTERN,
        })
    }
}

impl Tokenizer {
    /// The vocabulary size of a built-in tokenizer; `None` for a Hugging Face tokenizer, whose
    /// size is known only by loading its file.
    pub fn vocab_size(&self) -> Option<u32> {
        match self {
            Tokenizer::Gpt2 => Some(GPT2_VOCAB),
            Tokenizer::Bytes => Some(BYTES_VOCAB),
            Tokenizer::HuggingFace(_) => None,
        }
    }

    /// The name, or the path of a Hugging Face tokenizer (as written in the manifest).
    pub fn name(&self) -> &str {
        match self {
            Tokenizer::Gpt2 => "gpt2",
            Tokenizer::Bytes => "bytes",
            Tokenizer::HuggingFace(path) => path,
        }
    }

    /// The path of a Hugging Face tokenizer.
    pub fn path(&self) -> Option<&str> {
        match self {
            Tokenizer::HuggingFace(path) => Some(path),
            _ => None,
        }
    }

    /// Why this cannot name a tokenizer, in the API server's words where it has them; the
    /// twin of the schema's [`TOKENIZER_PATTERN`] and length bounds.
    pub fn problem(&self) -> Option<String> {
        let path = self.path()?;
        if path.is_empty() {
            Some("should be at least 1 chars long".into())
        } else if path.chars().count() > MAX_PATH_LEN as usize {
            Some(format!("may not be longer than {MAX_PATH_LEN} chars"))
        } else if !(path.contains('/') || path.ends_with(".json")) {
            Some(format!(
                "unknown tokenizer {path:?}: use gpt2, bytes, or the path of a Hugging Face \
                 tokenizer (a model directory with tokenizer.json, or the file); a path has a \
                 '/' or ends in .json, e.g. ./{path}"
            ))
        } else {
            None
        }
    }
}

// === optimizer ===

/// AdamW with decoupled weight decay, warm-up then a decay schedule, global-norm clipping.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Peak learning rate; must be greater than 0.
    #[serde(default = "defaults::lr")]
    #[schemars(range(min = 0.0, max = MAX_LR))]
    pub lr: f64,
    /// The schedule decays to `minLrRatio × lr`.
    #[serde(default = "defaults::min_lr_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_lr_ratio: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub schedule: LrSchedule,
    #[serde(default = "defaults::weight_decay")]
    #[schemars(range(min = 0.0, max = MAX_WEIGHT_DECAY))]
    pub weight_decay: f64,
    /// Also decay the (tied) token and the position embeddings.
    #[serde(default)]
    pub decay_embeddings: bool,
    #[serde(default = "defaults::beta1")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta1: f64,
    #[serde(default = "defaults::beta2")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta2: f64,
    #[serde(default = "defaults::eps")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub eps: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    #[serde(default = "defaults::grad_clip")]
    #[schemars(range(min = 0.0))]
    pub grad_clip: f64,
    /// Tokens per optimizer step across the whole gang; must be a multiple of
    /// `microBatch × context × nodes × gpusPerNode` (the rest is gradient accumulation).
    #[serde(default = "defaults::global_batch_tokens")]
    #[schemars(range(min = 1))]
    pub global_batch_tokens: u64,
    /// Sequences per rank per forward/backward pass.
    #[serde(default = "defaults::micro_batch")]
    #[schemars(range(min = 1, max = MAX_MICRO_BATCH))]
    pub micro_batch: u32,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        OptimizerSpec {
            lr: defaults::lr(),
            min_lr_ratio: defaults::min_lr_ratio(),
            warmup_steps: 0,
            schedule: LrSchedule::default(),
            weight_decay: defaults::weight_decay(),
            decay_embeddings: false,
            beta1: defaults::beta1(),
            beta2: defaults::beta2(),
            eps: defaults::eps(),
            grad_clip: defaults::grad_clip(),
            global_batch_tokens: defaults::global_batch_tokens(),
            micro_batch: defaults::micro_batch(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    #[default]
    Cosine,
    Linear,
    Constant,
}

// === training ===

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainingSpec {
    /// Optimizer steps to train; or set `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub steps: Option<u64>,
    /// Passes over the training examples (packed rows of instruction and chat data, windows
    /// of `model.context` tokens of text), instead of `steps`: each epoch visits every example
    /// once in an order shuffled by (seed, epoch), and the run takes as many steps as that
    /// needs, the last one completing the final epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_EPOCHS))]
    pub epochs: Option<u32>,
    /// Seeds initialisation and the data order: the batch of step s is a pure function of
    /// (seed, s).
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Compute the validation loss every this many steps; 0 turns it off.
    #[serde(default)]
    pub eval_interval: u64,
    /// Micro-batches in the fixed validation set.
    #[serde(default = "defaults::eval_batches")]
    #[schemars(range(min = 1))]
    pub eval_batches: u32,
    /// Initialise from a Hugging Face GPT-2 safetensors file instead of at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// Train low-rank adapters on a frozen base (`model.from`, or `initFrom` for GPT-2)
    /// instead of every weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
}

/// LoRA as PEFT defines it: each targeted projection `y = x·Wᵀ` becomes
/// `y = x·Wᵀ + (alpha/rank)·(x·Aᵀ)·Bᵀ` with A (rank × in) drawn as PEFT draws it and B
/// (out × rank) zero, and only A and B (and norms or embeddings where asked) train.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoraSpec {
    /// The adapters' rank r; at most the smaller side of every targeted projection.
    #[schemars(range(min = 1, max = MAX_LORA_RANK))]
    pub rank: u32,
    /// The adapters' output is scaled by alpha / rank. Defaults to 2 × rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_LORA_ALPHA))]
    pub alpha: Option<f64>,
    /// Dropout on the adapters' input while training (each element dropped with this
    /// probability, the rest scaled by 1 / (1 - dropout)), as PEFT's `lora_dropout`.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub dropout: f64,
    /// The projections that get adapters, in the family's own names: q_proj, k_proj,
    /// v_proj, o_proj, gate_proj, up_proj, down_proj (Llama family); c_attn, c_proj, c_fc
    /// (GPT-2; c_proj is both the attention's and the MLP's output projection, as in PEFT).
    /// Defaults to PEFT's: q_proj and v_proj, or c_attn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub targets: Vec<LoraTarget>,
    /// Train the RMSNorm/LayerNorm weights too.
    #[serde(default)]
    pub train_norms: bool,
    /// Train the token embedding (and an untied output head) too.
    #[serde(default)]
    pub train_embeddings: bool,
}

impl LoraSpec {
    /// alpha, or its default 2 × rank.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(2.0 * f64::from(self.rank))
    }

    /// The adapters' output scale, alpha / rank.
    pub fn scale(&self) -> f64 {
        self.alpha() / f64::from(self.rank)
    }

    /// The targets, or the family's default ones (PEFT's).
    pub fn targets_for(&self, architecture: Architecture) -> Vec<LoraTarget> {
        if !self.targets.is_empty() {
            return self.targets.clone();
        }
        match architecture {
            Architecture::Llama => vec![LoraTarget::QProj, LoraTarget::VProj],
            Architecture::Gpt2 => vec![LoraTarget::CAttn],
        }
    }
}

/// A projection LoRA may adapt, by the name Hugging Face and PEFT give it.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
    CAttn,
    CProj,
    CFc,
}

impl LoraTarget {
    pub const LLAMA: [LoraTarget; 7] = [
        LoraTarget::QProj,
        LoraTarget::KProj,
        LoraTarget::VProj,
        LoraTarget::OProj,
        LoraTarget::GateProj,
        LoraTarget::UpProj,
        LoraTarget::DownProj,
    ];
    pub const GPT2: [LoraTarget; 3] = [LoraTarget::CAttn, LoraTarget::CProj, LoraTarget::CFc];

    /// The name in manifests, Hugging Face's module name.
    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::QProj => "q_proj",
            LoraTarget::KProj => "k_proj",
            LoraTarget::VProj => "v_proj",
            LoraTarget::OProj => "o_proj",
            LoraTarget::GateProj => "gate_proj",
            LoraTarget::UpProj => "up_proj",
            LoraTarget::DownProj => "down_proj",
            LoraTarget::CAttn => "c_attn",
            LoraTarget::CProj => "c_proj",
            LoraTarget::CFc => "c_fc",
        }
    }

    /// Whether the family has this projection.
    pub fn in_family(self, architecture: Architecture) -> bool {
        match architecture {
            Architecture::Llama => Self::LLAMA.contains(&self),
            Architecture::Gpt2 => Self::GPT2.contains(&self),
        }
    }
}

// === parallelism ===

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParallelismSpec {
    /// Nodes in the gang (one worker pod each).
    #[serde(default = "defaults::one")]
    #[schemars(range(min = 1, max = MAX_NODES))]
    pub nodes: u32,
    /// Trainer ranks per node: one per GPU, or CPU ranks on a node without GPUs.
    #[serde(default = "defaults::one")]
    #[schemars(range(min = 1, max = MAX_GPUS_PER_NODE))]
    pub gpus_per_node: u32,
    #[serde(default)]
    pub sharding: Sharding,
}

impl Default for ParallelismSpec {
    fn default() -> Self {
        ParallelismSpec {
            nodes: 1,
            gpus_per_node: 1,
            sharding: Sharding::None,
        }
    }
}

impl ParallelismSpec {
    pub fn world_size(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }
}

/// How training state is split across ranks (ZeRO stages).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sharding {
    /// Plain data parallel: every rank holds everything; gradients are all-reduced.
    #[default]
    None,
    /// ZeRO-1: optimizer state split across ranks.
    Optimizer,
    /// ZeRO-2: optimizer state and gradients split.
    Gradients,
    /// ZeRO-3 / FSDP: parameters split too, gathered layer by layer.
    Full,
}

// === checkpoint ===

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Directory holding the checkpoints. In local mode a relative path is taken from the
    /// run's output directory; with `volume` it is where the volume is mounted and must be
    /// absolute.
    #[serde(default = "defaults::checkpoint_path")]
    #[schemars(length(min = 1, max = MAX_PATH_LEN))]
    pub path: String,
    /// A shared volume mounted at `path` on every worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<CheckpointVolume>,
    /// Write a checkpoint every this many steps (and always after the last step).
    #[serde(default = "defaults::every_steps")]
    #[schemars(range(min = 1))]
    pub every_steps: u64,
    /// Committed checkpoints kept; older ones are pruned.
    #[serde(default = "defaults::keep")]
    #[schemars(range(min = 1, max = MAX_KEEP))]
    pub keep: u32,
    /// Snapshot, then write in the background while training goes on.
    #[serde(default = "defaults::yes", rename = "async")]
    pub async_write: bool,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            path: defaults::checkpoint_path(),
            volume: None,
            every_steps: defaults::every_steps(),
            keep: defaults::keep(),
            async_write: true,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointVolume {
    /// A ReadWriteMany PersistentVolumeClaim shared by the gang.
    #[schemars(length(min = 1))]
    pub claim_name: String,
}

// === fault tolerance ===

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultToleranceSpec {
    /// Gang restarts allowed before the run is marked Failed.
    #[serde(default = "defaults::max_restarts")]
    #[schemars(range(max = MAX_RESTARTS))]
    pub max_restarts: u32,
    /// First restart delay; doubles with each further restart.
    #[serde(default = "defaults::backoff_seconds")]
    #[schemars(range(max = MAX_BACKOFF_SECONDS))]
    pub backoff_seconds: u32,
    /// A rank silent (or without step progress) this long is treated as hung.
    #[serde(default = "defaults::heartbeat_timeout_seconds")]
    #[schemars(range(min = 1, max = MAX_HEARTBEAT_TIMEOUT_SECONDS))]
    pub heartbeat_timeout_seconds: u32,
    /// Continue on fewer nodes, down to this many, when a node is lost (elastic runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_NODES))]
    pub min_nodes: Option<u32>,
}

impl Default for FaultToleranceSpec {
    fn default() -> Self {
        FaultToleranceSpec {
            max_restarts: defaults::max_restarts(),
            backoff_seconds: defaults::backoff_seconds(),
            heartbeat_timeout_seconds: defaults::heartbeat_timeout_seconds(),
            min_nodes: None,
        }
    }
}

// === scheduling ===

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulingSpec {
    /// A Kueue LocalQueue; the run is then admitted by Kueue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// A gang scheduler (Volcano, scheduler-plugins) for the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// Stop the run (after a checkpoint) and keep it stopped until this is false again.
    #[serde(default)]
    pub suspend: bool,
    /// Fail the run when it has been running this long since it was first admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<u64>,
    /// Delete the finished (Succeeded or Failed) run this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u64>,
}

// === worker template ===

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerTemplate {
    /// The worker image (runs `tessera-agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// Serde defaults; the CRD schema carries the same values as `default:`.
mod defaults {
    pub fn lr() -> f64 {
        6e-4
    }
    pub fn min_lr_ratio() -> f64 {
        0.1
    }
    pub fn weight_decay() -> f64 {
        0.1
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.95
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn grad_clip() -> f64 {
        1.0
    }
    pub fn global_batch_tokens() -> u64 {
        524_288
    }
    pub fn micro_batch() -> u32 {
        8
    }
    pub fn seed() -> u64 {
        1337
    }
    pub fn eval_batches() -> u32 {
        8
    }
    pub fn one() -> u32 {
        1
    }
    pub fn checkpoint_path() -> String {
        "checkpoints".to_string()
    }
    pub fn every_steps() -> u64 {
        100
    }
    pub fn keep() -> u32 {
        3
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_restarts() -> u32 {
        10
    }
    pub fn backoff_seconds() -> u32 {
        5
    }
    pub fn heartbeat_timeout_seconds() -> u32 {
        60
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizers_are_one_string_and_round_trip() {
        for (yaml, tokenizer) in [
            ("gpt2", Tokenizer::Gpt2),
            ("bytes", Tokenizer::Bytes),
            (
                "models/llama",
                Tokenizer::HuggingFace("models/llama".into()),
            ),
            ("tok.json", Tokenizer::HuggingFace("tok.json".into())),
        ] {
            let parsed: Tokenizer = serde_yaml::from_str(yaml).unwrap();
            assert_eq!(parsed, tokenizer);
            assert_eq!(parsed.problem(), None, "{yaml}");
            assert_eq!(
                serde_json::to_string(&parsed).unwrap(),
                format!("\"{yaml}\"")
            );
        }
        assert_eq!(Tokenizer::default(), Tokenizer::Gpt2);
        assert!(Tokenizer::from("").problem().is_some());
        let unknown = Tokenizer::from("sentencepiece").problem().unwrap();
        assert!(unknown.contains("./sentencepiece"), "{unknown}");
    }

    #[test]
    fn a_hugging_face_tokenizer_needs_an_explicit_vocab() {
        let model = ModelSpec {
            preset: Some(ModelPreset::Tiny),
            ..ModelSpec::default()
        };
        let llama = Tokenizer::from("models/llama");
        assert_eq!(model.resolve(&llama), None);
        let with_vocab = ModelSpec {
            vocab: Some(384),
            ..model.clone()
        };
        assert_eq!(with_vocab.resolve(&llama).unwrap().vocab, 384);
        assert_eq!(model.resolve(&Tokenizer::Bytes).unwrap().vocab, 256);
    }
}
