//! The Llama family (llama, mistral, qwen2) written once against [`Backend`]: the flat
//! parameter layout, its mapping to Hugging Face tensor names, initialisation, activation
//! memory for a fixed (B, T), forward and backward. The same steps as [`super::reference`],
//! which checks it, on the backend's kernels.
//!
//! ```text
//! tokens ─▶ embed[tok] ─▶ L × [ x += o(gqa(rope(q(n1)), rope(k(n1)), v(n1))) with n1 = rmsnorm1(x) ;
//!                               x += down(silu(gate(n2)) ∘ up(n2))           with n2 = rmsnorm2(x) ]
//!        ─▶ rmsnorm ─▶ logits = · headᵀ (head = embed when tied) ─▶ softmax cross-entropy
//! ```
//!
//! Flat layout, per-layer families stacked over L (Linear weights (out, in), as Hugging Face
//! stores them): `embed_tokens` (V, C), `input_layernorm` (L, C), `q_proj` (L, H·D, C),
//! [`q_proj.bias` (L, H·D)], `k_proj` (L, KV·D, C), [`k_proj.bias`], `v_proj`, [`v_proj.bias`],
//! `o_proj` (L, C, H·D), [`o_proj.bias` (L, C)], `post_attention_layernorm` (L, C), `gate_proj`
//! (L, F, C), `up_proj` (L, F, C), `down_proj` (L, C, F), `norm` (C), [`lm_head` (V, C)].
//! Bracketed tensors exist as the config says (biases: `attention_bias` and the model type;
//! the head: untied).

use tessera_api::spec::{Architecture, LoraSpec, LoraTarget};

use crate::backend::{Backend, GqaShape, RopeShape};
use crate::lm::{LanguageModel, ModelState, per};
use crate::lora::{LoraActs, LoraError, Placement, Weights};
use crate::model::{GradientReady, ModelError, ParamKind, ParamLayout};
use crate::rng::Rng;

use super::config::LlamaConfig;
use super::rope::{RopeTable, inv_freq};
use super::weights::{LayerParam, LlamaWeights, Param, Tensor};

/// Where a layout tensor's values live among the Hugging Face tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfSource {
    /// One Hugging Face tensor.
    Whole(Param),
    /// Layer `i`'s slice is `model.layers.{i}.<leaf>`.
    Stacked(LayerParam),
}

/// Indices into [`ParamLayout::tensors`] for the Llama family; optional tensors are `None`
/// where the config has none.
#[derive(Debug, Clone, Copy)]
struct Ids {
    embed: usize,
    in_norm: usize,
    q: usize,
    q_bias: Option<usize>,
    k: usize,
    k_bias: Option<usize>,
    v: usize,
    v_bias: Option<usize>,
    o: usize,
    o_bias: Option<usize>,
    post_norm: usize,
    gate: usize,
    up: usize,
    down: usize,
    norm: usize,
    head: Option<usize>,
}

/// The layout for `config`, each tensor with its Hugging Face source.
pub fn layout(config: &LlamaConfig) -> (ParamLayout, Vec<HfSource>) {
    let (layout, sources, _) = layout_ids(config);
    (layout, sources)
}

