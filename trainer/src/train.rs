//! One training step: `accum` micro-batches forward+backward (each loss scaled by 1/accum so
//! the accumulated gradient is the mean), then one AdamW update.
//!
//! ```text
//! zero_grad ─▶ for m in 0..accum { batches(step, m) ─▶ forward(1/accum) ─▶ backward } ─▶ AdamW
//! ```

use crate::backend::Backend;
use crate::model::{Gpt, ModelError};
use crate::optimizer::{AdamW, OptimizerError};
use thiserror::Error;

/// The error a batch source may return (the data loader's own error, boxed).
pub type BatchError = Box<dyn std::error::Error + Send + Sync>;

/// Why a training step failed.
#[derive(Debug, Error)]
pub enum TrainError {
    #[error("gradient accumulation must be at least 1 micro-batch")]
    ZeroAccumulation,
    #[error("micro-batch {micro} of step {step} could not be read: {source}")]
    Batch {
        step: u64,
        micro: usize,
        source: BatchError,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Optimizer(#[from] OptimizerError),
}

/// What a step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean loss over the step's micro-batches (nats per token).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f32,
}

/// Runs step `step` (0-based). `batches(step, micro, inputs, targets)` fills the B·T input and
/// target tokens of micro-batch `micro`; it must be a pure function of its arguments for runs
/// to be reproducible.
pub fn train_step<B, S>(
    model: &mut Gpt<B>,
    optimizer: &mut AdamW<B>,
    step: u64,
    accum: usize,
    batches: &mut S,
) -> Result<StepStats, TrainError>
where
    B: Backend,
    S: FnMut(u64, usize, &mut [u32], &mut [u32]) -> Result<(), BatchError>,
{
    if accum == 0 {
        return Err(TrainError::ZeroAccumulation);
    }
    model.zero_grad()?;
    let scale = 1.0 / accum as f64;
    let mut loss = 0.0;
    for micro in 0..accum {
        let (inputs, targets) = model.staging_mut();
        batches(step, micro, inputs, targets).map_err(|source| TrainError::Batch {
            step,
            micro,
            source,
        })?;
        loss += model.forward_staged(scale)? * scale;
        model.backward()?;
    }
    let update = optimizer.step(model, step)?;
    Ok(StepStats {
        loss,
        grad_norm: update.grad_norm,
        lr: update.lr,
    })
}
