//! Training data: token shards on disk, the tokenizers that make them, `prepare` (text to
//! shards), and the loader that turns shards into deterministic batches.
//!
//! ```text
//! text files ──prepare──▶ DIR/train-*.bin, DIR/val-*.bin, DIR/dataset.json
//!   (a manifest naming text: cache::resolve_run_data tokenizes it into CHECKPOINTS/tokens/KEY)
//!                              │
//!                  TokenStream::open("DIR/train-*.bin")   (shards concatenated)
//!                              │
//!         TrainBatches: batch(step, micro_step) = f(seed, step, row)   EvalBatches: fixed
//! ```

#![forbid(unsafe_code)]

pub mod cache;
pub mod chat;
pub mod examples;
pub mod hf_tokenizer;
pub mod loader;
pub mod prepare;
pub mod records;
pub mod shard;
pub mod tokenizer;
