//! The `Backend` trait: every operation the GPT model needs, over device buffers the backend
//! owns. The model is written once against this trait; the CPU backend ([`cpu`]) implements it
//! in f32 (or f64, for gradient checks), and the CUDA backend ([`cuda`]) with bf16
//! activations, parameters and gradients, fp32 statistics, fp32 master weights and fp32
//! optimizer state.
//!
//! ```text
//!   host f32 ──upload──▶ Buf (backend dtype) ──view / view_mut──▶ Ref<'a> / Mut<'a> ──▶ kernels
//!                        alloc: storage precision (bf16 on CUDA); alloc_f32: at least fp32
//!                        (per-row statistics, losses, attention state)
//!   host u32 ──upload_tokens──▶ Tokens
//!   OptState (m, v, and master weights where the backend keeps them) is opaque and addressed by
//!   ranges of the flat parameter space.
//! ```
//!
//! # Flat parameter layout
//! Parameters, gradients and the AdamW moments each live in ONE flat buffer of
//! `ModelConfig::num_params()` elements. Tensors are contiguous row-major ranges in a fixed
//! order (see `model::ParamLayout`): wte, wpe, then each per-layer family stacked over layers
//! (ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb), then
//! lnfw, lnfb. Splitting the flat range evenly across ranks later (ZeRO-1) needs nothing but
//! ranges, which is why the optimizer calls take `Range<usize>`.
//!
//! # Gradient semantics
//! Parameter gradients always ACCUMULATE (`+=`), so micro-batches add up. Activation gradients
//! say per call whether they overwrite or accumulate; the docs of each method state it.
// Kernels take one argument per tensor plus dimensions, like CUDA launchers.
#![allow(clippy::too_many_arguments)]

pub mod cpu;
pub mod cuda;

pub use crate::llama::attention::AttentionShape as GqaShape;
pub use crate::llama::rope::RopeShape;

/// Dropout's threshold for drop probability `p`: an element drops when its 24-bit draw is
/// below it.
pub fn dropout_threshold(p: f32) -> u32 {
    (f64::from(p) * f64::from(1u32 << 24)).round() as u32
}

/// Whether element `j` of the mask `key` keeps: the top 24 bits of SplitMix64 at `key + j·γ`
/// are at least `threshold` (the CUDA kernel computes the same bits).
pub fn dropout_keeps(key: u64, j: u64, threshold: u32) -> bool {
    let draw = crate::rng::splitmix64(key.wrapping_add(j.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    (draw >> 40) as u32 >= threshold
}
use std::ops::Range;
use thiserror::Error;

/// What a backend operation can refuse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendError {
    #[error("range {start}..{end} is outside a buffer of {len} elements")]
    OutOfBounds {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("ranges passed to views_mut overlap ({a:?} and {b:?})")]
    OverlappingRanges { a: Range<usize>, b: Range<usize> },
    #[error("{op}: buffer `{name}` has {got} elements, the shape needs {want}")]
    ShapeMismatch {
        op: &'static str,
        name: &'static str,
        want: usize,
        got: usize,
    },
    #[error("{op}: token id {token} at position {position} is not below {limit}")]
    TokenOutOfRange {
        op: &'static str,
        token: u32,
        position: usize,
        limit: usize,
    },
    #[error("{op}: invalid dimensions: {detail}")]
    BadDimensions { op: &'static str, detail: String },
    #[error("device allocation of {len} elements failed: {detail}")]
    Allocation { len: usize, detail: String },
    #[error("{op}: buffer `{name}` holds {got} elements, the kernel needs {want}")]
    ElementType {
        op: &'static str,
        name: &'static str,
        want: &'static str,
        got: &'static str,
    },
    #[error("{op}: the device reported: {detail}")]
    Device { op: &'static str, detail: String },
}

/// Shape of one matrix product `out (m×n) [+]= op(a) (m×k) · op(b) (k×n) [+ bias (n)]`, all
/// row-major. `a_transposed` means `a` is stored as (k×m); `b_transposed` means `b` is stored as
/// (n×k) — the common case for a linear layer whose weight is (out_features × in_features).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_transposed: bool,
    pub b_transposed: bool,
}

/// Shape of causal self-attention over a fused qkv tensor of (B, T, 3C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq_len: usize,
    pub channels: usize,
    pub heads: usize,
}

/// Hyper-parameters of one AdamW update over a range, already resolved for this step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate for this step (after the schedule).
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay for this range (0 for ranges the mask excludes).
    pub weight_decay: f32,
    /// Multiplier applied to every gradient before use (global-norm clipping folds in here).
    pub grad_scale: f32,
    /// 1 - beta1^t and 1 - beta2^t for the 1-based step t.
    pub bias_correction1: f32,
    pub bias_correction2: f32,
}

