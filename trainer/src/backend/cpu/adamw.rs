//! CPU AdamW over a range of the flat parameter space (decoupled weight decay, bias
//! correction, gradient pre-scaling for global-norm clipping).

use super::Float;
use crate::backend::AdamWStep;
use rayon::prelude::*;

const GRAIN: usize = 1 << 14;

/// `m = β1·m + (1-β1)·g`, `v = β2·v + (1-β2)·g²`, with `g = grad·grad_scale`;
/// `p -= lr·(m̂ / (√v̂ + eps) + wd·p)`, `m̂ = m/(1-β1^t)`, `v̂ = v/(1-β2^t)`.
pub fn adamw_update<F: Float>(
    params: &mut [F],
    grads: &[F],
    m: &mut [F],
    v: &mut [F],
    h: &AdamWStep,
) {
    let f = |x: f32| F::from_f32(x);
    let (lr, b1, b2, eps, wd, gs) = (
        f(h.lr),
        f(h.beta1),
        f(h.beta2),
        f(h.eps),
        f(h.weight_decay),
        f(h.grad_scale),
    );
    let (bc1, bc2) = (f(h.bias_correction1), f(h.bias_correction2));
    params
        .par_chunks_mut(GRAIN)
        .zip(grads.par_chunks(GRAIN))
        .zip(m.par_chunks_mut(GRAIN))
        .zip(v.par_chunks_mut(GRAIN))
        .for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g * gs;
                *m = b1 * *m + (F::ONE - b1) * g;
                *v = b2 * *v + (F::ONE - b2) * g * g;
                let m_hat = *m / bc1;
                let v_hat = *v / bc2;
                *p -= lr * (m_hat / (v_hat.sqrt() + eps) + wd * *p);
            }
        });
}
