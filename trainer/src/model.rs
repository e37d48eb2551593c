//! The GPT-2 model, written once against [`Backend`]: the flat parameter layout, GPT-2
//! initialisation, activation memory for a fixed (B, T), forward (mean cross-entropy loss) and
//! backward (gradients accumulated into the flat gradient buffer). Reads top to bottom like
//! llm.c's train_gpt2: layout, parameters, activations, forward, backward.
//!
//! ```text
//! tokens ─▶ wte[tok] + wpe[t] ─▶ L × [ x += attproj(attn(qkv(ln1(x)))) ; x += fcproj(gelu(fc(ln2(x)))) ]
//!        ─▶ lnf ─▶ logits = lnf · wteᵀ (tied head) ─▶ softmax cross-entropy ─▶ loss
//! ```

use crate::backend::{AttentionShape, Backend, BackendError};
use crate::config::{ConfigError, ModelConfig};
use crate::lm::{LanguageModel, ModelState};
use crate::lora::{LoraActs, LoraError, Placement, Weights};
use crate::rng::Rng;
use std::ops::Range;
use tessera_api::spec::LoraSpec;
use thiserror::Error;

/// Called by [`LanguageModel::backward_with`] when the gradients of some ranges are final.
pub type GradientReady<'a, B> =
    dyn FnMut(&B, &<B as Backend>::Buf, &[Range<usize>]) -> Result<(), ModelError> + 'a;

/// Why the model refused a call.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Lora(#[from] crate::lora::LoraError),
    #[error("{what} must be greater than 0")]
    ZeroDimension { what: &'static str },
    #[error("sequence length {seq_len} exceeds the model context {context}")]
    SeqLenTooLong { seq_len: usize, context: usize },
    #[error(
        "sequence length {seq_len} exceeds the model's sliding window {window}; attention is computed in full, which equals sliding-window attention only up to the window: train with model.context at most {window}"
    )]
    BeyondSlidingWindow { seq_len: usize, window: usize },
    #[error("{what} has {got} tokens, expected batch × seq_len = {want}")]
    BatchShape {
        what: &'static str,
        want: usize,
        got: usize,
    },
    #[error("{what}: token id {token} at position {position} is not below vocab {vocab}")]
    TokenOutOfRange {
        what: &'static str,
        token: u32,
        position: usize,
        vocab: usize,
    },
    #[error("row {row}, position {position} is outside the batch ({batch} × {seq_len})")]
    PositionOutOfRange {
        row: usize,
        position: usize,
        batch: usize,
        seq_len: usize,
    },
    #[error("gradient reduction during backward failed: {0}")]
    GradientSync(String),
    #[error("backward() called without a preceding forward()")]
    BackwardBeforeForward,
    #[error("{what} has {got} values, the model has {want} parameters")]
    ParamCount {
        what: &'static str,
        want: usize,
        got: usize,
    },
}

// === parameter layout ===

/// What a parameter tensor is, which decides its initialisation and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Embedding,
    MatmulWeight,
    MatmulBias,
    LayerNormWeight,
    LayerNormBias,
}

/// One tensor's place in the flat parameter space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamTensor {
    pub name: &'static str,
    pub offset: usize,
    pub len: usize,
    /// Row-major shape; per-layer families lead with L.
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    /// Initialised with std 0.02/√(2L) instead of 0.02 (projections into the residual stream).
    pub residual_projection: bool,
}

