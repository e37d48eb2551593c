//! The Llama family of open models (`model_type` `llama`, `mistral`, `qwen2`) as Hugging Face
//! publishes them: the config reader and writer ([`config`]) and the safetensors weights under
//! their Hugging Face names ([`weights`]).
//!
//! Layout: q and k keep Hugging Face's row order (RoPE pairs dimension `i` with
//! `i + head_dim/2` inside each head, `rotate_half`), so weights load and save without any
//! permutation. Meta's original checkpoints interleave the pairs instead; they are not read
//! here.

pub mod config;
pub mod weights;

pub use config::{ConfigError, LlamaConfig, ModelType};
pub use weights::{LlamaWeights, WeightsError};

#[cfg(test)]
pub(crate) mod test_util;
