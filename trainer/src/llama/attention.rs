//! Causal grouped-query attention, forward and backward. Query head `h` reads key/value head
//! `h / (heads / kv_heads)` (as `repeat_kv` expands them: each kv head serves a contiguous
//! group of query heads); `kv_heads == heads` is plain multi-head attention, `kv_heads == 1`
//! multi-query attention.
//!
//! ```text
//! q (B, T, H, D), k and v (B, T, KV, D), out (B, T, H, D); g = H / KV
//! forward:  S[b,h,t,u] = q[b,t,h]·k[b,u,h/g] / sqrt(D)       u <= t (causal)
//!           P = softmax_u(S)                                  kept for backward
//!           out[b,t,h] = Σ_u P[b,h,t,u] v[b,u,h/g]
//! backward: dP[t,u] = dout[t]·v[u]      dS = P ∘ (dP - Σ_u P∘dP)
//!           dq[t] = Σ_u dS[t,u] k[u] / sqrt(D)
//!           dk[u] += Σ_t dS[t,u] q[t] / sqrt(D)   dv[u] += Σ_t P[t,u] dout[t]  (summed over the group)
//! ```

use crate::backend::BackendError;
use crate::backend::cpu::{Float, check_len};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    fn check(&self, op: &'static str) -> Result<(), BackendError> {
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(BackendError::BadDimensions {
                op,
                detail: format!(
                    "kv_heads ({}) must divide heads ({})",
                    self.kv_heads, self.heads
                ),
            });
        }
        Ok(())
    }
    fn q_len(&self) -> usize {
        self.batch * self.seq_len * self.heads * self.head_dim
    }
    fn kv_len(&self) -> usize {
        self.batch * self.seq_len * self.kv_heads * self.head_dim
    }
    fn probs_len(&self) -> usize {
        self.batch * self.heads * self.seq_len * self.seq_len
    }
    /// Offset of q[b, t, h] (or out, dq).
    fn q_at(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.seq_len + t) * self.heads + h) * self.head_dim
    }
    /// Offset of k[b, t, kv] (or v, dk, dv).
    fn kv_at(&self, b: usize, t: usize, kv: usize) -> usize {
        ((b * self.seq_len + t) * self.kv_heads + kv) * self.head_dim
    }
    /// Offset of row P[b, h, t, ·].
    fn p_at(&self, b: usize, h: usize, t: usize) -> usize {
        ((b * self.heads + h) * self.seq_len + t) * self.seq_len
    }
}

fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

/// Returns `(out, probs)`; probs is (B, H, T, T), zero above the diagonal.
pub fn attention_forward<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    s: AttentionShape,
) -> Result<(Vec<F>, Vec<F>), BackendError> {
    const OP: &str = "gqa_attention_forward";
    s.check(OP)?;
    check_len(OP, "q", s.q_len(), q.len())?;
    check_len(OP, "k", s.kv_len(), k.len())?;
    check_len(OP, "v", s.kv_len(), v.len())?;
    let (d, group) = (s.head_dim, s.heads / s.kv_heads);
    let scale = F::from_f64(1.0 / (d as f64).sqrt());
    let mut out = vec![F::ZERO; s.q_len()];
    let mut probs = vec![F::ZERO; s.probs_len()];
    for b in 0..s.batch {
        for h in 0..s.heads {
            let kv = h / group;
            for t in 0..s.seq_len {
                let qt = &q[s.q_at(b, t, h)..][..d];
                let row = &mut probs[s.p_at(b, h, t)..][..t + 1];
                for (u, p) in row.iter_mut().enumerate() {
                    *p = dot(qt, &k[s.kv_at(b, u, kv)..][..d]) * scale;
                }
                let max = row
                    .iter()
                    .fold(F::from_f64(f64::NEG_INFINITY), |m, &x| m.max(x));
                let mut sum = F::ZERO;
                for p in row.iter_mut() {
                    *p = (*p - max).exp();
                    sum += *p;
                }
                let o = &mut out[s.q_at(b, t, h)..][..d];
                for (u, p) in row.iter_mut().enumerate() {
                    *p = *p / sum;
                    for (oi, &vi) in o.iter_mut().zip(&v[s.kv_at(b, u, kv)..][..d]) {
                        *oi += *p * vi;
                    }
                }
            }
        }
    }
    Ok((out, probs))
}

/// The gradients of q, k and v, laid out as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionGrads<F> {
    pub dq: Vec<F>,
    pub dk: Vec<F>,
    pub dv: Vec<F>,
}

