//! SwiGLU, the gate of the Llama MLP (`down_proj(silu(gate_proj(x)) * up_proj(x))`), forward
//! and backward, elementwise.
//!
//! ```text
//! forward:  h = silu(g) · u          silu(g) = g · σ(g),  σ(g) = 1 / (1 + e^-g)
//! backward: dg = dh · u · σ(g) · (1 + g · (1 - σ(g)))
//!           du = dh · silu(g)
//! ```

use crate::backend::BackendError;
use crate::backend::cpu::{Float, check_len};

fn sigmoid<F: Float>(g: F) -> F {
    F::ONE / (F::ONE + (-g).exp())
}

pub fn swiglu_forward<F: Float>(gate: &[F], up: &[F]) -> Result<Vec<F>, BackendError> {
    check_len("swiglu_forward", "up", gate.len(), up.len())?;
    Ok(gate
        .iter()
        .zip(up)
        .map(|(&g, &u)| g * sigmoid(g) * u)
        .collect())
}

/// Returns `(dgate, dup)`.
pub fn swiglu_backward<F: Float>(
    dh: &[F],
    gate: &[F],
    up: &[F],
) -> Result<(Vec<F>, Vec<F>), BackendError> {
    const OP: &str = "swiglu_backward";
    check_len(OP, "gate", dh.len(), gate.len())?;
    check_len(OP, "up", dh.len(), up.len())?;
    let mut dgate = Vec::with_capacity(dh.len());
    let mut dup = Vec::with_capacity(dh.len());
    for ((&d, &g), &u) in dh.iter().zip(gate).zip(up) {
        let s = sigmoid(g);
        dgate.push(d * u * s * (F::ONE + g * (F::ONE - s)));
        dup.push(d * g * s);
    }
    Ok((dgate, dup))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::test_util::{assert_gradient, dot, random};
    use crate::rng::Rng;

    #[test]
    fn forward_values() {
        let h = swiglu_forward(&[0.0f64, 1.0, -30.0], &[5.0, 2.0, 1.0]).unwrap();
        assert_eq!(h[0], 0.0);
        assert!((h[1] - 2.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-15);
        assert!(h[2].abs() < 1e-11);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(2);
        // Spread wide enough to cover both tails of the sigmoid.
        let g = random(&mut rng, 40, 3.0);
        let u = random(&mut rng, 40, 1.0);
        let r = random(&mut rng, 40, 1.0);
        let (dg, du) = swiglu_backward(&r, &g, &u).unwrap();
        assert_gradient("dgate", &g, &dg, |g| {
            dot(&swiglu_forward(g, &u).unwrap(), &r)
        });
        assert_gradient("dup", &u, &du, |u| dot(&swiglu_forward(&g, u).unwrap(), &r));
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(swiglu_forward(&[1.0f32; 3], &[1.0; 2]).is_err());
        assert!(swiglu_backward(&[1.0f32; 3], &[1.0; 3], &[1.0; 4]).is_err());
    }
}
