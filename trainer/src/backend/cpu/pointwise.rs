//! CPU pointwise kernels: GELU (tanh approximation) forward/backward, residual add, scaling,
//! zeroing.

use super::{Float, check_len};
use crate::backend::BackendError;
use rayon::prelude::*;

/// Elements per parallel task for pointwise work.
const GRAIN: usize = 1 << 14;
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044715;

/// `out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
pub fn gelu_forward<F: Float>(out: &mut [F], inp: &[F]) -> Result<(), BackendError> {
    check_len("gelu_forward", "out", inp.len(), out.len())?;
    let (s, k, half) = (
        F::from_f64(SQRT_2_OVER_PI),
        F::from_f64(GELU_CUBIC),
        F::from_f64(0.5),
    );
    out.par_chunks_mut(GRAIN)
        .zip(inp.par_chunks(GRAIN))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = half * x * (F::ONE + (s * (x + k * x * x * x)).fast_tanh());
            }
        });
    Ok(())
}

/// Overwrites `dinp = gelu'(inp)·dout`.
pub fn gelu_backward<F: Float>(dinp: &mut [F], inp: &[F], dout: &[F]) -> Result<(), BackendError> {
    check_len("gelu_backward", "dinp", inp.len(), dinp.len())?;
    check_len("gelu_backward", "dout", inp.len(), dout.len())?;
    let (s, k, half, three) = (
        F::from_f64(SQRT_2_OVER_PI),
        F::from_f64(GELU_CUBIC),
        F::from_f64(0.5),
        F::from_f64(3.0),
    );
    dinp.par_chunks_mut(GRAIN)
        .zip(inp.par_chunks(GRAIN))
        .zip(dout.par_chunks(GRAIN))
        .for_each(|((d, x), g)| {
            for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                let th = (s * (x + k * x * x * x)).fast_tanh();
                let sech2 = F::ONE - th * th;
                let local =
                    half * (F::ONE + th) + half * x * sech2 * s * (F::ONE + three * k * x * x);
                *d = local * g;
            }
        });
    Ok(())
}

/// `out = a + b`.
pub fn residual_forward<F: Float>(out: &mut [F], a: &[F], b: &[F]) -> Result<(), BackendError> {
    check_len("residual_forward", "a", out.len(), a.len())?;
    check_len("residual_forward", "b", out.len(), b.len())?;
    out.par_chunks_mut(GRAIN)
        .zip(a.par_chunks(GRAIN))
        .zip(b.par_chunks(GRAIN))
        .for_each(|((o, a), b)| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
    Ok(())
}

/// `x *= factor`.
pub fn scale<F: Float>(x: &mut [F], factor: F) {
    x.par_chunks_mut(GRAIN).for_each(|c| {
        for v in c {
            *v *= factor;
        }
    });
}

/// `x = 0`.
pub fn fill_zero<F: Float>(x: &mut [F]) {
    x.par_chunks_mut(GRAIN).for_each(|c| c.fill(F::ZERO));
}
