//! The CPU backend: [`CpuBackend<F>`] implements [`Backend`] over `Vec<F>` buffers, for `F` =
//! f32 (training) or f64 (gradient checks run the same kernels). Kernels live one family per
//! file under `cpu/`; all are parallel with rayon and deterministic (each output element is
//! produced by one task with a fixed summation order; reductions use fixed chunks).
// Kernels take one argument per tensor plus dimensions, like CUDA launchers.
#![allow(clippy::too_many_arguments)]

pub mod adamw;
pub mod attention;
pub mod embedding;
mod float;
pub mod layernorm;
pub mod matmul;
pub mod pointwise;
pub mod reduce;
pub mod softmax_xent;

pub use float::Float;

use super::{
    AdamWStep, AttentionShape, Backend, BackendError, GqaShape, MatmulShape, RopeShape, check_range,
};
use crate::llama;
use rayon::prelude::*;
use std::marker::PhantomData;
use std::ops::Range;

/// Rows per parallel task for row-wise kernels (layernorm, embedding).
pub(crate) const ROW_GRAIN: usize = 8;
/// Columns per task for column reductions (bias and layernorm parameter gradients).
pub(crate) const COL_CHUNK: usize = 64;

/// Returns a shape error unless `got == want`.
pub(crate) fn check_len(
    op: &'static str,
    name: &'static str,
    want: usize,
    got: usize,
) -> Result<(), BackendError> {
    if want != got {
        return Err(BackendError::ShapeMismatch {
            op,
            name,
            want,
            got,
        });
    }
    Ok(())
}

/// Copies a kernel's result into the view it writes, refusing a view of another length.
fn copy_into<F: Float>(
    op: &'static str,
    name: &'static str,
    dst: &mut [F],
    src: &[F],
) -> Result<(), BackendError> {
    check_len(op, name, src.len(), dst.len())?;
    dst.copy_from_slice(src);
    Ok(())
}

