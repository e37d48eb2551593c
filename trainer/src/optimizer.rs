//! AdamW with decoupled weight decay, its learning-rate schedules (linear warm-up, then cosine,
//! linear or constant), global-norm gradient clipping, and its state for checkpoints.
//!
//! ```text
//! grads ─▶ ‖g‖ = √Σg² (fixed order) ─▶ scale = min(1, clip/‖g‖) ─▶ per tensor: adamw_update(range,
//!          wd = weight_decay if the tensor decays else 0) ─▶ params
//! ```
//! Decay applies to matmul weights, and to embeddings only with `decay_embeddings`; never to
//! biases or LayerNorm parameters.

use crate::backend::{AdamWStep, Backend, BackendError};
use crate::lm::LanguageModel;
use crate::model::{ParamKind, ParamLayout};
use std::ops::Range;
use thiserror::Error;

/// Why the optimizer refused a configuration or an update.
#[derive(Debug, Error, PartialEq)]
pub enum OptimizerError {
    #[error("optimizer.{field} = {value} is invalid: {rule}")]
    InvalidField {
        field: &'static str,
        value: f64,
        rule: &'static str,
    },
    #[error("gradient norm is not finite ({norm}); the update was skipped")]
    NonFiniteGradNorm { norm: f64 },
    #[error("optimizer state has {got} values, the optimizer owns {want} parameters")]
    StateSize { want: usize, got: usize },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Shape of the learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrSchedule {
    /// Half-cosine from `lr` to `min_lr_ratio × lr` over the remaining steps.
    Cosine,
    /// Straight line from `lr` to `min_lr_ratio × lr`.
    Linear,
    /// `lr` throughout.
    Constant,
}

/// AdamW hyper-parameters and schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Also decay the token and position embeddings.
    pub decay_embeddings: bool,
    /// Global-norm clipping threshold; 0 turns clipping off.
    pub grad_clip: f32,
    /// Steps of linear warm-up from lr/warmup to lr.
    pub warmup_steps: u64,
    /// Steps of the whole run (the schedule ends here and stays at its final value).
    pub total_steps: u64,
    pub min_lr_ratio: f32,
    pub schedule: LrSchedule,
}

impl Default for AdamWConfig {
    /// GPT-2 style defaults (as llm.c): lr 6e-4, betas (0.9, 0.95), eps 1e-8, decay 0.1,
    /// clip 1.0, cosine to 0 over 1 step with no warm-up (set `total_steps`).
    fn default() -> Self {
        Self {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_embeddings: false,
            grad_clip: 1.0,
            warmup_steps: 0,
            total_steps: 1,
            min_lr_ratio: 0.0,
            schedule: LrSchedule::Cosine,
        }
    }
}

impl AdamWConfig {
    /// Checks every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<(), OptimizerError> {
        let bad = |field, value: f32, rule| OptimizerError::InvalidField {
            field,
            value: value as f64,
            rule,
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad("lr", self.lr, "must be a finite number > 0"));
        }
        for (field, value) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(bad(field, value, "must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(bad("eps", self.eps, "must be a finite number > 0"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad("weight_decay", self.weight_decay, "must be >= 0"));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(bad("grad_clip", self.grad_clip, "must be >= 0 (0 = off)"));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(bad("min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]"));
        }
        if self.total_steps == 0 {
            return Err(OptimizerError::InvalidField {
                field: "total_steps",
                value: 0.0,
                rule: "must be > 0",
            });
        }
        if self.warmup_steps > self.total_steps {
            return Err(OptimizerError::InvalidField {
                field: "warmup_steps",
                value: self.warmup_steps as f64,
                rule: "must not exceed total_steps",
            });
        }
        Ok(())
    }

    /// The learning rate of 0-based `step`.
    pub fn lr_at(&self, step: u64) -> f32 {
        let lr = self.lr as f64;
        if step < self.warmup_steps {
            return (lr * (step + 1) as f64 / self.warmup_steps as f64) as f32;
        }
        let min_lr = lr * self.min_lr_ratio as f64;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let value = match self.schedule {
            LrSchedule::Constant => lr,
            LrSchedule::Linear => lr - (lr - min_lr) * progress,
            LrSchedule::Cosine => {
                min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        };
        value as f32
    }
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStats {
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f32,
    /// Whether clipping scaled the gradient down.
    pub clipped: bool,
}

/// The optimizer state a checkpoint saves: the moments of the optimizer's owned range of the
/// flat space (all of it unless sharded), f32.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Updates applied so far (t of the bias correction is `updates + 1` for the next one).
    pub updates: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// fp32 master weights of the owned range, from backends that keep them apart from
    /// lower-precision parameters (CUDA); `None` where the parameters are the masters.
    pub master: Option<Vec<f32>>,
}

