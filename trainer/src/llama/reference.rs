//! The whole Llama-family model on the reference kernels: [`LlamaReference`] holds the
//! weights (converted to `F`, f32 by default) and computes logits, the next-token loss and
//! every parameter's gradient under its Hugging Face name.
//!
//! ```text
//! x = embed[ids]
//! per layer:  h = rmsnorm(x)                 q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv)
//!             q, k = rope(q), rope(k)        x = x + attention(q, k, v)·Woᵀ (+bo)
//!             h = rmsnorm(x)                 x = x + (silu(h·Wgateᵀ) ∘ h·Wupᵀ)·Wdownᵀ
//! logits = rmsnorm(x)·Wheadᵀ                 (Whead = embed when tied)
//! ```
//! Backward runs the same steps in reverse with every intermediate kept from the forward
//! pass; a tied embedding collects the output head's gradient on top of its own, as
//! PyTorch's shared parameter does.
//!
//! `LlamaReference<f64>` computes everything in f64 except the RoPE table, which is f32 as in
//! `transformers`. (`transformers`' own float64 model is less pure: `LlamaRMSNorm` computes in
//! float32, so its float64 logits sit ~1e-6 from ours; the tests allow for it.)

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::BackendError;
use crate::backend::cpu::Float;

use super::attention::{AttentionGrads, AttentionShape, attention_backward, attention_forward};
use super::config::{ConfigError, LlamaConfig};
use super::linear::{LinearShape, linear_backward, linear_forward};
use super::loss::{IGNORE_INDEX, cross_entropy};
use super::rmsnorm::{NormShape, rmsnorm_backward, rmsnorm_forward};
use super::rope::{RopeShape, RopeTable, inv_freq, rope_backward, rope_forward};
use super::swiglu::{swiglu_backward, swiglu_forward};
use super::weights::{LayerParam, LlamaWeights, Param, WeightsError};

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("batch ({batch}) and seq_len ({seq_len}) must both be at least 1")]
    EmptyBatch { batch: usize, seq_len: usize },
    #[error("{what} has {got} entries; batch {batch} × seq_len {seq_len} needs {want}")]
    Length {
        what: &'static str,
        got: usize,
        want: usize,
        batch: usize,
        seq_len: usize,
    },
    #[error(
        "input_ids[{row}][{position}] is {token}, not below vocab_size {vocab_size}; was the batch tokenized with this model's tokenizer?"
    )]
    TokenOutOfRange {
        row: usize,
        position: usize,
        token: u32,
        vocab_size: usize,
    },
    #[error(
        "labels[{row}][{position}] is {label}; a label is a token id below vocab_size {vocab_size}, or -100 for a position not trained on"
    )]
    BadLabel {
        row: usize,
        position: usize,
        label: i64,
        vocab_size: usize,
    },
    #[error(
        "every label after the first position is -100, so the mean loss is over no positions; keep at least one label"
    )]
    NoLabels,
    #[error(
        "seq_len {seq_len} is longer than sliding_window {window} in config.json: the reference computes full causal attention, which equals the model's windowed attention only up to the window; use sequences of at most {window} tokens"
    )]
    SequenceBeyondSlidingWindow { seq_len: usize, window: usize },
    #[error("reference kernel: {0}")]
    Kernel(#[from] BackendError),
}

/// Gradients by Hugging Face parameter name (a tied model has no `lm_head.weight` entry).
pub type Gradients<F> = BTreeMap<String, Vec<F>>;

struct Linear<F> {
    weight: Vec<F>,
    bias: Option<Vec<F>>,
}

struct Layer<F> {
    input_norm: Vec<F>,
    q: Linear<F>,
    k: Linear<F>,
    v: Linear<F>,
    o: Linear<F>,
    post_norm: Vec<F>,
    gate: Vec<F>,
    up: Vec<F>,
    down: Vec<F>,
}

/// Every parameter (or every gradient) of the model, by role.
struct Params<F> {
    embed: Vec<F>,
    layers: Vec<Layer<F>>,
    norm: Vec<F>,
    /// None when tied to `embed`.
    lm_head: Option<Vec<F>>,
}

