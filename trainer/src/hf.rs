//! Hugging Face GPT-2 interop: weights in the `transformers` GPT-2 safetensors layout, so a
//! model trained here loads elsewhere and published GPT-2 weights can be fine-tuned here.
//!
//! ```text
//! ours (flat, Linear orientation (out, in))        Hugging Face (Conv1D orientation (in, out))
//! wte (Vp, C)      rows 0..V                 ◄──►  wte.weight (V, C)
//! wpe (maxT, C)                              ◄──►  wpe.weight (maxT, C)
//! ln1w/ln1b [l]                              ◄──►  h.{l}.ln_1.weight / .bias
//! qkvw [l] (3C, C), qkvb [l]                 ◄──►  h.{l}.attn.c_attn.weight (C, 3C) / .bias
//! attprojw [l] (C, C), attprojb [l]          ◄──►  h.{l}.attn.c_proj.weight (C, C) / .bias
//! ln2w/ln2b [l]                              ◄──►  h.{l}.ln_2.weight / .bias
//! fcw [l] (4C, C), fcb [l]                   ◄──►  h.{l}.mlp.c_fc.weight (C, 4C) / .bias
//! fcprojw [l] (C, 4C), fcprojb [l]           ◄──►  h.{l}.mlp.c_proj.weight (4C, C) / .bias
//! lnfw/lnfb                                  ◄──►  ln_f.weight / .bias
//! ```
//!
//! Names may carry a `transformer.` prefix on import (as `GPT2LMHeadModel` saves them); the
//! output head is tied to `wte`, so `lm_head.weight` is ignored when present.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::{
    checkpoint::{NamedTensor, write::F32View},
    config::ModelConfig,
    model::{ParamLayout, tensor},
};

#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path} lacks tensor {name}; is it a GPT-2 model with {layers} layers?")]
    Missing {
        path: PathBuf,
        name: String,
        layers: usize,
    },
    #[error(
        "{path}: tensor {name} has shape {found:?}, the model needs {want:?}; check spec.model matches the weights"
    )]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("{path}: tensor {name} is {dtype}; only F32 and BF16 weights can be loaded")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("the parameter buffer has {got} values, the model has {want}")]
    ParamCount { got: usize, want: usize },
    #[error("{path}: {field} {problem}")]
    Config {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
    #[error("{path}: {source}")]
    Dimensions {
        path: PathBuf,
        source: crate::config::ConfigError,
    },
}

/// A GPT-2 `config.json` (as [`gpt2_config_json`] writes it and `transformers` does): the
/// dimensions from `n_layer`, `n_head`, `n_embd`, `n_positions` and `vocab_size`.
/// `value` is the parsed file at `path` (named in errors).
pub fn gpt2_config_from_json(
    value: &serde_json::Value,
    path: &Path,
) -> Result<ModelConfig, HfError> {
    let field = |name: &'static str| -> Result<usize, HfError> {
        value
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| HfError::Config {
                path: path.to_path_buf(),
                field: name,
                problem: "is missing or not a whole number; a GPT-2 config.json has it".into(),
            })
    };
    ModelConfig::new(
        field("n_layer")?,
        field("n_head")?,
        field("n_embd")?,
        field("n_positions")?,
        field("vocab_size")?,
    )
    .map_err(|source| HfError::Dimensions {
        path: path.to_path_buf(),
        source,
    })
}

/// One Hugging Face tensor and where it lives in our flat buffer.
pub(crate) struct Mapping {
    pub(crate) hf_name: String,
    /// Our tensor family and layer (None for unstacked tensors).
    pub(crate) id: usize,
    pub(crate) layer: Option<usize>,
    /// HF shape.
    pub(crate) shape: Vec<usize>,
    /// Conv1D orientation: the HF tensor is our (out, in) matrix transposed.
    transposed: bool,
}