/// The operations the GPT model needs. Every kernel takes views (`Ref`/`Mut`) so the model can
/// address per-layer slices of stacked tensors, and shapes so launchers can check their
/// preconditions and return [`BackendError`] instead of panicking.
pub trait Backend: Send + Sync + 'static {
    /// An owned device buffer of the backend's storage type (f32 on CPU; bf16 on CUDA).
    type Buf: Send;
    /// An owned device buffer of u32 token ids.
    type Tokens: Send;
    /// Optimizer state for the flat parameter space: AdamW m and v (fp32), plus fp32 master
    /// weights on backends whose parameters are stored in lower precision.
    type OptState: Send;
    /// A shared view of part of a `Buf`.
    type Ref<'a>: Copy
    where
        Self: 'a;
    /// An exclusive view of part of a `Buf`.
    type Mut<'a>
    where
        Self: 'a;

    /// A short name for logs ("cpu-f32", "cuda-bf16").
    fn name(&self) -> &'static str;

    /// The device's peak dense FLOP/s for this backend's matrix products, the denominator of
    /// model FLOPs utilisation (MFU).
    fn peak_flops(&self) -> f64;

    /// The most device memory this backend's buffers have held at once, where it keeps
    /// count (the CUDA backend); `None` on the host.
    fn peak_memory_bytes(&self) -> Option<u64> {
        None
    }

    /// Collectives on this backend's own buffers for the gang `host` connects (NCCL on the
    /// CUDA backend), as `choice` asks; `Ok(None)` keeps the host ring. Every rank of a gang
    /// calls it at the same point, and all of them get the same answer.
    fn device_collective(
        &self,
        host: &mut dyn crate::collective::Collective,
        choice: crate::collective::device::CollectiveChoice,
    ) -> crate::collective::device::DeviceCollectiveResult<Self>
    where
        Self: Sized,
    {
        crate::collective::device::host_only(self, host, choice)
    }

    // === memory ===

    /// A zero-filled buffer of `len` elements in the backend's storage precision.
    fn alloc(&self, len: usize) -> Result<Self::Buf, BackendError>;
    /// A zero-filled buffer of `len` elements of at least fp32 precision: layernorm mean and
    /// rstd, per-position losses, attention state and scratch.
    fn alloc_f32(&self, len: usize) -> Result<Self::Buf, BackendError>;
    /// Number of elements in `buf`.
    fn buf_len(&self, buf: &Self::Buf) -> usize;
    /// Copies `src` into `dst[offset..offset + src.len()]`, converting from f32.
    fn upload(&self, dst: &mut Self::Buf, offset: usize, src: &[f32]) -> Result<(), BackendError>;
    /// Copies `src[offset..offset + dst.len()]` into `dst`, converting to f32.
    fn download(&self, src: &Self::Buf, offset: usize, dst: &mut [f32])
    -> Result<(), BackendError>;
    /// A zero-filled token buffer of `len` ids.
    fn alloc_tokens(&self, len: usize) -> Result<Self::Tokens, BackendError>;
    /// Copies `src` into the start of `dst`.
    fn upload_tokens(&self, dst: &mut Self::Tokens, src: &[u32]) -> Result<(), BackendError>;
    /// A shared view of `buf[range]`.
    fn view<'a>(
        &self,
        buf: &'a Self::Buf,
        range: Range<usize>,
    ) -> Result<Self::Ref<'a>, BackendError>;
    /// An exclusive view of `buf[range]`.
    fn view_mut<'a>(
        &self,
        buf: &'a mut Self::Buf,
        range: Range<usize>,
    ) -> Result<Self::Mut<'a>, BackendError>;
    /// Exclusive views of several disjoint ranges of one buffer, in the order given.
    fn views_mut<'a, const N: usize>(
        &self,
        buf: &'a mut Self::Buf,
        ranges: [Range<usize>; N],
    ) -> Result<[Self::Mut<'a>; N], BackendError>;
    /// `x = 0`.
    fn fill_zero(&self, x: Self::Mut<'_>) -> Result<(), BackendError>;
    /// `x *= factor`.
    fn scale(&self, x: Self::Mut<'_>, factor: f32) -> Result<(), BackendError>;

    // === embedding ===

    /// `out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]`; out (B,T,C), wte (Vp,C), wpe (>=T,C).
    fn encoder_forward(
        &self,
        out: Self::Mut<'_>,
        tokens: &Self::Tokens,
        wte: Self::Ref<'_>,
        wpe: Self::Ref<'_>,
        batch: usize,
        seq_len: usize,
        channels: usize,
    ) -> Result<(), BackendError>;
    /// `dwte[tokens[b,t],:] += dout[b,t,:]`, `dwpe[t,:] += dout[b,t,:]` (deterministic order).
    fn encoder_backward(
        &self,
        dwte: Self::Mut<'_>,
        dwpe: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        tokens: &Self::Tokens,
        batch: usize,
        seq_len: usize,
        channels: usize,
    ) -> Result<(), BackendError>;

    // === layernorm ===

    /// Per row of `inp` (rows, C): `out = (x - mean) * rstd * weight + bias`, saving mean and
    /// rstd (rows) for the backward pass; eps = 1e-5.
    fn layernorm_forward(
        &self,
        out: Self::Mut<'_>,
        mean: Self::Mut<'_>,
        rstd: Self::Mut<'_>,
        inp: Self::Ref<'_>,
        weight: Self::Ref<'_>,
        bias: Self::Ref<'_>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError>;
    /// ACCUMULATES into `dinp` (rows, C), `dweight` (C) and `dbias` (C).
    fn layernorm_backward(
        &self,
        dinp: Self::Mut<'_>,
        dweight: Self::Mut<'_>,
        dbias: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        inp: Self::Ref<'_>,
        weight: Self::Ref<'_>,
        mean: Self::Ref<'_>,
        rstd: Self::Ref<'_>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError>;

    // === matmul ===

    /// `out (m×n) = op(a)·op(b) + bias` (bias broadcast over rows), or `out += op(a)·op(b)` when
    /// `accumulate` (bias must then be `None`). Forward uses it as `inp · Wᵀ + b`; backward as
    /// `dinp = dout · W` and `dW += doutᵀ · inp`.
    fn matmul(
        &self,
        out: Self::Mut<'_>,
        a: Self::Ref<'_>,
        b: Self::Ref<'_>,
        bias: Option<Self::Ref<'_>>,
        shape: MatmulShape,
        accumulate: bool,
    ) -> Result<(), BackendError>;
    /// `dbias[j] += Σ_i dout[i, j]` over `rows` rows of `cols` columns (deterministic order).
    fn bias_backward(
        &self,
        dbias: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError>;

    // === attention ===

    /// Elements of per-layer state the forward saves for the backward (CPU: the softmax
    /// probabilities, B·NH·T·T; a flash kernel: the log-sum-exp, B·NH·T).
    fn attention_state_len(&self, shape: AttentionShape) -> usize;
    /// Elements of scratch the backward needs (shared by all layers).
    fn attention_scratch_len(&self, shape: AttentionShape) -> usize;
    /// Causal multi-head attention: out (B,T,C) from qkv (B,T,3C) (q | k | v, heads contiguous
    /// within each), scale 1/sqrt(C/NH). Writes `state`.
    fn attention_forward(
        &self,
        out: Self::Mut<'_>,
        state: Self::Mut<'_>,
        qkv: Self::Ref<'_>,
        shape: AttentionShape,
    ) -> Result<(), BackendError>;
    /// OVERWRITES `dqkv` (B,T,3C) given `dout` (B,T,C) and the forward's `qkv`, `out`, `state`.
    fn attention_backward(
        &self,
        dqkv: Self::Mut<'_>,
        scratch: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        qkv: Self::Ref<'_>,
        out: Self::Ref<'_>,
        state: Self::Ref<'_>,
        shape: AttentionShape,
    ) -> Result<(), BackendError>;

    // === pointwise ===

    /// `out = gelu(inp)`, tanh approximation (GPT-2).
    fn gelu_forward(&self, out: Self::Mut<'_>, inp: Self::Ref<'_>) -> Result<(), BackendError>;
    /// OVERWRITES `dinp = gelu'(inp) * dout`.
    fn gelu_backward(
        &self,
        dinp: Self::Mut<'_>,
        inp: Self::Ref<'_>,
        dout: Self::Ref<'_>,
    ) -> Result<(), BackendError>;
    /// `out = a + b`.
    fn residual_forward(
        &self,
        out: Self::Mut<'_>,
        a: Self::Ref<'_>,
        b: Self::Ref<'_>,
    ) -> Result<(), BackendError>;
    /// Dropout with a mask from a counter: `out[i] = inp[i]·keep/(1 - p)`, added to `out`
    /// when `accumulate`, where element i keeps with [`dropout_keeps`]`(key, offset + i)`. The
    /// same key and offsets give the same mask on every backend and every split of the
    /// elements (a rank's micro-batch passes its rows' global offset).
    #[allow(clippy::too_many_arguments)]
    fn dropout(
        &self,
        out: Self::Mut<'_>,
        inp: Self::Ref<'_>,
        p: f32,
        key: u64,
        offset: u64,
        accumulate: bool,
    ) -> Result<(), BackendError>;

    // === Llama family (kernels: trainer/src/llama/, one family per file) ===

    /// `out[r,:] = wte[tokens[r],:]` for the first `rows` tokens; out (rows, C). No position
    /// embedding: the Llama family rotates q and k instead ([`Backend::rope`]).
    fn embedding_forward(
        &self,
        out: Self::Mut<'_>,
        tokens: &Self::Tokens,
        wte: Self::Ref<'_>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError>;
    /// `dwte[tokens[r],:] += dout[r,:]` (deterministic order).
    fn embedding_backward(
        &self,
        dwte: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        tokens: &Self::Tokens,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError>;
    /// Per row of `inp` (rows, C): `rstd = 1/sqrt(mean(x²) + eps)`, `out = weight ∘ (x·rstd)`,
    /// saving `rstd` (rows, fp32) for the backward pass.
    fn rmsnorm_forward(
        &self,
        out: Self::Mut<'_>,
        rstd: Self::Mut<'_>,
        inp: Self::Ref<'_>,
        weight: Self::Ref<'_>,
        rows: usize,
        channels: usize,
        eps: f64,
    ) -> Result<(), BackendError>;
    /// ACCUMULATES into `dinp` (rows, C) and `dweight` (C).
    fn rmsnorm_backward(
        &self,
        dinp: Self::Mut<'_>,
        dweight: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        inp: Self::Ref<'_>,
        weight: Self::Ref<'_>,
        rstd: Self::Ref<'_>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError>;
    /// Rotates `x` (B, T, heads, head_dim) in place: dimension `i` of each head pairs with
    /// `i + head_dim/2` (Hugging Face's `rotate_half`), by the angles whose cosines and sines
    /// `cos` and `sin` hold ((≥T, head_dim/2), fp32). `inverse` rotates back: the backward
    /// pass of a rotation is its transpose.
    fn rope(
        &self,
        x: Self::Mut<'_>,
        cos: Self::Ref<'_>,
        sin: Self::Ref<'_>,
        shape: RopeShape,
        inverse: bool,
    ) -> Result<(), BackendError>;
    /// `out = silu(gate) ∘ up`.
    fn swiglu_forward(
        &self,
        out: Self::Mut<'_>,
        gate: Self::Ref<'_>,
        up: Self::Ref<'_>,
    ) -> Result<(), BackendError>;
    /// OVERWRITES `dgate` and `dup` given `dout` and the forward's inputs.
    fn swiglu_backward(
        &self,
        dgate: Self::Mut<'_>,
        dup: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        gate: Self::Ref<'_>,
        up: Self::Ref<'_>,
    ) -> Result<(), BackendError>;
    /// Elements of per-layer state [`Backend::gqa_attention_forward`] saves for the backward.
    fn gqa_state_len(&self, shape: GqaShape) -> usize;
    /// Causal grouped-query attention: q (B,T,H,D), k and v (B,T,KV,D) → out (B,T,H,D), query
    /// head `h` reading key/value head `h / (H/KV)`, scale 1/sqrt(D). Writes `state`.
    fn gqa_attention_forward(
        &self,
        out: Self::Mut<'_>,
        state: Self::Mut<'_>,
        q: Self::Ref<'_>,
        k: Self::Ref<'_>,
        v: Self::Ref<'_>,
        shape: GqaShape,
    ) -> Result<(), BackendError>;
    /// OVERWRITES `dq`, `dk` and `dv` given `dout` and the forward's inputs, output and state.
    fn gqa_attention_backward(
        &self,
        dq: Self::Mut<'_>,
        dk: Self::Mut<'_>,
        dv: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        q: Self::Ref<'_>,
        k: Self::Ref<'_>,
        v: Self::Ref<'_>,
        out: Self::Ref<'_>,
        state: Self::Ref<'_>,
        shape: GqaShape,
    ) -> Result<(), BackendError>;

    // === loss ===

    /// Fused softmax + cross-entropy + logits gradient over `rows` rows of `padded_vocab`
    /// columns, of which only the first `vocab` take part. Writes `losses[r] = -log p[target]`
    /// and REPLACES the logits with `dloss · (softmax - onehot)` (padded columns set to 0).
    fn softmax_cross_entropy(
        &self,
        logits: Self::Mut<'_>,
        losses: Self::Mut<'_>,
        targets: &Self::Tokens,
        rows: usize,
        vocab: usize,
        padded_vocab: usize,
        dloss: f64,
    ) -> Result<(), BackendError>;

    // === reductions (fixed order: deterministic) ===

    /// `Σ x` returned to the host.
    fn sum(&self, x: Self::Ref<'_>) -> Result<f64, BackendError>;
    /// `Σ x²` returned to the host (the global gradient norm is its square root, after a
    /// cross-rank sum when sharded).
    fn sum_squares(&self, x: Self::Ref<'_>) -> Result<f64, BackendError>;

    // === optimizer ===

    /// Optimizer state for the part `owned` of a flat parameter buffer (the whole space, or a
    /// rank's shard): moments zeroed, master weights (where the backend keeps them) copied
    /// from `params[owned]`.
    fn alloc_opt_state(
        &self,
        params: &Self::Buf,
        owned: Range<usize>,
    ) -> Result<Self::OptState, BackendError>;
    /// Bytes the optimizer state occupies on the device (the trainer's memory accounting).
    fn opt_state_bytes(&self, state: &Self::OptState) -> usize;
    /// One AdamW update of `params[range]` from `grads` (the gradient of exactly that range)
    /// and the state's moments there; `range` must lie inside the state's owned range.
    fn adamw_update(
        &self,
        params: &mut Self::Buf,
        grads: Self::Ref<'_>,
        state: &mut Self::OptState,
        range: Range<usize>,
        step: &AdamWStep,
    ) -> Result<(), BackendError>;
    /// Copies the state's moments `m` and `v` (fp32, each the length of the owned range) out.
    fn download_opt_state(
        &self,
        state: &Self::OptState,
        m: &mut [f32],
        v: &mut [f32],
    ) -> Result<(), BackendError>;
    /// Copies the fp32 master weights of the owned range into `master` and returns true, on
    /// backends that keep them; returns false (and leaves `master`) on the others, whose
    /// parameters are their own masters.
    fn download_master_weights(
        &self,
        state: &Self::OptState,
        master: &mut [f32],
    ) -> Result<bool, BackendError> {
        let _ = (state, master);
        Ok(false)
    }
    /// Restores moments saved with [`Backend::download_opt_state`], and the master weights
    /// saved with [`Backend::download_master_weights`] where given (else, where the backend
    /// keeps masters, they are refreshed from `params`).
    fn upload_opt_state(
        &self,
        state: &mut Self::OptState,
        params: &Self::Buf,
        m: &[f32],
        v: &[f32],
        master: Option<&[f32]>,
    ) -> Result<(), BackendError>;
}

/// Checks that a range lies inside a buffer of `len` elements.
pub(crate) fn check_range(range: &Range<usize>, len: usize) -> Result<(), BackendError> {
    if range.start > range.end || range.end > len {
        return Err(BackendError::OutOfBounds {
            start: range.start,
            end: range.end,
            len,
        });
    }
    Ok(())
}
