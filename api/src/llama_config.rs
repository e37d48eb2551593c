//! `config.json` of a Hugging Face Llama-family model: [`LlamaConfig`], read from either
//! dialect `transformers` writes and written in the one form every reader we know of reads.
//!
//! Dialects read:
//!
//! | | transformers 4.x | transformers 5.x |
//! |---|---|---|
//! | RoPE | top-level `rope_theta`, `rope_scaling` (`rope_type`, or `type` before 4.43) | `rope_parameters` (`rope_type`, `rope_theta`, scaling fields) |
//! | weight dtype | `torch_dtype` (4.56+ also `dtype`) | `dtype` |
//!
//! A file holding both RoPE forms is read when they agree and refused when they differ.
//!
//! Defaults, as the `transformers` config classes of all three model types define them:
//! `num_key_value_heads` = `num_attention_heads`, `head_dim` = `hidden_size /
//! num_attention_heads`, `rms_norm_eps` 1e-6, `rope_theta` 10000, no RoPE scaling,
//! `tie_word_embeddings` false, `attention_bias` false, `hidden_act` silu. The dimensions,
//! `model_type` and `max_position_embeddings` have no default: a file without them is refused.
//!
//! Per model type:
//! - `llama`: `attention_bias` true puts a bias on q, k, v *and* o (as `LlamaAttention` does);
//!   `mlp_bias` true is refused.
//! - `qwen2`: q, k and v always have a bias, o never (the `attention_bias` key is not read);
//!   `use_sliding_window` true (or a `sliding_attention` entry in `layer_types`) is refused,
//!   and `sliding_window` is otherwise ignored, as `transformers` ignores it.
//! - `mistral`: no biases; `sliding_window` is kept in [`LlamaConfig::sliding_window`]. The
//!   reference computes full causal attention, which is exactly sliding-window attention for
//!   sequences no longer than the window, and refuses longer sequences
//!   (the trainer's `ReferenceError::SequenceBeyondSlidingWindow` and
//!   `ModelError::BeyondSlidingWindow`); a config is not
//!   refused for its window, since Mistral 7B v0.1 (window 4096, 32k positions) is usable at
//!   4096 tokens.
//!
//! Refused by name: other model types, RoPE types other than `default` and `llama3` (`linear`,
//! `dynamic`, `yarn`, `longrope`, ...), `partial_rotary_factor` other than 1, activations other
//! than silu, attention dropout, and quantized checkpoints (`quantization_config`).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// The file name inside a model directory.
pub const CONFIG_FILE: &str = "config.json";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a JSON object: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: {field} is missing; {fix}")]
    Missing {
        path: PathBuf,
        field: String,
        fix: String,
    },
    #[error("{path}: {field} is {found}; {want}")]
    Invalid {
        path: PathBuf,
        field: String,
        found: String,
        want: String,
    },
    #[error("{path}: {field} {value} is not supported ({supported}); {fix}")]
    Unsupported {
        path: PathBuf,
        field: String,
        value: String,
        supported: String,
        fix: String,
    },
    #[error("{path}: {first} and {second} disagree ({detail}); keep one of them")]
    Conflict {
        path: PathBuf,
        first: String,
        second: String,
        detail: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The architectures read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
}

impl ModelType {
    /// The `model_type` string.
    pub fn name(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
            ModelType::Qwen2 => "qwen2",
        }
    }

    /// The `transformers` class that loads the causal language model.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Mistral => "MistralForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [ModelType::Llama, ModelType::Mistral, ModelType::Qwen2]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

/// Which attention projections carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBias {
    None,
    /// q, k and v (Qwen2).
    Qkv,
    /// q, k, v and o (Llama with `attention_bias: true`).
    QkvO,
}

impl AttentionBias {
    pub fn qkv(self) -> bool {
        self != AttentionBias::None
    }
    pub fn o(self) -> bool {
        self == AttentionBias::QkvO
    }
}

/// Llama 3's frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    /// None: `rope_type` `default`.
    pub llama3: Option<Llama3Scaling>,
}

/// The weight dtype a config declares (`dtype` / `torch_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    BF16,
    F16,
}

impl WeightDtype {
    /// The name `transformers` writes.
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::BF16 => "bfloat16",
            WeightDtype::F16 => "float16",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [WeightDtype::F32, WeightDtype::BF16, WeightDtype::F16]
            .into_iter()
            .find(|d| d.torch_name() == name)
    }
}

/// Special token ids, carried so a written config keeps them (generation stops on `eos`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenIds {
    pub bos: Option<u32>,
    /// `eos_token_id` may be one id or a list.
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
}

/// A Llama-family model's shape and numerics.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub attention_bias: AttentionBias,
    pub tie_word_embeddings: bool,
    /// Mistral's attention window (see the module documentation); None for Llama and Qwen2.
    pub sliding_window: Option<usize>,
    pub dtype: Option<WeightDtype>,
    pub tokens: TokenIds,
}