/// `Σ a[i]·b[i]` with 8 independent partial sums (so the loop vectorises) combined in a
/// fixed order: deterministic, and the same order for every call of the same length.
#[inline(always)]
pub(crate) fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [F::ZERO; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = F::ZERO;
    for (&x, &y) in ar.iter().zip(br) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `Σ f(a[i])` with 8 independent partial sums combined in a fixed order.
#[inline(always)]
pub(crate) fn sum_map<F: Float>(a: &[F], f: impl Fn(F) -> F) -> F {
    let mut acc = [F::ZERO; 8];
    let chunks = a.chunks_exact(8);
    let rest = chunks.remainder();
    for x in chunks {
        for i in 0..8 {
            acc[i] += f(x[i]);
        }
    }
    let mut tail = F::ZERO;
    for &x in rest {
        tail += f(x);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Runs `f(first_col, chunk)` on fixed column chunks of `x` in parallel.
pub(crate) fn par_col_chunks<F: Float>(x: &mut [F], f: impl Fn(usize, &mut [F]) + Sync) {
    x.par_chunks_mut(COL_CHUNK)
        .enumerate()
        .for_each(|(i, c)| f(i * COL_CHUNK, c));
}

/// The CPU backend over element type `F`. Threads come from rayon's global pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend<F: Float = f32> {
    _element: PhantomData<F>,
}

impl<F: Float> CpuBackend<F> {
    pub fn new() -> Self {
        Self {
            _element: PhantomData,
        }
    }
}

/// AdamW moments for the whole flat parameter space (parameters are already full precision,
/// so no master copy is kept).
#[derive(Debug, Clone)]
pub struct CpuOptState<F> {
    /// The part of the flat parameter space the moments cover.
    pub owned: Range<usize>,
    pub m: Vec<F>,
    pub v: Vec<F>,
}

impl<F: Float> Backend for CpuBackend<F> {
    type Buf = Vec<F>;
    type Tokens = Vec<u32>;
    type OptState = CpuOptState<F>;
    type Ref<'a> = &'a [F];
    type Mut<'a> = &'a mut [F];

    fn name(&self) -> &'static str {
        F::BACKEND_NAME
    }

    fn peak_flops(&self) -> f64 {
        cpu_peak_flops(std::mem::size_of::<F>())
    }

    fn alloc(&self, len: usize) -> Result<Vec<F>, BackendError> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|e| BackendError::Allocation {
                len,
                detail: e.to_string(),
            })?;
        v.resize(len, F::ZERO);
        Ok(v)
    }

    fn alloc_f32(&self, len: usize) -> Result<Vec<F>, BackendError> {
        self.alloc(len)
    }

    fn buf_len(&self, buf: &Vec<F>) -> usize {
        buf.len()
    }

    fn upload(&self, dst: &mut Vec<F>, offset: usize, src: &[f32]) -> Result<(), BackendError> {
        let range = offset..offset.saturating_add(src.len());
        check_range(&range, dst.len())?;
        for (d, &s) in dst[range].iter_mut().zip(src) {
            *d = F::from_f32(s);
        }
        Ok(())
    }

    fn download(&self, src: &Vec<F>, offset: usize, dst: &mut [f32]) -> Result<(), BackendError> {
        let range = offset..offset.saturating_add(dst.len());
        check_range(&range, src.len())?;
        for (d, &s) in dst.iter_mut().zip(&src[range]) {
            *d = s.to_f32();
        }
        Ok(())
    }

    fn alloc_tokens(&self, len: usize) -> Result<Vec<u32>, BackendError> {
        Ok(vec![0; len])
    }

    fn upload_tokens(&self, dst: &mut Vec<u32>, src: &[u32]) -> Result<(), BackendError> {
        check_range(&(0..src.len()), dst.len())?;
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn view<'a>(&self, buf: &'a Vec<F>, range: Range<usize>) -> Result<&'a [F], BackendError> {
        check_range(&range, buf.len())?;
        Ok(&buf[range])
    }

    fn view_mut<'a>(
        &self,
        buf: &'a mut Vec<F>,
        range: Range<usize>,
    ) -> Result<&'a mut [F], BackendError> {
        check_range(&range, buf.len())?;
        Ok(&mut buf[range])
    }

    fn views_mut<'a, const N: usize>(
        &self,
        buf: &'a mut Vec<F>,
        ranges: [Range<usize>; N],
    ) -> Result<[&'a mut [F]; N], BackendError> {
        for r in &ranges {
            check_range(r, buf.len())?;
        }
        // Visit ranges by start, carving each off the remaining tail.
        let mut order: [usize; N] = std::array::from_fn(|i| i);
        order.sort_by_key(|&i| ranges[i].start);
        for w in order.windows(2) {
            let (a, b) = (&ranges[w[0]], &ranges[w[1]]);
            if a.end > b.start && !a.is_empty() && !b.is_empty() {
                return Err(BackendError::OverlappingRanges {
                    a: a.clone(),
                    b: b.clone(),
                });
            }
        }
        let mut out: [Option<&'a mut [F]>; N] = std::array::from_fn(|_| None);
        let mut rest: &'a mut [F] = buf.as_mut_slice();
        let mut consumed = 0;
        for &i in &order {
            let r = &ranges[i];
            if r.is_empty() {
                out[i] = Some(&mut []);
                continue;
            }
            let tail = std::mem::take(&mut rest);
            let (_, tail) = tail.split_at_mut(r.start - consumed);
            let (mine, tail) = tail.split_at_mut(r.len());
            out[i] = Some(mine);
            rest = tail;
            consumed = r.end;
        }
        Ok(out.map(|v| v.unwrap_or_default()))
    }

    fn fill_zero(&self, x: &mut [F]) -> Result<(), BackendError> {
        pointwise::fill_zero(x);
        Ok(())
    }

    fn scale(&self, x: &mut [F], factor: f32) -> Result<(), BackendError> {
        pointwise::scale(x, F::from_f32(factor));
        Ok(())
    }

    fn encoder_forward(
        &self,
        out: &mut [F],
        tokens: &Vec<u32>,
        wte: &[F],
        wpe: &[F],
        batch: usize,
        seq_len: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        let n = (batch * seq_len).min(tokens.len());
        embedding::encoder_forward(out, &tokens[..n], wte, wpe, batch, seq_len, channels)
    }

    fn encoder_backward(
        &self,
        dwte: &mut [F],
        dwpe: &mut [F],
        dout: &[F],
        tokens: &Vec<u32>,
        batch: usize,
        seq_len: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        let n = (batch * seq_len).min(tokens.len());
        embedding::encoder_backward(dwte, dwpe, dout, &tokens[..n], batch, seq_len, channels)
    }

    fn layernorm_forward(
        &self,
        out: &mut [F],
        mean: &mut [F],
        rstd: &mut [F],
        inp: &[F],
        weight: &[F],
        bias: &[F],
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        layernorm::layernorm_forward(out, mean, rstd, inp, weight, bias, rows, channels)
    }

    fn layernorm_backward(
        &self,
        dinp: &mut [F],
        dweight: &mut [F],
        dbias: &mut [F],
        dout: &[F],
        inp: &[F],
        weight: &[F],
        mean: &[F],
        rstd: &[F],
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        layernorm::layernorm_backward(
            dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, channels,
        )
    }

    fn matmul(
        &self,
        out: &mut [F],
        a: &[F],
        b: &[F],
        bias: Option<&[F]>,
        shape: MatmulShape,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        matmul::matmul(out, a, b, bias, shape, accumulate)
    }

    fn bias_backward(
        &self,
        dbias: &mut [F],
        dout: &[F],
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError> {
        matmul::bias_backward(dbias, dout, rows, cols)
    }

    fn attention_state_len(&self, s: AttentionShape) -> usize {
        s.batch * s.heads * s.seq_len * s.seq_len
    }

    fn attention_scratch_len(&self, s: AttentionShape) -> usize {
        s.batch * s.heads * s.seq_len * s.seq_len
    }

    fn attention_forward(
        &self,
        out: &mut [F],
        state: &mut [F],
        qkv: &[F],
        shape: AttentionShape,
    ) -> Result<(), BackendError> {
        attention::attention_forward(out, state, qkv, shape)
    }

    fn attention_backward(
        &self,
        dqkv: &mut [F],
        scratch: &mut [F],
        dout: &[F],
        qkv: &[F],
        _out: &[F],
        state: &[F],
        shape: AttentionShape,
    ) -> Result<(), BackendError> {
        attention::attention_backward(dqkv, scratch, dout, qkv, state, shape)
    }

    fn gelu_forward(&self, out: &mut [F], inp: &[F]) -> Result<(), BackendError> {
        pointwise::gelu_forward(out, inp)
    }

    fn gelu_backward(&self, dinp: &mut [F], inp: &[F], dout: &[F]) -> Result<(), BackendError> {
        pointwise::gelu_backward(dinp, inp, dout)
    }

    fn residual_forward(&self, out: &mut [F], a: &[F], b: &[F]) -> Result<(), BackendError> {
        pointwise::residual_forward(out, a, b)
    }

    fn dropout(
        &self,
        out: &mut [F],
        inp: &[F],
        p: f32,
        key: u64,
        offset: u64,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        pointwise::dropout(out, inp, p, key, offset, accumulate)
    }

    fn embedding_forward(
        &self,
        out: &mut [F],
        tokens: &Vec<u32>,
        wte: &[F],
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        let n = rows.min(tokens.len());
        embedding::embedding_forward(out, &tokens[..n], wte, rows, channels)
    }

    fn embedding_backward(
        &self,
        dwte: &mut [F],
        dout: &[F],
        tokens: &Vec<u32>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        let n = rows.min(tokens.len());
        embedding::embedding_backward(dwte, dout, &tokens[..n], rows, channels)
    }

    fn rmsnorm_forward(
        &self,
        out: &mut [F],
        rstd: &mut [F],
        inp: &[F],
        weight: &[F],
        rows: usize,
        channels: usize,
        eps: f64,
    ) -> Result<(), BackendError> {
        let shape = llama::rmsnorm::NormShape {
            rows,
            dim: channels,
        };
        let (y, r) = llama::rmsnorm::rmsnorm_forward(inp, weight, eps, shape)?;
        copy_into("rmsnorm_forward", "out", out, &y)?;
        copy_into("rmsnorm_forward", "rstd", rstd, &r)
    }

    fn rmsnorm_backward(
        &self,
        dinp: &mut [F],
        dweight: &mut [F],
        dout: &[F],
        inp: &[F],
        weight: &[F],
        rstd: &[F],
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        let shape = llama::rmsnorm::NormShape {
            rows,
            dim: channels,
        };
        let dx = llama::rmsnorm::rmsnorm_backward(dout, inp, weight, rstd, dweight, shape)?;
        check_len("rmsnorm_backward", "dinp", dx.len(), dinp.len())?;
        for (d, x) in dinp.iter_mut().zip(dx) {
            *d += x;
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut [F],
        cos: &[F],
        sin: &[F],
        shape: RopeShape,
        inverse: bool,
    ) -> Result<(), BackendError> {
        llama::rope::rotate_by("rope", x, cos, sin, shape, inverse)
    }

    fn swiglu_forward(&self, out: &mut [F], gate: &[F], up: &[F]) -> Result<(), BackendError> {
        let h = llama::swiglu::swiglu_forward(gate, up)?;
        copy_into("swiglu_forward", "out", out, &h)
    }

    fn swiglu_backward(
        &self,
        dgate: &mut [F],
        dup: &mut [F],
        dout: &[F],
        gate: &[F],
        up: &[F],
    ) -> Result<(), BackendError> {
        let (dg, du) = llama::swiglu::swiglu_backward(dout, gate, up)?;
        copy_into("swiglu_backward", "dgate", dgate, &dg)?;
        copy_into("swiglu_backward", "dup", dup, &du)
    }

    fn gqa_state_len(&self, s: GqaShape) -> usize {
        s.batch * s.heads * s.seq_len * s.seq_len
    }

    fn gqa_attention_forward(
        &self,
        out: &mut [F],
        state: &mut [F],
        q: &[F],
        k: &[F],
        v: &[F],
        shape: GqaShape,
    ) -> Result<(), BackendError> {
        let (y, probs) = llama::attention::attention_forward(q, k, v, shape)?;
        copy_into("gqa_attention_forward", "out", out, &y)?;
        copy_into("gqa_attention_forward", "state", state, &probs)
    }

    fn gqa_attention_backward(
        &self,
        dq: &mut [F],
        dk: &mut [F],
        dv: &mut [F],
        dout: &[F],
        q: &[F],
        k: &[F],
        v: &[F],
        _out: &[F],
        state: &[F],
        shape: GqaShape,
    ) -> Result<(), BackendError> {
        let g = llama::attention::attention_backward(dout, q, k, v, state, shape)?;
        copy_into("gqa_attention_backward", "dq", dq, &g.dq)?;
        copy_into("gqa_attention_backward", "dk", dk, &g.dk)?;
        copy_into("gqa_attention_backward", "dv", dv, &g.dv)
    }

    fn softmax_cross_entropy(
        &self,
        logits: &mut [F],
        losses: &mut [F],
        targets: &Vec<u32>,
        rows: usize,
        vocab: usize,
        padded_vocab: usize,
        dloss: f64,
    ) -> Result<(), BackendError> {
        let n = rows.min(targets.len());
        softmax_xent::softmax_cross_entropy(
            logits,
            losses,
            &targets[..n],
            rows,
            vocab,
            padded_vocab,
            F::from_f64(dloss),
        )
    }

    fn sum(&self, x: &[F]) -> Result<f64, BackendError> {
        Ok(reduce::sum(x))
    }

    fn sum_squares(&self, x: &[F]) -> Result<f64, BackendError> {
        Ok(reduce::sum_squares(x))
    }

    fn alloc_opt_state(
        &self,
        params: &Vec<F>,
        owned: Range<usize>,
    ) -> Result<CpuOptState<F>, BackendError> {
        check_range(&owned, params.len())?;
        Ok(CpuOptState {
            m: self.alloc(owned.len())?,
            v: self.alloc(owned.len())?,
            owned,
        })
    }

    fn opt_state_bytes(&self, state: &CpuOptState<F>) -> usize {
        (state.m.len() + state.v.len()) * std::mem::size_of::<F>()
    }

    fn adamw_update(
        &self,
        params: &mut Vec<F>,
        grads: &[F],
        state: &mut CpuOptState<F>,
        range: Range<usize>,
        step: &AdamWStep,
    ) -> Result<(), BackendError> {
        check_range(&range, params.len())?;
        check_len("adamw_update", "grads", range.len(), grads.len())?;
        let owned = &state.owned;
        if range.start < owned.start || range.end > owned.end {
            return Err(BackendError::OutOfBounds {
                start: range.start,
                end: range.end,
                len: owned.end,
            });
        }
        let local = range.start - owned.start..range.end - owned.start;
        adamw::adamw_update(
            &mut params[range],
            grads,
            &mut state.m[local.clone()],
            &mut state.v[local],
            step,
        );
        Ok(())
    }

    fn download_opt_state(
        &self,
        state: &CpuOptState<F>,
        m: &mut [f32],
        v: &mut [f32],
    ) -> Result<(), BackendError> {
        check_len("download_opt_state", "m", state.m.len(), m.len())?;
        check_len("download_opt_state", "v", state.v.len(), v.len())?;
        self.download(&state.m, 0, m)?;
        self.download(&state.v, 0, v)
    }

    fn upload_opt_state(
        &self,
        state: &mut CpuOptState<F>,
        _params: &Vec<F>,
        m: &[f32],
        v: &[f32],
        _master: Option<&[f32]>,
    ) -> Result<(), BackendError> {
        check_len("upload_opt_state", "m", state.m.len(), m.len())?;
        check_len("upload_opt_state", "v", state.v.len(), v.len())?;
        self.upload(&mut state.m, 0, m)?;
        self.upload(&mut state.v, 0, v)
    }
}

/// Peak FLOP/s of the cores rayon uses: cores × clock × FMA lanes × 2 FLOPs × 2 FMA units.
/// The clock is read from /proc/cpuinfo (2.5 GHz where it cannot be read).
fn cpu_peak_flops(element_bytes: usize) -> f64 {
    let cores = rayon::current_num_threads() as f64;
    let ghz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(2.5, |mhz| mhz / 1000.0);
    let vector_bytes = vector_width_bytes();
    let lanes = (vector_bytes / element_bytes).max(1) as f64;
    cores * ghz * 1e9 * lanes * 2.0 * 2.0
}

#[cfg(target_arch = "x86_64")]
fn vector_width_bytes() -> usize {
    if std::arch::is_x86_feature_detected!("avx512f") {
        64
    } else if std::arch::is_x86_feature_detected!("avx2") {
        32
    } else {
        16
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn vector_width_bytes() -> usize {
    16
}