impl<F: Float> Params<F> {
    fn zeros(c: &LlamaConfig) -> Self {
        use LayerParam::*;
        let zeros = |p: Param| vec![F::ZERO; p.shape(c).iter().product()];
        let linear = |l: usize, w: LayerParam, b: LayerParam, has_bias: bool| Linear {
            weight: zeros(Param::Layer(l, w)),
            bias: has_bias.then(|| zeros(Param::Layer(l, b))),
        };
        let (qkv, o) = (c.attention_bias.qkv(), c.attention_bias.o());
        Params {
            embed: zeros(Param::Embed),
            layers: (0..c.num_layers)
                .map(|l| Layer {
                    input_norm: zeros(Param::Layer(l, InputNorm)),
                    q: linear(l, QProj, QBias, qkv),
                    k: linear(l, KProj, KBias, qkv),
                    v: linear(l, VProj, VBias, qkv),
                    o: linear(l, OProj, OBias, o),
                    post_norm: zeros(Param::Layer(l, PostNorm)),
                    gate: zeros(Param::Layer(l, GateProj)),
                    up: zeros(Param::Layer(l, UpProj)),
                    down: zeros(Param::Layer(l, DownProj)),
                })
                .collect(),
            norm: zeros(Param::Norm),
            lm_head: (!c.tie_word_embeddings).then(|| zeros(Param::LmHead)),
        }
    }

    /// Every tensor with the parameter it is.
    fn slots(&mut self) -> Vec<(Param, &mut Vec<F>)> {
        use LayerParam::*;
        let mut out = vec![(Param::Embed, &mut self.embed)];
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let at = |p| Param::Layer(l, p);
            out.push((at(InputNorm), &mut layer.input_norm));
            for (lin, w, b) in [
                (&mut layer.q, QProj, QBias),
                (&mut layer.k, KProj, KBias),
                (&mut layer.v, VProj, VBias),
                (&mut layer.o, OProj, OBias),
            ] {
                out.push((at(w), &mut lin.weight));
                if let Some(bias) = &mut lin.bias {
                    out.push((at(b), bias));
                }
            }
            out.push((at(PostNorm), &mut layer.post_norm));
            out.push((at(GateProj), &mut layer.gate));
            out.push((at(UpProj), &mut layer.up));
            out.push((at(DownProj), &mut layer.down));
        }
        out.push((Param::Norm, &mut self.norm));
        if let Some(head) = &mut self.lm_head {
            out.push((Param::LmHead, head));
        }
        out
    }

    fn into_named(mut self) -> Gradients<F> {
        self.slots()
            .into_iter()
            .map(|(p, v)| (p.hf_name(), std::mem::take(v)))
            .collect()
    }
}

/// What one layer's backward pass needs from its forward pass.
struct LayerCache<F> {
    x: Vec<F>,
    inv_rms1: Vec<F>,
    h1: Vec<F>,
    /// After RoPE.
    q: Vec<F>,
    k: Vec<F>,
    v: Vec<F>,
    probs: Vec<F>,
    attn: Vec<F>,
    x2: Vec<F>,
    inv_rms2: Vec<F>,
    h2: Vec<F>,
    gate: Vec<F>,
    up: Vec<F>,
    act: Vec<F>,
}

struct Forward<F> {
    layers: Vec<LayerCache<F>>,
    x: Vec<F>,
    inv_rms: Vec<F>,
    h: Vec<F>,
    logits: Vec<F>,
}

/// The sizes of one batch under one config.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    seq_len: usize,
    rows: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    q_dim: usize,
    kv_dim: usize,
    inter: usize,
    vocab: usize,
}

impl Dims {
    fn norm(&self) -> NormShape {
        NormShape {
            rows: self.rows,
            dim: self.hidden,
        }
    }
    fn linear(&self, inputs: usize, outputs: usize) -> LinearShape {
        LinearShape {
            rows: self.rows,
            inputs,
            outputs,
        }
    }
    fn rope(&self, heads: usize) -> RopeShape {
        RopeShape {
            batch: self.batch,
            seq_len: self.seq_len,
            heads,
            head_dim: self.head_dim,
        }
    }
    fn attention(&self) -> AttentionShape {
        AttentionShape {
            batch: self.batch,
            seq_len: self.seq_len,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }
}

fn add<F: Float>(a: &[F], b: &[F]) -> Vec<F> {
    a.iter().zip(b).map(|(&x, &y)| x + y).collect()
}

fn add_into<F: Float>(a: &mut [F], b: &[F]) {
    a.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
}

/// A Llama, Mistral or Qwen2 model computed by the reference kernels in `F`.
pub struct LlamaReference<F: Float = f32> {
    config: LlamaConfig,
    params: Params<F>,
    inv_freq: Vec<f32>,
}

impl<F: Float> LlamaReference<F> {
    /// `weights` must be `config`'s (checked).
    pub fn new(config: LlamaConfig, weights: &LlamaWeights) -> Result<Self, ReferenceError> {
        weights.check(&config, Path::new("the weights given to LlamaReference"))?;
        let mut params = Params::zeros(&config);
        for (p, slot) in params.slots() {
            // check() guarantees every tensor is there with its shape.
            if let Some(t) = weights.get(p) {
                *slot = t.values.iter().map(|&v| F::from_f32(v)).collect();
            }
        }
        let inv_freq = inv_freq(&config.rope, config.head_dim);
        Ok(LlamaReference {
            config,
            params,
            inv_freq,
        })
    }

