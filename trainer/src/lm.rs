//! What the trainer needs of a causal language model, whatever its family: [`LanguageModel`].
//! A family (GPT-2 in `model.rs`, the Llama family in `llama/model.rs`) owns its activations
//! and writes its forward pass to the logits and its backward pass into the gradients; the
//! rest — the flat parameter and gradient buffers, their layout, the token buffers and the
//! loss over the logits — is [`ModelState`], the same for every family, and the trait's
//! provided methods are written once over it.
//!
//! ```text
//! staging_mut ─▶ forward_staged ─▶ forward_logits (family) ─▶ softmax_cross_entropy ─▶ loss
//!                                   backward_with (family) ─▶ grads (flat, accumulated)
//! ```

use std::ops::Range;

use crate::backend::Backend;
use crate::data::loader::IGNORE_TARGET;
use crate::lora::{DropoutPlan, LoraActs, Placement, Weights};
use crate::model::{GradientReady, ModelError, ParamLayout};
use crate::rng::RngState;

/// The parts of a model every family has: the backend, the flat parameters and gradients
/// (layout: [`ParamLayout`]), the batch shape, the token buffers, host staging for the next
/// micro-batch, the logits (B, T, padded vocab; the logits' gradient after a loss) and the
/// per-position losses.
pub struct ModelState<B: Backend> {
    pub backend: B,
    /// The trainable flat space (every weight, or LoRA's adapters): `placement.trainable`.
    pub layout: ParamLayout,
    /// Which of the family's weights train and where each is read.
    pub placement: Placement,
    /// The frozen base weights (the family's layout) under LoRA.
    pub base: Option<B::Buf>,
    /// LoRA's activations, under LoRA.
    pub lora: Option<LoraActs<B>>,
    pub batch: usize,
    pub seq_len: usize,
    /// Vocabulary entries that take part in the loss.
    pub vocab: usize,
    /// Columns of a logits row (≥ vocab; the extra ones are padding the loss ignores).
    pub padded_vocab: usize,
    pub params: B::Buf,
    pub grads: B::Buf,
    pub inputs: B::Tokens,
    pub targets: B::Tokens,
    pub logits: B::Buf,
    pub losses: B::Buf,
    pub staged_inputs: Vec<u32>,
    pub staged_targets: Vec<u32>,
    /// Whether the last forward computed a loss (so a backward may follow).
    pub forward_done: bool,
    /// The initialisation RNG's state after the last parameter was drawn.
    pub init_rng: RngState,
}

impl<B: Backend> ModelState<B> {
    /// Allocates the buffers for `placement` and batches of (batch, seq_len), parameters
    /// zero (the model adds LoRA's activations).
    pub fn new(
        backend: B,
        placement: Placement,
        batch: usize,
        seq_len: usize,
        vocab: usize,
        padded_vocab: usize,
        init_rng: RngState,
    ) -> Result<Self, ModelError> {
        if batch == 0 {
            return Err(ModelError::ZeroDimension { what: "batch" });
        }
        if seq_len == 0 {
            return Err(ModelError::ZeroDimension { what: "seq_len" });
        }
        let bt = batch * seq_len;
        let layout = placement.trainable.clone();
        let base = match placement.has_base() {
            true => Some(backend.alloc(placement.family.total)?),
            false => None,
        };
        Ok(ModelState {
            base,
            lora: None,
            placement,
            params: backend.alloc(layout.total)?,
            grads: backend.alloc(layout.total)?,
            inputs: backend.alloc_tokens(bt)?,
            targets: backend.alloc_tokens(bt)?,
            logits: backend.alloc(bt * padded_vocab)?,
            losses: backend.alloc_f32(bt)?,
            staged_inputs: vec![0; bt],
            staged_targets: vec![0; bt],
            forward_done: false,
            backend,
            layout,
            batch,
            seq_len,
            vocab,
            padded_vocab,
            init_rng,
        })
    }

