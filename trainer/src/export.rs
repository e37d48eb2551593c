//! `tessera ckpt export --hf`: a checkpoint written as a Hugging Face model directory that
//! `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads (a LoRA checkpoint with
//! `--merged`: its adapters merged into the base); `--peft`: a LoRA checkpoint's adapters as
//! the directory `peft.PeftModel.from_pretrained(base, DIR)` loads ([`crate::peft`]).
//!
//! ```text
//! DIR/config.json                     the family's config (Llama family: the 4.x form every reader takes)
//! DIR/model.safetensors               weights under Hugging Face names, f32 or bf16
//!    (or model-0000i-of-0000n.safetensors + model.safetensors.index.json above the shard size)
//! DIR/generation_config.json          the source's, or one naming BOS/EOS
//! DIR/tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja
//!                                     carried over from the run's Hugging Face tokenizer
//! ```

use std::path::{Path, PathBuf};

use serde_json::json;
use tessera_api::llama_config::WeightDtype;

use crate::checkpoint::LoadedCheckpoint;
use crate::family::Family;
use crate::hf;
use crate::llama::{
    LlamaWeights, WeightsError, model::weights_from_flat, weights::DEFAULT_MAX_SHARD_BYTES,
};
use crate::peft::{self, PeftError};
use crate::sample::{SampleError, checkpoint_family, checkpoint_model, flat_params};

/// Files carried over from the run's tokenizer directory, where they exist.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];
const GENERATION_CONFIG: &str = "generation_config.json";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(Box<SampleError>),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Config(#[from] tessera_api::llama_config::ConfigError),
    #[error(transparent)]
    Gpt2(#[from] hf::HfError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--dtype {0}: GPT-2 checkpoints export in f32 only (transformers loads them and casts as asked)"
    )]
    Gpt2Dtype(&'static str),
    #[error(
        "checkpoint {0} holds LoRA adapters: export them with --peft, or the base with the adapters merged in with --hf --merged"
    )]
    LoraNeedsMerged(PathBuf),
    #[error(
        "--merged: checkpoint {0} trains every weight; there are no adapters to merge (drop --merged)"
    )]
    NothingToMerge(PathBuf),
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error(transparent)]
    Family(#[from] crate::family::FamilyError),
}

impl From<SampleError> for ExportError {
    fn from(e: SampleError) -> Self {
        ExportError::Checkpoint(Box::new(e))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to export.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    pub dtype: WeightDtype,
    /// Shard the weights above this many bytes.
    pub max_shard_bytes: u64,
    /// Merge a LoRA checkpoint's adapters into its base (required for one, refused for others).
    pub merged: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            dtype: WeightDtype::F32,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            merged: false,
        }
    }
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Exported {
    /// `transformers`' class for the model (`LlamaForCausalLM`, `GPT2LMHeadModel`, ...).
    pub architecture: &'static str,
    /// File names written into the directory, in the order written.
    pub files: Vec<String>,
}

/// Writes `checkpoint` into `out` (created if missing) as a Hugging Face model directory.
pub fn export_hf(
    checkpoint: &LoadedCheckpoint,
    out: &Path,
    options: ExportOptions,
) -> Result<Exported, ExportError> {
    let (trained, _, spec) = checkpoint_family(checkpoint)?;
    match (trained.lora().is_some(), options.merged) {
        (true, false) => return Err(ExportError::LoraNeedsMerged(checkpoint.dir.clone())),
        (false, true) => return Err(ExportError::NothingToMerge(checkpoint.dir.clone())),
        _ => {}
    }
    let (family, flat) = checkpoint_model(checkpoint)?;
    let layout = family.layout();
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut files = Vec::new();
    let architecture = match &family {
        Family::Llama { config, .. } => {
            let weights =
                LlamaWeights::new(config, weights_from_flat(config, &flat), &checkpoint.dir)?;
            files.extend(weights.write_dir(out, options.dtype, options.max_shard_bytes)?);
            let mut config = config.clone();
            config.dtype = Some(options.dtype);
            config.write_to_dir(out)?;
            files.push("config.json".into());
            config.model_type.architecture()
        }
        Family::Gpt2 { config, .. } => {
            if options.dtype != WeightDtype::F32 {
                return Err(ExportError::Gpt2Dtype(options.dtype.torch_name()));
            }
            hf::export_gpt2(&flat, config, &layout, &out.join("model.safetensors"))?;
            files.push("model.safetensors".into());
            let path = out.join("config.json");
            write_json(&path, &hf::gpt2_config_json(config))?;
            files.push("config.json".into());
            "GPT2LMHeadModel"
        }
    };
    if let tessera_api::spec::Tokenizer::HuggingFace(path) = &spec.data.tokenizer {
        let path = PathBuf::from(path);
        let source = if path.is_dir() {
            path
        } else {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        for name in TOKENIZER_FILES.into_iter().chain([GENERATION_CONFIG]) {
            let from = source.join(name);
            if from.is_file() {
                let to = out.join(name);
                std::fs::copy(&from, &to).map_err(io(&to))?;
                files.push(name.into());
            }
        }
    }
    if !out.join(GENERATION_CONFIG).exists() {
        let path = out.join(GENERATION_CONFIG);
        let mut generation = json!({"_from_model_config": true});
        if let Family::Llama { config, .. } = &family {
            if let Some(bos) = config.tokens.bos {
                generation["bos_token_id"] = json!(bos);
            }
            match config.tokens.eos.as_slice() {
                [] => {}
                [one] => generation["eos_token_id"] = json!(one),
                many => generation["eos_token_id"] = json!(many),
            }
        }
        write_json(&path, &generation)?;
        files.push(GENERATION_CONFIG.into());
    }
    // safetensors creates its files owner-only; a model directory is for others to read too.
    for name in &files {
        let path = out.join(name);
        let mut permissions = std::fs::metadata(&path).map_err(io(&path))?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o644);
        std::fs::set_permissions(&path, permissions).map_err(io(&path))?;
    }
    Ok(Exported {
        architecture,
        files,
    })
}

/// Writes a LoRA checkpoint's adapters into `out` as a PEFT adapter directory naming the
/// base model directory (or file) it was trained on.
pub fn export_peft(checkpoint: &LoadedCheckpoint, out: &Path) -> Result<Exported, ExportError> {
    let (family, _, _) = checkpoint_family(checkpoint)?;
    let placement = family.placement()?;
    if family.lora().is_none() {
        return Err(PeftError::NotLora.into());
    }
    let trainable = flat_params(checkpoint, &placement.trainable)?;
    // PEFT names the base model by its directory (GPT-2's base is recorded as its file).
    let base = checkpoint
        .manifest
        .base
        .as_ref()
        .map_or_else(String::new, |b| {
            let path = Path::new(&b.path);
            match path.is_file() {
                true => path.parent().unwrap_or(path).display().to_string(),
                false => b.path.clone(),
            }
        });
    let files = peft::write_adapter(out, &family, &placement, &trainable, &base)?;
    Ok(Exported {
        architecture: "PEFT LoRA adapter",
        files,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ExportError> {
    let mut text = serde_json::to_string_pretty(value).expect("plain JSON serializes");
    text.push('\n');
    std::fs::write(path, text).map_err(io(path))
}