impl ParamTensor {
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Indices into [`ParamLayout::tensors`], in flat-buffer order.
pub mod tensor {
    pub const WTE: usize = 0;
    pub const WPE: usize = 1;
    pub const LN1W: usize = 2;
    pub const LN1B: usize = 3;
    pub const QKVW: usize = 4;
    pub const QKVB: usize = 5;
    pub const ATTPROJW: usize = 6;
    pub const ATTPROJB: usize = 7;
    pub const LN2W: usize = 8;
    pub const LN2B: usize = 9;
    pub const FCW: usize = 10;
    pub const FCB: usize = 11;
    pub const FCPROJW: usize = 12;
    pub const FCPROJB: usize = 13;
    pub const LNFW: usize = 14;
    pub const LNFB: usize = 15;
    pub const COUNT: usize = 16;
}

/// The flat parameter layout: contiguous tensors, per-layer families stacked over L (GPT-2:
/// 16 tensors in llm.c's order; the Llama family: see `llama::model`). Gradients and AdamW moments use the same layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    pub tensors: Vec<ParamTensor>,
    pub total: usize,
    layers: usize,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        use ParamKind::*;
        let (l, c, vp, maxt) = (cfg.layers, cfg.width, cfg.padded_vocab, cfg.context);
        let specs: [(&'static str, Vec<usize>, ParamKind, bool); tensor::COUNT] = [
            ("wte", vec![vp, c], Embedding, false),
            ("wpe", vec![maxt, c], Embedding, false),
            ("ln1w", vec![l, c], LayerNormWeight, false),
            ("ln1b", vec![l, c], LayerNormBias, false),
            ("qkvw", vec![l, 3 * c, c], MatmulWeight, false),
            ("qkvb", vec![l, 3 * c], MatmulBias, false),
            ("attprojw", vec![l, c, c], MatmulWeight, true),
            ("attprojb", vec![l, c], MatmulBias, false),
            ("ln2w", vec![l, c], LayerNormWeight, false),
            ("ln2b", vec![l, c], LayerNormBias, false),
            ("fcw", vec![l, 4 * c, c], MatmulWeight, false),
            ("fcb", vec![l, 4 * c], MatmulBias, false),
            ("fcprojw", vec![l, c, 4 * c], MatmulWeight, true),
            ("fcprojb", vec![l, c], MatmulBias, false),
            ("lnfw", vec![c], LayerNormWeight, false),
            ("lnfb", vec![c], LayerNormBias, false),
        ];
        Self::from_specs(specs, l)
    }

