//! The model families the trainer builds, and the one place a family is registered: which
//! family and dimensions a run asks for ([`Family::of`]), building it on a backend
//! ([`Family::build`]), and its starting weights ([`Family::initial_weights`]).
//!
//! ```text
//! spec.model.from: DIR          ─▶ Llama (DIR/config.json), weights from DIR
//! spec.model.architecture: llama ─▶ Llama (from scratch, the spec's dimensions)
//! otherwise                      ─▶ GPT-2 (preset or dimensions), weights from initFrom if set
//! ```

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_api::{
    TrainingRun,
    checkpoint::BaseModelRef,
    llama_config::LlamaConfig,
    manifest::resolve_path,
    resolved::{ResolveError, model_from_dir},
    spec::{Architecture, LoraSpec, ResolvedModel},
};

use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::hf;
use crate::llama::{
    LlamaWeights, WeightsError,
    model::{HfSource, Llama, flat_from_weights},
    weights::Param,
};
use crate::lm::LanguageModel;
use crate::lora::{LoraError, Placement};
use crate::model::{Gpt, ModelError, ParamLayout};

/// Why a run's model could not be worked out or loaded.
#[derive(Debug, thiserror::Error)]
pub enum FamilyError {
    #[error("spec.model does not resolve to dimensions; run `tessera validate` on the manifest")]
    Unresolved,
    #[error(transparent)]
    Dir(Box<ResolveError>),
    #[error("spec.model: {0}")]
    Gpt2(#[from] crate::config::ConfigError),
    #[error("spec.model.from: {0}")]
    Weights(Box<WeightsError>),
    #[error("spec.training.initFrom: {0}")]
    InitFrom(Box<hf::HfError>),
    #[error(transparent)]
    Lora(#[from] LoraError),
}

impl From<ResolveError> for FamilyError {
    fn from(e: ResolveError) -> Self {
        FamilyError::Dir(Box::new(e))
    }
}

impl From<WeightsError> for FamilyError {
    fn from(e: WeightsError) -> Self {
        FamilyError::Weights(Box::new(e))
    }
}

impl From<hf::HfError> for FamilyError {
    fn from(e: hf::HfError) -> Self {
        FamilyError::InitFrom(Box::new(e))
    }
}

/// One Hugging Face tensor and where it lives in the family's layout (layer `layer`'s slice
/// of tensor `id`, or all of it; its values are the slice's first ones, as many as `shape`
/// holds).
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    pub name: String,
    pub id: usize,
    pub layer: Option<usize>,
    pub shape: Vec<usize>,
}

/// A model family with its configuration.
#[derive(Debug, Clone)]
pub enum Family {
    Gpt2 {
        config: ModelConfig,
        /// Hugging Face GPT-2 weights to start from (`training.initFrom`).
        init_from: Option<PathBuf>,
        /// LoRA adapters on the frozen `init_from` weights (`training.lora`).
        lora: Option<LoraSpec>,
    },
    Llama {
        config: LlamaConfig,
        /// The Hugging Face directory the weights start from (`model.from`).
        from: Option<PathBuf>,
        /// LoRA adapters on the frozen `from` weights (`training.lora`).
        lora: Option<LoraSpec>,
    },
}

impl Family {
    /// The family and dimensions `run` asks for; relative paths are taken from `base_dir`.
    pub fn of(run: &TrainingRun, base_dir: &Path) -> Result<(Family, ResolvedModel), FamilyError> {
        let spec = &run.spec;
        if let Some(from) = &spec.model.from {
            let dir = resolve_path(base_dir, from);
            let (config, resolved) = model_from_dir(&dir, spec.model.context)?;
            return Ok((
                Family::Llama {
                    config,
                    from: Some(dir),
                    lora: spec.training.lora.clone(),
                },
                resolved,
            ));
        }
        let resolved = spec
            .model
            .resolve(&spec.data.tokenizer)
            .ok_or(FamilyError::Unresolved)?;
        let family = match resolved.architecture {
            Architecture::Gpt2 => Family::Gpt2 {
                config: ModelConfig::new(
                    resolved.layers as usize,
                    resolved.heads as usize,
                    resolved.width as usize,
                    resolved.context as usize,
                    resolved.vocab as usize,
                )?,
                // A model directory (what `tessera ckpt export --hf` writes), or the
                // safetensors file in it.
                init_from: spec.training.init_from.as_deref().map(|p| {
                    let path = resolve_path(base_dir, p);
                    if path.is_dir() {
                        path.join("model.safetensors")
                    } else {
                        path
                    }
                }),
                lora: spec.training.lora.clone(),
            },
            Architecture::Llama => Family::Llama {
                config: LlamaConfig::from_scratch(&resolved),
                from: None,
                lora: spec.training.lora.clone(),
            },
        };
        Ok((family, resolved))
    }