fn layout_ids(config: &LlamaConfig) -> (ParamLayout, Vec<HfSource>, Ids) {
    use LayerParam::*;
    use ParamKind::*;
    let c = config;
    let (l, h, f, v) = (
        c.num_layers,
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size,
    );
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let (qkv_bias, o_bias) = (c.attention_bias.qkv(), c.attention_bias.o());
    let mut specs = Vec::new();
    let mut sources = Vec::new();
    let mut push = |name: &'static str, shape: Vec<usize>, kind: ParamKind, src: HfSource| {
        specs.push((name, shape, kind, false));
        sources.push(src);
        specs.len() - 1
    };
    let stacked = HfSource::Stacked;
    let embed = push(
        "embed_tokens",
        vec![v, h],
        Embedding,
        HfSource::Whole(Param::Embed),
    );
    let in_norm = push(
        "input_layernorm",
        vec![l, h],
        LayerNormWeight,
        stacked(InputNorm),
    );
    let q_id = push("q_proj", vec![l, q, h], MatmulWeight, stacked(QProj));
    let q_bias = qkv_bias.then(|| push("q_proj.bias", vec![l, q], MatmulBias, stacked(QBias)));
    let k_id = push("k_proj", vec![l, kv, h], MatmulWeight, stacked(KProj));
    let k_bias = qkv_bias.then(|| push("k_proj.bias", vec![l, kv], MatmulBias, stacked(KBias)));
    let v_id = push("v_proj", vec![l, kv, h], MatmulWeight, stacked(VProj));
    let v_bias = qkv_bias.then(|| push("v_proj.bias", vec![l, kv], MatmulBias, stacked(VBias)));
    let o_id = push("o_proj", vec![l, h, q], MatmulWeight, stacked(OProj));
    let o_bias = o_bias.then(|| push("o_proj.bias", vec![l, h], MatmulBias, stacked(OBias)));
    let post_norm = push(
        "post_attention_layernorm",
        vec![l, h],
        LayerNormWeight,
        stacked(PostNorm),
    );
    let gate = push("gate_proj", vec![l, f, h], MatmulWeight, stacked(GateProj));
    let up = push("up_proj", vec![l, f, h], MatmulWeight, stacked(UpProj));
    let down = push("down_proj", vec![l, h, f], MatmulWeight, stacked(DownProj));
    let norm = push(
        "norm",
        vec![h],
        LayerNormWeight,
        HfSource::Whole(Param::Norm),
    );
    let head = (!c.tie_word_embeddings).then(|| {
        push(
            "lm_head",
            vec![v, h],
            MatmulWeight,
            HfSource::Whole(Param::LmHead),
        )
    });
    let ids = Ids {
        embed,
        in_norm,
        q: q_id,
        q_bias,
        k: k_id,
        k_bias,
        v: v_id,
        v_bias,
        o: o_id,
        o_bias,
        post_norm,
        gate,
        up,
        down,
        norm,
        head,
    };
    (ParamLayout::from_specs(specs, l), sources, ids)
}

/// The flat parameters from Hugging Face weights (checked against `config` when read).
pub fn flat_from_weights(config: &LlamaConfig, weights: &LlamaWeights) -> Vec<f32> {
    let (layout, sources) = layout(config);
    let mut flat = vec![0.0f32; layout.total];
    for (id, (tensor, source)) in layout.tensors.iter().zip(&sources).enumerate() {
        match *source {
            HfSource::Whole(p) => {
                if let Some(t) = weights.get(p) {
                    flat[tensor.range()].copy_from_slice(&t.values);
                }
            }
            HfSource::Stacked(lp) => {
                for i in 0..config.num_layers {
                    if let Some(t) = weights.get(Param::Layer(i, lp)) {
                        flat[layout.layer(id, i)].copy_from_slice(&t.values);
                    }
                }
            }
        }
    }
    flat
}

/// Hugging Face tensors (name → tensor) from the flat parameters.
pub fn weights_from_flat(
    config: &LlamaConfig,
    flat: &[f32],
) -> std::collections::BTreeMap<String, Tensor> {
    let (layout, sources) = layout(config);
    let mut out = std::collections::BTreeMap::new();
    for (id, (tensor, source)) in layout.tensors.iter().zip(&sources).enumerate() {
        match *source {
            HfSource::Whole(p) => {
                out.insert(
                    p.hf_name(),
                    Tensor {
                        shape: p.shape(config),
                        values: flat[tensor.range()].to_vec(),
                    },
                );
            }
            HfSource::Stacked(lp) => {
                for i in 0..config.num_layers {
                    let p = Param::Layer(i, lp);
                    out.insert(
                        p.hf_name(),
                        Tensor {
                            shape: p.shape(config),
                            values: flat[layout.layer(id, i)].to_vec(),
                        },
                    );
                }
            }
        }
    }
    out
}

/// Which weights train: all of them, or LoRA's adapters on the frozen rest.
pub fn placement(config: &LlamaConfig, lora: Option<&LoraSpec>) -> Result<Placement, LoraError> {
    let (layout, _, ids) = layout_ids(config);
    match lora {
        None => Ok(Placement::full(layout)),
        Some(spec) => Placement::lora(
            layout,
            spec,
            &lora_projections(&ids),
            &spec.targets_for(Architecture::Llama),
            ids.head,
        ),
    }
}

/// The projections LoRA may adapt, by their Hugging Face names.
fn lora_projections(ids: &Ids) -> Vec<(LoraTarget, Vec<usize>)> {
    use LoraTarget::*;
    vec![
        (QProj, vec![ids.q]),
        (KProj, vec![ids.k]),
        (VProj, vec![ids.v]),
        (OProj, vec![ids.o]),
        (GateProj, vec![ids.gate]),
        (UpProj, vec![ids.up]),
        (DownProj, vec![ids.down]),
    ]
}

