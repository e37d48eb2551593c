//! Which of a model's weights train, and LoRA: [`Placement`] maps every tensor of a family's
//! layout either to the trainable flat space (what the optimizer, data parallelism, ZeRO and
//! checkpoints see: [`crate::lm::ModelState::layout`]) or to the frozen base buffer, and adds
//! each targeted projection's adapters A (rank × in) and B (out × rank) to the trainable space.
//! [`Projection`] is a projection as a model runs it: the base layer read from wherever its
//! weights are, plus its adapter.
//!
//! ```text
//! full training: trainable = the family's layout, no base buffer
//! LoRA:          base (frozen, the family's layout)  +  trainable = [q_proj.lora_A (L, r, C),
//!                q_proj.lora_B (L, H·D, r), ..., norms or embeddings if asked, in layout order]
//!                y = x·Wᵀ (+ b)  +  (alpha/r)·(x·Aᵀ)·Bᵀ
//! ```

use std::ops::Range;

use tessera_api::spec::{LoraSpec, LoraTarget};

use crate::backend::{Backend, BackendError};
use crate::linear::{Linear, LoraAdapter};
use crate::model::{ParamKind, ParamLayout};
use crate::rng::{Rng, splitmix64};

/// Why a LoRA plan does not fit the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraError {
    #[error(
        "spec.training.lora.rank: {rank} is larger than {target} allows ({n_out} × {n_in}); the rank can be at most {max}"
    )]
    RankTooLarge {
        target: &'static str,
        rank: usize,
        n_out: usize,
        n_in: usize,
        max: usize,
    },
    #[error(
        "spec.training.lora.targets: {target} is not a projection of this model (it has {have})"
    )]
    UnknownTarget { target: &'static str, have: String },
}

/// Where a model reads a tensor from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// The trainable parameters ([`crate::lm::ModelState::params`]).
    Trainable,
    /// The frozen base weights ([`crate::lm::ModelState::base`]).
    Base,
}

/// A family tensor's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Frozen, read from the base.
    Frozen,
    /// Trains: tensor `0` of the trainable layout.
    Trainable(usize),
    /// Frozen, with adapters A and B (trainable tensors) and its index among the adapted.
    Adapted { a: usize, b: usize, index: usize },
}

/// LoRA's shape: rank and scale (alpha / rank).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraShape {
    pub rank: usize,
    pub scale: f32,
    /// alpha, as the spec gave it (PEFT's `lora_alpha`).
    pub alpha: f64,
    /// Dropout on the adapters' input while training (PEFT's `lora_dropout`).
    pub dropout: f64,
}

/// LoRA dropout's masks for one optimizer step: a key from (seed, step) and each
/// micro-batch's first global row, so an element's mask depends on its place in the global
/// batch and not on how the batch is split across ranks and micro-steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropoutPlan {
    pub key: u64,
    /// The first global row of each micro-batch of this rank, by micro-step.
    pub first_rows: Vec<u64>,
}

impl DropoutPlan {
    /// The plan of step `step` of a run seeded `seed`.
    pub fn new(seed: u64, step: u64, first_rows: Vec<u64>) -> DropoutPlan {
        DropoutPlan {
            key: splitmix64(splitmix64(seed ^ DROPOUT_DOMAIN) ^ step),
            first_rows,
        }
    }
}

/// Separates dropout's masks from any other use of the run's seed.
const DROPOUT_DOMAIN: u64 = 0x6c6f_7261_5f64_726f; // "lora_dro"

/// Which tensors of a family's layout train and where each is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Every weight the model has (the base's layout under LoRA).
    pub family: ParamLayout,
    /// What trains: the optimizer's, data parallelism's and checkpoints' flat space.
    pub trainable: ParamLayout,
    slots: Vec<Slot>,
    lora: Option<LoraShape>,
    /// The targets adapted, with the family tensors each adapts.
    targets: Vec<(LoraTarget, Vec<usize>)>,
}