    /// The model in a Hugging Face directory (GPT-2, or a Llama-family `model_type`), its
    /// weights named as the starting point, with the positions it takes.
    pub fn from_hf_dir(dir: &Path) -> Result<(Family, usize), FamilyError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| {
            FamilyError::from(hf::HfError::Read {
                path: path.clone(),
                source,
            })
        })?;
        // Parsed once: the model type picks the reader.
        let value: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let model_type = value.as_ref().and_then(|v| v.get("model_type")?.as_str());
        if let (Some(value), Some("gpt2")) = (&value, model_type) {
            let config = hf::gpt2_config_from_json(value, &path)?;
            return Ok((
                Family::Gpt2 {
                    config,
                    init_from: Some(dir.join("model.safetensors")),
                    lora: None,
                },
                config.context,
            ));
        }
        let config = match &value {
            Some(value) => LlamaConfig::from_json(value, &path),
            // Not JSON: the reader names the problem.
            None => LlamaConfig::from_json_str(&text, &path),
        }
        .map_err(ResolveError::from)?;
        // Attention is computed in full, which is sliding-window attention up to the window.
        let context = config
            .sliding_window
            .map_or(config.max_position_embeddings, |w| {
                w.min(config.max_position_embeddings)
            });
        Ok((
            Family::Llama {
                config,
                from: Some(dir.to_path_buf()),
                lora: None,
            },
            context,
        ))
    }

    /// The vocabulary the model's embedding covers (token ids below it).
    pub fn vocab(&self) -> usize {
        match self {
            Family::Gpt2 { config, .. } => config.vocab,
            Family::Llama { config, .. } => config.vocab_size,
        }
    }

    /// The LoRA adapters the model trains on a frozen base, if it does.
    pub fn lora(&self) -> Option<&LoraSpec> {
        match self {
            Family::Gpt2 { lora, .. } | Family::Llama { lora, .. } => lora.as_ref(),
        }
    }

    /// The same model with every weight trainable (what a LoRA checkpoint's merged weights
    /// load into).
    pub fn without_lora(&self) -> Family {
        let mut family = self.clone();
        match &mut family {
            Family::Gpt2 { lora, .. } | Family::Llama { lora, .. } => *lora = None,
        }
        family
    }

    /// Which weights train and where each is read: the trainable layout is what checkpoints
    /// and the optimizer hold.
    pub fn placement(&self) -> Result<Placement, FamilyError> {
        Ok(match self {
            Family::Gpt2 { config, lora, .. } => crate::model::placement(config, lora.as_ref())?,
            Family::Llama { config, lora, .. } => {
                crate::llama::model::placement(config, lora.as_ref())?
            }
        })
    }

    /// The flat parameter layout of all the family's weights (the base's under LoRA).
    pub fn layout(&self) -> ParamLayout {
        match self {
            Family::Gpt2 { config, .. } => ParamLayout::new(config),
            Family::Llama { config, .. } => crate::llama::model::layout(config).0,
        }
    }

    /// Where the vocabulary size comes from, for messages.
    pub fn vocab_source(&self) -> String {
        match self {
            Family::Llama {
                from: Some(dir), ..
            } => format!("vocab_size in {}", dir.join("config.json").display()),
            _ => "spec.model.vocab".to_string(),
        }
    }

    /// The GPT-2 configuration, for what only GPT-2 has (its Hugging Face export).
    pub fn gpt2(&self) -> Option<&ModelConfig> {
        match self {
            Family::Gpt2 { config, .. } => Some(config),
            Family::Llama { .. } => None,
        }
    }

    /// The model on `backend` with activations for `batch` × `seq_len`, initialised from
    /// `seed` (the starting weights, if any, are loaded afterwards).
    pub fn build<B: Backend>(
        &self,
        backend: B,
        batch: usize,
        seq_len: usize,
        seed: u64,
    ) -> Result<Box<dyn LanguageModel<B>>, ModelError> {
        Ok(match self {
            Family::Gpt2 { config, lora, .. } => Box::new(Gpt::with_lora(
                backend,
                *config,
                lora.as_ref(),
                batch,
                seq_len,
                seed,
            )?),
            Family::Llama { config, lora, .. } => Box::new(Llama::with_lora(
                backend,
                config.clone(),
                lora.as_ref(),
                batch,
                seq_len,
                seed,
            )?),
        })
    }

    /// The flat parameters a fresh run starts from where the spec names weights (`model.from`
    /// or `training.initFrom`), with where they came from; `None` to keep the initialisation.
    pub fn initial_weights(
        &self,
        layout: &ParamLayout,
    ) -> Result<Option<(Vec<f32>, PathBuf)>, FamilyError> {
        match self {
            Family::Gpt2 {
                config,
                init_from: Some(path),
                ..
            } => Ok(Some((hf::load_gpt2(path, config, layout)?, path.clone()))),
            Family::Llama {
                config,
                from: Some(dir),
                ..
            } => {
                let weights = LlamaWeights::read(dir, config)?;
                Ok(Some((flat_from_weights(config, &weights), dir.clone())))
            }
            _ => Ok(None),
        }
    }

    /// Every Hugging Face tensor of the model with the layout tensor (and layer) it comes
    /// from, named as in the model class (`model.layers.0.self_attn.q_proj.weight`,
    /// `transformer.h.0.attn.c_attn.weight`).
    pub fn hf_tensors(&self) -> Vec<HfTensor> {
        match self {
            Family::Gpt2 { config, .. } => hf::mappings(config)
                .into_iter()
                .map(|m| HfTensor {
                    name: format!("transformer.{}", m.hf_name),
                    id: m.id,
                    layer: m.layer,
                    shape: m.shape,
                })
                .collect(),
            Family::Llama { config, .. } => {
                let (_, sources) = crate::llama::model::layout(config);
                let mut out = Vec::new();
                for (id, source) in sources.into_iter().enumerate() {
                    match source {
                        HfSource::Whole(p) => out.push(HfTensor {
                            name: p.hf_name(),
                            id,
                            layer: None,
                            shape: p.shape(config),
                        }),
                        HfSource::Stacked(lp) => out.extend((0..config.num_layers).map(|i| {
                            let p = Param::Layer(i, lp);
                            HfTensor {
                                name: p.hf_name(),
                                id,
                                layer: Some(i),
                                shape: p.shape(config),
                            }
                        })),
                    }
                }
                out
            }
        }
    }

    /// The frozen base a LoRA run trains on, by path and content (SHA-256 over its weight
    /// files, streamed); `None` when every weight trains.
    pub fn base_ref(&self) -> Result<Option<BaseModelRef>, FamilyError> {
        let (path, files) = match self {
            Family::Gpt2 {
                init_from: Some(path),
                lora: Some(_),
                ..
            } => (path.clone(), vec![path.clone()]),
            Family::Llama {
                from: Some(dir),
                lora: Some(_),
                ..
            } => (dir.clone(), weight_files(dir)?),
            _ => return Ok(None),
        };
        let mut hasher = Sha256::new();
        for file in &files {
            let read = |source| {
                FamilyError::from(hf::HfError::Read {
                    path: file.clone(),
                    source,
                })
            };
            let mut f = std::fs::File::open(file).map_err(read)?;
            std::io::copy(&mut f, &mut hasher).map_err(read)?;
        }
        Ok(Some(BaseModelRef {
            path: path.display().to_string(),
            sha256: hex::encode(hasher.finalize()),
        }))
    }

    /// Checks, without reading tensor data, that the starting weights the spec names fit the
    /// model (names, shapes and dtypes from the safetensors headers), and that a LoRA plan
    /// fits it: what `tessera run` checks before it starts anything.
    pub fn check_weights(&self) -> Result<(), FamilyError> {
        match self {
            Family::Llama {
                config,
                from: Some(dir),
                ..
            } => {
                LlamaWeights::check_dir(dir, config)?;
                self.placement()?;
                Ok(())
            }
            _ => {
                self.placement()?;
                Ok(())
            }
        }
    }

    /// Why this model cannot train on the CUDA backend, if it cannot.
    pub fn cuda_unsupported(&self) -> Option<String> {
        match self {
            Family::Gpt2 { config, .. } => crate::backend::cuda::CudaBackend::unsupported(config),
            Family::Llama { config, .. } => {
                crate::backend::cuda::CudaBackend::unsupported_llama(config.head_dim)
            }
        }
    }
}

/// A model directory's weight files in name order: `model.safetensors`, or its shards.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, FamilyError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let read = |source| {
        FamilyError::from(hf::HfError::Read {
            path: dir.to_path_buf(),
            source,
        })
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("model-") && name.ends_with(".safetensors") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
