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
        )?;
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