/// The trainable names of a projection's adapters (`&'static` as layout names are).
fn adapter_names(name: &str) -> Option<(&'static str, &'static str)> {
    macro_rules! names {
        ($($n:literal),*) => {
            match name {
                $($n => Some((concat!($n, ".lora_A"), concat!($n, ".lora_B"))),)*
                _ => None,
            }
        };
    }
    names!(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "qkvw",
        "attprojw",
        "fcw",
        "fcprojw"
    )
}

impl Placement {
    /// Every tensor trains (full fine-tuning or pre-training).
    pub fn full(family: ParamLayout) -> Placement {
        Placement {
            slots: (0..family.tensors.len()).map(Slot::Trainable).collect(),
            trainable: family.clone(),
            family,
            lora: None,
            targets: Vec::new(),
        }
    }

    /// LoRA on `family`: `projections` names, for each target the family has, the per-layer
    /// tensors (L, out, in) it adapts; `head` is an untied output head (trained with the
    /// embeddings when asked).
    pub fn lora(
        family: ParamLayout,
        spec: &LoraSpec,
        projections: &[(LoraTarget, Vec<usize>)],
        targets: &[LoraTarget],
        head: Option<usize>,
    ) -> Result<Placement, LoraError> {
        let rank = spec.rank as usize;
        let mut chosen: Vec<(LoraTarget, Vec<usize>)> = Vec::new();
        for &target in targets {
            let Some((_, ids)) = projections.iter().find(|(t, _)| *t == target) else {
                return Err(LoraError::UnknownTarget {
                    target: target.name(),
                    have: projections
                        .iter()
                        .map(|(t, _)| t.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            if !chosen.iter().any(|(t, _)| *t == target) {
                chosen.push((target, ids.clone()));
            }
        }
        let adapted = |id: usize| chosen.iter().any(|(_, ids)| ids.contains(&id));
        let layers = family.layers();
        let mut specs = Vec::new();
        let mut slots = Vec::new();
        let mut index = 0;
        for (id, t) in family.tensors.iter().enumerate() {
            if adapted(id) {
                let (n_out, n_in) = (t.shape[1], t.shape[2]);
                if rank > n_out.min(n_in) {
                    let target = chosen
                        .iter()
                        .find(|(_, ids)| ids.contains(&id))
                        .map_or(t.name, |(t, _)| t.name());
                    return Err(LoraError::RankTooLarge {
                        target,
                        rank,
                        n_out,
                        n_in,
                        max: n_out.min(n_in),
                    });
                }
                let (a_name, b_name) =
                    adapter_names(t.name).expect("every adaptable projection has adapter names");
                specs.push((
                    a_name,
                    vec![layers, rank, n_in],
                    ParamKind::MatmulWeight,
                    false,
                ));
                specs.push((
                    b_name,
                    vec![layers, n_out, rank],
                    ParamKind::MatmulWeight,
                    false,
                ));
                slots.push(Slot::Adapted {
                    a: specs.len() - 2,
                    b: specs.len() - 1,
                    index,
                });
                index += 1;
                continue;
            }
            let norm = matches!(
                t.kind,
                ParamKind::LayerNormWeight | ParamKind::LayerNormBias
            );
            let embedding = t.kind == ParamKind::Embedding || Some(id) == head;
            if (norm && spec.train_norms) || (embedding && spec.train_embeddings) {
                specs.push((t.name, t.shape.clone(), t.kind, t.residual_projection));
                slots.push(Slot::Trainable(specs.len() - 1));
            } else {
                slots.push(Slot::Frozen);
            }
        }
        Ok(Placement {
            trainable: ParamLayout::from_specs(specs, layers),
            family,
            slots,
            lora: Some(LoraShape {
                rank,
                scale: spec.scale() as f32,
                alpha: spec.alpha(),
                dropout: spec.dropout,
            }),
            targets: chosen,
        })
    }

    /// LoRA's shape, `None` when every weight trains.
    pub fn lora_shape(&self) -> Option<LoraShape> {
        self.lora
    }

    /// Whether the base weights are frozen in a buffer of their own.
    pub fn has_base(&self) -> bool {
        self.lora.is_some()
    }

    /// The targets adapted, each with the family tensors it adapts.
    pub fn targets(&self) -> &[(LoraTarget, Vec<usize>)] {
        &self.targets
    }

    /// Projections with adapters (the activations keep one `x·Aᵀ` per projection and layer).
    pub fn adapted_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Adapted { .. }))
            .count()
    }

    /// Where family tensor `id` (layer `layer`'s slice, or all of it) is read from.
    pub fn weight(&self, id: usize, layer: Option<usize>) -> (Where, Range<usize>) {
        let slice = |lay: &ParamLayout, id| match layer {
            Some(l) => lay.layer(id, l),
            None => lay.range(id),
        };
        match self.slots[id] {
            Slot::Trainable(t) => (Where::Trainable, slice(&self.trainable, t)),
            Slot::Frozen | Slot::Adapted { .. } => (Where::Base, slice(&self.family, id)),
        }
    }

    /// Whether family tensor `id` itself trains (its gradient is wanted).
    pub fn trains(&self, id: usize) -> bool {
        matches!(self.slots[id], Slot::Trainable(_))
    }

    /// The adapter on layer `layer` of family tensor `id`, with its index among the adapted
    /// projections.
    pub fn adapter(&self, id: usize, layer: usize) -> Option<(LoraAdapter, usize)> {
        let Slot::Adapted { a, b, index } = self.slots[id] else {
            return None;
        };
        let lora = self.lora.expect("adapters exist under LoRA only");
        Some((
            LoraAdapter {
                a: self.trainable.layer(a, layer),
                b: self.trainable.layer(b, layer),
                rank: lora.rank,
                scale: lora.scale,
            },
            index,
        ))
    }

    /// The trainable ranges that belong to family tensors `ids` (layer `layer`'s slices, or
    /// whole tensors): what becomes final when those tensors' backward is done.
    pub fn trainable_ranges(&self, ids: &[usize], layer: Option<usize>) -> Vec<Range<usize>> {
        let slice = |t| match layer {
            Some(l) => self.trainable.layer(t, l),
            None => self.trainable.range(t),
        };
        let mut out = Vec::new();
        for &id in ids {
            match self.slots[id] {
                Slot::Frozen => {}
                Slot::Trainable(t) => out.push(slice(t)),
                Slot::Adapted { a, b, .. } => {
                    out.push(slice(a));
                    out.push(slice(b));
                }
            }
        }
        out
    }

    /// The trainable starting values under LoRA as PEFT initialises them: A uniform in
    /// ±1/√in (kaiming-uniform with a = √5), B zero; tensors trained whole start from `base`.
    pub fn initial_trainable(&self, base: &[f32], rng: &mut Rng) -> Vec<f32> {
        let mut out = vec![0.0f32; self.trainable.total];
        for (id, slot) in self.slots.iter().enumerate() {
            match *slot {
                Slot::Frozen => {}
                Slot::Trainable(t) => {
                    out[self.trainable.range(t)].copy_from_slice(&base[self.family.range(id)])
                }
                Slot::Adapted { a, .. } => {
                    let n_in = self.trainable.tensors[a].shape[2];
                    let bound = 1.0 / (n_in as f64).sqrt();
                    for x in &mut out[self.trainable.range(a)] {
                        *x = ((rng.uniform() * 2.0 - 1.0) * bound) as f32;
                    }
                }
            }
        }
        out
    }

    /// The family tensors trained whole, as (range in the family layout, range in the
    /// trainable one): what loading the base copies in.
    pub fn trained_whole(&self) -> Vec<(Range<usize>, Range<usize>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(id, s)| match *s {
                Slot::Trainable(t) => Some((self.family.range(id), self.trainable.range(t))),
                _ => None,
            })
            .collect()
    }

