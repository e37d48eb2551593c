//! One validation for two worlds: the rules a TrainingRun spec must satisfy.
//!
//! ```text
//!                 ┌── bounds (spec::bounds) ──► #[schemars(range)] ─► CRD OpenAPI minimum/maximum
//!  the rules ─────┤                          └► validate(): the same numbers, the same words
//!                 └── cross_field_rules() ───► CEL `x-kubernetes-validations` in the CRD (crd.rs)
//!                                            └► validate(): each rule's Rust twin, same message
//! ```
//!
//! Enums and types are enforced by serde when a manifest is read ([`crate::manifest`]) and by the
//! schema's `enum`/`type` on the API server. Each cross-field rule carries its CEL text and a Rust
//! function; a test evaluates both on every case of the invalid-spec table and requires them to
//! agree, so the cluster refuses what `tessera run` refuses, with the same message.

use std::fmt;

use crate::spec::{
    Architecture, DataFormat, LoraTarget, ModelPreset, Tokenizer, TrainingRunSpec, bounds::*,
};

/// One broken rule: the field it concerns (`spec.model.heads`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A rule that relates several fields, expressed twice: as CEL for the API server and in Rust
/// for `validate()`.
pub struct CrossFieldRule {
    /// Where the rule is attached in the schema: property names below `spec`.
    pub scope: &'static [&'static str],
    /// The field blamed, relative to the scope (the CEL rule's `fieldPath`), e.g. `.heads`;
    /// empty to blame the scope itself.
    pub field_path: &'static str,
    /// The CEL expression; `self` is the object at `scope`.
    pub cel: String,
    /// Shown by the API server and by `validate()`.
    pub message: &'static str,
    /// The Rust twin of `cel`.
    pub holds: fn(&TrainingRunSpec) -> bool,
}

impl CrossFieldRule {
    /// The field a violation is reported on, e.g. `spec.model.heads`.
    pub fn field(&self) -> String {
        let mut field = String::from("spec");
        for part in self.scope {
            field.push('.');
            field.push_str(part);
        }
        field.push_str(self.field_path);
        field
    }
}

/// CEL for the context length a model spec resolves to (explicit, else the preset's).
fn cel_effective_context() -> String {
    let table: Vec<String> = ModelPreset::ALL
        .iter()
        .map(|p| format!("'{}': {}", p.name(), p.shape().context))
        .collect();
    format!(
        "(has(self.model.context) ? self.model.context : {{{}}}[self.model.preset])",
        table.join(", ")
    )
}