    /// Reads `dir/config.json` and the weights beside it.
    pub fn from_dir(dir: &Path) -> Result<Self, ReferenceError> {
        let config = LlamaConfig::from_dir(dir)?;
        let weights = LlamaWeights::read(dir, &config)?;
        Self::new(config, &weights)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn dims(
        &self,
        input_ids: &[u32],
        batch: usize,
        seq_len: usize,
    ) -> Result<Dims, ReferenceError> {
        let c = &self.config;
        if batch == 0 || seq_len == 0 {
            return Err(ReferenceError::EmptyBatch { batch, seq_len });
        }
        let rows = batch * seq_len;
        if input_ids.len() != rows {
            return Err(ReferenceError::Length {
                what: "input_ids",
                got: input_ids.len(),
                want: rows,
                batch,
                seq_len,
            });
        }
        if let Some((i, &token)) = input_ids
            .iter()
            .enumerate()
            .find(|(_, t)| **t as usize >= c.vocab_size)
        {
            return Err(ReferenceError::TokenOutOfRange {
                row: i / seq_len,
                position: i % seq_len,
                token,
                vocab_size: c.vocab_size,
            });
        }
        if let Some(window) = c.sliding_window
            && seq_len > window
        {
            return Err(ReferenceError::SequenceBeyondSlidingWindow { seq_len, window });
        }
        Ok(Dims {
            batch,
            seq_len,
            rows,
            hidden: c.hidden_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            q_dim: c.num_heads * c.head_dim,
            kv_dim: c.num_kv_heads * c.head_dim,
            inter: c.intermediate_size,
            vocab: c.vocab_size,
        })
    }

    /// The tokens each position predicts: `labels[b][t + 1]`, None where that is -100 and
    /// at the last position.
    fn targets(&self, labels: &[i64], d: Dims) -> Result<Vec<Option<u32>>, ReferenceError> {
        if labels.len() != d.rows {
            return Err(ReferenceError::Length {
                what: "labels",
                got: labels.len(),
                want: d.rows,
                batch: d.batch,
                seq_len: d.seq_len,
            });
        }
        let mut targets = vec![None; d.rows];
        for (i, &label) in labels.iter().enumerate() {
            let (row, position) = (i / d.seq_len, i % d.seq_len);
            if label == IGNORE_INDEX {
                continue;
            }
            if label < 0 || label as u64 >= d.vocab as u64 {
                return Err(ReferenceError::BadLabel {
                    row,
                    position,
                    label,
                    vocab_size: d.vocab,
                });
            }
            if position > 0 {
                targets[i - 1] = Some(label as u32);
            }
        }
        if targets.iter().all(Option::is_none) {
            return Err(ReferenceError::NoLabels);
        }
        Ok(targets)
    }

    fn head(&self) -> &[F] {
        self.params.lm_head.as_deref().unwrap_or(&self.params.embed)
    }

    fn run(&self, input_ids: &[u32], d: Dims) -> Result<Forward<F>, ReferenceError> {
        let c = &self.config;
        let eps = c.rms_norm_eps;
        let table = RopeTable::<F>::new(&self.inv_freq, d.seq_len);
        let (norm, attention) = (d.norm(), d.attention());

        let mut x = Vec::with_capacity(d.rows * d.hidden);
        for &t in input_ids {
            let t = t as usize;
            x.extend_from_slice(&self.params.embed[t * d.hidden..(t + 1) * d.hidden]);
        }
        let mut layers = Vec::with_capacity(c.num_layers);
        for layer in &self.params.layers {
            let (h1, inv_rms1) = rmsnorm_forward(&x, &layer.input_norm, eps, norm)?;
            let project = |l: &Linear<F>, outputs| {
                linear_forward(
                    &h1,
                    &l.weight,
                    l.bias.as_deref(),
                    d.linear(d.hidden, outputs),
                )
            };
            let mut q = project(&layer.q, d.q_dim)?;
            let mut k = project(&layer.k, d.kv_dim)?;
            let v = project(&layer.v, d.kv_dim)?;
            rope_forward(&mut q, &table, d.rope(c.num_heads))?;
            rope_forward(&mut k, &table, d.rope(c.num_kv_heads))?;
            let (attn, probs) = attention_forward(&q, &k, &v, attention)?;
            let o = linear_forward(
                &attn,
                &layer.o.weight,
                layer.o.bias.as_deref(),
                d.linear(d.q_dim, d.hidden),
            )?;
            let x2 = add(&x, &o);
            let (h2, inv_rms2) = rmsnorm_forward(&x2, &layer.post_norm, eps, norm)?;
            let gate = linear_forward(&h2, &layer.gate, None, d.linear(d.hidden, d.inter))?;
            let up = linear_forward(&h2, &layer.up, None, d.linear(d.hidden, d.inter))?;
            let act = swiglu_forward(&gate, &up)?;
            let down = linear_forward(&act, &layer.down, None, d.linear(d.inter, d.hidden))?;
            let next = add(&x2, &down);
            layers.push(LayerCache {
                x: std::mem::replace(&mut x, next),
                inv_rms1,
                h1,
                q,
                k,
                v,
                probs,
                attn,
                x2,
                inv_rms2,
                h2,
                gate,
                up,
                act,
            });
        }
        let (h, inv_rms) = rmsnorm_forward(&x, &self.params.norm, eps, norm)?;
        let logits = linear_forward(&h, self.head(), None, d.linear(d.hidden, d.vocab))?;
        Ok(Forward {
            layers,
            x,
            inv_rms,
            h,
            logits,
        })
    }

    /// Logits (batch, seq_len, vocab_size) for `input_ids` (batch, seq_len), row-major.
    pub fn forward(
        &self,
        input_ids: &[u32],
        batch: usize,
        seq_len: usize,
    ) -> Result<Vec<F>, ReferenceError> {
        let d = self.dims(input_ids, batch, seq_len)?;
        Ok(self.run(input_ids, d)?.logits)
    }

    /// The mean next-token cross-entropy; `labels` (batch, seq_len) as `transformers` takes
    /// them (unshifted, -100 for positions not trained on).
    pub fn loss(
        &self,
        input_ids: &[u32],
        labels: &[i64],
        batch: usize,
        seq_len: usize,
    ) -> Result<F, ReferenceError> {
        let d = self.dims(input_ids, batch, seq_len)?;
        let targets = self.targets(labels, d)?;
        let f = self.run(input_ids, d)?;
        Ok(cross_entropy(&f.logits, &targets, d.vocab)?.0)
    }

    /// The loss and the gradient of every parameter, by Hugging Face name.
    pub fn loss_and_grads(
        &self,
        input_ids: &[u32],
        labels: &[i64],
        batch: usize,
        seq_len: usize,
    ) -> Result<(F, Gradients<F>), ReferenceError> {
        let c = &self.config;
        let d = self.dims(input_ids, batch, seq_len)?;
        let targets = self.targets(labels, d)?;
        let f = self.run(input_ids, d)?;
        let (loss, dlogits) = cross_entropy(&f.logits, &targets, d.vocab)?;

        let table = RopeTable::<F>::new(&self.inv_freq, d.seq_len);
        let (norm, attention) = (d.norm(), d.attention());

        let mut g = Params::<F>::zeros(c);
        let dhead = g.lm_head.as_mut().unwrap_or(&mut g.embed);
        let dh = linear_backward(
            &dlogits,
            &f.h,
            self.head(),
            dhead,
            None,
            d.linear(d.hidden, d.vocab),
        )?;
        let mut dx = rmsnorm_backward(&dh, &f.x, &self.params.norm, &f.inv_rms, &mut g.norm, norm)?;

        for ((layer, cache), grad) in self
            .params
            .layers
            .iter()
            .zip(&f.layers)
            .zip(g.layers.iter_mut())
            .rev()
        {
            // MLP: x3 = x2 + down(silu(gate(h2)) * up(h2)), h2 = rmsnorm(x2)
            let dact = linear_backward(
                &dx,
                &cache.act,
                &layer.down,
                &mut grad.down,
                None,
                d.linear(d.inter, d.hidden),
            )?;
            let (dgate, dup) = swiglu_backward(&dact, &cache.gate, &cache.up)?;
            let mut dh2 = linear_backward(
                &dgate,
                &cache.h2,
                &layer.gate,
                &mut grad.gate,
                None,
                d.linear(d.hidden, d.inter),
            )?;
            add_into(
                &mut dh2,
                &linear_backward(
                    &dup,
                    &cache.h2,
                    &layer.up,
                    &mut grad.up,
                    None,
                    d.linear(d.hidden, d.inter),
                )?,
            );
            let mut dx2 = dx;
            add_into(
                &mut dx2,
                &rmsnorm_backward(
                    &dh2,
                    &cache.x2,
                    &layer.post_norm,
                    &cache.inv_rms2,
                    &mut grad.post_norm,
                    norm,
                )?,
            );

            // Attention: x2 = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))), h1 = rmsnorm(x)
            let dattn = linear_backward(
                &dx2,
                &cache.attn,
                &layer.o.weight,
                &mut grad.o.weight,
                grad.o.bias.as_deref_mut(),
                d.linear(d.q_dim, d.hidden),
            )?;
            let AttentionGrads { mut dq, mut dk, dv } = attention_backward(
                &dattn,
                &cache.q,
                &cache.k,
                &cache.v,
                &cache.probs,
                attention,
            )?;
            rope_backward(&mut dq, &table, d.rope(c.num_heads))?;
            rope_backward(&mut dk, &table, d.rope(c.num_kv_heads))?;
            let mut dh1 = vec![F::ZERO; d.rows * d.hidden];
            for (dy, w, gw, outputs) in [
                (&dq, &layer.q, &mut grad.q, d.q_dim),
                (&dk, &layer.k, &mut grad.k, d.kv_dim),
                (&dv, &layer.v, &mut grad.v, d.kv_dim),
            ] {
                let part = linear_backward(
                    dy,
                    &cache.h1,
                    &w.weight,
                    &mut gw.weight,
                    gw.bias.as_deref_mut(),
                    d.linear(d.hidden, outputs),
                )?;
                add_into(&mut dh1, &part);
            }
            dx = dx2;
            add_into(
                &mut dx,
                &rmsnorm_backward(
                    &dh1,
                    &cache.x,
                    &layer.input_norm,
                    &cache.inv_rms1,
                    &mut grad.input_norm,
                    norm,
                )?,
            );
        }

        // Embedding: scatter-add each position's gradient into its token's row.
        for (&t, row) in input_ids.iter().zip(dx.chunks_exact(d.hidden)) {
            let t = t as usize;
            add_into(&mut g.embed[t * d.hidden..(t + 1) * d.hidden], row);
        }
        Ok((loss, g.into_named()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::config::{AttentionBias, Llama3Scaling, ModelType, RopeConfig, TokenIds};
    use crate::llama::test_util::{Golden, assert_gradient, fixture_dir};
    use crate::llama::weights::{Tensor, params};
    use crate::rng::Rng;

    /// The float32 reference against golden.json and golden.safetensors, and the float64
    /// reference against the float64 run, for one fixture; prints the measured differences
    /// (`-- --nocapture`).
    fn check_fixture(name: &str) {
        let golden = Golden::load(name);
        let dir = fixture_dir(name);
        let ids = golden.ids_u32();
        let (b, t) = (golden.batch, golden.seq_len);
        let model = LlamaReference::<f32>::from_dir(&dir).unwrap();
        let model64 = LlamaReference::<f64>::from_dir(&dir).unwrap();

        // Logits. transformers' own float32 logits are off its float64 ones by up to
        // `logits_max_abs_diff`; ours carry a rounding error of the same kind, in other
        // places. 4x that spread bounds the two errors together with room for summation
        // order, and stays far below any real mistake (a wrong RoPE pairing or GQA grouping
        // moves logits by ~1, see dialects.json's 3.28).
        let logits = model.forward(&ids, b, t).unwrap();
        let diff = max_abs_diff(&logits, &golden.logits);
        let spread = golden.spread("logits_max_abs_diff");
        println!(
            "{name}: logits max |f32 - golden f32| = {diff:.3e} (transformers' f32-f64 spread {spread:.3e})"
        );
        assert!(diff <= 4.0 * spread, "{name}: logits differ by {diff}");
        // The float64 run of transformers is not pure float64: LlamaRMSNorm computes in
        // float32 (its upcast for half precision is a downcast here) and the rotary cos/sin
        // are computed in float32. Ours computes RMSNorm in float64 (the gradient checks
        // need it), so the two differ by part of the float32 error: at most the spread.
        let logits64 = model64.forward(&ids, b, t).unwrap();
        let (reference, against) = match &golden.logits_f64 {
            Some(l) => (l.clone(), "f64"),
            // mistral's float64 logits were not stored: against its float32 ones.
            None => (golden.logits.iter().map(|&v| f64::from(v)).collect(), "f32"),
        };
        let diff64 = max_abs_diff(&logits64, &reference);
        let tol64 = if against == "f64" {
            spread
        } else {
            2.0 * spread
        };
        println!("{name}: logits max |f64 - golden {against}| = {diff64:.3e}");
        assert!(diff64 <= tol64, "{name}: float64 logits differ by {diff64}");

        for (masked, labels) in [
            (false, golden.input_ids.clone()),
            (true, golden.labels_masked.clone()),
        ] {
            let suffix = if masked { "_masked" } else { "" };
            let (loss, grads) = model.loss_and_grads(&ids, &labels, b, t).unwrap();
            assert_eq!(loss, model.loss(&ids, &labels, b, t).unwrap());
            let (loss64, grads64) = model64.loss_and_grads(&ids, &labels, b, t).unwrap();

            // Loss. transformers' float32 loss is one float32 rounding of the mean (its
            // recorded spread, 1e-8 to 4e-7, is below one ulp, 4.8e-7 near 6.7); ours is
            // one rounding of a mean summed in f64. 2^-22 relative is 2 to 4 ulps.
            let want = golden.number("float32", &format!("loss{suffix}"));
            let tol = 2.0 * f64::from(f32::EPSILON) * want.abs();
            let d = (f64::from(loss) - want).abs();
            let want64 = golden.number("float64", &format!("loss{suffix}"));
            let d64 = (loss64 - want64).abs();
            println!(
                "{name}: loss{suffix} |f32 - golden f32| = {d:.3e} (tolerance {tol:.1e}), |f64 - golden f64| = {d64:.3e}"
            );
            assert!(d <= tol, "{name}: loss{suffix} {loss} against {want}");
            // A mean of log-softmax terms moves by at most twice the largest logit change, and
            // the float64 logits agree within the spread (above).
            assert!(
                d64 <= 2.0 * spread,
                "{name}: float64 loss{suffix} {loss64} against {want64}"
            );

            // Gradient norms, per tensor and global, relative. transformers' float32 norms are
            // within `grad_norm_max_rel_diff` (3e-7 to 4e-7) of its float64 ones; ours carry
            // float32 rounding of the same size in other places: 10x that spread (3e-6 to
            // 4e-6) still catches any wrong gradient term, which moves a norm by percents.
            // Against the float64 run (whose RMSNorm is float32, see above) 5x.
            let grad_spread = golden.spread("grad_norm_max_rel_diff");
            let (tol_grad, tol_grad64) = (10.0 * grad_spread, 5.0 * grad_spread);
            let key = format!("grad_norms{suffix}");
            let golden32 = golden.json["float32"][&key].as_object().unwrap();
            let golden64 = golden.json["float64"][&key].as_object().unwrap();
            assert_eq!(
                grads.keys().collect::<Vec<_>>(),
                golden32.keys().collect::<Vec<_>>(),
                "{name}: gradient names"
            );
            let (mut worst, mut worst64) = (0.0f64, 0.0f64);
            let (mut sq, mut sq64) = (0.0, 0.0);
            for (tensor, want) in golden32 {
                let n = norm(&grads[tensor]);
                let n64 = norm(&grads64[tensor]);
                sq += n * n;
                sq64 += n64 * n64;
                let want = want.as_f64().unwrap();
                let want64 = golden64[tensor].as_f64().unwrap();
                let rel = (n - want).abs() / want;
                let rel64 = (n64 - want64).abs() / want64;
                worst = worst.max(rel);
                worst64 = worst64.max(rel64);
            }
            let global = golden.number("float32", &format!("global_grad_norm{suffix}"));
            let global64 = golden.number("float64", &format!("global_grad_norm{suffix}"));
            let grel = (sq.sqrt() - global).abs() / global;
            let grel64 = (sq64.sqrt() - global64).abs() / global64;
            println!(
                "{name}: {key} max rel diff f32 {worst:.3e} (transformers' spread {:.3e}), f64 {worst64:.3e}; global {grel:.3e} / f64 {grel64:.3e}",
                golden.spread("grad_norm_max_rel_diff")
            );
            assert!(worst <= tol_grad, "{name}: {key}");
            assert!(worst64 <= tol_grad64, "{name}: float64 {key}");
            assert!(grel <= tol_grad, "{name}: global gradient norm{suffix}");
            assert!(
                grel64 <= tol_grad64,
                "{name}: float64 global gradient norm{suffix}"
            );
        }
    }

    fn max_abs_diff<A: Float, B: Float>(a: &[A], b: &[B]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x.to_f64() - y.to_f64()).abs())
            .fold(0.0, f64::max)
    }

    fn norm<F: Float>(v: &[F]) -> f64 {
        v.iter()
            .map(|x| x.to_f64() * x.to_f64())
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn llama_gqa_matches_transformers() {
        check_fixture("llama-gqa");
    }

    #[test]
    fn qwen2_tied_matches_transformers() {
        check_fixture("qwen2-tied");
    }

    #[test]
    fn mistral_matches_transformers() {
        check_fixture("mistral");
    }

    fn tiny(model_type: ModelType) -> LlamaConfig {
        LlamaConfig {
            model_type,
            vocab_size: 11,
            hidden_size: 8,
            intermediate_size: 12,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope: RopeConfig {
                theta: 10000.0,
                llama3: None,
            },
            max_position_embeddings: 64,
            attention_bias: AttentionBias::None,
            tie_word_embeddings: false,
            sliding_window: None,
            dtype: None,
            tokens: TokenIds::default(),
        }
    }

    /// Weights drawn as the fixtures draw them (record.py): embeddings N(0, 0.25²), linear
    /// weights N(0, 1/fan_in), norms 1 + N(0, 0.1²), biases N(0, 0.1²).
    fn random_weights(c: &LlamaConfig, seed: u64) -> LlamaWeights {
        let mut rng = Rng::new(seed);
        let tensors = params(c)
            .into_iter()
            .map(|p| {
                let shape = p.shape(c);
                let n: usize = shape.iter().product();
                let name = p.hf_name();
                let draw = |rng: &mut Rng| -> f64 {
                    if name.contains("embed") {
                        0.25 * rng.normal()
                    } else if name.ends_with("bias") {
                        0.1 * rng.normal()
                    } else if name.contains("norm") {
                        1.0 + 0.1 * rng.normal()
                    } else {
                        rng.normal() / (shape[1] as f64).sqrt()
                    }
                };
                let values = (0..n).map(|_| draw(&mut rng) as f32).collect();
                (name, Tensor { shape, values })
            })
            .collect();
        LlamaWeights::new(c, tensors, Path::new("(random)")).unwrap()
    }

    /// Every gradient element of a tiny model against central differences of its loss, in
    /// float64: the assembled backward pass, element by element (the fixtures check norms).
    fn check_gradients(c: LlamaConfig, seed: u64) {
        let weights = random_weights(&c, seed);
        let mut model = LlamaReference::<f64>::new(c.clone(), &weights).unwrap();
        let (b, t) = (2, 5);
        let mut rng = Rng::new(seed + 1);
        let ids: Vec<u32> = (0..b * t).map(|_| (rng.next_u64() % 11) as u32).collect();
        let mut labels: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        labels[2] = IGNORE_INDEX;
        labels[7] = IGNORE_INDEX;
        let (_, grads) = model.loss_and_grads(&ids, &labels, b, t).unwrap();
        assert_eq!(grads.len(), params(&c).len());
        for p in params(&c) {
            let name = p.hf_name();
            let x0 = model
                .params
                .slots()
                .into_iter()
                .find(|(q, _)| *q == p)
                .unwrap()
                .1
                .clone();
            assert_gradient(
                &format!("{:?} {name}", c.model_type),
                &x0,
                &grads[&name],
                |x| {
                    *model
                        .params
                        .slots()
                        .into_iter()
                        .find(|(q, _)| *q == p)
                        .unwrap()
                        .1 = x.to_vec();
                    model.loss(&ids, &labels, b, t).unwrap()
                },
            );
            *model
                .params
                .slots()
                .into_iter()
                .find(|(q, _)| *q == p)
                .unwrap()
                .1 = x0;
        }
    }

    #[test]
    fn llama_gradients_match_finite_differences() {
        let mut c = tiny(ModelType::Llama);
        c.attention_bias = AttentionBias::QkvO;
        c.rope.llama3 = Some(Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16,
        });
        check_gradients(c, 1);
    }

    #[test]
    fn qwen2_tied_gradients_match_finite_differences() {
        let mut c = tiny(ModelType::Qwen2);
        c.attention_bias = AttentionBias::Qkv;
        c.tie_word_embeddings = true;
        c.rope.theta = 1e6;
        check_gradients(c, 2);
    }

    #[test]
    fn mistral_multi_query_gradients_match_finite_differences() {
        let mut c = tiny(ModelType::Mistral);
        c.num_kv_heads = 1;
        c.sliding_window = Some(5);
        check_gradients(c, 3);
    }

    #[test]
    fn bad_batches_are_refused_by_name() {
        let mut c = tiny(ModelType::Mistral);
        c.sliding_window = Some(4);
        let model = LlamaReference::<f32>::new(c.clone(), &random_weights(&c, 4)).unwrap();
        let ids = [1u32, 2, 3, 4, 5, 6];
        let labels = [1i64, 2, 3, 4, 5, 6];
        let err = |r: Result<f32, ReferenceError>| r.unwrap_err().to_string();
        let loss = |ids: &[u32], labels: &[i64], b, t| err(model.loss(ids, labels, b, t));
        assert!(model.loss(&ids, &labels, 2, 3).is_ok());
        let e = loss(&ids, &labels, 1, 6);
        assert!(
            e.contains("seq_len 6 is longer than sliding_window 4"),
            "{e}"
        );
        let e = loss(&ids, &labels, 2, 2);
        assert!(
            e.contains("input_ids has 6 entries; batch 2 × seq_len 2 needs 4"),
            "{e}"
        );
        let e = loss(&ids, &labels[..5], 2, 3);
        assert!(e.contains("labels has 5 entries"), "{e}");
        let e = loss(&[], &[], 0, 3);
        assert!(e.contains("must both be at least 1"), "{e}");
        let e = loss(&[1, 2, 11, 4, 5, 6], &labels, 2, 3);
        assert!(
            e.contains("input_ids[0][2] is 11, not below vocab_size 11"),
            "{e}"
        );
        let e = loss(&ids, &[1, 2, 3, 4, -1, 6], 2, 3);
        assert!(e.contains("labels[1][1] is -1"), "{e}");
        let e = loss(&ids, &[1, 2, 3, 4, 5, 99], 2, 3);
        assert!(e.contains("labels[1][2] is 99"), "{e}");
        // Only the first position of each row is labelled: nothing is predicted.
        let e = loss(&ids, &[1, -100, -100, 4, -100, -100], 2, 3);
        assert!(e.contains("mean loss is over no positions"), "{e}");
        let e = model.forward(&[1, 2, 3, 4, 5, 6], 3, 2).map(|_| ());
        assert!(e.is_ok());

        // Weights of another shape of model.
        let mut other = c.clone();
        other.num_kv_heads = 4;
        let e = LlamaReference::<f32>::new(other, &random_weights(&c, 4))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("k_proj.weight has shape [8, 8], the config needs [16, 8]"),
            "{e}"
        );
    }

    #[test]
    fn ignored_labels_change_only_which_positions_count() {
        // The masked loss is the mean over the labelled positions of the per-position losses.
        let c = tiny(ModelType::Llama);
        let model = LlamaReference::<f64>::new(c.clone(), &random_weights(&c, 5)).unwrap();
        let ids = [3u32, 1, 4, 1, 5, 9];
        let full: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let single = |keep: usize| {
            let mut l = vec![IGNORE_INDEX; 6];
            l[keep] = full[keep];
            model.loss(&ids, &l, 1, 6).unwrap()
        };
        let mean = (1..6).map(single).sum::<f64>() / 5.0;
        let all = model.loss(&ids, &full, 1, 6).unwrap();
        assert!((mean - all).abs() < 1e-12, "{mean} against {all}");
        let mut some = full.clone();
        some[2] = IGNORE_INDEX;
        let part = (single(1) + single(3) + single(4) + single(5)) / 4.0;
        assert!((model.loss(&ids, &some, 1, 6).unwrap() - part).abs() < 1e-12);
    }
}