/// AdamW over a model's flat parameter space, or over one rank's shard of it (ZeRO-1).
pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    state: B::OptState,
    updates: u64,
    /// The part of the flat space this optimizer updates and keeps moments for.
    owned: Range<usize>,
    /// Contiguous ranges of the owned space with whether they decay.
    segments: Vec<(Range<usize>, bool)>,
}

impl<B: Backend> AdamW<B> {
    /// Validates `config` and allocates zeroed moments for all of `model`'s parameters.
    pub fn new(config: AdamWConfig, model: &dyn LanguageModel<B>) -> Result<Self, OptimizerError> {
        Self::sharded(config, model, 0..model.num_params())
    }

    /// Like [`AdamW::new`], but keeping moments for (and updating) only `owned`.
    pub fn sharded(
        config: AdamWConfig,
        model: &dyn LanguageModel<B>,
        owned: Range<usize>,
    ) -> Result<Self, OptimizerError> {
        config.validate()?;
        let state = model
            .backend()
            .alloc_opt_state(model.params(), owned.clone())?;
        let segments = decay_segments(model.layout(), config.decay_embeddings)
            .into_iter()
            .filter_map(|(range, decay)| {
                let start = range.start.max(owned.start);
                let end = range.end.min(owned.end);
                (start < end).then_some((start..end, decay))
            })
            .collect();
        Ok(Self {
            config,
            state,
            updates: 0,
            owned,
            segments,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The part of the flat parameter space this optimizer owns.
    pub fn owned(&self) -> Range<usize> {
        self.owned.clone()
    }

    /// Bytes of optimizer state held (moments, and master weights where the backend keeps
    /// them): the figure ZeRO-1 divides by the world size.
    pub fn state_bytes(&self, model: &dyn LanguageModel<B>) -> usize {
        model.backend().opt_state_bytes(&self.state)
    }

    /// Learning rate of 0-based `step`.
    pub fn lr_at(&self, step: u64) -> f32 {
        self.config.lr_at(step)
    }

    /// Updates applied so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// One update from the model's accumulated gradients, with the learning rate of `step`:
    /// the single-process path, where this optimizer owns the whole space.
    pub fn step(
        &mut self,
        model: &mut dyn LanguageModel<B>,
        step: u64,
    ) -> Result<UpdateStats, OptimizerError> {
        let (backend, params, grads, _) = model.update_parts();
        let n = backend.buf_len(grads);
        let grad_norm = backend.sum_squares(backend.view(grads, 0..n)?)?.sqrt();
        self.apply(backend, params, grads, 0, grad_norm, step)
    }

    /// One update of the owned range given the global gradient norm (summed across ranks by
    /// the caller). `grads[i - grads_offset]` is the gradient of flat element `i` for every
    /// owned `i`: a full-space buffer with offset 0, or a shard buffer with offset
    /// `owned.start`.
    pub fn apply(
        &mut self,
        backend: &B,
        params: &mut B::Buf,
        grads: &B::Buf,
        grads_offset: usize,
        grad_norm: f64,
        step: u64,
    ) -> Result<UpdateStats, OptimizerError> {
        if !grad_norm.is_finite() {
            return Err(OptimizerError::NonFiniteGradNorm { norm: grad_norm });
        }
        let clip = self.config.grad_clip as f64;
        let clipped = clip > 0.0 && grad_norm > clip;
        let grad_scale = if clipped { clip / grad_norm } else { 1.0 };
        let lr = self.lr_at(step);
        let t = (self.updates + 1) as i32;
        let c = &self.config;
        for (range, decay) in &self.segments {
            let hp = AdamWStep {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: if *decay { c.weight_decay } else { 0.0 },
                grad_scale: grad_scale as f32,
                bias_correction1: 1.0 - c.beta1.powi(t),
                bias_correction2: 1.0 - c.beta2.powi(t),
            };
            let local = range
                .start
                .checked_sub(grads_offset)
                .ok_or(BackendError::OutOfBounds {
                    start: range.start,
                    end: range.end,
                    len: backend.buf_len(grads),
                })?..range.end - grads_offset;
            let g = backend.view(grads, local)?;
            backend.adamw_update(params, g, &mut self.state, range.clone(), &hp)?;
        }
        self.updates += 1;
        Ok(UpdateStats {
            grad_norm,
            lr,
            clipped,
        })
    }

    /// The state to save in a checkpoint (the owned range's moments).
    pub fn state_to_host(
        &self,
        model: &dyn LanguageModel<B>,
    ) -> Result<OptimizerState, OptimizerError> {
        let n = self.owned.len();
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        model
            .backend()
            .download_opt_state(&self.state, &mut m, &mut v)?;
        let mut master = vec![0.0; n];
        let kept = model
            .backend()
            .download_master_weights(&self.state, &mut master)?;
        Ok(OptimizerState {
            updates: self.updates,
            m,
            v,
            master: kept.then_some(master),
        })
    }

    /// Restores state saved with [`AdamW::state_to_host`] for the same owned range (load the
    /// parameters first).
    pub fn load_state(
        &mut self,
        model: &dyn LanguageModel<B>,
        saved: &OptimizerState,
    ) -> Result<(), OptimizerError> {
        let want = self.owned.len();
        let master_len = saved.master.as_ref().map_or(want, Vec::len);
        for got in [saved.m.len(), saved.v.len(), master_len] {
            if got != want {
                return Err(OptimizerError::StateSize { want, got });
            }
        }
        model.backend().upload_opt_state(
            &mut self.state,
            model.params(),
            &saved.m,
            &saved.v,
            saved.master.as_deref(),
        )?;
        self.updates = saved.updates;
        Ok(())
    }
}

/// Whether a tensor of `kind` decays.
pub fn decays(kind: ParamKind, decay_embeddings: bool) -> bool {
    match kind {
        ParamKind::MatmulWeight => true,
        ParamKind::Embedding => decay_embeddings,
        ParamKind::MatmulBias | ParamKind::LayerNormWeight | ParamKind::LayerNormBias => false,
    }
}

/// The layout as maximal contiguous runs of equal decay (fewer, longer updates).
fn decay_segments(layout: &ParamLayout, decay_embeddings: bool) -> Vec<(Range<usize>, bool)> {
    let mut out: Vec<(Range<usize>, bool)> = Vec::new();
    for t in &layout.tensors {
        let decay = decays(t.kind, decay_embeddings);
        match out.last_mut() {
            Some((r, d)) if *d == decay && r.end == t.offset => r.end = t.offset + t.len,
            _ => out.push((t.range(), decay)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: LrSchedule) -> AdamWConfig {
        AdamWConfig {
            lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_ratio: 0.1,
            schedule,
            ..AdamWConfig::default()
        }
    }

    #[test]
    fn warmup_is_linear_from_lr_over_warmup() {
        let c = cfg(LrSchedule::Cosine);
        assert!((c.lr_at(0) - 0.1).abs() < 1e-7);
        assert!((c.lr_at(4) - 0.5).abs() < 1e-7);
        assert!((c.lr_at(9) - 1.0).abs() < 1e-7);
    }

    #[test]
    fn cosine_linear_constant_end_points() {
        let c = cfg(LrSchedule::Cosine);
        assert!((c.lr_at(10) - 1.0).abs() < 1e-7);
        assert!((c.lr_at(60) - 0.55).abs() < 1e-6, "{}", c.lr_at(60));
        assert!((c.lr_at(110) - 0.1).abs() < 1e-7);
        assert!((c.lr_at(10_000) - 0.1).abs() < 1e-7);
        let l = cfg(LrSchedule::Linear);
        assert!((l.lr_at(35) - (1.0 - 0.9 * 0.25)).abs() < 1e-6);
        let k = cfg(LrSchedule::Constant);
        assert_eq!(k.lr_at(100), 1.0);
    }

    #[test]
    fn invalid_fields_are_named() {
        let c = AdamWConfig {
            beta2: 1.0,
            ..AdamWConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(OptimizerError::InvalidField { field: "beta2", .. })
        ));
        let c = AdamWConfig {
            lr: f32::NAN,
            ..AdamWConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(OptimizerError::InvalidField { field: "lr", .. })
        ));
        let c = AdamWConfig {
            warmup_steps: 5,
            ..AdamWConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(OptimizerError::InvalidField {
                field: "warmup_steps",
                ..
            })
        ));
    }

    #[test]
    fn decay_mask_covers_only_matmul_weights_by_default() {
        let mc = crate::config::ModelConfig::new(2, 2, 8, 4, 16).unwrap();
        let layout = ParamLayout::new(&mc);
        let segs = decay_segments(&layout, false);
        let decayed: usize = segs.iter().filter(|s| s.1).map(|s| s.0.len()).sum();
        // qkvw + attprojw + fcw + fcprojw = L·12·C²
        assert_eq!(decayed, 2 * 12 * 64);
        let covered: usize = segs.iter().map(|s| s.0.len()).sum();
        assert_eq!(covered, layout.total);
        let with_emb: usize = decay_segments(&layout, true)
            .iter()
            .filter(|s| s.1)
            .map(|s| s.0.len())
            .sum();
        assert_eq!(
            with_emb,
            decayed + layout.range(0).len() + layout.range(1).len()
        );
    }
}
