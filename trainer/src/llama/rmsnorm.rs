//! RMSNorm (Llama's `LlamaRMSNorm`), forward and backward, over rows of `dim` values.
//!
//! ```text
//! forward:  r = 1 / sqrt(mean(x²) + eps)      y = w ∘ (x · r)
//! backward: g = w ∘ dy
//!           dx = r·g - x · r³ · (g·x) / dim
//!           dw += Σ_rows dy ∘ x · r
//! ```
//! `eps` is the config's `rms_norm_eps`, added in the element type as PyTorch adds it.

use crate::backend::BackendError;
use crate::backend::cpu::{Float, check_len};

/// Rows of `dim` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub rows: usize,
    pub dim: usize,
}

/// Returns `y` and the per-row `r` (kept for the backward pass).
pub fn rmsnorm_forward<F: Float>(
    x: &[F],
    weight: &[F],
    eps: f64,
    s: NormShape,
) -> Result<(Vec<F>, Vec<F>), BackendError> {
    const OP: &str = "rmsnorm_forward";
    check_len(OP, "x", s.rows * s.dim, x.len())?;
    check_len(OP, "weight", s.dim, weight.len())?;
    let eps = F::from_f64(eps);
    let n = F::from_f64(s.dim as f64);
    let mut y = vec![F::ZERO; x.len()];
    let mut inv_rms = vec![F::ZERO; s.rows];
    if s.dim == 0 {
        return Ok((y, inv_rms));
    }
    for ((xr, yr), r) in x
        .chunks_exact(s.dim)
        .zip(y.chunks_exact_mut(s.dim))
        .zip(inv_rms.iter_mut())
    {
        let mean_sq = xr.iter().map(|&v| v * v).sum::<F>() / n;
        *r = F::ONE / (mean_sq + eps).sqrt();
        for ((out, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
            *out = w * (v * *r);
        }
    }
    Ok((y, inv_rms))
}

/// Returns `dx`; adds into `dweight`.
pub fn rmsnorm_backward<F: Float>(
    dy: &[F],
    x: &[F],
    weight: &[F],
    inv_rms: &[F],
    dweight: &mut [F],
    s: NormShape,
) -> Result<Vec<F>, BackendError> {
    const OP: &str = "rmsnorm_backward";
    check_len(OP, "dy", s.rows * s.dim, dy.len())?;
    check_len(OP, "x", s.rows * s.dim, x.len())?;
    check_len(OP, "weight", s.dim, weight.len())?;
    check_len(OP, "dweight", s.dim, dweight.len())?;
    check_len(OP, "inv_rms", s.rows, inv_rms.len())?;
    let mut dx = vec![F::ZERO; x.len()];
    if s.dim == 0 {
        return Ok(dx);
    }
    let n = F::from_f64(s.dim as f64);
    for (((dyr, xr), dxr), &r) in dy
        .chunks_exact(s.dim)
        .zip(x.chunks_exact(s.dim))
        .zip(dx.chunks_exact_mut(s.dim))
        .zip(inv_rms)
    {
        // g·x with g = w ∘ dy
        let gx: F = dyr
            .iter()
            .zip(xr)
            .zip(weight)
            .map(|((&d, &v), &w)| w * d * v)
            .sum();
        let c = r * r * r * gx / n;
        for (i, out) in dxr.iter_mut().enumerate() {
            *out = r * weight[i] * dyr[i] - xr[i] * c;
            dweight[i] += dyr[i] * xr[i] * r;
        }
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::test_util::{assert_gradient, dot, random};
    use crate::rng::Rng;

    const S: NormShape = NormShape { rows: 3, dim: 6 };
    const EPS: f64 = 1e-5;

    #[test]
    fn forward_normalises_each_row_to_unit_rms() {
        let x = [3.0f64, 4.0, 0.0, 0.0, -6.0, 8.0];
        let w = [1.0, 2.0, 1.0];
        let (y, r) = rmsnorm_forward(&x, &w, 0.0, NormShape { rows: 2, dim: 3 }).unwrap();
        let rms0 = (25.0f64 / 3.0).sqrt();
        assert!((r[0] - 1.0 / rms0).abs() < 1e-15);
        let want = [3.0 / rms0, 8.0 / rms0, 0.0];
        for (a, b) in y[..3].iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{y:?}");
        }
        // eps keeps an all-zero row finite.
        let (y, _) =
            rmsnorm_forward(&[0.0f32; 4], &[1.0; 4], 1e-6, NormShape { rows: 1, dim: 4 }).unwrap();
        assert_eq!(y, vec![0.0; 4]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(5);
        let x = random(&mut rng, S.rows * S.dim, 1.0);
        let w: Vec<f64> = random(&mut rng, S.dim, 0.1)
            .iter()
            .map(|v| 1.0 + v)
            .collect();
        let r = random(&mut rng, S.rows * S.dim, 1.0);
        let loss = |x: &[f64], w: &[f64]| dot(&rmsnorm_forward(x, w, EPS, S).unwrap().0, &r);
        let (_, inv_rms) = rmsnorm_forward(&x, &w, EPS, S).unwrap();
        let mut dw = vec![0.0; S.dim];
        let dx = rmsnorm_backward(&r, &x, &w, &inv_rms, &mut dw, S).unwrap();
        assert_gradient("dx", &x, &dx, |x| loss(x, &w));
        assert_gradient("dw", &w, &dw, |w| loss(&x, w));
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(rmsnorm_forward(&[1.0f32; 17], &[1.0; 6], EPS, S).is_err());
        assert!(rmsnorm_forward(&[1.0f32; 18], &[1.0; 5], EPS, S).is_err());
        let mut dw = [0.0f32; 6];
        assert!(
            rmsnorm_backward(&[0.0; 18], &[0.0; 18], &[1.0; 6], &[1.0; 2], &mut dw, S).is_err()
        );
    }
}