pub(crate) fn mappings(config: &ModelConfig) -> Vec<Mapping> {
    let (c, v, t) = (config.width, config.vocab, config.context);
    let plain = |hf_name: String, id, layer, shape: Vec<usize>| Mapping {
        hf_name,
        id,
        layer,
        shape,
        transposed: false,
    };
    let conv = |hf_name: String, id, layer, shape: Vec<usize>| Mapping {
        transposed: true,
        ..plain(hf_name, id, layer, shape)
    };
    // wte keeps only the real vocabulary rows: the padded ones never leave the trainer.
    let mut out = vec![
        plain("wte.weight".into(), tensor::WTE, None, vec![v, c]),
        plain("wpe.weight".into(), tensor::WPE, None, vec![t, c]),
    ];
    for l in 0..config.layers {
        let h = |s: &str| format!("h.{l}.{s}");
        out.extend([
            plain(h("ln_1.weight"), tensor::LN1W, Some(l), vec![c]),
            plain(h("ln_1.bias"), tensor::LN1B, Some(l), vec![c]),
            conv(
                h("attn.c_attn.weight"),
                tensor::QKVW,
                Some(l),
                vec![c, 3 * c],
            ),
            plain(h("attn.c_attn.bias"), tensor::QKVB, Some(l), vec![3 * c]),
            conv(
                h("attn.c_proj.weight"),
                tensor::ATTPROJW,
                Some(l),
                vec![c, c],
            ),
            plain(h("attn.c_proj.bias"), tensor::ATTPROJB, Some(l), vec![c]),
            plain(h("ln_2.weight"), tensor::LN2W, Some(l), vec![c]),
            plain(h("ln_2.bias"), tensor::LN2B, Some(l), vec![c]),
            conv(h("mlp.c_fc.weight"), tensor::FCW, Some(l), vec![c, 4 * c]),
            plain(h("mlp.c_fc.bias"), tensor::FCB, Some(l), vec![4 * c]),
            conv(
                h("mlp.c_proj.weight"),
                tensor::FCPROJW,
                Some(l),
                vec![4 * c, c],
            ),
            plain(h("mlp.c_proj.bias"), tensor::FCPROJB, Some(l), vec![c]),
        ]);
    }
    out.push(plain("ln_f.weight".into(), tensor::LNFW, None, vec![c]));
    out.push(plain("ln_f.bias".into(), tensor::LNFB, None, vec![c]));
    out
}

fn our_range(layout: &ParamLayout, m: &Mapping) -> std::ops::Range<usize> {
    match m.layer {
        Some(l) => layout.layer(m.id, l),
        None => layout.range(m.id),
    }
}

/// `src` as a (rows, cols) matrix, transposed.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    for r in 0..rows {
        for (col, value) in src[r * cols..(r + 1) * cols].iter().enumerate() {
            out[col * rows + r] = *value;
        }
    }
    out
}

/// GPT-2's `<|endoftext|>` id.
const END_OF_TEXT: usize = 50256;

/// `config.json` of a Hugging Face GPT-2 model with `config`'s dimensions (the vocabulary
/// unpadded, GELU with the tanh approximation, LayerNorm eps 1e-5, a tied head).
pub fn gpt2_config_json(config: &ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab,
        "n_positions": config.context,
        "n_ctx": config.context,
        "n_embd": config.width,
        "n_layer": config.layers,
        "n_head": config.heads,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
        // GPT-2's <|endoftext|>, where the vocabulary has it (a byte-level model has none).
        "bos_token_id": (config.vocab > END_OF_TEXT).then_some(END_OF_TEXT),
        "eos_token_id": (config.vocab > END_OF_TEXT).then_some(END_OF_TEXT),
    })
}