    /// The whole model's weights (family layout) from the base and the trainable values:
    /// tensors trained whole replaced, adapted ones `W + scale·B·A` (summed in f64, rounded
    /// once).
    pub fn merged(&self, base: &[f32], trainable: &[f32]) -> Vec<f32> {
        if self.lora.is_none() {
            return trainable.to_vec();
        }
        let mut out = base.to_vec();
        let layers = self.family.layers();
        for (id, slot) in self.slots.iter().enumerate() {
            match *slot {
                Slot::Frozen => {}
                Slot::Trainable(t) => {
                    out[self.family.range(id)].copy_from_slice(&trainable[self.trainable.range(t)])
                }
                Slot::Adapted { .. } => {
                    let shape = &self.family.tensors[id].shape;
                    let (n_out, n_in) = (shape[1], shape[2]);
                    for layer in 0..layers {
                        let (adapter, _) = self.adapter(id, layer).expect("adapted");
                        let (a, b) = (&trainable[adapter.a.clone()], &trainable[adapter.b.clone()]);
                        let w = &mut out[self.family.layer(id, layer)];
                        for o in 0..n_out {
                            for i in 0..n_in {
                                let delta: f64 = (0..adapter.rank)
                                    .map(|r| {
                                        f64::from(b[o * adapter.rank + r])
                                            * f64::from(a[r * n_in + i])
                                    })
                                    .sum();
                                let merged =
                                    f64::from(w[o * n_in + i]) + f64::from(adapter.scale) * delta;
                                w[o * n_in + i] = merged as f32;
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// Per-micro-batch LoRA activations: `u = scale·x·Aᵀ` for every adapted projection and
/// layer (the backward needs it), a `du` scratch, and a scratch gradient for frozen norms
/// (their weights' gradient is computed by the fused backward and thrown away); with
/// dropout, the dropped input and the input gradient's scratch (the mask is recomputed from
/// its key in the backward, not stored).
pub struct LoraActs<B: Backend> {
    pub u: B::Buf,
    pub du: B::Buf,
    pub frozen_grad: B::Buf,
    /// rows × the widest adapted input, under dropout.
    dropped: B::Buf,
    dinp: B::Buf,
    /// rows × rank: one projection's `u` for one layer.
    per: usize,
    layers: usize,
    seq_len: usize,
    dropout: f32,
    /// This step's masks while training; `None` turns dropout off.
    plan: Option<DropoutPlan>,
    micro: usize,
}

impl<B: Backend> LoraActs<B> {
    /// Activations for `placement` over `rows` rows; `frozen_grad_len` is the largest frozen
    /// tensor slice whose gradient a fused kernel writes anyway.
    pub fn new(
        be: &B,
        placement: &Placement,
        batch: usize,
        seq_len: usize,
        frozen_grad_len: usize,
    ) -> Result<Option<Self>, BackendError> {
        let Some(lora) = placement.lora_shape() else {
            return Ok(None);
        };
        let rows = batch * seq_len;
        let per = rows * lora.rank;
        let layers = placement.family.layers();
        let widest = match lora.dropout > 0.0 {
            true => placement
                .family
                .tensors
                .iter()
                .enumerate()
                .filter(|(id, _)| matches!(placement.slots[*id], Slot::Adapted { .. }))
                .map(|(_, t)| t.shape[2])
                .max()
                .unwrap_or(0),
            false => 0,
        };
        Ok(Some(LoraActs {
            u: be.alloc(placement.adapted_count() * layers * per)?,
            du: be.alloc(per)?,
            frozen_grad: be.alloc(frozen_grad_len)?,
            dropped: be.alloc(rows * widest)?,
            dinp: be.alloc(rows * widest)?,
            per,
            layers,
            seq_len,
            dropout: lora.dropout as f32,
            plan: None,
            micro: 0,
        }))
    }

    /// Sets the dropout masks of the next step (`None`: no dropout, as in evaluation).
    pub fn set_plan(&mut self, plan: Option<DropoutPlan>) {
        self.plan = plan;
    }

    /// Selects the micro-batch the next forward and backward run.
    pub fn set_micro_batch(&mut self, micro: usize) {
        self.micro = micro;
    }

    fn u_range(&self, index: usize, layer: usize) -> Range<usize> {
        let start = (index * self.layers + layer) * self.per;
        start..start + self.per
    }

    /// `dropped[..len] = inp` through `mask` (p, key, offset).
    fn drop_input(
        &mut self,
        be: &B,
        inp: B::Ref<'_>,
        (p, key, offset): (f32, u64, u64),
        len: usize,
    ) -> Result<(), BackendError> {
        be.dropout(
            be.view_mut(&mut self.dropped, 0..len)?,
            inp,
            p,
            key,
            offset,
            false,
        )
    }

    /// The mask of adapter `index` on layer `layer` over inputs of width `n_in`: (p, key,
    /// the global offset of this micro-batch's first element), while dropout is on.
    fn mask(&self, index: usize, layer: usize, n_in: usize) -> Option<(f32, u64, u64)> {
        let plan = self.plan.as_ref().filter(|_| self.dropout > 0.0)?;
        let first_row = *plan.first_rows.get(self.micro)?;
        let key = splitmix64(plan.key ^ ((layer as u64) << 32 | index as u64));
        Some((self.dropout, key, first_row * (self.seq_len * n_in) as u64))
    }
}

/// The buffers a model reads weights from.
pub struct Weights<'a, B: Backend> {
    pub trainable: &'a B::Buf,
    pub base: Option<&'a B::Buf>,
    pub placement: &'a Placement,
}

impl<'a, B: Backend> Weights<'a, B> {
    fn buf(&self, at: Where) -> &'a B::Buf {
        match at {
            Where::Trainable => self.trainable,
            Where::Base => self.base.expect("a frozen tensor lives in the base buffer"),
        }
    }

    /// Family tensor `id` (layer `layer`'s slice, or all of it), wherever it lives.
    pub fn view(
        &self,
        be: &B,
        id: usize,
        layer: Option<usize>,
    ) -> Result<B::Ref<'a>, BackendError> {
        let (at, range) = self.placement.weight(id, layer);
        be.view(self.buf(at), range)
    }

    /// The projection whose weight is family tensor `weight` (and bias `bias`), layer
    /// `layer`'s slice, `n_out × n_in`, over `rows` rows.
    pub fn projection(
        &self,
        weight: usize,
        bias: Option<usize>,
        layer: Option<usize>,
        n_out: usize,
        n_in: usize,
        rows: usize,
    ) -> Projection {
        let (at, w) = self.placement.weight(weight, layer);
        let bias = bias.map(|b| {
            let (bias_at, range) = self.placement.weight(b, layer);
            debug_assert_eq!(bias_at, at, "a projection's weight and bias live together");
            range
        });
        Projection {
            linear: Linear::new(w, bias, n_out, n_in, rows),
            at,
            trains: self.placement.trains(weight),
            adapter: layer.and_then(|l| self.placement.adapter(weight, l).map(|(a, i)| (a, i, l))),
        }
    }

    /// Where the gradient of family tensor `id`'s slice goes: the trainable gradients, or
    /// the frozen scratch (thrown away) when it does not train.
    pub fn grad<'g>(
        &self,
        be: &B,
        grads: &'g mut B::Buf,
        lora: Option<&'g mut LoraActs<B>>,
        id: usize,
        layer: Option<usize>,
    ) -> Result<B::Mut<'g>, BackendError> {
        let (at, range) = self.placement.weight(id, layer);
        match (at, lora) {
            (Where::Trainable, _) => be.view_mut(grads, range),
            (Where::Base, Some(lora)) => {
                let len = range.len();
                be.view_mut(&mut lora.frozen_grad, 0..len)
            }
            (Where::Base, None) => unreachable!("frozen tensors exist under LoRA only"),
        }
    }
}

impl<'a, B: Backend> Weights<'a, B> {
    /// [`Weights::grad`] for two tensors at once that train together or not at all (a
    /// LayerNorm's weight and bias, GPT-2's two embeddings).
    pub fn grads2<'g>(
        &self,
        be: &B,
        grads: &'g mut B::Buf,
        lora: Option<&'g mut LoraActs<B>>,
        ids: [usize; 2],
        layer: Option<usize>,
    ) -> Result<[B::Mut<'g>; 2], BackendError> {
        let (at0, r0) = self.placement.weight(ids[0], layer);
        let (at1, r1) = self.placement.weight(ids[1], layer);
        debug_assert_eq!(at0, at1, "the two tensors train together");
        match (at0, lora) {
            (Where::Trainable, _) => be.views_mut(grads, [r0, r1]),
            (Where::Base, Some(lora)) => {
                let (n0, n1) = (r0.len(), r1.len());
                be.views_mut(&mut lora.frozen_grad, [0..n0, n0..n0 + n1])
            }
            (Where::Base, None) => unreachable!("frozen tensors exist under LoRA only"),
        }
    }
}

/// A projection as the model runs it: the base layer, read from the trainable parameters or
/// the frozen base, and its LoRA adapter if it has one.
pub struct Projection {
    pub linear: Linear,
    at: Where,
    trains: bool,
    /// The adapter, its index among the adapted projections, and the layer.
    adapter: Option<(LoraAdapter, usize, usize)>,
}

impl Projection {
    /// `out[range] = inp · Wᵀ (+ b) (+ scale·(inp·Aᵀ)·Bᵀ)`.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        w: &Weights<'_, B>,
        lora: Option<&mut LoraActs<B>>,
        out: &mut B::Buf,
        range: Range<usize>,
        inp: B::Ref<'_>,
    ) -> Result<(), BackendError> {
        self.linear
            .forward(be, w.buf(self.at), be.view_mut(out, range.clone())?, inp)?;
        if let Some((adapter, index, layer)) = &self.adapter {
            let lora = lora.expect("an adapted projection has LoRA activations");
            let u = lora.u_range(*index, *layer);
            let len = self.linear.rows * self.linear.n_in;
            match lora.mask(*index, *layer, self.linear.n_in) {
                Some(mask) => {
                    lora.drop_input(be, inp, mask, len)?;
                    adapter.forward(
                        be,
                        w.trainable,
                        &self.linear,
                        be.view_mut(out, range)?,
                        be.view(&lora.dropped, 0..len)?,
                        &mut lora.u,
                        u,
                    )?;
                }
                None => adapter.forward(
                    be,
                    w.trainable,
                    &self.linear,
                    be.view_mut(out, range)?,
                    inp,
                    &mut lora.u,
                    u,
                )?,
            }
        }
        Ok(())
    }

    /// The gradient of the input into `dinp[range]` (added when `accumulate`), and of the
    /// weights that train: the base layer's when it trains, the adapter's always.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        w: &Weights<'_, B>,
        grads: &mut B::Buf,
        lora: Option<&mut LoraActs<B>>,
        dinp: &mut B::Buf,
        range: Range<usize>,
        dout: B::Ref<'_>,
        inp: B::Ref<'_>,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        let params = w.buf(self.at);
        let dinp_view = be.view_mut(dinp, range.clone())?;
        if self.trains {
            self.linear
                .backward(be, params, grads, dinp_view, dout, inp, accumulate)?;
        } else {
            self.linear
                .backward_input(be, params, dinp_view, dout, accumulate)?;
        }
        if let Some((adapter, index, layer)) = &self.adapter {
            let lora = lora.expect("an adapted projection has LoRA activations");
            let u = lora.u_range(*index, *layer);
            let per = lora.per;
            let len = self.linear.rows * self.linear.n_in;
            let Some(mask) = lora.mask(*index, *layer, self.linear.n_in) else {
                return adapter.backward(
                    be,
                    w.trainable,
                    grads,
                    &self.linear,
                    Some(be.view_mut(dinp, range)?),
                    dout,
                    inp,
                    be.view(&lora.u, u)?,
                    &mut lora.du,
                    0..per,
                );
            };
            // The dropped input again (the same mask from the same key), the adapters'
            // gradients from it, then the input's through the mask: dinp += mask ∘ (du·A).
            lora.drop_input(be, inp, mask, len)?;
            adapter.backward(
                be,
                w.trainable,
                grads,
                &self.linear,
                None,
                dout,
                be.view(&lora.dropped, 0..len)?,
                be.view(&lora.u, u)?,
                &mut lora.du,
                0..per,
            )?;
            adapter.input_grad(
                be,
                w.trainable,
                &self.linear,
                be.view_mut(&mut lora.dinp, 0..len)?,
                be.view(&lora.du, 0..per)?,
                false,
            )?;
            be.dropout(
                be.view_mut(dinp, range)?,
                be.view(&lora.dinp, 0..len)?,
                mask.0,
                mask.1,
                mask.2,
                true,
            )?;
        }
        Ok(())
    }
}
