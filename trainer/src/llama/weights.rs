//! The weights of a Llama-family model under their Hugging Face names: which tensors a
//! [`LlamaConfig`] has and their shapes ([`Param`]), reading `model.safetensors` or a sharded
//! `model.safetensors.index.json` (F32, BF16 and F16 become f32), and writing
//! `model.safetensors` in F32, BF16 or F16.
//!
//! ```text
//! model.embed_tokens.weight                          (vocab, hidden)
//! model.layers.{i}.input_layernorm.weight            (hidden)
//! model.layers.{i}.self_attn.q_proj.weight / .bias   (heads·head_dim, hidden) / (heads·head_dim)
//! model.layers.{i}.self_attn.k_proj.weight / .bias   (kv_heads·head_dim, hidden) / (kv_heads·head_dim)
//! model.layers.{i}.self_attn.v_proj.weight / .bias   (kv_heads·head_dim, hidden) / (kv_heads·head_dim)
//! model.layers.{i}.self_attn.o_proj.weight / .bias   (hidden, heads·head_dim) / (hidden)
//! model.layers.{i}.post_attention_layernorm.weight   (hidden)
//! model.layers.{i}.mlp.gate_proj.weight              (intermediate, hidden)
//! model.layers.{i}.mlp.up_proj.weight                (intermediate, hidden)
//! model.layers.{i}.mlp.down_proj.weight              (hidden, intermediate)
//! model.norm.weight                                  (hidden)
//! lm_head.weight                                     (vocab, hidden), absent when tied
//! ```
//! Biases exist as [`AttentionBias`](super::config::AttentionBias) says (q/k/v for Qwen2,
//! q/k/v/o for Llama with `attention_bias`). q and k rows stay in Hugging Face's order (see
//! [`super`]): nothing is permuted on the way in or out.
//!
//! Reading is strict: a missing tensor, a wrong shape, or a tensor the config does not
//! explain (a checkpoint with more layers than the config, a classification head) is refused
//! naming the tensor and its file. Two kinds of tensors are dropped on purpose, as
//! `transformers` drops them: `lm_head.weight` of a tied model (the embedding is the head)
//! and the `rotary_emb.inv_freq` buffers old Llama checkpoints saved (computed from the
//! config instead).

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::config::{LlamaConfig, WeightDtype};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir} has neither {SINGLE_FILE} nor {INDEX_FILE}; point at a Hugging Face model directory with safetensors weights"
    )]
    NoWeights { dir: PathBuf },
    #[error("{path} is not a safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {problem}")]
    Index { path: PathBuf, problem: String },
    #[error("{path}: tensor {name} is missing; {hint}")]
    Missing {
        path: PathBuf,
        name: String,
        hint: String,
    },
    #[error("{path}: tensor {name} has shape {found:?}, the config needs {want:?}; {hint}")]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        want: Vec<usize>,
        hint: String,
    },
    #[error("{path}: tensor {name} is not part of this model; {hint}")]
    Unexpected {
        path: PathBuf,
        name: String,
        hint: String,
    },
    #[error(
        "{path}: tensor {name} is {dtype}; only F32, BF16 and F16 weights can be read (convert the checkpoint)"
    )]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor {name} has {got} values, its shape {shape:?} needs {want}")]
    Length {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
        got: usize,
        want: usize,
    },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// One tensor of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerParam {
    InputNorm,
    QProj,
    QBias,
    KProj,
    KBias,
    VProj,
    VBias,
    OProj,
    OBias,
    PostNorm,
    GateProj,
    UpProj,
    DownProj,
}

/// One tensor of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Param {
    Embed,
    Layer(usize, LayerParam),
    Norm,
    LmHead,
}

impl Param {
    /// The Hugging Face name.
    pub fn hf_name(self) -> String {
        use LayerParam::*;
        match self {
            Param::Embed => "model.embed_tokens.weight".into(),
            Param::Norm => "model.norm.weight".into(),
            Param::LmHead => "lm_head.weight".into(),
            Param::Layer(i, p) => {
                let leaf = match p {
                    InputNorm => "input_layernorm.weight",
                    QProj => "self_attn.q_proj.weight",
                    QBias => "self_attn.q_proj.bias",
                    KProj => "self_attn.k_proj.weight",
                    KBias => "self_attn.k_proj.bias",
                    VProj => "self_attn.v_proj.weight",
                    VBias => "self_attn.v_proj.bias",
                    OProj => "self_attn.o_proj.weight",
                    OBias => "self_attn.o_proj.bias",
                    PostNorm => "post_attention_layernorm.weight",
                    GateProj => "mlp.gate_proj.weight",
                    UpProj => "mlp.up_proj.weight",
                    DownProj => "mlp.down_proj.weight",
                };
                format!("model.layers.{i}.{leaf}")
            }
        }
    }