/// Reads typed fields of one JSON object, naming `prefix.field` and the file in errors.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn name(&self, field: &str) -> String {
        if self.prefix.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.prefix)
        }
    }

    /// The value, with JSON null read as absent.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn invalid(&self, field: &str, found: &Value, want: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: self.name(field),
            found: found.to_string(),
            want: want.to_string(),
        }
    }

    fn missing(&self, field: &str, fix: &str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_path_buf(),
            field: self.name(field),
            fix: fix.to_string(),
        }
    }

    fn usize(&self, field: &str) -> Result<Option<usize>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(field, v, "it must be a non-negative integer")),
        }
    }

    /// A required integer of at least 1.
    fn dim(&self, field: &str) -> Result<usize, ConfigError> {
        let n = self.usize(field)?.ok_or_else(|| {
            self.missing(
                field,
                "every Llama-family config.json has it; is this one complete?",
            )
        })?;
        self.at_least_one(field, n)
    }

    fn at_least_one(&self, field: &str, n: usize) -> Result<usize, ConfigError> {
        if n == 0 {
            return Err(self.invalid(field, &json!(0), "it must be at least 1"));
        }
        Ok(n)
    }

    fn f64(&self, field: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.invalid(field, v, "it must be a finite number")),
        }
    }

    fn positive(&self, field: &str, x: f64) -> Result<f64, ConfigError> {
        if x > 0.0 {
            Ok(x)
        } else {
            Err(self.invalid(field, &json!(x), "it must be greater than 0"))
        }
    }

    fn bool(&self, field: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(field, v, "it must be true or false")),
        }
    }

    fn str(&self, field: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.invalid(field, v, "it must be a string")),
        }
    }

    fn token(&self, field: &str) -> Result<Option<u32>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => Self::token_id(v)
                .map(Some)
                .ok_or_else(|| self.invalid(field, v, "it must be a token id (0 to 2^32-1)")),
        }
    }

    fn token_id(v: &Value) -> Option<u32> {
        v.as_u64().and_then(|n| u32::try_from(n).ok())
    }

    fn tokens(&self, field: &str) -> Result<Vec<u32>, ConfigError> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(Self::token_id)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    self.invalid(
                        field,
                        &Value::Array(items.clone()),
                        "it must list token ids",
                    )
                }),
            Some(v) => Self::token_id(v)
                .map(|id| vec![id])
                .ok_or_else(|| self.invalid(field, v, "it must be a token id or a list of them")),
        }
    }

    fn unsupported(&self, field: &str, value: &Value, supported: &str, fix: &str) -> ConfigError {
        ConfigError::Unsupported {
            path: self.path.to_path_buf(),
            field: self.name(field),
            value: value.to_string(),
            supported: supported.to_string(),
            fix: fix.to_string(),
        }
    }
}

/// One RoPE description as found in the file, with where it was found.
struct RopeSource {
    rope: RopeConfig,
    /// The key it came from (`rope_parameters` or `rope_scaling`/`rope_theta`).
    key: &'static str,
}

const ROPE_TYPES: &str = "default and llama3 are";
const ROPE_FIX: &str = "the Llama reference implements no other RoPE scaling; \
     use a checkpoint without it or add the scaling to llama/rope.rs";

/// Reads `rope_type` (or the older `type`) and the llama3 fields from one object.
fn rope_kind(f: &Fields, theta: f64) -> Result<RopeConfig, ConfigError> {
    let rope_type = f.str("rope_type")?;
    let old_type = f.str("type")?;
    let kind = match (rope_type, old_type) {
        (Some(a), Some(b)) if a != b => {
            return Err(ConfigError::Conflict {
                path: f.path.to_path_buf(),
                first: f.name("rope_type"),
                second: f.name("type"),
                detail: format!("{a:?} against {b:?}"),
            });
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(f.missing(
                "rope_type",
                "name the RoPE type (\"default\" or \"llama3\") or drop the object",
            ));
        }
    };
    if let Some(p) = f.f64("partial_rotary_factor")?
        && p != 1.0
    {
        return Err(f.unsupported(
            "partial_rotary_factor",
            &json!(p),
            "1 is",
            "the Llama reference rotates the whole head",
        ));
    }
    match kind {
        "default" => Ok(RopeConfig {
            theta,
            llama3: None,
        }),
        "llama3" => {
            let need = |field: &str| {
                f.f64(field)?.ok_or_else(|| {
                    f.missing(field, "rope_type llama3 needs factor, low_freq_factor, high_freq_factor and original_max_position_embeddings")
                })
            };
            let factor = need("factor")?;
            if factor < 1.0 {
                return Err(f.invalid("factor", &json!(factor), "it must be at least 1"));
            }
            let low = f.positive("low_freq_factor", need("low_freq_factor")?)?;
            let high = need("high_freq_factor")?;
            if high <= low {
                return Err(f.invalid(
                    "high_freq_factor",
                    &json!(high),
                    &format!("it must be greater than low_freq_factor ({low})"),
                ));
            }
            let original = f
                .usize("original_max_position_embeddings")?
                .ok_or_else(|| {
                    f.missing(
                        "original_max_position_embeddings",
                        "rope_type llama3 needs the context length the model was pre-trained with",
                    )
                })?;
            let original = f.at_least_one("original_max_position_embeddings", original)?;
            Ok(RopeConfig {
                theta,
                llama3: Some(Llama3Scaling {
                    factor,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: original,
                }),
            })
        }
        other => Err(f.unsupported(
            if rope_type.is_some() {
                "rope_type"
            } else {
                "type"
            },
            &json!(other),
            ROPE_TYPES,
            ROPE_FIX,
        )),
    }
}