/// Writes `params` (our flat layout) as a Hugging Face GPT-2 `model.safetensors`.
pub fn export_gpt2(
    params: &[f32],
    config: &ModelConfig,
    layout: &ParamLayout,
    path: &Path,
) -> Result<(), HfError> {
    if params.len() != layout.total {
        return Err(HfError::ParamCount {
            got: params.len(),
            want: layout.total,
        });
    }
    let maps = mappings(config);
    let values: Vec<Vec<f32>> = maps
        .iter()
        .map(|m| {
            let ours = &params[our_range(layout, m)];
            if m.transposed {
                // HF (in, out) is ours (out, in) transposed.
                transpose(ours, m.shape[1], m.shape[0])
            } else {
                ours[..m.shape.iter().product::<usize>()].to_vec()
            }
        })
        .collect();
    let views = maps.iter().zip(&values).map(|(m, v)| {
        (
            m.hf_name.as_str(),
            F32View(NamedTensor {
                name: &m.hf_name,
                shape: &m.shape,
                values: v,
            }),
        )
    });
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| HfError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads Hugging Face GPT-2 weights into our flat layout (padded vocabulary rows are zero).
pub fn load_gpt2(
    path: &Path,
    config: &ModelConfig,
    layout: &ParamLayout,
) -> Result<Vec<f32>, HfError> {
    let bytes = std::fs::read(path).map_err(|source| HfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| HfError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut params = vec![0.0f32; layout.total];
    for m in mappings(config) {
        let view = file
            .tensor(&m.hf_name)
            .or_else(|_| file.tensor(&format!("transformer.{}", m.hf_name)))
            .map_err(|_| HfError::Missing {
                path: path.to_path_buf(),
                name: m.hf_name.clone(),
                layers: config.layers,
            })?;
        if view.shape() != m.shape.as_slice() {
            return Err(HfError::Shape {
                path: path.to_path_buf(),
                name: m.hf_name.clone(),
                found: view.shape().to_vec(),
                want: m.shape.clone(),
            });
        }
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect(),
            other => {
                return Err(HfError::Dtype {
                    path: path.to_path_buf(),
                    name: m.hf_name.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let range = our_range(layout, &m);
        let ours = if m.transposed {
            transpose(&values, m.shape[0], m.shape[1])
        } else {
            values
        };
        params[range.start..range.start + ours.len()].copy_from_slice(&ours);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn small() -> (ModelConfig, ParamLayout) {
        let config = ModelConfig::new(2, 2, 8, 16, 40).unwrap();
        let layout = ParamLayout::new(&config);
        (config, layout)
    }

    #[test]
    fn export_then_load_round_trips_bitwise() {
        let (config, layout) = small();
        let mut params = crate::model::init_params(&config, &layout, &mut Rng::new(7));
        // Make every value distinct so a wrong transpose or offset shows.
        for (i, p) in params.iter_mut().enumerate() {
            *p += i as f32 * 1e-3;
        }
        // Padded vocabulary rows are not exported; a trained model keeps them at zero.
        let wte = layout.range(tensor::WTE);
        params[wte.start + config.vocab * config.width..wte.end].fill(0.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        export_gpt2(&params, &config, &layout, &path).unwrap();
        let loaded = load_gpt2(&path, &config, &layout).unwrap();
        assert_eq!(loaded, params);
    }

    #[test]
    fn export_uses_hugging_face_names_and_conv1d_orientation() {
        let (config, layout) = small();
        let params: Vec<f32> = (0..layout.total).map(|i| i as f32).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        export_gpt2(&params, &config, &layout, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let c_attn = file.tensor("h.1.attn.c_attn.weight").unwrap();
        assert_eq!(c_attn.shape(), &[8, 24]);
        // HF [in=i][out=o] equals ours qkvw[layer 1][o][i].
        let hf: Vec<f32> = c_attn
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ours = &params[layout.layer(tensor::QKVW, 1)];
        for (i, o) in [(0, 0), (3, 17), (7, 23)] {
            assert_eq!(hf[i * 24 + o], ours[o * 8 + i]);
        }
        assert_eq!(file.tensor("wte.weight").unwrap().shape(), &[40, 8]);
        assert_eq!(file.tensor("ln_f.bias").unwrap().shape(), &[8]);
    }

    #[test]
    fn a_mismatched_model_is_refused_naming_the_tensor() {
        let (config, layout) = small();
        let params = vec![0.0; layout.total];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        export_gpt2(&params, &config, &layout, &path).unwrap();
        let wider = ModelConfig::new(2, 2, 16, 16, 40).unwrap();
        let error = load_gpt2(&path, &wider, &ParamLayout::new(&wider))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("wte.weight") && error.contains("[40, 8]"),
            "{error}"
        );
        let deeper = ModelConfig::new(3, 2, 8, 16, 40).unwrap();
        let error = load_gpt2(&path, &deeper, &ParamLayout::new(&deeper))
            .unwrap_err()
            .to_string();
        assert!(error.contains("h.2.ln_1.weight"), "{error}");
        let error = load_gpt2(&dir.path().join("none"), &config, &layout)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot read"), "{error}");
    }
}
