//! CPU causal multi-head self-attention, forward and backward.
//!
//! ```text
//! forward:  P[b,h] = softmax(mask(Q Kᵀ · scale))   parallel over (b, h)   → state (B,NH,T,T)
//!           out[b,t] = Σ_t2 P[b,h,t,t2] V[b,t2]    parallel over (b, t)   → out (B,T,C)
//! backward: dS[b,h] = P ∘ (dP - rowsum(P ∘ dP)) · scale, dP = dOut Vᵀ
//!                                                   parallel over (b, h)   → scratch (B,NH,T,T)
//!           dq, dk, dv for row (b, t), all heads   parallel over (b, t)   → dqkv (B,T,3C)
//! ```
//! Every output element is written by one task with a fixed summation order: deterministic.

use super::{Float, check_len, dot};
use crate::backend::{AttentionShape, BackendError};
use rayon::prelude::*;

fn check_shape(op: &'static str, s: AttentionShape) -> Result<usize, BackendError> {
    if s.heads == 0 || !s.channels.is_multiple_of(s.heads) {
        return Err(BackendError::BadDimensions {
            op,
            detail: format!("heads ({}) must divide channels ({})", s.heads, s.channels),
        });
    }
    Ok(s.channels / s.heads)
}

/// Writes the probabilities P (B,NH,T,T; zero above the diagonal) and out (B,T,C).
pub fn attention_forward<F: Float>(
    out: &mut [F],
    probs: &mut [F],
    qkv: &[F],
    s: AttentionShape,
) -> Result<(), BackendError> {
    const OP: &str = "attention_forward";
    let hs = check_shape(OP, s)?;
    let (b_, t_, c, nh) = (s.batch, s.seq_len, s.channels, s.heads);
    check_len(OP, "out", b_ * t_ * c, out.len())?;
    check_len(OP, "qkv", b_ * t_ * 3 * c, qkv.len())?;
    check_len(OP, "state", b_ * nh * t_ * t_, probs.len())?;
    if t_ == 0 || b_ == 0 || c == 0 {
        return Ok(());
    }
    let scale = F::from_f64(1.0 / (hs as f64).sqrt());
    probs
        .par_chunks_mut(t_ * t_)
        .enumerate()
        .for_each(|(bh, p)| {
            let (b, h) = (bh / nh, bh % nh);
            for t in 0..t_ {
                let q = &qkv[(b * t_ + t) * 3 * c + h * hs..][..hs];
                let row = &mut p[t * t_..(t + 1) * t_];
                let mut max = F::from_f64(f64::NEG_INFINITY);
                for (t2, r) in row.iter_mut().enumerate().take(t + 1) {
                    let k = &qkv[(b * t_ + t2) * 3 * c + c + h * hs..][..hs];
                    *r = dot(q, k) * scale;
                    max = max.max(*r);
                }
                let mut sum = F::ZERO;
                for r in row.iter_mut().take(t + 1) {
                    *r = (*r - max).fast_exp();
                    sum += *r;
                }
                let inv = F::ONE / sum;
                for r in row.iter_mut().take(t + 1) {
                    *r *= inv;
                }
                for r in row.iter_mut().skip(t + 1) {
                    *r = F::ZERO;
                }
            }
        });
    let probs = &*probs;
    out.par_chunks_mut(c).enumerate().for_each(|(bt, o)| {
        let (b, t) = (bt / t_, bt % t_);
        o.fill(F::ZERO);
        for h in 0..nh {
            let p = &probs[((b * nh + h) * t_ + t) * t_..][..t + 1];
            let oh = &mut o[h * hs..(h + 1) * hs];
            for (t2, &w) in p.iter().enumerate() {
                let v = &qkv[(b * t_ + t2) * 3 * c + 2 * c + h * hs..][..hs];
                for (o, &x) in oh.iter_mut().zip(v) {
                    *o += w * x;
                }
            }
        }
    });
    Ok(())
}

