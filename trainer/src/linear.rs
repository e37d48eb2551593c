//! The linear layer both model families are built from, `out (rows × n_out) = inp (rows ×
//! n_in) · Wᵀ (+ b)` with W stored (n_out × n_in) in the flat parameters, and its backward
//! through the backend's matrix product.

use std::ops::Range;

use crate::backend::{Backend, BackendError, MatmulShape};

/// Where one linear layer's weight and bias live in the flat parameters, and its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linear {
    pub weight: Range<usize>,
    pub bias: Option<Range<usize>>,
    pub n_out: usize,
    pub n_in: usize,
    /// Rows of a batch (B·T).
    pub rows: usize,
}

impl Linear {
    /// The layer whose weight (`n_out × n_in`) and bias lie at these ranges, over `rows` rows.
    pub fn new(
        weight: Range<usize>,
        bias: Option<Range<usize>>,
        n_out: usize,
        n_in: usize,
        rows: usize,
    ) -> Linear {
        Linear {
            weight,
            bias,
            n_out,
            n_in,
            rows,
        }
    }

    /// `out = inp · Wᵀ (+ b)`.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        params: &B::Buf,
        out: B::Mut<'_>,
        inp: B::Ref<'_>,
    ) -> Result<(), BackendError> {
        let bias = match &self.bias {
            Some(b) => Some(be.view(params, b.clone())?),
            None => None,
        };
        be.matmul(
            out,
            inp,
            be.view(params, self.weight.clone())?,
            bias,
            MatmulShape {
                m: self.rows,
                n: self.n_out,
                k: self.n_in,
                a_transposed: false,
                b_transposed: true,
            },
            false,
        )
    }

    /// `dinp = dout · W` (added to `dinp` when `accumulate`), `dW += doutᵀ · inp`, and
    /// `db += Σ_rows dout`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        dinp: B::Mut<'_>,
        dout: B::Ref<'_>,
        inp: B::Ref<'_>,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        self.backward_input(be, params, dinp, dout, accumulate)?;
        be.matmul(
            be.view_mut(grads, self.weight.clone())?,
            dout,
            inp,
            None,
            MatmulShape {
                m: self.n_out,
                n: self.n_in,
                k: self.rows,
                a_transposed: true,
                b_transposed: false,
            },
            true,
        )?;
        if let Some(b) = &self.bias {
            be.bias_backward(be.view_mut(grads, b.clone())?, dout, self.rows, self.n_out)?;
        }
        Ok(())
    }
}

impl Linear {
    /// `dinp = dout · W` (added to `dinp` when `accumulate`) alone: the backward of a frozen
    /// layer.
    pub fn backward_input<B: Backend>(
        &self,
        be: &B,
        params: &B::Buf,
        dinp: B::Mut<'_>,
        dout: B::Ref<'_>,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        be.matmul(
            dinp,
            dout,
            be.view(params, self.weight.clone())?,
            None,
            MatmulShape {
                m: self.rows,
                n: self.n_in,
                k: self.n_out,
                a_transposed: false,
                b_transposed: false,
            },
            accumulate,
        )
    }
}

/// A LoRA adapter on a [`Linear`] layer, as PEFT defines it: `out += scale · (inp · Aᵀ) · Bᵀ`
/// with A (rank × n_in), B (n_out × rank) in a buffer of their own (the trainable adapters,
/// apart from the frozen base weights) and `scale = alpha / rank`. Both products go through
/// the backend's matrix product; the forward keeps `u = scale · inp · Aᵀ` (rows × rank) for
/// the backward.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraAdapter {
    pub a: Range<usize>,
    pub b: Range<usize>,
    pub rank: usize,
    pub scale: f32,
}