    /// The buffers weights are read from.
    pub fn weights(&self) -> Weights<'_, B> {
        Weights {
            trainable: &self.params,
            base: self.base.as_ref(),
            placement: &self.placement,
        }
    }

    /// Checks `tokens` (B·T ids below the vocabulary) and uploads them as the inputs.
    pub fn upload_inputs(&mut self, tokens: &[u32]) -> Result<(), ModelError> {
        check_tokens("inputs", tokens, self.batch * self.seq_len, self.vocab)?;
        self.backend.upload_tokens(&mut self.inputs, tokens)?;
        Ok(())
    }
}

/// A causal language model on backend `B`: next-token loss and gradients over batches of a
/// fixed (batch, seq_len), parameters in one flat buffer.
pub trait LanguageModel<B: Backend>: Send {
    /// The state every family shares.
    fn state(&self) -> &ModelState<B>;
    fn state_mut(&mut self) -> &mut ModelState<B>;
    /// Runs the network on `inputs` (B·T ids) up to the logits in [`ModelState::logits`].
    /// Implementations start with [`ModelState::upload_inputs`].
    fn forward_network(&mut self, inputs: &[u32]) -> Result<(), ModelError>;
    /// Accumulates the gradient of the loss whose logits gradient the last forward left in
    /// the logits, calling `ready(backend, grads, ranges)` as the gradients of `ranges` become
    /// final (data parallelism reduces them while the backward goes on).
    fn backward_network(&mut self, ready: &mut GradientReady<'_, B>) -> Result<(), ModelError>;
    /// Model FLOPs per trained token at this sequence length (forward and backward), the
    /// numerator of MFU.
    fn flops_per_token(&self) -> f64;
    /// Context positions the family can take at most.
    fn max_seq_len(&self) -> usize;

    // === provided ===

    fn backend(&self) -> &B {
        &self.state().backend
    }
    fn layout(&self) -> &ParamLayout {
        &self.state().layout
    }
    fn batch(&self) -> usize {
        self.state().batch
    }
    fn seq_len(&self) -> usize {
        self.state().seq_len
    }
    fn vocab(&self) -> usize {
        self.state().vocab
    }
    fn num_params(&self) -> usize {
        self.state().layout.total
    }
    /// The initialisation RNG's state after drawing every parameter (a checkpoint saves it).
    fn rng_state_after_init(&self) -> RngState {
        self.state().init_rng
    }
    /// The flat parameter buffer (layout: [`ParamLayout`]).
    fn params(&self) -> &B::Buf {
        &self.state().params
    }
    fn params_mut(&mut self) -> &mut B::Buf {
        &mut self.state_mut().params
    }
    /// The flat gradient buffer (same layout as the parameters).
    fn grads(&self) -> &B::Buf {
        &self.state().grads
    }
    /// The backend and the gradient buffer, to write reduced gradients back.
    fn grads_mut(&mut self) -> (&B, &mut B::Buf) {
        let s = self.state_mut();
        (&s.backend, &mut s.grads)
    }
    /// The backend, the parameters (mutable), the gradients and the layout, for the optimizer.
    fn update_parts(&mut self) -> (&B, &mut B::Buf, &B::Buf, &ParamLayout) {
        let s = self.state_mut();
        (&s.backend, &mut s.params, &s.grads, &s.layout)
    }
    /// All parameters as f32 on the host, in flat-layout order.
    fn params_to_host(&self) -> Result<Vec<f32>, ModelError> {
        let s = self.state();
        let mut out = vec![0.0; s.layout.total];
        s.backend.download(&s.params, 0, &mut out)?;
        Ok(out)
    }
    /// All gradients as f32 on the host, in flat-layout order.
    fn grads_to_host(&self) -> Result<Vec<f32>, ModelError> {
        let s = self.state();
        let mut out = vec![0.0; s.layout.total];
        s.backend.download(&s.grads, 0, &mut out)?;
        Ok(out)
    }
    /// Replaces every parameter (flat-layout order), e.g. from a checkpoint.
    fn load_params_from_host(&mut self, values: &[f32]) -> Result<(), ModelError> {
        let s = self.state_mut();
        if values.len() != s.layout.total {
            return Err(ModelError::ParamCount {
                what: "parameter values",
                want: s.layout.total,
                got: values.len(),
            });
        }
        s.backend.upload(&mut s.params, 0, values)?;
        Ok(())
    }
    /// Loads the model's whole weights (the family's layout, e.g. a Hugging Face directory's):
    /// the parameters themselves, or under LoRA the frozen base and the tensors trained whole
    /// (the adapters keep their values).
    fn load_weights(&mut self, values: &[f32]) -> Result<(), ModelError> {
        let s = self.state_mut();
        if values.len() != s.placement.family.total {
            return Err(ModelError::ParamCount {
                what: "model weights",
                want: s.placement.family.total,
                got: values.len(),
            });
        }
        let Some(base) = s.base.as_mut() else {
            return self.load_params_from_host(values);
        };
        s.backend.upload(base, 0, values)?;
        for (from, to) in s.placement.trained_whole() {
            s.backend.upload(&mut s.params, to.start, &values[from])?;
        }
        Ok(())
    }
    /// LoRA dropout's masks for the next step's micro-batches (`None`: no dropout, as for
    /// evaluation); nothing to do for a model without dropout.
    fn set_dropout_plan(&mut self, plan: Option<DropoutPlan>) {
        if let Some(lora) = self.state_mut().lora.as_mut() {
            lora.set_plan(plan);
        }
    }
    /// Selects micro-batch `micro` of the step's dropout plan for the next forward/backward.
    fn set_micro_batch(&mut self, micro: usize) {
        if let Some(lora) = self.state_mut().lora.as_mut() {
            lora.set_micro_batch(micro);
        }
    }
    /// Host buffers to fill with the next micro-batch's inputs and targets (B·T each), then
    /// call [`LanguageModel::forward_staged`].
    fn staging_mut(&mut self) -> (&mut [u32], &mut [u32]) {
        let s = self.state_mut();
        (&mut s.staged_inputs, &mut s.staged_targets)
    }
    /// [`LanguageModel::forward_scaled`] on the staged micro-batch.
    fn forward_staged(&mut self, grad_scale: f64) -> Result<f64, ModelError> {
        let inputs = std::mem::take(&mut self.state_mut().staged_inputs);
        let targets = std::mem::take(&mut self.state_mut().staged_targets);
        let result = self.forward_scaled(&inputs, &targets, grad_scale);
        let s = self.state_mut();
        s.staged_inputs = inputs;
        s.staged_targets = targets;
        result
    }
    /// Mean cross-entropy loss over the batch (nats per token); prepares the logits gradient
    /// for [`LanguageModel::backward`] with the loss scaled by 1.
    fn forward(&mut self, inputs: &[u32], targets: &[u32]) -> Result<f64, ModelError> {
        self.forward_scaled(inputs, targets, 1.0)
    }
    /// Mean loss; the gradient the next backward() accumulates is that of `grad_scale × loss`
    /// (1/accum for gradient accumulation).
    fn forward_scaled(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f64,
    ) -> Result<f64, ModelError> {
        let bt = self.batch() * self.seq_len();
        Ok(self.forward_sum(inputs, targets, grad_scale / bt as f64)? / bt as f64)
    }
    /// [`LanguageModel::forward_sum`] on the staged micro-batch.
    fn forward_staged_sum(&mut self, dloss: f64) -> Result<f64, ModelError> {
        let inputs = std::mem::take(&mut self.state_mut().staged_inputs);
        let targets = std::mem::take(&mut self.state_mut().staged_targets);
        let result = self.forward_sum(&inputs, &targets, dloss);
        let s = self.state_mut();
        s.staged_inputs = inputs;
        s.staged_targets = targets;
        result
    }
    /// The SUM of the per-position losses; a target of [`IGNORE_TARGET`] adds 0 and no
    /// gradient. The gradient the next backward() accumulates is that of `dloss × sum` (a
    /// masked step passes 1 / the counted targets of its global batch).
    fn forward_sum(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        dloss: f64,
    ) -> Result<f64, ModelError> {
        let (bt, vocab) = (self.batch() * self.seq_len(), self.vocab());
        check_targets(targets, bt, vocab)?;
        self.forward_logits(inputs)?;
        let s = self.state_mut();
        let be = &s.backend;
        be.upload_tokens(&mut s.targets, targets)?;
        be.softmax_cross_entropy(
            be.view_mut(&mut s.logits, 0..bt * s.padded_vocab)?,
            be.view_mut(&mut s.losses, 0..bt)?,
            &s.targets,
            bt,
            s.vocab,
            s.padded_vocab,
            dloss,
        )?;
        let sum = be.sum(be.view(&s.losses, 0..bt)?)?;
        s.forward_done = true;
        Ok(sum)
    }
    /// Runs the network up to the logits without a loss (inference); read them with
    /// [`LanguageModel::logits_at`]. A following backward() is refused.
    fn forward_logits(&mut self, inputs: &[u32]) -> Result<(), ModelError> {
        self.state_mut().forward_done = false;
        self.forward_network(inputs)
    }
    /// The logits of sequence `row`, position `position` of the last forward pass that did
    /// not compute a loss, first `vocab` entries: for sampling.
    fn logits_at(&self, row: usize, position: usize) -> Result<Vec<f32>, ModelError> {
        let s = self.state();
        if row >= s.batch || position >= s.seq_len {
            return Err(ModelError::PositionOutOfRange {
                row,
                position,
                batch: s.batch,
                seq_len: s.seq_len,
            });
        }
        let mut out = vec![0.0; s.vocab];
        let offset = (row * s.seq_len + position) * s.padded_vocab;
        s.backend.download(&s.logits, offset, &mut out)?;
        Ok(out)
    }
    /// Sets every parameter gradient to zero.
    fn zero_grad(&mut self) -> Result<(), ModelError> {
        let s = self.state_mut();
        let n = s.layout.total;
        s.backend
            .fill_zero(s.backend.view_mut(&mut s.grads, 0..n)?)?;
        Ok(())
    }
    /// Accumulates the gradient of the last forward's (scaled) loss into the gradients.
    fn backward(&mut self) -> Result<(), ModelError> {
        self.backward_with(&mut |_, _, _| Ok(()))
    }
    /// [`LanguageModel::backward`], calling `ready` as ranges of gradients become final.
    fn backward_with(&mut self, ready: &mut GradientReady<'_, B>) -> Result<(), ModelError> {
        if !self.state().forward_done {
            return Err(ModelError::BackwardBeforeForward);
        }
        self.backward_network(ready)
    }
}

/// [`check_tokens`] for targets, which may also be [`IGNORE_TARGET`].
pub fn check_targets(targets: &[u32], want: usize, vocab: usize) -> Result<(), ModelError> {
    check_ids("targets", targets, want, vocab, Some(IGNORE_TARGET))
}

/// Refuses a token batch of the wrong length or with an id outside the vocabulary.
pub fn check_tokens(
    what: &'static str,
    tokens: &[u32],
    want: usize,
    vocab: usize,
) -> Result<(), ModelError> {
    check_ids(what, tokens, want, vocab, None)
}

/// `want` ids, each below `vocab` or equal to `allowed`.
fn check_ids(
    what: &'static str,
    tokens: &[u32],
    want: usize,
    vocab: usize,
    allowed: Option<u32>,
) -> Result<(), ModelError> {
    if tokens.len() != want {
        return Err(ModelError::BatchShape {
            what,
            want,
            got: tokens.len(),
        });
    }
    if let Some((position, &token)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= vocab && Some(t) != allowed)
    {
        return Err(ModelError::TokenOutOfRange {
            what,
            token,
            position,
            vocab,
        });
    }
    Ok(())
}

/// The range of item `i` in a buffer of items of `len` elements (a layer's slice of a stacked
/// activation).
pub fn per(i: usize, len: usize) -> Range<usize> {
    i * len..(i + 1) * len
}