/// Overwrites dqkv (B,T,3C); `scratch` (B,NH,T,T) receives the score gradients.
pub fn attention_backward<F: Float>(
    dqkv: &mut [F],
    scratch: &mut [F],
    dout: &[F],
    qkv: &[F],
    probs: &[F],
    s: AttentionShape,
) -> Result<(), BackendError> {
    const OP: &str = "attention_backward";
    let hs = check_shape(OP, s)?;
    let (b_, t_, c, nh) = (s.batch, s.seq_len, s.channels, s.heads);
    check_len(OP, "dqkv", b_ * t_ * 3 * c, dqkv.len())?;
    check_len(OP, "dout", b_ * t_ * c, dout.len())?;
    check_len(OP, "qkv", b_ * t_ * 3 * c, qkv.len())?;
    check_len(OP, "state", b_ * nh * t_ * t_, probs.len())?;
    check_len(OP, "scratch", b_ * nh * t_ * t_, scratch.len())?;
    if t_ == 0 || b_ == 0 || c == 0 {
        return Ok(());
    }
    let scale = F::from_f64(1.0 / (hs as f64).sqrt());
    scratch
        .par_chunks_mut(t_ * t_)
        .enumerate()
        .for_each(|(bh, ds)| {
            let (b, h) = (bh / nh, bh % nh);
            for t in 0..t_ {
                let g = &dout[(b * t_ + t) * c + h * hs..][..hs];
                let p = &probs[(bh * t_ + t) * t_..][..t + 1];
                let row = &mut ds[t * t_..(t + 1) * t_];
                let mut pdp = F::ZERO;
                for (t2, r) in row.iter_mut().enumerate().take(t + 1) {
                    let v = &qkv[(b * t_ + t2) * 3 * c + 2 * c + h * hs..][..hs];
                    *r = dot(g, v);
                    pdp += p[t2] * *r;
                }
                for (r, &pv) in row.iter_mut().zip(p) {
                    *r = pv * (*r - pdp) * scale;
                }
                for r in row.iter_mut().skip(t + 1) {
                    *r = F::ZERO;
                }
            }
        });
    let ds = &*scratch;
    dqkv.par_chunks_mut(3 * c).enumerate().for_each(|(bt, d)| {
        let (b, t) = (bt / t_, bt % t_);
        d.fill(F::ZERO);
        let (dq, rest) = d.split_at_mut(c);
        let (dk, dv) = rest.split_at_mut(c);
        for h in 0..nh {
            let bh = b * nh + h;
            let dqh = &mut dq[h * hs..(h + 1) * hs];
            // dq[t] = Σ_{t2 ≤ t} dS[t, t2] k[t2]
            for t2 in 0..=t {
                let w = ds[(bh * t_ + t) * t_ + t2];
                let k = &qkv[(b * t_ + t2) * 3 * c + c + h * hs..][..hs];
                for (o, &x) in dqh.iter_mut().zip(k) {
                    *o += w * x;
                }
            }
            // dk[t] = Σ_{t1 ≥ t} dS[t1, t] q[t1];  dv[t] = Σ_{t1 ≥ t} P[t1, t] dout[t1]
            let dkh = &mut dk[h * hs..(h + 1) * hs];
            let dvh = &mut dv[h * hs..(h + 1) * hs];
            for t1 in t..t_ {
                let w = ds[(bh * t_ + t1) * t_ + t];
                let pw = probs[(bh * t_ + t1) * t_ + t];
                let q = &qkv[(b * t_ + t1) * 3 * c + h * hs..][..hs];
                let g = &dout[(b * t_ + t1) * c + h * hs..][..hs];
                for ((ok, ov), (&xq, &xg)) in
                    dkh.iter_mut().zip(dvh.iter_mut()).zip(q.iter().zip(g))
                {
                    *ok += w * xq;
                    *ov += pw * xg;
                }
            }
        }
    });
    Ok(())
}
