//! Linear layers in PyTorch's orientation, forward and backward: `y = x·Wᵀ (+ b)` with `W`
//! stored (out, in) as Hugging Face stores it, on the trainer's CPU matmul
//! ([`crate::backend::cpu::matmul`]).
//!
//! ```text
//! forward:  y (rows, out) = x (rows, in) · Wᵀ  [+ b]
//! backward: dx = dy · W        dW += dyᵀ · x        db += Σ_rows dy
//! ```
//! Parameter gradients accumulate, so a tied embedding can collect the output head's
//! gradient on top of its own.

use crate::backend::cpu::{Float, check_len, matmul};
use crate::backend::{BackendError, MatmulShape};

/// The sizes of one linear layer applied to `rows` vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    pub rows: usize,
    pub inputs: usize,
    pub outputs: usize,
}

pub fn linear_forward<F: Float>(
    x: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    s: LinearShape,
) -> Result<Vec<F>, BackendError> {
    check_len(
        "linear_forward",
        "weight",
        s.outputs * s.inputs,
        weight.len(),
    )?;
    let mut y = vec![F::ZERO; s.rows * s.outputs];
    matmul::matmul(
        &mut y,
        x,
        weight,
        bias,
        MatmulShape {
            m: s.rows,
            n: s.outputs,
            k: s.inputs,
            a_transposed: false,
            b_transposed: true,
        },
        false,
    )?;
    Ok(y)
}

/// Returns `dx`; adds into `dweight` and `dbias`.
pub fn linear_backward<F: Float>(
    dy: &[F],
    x: &[F],
    weight: &[F],
    dweight: &mut [F],
    dbias: Option<&mut [F]>,
    s: LinearShape,
) -> Result<Vec<F>, BackendError> {
    let mut dx = vec![F::ZERO; s.rows * s.inputs];
    matmul::matmul(
        &mut dx,
        dy,
        weight,
        None,
        MatmulShape {
            m: s.rows,
            n: s.inputs,
            k: s.outputs,
            a_transposed: false,
            b_transposed: false,
        },
        false,
    )?;
    matmul::matmul(
        dweight,
        dy,
        x,
        None,
        MatmulShape {
            m: s.outputs,
            n: s.inputs,
            k: s.rows,
            a_transposed: true,
            b_transposed: false,
        },
        true,
    )?;
    if let Some(dbias) = dbias {
        matmul::bias_backward(dbias, dy, s.rows, s.outputs)?;
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::test_util::{assert_gradient, dot, random};
    use crate::rng::Rng;

    const S: LinearShape = LinearShape {
        rows: 5,
        inputs: 4,
        outputs: 3,
    };

    #[test]
    fn forward_is_x_times_w_transposed_plus_bias() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let y = linear_forward(
            &x,
            &w,
            Some(&[0.5, 0.0, -1.0]),
            LinearShape { rows: 1, ..S },
        )
        .unwrap();
        assert_eq!(y, vec![1.5, 5.0, 9.0]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(11);
        let x = random(&mut rng, S.rows * S.inputs, 1.0);
        let w = random(&mut rng, S.outputs * S.inputs, 1.0);
        let b = random(&mut rng, S.outputs, 1.0);
        let r = random(&mut rng, S.rows * S.outputs, 1.0);
        let loss =
            |x: &[f64], w: &[f64], b: &[f64]| dot(&linear_forward(x, w, Some(b), S).unwrap(), &r);
        // Start the parameter gradients non-zero: backward must add, not overwrite.
        let mut dw = vec![0.25; w.len()];
        let mut db = vec![-0.5; b.len()];
        let dx = linear_backward(&r, &x, &w, &mut dw, Some(&mut db), S).unwrap();
        dw.iter_mut().for_each(|g| *g -= 0.25);
        db.iter_mut().for_each(|g| *g += 0.5);
        assert_gradient("dx", &x, &dx, |x| loss(x, &w, &b));
        assert_gradient("dw", &w, &dw, |w| loss(&x, w, &b));
        assert_gradient("db", &b, &db, |b| loss(&x, &w, b));
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(linear_forward(&[1.0f32; 3], &[1.0; 12], None, S).is_err());
        assert!(linear_forward(&[1.0f32; 20], &[1.0; 11], None, S).is_err());
        let mut dw = [0.0f32; 12];
        let mut db = [0.0f32; 2];
        let e = linear_backward(
            &[0.0; 15],
            &[0.0; 20],
            &[0.0; 12],
            &mut dw,
            Some(&mut db),
            S,
        );
        assert!(e.is_err());
    }
}