    /// The shape `config` gives it (Linear weights are (out, in)).
    pub fn shape(self, c: &LlamaConfig) -> Vec<usize> {
        use LayerParam::*;
        let (v, h, i) = (c.vocab_size, c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        match self {
            Param::Embed | Param::LmHead => vec![v, h],
            Param::Norm => vec![h],
            Param::Layer(_, p) => match p {
                InputNorm | PostNorm | OBias => vec![h],
                QProj => vec![q, h],
                QBias => vec![q],
                KProj | VProj => vec![kv, h],
                KBias | VBias => vec![kv],
                OProj => vec![h, q],
                GateProj | UpProj => vec![i, h],
                DownProj => vec![h, i],
            },
        }
    }
}

/// The tensors a model with `config` has, in model order.
pub fn params(config: &LlamaConfig) -> Vec<Param> {
    use LayerParam::*;
    let mut out = vec![Param::Embed];
    let (qkv, o) = (config.attention_bias.qkv(), config.attention_bias.o());
    for l in 0..config.num_layers {
        let layer: [(LayerParam, bool); 13] = [
            (InputNorm, true),
            (QProj, true),
            (QBias, qkv),
            (KProj, true),
            (KBias, qkv),
            (VProj, true),
            (VBias, qkv),
            (OProj, true),
            (OBias, o),
            (PostNorm, true),
            (GateProj, true),
            (UpProj, true),
            (DownProj, true),
        ];
        out.extend(
            layer
                .into_iter()
                .filter(|(_, present)| *present)
                .map(|(p, _)| Param::Layer(l, p)),
        );
    }
    out.push(Param::Norm);
    if !config.tie_word_embeddings {
        out.push(Param::LmHead);
    }
    out
}

/// A tensor in f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Every tensor of one model, checked against its config, by Hugging Face name.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaWeights {
    tensors: BTreeMap<String, Tensor>,
}

/// Names dropped on reading (see the module documentation).
fn dropped(config: &LlamaConfig, name: &str) -> bool {
    (config.tie_word_embeddings && name == "lm_head.weight")
        || name.ends_with("rotary_emb.inv_freq")
}

fn model_hint(config: &LlamaConfig) -> String {
    format!(
        "config.json describes a {} model with {} layers, hidden_size {}, {} heads and {} key/value heads; do the weights belong to it?",
        config.model_type.name(),
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.num_kv_heads
    )
}

/// A tensor found in a file, not yet converted.
struct Found<'a> {
    file: &'a Path,
    view: safetensors::tensor::TensorView<'a>,
}

