//! The Llama family of open models (`model_type` `llama`, `mistral`, `qwen2`) as Hugging Face
//! publishes them: the config reader and writer ([`config`], in tessera-api), the safetensors weights under
//! their Hugging Face names ([`weights`]), one f32 CPU reference kernel family per file with
//! forward and backward ([`rmsnorm`], [`rope`], [`swiglu`], [`attention`], [`linear`],
//! [`loss`]), and the whole model's forward, loss and gradients ([`reference`]), checked
//! against golden values recorded from `transformers` (trainer/tests/fixtures/hf).
//!
//! Layout: q and k keep Hugging Face's row order (RoPE pairs dimension `i` with
//! `i + head_dim/2` inside each head, `rotate_half`), so weights load and save without any
//! permutation. Meta's original checkpoints interleave the pairs instead; they are not read
//! here.
//!
//! The kernels are generic over [`Float`](crate::backend::cpu::Float) so their gradient tests
//! run the same code in f64 against finite differences; the model runs in f32 (and in f64 for
//! the same checks).

pub mod attention;
/// `config.json` of a Llama-family directory: a record the CLI, the agent and the trainer
/// all read, so it lives in tessera-api.
pub use tessera_api::llama_config as config;
pub mod linear;
pub mod loss;
pub mod model;
pub mod reference;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
pub mod weights;

pub use config::{ConfigError, LlamaConfig, ModelType};
pub use reference::{LlamaReference, ReferenceError};
pub use weights::{LlamaWeights, WeightsError};

#[cfg(test)]
pub(crate) mod test_util;