/// Initialisation from scratch as `transformers` does it for the family: every matrix and
/// the embedding ~ N(0, 0.02), biases 0, RMSNorm weights 1.
pub fn init_params(layout: &ParamLayout, rng: &mut Rng) -> Vec<f32> {
    let mut out = vec![0.0f32; layout.total];
    for t in &layout.tensors {
        let dst = &mut out[t.range()];
        match t.kind {
            ParamKind::MatmulBias | ParamKind::LayerNormBias => {}
            ParamKind::LayerNormWeight => dst.fill(1.0),
            ParamKind::Embedding | ParamKind::MatmulWeight => {
                for x in dst {
                    *x = (rng.normal() * 0.02) as f32;
                }
            }
        }
    }
    out
}

/// Forward activations for one (B, T), allocated once; per-layer ones stacked over L.
struct Activations<B: Backend> {
    encoded: B::Buf,   // (B·T, C)
    ln1: B::Buf,       // (L, B·T, C)
    rstd1: B::Buf,     // (L, B·T)
    q: B::Buf,         // (L, B·T, H·D) after RoPE
    k: B::Buf,         // (L, B·T, KV·D) after RoPE
    v: B::Buf,         // (L, B·T, KV·D)
    att: B::Buf,       // (L, B·T, H·D)
    att_state: B::Buf, // (L, gqa_state_len)
    res1: B::Buf,      // (L, B·T, C) after the attention sub-block
    ln2: B::Buf,       // (L, B·T, C)
    rstd2: B::Buf,     // (L, B·T)
    gate: B::Buf,      // (L, B·T, F)
    up: B::Buf,        // (L, B·T, F)
    act: B::Buf,       // (L, B·T, F) silu(gate) ∘ up
    res2: B::Buf,      // (L, B·T, C) after the MLP sub-block
    lnf: B::Buf,       // (B·T, C)
    rstdf: B::Buf,     // (B·T)
    proj_out: B::Buf,  // (B·T, C) scratch: a projection's output before the residual add
    cos: B::Buf,       // (T, D/2) fp32
    sin: B::Buf,       // (T, D/2) fp32
}

/// Activation gradients, reused by every layer.
struct ActGrads<B: Backend> {
    dresidual: B::Buf, // (B·T, C)
    dbtc: B::Buf,      // (B·T, C) scratch
    dq: B::Buf,        // (B·T, H·D)
    dk: B::Buf,        // (B·T, KV·D)
    dv: B::Buf,        // (B·T, KV·D)
    datt: B::Buf,      // (B·T, H·D)
    dact: B::Buf,      // (B·T, F)
    dgate: B::Buf,     // (B·T, F)
    dup: B::Buf,       // (B·T, F)
}

/// A Llama-family model on backend `B`, with activation memory for batches of
/// (batch, seq_len).
pub struct Llama<B: Backend> {
    config: LlamaConfig,
    ids: Ids,
    state: ModelState<B>,
    acts: Activations<B>,
    grads: ActGrads<B>,
    gqa: GqaShape,
    state_len: usize,
    /// Entries of each RoPE table (T · D/2).
    rope_len: usize,
}

impl<B: Backend> Llama<B> {
    /// Builds the model for `config`, initialised from `seed` as [`init_params`] does (load
    /// weights afterwards with [`LanguageModel::load_params_from_host`] and
    /// [`flat_from_weights`]), with activations for batches of `batch` × `seq_len`.
    pub fn new(
        backend: B,
        config: LlamaConfig,
        batch: usize,
        seq_len: usize,
        seed: u64,
    ) -> Result<Self, ModelError> {
        Self::with_lora(backend, config, None, batch, seq_len, seed)
    }