impl LoraAdapter {
    /// `u = scale · inp · Aᵀ` into `u_buf[u]`, then `out += u · Bᵀ` (`out` already holds the
    /// base layer's output).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        adapters: &B::Buf,
        layer: &Linear,
        out: B::Mut<'_>,
        inp: B::Ref<'_>,
        u_buf: &mut B::Buf,
        u: Range<usize>,
    ) -> Result<(), BackendError> {
        let (rows, rank) = (layer.rows, self.rank);
        be.matmul(
            be.view_mut(u_buf, u.clone())?,
            inp,
            be.view(adapters, self.a.clone())?,
            None,
            MatmulShape {
                m: rows,
                n: rank,
                k: layer.n_in,
                a_transposed: false,
                b_transposed: true,
            },
            false,
        )?;
        be.scale(be.view_mut(u_buf, u.clone())?, self.scale)?;
        be.matmul(
            out,
            be.view(u_buf, u)?,
            be.view(adapters, self.b.clone())?,
            None,
            MatmulShape {
                m: rows,
                n: layer.n_out,
                k: rank,
                a_transposed: false,
                b_transposed: true,
            },
            true,
        )
    }

    /// Given `dout`: `dB += doutᵀ · u`, `du = scale · dout · B` (into `du_buf[du]`),
    /// `dA += duᵀ · inp`, and `dinp += du · A` when `dinp` is given (the base layer's backward
    /// wrote it first).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        adapters: &B::Buf,
        grads: &mut B::Buf,
        layer: &Linear,
        dinp: Option<B::Mut<'_>>,
        dout: B::Ref<'_>,
        inp: B::Ref<'_>,
        u: B::Ref<'_>,
        du_buf: &mut B::Buf,
        du: Range<usize>,
    ) -> Result<(), BackendError> {
        let (rows, rank, n_in, n_out) = (layer.rows, self.rank, layer.n_in, layer.n_out);
        let shape = |m, n, k, a_transposed, b_transposed| MatmulShape {
            m,
            n,
            k,
            a_transposed,
            b_transposed,
        };
        be.matmul(
            be.view_mut(grads, self.b.clone())?,
            dout,
            u,
            None,
            shape(n_out, rank, rows, true, false),
            true,
        )?;
        be.matmul(
            be.view_mut(du_buf, du.clone())?,
            dout,
            be.view(adapters, self.b.clone())?,
            None,
            shape(rows, rank, n_out, false, false),
            false,
        )?;
        be.scale(be.view_mut(du_buf, du.clone())?, self.scale)?;
        be.matmul(
            be.view_mut(grads, self.a.clone())?,
            be.view(du_buf, du.clone())?,
            inp,
            None,
            shape(rank, n_in, rows, true, false),
            true,
        )?;
        match dinp {
            Some(dinp) => self.input_grad(be, adapters, layer, dinp, be.view(du_buf, du)?, true),
            None => Ok(()),
        }
    }

    /// `dinp = du · A` (added to `dinp` when `accumulate`): the adapter's share of its
    /// input's gradient.
    pub fn input_grad<B: Backend>(
        &self,
        be: &B,
        adapters: &B::Buf,
        layer: &Linear,
        dinp: B::Mut<'_>,
        du: B::Ref<'_>,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        be.matmul(
            dinp,
            du,
            be.view(adapters, self.a.clone())?,
            None,
            MatmulShape {
                m: layer.rows,
                n: layer.n_in,
                k: self.rank,
                a_transposed: false,
                b_transposed: false,
            },
            accumulate,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::llama::test_util::{assert_gradient, dot, random};
    use crate::rng::Rng;

    const ROWS: usize = 5;
    const N_IN: usize = 4;
    const N_OUT: usize = 3;
    const RANK: usize = 2;

    fn layer() -> Linear {
        Linear::new(0..N_OUT * N_IN, None, N_OUT, N_IN, ROWS)
    }

    fn adapter() -> LoraAdapter {
        LoraAdapter {
            a: 0..RANK * N_IN,
            b: RANK * N_IN..RANK * N_IN + N_OUT * RANK,
            rank: RANK,
            scale: 1.5,
        }
    }

    /// The layer's output with the adapter: base, then the adapter's product added.
    fn forward(weight: &[f64], adapters: &[f64], inp: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let be = CpuBackend::<f64>::new();
        let (weight, adapters) = (weight.to_vec(), adapters.to_vec());
        let mut out = vec![0.0; ROWS * N_OUT];
        let mut u = vec![0.0; ROWS * RANK];
        layer().forward(&be, &weight, &mut out, inp).unwrap();
        adapter()
            .forward(
                &be,
                &adapters,
                &layer(),
                &mut out,
                inp,
                &mut u,
                0..ROWS * RANK,
            )
            .unwrap();
        (out, u)
    }

    #[test]
    fn with_b_zero_the_output_is_the_base_layers_exactly() {
        let mut rng = Rng::new(3);
        let weight = random(&mut rng, N_OUT * N_IN, 1.0);
        let inp = random(&mut rng, ROWS * N_IN, 1.0);
        let mut adapters = random(&mut rng, RANK * N_IN + N_OUT * RANK, 1.0);
        adapters[RANK * N_IN..].fill(0.0); // PEFT's initialisation: B = 0
        let (with, _) = forward(&weight, &adapters, &inp);
        let mut base = vec![0.0; ROWS * N_OUT];
        layer()
            .forward(&CpuBackend::<f64>::new(), &weight, &mut base, &inp)
            .unwrap();
        assert_eq!(with, base);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Rng::new(11);
        let weight = random(&mut rng, N_OUT * N_IN, 1.0);
        let adapters = random(&mut rng, RANK * N_IN + N_OUT * RANK, 1.0);
        let inp = random(&mut rng, ROWS * N_IN, 1.0);
        let r = random(&mut rng, ROWS * N_OUT, 1.0);
        // L = Σ r ∘ out, so dout = r.
        let be = CpuBackend::<f64>::new();
        let (_, u) = forward(&weight, &adapters, &inp);
        let mut grads = vec![0.0; adapters.len()];
        let mut weight_grads = vec![0.0; weight.len()];
        let mut dinp = vec![0.0; inp.len()];
        layer()
            .backward(&be, &weight, &mut weight_grads, &mut dinp, &r, &inp, false)
            .unwrap();
        let mut du = vec![0.0; ROWS * RANK];
        adapter()
            .backward(
                &be,
                &adapters,
                &mut grads,
                &layer(),
                Some(&mut dinp),
                &r,
                &inp,
                &u,
                &mut du,
                0..ROWS * RANK,
            )
            .unwrap();
        assert_gradient("adapters (A, then B)", &adapters, &grads, |a| {
            dot(&forward(&weight, a, &inp).0, &r)
        });
        assert_gradient("inp", &inp, &dinp, |x| {
            dot(&forward(&weight, &adapters, x).0, &r)
        });
    }
}