const DEFAULT_ROPE_THETA: f64 = 10000.0;

fn object<'a>(top: &Fields<'a>, field: &'static str) -> Result<Option<Fields<'a>>, ConfigError> {
    match top.get(field) {
        None => Ok(None),
        Some(Value::Object(obj)) => Ok(Some(Fields {
            path: top.path,
            obj,
            prefix: field,
        })),
        Some(v) => Err(top.invalid(field, v, "it must be an object or null")),
    }
}

/// The 5.x form, `rope_parameters`, if present.
fn rope_v5(top: &Fields) -> Result<Option<RopeSource>, ConfigError> {
    let Some(params) = object(top, "rope_parameters")? else {
        return Ok(None);
    };
    let theta = params.f64("rope_theta")?.ok_or_else(|| {
        params.missing(
            "rope_theta",
            "transformers 5 writes the RoPE base inside rope_parameters",
        )
    })?;
    let theta = params.positive("rope_theta", theta)?;
    Ok(Some(RopeSource {
        rope: rope_kind(&params, theta)?,
        key: "rope_parameters",
    }))
}

/// The 4.x form, top-level `rope_theta` and `rope_scaling`, if either is present.
fn rope_v4(top: &Fields) -> Result<Option<RopeSource>, ConfigError> {
    let theta = top.f64("rope_theta")?;
    let scaling = object(top, "rope_scaling")?;
    if theta.is_none() && scaling.is_none() {
        return Ok(None);
    }
    let theta = top.positive("rope_theta", theta.unwrap_or(DEFAULT_ROPE_THETA))?;
    let rope = match scaling {
        Some(scaling) => rope_kind(&scaling, theta)?,
        None => RopeConfig {
            theta,
            llama3: None,
        },
    };
    Ok(Some(RopeSource {
        rope,
        key: "rope_theta/rope_scaling",
    }))
}

fn read_rope(top: &Fields) -> Result<RopeConfig, ConfigError> {
    match (rope_v5(top)?, rope_v4(top)?) {
        (Some(v5), Some(v4)) if v5.rope != v4.rope => Err(ConfigError::Conflict {
            path: top.path.to_path_buf(),
            first: v5.key.into(),
            second: v4.key.into(),
            detail: format!("{:?} against {:?}", v5.rope, v4.rope),
        }),
        (Some(one), _) | (None, Some(one)) => Ok(one.rope),
        (None, None) => Ok(RopeConfig {
            theta: DEFAULT_ROPE_THETA,
            llama3: None,
        }),
    }
}

fn read_dtype(top: &Fields) -> Result<Option<WeightDtype>, ConfigError> {
    let parse = |field: &str| -> Result<Option<WeightDtype>, ConfigError> {
        let Some(name) = top.str(field)? else {
            return Ok(None);
        };
        WeightDtype::parse(name).map(Some).ok_or_else(|| {
            top.unsupported(
                field,
                &json!(name),
                "float32, bfloat16 and float16 are",
                "the weights must be stored in one of them",
            )
        })
    };
    match (parse("dtype")?, parse("torch_dtype")?) {
        (Some(a), Some(b)) if a != b => Err(ConfigError::Conflict {
            path: top.path.to_path_buf(),
            first: "dtype".into(),
            second: "torch_dtype".into(),
            detail: format!("{} against {}", a.torch_name(), b.torch_name()),
        }),
        (a, b) => Ok(a.or(b)),
    }
}

/// `layer_types` (5.x) may only name full attention where the reference has no window.
fn check_layer_types(top: &Fields, layers: usize, fix: &str) -> Result<(), ConfigError> {
    let Some(v) = top.get("layer_types") else {
        return Ok(());
    };
    let Some(items) = v.as_array() else {
        return Err(top.invalid("layer_types", v, "it must be a list of strings"));
    };
    if items.len() != layers {
        return Err(top.invalid(
            "layer_types",
            v,
            &format!("it must have one entry per layer (num_hidden_layers is {layers})"),
        ));
    }
    for item in items {
        if item.as_str() != Some("full_attention") {
            return Err(top.unsupported("layer_types", item, "full_attention is", fix));
        }
    }
    Ok(())
}

