//! The trainer: the GPT model written once against the `Backend` trait, the CPU backend,
//! the optimizer, data shards and loader, checkpoints, and the CUDA kernels (compiled with
//! NVRTC; no CUDA backend yet).
// `deny`, not `forbid`: backend/cpu/matmul.rs (gemm takes raw pointers) and cuda/nvrtc.rs
// (the NVRTC C API) are the audited `allow`s; every other module is unsafe-free.
#![deny(unsafe_code)]

pub mod backend;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod cuda;
pub mod data;
pub mod export;
pub mod family;
pub mod hf;
pub mod hook;
pub mod linear;
pub mod llama;
pub mod lm;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod optimizer;
pub mod parallel;
pub mod peft;
pub mod rng;
pub mod run;
pub mod sample;
pub mod supervised;
pub mod train;