/// Every cross-field rule, in the order they are reported.
pub fn cross_field_rules() -> Vec<CrossFieldRule> {
    vec![
        CrossFieldRule {
            scope: &["model"],
            field_path: "",
            cel: "has(self.from) || has(self.preset) || (has(self.layers) && has(self.heads) \
                  && has(self.width) && has(self.context))"
                .into(),
            message: "set model.from (a Hugging Face model directory), model.preset, or all of \
                      model.layers, model.heads, model.width and model.context",
            holds: |s| {
                let m = &s.model;
                m.from.is_some()
                    || m.preset.is_some()
                    || (m.layers.is_some()
                        && m.heads.is_some()
                        && m.width.is_some()
                        && m.context.is_some())
            },
        },
        CrossFieldRule {
            scope: &["model"],
            field_path: ".from",
            cel: "!has(self.from) || !(has(self.preset) || has(self.architecture) || \
                  has(self.layers) || has(self.heads) || has(self.width) || has(self.vocab) || \
                  has(self.kvHeads) || has(self.ffnWidth))"
                .into(),
            message: "model.from takes the architecture and every dimension from the directory's \
                      config.json: remove model.preset, model.architecture, model.layers, \
                      model.heads, model.width, model.vocab, model.kvHeads and model.ffnWidth \
                      (model.context, the training sequence length, stays)",
            holds: |s| {
                let m = &s.model;
                m.from.is_none()
                    || !(m.preset.is_some()
                        || m.architecture.is_some()
                        || m.layers.is_some()
                        || m.heads.is_some()
                        || m.width.is_some()
                        || m.vocab.is_some()
                        || m.kv_heads.is_some()
                        || m.ffn_width.is_some())
            },
        },
        CrossFieldRule {
            scope: &["model"],
            field_path: ".context",
            cel: "!has(self.from) || has(self.context)".into(),
            message: "model.context is required with model.from: the training sequence length, \
                      at most the model's max_position_embeddings",
            holds: |s| s.model.from.is_none() || s.model.context.is_some(),
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".data.tokenizer",
            cel: "!has(self.model.from) || self.data.tokenizer != 'bytes'".into(),
            message: "with model.from the run uses the model directory's tokenizer: remove \
                      data.tokenizer, or name another tokenizer.json path",
            holds: |s| s.model.from.is_none() || s.data.tokenizer != Tokenizer::Bytes,
        },
        CrossFieldRule {
            scope: &["model"],
            field_path: ".preset",
            cel: "!has(self.preset) || !has(self.architecture) || self.architecture == 'gpt2'"
                .into(),
            message: "the presets are GPT-2 shapes: remove model.architecture, or the preset and \
                      give every dimension",
            holds: |s| {
                s.model.preset.is_none()
                    || s.model.architecture.unwrap_or_default() == Architecture::Gpt2
            },
        },
        CrossFieldRule {
            scope: &["model"],
            field_path: ".ffnWidth",
            cel: "(has(self.architecture) && self.architecture == 'llama') == \
                  has(self.ffnWidth)"
                .into(),
            message: "model.ffnWidth is the llama architecture's MLP width: set it with \
                      model.architecture: llama, and only then",
            holds: |s| {
                (s.model.architecture == Some(Architecture::Llama)) == s.model.ffn_width.is_some()
            },
        },
        CrossFieldRule {
            scope: &["model"],
            field_path: ".kvHeads",
            cel: "!has(self.kvHeads) || ((has(self.architecture) && \
                  self.architecture == 'llama') && (!has(self.heads) || \
                  self.heads % self.kvHeads == 0))"
                .into(),
            message: "model.kvHeads (llama only) must divide model.heads",
            holds: |s| match s.model.kv_heads {
                None => true,
                Some(kv) => {
                    s.model.architecture == Some(Architecture::Llama)
                        && s.model.heads.is_none_or(|h| h.checked_rem(kv) == Some(0))
                }
            },
        },
        CrossFieldRule {
            scope: &["model"],
            field_path: "",
            cel: "!has(self.preset) || !(has(self.layers) || has(self.heads) || has(self.width))"
                .into(),
            message: "model.layers, model.heads and model.width come from model.preset: remove \
                      them, or remove the preset",
            holds: |s| {
                let m = &s.model;
                m.preset.is_none()
                    || !(m.layers.is_some() || m.heads.is_some() || m.width.is_some())
            },
        },
        CrossFieldRule {
            scope: &["model"],
            field_path: ".heads",
            cel: "!has(self.heads) || !has(self.width) || self.width % self.heads == 0".into(),
            message: "model.heads must divide model.width",
            holds: |s| match (s.model.heads, s.model.width) {
                (Some(heads), Some(width)) => width.checked_rem(heads) == Some(0),
                _ => true,
            },
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".model.vocab",
            cel: "!has(self.model.vocab) || !(self.data.tokenizer in ['gpt2', 'bytes']) || \
                  self.model.vocab >= (self.data.tokenizer == 'bytes' ? 256 : 50257)"
                .into(),
            message: "model.vocab must be at least the tokenizer's vocabulary (gpt2: 50257, \
                      bytes: 256)",
            holds: |s| match (s.model.vocab, s.data.tokenizer.vocab_size()) {
                (Some(vocab), Some(tokenizer)) => vocab >= tokenizer,
                _ => true,
            },
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".model.vocab",
            cel: "has(self.model.vocab) || has(self.model.from) || \
                  self.data.tokenizer in ['gpt2', 'bytes']"
                .into(),
            message: "model.vocab is required with a Hugging Face tokenizer (data.tokenizer is \
                      a path): set it to at least the tokenizer's size, added tokens included \
                      (the run refuses a smaller one and names the size)",
            holds: |s| {
                s.model.vocab.is_some()
                    || s.model.from.is_some()
                    || s.data.tokenizer.vocab_size().is_some()
            },
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".optimizer.globalBatchTokens",
            cel: format!(
                "(!has(self.model.context) && !has(self.model.preset)) || \
                 self.optimizer.globalBatchTokens % (self.optimizer.microBatch * {} * \
                 self.parallelism.nodes * self.parallelism.gpusPerNode) == 0",
                cel_effective_context()
            ),
            message: "optimizer.globalBatchTokens must be a multiple of optimizer.microBatch × \
                      context × parallelism.nodes × parallelism.gpusPerNode",
            holds: |s| {
                let Some(context) = s.model.effective_context() else {
                    return true;
                };
                let per_micro_step = u64::from(s.optimizer.micro_batch)
                    * u64::from(context)
                    * s.parallelism.world_size();
                s.optimizer.global_batch_tokens.checked_rem(per_micro_step) == Some(0)
            },
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".optimizer.warmupSteps",
            cel: "!has(self.training.steps) || \
                  self.optimizer.warmupSteps <= self.training.steps"
                .into(),
            message: "optimizer.warmupSteps must not exceed training.steps",
            holds: |s| {
                s.training
                    .steps
                    .is_none_or(|steps| s.optimizer.warmup_steps <= steps)
            },
        },
        CrossFieldRule {
            scope: &["training"],
            field_path: ".steps",
            cel: "has(self.steps) != has(self.epochs)".into(),
            message: "set how long to train with training.steps or training.epochs, one of the \
                      two",
            holds: |s| s.training.steps.is_some() != s.training.epochs.is_some(),
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".faultTolerance.minNodes",
            cel: "!has(self.faultTolerance.minNodes) || \
                  self.faultTolerance.minNodes <= self.parallelism.nodes"
                .into(),
            message: "faultTolerance.minNodes must not exceed parallelism.nodes",
            holds: |s| {
                s.fault_tolerance
                    .min_nodes
                    .is_none_or(|m| m <= s.parallelism.nodes)
            },
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".training.evalInterval",
            cel: "self.training.evalInterval == 0 || has(self.data.validation) || \
                  (has(self.data.validationFraction) && self.data.validationFraction > 0.0)"
                .into(),
            message: "training.evalInterval needs validation data: name data.validation, hold \
                      out part of text data with data.validationFraction, or set evalInterval \
                      to 0",
            holds: |s| {
                s.training.eval_interval == 0
                    || s.data.validation.is_some()
                    || s.data.validation_fraction.is_some_and(|f| f > 0.0)
            },
        },
        CrossFieldRule {
            scope: &["data"],
            field_path: ".validationFraction",
            cel: "!has(self.validation) || !has(self.validationFraction)".into(),
            message: "data.validationFraction holds out part of the training text as the \
                      validation set: remove it, or remove data.validation",
            holds: |s| s.data.validation.is_none() || s.data.validation_fraction.is_none(),
        },
        CrossFieldRule {
            scope: &["data"],
            field_path: ".chatTemplate",
            cel: "!has(self.chatTemplate) || !has(self.format) || self.format == 'chat'".into(),
            message: "data.chatTemplate renders chat data: remove it, or set data.format to chat",
            holds: |s| {
                s.data.chat_template.is_none()
                    || s.data.format.is_none_or(|f| f == DataFormat::Chat)
            },
        },
        CrossFieldRule {
            scope: &["data"],
            field_path: ".format",
            cel: "!has(self.format) || self.format in ['instruction', 'chat'] || \
                  (!has(self.trainOn) && !has(self.overlong))"
                .into(),
            message: "data.trainOn and data.overlong apply to instruction and chat data only: \
                      remove them, or set data.format to instruction or chat",
            holds: |s| {
                s.data.format.is_none_or(DataFormat::is_examples)
                    || (s.data.train_on.is_none() && s.data.overlong.is_none())
            },
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".training.lora",
            cel: "!has(self.training.lora) || has(self.model.from) || has(self.training.initFrom)"
                .into(),
            message: "training.lora trains adapters on a frozen base model: name the base with \
                      model.from (a Hugging Face directory) or, for GPT-2, training.initFrom",
            holds: |s| {
                s.training.lora.is_none()
                    || s.model.from.is_some()
                    || s.training.init_from.is_some()
            },
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".training.lora.targets",
            cel: "!has(self.training.lora) || !has(self.training.lora.targets) || \
                  ((has(self.model.from) || (has(self.model.architecture) && \
                  self.model.architecture == 'llama')) ? \
                  self.training.lora.targets.all(t, t in ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']) : \
                  self.training.lora.targets.all(t, t in ['c_attn', 'c_proj', 'c_fc']))"
                .into(),
            message: "training.lora.targets names projections the model does not have: the \
                      Llama family has q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj and \
                      down_proj; GPT-2 has c_attn, c_proj and c_fc",
            holds: |s| {
                s.training.lora.as_ref().is_none_or(|lora| {
                    let family = s.model.family();
                    lora.targets.iter().all(|t| t.in_family(family))
                })
            },
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".training.lora.dropout",
            cel: "!has(self.training.lora) || !has(self.training.lora.dropout) || \
                  self.training.lora.dropout < 1.0"
                .into(),
            message: "training.lora.dropout must be less than 1 (the probability that an \
                      input of the adapters is dropped)",
            holds: |s| s.training.lora.as_ref().is_none_or(|l| l.dropout < 1.0),
        },
        CrossFieldRule {
            scope: &[],
            field_path: ".training.lora.alpha",
            cel: "!has(self.training.lora) || !has(self.training.lora.alpha) || \
                  self.training.lora.alpha > 0.0"
                .into(),
            message: "training.lora.alpha must be greater than 0",
            holds: |s| {
                s.training
                    .lora
                    .as_ref()
                    .and_then(|l| l.alpha)
                    .is_none_or(|a| a > 0.0)
            },
        },
        CrossFieldRule {
            scope: &["optimizer"],
            field_path: ".lr",
            cel: "self.lr > 0.0".into(),
            message: "optimizer.lr must be greater than 0",
            holds: |s| s.optimizer.lr > 0.0,
        },
        CrossFieldRule {
            scope: &["optimizer"],
            field_path: ".beta1",
            cel: "self.beta1 < 1.0".into(),
            message: "optimizer.beta1 must be less than 1",
            holds: |s| s.optimizer.beta1 < 1.0,
        },
        CrossFieldRule {
            scope: &["optimizer"],
            field_path: ".beta2",
            cel: "self.beta2 < 1.0".into(),
            message: "optimizer.beta2 must be less than 1",
            holds: |s| s.optimizer.beta2 < 1.0,
        },
        CrossFieldRule {
            scope: &["optimizer"],
            field_path: ".eps",
            cel: "self.eps > 0.0".into(),
            message: "optimizer.eps must be greater than 0",
            holds: |s| s.optimizer.eps > 0.0,
        },
        CrossFieldRule {
            scope: &["checkpoint"],
            field_path: ".path",
            cel: "!has(self.volume) || self.path.startsWith('/')".into(),
            message: "checkpoint.path must be absolute when checkpoint.volume is set (the volume \
                      is mounted there)",
            holds: |s| s.checkpoint.volume.is_none() || s.checkpoint.path.starts_with('/'),
        },
        CrossFieldRule {
            scope: &["data"],
            field_path: ".volume.mountPath",
            cel: "!has(self.volume) || self.volume.mountPath.startsWith('/')".into(),
            message: "data.volume.mountPath must be absolute",
            holds: |s| {
                s.data
                    .volume
                    .as_ref()
                    .is_none_or(|v| v.mount_path.starts_with('/'))
            },
        },
    ]
}