    /// Lays out `specs` (name, shape, kind, residual projection) contiguously in order; a
    /// per-layer family's shape leads with `layers`.
    pub fn from_specs(
        specs: impl IntoIterator<Item = (&'static str, Vec<usize>, ParamKind, bool)>,
        layers: usize,
    ) -> Self {
        let mut offset = 0;
        let tensors = specs
            .into_iter()
            .map(|(name, shape, kind, residual_projection)| {
                let len = shape.iter().product();
                let t = ParamTensor {
                    name,
                    offset,
                    len,
                    shape,
                    kind,
                    residual_projection,
                };
                offset += len;
                t
            })
            .collect();
        Self {
            tensors,
            total: offset,
            layers,
        }
    }

    /// Layers a per-layer tensor family is stacked over.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// The whole range of tensor `id`.
    pub fn range(&self, id: usize) -> Range<usize> {
        self.tensors[id].range()
    }

    /// Layer `layer`'s slice of a per-layer tensor family `id`.
    pub fn layer(&self, id: usize, layer: usize) -> Range<usize> {
        let t = &self.tensors[id];
        let per = t.len / self.layers;
        t.offset + layer * per..t.offset + (layer + 1) * per
    }

    /// The tensor called `name`.
    pub fn by_name(&self, name: &str) -> Option<&ParamTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

// === activations ===

/// Forward activations for one (B, T), allocated once.
struct Activations<B: Backend> {
    encoded: B::Buf,   // (B, T, C)
    ln1: B::Buf,       // (L, B, T, C)
    ln1_mean: B::Buf,  // (L, B, T)
    ln1_rstd: B::Buf,  // (L, B, T)
    qkv: B::Buf,       // (L, B, T, 3C)
    atty: B::Buf,      // (L, B, T, C)
    att_state: B::Buf, // (L, attention_state_len)
    residual2: B::Buf, // (L, B, T, C)
    ln2: B::Buf,       // (L, B, T, C)
    ln2_mean: B::Buf,  // (L, B, T)
    ln2_rstd: B::Buf,  // (L, B, T)
    fch: B::Buf,       // (L, B, T, 4C)
    fch_gelu: B::Buf,  // (L, B, T, 4C)
    residual3: B::Buf, // (L, B, T, C)
    lnf: B::Buf,       // (B, T, C)
    lnf_mean: B::Buf,  // (B, T)
    lnf_rstd: B::Buf,  // (B, T)
    proj_out: B::Buf,  // (B, T, C) scratch: a projection's output before the residual add
}

/// Activation gradients, reused by every layer.
struct ActGrads<B: Backend> {
    dresidual: B::Buf, // (B, T, C) gradient of the residual stream at the current layer
    dbtc: B::Buf,      // (B, T, C) scratch: dlnf, dln2, datty, dln1
    dqkv: B::Buf,      // (B, T, 3C)
    dfch_gelu: B::Buf, // (B, T, 4C)
    dfch: B::Buf,      // (B, T, 4C)
    att_scratch: B::Buf, // (attention_scratch_len)
}

// === the model ===

/// GPT-2 on backend `B`, with activation memory for batches of (batch, seq_len).
pub struct Gpt<B: Backend> {
    config: ModelConfig,
    state: ModelState<B>,
    acts: Activations<B>,
    act_grads: ActGrads<B>,
    att_state_len: usize,
}

impl<B: Backend> Gpt<B> {
    /// Builds the model with GPT-2 initialisation from `seed`, with activations for batches of
    /// `batch` sequences of `seq_len` tokens (`seq_len <= config.context`).
    pub fn new(
        backend: B,
        config: ModelConfig,
        batch: usize,
        seq_len: usize,
        seed: u64,
    ) -> Result<Self, ModelError> {
        Self::with_lora(backend, config, None, batch, seq_len, seed)
    }

    /// [`Gpt::new`], training LoRA adapters on a frozen base when `lora` is given (load the
    /// base with [`LanguageModel::load_weights`]).
    pub fn with_lora(
        backend: B,
        config: ModelConfig,
        lora: Option<&LoraSpec>,
        batch: usize,
        seq_len: usize,
        seed: u64,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        if seq_len > config.context {
            return Err(ModelError::SeqLenTooLong {
                seq_len,
                context: config.context,
            });
        }
        let placement = placement(&config, lora)?;
        let mut rng = Rng::new(seed);
        let host = init_params(&config, &placement.family, &mut rng);
        let trainable = match placement.has_base() {
            true => placement.initial_trainable(&host, &mut rng),
            false => host.clone(),
        };
        let mut state = ModelState::new(
            backend,
            placement,
            batch,
            seq_len,
            config.vocab,
            config.padded_vocab,
            rng.state(),
        )?;
        state.backend.upload(&mut state.params, 0, &trainable)?;
        if let Some(base) = state.base.as_mut() {
            state.backend.upload(base, 0, &host)?;
        }
        let (l, c, bt) = (config.layers, config.width, batch * seq_len);
        state.lora = LoraActs::new(&state.backend, &state.placement, batch, seq_len, 2 * c)?;
        let backend = &state.backend;
        let att = AttentionShape {
            batch,
            seq_len,
            channels: c,
            heads: config.heads,
        };
        let att_state_len = backend.attention_state_len(att);
        // Storage precision for tensors, fp32 for statistics and losses.
        let a = |len: usize| backend.alloc(len);
        let f = |len: usize| backend.alloc_f32(len);
        let acts = Activations {
            encoded: a(bt * c)?,
            ln1: a(l * bt * c)?,
            ln1_mean: f(l * bt)?,
            ln1_rstd: f(l * bt)?,
            qkv: a(l * bt * 3 * c)?,
            atty: a(l * bt * c)?,
            att_state: f(l * att_state_len)?,
            residual2: a(l * bt * c)?,
            ln2: a(l * bt * c)?,
            ln2_mean: f(l * bt)?,
            ln2_rstd: f(l * bt)?,
            fch: a(l * bt * 4 * c)?,
            fch_gelu: a(l * bt * 4 * c)?,
            residual3: a(l * bt * c)?,
            lnf: a(bt * c)?,
            lnf_mean: f(bt)?,
            lnf_rstd: f(bt)?,
            proj_out: a(bt * c)?,
        };
        let act_grads = ActGrads {
            dresidual: a(bt * c)?,
            dbtc: a(bt * c)?,
            dqkv: a(bt * 3 * c)?,
            dfch_gelu: a(bt * 4 * c)?,
            dfch: a(bt * 4 * c)?,
            att_scratch: f(backend.attention_scratch_len(att))?,
        };
        Ok(Self {
            config,
            state,
            acts,
            act_grads,
            att_state_len,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
}

impl<B: Backend> LanguageModel<B> for Gpt<B> {
    fn state(&self) -> &ModelState<B> {
        &self.state
    }
    fn state_mut(&mut self) -> &mut ModelState<B> {
        &mut self.state
    }
    fn flops_per_token(&self) -> f64 {
        let full = self.config.flops_per_token(self.state.seq_len);
        if !self.state.placement.has_base() {
            return full;
        }
        // A frozen base has no weight gradients (a third of the matmul FLOPs), plus the six
        // of whatever trains.
        let c = self.config.width as f64;
        let attention = 12.0 * self.config.layers as f64 * c * self.state.seq_len as f64;
        (full - attention) * 4.0 / 6.0 + attention + 6.0 * self.state.layout.total as f64
    }
    fn max_seq_len(&self) -> usize {
        self.config.context
    }

    // === forward ===

    /// Runs the network up to the logits (B, T, Vp).
    fn forward_network(&mut self, inputs: &[u32]) -> Result<(), ModelError> {
        self.state.upload_inputs(inputs)?;
        let cfg = self.config;
        let st = &mut self.state;
        let (b, t, c, l, nh) = (st.batch, st.seq_len, cfg.width, cfg.layers, cfg.heads);
        let (vp, bt) = (cfg.padded_vocab, b * t);
        let be = &st.backend;
        let w = Weights {
            trainable: &st.params,
            base: st.base.as_ref(),
            placement: &st.placement,
        };
        let lora = &mut st.lora;
        let acts = &mut self.acts;
        let att = AttentionShape {
            batch: b,
            seq_len: t,
            channels: c,
            heads: nh,
        };
        let per = |i: usize, n: usize| i * n..(i + 1) * n;
        use tensor::*;

        be.encoder_forward(
            be.view_mut(&mut acts.encoded, 0..bt * c)?,
            &st.inputs,
            w.view(be, WTE, None)?,
            w.view(be, WPE, None)?,
            b,
            t,
            c,
        )?;
        for layer in 0..l {
            let residual = if layer == 0 {
                be.view(&acts.encoded, 0..bt * c)?
            } else {
                be.view(&acts.residual3, per(layer - 1, bt * c))?
            };
            // attention sub-block: residual2 = residual + attproj(attention(qkv(ln1(residual))))
            be.layernorm_forward(
                be.view_mut(&mut acts.ln1, per(layer, bt * c))?,
                be.view_mut(&mut acts.ln1_mean, per(layer, bt))?,
                be.view_mut(&mut acts.ln1_rstd, per(layer, bt))?,
                residual,
                w.view(be, LN1W, Some(layer))?,
                w.view(be, LN1B, Some(layer))?,
                bt,
                c,
            )?;
            w.projection(QKVW, Some(QKVB), Some(layer), 3 * c, c, bt)
                .forward(
                    be,
                    &w,
                    lora.as_mut(),
                    &mut acts.qkv,
                    per(layer, bt * 3 * c),
                    be.view(&acts.ln1, per(layer, bt * c))?,
                )?;
            be.attention_forward(
                be.view_mut(&mut acts.atty, per(layer, bt * c))?,
                be.view_mut(&mut acts.att_state, per(layer, self.att_state_len))?,
                be.view(&acts.qkv, per(layer, bt * 3 * c))?,
                att,
            )?;
            w.projection(ATTPROJW, Some(ATTPROJB), Some(layer), c, c, bt)
                .forward(
                    be,
                    &w,
                    lora.as_mut(),
                    &mut acts.proj_out,
                    0..bt * c,
                    be.view(&acts.atty, per(layer, bt * c))?,
                )?;
            be.residual_forward(
                be.view_mut(&mut acts.residual2, per(layer, bt * c))?,
                residual,
                be.view(&acts.proj_out, 0..bt * c)?,
            )?;
            // MLP sub-block: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
            be.layernorm_forward(
                be.view_mut(&mut acts.ln2, per(layer, bt * c))?,
                be.view_mut(&mut acts.ln2_mean, per(layer, bt))?,
                be.view_mut(&mut acts.ln2_rstd, per(layer, bt))?,
                be.view(&acts.residual2, per(layer, bt * c))?,
                w.view(be, LN2W, Some(layer))?,
                w.view(be, LN2B, Some(layer))?,
                bt,
                c,
            )?;
            w.projection(FCW, Some(FCB), Some(layer), 4 * c, c, bt)
                .forward(
                    be,
                    &w,
                    lora.as_mut(),
                    &mut acts.fch,
                    per(layer, bt * 4 * c),
                    be.view(&acts.ln2, per(layer, bt * c))?,
                )?;
            be.gelu_forward(
                be.view_mut(&mut acts.fch_gelu, per(layer, bt * 4 * c))?,
                be.view(&acts.fch, per(layer, bt * 4 * c))?,
            )?;
            w.projection(FCPROJW, Some(FCPROJB), Some(layer), c, 4 * c, bt)
                .forward(
                    be,
                    &w,
                    lora.as_mut(),
                    &mut acts.proj_out,
                    0..bt * c,
                    be.view(&acts.fch_gelu, per(layer, bt * 4 * c))?,
                )?;
            be.residual_forward(
                be.view_mut(&mut acts.residual3, per(layer, bt * c))?,
                be.view(&acts.residual2, per(layer, bt * c))?,
                be.view(&acts.proj_out, 0..bt * c)?,
            )?;
        }
        be.layernorm_forward(
            be.view_mut(&mut acts.lnf, 0..bt * c)?,
            be.view_mut(&mut acts.lnf_mean, 0..bt)?,
            be.view_mut(&mut acts.lnf_rstd, 0..bt)?,
            be.view(&acts.residual3, per(l - 1, bt * c))?,
            w.view(be, LNFW, None)?,
            w.view(be, LNFB, None)?,
            bt,
            c,
        )?;
        // Tied output head: logits = lnf · wteᵀ over all Vp rows.
        w.projection(WTE, None, None, vp, c, bt).forward(
            be,
            &w,
            lora.as_mut(),
            &mut st.logits,
            0..bt * vp,
            be.view(&acts.lnf, 0..bt * c)?,
        )?;
        Ok(())
    }

    // === backward ===

    /// The backward pass, calling `ready(backend, grads, ranges)` as soon as the gradients of
    /// `ranges` of the flat space are final for this backward: each layer's slices of the 12
    /// per-layer tensors as the layer finishes (last layer first), then wte, wpe, lnfw, lnfb
    /// at the end (the tied wte collects its last contribution there). Data parallelism starts
    /// reducing a bucket while the backward goes on.
    fn backward_network(&mut self, ready: &mut GradientReady<'_, B>) -> Result<(), ModelError> {
        let cfg = self.config;
        let st = &mut self.state;
        let (b, t, c, l, nh) = (st.batch, st.seq_len, cfg.width, cfg.layers, cfg.heads);
        let (vp, bt) = (cfg.padded_vocab, b * t);
        let be = &st.backend;
        let w = Weights {
            trainable: &st.params,
            base: st.base.as_ref(),
            placement: &st.placement,
        };
        let g = &mut st.grads;
        let lora = &mut st.lora;
        let acts = &self.acts;
        let d = &mut self.act_grads;
        let att = AttentionShape {
            batch: b,
            seq_len: t,
            channels: c,
            heads: nh,
        };
        let per = |i: usize, n: usize| i * n..(i + 1) * n;
        use tensor::*;

        // Output head (tied): dlnf = dlogits · wte, dwte += dlogitsᵀ · lnf.
        let dlogits = be.view(&st.logits, 0..bt * vp)?;
        w.projection(WTE, None, None, vp, c, bt).backward(
            be,
            &w,
            g,
            lora.as_mut(),
            &mut d.dbtc,
            0..bt * c,
            dlogits,
            be.view(&acts.lnf, 0..bt * c)?,
            false,
        )?;
        be.fill_zero(be.view_mut(&mut d.dresidual, 0..bt * c)?)?;
        let [dw, db] = w.grads2(be, g, lora.as_mut(), [LNFW, LNFB], None)?;
        be.layernorm_backward(
            be.view_mut(&mut d.dresidual, 0..bt * c)?,
            dw,
            db,
            be.view(&d.dbtc, 0..bt * c)?,
            be.view(&acts.residual3, per(l - 1, bt * c))?,
            w.view(be, LNFW, None)?,
            be.view(&acts.lnf_mean, 0..bt)?,
            be.view(&acts.lnf_rstd, 0..bt)?,
            bt,
            c,
        )?;
        for layer in (0..l).rev() {
            let residual = if layer == 0 {
                be.view(&acts.encoded, 0..bt * c)?
            } else {
                be.view(&acts.residual3, per(layer - 1, bt * c))?
            };
            // MLP sub-block; dresidual is the gradient of residual3 = of fcproj's output.
            w.projection(FCPROJW, Some(FCPROJB), Some(layer), c, 4 * c, bt)
                .backward(
                    be,
                    &w,
                    g,
                    lora.as_mut(),
                    &mut d.dfch_gelu,
                    0..bt * 4 * c,
                    be.view(&d.dresidual, 0..bt * c)?,
                    be.view(&acts.fch_gelu, per(layer, bt * 4 * c))?,
                    false,
                )?;
            be.gelu_backward(
                be.view_mut(&mut d.dfch, 0..bt * 4 * c)?,
                be.view(&acts.fch, per(layer, bt * 4 * c))?,
                be.view(&d.dfch_gelu, 0..bt * 4 * c)?,
            )?;
            w.projection(FCW, Some(FCB), Some(layer), 4 * c, c, bt)
                .backward(
                    be,
                    &w,
                    g,
                    lora.as_mut(),
                    &mut d.dbtc,
                    0..bt * c,
                    be.view(&d.dfch, 0..bt * 4 * c)?,
                    be.view(&acts.ln2, per(layer, bt * c))?,
                    false,
                )?;
            let [dw, db] = w.grads2(be, g, lora.as_mut(), [LN2W, LN2B], Some(layer))?;
            be.layernorm_backward(
                be.view_mut(&mut d.dresidual, 0..bt * c)?,
                dw,
                db,
                be.view(&d.dbtc, 0..bt * c)?,
                be.view(&acts.residual2, per(layer, bt * c))?,
                w.view(be, LN2W, Some(layer))?,
                be.view(&acts.ln2_mean, per(layer, bt))?,
                be.view(&acts.ln2_rstd, per(layer, bt))?,
                bt,
                c,
            )?;
            // Attention sub-block; dresidual is now the gradient of residual2.
            w.projection(ATTPROJW, Some(ATTPROJB), Some(layer), c, c, bt)
                .backward(
                    be,
                    &w,
                    g,
                    lora.as_mut(),
                    &mut d.dbtc,
                    0..bt * c,
                    be.view(&d.dresidual, 0..bt * c)?,
                    be.view(&acts.atty, per(layer, bt * c))?,
                    false,
                )?;
            be.attention_backward(
                be.view_mut(&mut d.dqkv, 0..bt * 3 * c)?,
                be.view_mut(&mut d.att_scratch, 0..be.attention_scratch_len(att))?,
                be.view(&d.dbtc, 0..bt * c)?,
                be.view(&acts.qkv, per(layer, bt * 3 * c))?,
                be.view(&acts.atty, per(layer, bt * c))?,
                be.view(&acts.att_state, per(layer, self.att_state_len))?,
                att,
            )?;
            w.projection(QKVW, Some(QKVB), Some(layer), 3 * c, c, bt)
                .backward(
                    be,
                    &w,
                    g,
                    lora.as_mut(),
                    &mut d.dbtc,
                    0..bt * c,
                    be.view(&d.dqkv, 0..bt * 3 * c)?,
                    be.view(&acts.ln1, per(layer, bt * c))?,
                    false,
                )?;
            let [dw, db] = w.grads2(be, g, lora.as_mut(), [LN1W, LN1B], Some(layer))?;
            be.layernorm_backward(
                be.view_mut(&mut d.dresidual, 0..bt * c)?,
                dw,
                db,
                be.view(&d.dbtc, 0..bt * c)?,
                residual,
                w.view(be, LN1W, Some(layer))?,
                be.view(&acts.ln1_mean, per(layer, bt))?,
                be.view(&acts.ln1_rstd, per(layer, bt))?,
                bt,
                c,
            )?;
            let layer_ids: Vec<usize> = (LN1W..=FCPROJB).collect();
            let layer_ranges = w.placement.trainable_ranges(&layer_ids, Some(layer));
            ready(be, g, &layer_ranges)?;
        }
        if w.placement.trains(WTE) {
            let [dwte, dwpe] = w.grads2(be, g, lora.as_mut(), [WTE, WPE], None)?;
            be.encoder_backward(
                dwte,
                dwpe,
                be.view(&d.dresidual, 0..bt * c)?,
                &st.inputs,
                b,
                t,
                c,
            )?;
        }
        let last = w.placement.trainable_ranges(&[WTE, WPE, LNFW, LNFB], None);
        ready(be, g, &last)?;
        Ok(())
    }
}

/// Which weights train: all of them, or LoRA's adapters on the frozen rest (c_proj is both
/// the attention's and the MLP's output projection, as in PEFT).
pub fn placement(config: &ModelConfig, lora: Option<&LoraSpec>) -> Result<Placement, LoraError> {
    use tensor::*;
    use tessera_api::spec::LoraTarget::*;
    let layout = ParamLayout::new(config);
    match lora {
        None => Ok(Placement::full(layout)),
        Some(spec) => Placement::lora(
            layout,
            spec,
            &[
                (CAttn, vec![QKVW]),
                (CProj, vec![ATTPROJW, FCPROJW]),
                (CFc, vec![FCW]),
            ],
            &spec.targets_for(tessera_api::spec::Architecture::Gpt2),
            None,
        ),
    }
}

// === initialisation ===

/// GPT-2 initialisation on the host, tensor by tensor in layout order: matmul weights and
/// embeddings ~ N(0, 0.02) (residual projections N(0, 0.02/√(2L))), biases 0, LayerNorm
/// weights 1. Padded embedding rows (V..Vp) stay 0: no token selects them and their logits are
/// ignored, so they never change.
pub fn init_params(cfg: &ModelConfig, layout: &ParamLayout, rng: &mut Rng) -> Vec<f32> {
    let mut out = vec![0.0f32; layout.total];
    let residual_std = 0.02 / (2.0 * cfg.layers as f64).sqrt();
    for t in &layout.tensors {
        let dst = &mut out[t.range()];
        match t.kind {
            ParamKind::MatmulBias | ParamKind::LayerNormBias => {}
            ParamKind::LayerNormWeight => dst.fill(1.0),
            ParamKind::Embedding | ParamKind::MatmulWeight => {
                let std = if t.residual_projection {
                    residual_std
                } else {
                    0.02
                };
                let live = if t.name == "wte" {
                    cfg.vocab * cfg.width
                } else {
                    t.len
                };
                for x in &mut dst[..live] {
                    *x = (rng.normal() * std) as f32;
                }
            }
        }
    }
    out
}