impl LlamaConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        Self::from_file(&dir.join(CONFIG_FILE))
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses config text; `path` only names the file in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_json(&value, path)
    }

    /// Reads a parsed config; `path` only names the file in errors.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self, ConfigError> {
        let Some(obj) = value.as_object() else {
            return Err(ConfigError::Json {
                path: path.to_path_buf(),
                message: format!("the top level is {value}, not an object"),
            });
        };
        let top = Fields {
            path,
            obj,
            prefix: "",
        };
        let type_name = top.str("model_type")?.ok_or_else(|| {
            top.missing(
                "model_type",
                "set it to \"llama\", \"mistral\" or \"qwen2\" as the checkpoint's architecture is",
            )
        })?;
        let model_type = ModelType::parse(type_name).ok_or_else(|| {
            top.unsupported(
                "model_type",
                &json!(type_name),
                "llama, mistral and qwen2 are",
                "other architectures need their own model code",
            )
        })?;
        if let Some(q) = top.get("quantization_config") {
            return Err(top.unsupported(
                "quantization_config",
                q,
                "unquantized float32, bfloat16 and float16 weights are",
                "use the unquantized checkpoint",
            ));
        }
        if let Some(act) = top.str("hidden_act")?
            && act != "silu"
            && act != "swish"
        {
            return Err(top.unsupported(
                "hidden_act",
                &json!(act),
                "silu is",
                "the Llama MLP is SwiGLU",
            ));
        }
        if let Some(p) = top.f64("attention_dropout")?
            && p != 0.0
        {
            return Err(top.unsupported(
                "attention_dropout",
                &json!(p),
                "0 is",
                "the reference has no dropout; set it to 0.0",
            ));
        }
        if let Some(p) = top.f64("partial_rotary_factor")?
            && p != 1.0
        {
            return Err(top.unsupported(
                "partial_rotary_factor",
                &json!(p),
                "1 is",
                "the Llama reference rotates the whole head",
            ));
        }

        let vocab_size = top.dim("vocab_size")?;
        let hidden_size = top.dim("hidden_size")?;
        let intermediate_size = top.dim("intermediate_size")?;
        let num_layers = top.dim("num_hidden_layers")?;
        let num_heads = top.dim("num_attention_heads")?;
        let num_kv_heads = match top.usize("num_key_value_heads")? {
            Some(n) => top.at_least_one("num_key_value_heads", n)?,
            None => num_heads,
        };
        if !num_heads.is_multiple_of(num_kv_heads) {
            return Err(top.invalid(
                "num_key_value_heads",
                &json!(num_kv_heads),
                &format!("it must divide num_attention_heads ({num_heads})"),
            ));
        }
        let head_dim = match top.usize("head_dim")? {
            Some(d) => top.at_least_one("head_dim", d)?,
            None if hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
            None => {
                return Err(top.missing(
                    "head_dim",
                    &format!(
                        "hidden_size ({hidden_size}) is not a multiple of num_attention_heads \
                         ({num_heads}), so head_dim must be given"
                    ),
                ));
            }
        };
        if !head_dim.is_multiple_of(2) {
            return Err(top.invalid(
                "head_dim",
                &json!(head_dim),
                "it must be even (RoPE rotates pairs of dimensions)",
            ));
        }
        let rms_norm_eps = match top.f64("rms_norm_eps")? {
            Some(eps) => top.positive("rms_norm_eps", eps)?,
            None => 1e-6,
        };
        let max_position_embeddings = top.usize("max_position_embeddings")?.ok_or_else(|| {
            top.missing(
                "max_position_embeddings",
                "give the context length the model was trained for",
            )
        })?;
        let max_position_embeddings =
            top.at_least_one("max_position_embeddings", max_position_embeddings)?;
        let rope = read_rope(&top)?;

        let attention_bias = match model_type {
            ModelType::Llama => {
                if top.bool("mlp_bias")? == Some(true) {
                    return Err(top.unsupported(
                        "mlp_bias",
                        &json!(true),
                        "false is",
                        "the reference's MLP has no biases",
                    ));
                }
                if top.bool("attention_bias")?.unwrap_or(false) {
                    AttentionBias::QkvO
                } else {
                    AttentionBias::None
                }
            }
            ModelType::Qwen2 => AttentionBias::Qkv,
            ModelType::Mistral => AttentionBias::None,
        };
        let sliding_window = match model_type {
            ModelType::Llama => None,
            ModelType::Qwen2 => {
                let fix = "the reference has no sliding-window attention; Qwen2 checkpoints \
                           are published with use_sliding_window false";
                if top.bool("use_sliding_window")? == Some(true) {
                    return Err(top.unsupported(
                        "use_sliding_window",
                        &json!(true),
                        "false is",
                        fix,
                    ));
                }
                check_layer_types(&top, num_layers, fix)?;
                None
            }
            ModelType::Mistral => match top.usize("sliding_window")? {
                Some(w) => Some(top.at_least_one("sliding_window", w)?),
                None => None,
            },
        };

        Ok(LlamaConfig {
            model_type,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope,
            max_position_embeddings,
            attention_bias,
            tie_word_embeddings: top.bool("tie_word_embeddings")?.unwrap_or(false),
            sliding_window,
            dtype: read_dtype(&top)?,
            tokens: TokenIds {
                bos: top.token("bos_token_id")?,
                eos: top.tokens("eos_token_id")?,
                pad: top.token("pad_token_id")?,
            },
        })
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// The config in the form transformers 4.x, transformers 5.x and vLLM all read.
    ///
    /// RoPE is written the 4.x way, top-level `rope_theta` plus `rope_scaling` (null, or the
    /// llama3 object with `rope_type`), and the dtype as `torch_dtype`: exactly the form of
    /// the fixture `config.v4.55.json`, which trainer/tests/fixtures/hf/verification.json
    /// records transformers 5.24 loading with the right `rope_parameters` and no warning, and
    /// dialects.json records 4.57 loading with golden logits. The 5.x form
    /// (`rope_parameters`) is not written: 4.x ignores it and silently falls back to
    /// unscaled RoPE (dialects.json: logits off by 3.28). vLLM reads configs through the
    /// transformers it ships with, and its own RoPE code reads `rope_theta`/`rope_scaling`.
    ///
    /// Also written: `architectures`, `model_type`, the dimensions (`head_dim` always),
    /// `hidden_act` silu, `rms_norm_eps`, `max_position_embeddings`, `tie_word_embeddings`,
    /// `attention_dropout` 0, the special token ids, and per type `attention_bias` and
    /// `mlp_bias` (llama), `sliding_window` (mistral), `use_sliding_window` false (qwen2).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        let mut put = |k: &str, v: Value| {
            obj.insert(k.to_string(), v);
        };
        put("architectures", json!([self.model_type.architecture()]));
        put("model_type", json!(self.model_type.name()));
        put("vocab_size", json!(self.vocab_size));
        put("hidden_size", json!(self.hidden_size));
        put("intermediate_size", json!(self.intermediate_size));
        put("num_hidden_layers", json!(self.num_layers));
        put("num_attention_heads", json!(self.num_heads));
        put("num_key_value_heads", json!(self.num_kv_heads));
        put("head_dim", json!(self.head_dim));
        put("hidden_act", json!("silu"));
        put("rms_norm_eps", json!(self.rms_norm_eps));
        put(
            "max_position_embeddings",
            json!(self.max_position_embeddings),
        );
        put("rope_theta", json!(self.rope.theta));
        put(
            "rope_scaling",
            match self.rope.llama3 {
                None => Value::Null,
                Some(s) => json!({
                    "rope_type": "llama3",
                    "factor": s.factor,
                    "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_position_embeddings,
                }),
            },
        );
        put("tie_word_embeddings", json!(self.tie_word_embeddings));
        put("attention_dropout", json!(0.0));
        match self.model_type {
            ModelType::Llama => {
                put("attention_bias", json!(self.attention_bias.qkv()));
                put("mlp_bias", json!(false));
            }
            ModelType::Mistral => put("sliding_window", json!(self.sliding_window)),
            ModelType::Qwen2 => {
                put("use_sliding_window", json!(false));
                put("sliding_window", Value::Null);
            }
        }
        if let Some(dtype) = self.dtype {
            put("torch_dtype", json!(dtype.torch_name()));
        }
        put("bos_token_id", json!(self.tokens.bos));
        put(
            "eos_token_id",
            match self.tokens.eos.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        );
        put("pad_token_id", json!(self.tokens.pad));
        Value::Object(obj)
    }

    /// Writes [`LlamaConfig::to_json`] to `dir/config.json`.
    pub fn write_to_dir(&self, dir: &Path) -> Result<PathBuf, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let write = |path: &Path| -> std::io::Result<()> {
            let mut text =
                serde_json::to_string_pretty(&self.to_json()).map_err(std::io::Error::other)?;
            text.push('\n');
            std::fs::write(path, text)
        };
        write(&path).map_err(|source| ConfigError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl LlamaConfig {
    /// The dimensions a checkpoint records for this model trained with `context` tokens.
    pub fn resolved_model(&self, context: u32) -> crate::spec::ResolvedModel {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let default_head_dim = self.hidden_size / self.num_heads.max(1);
        crate::spec::ResolvedModel {
            architecture: crate::spec::Architecture::Llama,
            layers: n(self.num_layers),
            heads: n(self.num_heads),
            width: n(self.hidden_size),
            context,
            vocab: n(self.vocab_size),
            kv_heads: Some(n(self.num_kv_heads)),
            ffn_width: Some(n(self.intermediate_size)),
            head_dim: (self.head_dim != default_head_dim).then(|| n(self.head_dim)),
        }
    }

    /// A Llama model trained from scratch with `model`'s dimensions (as a fresh
    /// `transformers` LlamaConfig has them: RMSNorm eps 1e-5, RoPE theta 10000 without
    /// scaling, no biases, an untied head, positions up to the context).
    pub fn from_scratch(model: &crate::spec::ResolvedModel) -> LlamaConfig {
        let heads = model.heads as usize;
        let width = model.width as usize;
        LlamaConfig {
            model_type: ModelType::Llama,
            vocab_size: model.vocab as usize,
            hidden_size: width,
            intermediate_size: model.ffn_width.unwrap_or(4 * model.width) as usize,
            num_layers: model.layers as usize,
            num_heads: heads,
            num_kv_heads: model.kv_heads.unwrap_or(model.heads) as usize,
            head_dim: model.head_dim.map_or(width / heads.max(1), |d| d as usize),
            rms_norm_eps: 1e-5,
            rope: RopeConfig {
                theta: 10_000.0,
                llama3: None,
            },
            max_position_embeddings: model.context as usize,
            attention_bias: AttentionBias::None,
            tie_word_embeddings: false,
            sliding_window: None,
            dtype: Some(WeightDtype::F32),
            tokens: TokenIds::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorded Hugging Face fixtures, `trainer/tests/fixtures/hf/<name>`.
    fn fixture_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../trainer/tests/fixtures/hf")
            .join(name)
    }

    fn read(name: &str, file: &str) -> LlamaConfig {
        LlamaConfig::from_file(&fixture_dir(name).join(file))
            .unwrap_or_else(|e| panic!("{name}/{file}: {e}"))
    }

    #[test]
    fn llama_dialects_parse_to_the_same_config() {
        let v5 = read("llama-gqa", "config.json");
        for file in ["config.v5.json", "config.v4.json", "config.v4.55.json"] {
            assert_eq!(read("llama-gqa", file), v5, "{file}");
        }
        assert_eq!(
            v5,
            LlamaConfig {
                model_type: ModelType::Llama,
                vocab_size: 384,
                hidden_size: 64,
                intermediate_size: 160,
                num_layers: 2,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 16,
                rms_norm_eps: 1e-5,
                rope: RopeConfig {
                    theta: 10000.0,
                    llama3: Some(Llama3Scaling {
                        factor: 8.0,
                        low_freq_factor: 1.0,
                        high_freq_factor: 4.0,
                        original_max_position_embeddings: 32,
                    }),
                },
                max_position_embeddings: 128,
                attention_bias: AttentionBias::None,
                tie_word_embeddings: false,
                sliding_window: None,
                dtype: Some(WeightDtype::F32),
                tokens: TokenIds {
                    bos: Some(372),
                    eos: vec![376, 373],
                    pad: Some(383),
                },
            }
        );
    }

    /// The 4.x form of a 5.x config, as transformers 4.57 writes it (dialects.json records
    /// the only differences: `rope_parameters` against top-level `rope_theta` and
    /// `rope_scaling`, which is null for default RoPE). Only llama-gqa has a recorded 4.x
    /// file; this gives the other two fixtures their 4.x dialect.
    fn as_v4(v5: &Value) -> Value {
        let mut obj = v5.as_object().unwrap().clone();
        let mut rope = obj.remove("rope_parameters").unwrap();
        let rope = rope.as_object_mut().unwrap();
        obj.insert("rope_theta".into(), rope.remove("rope_theta").unwrap());
        let scaling = if rope["rope_type"] == "default" {
            Value::Null
        } else {
            Value::Object(rope.clone())
        };
        obj.insert("rope_scaling".into(), scaling);
        let dtype = obj.remove("dtype").unwrap();
        obj.insert("torch_dtype".into(), dtype);
        Value::Object(obj)
    }

    #[test]
    fn every_fixture_reads_the_same_in_both_dialects() {
        for name in ["llama-gqa", "qwen2-tied", "mistral"] {
            let path = fixture_dir(name).join("config.json");
            let v5: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let a = LlamaConfig::from_json(&v5, &path).unwrap();
            let b = LlamaConfig::from_json(&as_v4(&v5), &path).unwrap();
            assert_eq!(a, b, "{name}");
        }
        let qwen = read("qwen2-tied", "config.json");
        assert_eq!(qwen.model_type, ModelType::Qwen2);
        assert_eq!(qwen.attention_bias, AttentionBias::Qkv);
        assert!(qwen.tie_word_embeddings);
        assert_eq!((qwen.head_dim, qwen.rope.theta), (16, 1e6));
        assert_eq!(qwen.rope.llama3, None);
        assert_eq!(qwen.tokens.bos, None);
        let mistral = read("mistral", "config.json");
        assert_eq!(mistral.model_type, ModelType::Mistral);
        assert_eq!((mistral.num_heads, mistral.num_kv_heads), (4, 1));
        assert_eq!((mistral.head_dim, mistral.sliding_window), (8, None));
        assert_eq!(mistral.tokens.eos, vec![380]);
    }

    #[test]
    fn the_written_form_reads_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let mut configs: Vec<LlamaConfig> = ["llama-gqa", "qwen2-tied", "mistral"]
            .iter()
            .map(|name| read(name, "config.json"))
            .collect();
        // Variants no fixture has: a windowed Mistral, a Llama with q/k/v/o bias, bf16.
        let mut windowed = configs[2].clone();
        windowed.sliding_window = Some(4096);
        windowed.dtype = Some(WeightDtype::BF16);
        let mut biased = configs[0].clone();
        biased.attention_bias = AttentionBias::QkvO;
        biased.dtype = None;
        configs.extend([windowed, biased]);
        for config in configs {
            let path = config.write_to_dir(dir.path()).unwrap();
            let back = LlamaConfig::from_file(&path).unwrap();
            assert_eq!(back, config);
            let written: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            // The 4.x dialect: no rope_parameters, no dtype.
            assert!(written.get("rope_parameters").is_none());
            assert!(written.get("dtype").is_none());
            assert_eq!(written["rope_theta"], json!(config.rope.theta));
        }
        // The llama-gqa written form carries the same RoPE, dtype and sizes as the file
        // 4.55 wrote (config.v4.55.json), which transformers 5.24 and 4.57 both load.
        let written = read("llama-gqa", "config.json").to_json();
        let v455: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir("llama-gqa").join("config.v4.55.json")).unwrap(),
        )
        .unwrap();
        for (key, value) in written.as_object().unwrap() {
            assert_eq!(&v455[key], value, "{key}");
        }
    }

    fn base() -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(fixture_dir("llama-gqa").join("config.v4.json")).unwrap(),
        )
        .unwrap()
    }

    /// Applies `edit` to the llama-gqa 4.x config and returns the error message.
    fn refused(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut v = base();
        edit(v.as_object_mut().unwrap());
        let path = Path::new("/models/x/config.json");
        match LlamaConfig::from_json(&v, path) {
            Ok(c) => panic!("accepted {c:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("/models/x/config.json: "), "{msg}");
                msg
            }
        }
    }

    fn assert_names(msg: &str, parts: &[&str]) {
        for part in parts {
            assert!(msg.contains(part), "{part:?} not in {msg:?}");
        }
    }

    #[test]
    fn bad_configs_are_refused_naming_file_and_field() {
        let m = refused(|o| {
            o["rope_scaling"]["rope_type"] = json!("yarn");
        });
        assert_names(
            &m,
            &["rope_scaling.rope_type \"yarn\" is not supported", "llama3"],
        );
        for kind in ["dynamic", "linear", "longrope"] {
            let m = refused(|o| {
                o["rope_scaling"] = json!({"type": kind, "factor": 2.0});
            });
            assert_names(
                &m,
                &[&format!("rope_scaling.type \"{kind}\" is not supported")],
            );
        }
        let m = refused(|o| {
            o.remove("rope_theta");
            o.remove("rope_scaling");
            o.insert(
                "rope_parameters".into(),
                json!({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
            );
        });
        assert_names(&m, &["rope_parameters.rope_type \"yarn\" is not supported"]);
        let m = refused(|o| {
            o["model_type"] = json!("gemma");
        });
        assert_names(
            &m,
            &[
                "model_type \"gemma\" is not supported",
                "llama, mistral and qwen2",
            ],
        );
        let m = refused(|o| {
            o.remove("model_type");
        });
        assert_names(&m, &["model_type is missing"]);
        for field in [
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "max_position_embeddings",
        ] {
            let m = refused(|o| {
                o.remove(field);
            });
            assert_names(&m, &[&format!("{field} is missing")]);
        }
        let m = refused(|o| {
            o["num_key_value_heads"] = json!(3);
        });
        assert_names(
            &m,
            &["num_key_value_heads is 3", "divide num_attention_heads (4)"],
        );
        let m = refused(|o| {
            o["num_key_value_heads"] = json!(0);
        });
        assert_names(&m, &["num_key_value_heads is 0", "at least 1"]);
        let m = refused(|o| {
            o["hidden_size"] = json!("64");
        });
        assert_names(&m, &["hidden_size is \"64\"", "non-negative integer"]);
        let m = refused(|o| {
            o["head_dim"] = json!(15);
        });
        assert_names(&m, &["head_dim is 15", "even"]);
        let m = refused(|o| {
            o.remove("head_dim");
            o["num_attention_heads"] = json!(3);
            o["num_key_value_heads"] = json!(3);
        });
        assert_names(&m, &["head_dim is missing", "not a multiple"]);
        let m = refused(|o| {
            o["rope_scaling"]
                .as_object_mut()
                .unwrap()
                .remove("low_freq_factor");
        });
        assert_names(
            &m,
            &["rope_scaling.low_freq_factor is missing", "llama3 needs"],
        );
        let m = refused(|o| {
            o["rope_scaling"]["high_freq_factor"] = json!(0.5);
        });
        assert_names(
            &m,
            &[
                "rope_scaling.high_freq_factor is 0.5",
                "greater than low_freq_factor",
            ],
        );
        let m = refused(|o| {
            o["rope_scaling"]["type"] = json!("linear");
        });
        assert_names(
            &m,
            &["rope_scaling.rope_type and rope_scaling.type disagree"],
        );
        let m = refused(|o| {
            o.insert(
                "rope_parameters".into(),
                json!({"rope_type": "default", "rope_theta": 10000.0}),
            );
        });
        assert_names(
            &m,
            &["rope_parameters and rope_theta/rope_scaling disagree"],
        );
        let m = refused(|o| {
            o["rope_theta"] = json!(-1.0);
        });
        assert_names(&m, &["rope_theta is -1.0", "greater than 0"]);
        let m = refused(|o| {
            o["hidden_act"] = json!("gelu");
        });
        assert_names(&m, &["hidden_act \"gelu\" is not supported"]);
        let m = refused(|o| {
            o["mlp_bias"] = json!(true);
        });
        assert_names(&m, &["mlp_bias true is not supported"]);
        let m = refused(|o| {
            o["dtype"] = json!("float8_e4m3fn");
        });
        assert_names(&m, &["dtype \"float8_e4m3fn\" is not supported"]);
        let m = refused(|o| {
            o.insert("torch_dtype".into(), json!("bfloat16"));
        });
        assert_names(&m, &["dtype and torch_dtype disagree"]);
        let m = refused(|o| {
            o.insert(
                "quantization_config".into(),
                json!({"quant_method": "gptq"}),
            );
        });
        assert_names(&m, &["quantization_config"]);
        let m = refused(|o| {
            o["attention_dropout"] = json!(0.1);
        });
        assert_names(&m, &["attention_dropout 0.1 is not supported"]);
        let m = refused(|o| {
            o["eos_token_id"] = json!([1, -2]);
        });
        assert_names(&m, &["eos_token_id is [1,-2]"]);
        let m = refused(|o| {
            o["model_type"] = json!("qwen2");
            o.insert("use_sliding_window".into(), json!(true));
        });
        assert_names(&m, &["use_sliding_window true is not supported"]);
        let m = refused(|o| {
            o["model_type"] = json!("qwen2");
            o.insert(
                "layer_types".into(),
                json!(["full_attention", "sliding_attention"]),
            );
        });
        assert_names(&m, &["layer_types \"sliding_attention\" is not supported"]);

        let path = Path::new("/models/x/config.json");
        let e = LlamaConfig::from_json_str("{", path)
            .unwrap_err()
            .to_string();
        assert_names(&e, &["/models/x/config.json is not a JSON object"]);
        let e = LlamaConfig::from_dir(Path::new("/nonexistent-model-dir"))
            .unwrap_err()
            .to_string();
        assert_names(&e, &["cannot read /nonexistent-model-dir/config.json"]);
    }

    #[test]
    fn defaults_and_the_old_rope_type_key_are_read() {
        let mut v = base();
        let o = v.as_object_mut().unwrap();
        for key in [
            "num_key_value_heads",
            "head_dim",
            "rms_norm_eps",
            "tie_word_embeddings",
        ] {
            o.remove(key);
        }
        o["rope_scaling"]
            .as_object_mut()
            .unwrap()
            .remove("rope_type");
        o["rope_scaling"]["type"] = json!("llama3");
        let c = LlamaConfig::from_json(&v, Path::new("config.json")).unwrap();
        assert_eq!((c.num_kv_heads, c.head_dim, c.rms_norm_eps), (4, 16, 1e-6));
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.rope, read("llama-gqa", "config.json").rope);
        // Llama with attention_bias: q, k, v and o.
        v.as_object_mut().unwrap()["attention_bias"] = json!(true);
        let c = LlamaConfig::from_json(&v, Path::new("config.json")).unwrap();
        assert_eq!(c.attention_bias, AttentionBias::QkvO);
    }
}