fn to_f32(
    path: &Path,
    name: &str,
    view: &safetensors::tensor::TensorView,
) -> Result<Vec<f32>, WeightsError> {
    let data = view.data();
    let pairs = || {
        data.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    Ok(match view.dtype() {
        safetensors::Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        safetensors::Dtype::BF16 => pairs().map(|b| half::bf16::from_bits(b).to_f32()).collect(),
        safetensors::Dtype::F16 => pairs().map(|b| half::f16::from_bits(b).to_f32()).collect(),
        other => {
            return Err(WeightsError::Dtype {
                path: path.to_path_buf(),
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, WeightsError> {
    std::fs::read(path).map_err(|source| WeightsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn deserialize<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<safetensors::SafeTensors<'a>, WeightsError> {
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Exactly the names of [`params`], each with its shape.
fn check_shapes(
    config: &LlamaConfig,
    shapes: &BTreeMap<String, Vec<usize>>,
    source: &Path,
) -> Result<(), WeightsError> {
    let expected: HashMap<String, Vec<usize>> = params(config)
        .into_iter()
        .map(|p| (p.hf_name(), p.shape(config)))
        .collect();
    for (name, shape) in shapes {
        let Some(want) = expected.get(name) else {
            return Err(WeightsError::Unexpected {
                path: source.to_path_buf(),
                name: name.clone(),
                hint: model_hint(config),
            });
        };
        if shape != want {
            return Err(WeightsError::Shape {
                path: source.to_path_buf(),
                name: name.clone(),
                found: shape.clone(),
                want: want.clone(),
                hint: model_hint(config),
            });
        }
    }
    for p in params(config) {
        let name = p.hf_name();
        if !shapes.contains_key(&name) {
            return Err(WeightsError::Missing {
                path: source.to_path_buf(),
                name,
                hint: model_hint(config),
            });
        }
    }
    Ok(())
}

/// The tensors a safetensors file's header lists: name → (dtype, shape). Reads the 8-byte
/// header length and the JSON header only.
fn read_header(path: &Path) -> Result<BTreeMap<String, (String, Vec<usize>)>, WeightsError> {
    use std::io::Read;
    let format = |message: String| WeightsError::Format {
        path: path.to_path_buf(),
        message,
    };
    let read_err = |source| WeightsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| format(format!("no header length ({e})")))?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map_err(read_err)?.len();
    if len > size.saturating_sub(8) || len > 100_000_000 {
        return Err(format(format!(
            "the header claims {len} bytes in a file of {size}"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(read_err)?;
    let value: Value =
        serde_json::from_slice(&header).map_err(|e| format(format!("header: {e}")))?;
    let Some(entries) = value.as_object() else {
        return Err(format("the header is not a JSON object".into()));
    };
    let mut out = BTreeMap::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let dtype = entry.get("dtype").and_then(Value::as_str);
        let shape: Option<Vec<usize>> =
            entry.get("shape").and_then(Value::as_array).and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            });
        match (dtype, shape) {
            (Some(dtype), Some(shape)) => {
                out.insert(name.clone(), (dtype.to_string(), shape));
            }
            _ => {
                return Err(format(format!(
                    "tensor {name} has no dtype or shape in the header"
                )));
            }
        }
    }
    Ok(out)
}

/// `weight_map` of a sharded checkpoint's index: tensor name → shard file name.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>, WeightsError> {
    let bad = |problem: String| WeightsError::Index {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|source| WeightsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let Some(map) = value.get("weight_map").and_then(Value::as_object) else {
        return Err(bad(
            "weight_map is missing or not an object; a sharded checkpoint's index maps each tensor name to its shard".into(),
        ));
    };
    let mut out = BTreeMap::new();
    for (name, file) in map {
        let Some(file) = file.as_str() else {
            return Err(bad(format!("weight_map.{name} is {file}, not a file name")));
        };
        // Shards lie beside the index: a path elsewhere is refused, not followed.
        if file.is_empty() || file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "weight_map.{name} is {file:?}; shard names must be plain file names beside the index"
            )));
        }
        out.insert(name.clone(), file.to_string());
    }
    Ok(out)
}

impl LlamaWeights {
    /// Checks `tensors` against `config`: exactly the names of [`params`], each with its
    /// shape. `source` names where they came from in errors.
    pub fn new(
        config: &LlamaConfig,
        tensors: BTreeMap<String, Tensor>,
        source: &Path,
    ) -> Result<Self, WeightsError> {
        let weights = LlamaWeights { tensors };
        weights.check(config, source)?;
        Ok(weights)
    }

    /// Checks these weights belong to `config`: exactly the names of [`params`], each with
    /// its shape and value count. `source` names where they came from in errors.
    pub fn check(&self, config: &LlamaConfig, source: &Path) -> Result<(), WeightsError> {
        let shapes: BTreeMap<String, Vec<usize>> = self
            .tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.shape.clone()))
            .collect();
        check_shapes(config, &shapes, source)?;
        for (name, t) in &self.tensors {
            let n: usize = t.shape.iter().product();
            if t.values.len() != n {
                return Err(WeightsError::Length {
                    path: source.to_path_buf(),
                    name: name.clone(),
                    shape: t.shape.clone(),
                    got: t.values.len(),
                    want: n,
                });
            }
        }
        Ok(())
    }

    /// Checks the weights in `dir` against `config` from the safetensors headers alone (names,
    /// shapes, dtypes; no tensor data is read): what a run checks before it starts, so a
    /// directory whose weights do not fit its config is refused at once, naming the tensor
    /// and the file.
    pub fn check_dir(dir: &Path, config: &LlamaConfig) -> Result<(), WeightsError> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let (files, listing): (Vec<PathBuf>, PathBuf) = if single.is_file() {
            (vec![single.clone()], single)
        } else if index.is_file() {
            let shards: std::collections::BTreeSet<String> =
                read_index(&index)?.into_values().collect();
            (shards.iter().map(|f| dir.join(f)).collect(), index)
        } else {
            return Err(WeightsError::NoWeights {
                dir: dir.to_path_buf(),
            });
        };
        let mut shapes = BTreeMap::new();
        for file in &files {
            for (name, (dtype, shape)) in read_header(file)? {
                if !matches!(dtype.as_str(), "F32" | "BF16" | "F16") {
                    return Err(WeightsError::Dtype {
                        path: file.clone(),
                        name,
                        dtype,
                    });
                }
                if !dropped(config, &name) {
                    shapes.insert(name, shape);
                }
            }
        }
        check_shapes(config, &shapes, &listing)
    }

    /// Reads `dir/model.safetensors`, or the shards `dir/model.safetensors.index.json`
    /// lists when there is no single file (the order `transformers` looks in).
    pub fn read(dir: &Path, config: &LlamaConfig) -> Result<Self, WeightsError> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        if single.is_file() {
            let bytes = read_bytes(&single)?;
            let file = deserialize(&single, &bytes)?;
            let found = file
                .iter()
                .map(|(name, view)| {
                    (
                        name.to_string(),
                        Found {
                            file: &single,
                            view,
                        },
                    )
                })
                .collect();
            return Self::from_found(config, found, &single);
        }
        if !index.is_file() {
            return Err(WeightsError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        let weight_map = read_index(&index)?;
        // Shard file name → the tensors the index puts in it.
        let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, file) in &weight_map {
            by_shard.entry(file).or_default().push(name);
        }
        let shard_paths: Vec<PathBuf> = by_shard.keys().map(|f| dir.join(f)).collect();
        let shard_bytes = shard_paths
            .iter()
            .map(|p| read_bytes(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut found = BTreeMap::new();
        for ((file, names), (path, bytes)) in
            by_shard.iter().zip(shard_paths.iter().zip(&shard_bytes))
        {
            let shard = deserialize(path, bytes)?;
            for &name in names {
                let view = shard.tensor(name).map_err(|_| WeightsError::Index {
                    path: index.clone(),
                    problem: format!(
                        "weight_map puts {name} in {file}, which has no such tensor; the index and its shards do not match"
                    ),
                })?;
                found.insert(name.to_string(), Found { file: path, view });
            }
        }
        Self::from_found(config, found, &index)
    }

    /// Reads one safetensors file.
    pub fn read_file(path: &Path, config: &LlamaConfig) -> Result<Self, WeightsError> {
        let bytes = read_bytes(path)?;
        let file = deserialize(path, &bytes)?;
        let found = file
            .iter()
            .map(|(name, view)| (name.to_string(), Found { file: path, view }))
            .collect();
        Self::from_found(config, found, path)
    }

    /// Drops what `transformers` drops, refuses what the config does not explain, converts
    /// the rest. `listing` names the file in errors about tensors that are not anywhere.
    fn from_found(
        config: &LlamaConfig,
        found: BTreeMap<String, Found>,
        listing: &Path,
    ) -> Result<Self, WeightsError> {
        let expected: HashMap<String, Vec<usize>> = params(config)
            .into_iter()
            .map(|p| (p.hf_name(), p.shape(config)))
            .collect();
        let mut tensors = BTreeMap::new();
        for (name, f) in found {
            if dropped(config, &name) {
                continue;
            }
            let Some(want) = expected.get(&name) else {
                return Err(WeightsError::Unexpected {
                    path: f.file.to_path_buf(),
                    name,
                    hint: model_hint(config),
                });
            };
            if f.view.shape() != want.as_slice() {
                return Err(WeightsError::Shape {
                    path: f.file.to_path_buf(),
                    name,
                    found: f.view.shape().to_vec(),
                    want: want.clone(),
                    hint: model_hint(config),
                });
            }
            let values = to_f32(f.file, &name, &f.view)?;
            tensors.insert(
                name,
                Tensor {
                    shape: want.clone(),
                    values,
                },
            );
        }
        Self::new(config, tensors, listing)
    }

    /// The tensor `p`, if the model has it.
    pub fn get(&self, p: Param) -> Option<&Tensor> {
        self.tensors.get(&p.hf_name())
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Hugging Face names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }

    /// Writes `model.safetensors` (metadata `format: pt`, as `transformers` writes it) with
    /// the values rounded to `dtype` (round to nearest even for BF16 and F16).
    pub fn write(&self, path: &Path, dtype: WeightDtype) -> Result<(), WeightsError> {
        let views: Vec<(&str, Encoded)> = self
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), Encoded::new(t, dtype)))
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| {
            WeightsError::Write {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })
    }
}

/// Shards of at most this many bytes when writing a model directory: the size
/// `transformers`' `save_pretrained` uses by default (5 GB).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

impl LlamaWeights {
    /// Writes the weights into `dir` as `transformers` saves them: `model.safetensors`, or,
    /// when they exceed `max_shard_bytes`, `model-0000i-of-0000n.safetensors` shards (tensors
    /// in name order, a new shard whenever the next tensor would overflow the current one)
    /// with `model.safetensors.index.json` mapping each tensor to its shard. Returns the file
    /// names written.
    pub fn write_dir(
        &self,
        dir: &Path,
        dtype: WeightDtype,
        max_shard_bytes: u64,
    ) -> Result<Vec<String>, WeightsError> {
        let bytes_per = match dtype {
            WeightDtype::F32 => 4,
            WeightDtype::BF16 | WeightDtype::F16 => 2,
        };
        let size = |t: &Tensor| (t.values.len() * bytes_per) as u64;
        let total: u64 = self.tensors.values().map(size).sum();
        if total <= max_shard_bytes {
            self.write(&dir.join(SINGLE_FILE), dtype)?;
            return Ok(vec![SINGLE_FILE.to_string()]);
        }
        let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
        let mut current = 0u64;
        for (name, t) in &self.tensors {
            let last = shards.last_mut().expect("one shard at least");
            if !last.is_empty() && current + size(t) > max_shard_bytes {
                shards.push(Vec::new());
                current = 0;
            }
            current += size(t);
            shards.last_mut().expect("one shard at least").push(name);
        }
        let n = shards.len();
        let mut files = Vec::with_capacity(n + 1);
        let mut weight_map = serde_json::Map::new();
        for (i, names) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            let views: Vec<(&str, Encoded)> = names
                .iter()
                .map(|name| (name.as_str(), Encoded::new(&self.tensors[*name], dtype)))
                .collect();
            let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
            let path = dir.join(&file);
            safetensors::serialize_to_file(views, Some(metadata), &path).map_err(|e| {
                WeightsError::Write {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            for name in names {
                weight_map.insert((*name).clone(), Value::String(file.clone()));
            }
            files.push(file);
        }
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        let path = dir.join(INDEX_FILE);
        let mut text = serde_json::to_string_pretty(&index).expect("plain JSON serializes");
        text.push('\n');
        std::fs::write(&path, text).map_err(|e| WeightsError::Write {
            path: path.clone(),
            message: e.to_string(),
        })?;
        files.push(INDEX_FILE.to_string());
        Ok(files)
    }
}

/// A tensor encoded for safetensors.
struct Encoded<'a> {
    dtype: safetensors::Dtype,
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl<'a> Encoded<'a> {
    fn new(t: &'a Tensor, dtype: WeightDtype) -> Self {
        let (dtype, bytes) = match dtype {
            WeightDtype::F32 => (
                safetensors::Dtype::F32,
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            WeightDtype::BF16 => (
                safetensors::Dtype::BF16,
                t.values
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            WeightDtype::F16 => (
                safetensors::Dtype::F16,
                t.values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
        };
        Encoded {
            dtype,
            shape: &t.shape,
            bytes,
        }
    }
}

impl safetensors::View for Encoded<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::config::AttentionBias;
    use crate::llama::test_util::fixture_dir;
    use crate::rng::Rng;

    const FIXTURES: [&str; 3] = ["llama-gqa", "qwen2-tied", "mistral"];

    fn config(name: &str) -> LlamaConfig {
        LlamaConfig::from_dir(&fixture_dir(name)).unwrap()
    }

    /// (name, dtype, shape) of every tensor tensor_names.json lists.
    fn listed(name: &str) -> Vec<(String, String, Vec<usize>)> {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir(name).join("tensor_names.json")).unwrap(),
        )
        .unwrap();
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["dtype"].as_str().unwrap().to_string(),
                    serde_json::from_value(t["shape"].clone()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn fixture_names_and_shapes_are_the_configs() {
        for name in FIXTURES {
            let c = config(name);
            let mut ours: Vec<(String, Vec<usize>)> = params(&c)
                .into_iter()
                .map(|p| (p.hf_name(), p.shape(&c)))
                .collect();
            ours.sort();
            let theirs: Vec<(String, Vec<usize>)> =
                listed(name).into_iter().map(|(n, _, s)| (n, s)).collect();
            assert_eq!(ours, theirs, "{name}");
            let w = LlamaWeights::read(&fixture_dir(name), &c).unwrap();
            assert_eq!(
                w.names().collect::<Vec<_>>(),
                theirs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn writing_then_reading_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        for name in FIXTURES {
            let c = config(name);
            let w = LlamaWeights::read(&fixture_dir(name), &c).unwrap();
            let path = dir.path().join(SINGLE_FILE);
            w.write(&path, WeightDtype::F32).unwrap();
            assert_eq!(LlamaWeights::read(dir.path(), &c).unwrap(), w, "{name}");
            // The written file lists what transformers wrote: names, F32, shapes.
            let bytes = std::fs::read(&path).unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut written: Vec<(String, String, Vec<usize>)> = file
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        format!("{:?}", v.dtype()),
                        v.shape().to_vec(),
                    )
                })
                .collect();
            written.sort();
            assert_eq!(written, listed(name), "{name}");
            // Bitwise the same tensor bytes as the fixture.
            let original = std::fs::read(fixture_dir(name).join(SINGLE_FILE)).unwrap();
            let original = safetensors::SafeTensors::deserialize(&original).unwrap();
            for (n, v) in original.iter() {
                assert_eq!(file.tensor(n).unwrap().data(), v.data(), "{name}: {n}");
            }

            for dtype in [WeightDtype::BF16, WeightDtype::F16] {
                w.write(&path, dtype).unwrap();
                let back = LlamaWeights::read_file(&path, &c).unwrap();
                for (n, t) in w.clone().into_tensors() {
                    let got = &back.tensor(&n).unwrap().values;
                    for (a, b) in t.values.iter().zip(got) {
                        let rounded = match dtype {
                            WeightDtype::BF16 => half::bf16::from_f32(*a).to_f32(),
                            _ => half::f16::from_f32(*a).to_f32(),
                        };
                        assert_eq!(rounded.to_bits(), b.to_bits(), "{name} {dtype:?} {n}");
                        // bf16 keeps 8 significant bits, f16 11 (for these normal values).
                        let tol = if dtype == WeightDtype::BF16 {
                            1.0 / 256.0
                        } else {
                            1.0 / 2048.0
                        };
                        assert!((a - b).abs() <= tol * a.abs().max(6.2e-5), "{a} {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_and_f16_bits_decode_to_their_values() {
        // 1.5, -2, 2^-14 (smallest normal f16) and a bf16 with low mantissa bits.
        let t = |dtype: safetensors::Dtype, bits: &[u16]| {
            let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            let shape = [bits.len()];
            let view = safetensors::tensor::TensorView::new(dtype, shape.to_vec(), &bytes).unwrap();
            to_f32(Path::new("x"), "t", &view).unwrap()
        };
        assert_eq!(
            t(safetensors::Dtype::BF16, &[0x3FC0, 0xC000, 0x3F81]),
            vec![1.5, -2.0, 1.0 + 1.0 / 128.0]
        );
        assert_eq!(
            t(safetensors::Dtype::F16, &[0x3E00, 0xC000, 0x0400]),
            vec![1.5, -2.0, 2f32.powi(-14)]
        );
    }

    fn random_weights(c: &LlamaConfig, seed: u64) -> LlamaWeights {
        let mut rng = Rng::new(seed);
        let tensors = params(c)
            .into_iter()
            .map(|p| {
                let shape = p.shape(c);
                let n = shape.iter().product();
                let values = (0..n).map(|_| rng.normal() as f32).collect();
                (p.hf_name(), Tensor { shape, values })
            })
            .collect();
        LlamaWeights::new(c, tensors, Path::new("(random)")).unwrap()
    }

    #[test]
    fn sharded_checkpoints_are_read_through_the_index() {
        let mut c = config("llama-gqa");
        c.attention_bias = AttentionBias::QkvO;
        let w = random_weights(&c, 3);
        let dir = tempfile::tempdir().unwrap();
        // Layer 0 and the embedding in one shard (BF16), the rest in another (F32).
        let (first, second): (Vec<_>, Vec<_>) = w
            .tensors
            .iter()
            .partition(|(n, _)| n.contains("layers.0.") || n.contains("embed"));
        let mut weight_map = serde_json::Map::new();
        for (shard, part, dtype) in [
            (
                "model-00001-of-00002.safetensors",
                &first,
                WeightDtype::BF16,
            ),
            (
                "model-00002-of-00002.safetensors",
                &second,
                WeightDtype::F32,
            ),
        ] {
            let views: Vec<(&str, Encoded)> = part
                .iter()
                .map(|(n, t)| (n.as_str(), Encoded::new(t, dtype)))
                .collect();
            safetensors::serialize_to_file(views, None, &dir.path().join(shard)).unwrap();
            for (n, _) in part.iter() {
                weight_map.insert(n.to_string(), Value::from(shard));
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
        let back = LlamaWeights::read(dir.path(), &c).unwrap();
        for (n, t) in &w.tensors {
            let got = &back.tensor(n).unwrap().values;
            if first.iter().any(|(m, _)| *m == n) {
                let want: Vec<f32> = t
                    .values
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
                    .collect();
                assert_eq!(got, &want, "{n}");
            } else {
                assert_eq!(got, &t.values, "{n}");
            }
        }

        // A name the index puts in the wrong shard.
        let mut bad = weight_map.clone();
        bad["model.norm.weight"] = Value::from("model-00001-of-00002.safetensors");
        std::fs::write(
            dir.path().join(INDEX_FILE),
            serde_json::json!({ "weight_map": bad }).to_string(),
        )
        .unwrap();
        let e = LlamaWeights::read(dir.path(), &c).unwrap_err().to_string();
        assert!(
            e.contains(INDEX_FILE)
                && e.contains("model.norm.weight")
                && e.contains("model-00001-of-00002"),
            "{e}"
        );
        // A shard that is not there.
        let mut bad = weight_map.clone();
        bad["model.norm.weight"] = Value::from("model-00003-of-00002.safetensors");
        std::fs::write(
            dir.path().join(INDEX_FILE),
            serde_json::json!({ "weight_map": bad }).to_string(),
        )
        .unwrap();
        let e = LlamaWeights::read(dir.path(), &c).unwrap_err().to_string();
        assert!(
            e.contains("cannot read") && e.contains("model-00003-of-00002.safetensors"),
            "{e}"
        );
        // A shard outside the directory.
        let mut bad = weight_map.clone();
        bad["model.norm.weight"] = Value::from("../model.safetensors");
        std::fs::write(
            dir.path().join(INDEX_FILE),
            serde_json::json!({ "weight_map": bad }).to_string(),
        )
        .unwrap();
        let e = LlamaWeights::read(dir.path(), &c).unwrap_err().to_string();
        assert!(e.contains("plain file names"), "{e}");
        // A tensor the index does not list.
        let mut bad = weight_map.clone();
        bad.remove("model.layers.1.self_attn.o_proj.bias");
        std::fs::write(
            dir.path().join(INDEX_FILE),
            serde_json::json!({ "weight_map": bad }).to_string(),
        )
        .unwrap();
        let e = LlamaWeights::read(dir.path(), &c).unwrap_err().to_string();
        assert!(
            e.contains(INDEX_FILE) && e.contains("model.layers.1.self_attn.o_proj.bias is missing"),
            "{e}"
        );
        std::fs::write(dir.path().join(INDEX_FILE), "{\"weight_map\": 3}").unwrap();
        let e = LlamaWeights::read(dir.path(), &c).unwrap_err().to_string();
        assert!(e.contains("weight_map is missing or not an object"), "{e}");
    }

    /// Writes `tensors` (name, dtype, shape) as a safetensors file with zero bytes.
    fn write_raw(path: &Path, tensors: &[(String, safetensors::Dtype, Vec<usize>)]) {
        struct Raw(safetensors::Dtype, Vec<usize>, Vec<u8>);
        impl safetensors::View for &Raw {
            fn dtype(&self) -> safetensors::Dtype {
                self.0
            }
            fn shape(&self) -> &[usize] {
                &self.1
            }
            fn data(&self) -> Cow<'_, [u8]> {
                Cow::Borrowed(&self.2)
            }
            fn data_len(&self) -> usize {
                self.2.len()
            }
        }
        let raws: Vec<(String, Raw)> = tensors
            .iter()
            .map(|(n, d, s)| {
                let bytes = s.iter().product::<usize>() * d.bitsize() / 8;
                (n.clone(), Raw(*d, s.clone(), vec![0; bytes]))
            })
            .collect();
        safetensors::serialize_to_file(raws.iter().map(|(n, r)| (n.as_str(), r)), None, path)
            .unwrap();
    }

    fn full_listing(c: &LlamaConfig) -> Vec<(String, safetensors::Dtype, Vec<usize>)> {
        params(c)
            .into_iter()
            .map(|p| (p.hf_name(), safetensors::Dtype::F32, p.shape(c)))
            .collect()
    }

    #[test]
    fn bad_weights_are_refused_naming_tensor_and_file() {
        let c = config("qwen2-tied");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SINGLE_FILE);
        let shown = path.display().to_string();
        let refused = |listing: Vec<(String, safetensors::Dtype, Vec<usize>)>| {
            write_raw(&path, &listing);
            LlamaWeights::read(dir.path(), &c).unwrap_err().to_string()
        };
        // The full listing reads (with a tied lm_head and a rotary buffer dropped).
        let mut ok = full_listing(&c);
        ok.push((
            "lm_head.weight".into(),
            safetensors::Dtype::F32,
            vec![384, 64],
        ));
        ok.push((
            "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
            safetensors::Dtype::F32,
            vec![8],
        ));
        write_raw(&path, &ok);
        let w = LlamaWeights::read(dir.path(), &c).unwrap();
        assert_eq!(w.names().count(), params(&c).len());
        assert!(w.tensor("lm_head.weight").is_none());

        let mut l = full_listing(&c);
        l.retain(|(n, _, _)| n != "model.layers.1.self_attn.k_proj.bias");
        let e = refused(l);
        assert!(
            e.contains(&shown)
                && e.contains("model.layers.1.self_attn.k_proj.bias is missing")
                && e.contains("qwen2 model with 2 layers"),
            "{e}"
        );

        let mut l = full_listing(&c);
        l[3].2 = vec![7, 7];
        let name = l[3].0.clone();
        let e = refused(l);
        assert!(
            e.contains(&shown) && e.contains(&format!("{name} has shape [7, 7]")),
            "{e}"
        );

        let mut l = full_listing(&c);
        l.push((
            "model.layers.2.input_layernorm.weight".into(),
            safetensors::Dtype::F32,
            vec![64],
        ));
        let e = refused(l);
        assert!(
            e.contains("model.layers.2.input_layernorm.weight is not part of this model"),
            "{e}"
        );

        let mut l = full_listing(&c);
        l.push(("score.weight".into(), safetensors::Dtype::F32, vec![2, 64]));
        let e = refused(l);
        assert!(e.contains("score.weight is not part of this model"), "{e}");

        let mut l = full_listing(&c);
        l[0].1 = safetensors::Dtype::F64;
        let e = refused(l);
        assert!(
            e.contains(&shown) && e.contains("is F64") && e.contains("F32, BF16 and F16"),
            "{e}"
        );

        // An untied config reading tied weights misses lm_head.
        let mut untied = c.clone();
        untied.tie_word_embeddings = false;
        write_raw(&path, &full_listing(&c));
        let e = LlamaWeights::read(dir.path(), &untied)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lm_head.weight is missing"), "{e}");

        std::fs::write(&path, b"not safetensors").unwrap();
        let e = LlamaWeights::read(dir.path(), &c).unwrap_err().to_string();
        assert!(
            e.contains(&shown) && e.contains("is not a safetensors file"),
            "{e}"
        );

        let empty = tempfile::tempdir().unwrap();
        let e = LlamaWeights::read(empty.path(), &c)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has neither model.safetensors nor model.safetensors.index.json"),
            "{e}"
        );

        // In-memory construction checks value counts too.
        let mut tensors = random_weights(&c, 1).into_tensors();
        tensors.get_mut("model.norm.weight").unwrap().values.pop();
        let e = LlamaWeights::new(&c, tensors, Path::new("(memory)"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.norm.weight has 63 values"), "{e}");
    }
}