    /// [`Llama::new`], training LoRA adapters on a frozen base when `lora` is given (load
    /// the base with [`LanguageModel::load_weights`]).
    pub fn with_lora(
        backend: B,
        config: LlamaConfig,
        lora: Option<&LoraSpec>,
        batch: usize,
        seq_len: usize,
        seed: u64,
    ) -> Result<Self, ModelError> {
        if seq_len > config.max_position_embeddings {
            return Err(ModelError::SeqLenTooLong {
                seq_len,
                context: config.max_position_embeddings,
            });
        }
        if let Some(window) = config.sliding_window.filter(|&w| seq_len > w) {
            return Err(ModelError::BeyondSlidingWindow { seq_len, window });
        }
        let (_, _, ids) = layout_ids(&config);
        let placement = placement(&config, lora)?;
        let mut rng = Rng::new(seed);
        let host = init_params(&placement.family, &mut rng);
        let trainable = match placement.has_base() {
            true => placement.initial_trainable(&host, &mut rng),
            false => host.clone(),
        };
        let mut state = ModelState::new(
            backend,
            placement,
            batch,
            seq_len,
            config.vocab_size,
            config.vocab_size,
            rng.state(),
        )?;
        state.backend.upload(&mut state.params, 0, &trainable)?;
        if let Some(base) = state.base.as_mut() {
            state.backend.upload(base, 0, &host)?;
        }
        state.lora = LoraActs::new(
            &state.backend,
            &state.placement,
            batch,
            seq_len,
            config.hidden_size,
        )?;
        let be = &state.backend;
        let c = &config;
        let (l, h, f, bt) = (
            c.num_layers,
            c.hidden_size,
            c.intermediate_size,
            batch * seq_len,
        );
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let gqa = GqaShape {
            batch,
            seq_len,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        let state_len = be.gqa_state_len(gqa);
        let table = RopeTable::<f32>::new(&inv_freq(&c.rope, c.head_dim), seq_len);
        let a = |len: usize| be.alloc(len);
        let f32s = |len: usize| be.alloc_f32(len);
        let mut cos = f32s(table.cos().len())?;
        let mut sin = f32s(table.sin().len())?;
        be.upload(&mut cos, 0, table.cos())?;
        be.upload(&mut sin, 0, table.sin())?;
        let acts = Activations {
            encoded: a(bt * h)?,
            ln1: a(l * bt * h)?,
            rstd1: f32s(l * bt)?,
            q: a(l * bt * q)?,
            k: a(l * bt * kv)?,
            v: a(l * bt * kv)?,
            att: a(l * bt * q)?,
            att_state: f32s(l * state_len)?,
            res1: a(l * bt * h)?,
            ln2: a(l * bt * h)?,
            rstd2: f32s(l * bt)?,
            gate: a(l * bt * f)?,
            up: a(l * bt * f)?,
            act: a(l * bt * f)?,
            res2: a(l * bt * h)?,
            lnf: a(bt * h)?,
            rstdf: f32s(bt)?,
            proj_out: a(bt * h)?,
            cos,
            sin,
        };
        let grads = ActGrads {
            dresidual: a(bt * h)?,
            dbtc: a(bt * h)?,
            dq: a(bt * q)?,
            dk: a(bt * kv)?,
            dv: a(bt * kv)?,
            datt: a(bt * q)?,
            dact: a(bt * f)?,
            dgate: a(bt * f)?,
            dup: a(bt * f)?,
        };
        Ok(Llama {
            config,
            ids,
            state,
            acts,
            grads,
            gqa,
            state_len,
            rope_len: table.cos().len(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The output head: `lm_head`, or the embedding when tied.
    fn head(&self) -> usize {
        self.ids.head.unwrap_or(self.ids.embed)
    }
}

impl<B: Backend> LanguageModel<B> for Llama<B> {
    fn state(&self) -> &ModelState<B> {
        &self.state
    }
    fn state_mut(&mut self) -> &mut ModelState<B> {
        &mut self.state
    }

    fn flops_per_token(&self) -> f64 {
        let c = &self.config;
        let (l, h, f, v) = (
            c.num_layers,
            c.hidden_size,
            c.intermediate_size,
            c.vocab_size,
        );
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let matmul_params = l * (2 * h * q + 2 * h * kv + 3 * h * f) + v * h;
        let attention = 12.0 * (l * q * self.state.seq_len) as f64;
        if self.state.placement.has_base() {
            // A frozen base has no weight gradients: forward and input gradient only, plus
            // the adapters' (and whatever else trains) full six.
            4.0 * matmul_params as f64 + 6.0 * self.state.layout.total as f64 + attention
        } else {
            6.0 * matmul_params as f64 + attention
        }
    }

    fn max_seq_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn forward_network(&mut self, inputs: &[u32]) -> Result<(), ModelError> {
        self.state.upload_inputs(inputs)?;
        let head = self.head();
        let c = &self.config;
        let ids = self.ids;
        let st = &mut self.state;
        let (b, t) = (st.batch, st.seq_len);
        let (l, h, f, v, bt) = (
            c.num_layers,
            c.hidden_size,
            c.intermediate_size,
            c.vocab_size,
            b * t,
        );
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let eps = c.rms_norm_eps;
        let be = &st.backend;
        let w = Weights {
            trainable: &st.params,
            base: st.base.as_ref(),
            placement: &st.placement,
        };
        let lora = &mut st.lora;
        let acts = &mut self.acts;
        let rope_shape = |heads: usize| RopeShape {
            batch: b,
            seq_len: t,
            heads,
            head_dim: c.head_dim,
        };

        be.embedding_forward(
            be.view_mut(&mut acts.encoded, 0..bt * h)?,
            &st.inputs,
            w.view(be, ids.embed, None)?,
            bt,
            h,
        )?;
        for layer in 0..l {
            let residual = if layer == 0 {
                be.view(&acts.encoded, 0..bt * h)?
            } else {
                be.view(&acts.res2, per(layer - 1, bt * h))?
            };
            // attention sub-block: res1 = residual + o(gqa(rope(q), rope(k), v)) of rmsnorm1
            be.rmsnorm_forward(
                be.view_mut(&mut acts.ln1, per(layer, bt * h))?,
                be.view_mut(&mut acts.rstd1, per(layer, bt))?,
                residual,
                w.view(be, ids.in_norm, Some(layer))?,
                bt,
                h,
                eps,
            )?;
            let ln1 = be.view(&acts.ln1, per(layer, bt * h))?;
            for (out, wid, bias_id, n) in [
                (&mut acts.q, ids.q, ids.q_bias, q),
                (&mut acts.k, ids.k, ids.k_bias, kv),
                (&mut acts.v, ids.v, ids.v_bias, kv),
            ] {
                w.projection(wid, bias_id, Some(layer), n, h, bt).forward(
                    be,
                    &w,
                    lora.as_mut(),
                    out,
                    per(layer, bt * n),
                    ln1,
                )?;
            }
            let (cos, sin) = (
                be.view(&acts.cos, 0..self.rope_len)?,
                be.view(&acts.sin, 0..self.rope_len)?,
            );
            be.rope(
                be.view_mut(&mut acts.q, per(layer, bt * q))?,
                cos,
                sin,
                rope_shape(c.num_heads),
                false,
            )?;
            be.rope(
                be.view_mut(&mut acts.k, per(layer, bt * kv))?,
                cos,
                sin,
                rope_shape(c.num_kv_heads),
                false,
            )?;
            be.gqa_attention_forward(
                be.view_mut(&mut acts.att, per(layer, bt * q))?,
                be.view_mut(&mut acts.att_state, per(layer, self.state_len))?,
                be.view(&acts.q, per(layer, bt * q))?,
                be.view(&acts.k, per(layer, bt * kv))?,
                be.view(&acts.v, per(layer, bt * kv))?,
                self.gqa,
            )?;
            w.projection(ids.o, ids.o_bias, Some(layer), h, q, bt)
                .forward(
                    be,
                    &w,
                    lora.as_mut(),
                    &mut acts.proj_out,
                    0..bt * h,
                    be.view(&acts.att, per(layer, bt * q))?,
                )?;
            be.residual_forward(
                be.view_mut(&mut acts.res1, per(layer, bt * h))?,
                residual,
                be.view(&acts.proj_out, 0..bt * h)?,
            )?;
            // MLP sub-block: res2 = res1 + down(silu(gate(n2)) ∘ up(n2)), n2 = rmsnorm2(res1)
            be.rmsnorm_forward(
                be.view_mut(&mut acts.ln2, per(layer, bt * h))?,
                be.view_mut(&mut acts.rstd2, per(layer, bt))?,
                be.view(&acts.res1, per(layer, bt * h))?,
                w.view(be, ids.post_norm, Some(layer))?,
                bt,
                h,
                eps,
            )?;
            let ln2 = be.view(&acts.ln2, per(layer, bt * h))?;
            for (out, wid) in [(&mut acts.gate, ids.gate), (&mut acts.up, ids.up)] {
                w.projection(wid, None, Some(layer), f, h, bt).forward(
                    be,
                    &w,
                    lora.as_mut(),
                    out,
                    per(layer, bt * f),
                    ln2,
                )?;
            }
            be.swiglu_forward(
                be.view_mut(&mut acts.act, per(layer, bt * f))?,
                be.view(&acts.gate, per(layer, bt * f))?,
                be.view(&acts.up, per(layer, bt * f))?,
            )?;
            w.projection(ids.down, None, Some(layer), h, f, bt)
                .forward(
                    be,
                    &w,
                    lora.as_mut(),
                    &mut acts.proj_out,
                    0..bt * h,
                    be.view(&acts.act, per(layer, bt * f))?,
                )?;
            be.residual_forward(
                be.view_mut(&mut acts.res2, per(layer, bt * h))?,
                be.view(&acts.res1, per(layer, bt * h))?,
                be.view(&acts.proj_out, 0..bt * h)?,
            )?;
        }
        be.rmsnorm_forward(
            be.view_mut(&mut acts.lnf, 0..bt * h)?,
            be.view_mut(&mut acts.rstdf, 0..bt)?,
            be.view(&acts.res2, per(l - 1, bt * h))?,
            w.view(be, ids.norm, None)?,
            bt,
            h,
            eps,
        )?;
        w.projection(head, None, None, v, h, bt).forward(
            be,
            &w,
            lora.as_mut(),
            &mut st.logits,
            0..bt * v,
            be.view(&acts.lnf, 0..bt * h)?,
        )?;
        Ok(())
    }

    /// Calls `ready` with each layer's trainable slices as the layer finishes (last layer
    /// first), then with the embedding, the final norm and the head (the tied embedding
    /// collects its last contribution there).
    fn backward_network(&mut self, ready: &mut GradientReady<'_, B>) -> Result<(), ModelError> {
        let head = self.head();
        let c = &self.config;
        let ids = self.ids;
        let st = &mut self.state;
        let (b, t) = (st.batch, st.seq_len);
        let (l, h, f, v, bt) = (
            c.num_layers,
            c.hidden_size,
            c.intermediate_size,
            c.vocab_size,
            b * t,
        );
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let be = &st.backend;
        let w = Weights {
            trainable: &st.params,
            base: st.base.as_ref(),
            placement: &st.placement,
        };
        let g = &mut st.grads;
        let lora = &mut st.lora;
        let acts = &self.acts;
        let d = &mut self.grads;
        let rope_shape = |heads: usize| RopeShape {
            batch: b,
            seq_len: t,
            heads,
            head_dim: c.head_dim,
        };
        let layer_ids: Vec<usize> = [
            Some(ids.in_norm),
            Some(ids.q),
            ids.q_bias,
            Some(ids.k),
            ids.k_bias,
            Some(ids.v),
            ids.v_bias,
            Some(ids.o),
            ids.o_bias,
            Some(ids.post_norm),
            Some(ids.gate),
            Some(ids.up),
            Some(ids.down),
        ]
        .into_iter()
        .flatten()
        .collect();

        // Output head: dlnf = dlogits · head, dhead += dlogitsᵀ · lnf.
        let dlogits = be.view(&st.logits, 0..bt * v)?;
        w.projection(head, None, None, v, h, bt).backward(
            be,
            &w,
            g,
            lora.as_mut(),
            &mut d.dbtc,
            0..bt * h,
            dlogits,
            be.view(&acts.lnf, 0..bt * h)?,
            false,
        )?;
        be.fill_zero(be.view_mut(&mut d.dresidual, 0..bt * h)?)?;
        be.rmsnorm_backward(
            be.view_mut(&mut d.dresidual, 0..bt * h)?,
            w.grad(be, g, lora.as_mut(), ids.norm, None)?,
            be.view(&d.dbtc, 0..bt * h)?,
            be.view(&acts.res2, per(l - 1, bt * h))?,
            w.view(be, ids.norm, None)?,
            be.view(&acts.rstdf, 0..bt)?,
            bt,
            h,
        )?;
        let cos_len = self.rope_len;
        for layer in (0..l).rev() {
            let residual = if layer == 0 {
                be.view(&acts.encoded, 0..bt * h)?
            } else {
                be.view(&acts.res2, per(layer - 1, bt * h))?
            };
            // MLP sub-block; dresidual is the gradient of res2 = of down's output.
            w.projection(ids.down, None, Some(layer), h, f, bt)
                .backward(
                    be,
                    &w,
                    g,
                    lora.as_mut(),
                    &mut d.dact,
                    0..bt * f,
                    be.view(&d.dresidual, 0..bt * h)?,
                    be.view(&acts.act, per(layer, bt * f))?,
                    false,
                )?;
            be.swiglu_backward(
                be.view_mut(&mut d.dgate, 0..bt * f)?,
                be.view_mut(&mut d.dup, 0..bt * f)?,
                be.view(&d.dact, 0..bt * f)?,
                be.view(&acts.gate, per(layer, bt * f))?,
                be.view(&acts.up, per(layer, bt * f))?,
            )?;
            let ln2 = be.view(&acts.ln2, per(layer, bt * h))?;
            for (i, (dout, wid)) in [(&d.dgate, ids.gate), (&d.dup, ids.up)]
                .into_iter()
                .enumerate()
            {
                w.projection(wid, None, Some(layer), f, h, bt).backward(
                    be,
                    &w,
                    g,
                    lora.as_mut(),
                    &mut d.dbtc,
                    0..bt * h,
                    be.view(dout, 0..bt * f)?,
                    ln2,
                    i > 0,
                )?;
            }
            be.rmsnorm_backward(
                be.view_mut(&mut d.dresidual, 0..bt * h)?,
                w.grad(be, g, lora.as_mut(), ids.post_norm, Some(layer))?,
                be.view(&d.dbtc, 0..bt * h)?,
                be.view(&acts.res1, per(layer, bt * h))?,
                w.view(be, ids.post_norm, Some(layer))?,
                be.view(&acts.rstd2, per(layer, bt))?,
                bt,
                h,
            )?;
            // Attention sub-block; dresidual is now the gradient of res1.
            w.projection(ids.o, ids.o_bias, Some(layer), h, q, bt)
                .backward(
                    be,
                    &w,
                    g,
                    lora.as_mut(),
                    &mut d.datt,
                    0..bt * q,
                    be.view(&d.dresidual, 0..bt * h)?,
                    be.view(&acts.att, per(layer, bt * q))?,
                    false,
                )?;
            be.gqa_attention_backward(
                be.view_mut(&mut d.dq, 0..bt * q)?,
                be.view_mut(&mut d.dk, 0..bt * kv)?,
                be.view_mut(&mut d.dv, 0..bt * kv)?,
                be.view(&d.datt, 0..bt * q)?,
                be.view(&acts.q, per(layer, bt * q))?,
                be.view(&acts.k, per(layer, bt * kv))?,
                be.view(&acts.v, per(layer, bt * kv))?,
                be.view(&acts.att, per(layer, bt * q))?,
                be.view(&acts.att_state, per(layer, self.state_len))?,
                self.gqa,
            )?;
            let (cos, sin) = (
                be.view(&acts.cos, 0..cos_len)?,
                be.view(&acts.sin, 0..cos_len)?,
            );
            be.rope(
                be.view_mut(&mut d.dq, 0..bt * q)?,
                cos,
                sin,
                rope_shape(c.num_heads),
                true,
            )?;
            be.rope(
                be.view_mut(&mut d.dk, 0..bt * kv)?,
                cos,
                sin,
                rope_shape(c.num_kv_heads),
                true,
            )?;
            let ln1 = be.view(&acts.ln1, per(layer, bt * h))?;
            for (i, (dout, wid, bias_id, n)) in [
                (&d.dq, ids.q, ids.q_bias, q),
                (&d.dk, ids.k, ids.k_bias, kv),
                (&d.dv, ids.v, ids.v_bias, kv),
            ]
            .into_iter()
            .enumerate()
            {
                w.projection(wid, bias_id, Some(layer), n, h, bt).backward(
                    be,
                    &w,
                    g,
                    lora.as_mut(),
                    &mut d.dbtc,
                    0..bt * h,
                    be.view(dout, 0..bt * n)?,
                    ln1,
                    i > 0,
                )?;
            }
            be.rmsnorm_backward(
                be.view_mut(&mut d.dresidual, 0..bt * h)?,
                w.grad(be, g, lora.as_mut(), ids.in_norm, Some(layer))?,
                be.view(&d.dbtc, 0..bt * h)?,
                residual,
                w.view(be, ids.in_norm, Some(layer))?,
                be.view(&acts.rstd1, per(layer, bt))?,
                bt,
                h,
            )?;
            let ranges = w.placement.trainable_ranges(&layer_ids, Some(layer));
            ready(be, g, &ranges)?;
        }
        if w.placement.trains(ids.embed) {
            be.embedding_backward(
                w.grad(be, g, lora.as_mut(), ids.embed, None)?,
                be.view(&d.dresidual, 0..bt * h)?,
                &st.inputs,
                bt,
                h,
            )?;
        }
        let last_ids: Vec<usize> = [Some(ids.embed), Some(ids.norm), ids.head]
            .into_iter()
            .flatten()
            .collect();
        let last = w.placement.trainable_ranges(&last_ids, None);
        ready(be, g, &last)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::llama::LlamaReference;
    use crate::llama::test_util::{Golden, fixture_dir};

    /// The model on the backend against the reference (itself matched against transformers)
    /// on a recorded fixture, both in f64: loss to 1e-12 relative, every gradient to 1e-9
    /// of its tensor's largest entry. Different summation orders are the only difference, so
    /// anything larger is a wrong term.
    fn matches_reference(name: &str) {
        let golden = Golden::load(name);
        let dir = fixture_dir(name);
        let reference = LlamaReference::<f64>::from_dir(&dir).unwrap();
        let config = reference.config().clone();
        let weights = LlamaWeights::read(&dir, &config).unwrap();
        let (b, t) = (golden.batch, golden.seq_len);
        let ids = golden.ids_u32();
        // The reference takes unshifted labels over T positions; the model predicts position
        // t + 1 from t over T - 1 positions: the same T - 1 predictions.
        let labels: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let (want_loss, want_grads) = reference.loss_and_grads(&ids, &labels, b, t).unwrap();
        let rows: Vec<&[u32]> = ids.chunks(t).collect();
        let inputs: Vec<u32> = rows.iter().flat_map(|r| &r[..t - 1]).copied().collect();
        let targets: Vec<u32> = rows.iter().flat_map(|r| &r[1..]).copied().collect();

        let mut model = Llama::new(CpuBackend::<f64>::new(), config.clone(), b, t - 1, 7).unwrap();
        model
            .load_params_from_host(&flat_from_weights(&config, &weights))
            .unwrap();
        model.zero_grad().unwrap();
        let loss = model.forward(&inputs, &targets).unwrap();
        model.backward().unwrap();
        assert!(
            (loss - want_loss).abs() <= 1e-12 * want_loss.abs(),
            "{name}: loss {loss} against the reference's {want_loss}"
        );
        // The f64 gradients themselves (grads_to_host rounds to f32).
        let exact = &model.state.grads;
        let named = weights_from_flat(&config, &vec![0.0; exact.len()]);
        assert_eq!(
            named.keys().collect::<Vec<_>>(),
            want_grads.keys().collect::<Vec<_>>(),
            "{name}: tensor names"
        );
        let (layout, sources) = layout(&config);
        for (id, (tensor, source)) in layout.tensors.iter().zip(&sources).enumerate() {
            let slices: Vec<(String, std::ops::Range<usize>)> = match *source {
                HfSource::Whole(p) => vec![(p.hf_name(), tensor.range())],
                HfSource::Stacked(lp) => (0..config.num_layers)
                    .map(|i| (Param::Layer(i, lp).hf_name(), layout.layer(id, i)))
                    .collect(),
            };
            for (hf, range) in slices {
                let want = &want_grads[&hf];
                let got = &exact[range];
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
                let diff = got
                    .iter()
                    .zip(want)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    diff <= 1e-9 * scale,
                    "{name}: gradient of {hf} differs by {diff} (largest entry {scale})"
                );
            }
        }
    }

    #[test]
    fn llama_gqa_on_the_backend_matches_the_reference() {
        matches_reference("llama-gqa");
    }

    #[test]
    fn qwen2_tied_on_the_backend_matches_the_reference() {
        matches_reference("qwen2-tied");
    }

    #[test]
    fn mistral_on_the_backend_matches_the_reference() {
        matches_reference("mistral");
    }

    #[test]
    fn weights_round_trip_through_the_flat_layout() {
        let dir = fixture_dir("qwen2-tied");
        let config = LlamaConfig::from_dir(&dir).unwrap();
        let weights = LlamaWeights::read(&dir, &config).unwrap();
        let flat = flat_from_weights(&config, &weights);
        let back = weights_from_flat(&config, &flat);
        assert_eq!(back, weights.clone().into_tensors());
    }

    #[test]
    fn a_sequence_beyond_the_window_or_the_context_is_refused() {
        let mut config = LlamaConfig::from_dir(&fixture_dir("mistral")).unwrap();
        config.sliding_window = Some(8);
        let err = Llama::new(CpuBackend::<f32>::new(), config.clone(), 1, 9, 0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("sliding window 8"), "{err}");
        config.sliding_window = None;
        let too_long = config.max_position_embeddings + 1;
        let err = Llama::new(CpuBackend::<f32>::new(), config, 1, too_long, 0)
            .err()
            .unwrap();
        assert!(matches!(err, ModelError::SeqLenTooLong { .. }), "{err}");
    }
}