pub fn attention_backward<F: Float>(
    dout: &[F],
    q: &[F],
    k: &[F],
    v: &[F],
    probs: &[F],
    s: AttentionShape,
) -> Result<AttentionGrads<F>, BackendError> {
    const OP: &str = "gqa_attention_backward";
    s.check(OP)?;
    check_len(OP, "dout", s.q_len(), dout.len())?;
    check_len(OP, "q", s.q_len(), q.len())?;
    check_len(OP, "k", s.kv_len(), k.len())?;
    check_len(OP, "v", s.kv_len(), v.len())?;
    check_len(OP, "probs", s.probs_len(), probs.len())?;
    let (d, group) = (s.head_dim, s.heads / s.kv_heads);
    let scale = F::from_f64(1.0 / (d as f64).sqrt());
    let mut dq = vec![F::ZERO; s.q_len()];
    let mut dk = vec![F::ZERO; s.kv_len()];
    let mut dv = vec![F::ZERO; s.kv_len()];
    let mut ds = vec![F::ZERO; s.seq_len];
    for b in 0..s.batch {
        for h in 0..s.heads {
            let kv = h / group;
            for t in 0..s.seq_len {
                let p = &probs[s.p_at(b, h, t)..][..t + 1];
                let dot_t = &dout[s.q_at(b, t, h)..][..d];
                // dP and Σ_u P∘dP
                let mut pdp = F::ZERO;
                for (u, (dsu, &pu)) in ds.iter_mut().zip(p).enumerate() {
                    let at = s.kv_at(b, u, kv);
                    *dsu = dot(dot_t, &v[at..][..d]);
                    pdp += pu * *dsu;
                    for (g, &o) in dv[at..][..d].iter_mut().zip(dot_t) {
                        *g += pu * o;
                    }
                }
                let qt = &q[s.q_at(b, t, h)..][..d];
                let dqt_at = s.q_at(b, t, h);
                for (u, (&dpu, &pu)) in ds.iter().zip(p).enumerate() {
                    let dsu = pu * (dpu - pdp) * scale;
                    let at = s.kv_at(b, u, kv);
                    for i in 0..d {
                        dq[dqt_at + i] += dsu * k[at + i];
                        dk[at + i] += dsu * qt[i];
                    }
                }
            }
        }
    }
    Ok(AttentionGrads { dq, dk, dv })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::test_util::{assert_gradient, dot, random};
    use crate::rng::Rng;

    fn shape(heads: usize, kv_heads: usize) -> AttentionShape {
        AttentionShape {
            batch: 2,
            seq_len: 5,
            heads,
            kv_heads,
            head_dim: 3,
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        // Multi-head, grouped (2 query heads per kv head) and multi-query.
        for (heads, kv_heads) in [(2, 2), (4, 2), (3, 1)] {
            let s = shape(heads, kv_heads);
            let mut rng = Rng::new(heads as u64 * 10 + kv_heads as u64);
            let q = random(&mut rng, s.q_len(), 1.0);
            let k = random(&mut rng, s.kv_len(), 1.0);
            let v = random(&mut rng, s.kv_len(), 1.0);
            let r = random(&mut rng, s.q_len(), 1.0);
            let loss = |q: &[f64], k: &[f64], v: &[f64]| {
                dot(&attention_forward(q, k, v, s).unwrap().0, &r)
            };
            let (_, probs) = attention_forward(&q, &k, &v, s).unwrap();
            let AttentionGrads { dq, dk, dv } =
                attention_backward(&r, &q, &k, &v, &probs, s).unwrap();
            let what = format!("{heads} heads over {kv_heads}");
            assert_gradient(&format!("dq, {what}"), &q, &dq, |q| loss(q, &k, &v));
            assert_gradient(&format!("dk, {what}"), &k, &dk, |k| loss(&q, k, &v));
            assert_gradient(&format!("dv, {what}"), &v, &dv, |v| loss(&q, &k, v));
        }
    }

    #[test]
    fn grouped_heads_equal_multi_head_over_repeated_kv() {
        // 4 query heads over 2 kv heads = 4 heads over kv heads [0, 0, 1, 1] (repeat_kv).
        let g = shape(4, 2);
        let m = shape(4, 4);
        let mut rng = Rng::new(4);
        let q = random(&mut rng, g.q_len(), 1.0);
        let k = random(&mut rng, g.kv_len(), 1.0);
        let v = random(&mut rng, g.kv_len(), 1.0);
        let repeat = |x: &[f64]| -> Vec<f64> {
            x.chunks_exact(2 * 3)
                .flat_map(|row| {
                    let (a, b) = row.split_at(3);
                    [a, a, b, b].concat()
                })
                .collect()
        };
        let (grouped, _) = attention_forward(&q, &k, &v, g).unwrap();
        let (full, _) = attention_forward(&q, &repeat(&k), &repeat(&v), m).unwrap();
        assert_eq!(grouped, full);
    }

    #[test]
    fn attention_is_causal_and_rows_sum_to_one() {
        let s = shape(2, 1);
        let mut rng = Rng::new(8);
        let q = random(&mut rng, s.q_len(), 1.0);
        let k = random(&mut rng, s.kv_len(), 1.0);
        let mut v = random(&mut rng, s.kv_len(), 1.0);
        let (out, probs) = attention_forward(&q, &k, &v, s).unwrap();
        for row in probs.chunks_exact(s.seq_len).enumerate() {
            let t = row.0 % s.seq_len;
            assert!(row.1[t + 1..].iter().all(|&p| p == 0.0));
            assert!((row.1.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // Changing the last position's value leaves every earlier output unchanged.
        let last = s.kv_at(0, s.seq_len - 1, 0);
        v[last] += 1.0;
        let (out2, _) = attention_forward(&q, &k, &v, s).unwrap();
        let end = s.q_at(0, s.seq_len - 1, 0);
        assert_eq!(out[..end], out2[..end]);
        assert_ne!(out[end], out2[end]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let s = shape(3, 2);
        assert!(attention_forward(&[0.0f32; 90], &[0.0; 60], &[0.0; 60], s).is_err());
        let s = shape(4, 2);
        assert!(attention_forward(&[0.0f32; 119], &[0.0; 60], &[0.0; 60], s).is_err());
    }
}