// === bounds ===

/// Collects bound violations in the API server's words.
struct Bounds {
    violations: Vec<Violation>,
}

impl Bounds {
    fn report(&mut self, field: &str, message: String) {
        self.violations.push(Violation {
            field: field.to_string(),
            message,
        });
    }

    fn at_least<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, min: T) {
        if value < min {
            self.report(
                field,
                format!("should be greater than or equal to {min} (got {value})"),
            );
        }
    }

    fn at_most<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, max: T) {
        if value > max {
            self.report(
                field,
                format!("should be less than or equal to {max} (got {value})"),
            );
        }
    }

    fn within<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        field: &str,
        value: T,
        min: T,
        max: T,
    ) {
        self.at_least(field, value, min);
        self.at_most(field, value, max);
    }

    fn not_empty(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.report(field, "should be at least 1 chars long".to_string());
        }
    }
}

fn check_bounds(spec: &TrainingRunSpec) -> Vec<Violation> {
    let mut b = Bounds {
        violations: Vec::new(),
    };
    let m = &spec.model;
    if let Some(v) = m.layers {
        b.within("spec.model.layers", v, 1, MAX_LAYERS);
    }
    if let Some(v) = m.heads {
        b.within("spec.model.heads", v, 1, MAX_HEADS);
    }
    if let Some(v) = m.width {
        b.within("spec.model.width", v, 1, MAX_WIDTH);
    }
    if let Some(v) = m.context {
        b.within("spec.model.context", v, 1, MAX_CONTEXT);
    }
    if let Some(v) = m.vocab {
        b.within("spec.model.vocab", v, 1, MAX_VOCAB);
    }
    if let Some(v) = m.kv_heads {
        b.within("spec.model.kvHeads", v, 1, MAX_HEADS);
    }
    if let Some(v) = m.ffn_width {
        b.within("spec.model.ffnWidth", v, 1, MAX_FFN_WIDTH);
    }
    if let Some(from) = &m.from {
        b.not_empty("spec.model.from", from);
        if from.chars().count() > MAX_PATH_LEN as usize {
            b.report(
                "spec.model.from",
                format!("may not be longer than {MAX_PATH_LEN} chars"),
            );
        }
    }
    b.not_empty("spec.data.train", &spec.data.train);
    if let Some(problem) = spec.data.tokenizer.problem() {
        b.report("spec.data.tokenizer", problem);
    }
    if let Some(v) = spec.data.validation_fraction {
        b.within("spec.data.validationFraction", v, 0.0, 0.5);
    }
    if let Some(template) = &spec.data.chat_template {
        b.not_empty("spec.data.chatTemplate", template);
        if template.chars().count() > MAX_PATH_LEN as usize {
            b.report(
                "spec.data.chatTemplate",
                format!("may not be longer than {MAX_PATH_LEN} chars"),
            );
        }
    }
    if let Some(volume) = &spec.data.volume {
        b.not_empty("spec.data.volume.claimName", &volume.claim_name);
        b.not_empty("spec.data.volume.mountPath", &volume.mount_path);
        if volume.mount_path.chars().count() > MAX_PATH_LEN as usize {
            b.report(
                "spec.data.volume.mountPath",
                format!("may not be longer than {MAX_PATH_LEN} chars"),
            );
        }
    }
    if let Some(v) = spec.scheduling.active_deadline_seconds {
        b.at_least("spec.scheduling.activeDeadlineSeconds", v, 1);
    }

    let o = &spec.optimizer;
    b.within("spec.optimizer.lr", o.lr, 0.0, MAX_LR);
    b.within("spec.optimizer.minLrRatio", o.min_lr_ratio, 0.0, 1.0);
    b.within(
        "spec.optimizer.weightDecay",
        o.weight_decay,
        0.0,
        MAX_WEIGHT_DECAY,
    );
    b.within("spec.optimizer.beta1", o.beta1, 0.0, 1.0);
    b.within("spec.optimizer.beta2", o.beta2, 0.0, 1.0);
    b.within("spec.optimizer.eps", o.eps, 0.0, 1.0);
    b.at_least("spec.optimizer.gradClip", o.grad_clip, 0.0);
    b.at_least("spec.optimizer.globalBatchTokens", o.global_batch_tokens, 1);
    b.within(
        "spec.optimizer.microBatch",
        o.micro_batch,
        1,
        MAX_MICRO_BATCH,
    );

    let t = &spec.training;
    if let Some(steps) = t.steps {
        b.at_least("spec.training.steps", steps, 1);
    }
    if let Some(epochs) = t.epochs {
        b.within("spec.training.epochs", epochs, 1, MAX_EPOCHS);
    }
    b.at_least("spec.training.evalBatches", t.eval_batches, 1);
    if let Some(lora) = &t.lora {
        b.within("spec.training.lora.rank", lora.rank, 1, MAX_LORA_RANK);
        if let Some(alpha) = lora.alpha {
            b.within("spec.training.lora.alpha", alpha, 0.0, MAX_LORA_ALPHA);
            if !alpha.is_finite() {
                b.report(
                    "spec.training.lora.alpha",
                    format!("should be a finite number (got {alpha})"),
                );
            }
        }
        b.within("spec.training.lora.dropout", lora.dropout, 0.0, 1.0);
        if lora.targets.len() > LoraTarget::LLAMA.len() {
            b.report(
                "spec.training.lora.targets",
                format!("may name at most {} projections", LoraTarget::LLAMA.len()),
            );
        }
    }

    let p = &spec.parallelism;
    b.within("spec.parallelism.nodes", p.nodes, 1, MAX_NODES);
    b.within(
        "spec.parallelism.gpusPerNode",
        p.gpus_per_node,
        1,
        MAX_GPUS_PER_NODE,
    );

    let c = &spec.checkpoint;
    b.not_empty("spec.checkpoint.path", &c.path);
    if c.path.chars().count() > MAX_PATH_LEN as usize {
        b.report(
            "spec.checkpoint.path",
            format!("may not be longer than {MAX_PATH_LEN} chars"),
        );
    }
    if let Some(volume) = &c.volume {
        b.not_empty("spec.checkpoint.volume.claimName", &volume.claim_name);
    }
    b.at_least("spec.checkpoint.everySteps", c.every_steps, 1);
    b.within("spec.checkpoint.keep", c.keep, 1, MAX_KEEP);

    let f = &spec.fault_tolerance;
    b.at_most(
        "spec.faultTolerance.maxRestarts",
        f.max_restarts,
        MAX_RESTARTS,
    );
    b.at_most(
        "spec.faultTolerance.backoffSeconds",
        f.backoff_seconds,
        MAX_BACKOFF_SECONDS,
    );
    b.within(
        "spec.faultTolerance.heartbeatTimeoutSeconds",
        f.heartbeat_timeout_seconds,
        1,
        MAX_HEARTBEAT_TIMEOUT_SECONDS,
    );
    if let Some(v) = f.min_nodes {
        b.within("spec.faultTolerance.minNodes", v, 1, MAX_NODES);
    }
    // NaN passes no comparison above; name it explicitly.
    for (field, value) in [
        ("spec.optimizer.lr", o.lr),
        ("spec.optimizer.minLrRatio", o.min_lr_ratio),
        ("spec.optimizer.weightDecay", o.weight_decay),
        ("spec.optimizer.beta1", o.beta1),
        ("spec.optimizer.beta2", o.beta2),
        ("spec.optimizer.eps", o.eps),
        ("spec.optimizer.gradClip", o.grad_clip),
    ] {
        if !value.is_finite() {
            b.report(field, format!("should be a finite number (got {value})"));
        }
    }
    b.violations
}

/// Every violation of the spec: bounds first, then cross-field rules. Empty means valid.
pub fn validate(spec: &TrainingRunSpec) -> Vec<Violation> {
    let mut violations = check_bounds(spec);
    for rule in cross_field_rules() {
        if !(rule.holds)(spec) {
            violations.push(Violation {
                field: rule.field(),
                message: rule.message.to_string(),
            });
        }
    }
    violations
}
