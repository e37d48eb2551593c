//! PEFT's LoRA adapter directory, written from and read into the trainable flat space of a
//! [`Placement`], so `PeftModel.from_pretrained(base, DIR)` loads what Tessera trained.
//!
//! ```text
//! DIR/adapter_config.json         peft_type LORA, r, lora_alpha, target_modules, modules_to_save, ...
//! DIR/adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r, in)
//!                                 base_model.model.<module>.lora_B.weight (out, r)
//!                                 base_model.model.<module>.weight         (modules trained whole)
//! ```
//!
//! Module names are the base model's Hugging Face ones (Llama family `model.layers.{i}.
//! self_attn.q_proj`, GPT-2 `transformer.h.{i}.attn.c_attn`); A and B are stored (r, in) and
//! (out, r) for GPT-2's Conv1D layers too, as PEFT stores them.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::checkpoint::NamedTensor;
use crate::family::Family;
use crate::lora::Placement;

/// The weights file and the config file of an adapter directory.
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Every name in an adapter file starts with this (PEFT's wrapper around the base model).
const PREFIX: &str = "base_model.model.";

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("this checkpoint trains every weight; --peft exports LoRA checkpoints only (use --hf)")]
    NotLora,
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error(
        "{path}: no tensor {name} of shape {shape:?}; it is not an adapter for this model and these targets"
    )]
    Missing {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
}

/// One tensor of an adapter file: its name, where its values lie in the trainable flat
/// space (the first `shape`'s product of them), and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftTensor {
    pub name: String,
    pub range: Range<usize>,
    pub shape: Vec<usize>,
}

/// The tensors of the adapter file for `placement` on `family`, in name order.
pub fn tensors(family: &Family, placement: &Placement) -> Result<Vec<PeftTensor>, PeftError> {
    let lora = placement.lora_shape().ok_or(PeftError::NotLora)?;
    let mut out = Vec::new();
    for hf in family.hf_tensors() {
        let adapted = hf
            .layer
            .zip(hf.name.strip_suffix(".weight"))
            .and_then(|(layer, module)| Some((module, placement.adapter(hf.id, layer)?.0)));
        if let Some((module, adapter)) = adapted {
            let shape = &placement.family.tensors[hf.id].shape;
            let (n_out, n_in) = (shape[1], shape[2]);
            out.push(PeftTensor {
                name: format!("{PREFIX}{module}.lora_A.weight"),
                range: adapter.a,
                shape: vec![lora.rank, n_in],
            });
            out.push(PeftTensor {
                name: format!("{PREFIX}{module}.lora_B.weight"),
                range: adapter.b,
                shape: vec![n_out, lora.rank],
            });
            continue;
        }
        if placement.trains(hf.id) {
            let range = placement.trainable_ranges(&[hf.id], hf.layer).remove(0);
            out.push(PeftTensor {
                name: format!("{PREFIX}{}", hf.name),
                range,
                shape: hf.shape,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `adapter_config.json` for `placement` on `family`, naming `base` as the base model: the
/// keys PEFT's LoraConfig has had since 0.8, each at the value PEFT writes for this adapter.
pub fn adapter_config(
    family: &Family,
    placement: &Placement,
    base: &str,
) -> Result<serde_json::Value, PeftError> {
    let lora = placement.lora_shape().ok_or(PeftError::NotLora)?;
    let targets: Vec<&str> = placement.targets().iter().map(|(t, _)| t.name()).collect();
    // Modules trained whole, by their last name part (PEFT matches names by suffix).
    let mut modules: Vec<String> = family
        .hf_tensors()
        .into_iter()
        .filter(|hf| placement.trains(hf.id))
        .filter_map(|hf| {
            let module = hf.name.rsplit_once('.')?.0;
            Some(module.rsplit('.').next()?.to_string())
        })
        .collect();
    modules.sort();
    modules.dedup();
    Ok(json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base,
        "bias": "none",
        "fan_in_fan_out": matches!(family, Family::Gpt2 { .. }),
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": if modules.is_empty() { json!(null) } else { json!(modules) },
        "peft_type": "LORA",
        "r": lora.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    }))
}

/// Writes the adapter directory `out` (created if missing) from the trainable values;
/// returns the files written.
pub fn write_adapter(
    out: &Path,
    family: &Family,
    placement: &Placement,
    trainable: &[f32],
    base: &str,
) -> Result<Vec<String>, PeftError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: String| PeftError::Write { path, message: e }
    };
    std::fs::create_dir_all(out).map_err(|e| write_err(out)(e.to_string()))?;
    let config = adapter_config(family, placement, base)?;
    let tensors = tensors(family, placement)?;
    let values: Vec<Vec<f32>> = tensors
        .iter()
        .map(|t| trainable[t.range.clone()][..t.shape.iter().product::<usize>()].to_vec())
        .collect();
    let views = tensors.iter().zip(&values).map(|(t, v)| {
        (
            t.name.as_str(),
            crate::checkpoint::write::F32View(NamedTensor {
                name: &t.name,
                shape: &t.shape,
                values: v,
            }),
        )
    });
    let path = out.join(ADAPTER_FILE);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &path)
        .map_err(|e| write_err(&path)(e.to_string()))?;
    let config_path = out.join(CONFIG_FILE);
    let mut text = serde_json::to_string_pretty(&config).expect("plain JSON serializes");
    text.push('\n');
    std::fs::write(&config_path, text).map_err(|e| write_err(&config_path)(e.to_string()))?;
    Ok(vec![ADAPTER_FILE.into(), CONFIG_FILE.into()])
}

/// Reads an adapter directory's weights into the trainable flat space of `placement` (the
/// values no adapter tensor covers stay zero).
pub fn read_adapter(
    dir: &Path,
    family: &Family,
    placement: &Placement,
) -> Result<Vec<f32>, PeftError> {
    let path = dir.join(ADAPTER_FILE);
    let read_err = |message: String| PeftError::Read {
        path: path.clone(),
        message,
    };
    let bytes = std::fs::read(&path).map_err(|e| read_err(e.to_string()))?;
    let file =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| read_err(e.to_string()))?;
    let mut out = vec![0.0f32; placement.trainable.total];
    for t in tensors(family, placement)? {
        let view = file
            .tensor(&t.name)
            .ok()
            .filter(|v| v.shape() == t.shape.as_slice() && v.dtype() == safetensors::Dtype::F32)
            .ok_or_else(|| PeftError::Missing {
                path: path.clone(),
                name: t.name.clone(),
                shape: t.shape.clone(),
            })?;
        let dst = &mut out[t.range.clone()];
        for (d, b) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Ok(out)
}
