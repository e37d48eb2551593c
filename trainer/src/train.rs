//! One training step: `accum` micro-batches forward+backward on this rank (each loss scaled by
//! 1/(accum × world) so the gradient summed over ranks is the mean), then the gang's gradient
//! reduction and one AdamW update.
//!
//! ```text
//! zero_grad ─▶ for m in 0..accum { batches(step, m) ─▶ forward ─▶ backward } ─▶ reduce ─▶ AdamW
//! ```

use crate::backend::Backend;
use crate::collective::Solo;
use crate::lm::LanguageModel;
use crate::model::ModelError;
use crate::optimizer::{AdamW, OptimizerError};
use crate::parallel::{DataParallel, ParallelError};
use tessera_api::spec::Sharding;
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
    #[error(transparent)]
    Parallel(#[from] ParallelError),
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

/// Runs step `step` (0-based) in a single process. `batches(step, micro, inputs, targets)`
/// fills the B·T input and target tokens of micro-batch `micro`; it must be a pure function of
/// its arguments for runs to be reproducible.
pub fn train_step<B, S>(
    model: &mut dyn LanguageModel<B>,
    optimizer: &mut AdamW<B>,
    step: u64,
    accum: usize,
    batches: &mut S,
) -> Result<StepStats, TrainError>
where
    B: Backend,
    S: FnMut(u64, usize, &mut [u32], &mut [u32]) -> Result<(), BatchError>,
{
    let mut solo = DataParallel::new(Sharding::None, Box::new(Solo), model)?;
    train_step_parallel(model, optimizer, &mut solo, step, accum, batches)
}

/// Runs step `step` as one rank of a data-parallel gang: this rank's `accum` micro-batches,
/// each loss scaled by 1/(accum × world) so the gradients summed across ranks are the mean
/// over the global batch, then the gang's reduction and update (see [`crate::parallel`]).
pub fn train_step_parallel<B, S>(
    model: &mut dyn LanguageModel<B>,
    optimizer: &mut AdamW<B>,
    dp: &mut DataParallel<B>,
    step: u64,
    accum: usize,
    batches: &mut S,
) -> Result<StepStats, TrainError>
where
    B: Backend,
    S: FnMut(u64, usize, &mut [u32], &mut [u32]) -> Result<(), BatchError>,
{
    step_with(model, optimizer, dp, step, accum, None, batches)
}

/// [`train_step_parallel`] for batches whose targets may be
/// [`crate::data::loader::IGNORE_TARGET`]: the loss is the sum over the counted targets of
/// the whole global batch divided by `counted_targets` (their number, which every rank
/// knows), so gradient accumulation and data parallelism give the gradient of one big batch.
pub fn train_step_parallel_counted<B, S>(
    model: &mut dyn LanguageModel<B>,
    optimizer: &mut AdamW<B>,
    dp: &mut DataParallel<B>,
    step: u64,
    accum: usize,
    counted_targets: u64,
    batches: &mut S,
) -> Result<StepStats, TrainError>
where
    B: Backend,
    S: FnMut(u64, usize, &mut [u32], &mut [u32]) -> Result<(), BatchError>,
{
    step_with(
        model,
        optimizer,
        dp,
        step,
        accum,
        Some(counted_targets),
        batches,
    )
}

fn step_with<B, S>(
    model: &mut dyn LanguageModel<B>,
    optimizer: &mut AdamW<B>,
    dp: &mut DataParallel<B>,
    step: u64,
    accum: usize,
    counted_targets: Option<u64>,
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
    let world = f64::from(dp.world_size());
    let grad_scale = 1.0 / (accum as f64 * world);
    let loss_scale = 1.0 / accum as f64;
    let mut loss = 0.0;
    for micro in 0..accum {
        model.set_micro_batch(micro);
        let (inputs, targets) = model.staging_mut();
        batches(step, micro, inputs, targets).map_err(|source| TrainError::Batch {
            step,
            micro,
            source,
        })?;
        loss += match counted_targets {
            None => model.forward_staged(grad_scale)? * loss_scale,
            // A step with nothing counted has loss 0 and no gradient.
            Some(counted) => {
                let per_target = 1.0 / counted.max(1) as f64;
                // ×world: finish_step averages the ranks' losses, the global loss is a sum.
                model.forward_staged_sum(per_target)? * per_target * world
            }
        };
        if micro + 1 == accum {
            dp.backward_last(model)?;
        } else {
            model.backward()?;
        }
    }
    let (update, loss) = dp.finish_step(model, optimizer, step, loss)?;
    Ok(StepStats {
        loss,
        grad_norm: update.grad_norm,
        lr: update.lr,
    })
}
