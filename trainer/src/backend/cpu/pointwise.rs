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

/// `out (+)= inp·keep/(1 - p)`, element i kept by `dropout_keeps(key, offset + i)`.
pub fn dropout<F: Float>(
    out: &mut [F],
    inp: &[F],
    p: f32,
    key: u64,
    offset: u64,
    accumulate: bool,
) -> Result<(), BackendError> {
    check_len("dropout", "out", inp.len(), out.len())?;
    let threshold = crate::backend::dropout_threshold(p);
    let scale = F::from_f64(1.0 / (1.0 - f64::from(p)));
    out.par_chunks_mut(GRAIN)
        .zip(inp.par_chunks(GRAIN))
        .enumerate()
        .for_each(|(chunk, (o, x))| {
            let first = offset + (chunk * GRAIN) as u64;
            for (i, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                let kept = crate::backend::dropout_keeps(key, first + i as u64, threshold);
                let v = if kept { x * scale } else { F::ZERO };
                *o = if accumulate { *o + v } else { v };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f64> {
        (0..n).map(|i| 1.0 + i as f64 * 0.001).collect()
    }

    #[test]
    fn dropout_drops_its_share_and_scales_the_rest() {
        let inp = ramp(100_000);
        let mut out = vec![0.0f64; inp.len()];
        dropout(&mut out, &inp, 0.25, 7, 0, false).unwrap();
        let dropped = out.iter().filter(|&&v| v == 0.0).count() as f64 / inp.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01, "dropped {dropped}");
        for (o, x) in out.iter().zip(&inp) {
            assert!(*o == 0.0 || *o == x * (1.0 / 0.75), "{o} from {x}");
        }
        // Another key, another mask; the same key, the same one.
        let mut other = vec![0.0f64; inp.len()];
        dropout(&mut other, &inp, 0.25, 8, 0, false).unwrap();
        assert_ne!(other, out);
        dropout(&mut other, &inp, 0.25, 7, 0, false).unwrap();
        assert_eq!(other, out);
    }

    #[test]
    fn dropout_masks_by_global_offset_and_accumulates() {
        // A slice at offset k gets the mask of elements k.. of the whole: how ranks and
        // micro-batches split a batch does not change it.
        let inp = ramp(40_000);
        let mut whole = vec![0.0f64; inp.len()];
        dropout(&mut whole, &inp, 0.5, 3, 1000, false).unwrap();
        let k = 17_001;
        let mut part = vec![0.0f64; inp.len() - k];
        dropout(&mut part, &inp[k..], 0.5, 3, 1000 + k as u64, false).unwrap();
        assert_eq!(part, whole[k..]);
        let mut sum = vec![1.0f64; inp.len()];
        dropout(&mut sum, &inp, 0.5, 3, 1000, true).unwrap();
        for (s, w) in sum.iter().zip(&whole) {
            assert_eq!(*s, 1.0 + w);
        }
        // p = 0 keeps everything, unscaled.
        dropout(&mut whole, &inp, 0.0, 3, 0, false).unwrap();
        assert_eq!(whole, inp);
    }
}
