//! CPU layer normalisation, forward and backward (eps 1e-5, as GPT-2).

use super::{Float, ROW_GRAIN, check_len, sum_map};
use crate::backend::BackendError;
use rayon::prelude::*;

const EPS: f64 = 1e-5;

/// Per row: `out = (x - mean) * rstd * weight + bias`; saves mean and rstd.
pub fn layernorm_forward<F: Float>(
    out: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    inp: &[F],
    weight: &[F],
    bias: &[F],
    rows: usize,
    c: usize,
) -> Result<(), BackendError> {
    const OP: &str = "layernorm_forward";
    check_len(OP, "out", rows * c, out.len())?;
    check_len(OP, "inp", rows * c, inp.len())?;
    check_len(OP, "mean", rows, mean.len())?;
    check_len(OP, "rstd", rows, rstd.len())?;
    check_len(OP, "weight", c, weight.len())?;
    check_len(OP, "bias", c, bias.len())?;
    if c == 0 {
        return Ok(());
    }
    let inv_c = F::from_f64(1.0 / c as f64);
    let eps = F::from_f64(EPS);
    out.par_chunks_mut(c)
        .with_min_len(ROW_GRAIN)
        .zip(mean.par_iter_mut())
        .zip(rstd.par_iter_mut())
        .zip(inp.par_chunks(c))
        .for_each(|(((o, m), r), x)| {
            let mu = sum_map(x, |v| v) * inv_c;
            let var = sum_map(x, |v| (v - mu) * (v - mu)) * inv_c;
            let s = F::ONE / (var + eps).sqrt();
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                *o = (x - mu) * s * w + b;
            }
            *m = mu;
            *r = s;
        });
    Ok(())
}

/// Accumulates `dinp` (rows in parallel) and `dweight`, `dbias` (columns in fixed chunks, rows
/// in order, so the sums are deterministic).
pub fn layernorm_backward<F: Float>(
    dinp: &mut [F],
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    inp: &[F],
    weight: &[F],
    mean: &[F],
    rstd: &[F],
    rows: usize,
    c: usize,
) -> Result<(), BackendError> {
    const OP: &str = "layernorm_backward";
    check_len(OP, "dinp", rows * c, dinp.len())?;
    check_len(OP, "dout", rows * c, dout.len())?;
    check_len(OP, "inp", rows * c, inp.len())?;
    check_len(OP, "mean", rows, mean.len())?;
    check_len(OP, "rstd", rows, rstd.len())?;
    check_len(OP, "weight", c, weight.len())?;
    check_len(OP, "dweight", c, dweight.len())?;
    check_len(OP, "dbias", c, dbias.len())?;
    if c == 0 {
        return Ok(());
    }
    let inv_c = F::from_f64(1.0 / c as f64);
    dinp.par_chunks_mut(c)
        .with_min_len(ROW_GRAIN)
        .enumerate()
        .for_each(|(r, di)| {
            let (x, g) = (&inp[r * c..(r + 1) * c], &dout[r * c..(r + 1) * c]);
            let (mu, s) = (mean[r], rstd[r]);
            // dnorm = weight * dout; the input gradient removes its mean and its projection
            // on the normalised input.
            let mut dnorm_mean = F::ZERO;
            let mut dnorm_xhat_mean = F::ZERO;
            for i in 0..c {
                let xhat = (x[i] - mu) * s;
                let dnorm = weight[i] * g[i];
                dnorm_mean += dnorm;
                dnorm_xhat_mean += dnorm * xhat;
            }
            dnorm_mean *= inv_c;
            dnorm_xhat_mean *= inv_c;
            for i in 0..c {
                let xhat = (x[i] - mu) * s;
                let dnorm = weight[i] * g[i];
                di[i] += (dnorm - dnorm_mean - xhat * dnorm_xhat_mean) * s;
            }
        });
    // dweight and dbias share column chunks: walk the same columns of every row in order.
    par_col_chunks_pair(dweight, dbias, |c0, dw, db| {
        for r in 0..rows {
            let (mu, s) = (mean[r], rstd[r]);
            let base = r * c + c0;
            for j in 0..dw.len() {
                let g = dout[base + j];
                dw[j] += (inp[base + j] - mu) * s * g;
                db[j] += g;
            }
        }
    });
    Ok(())
}

/// Splits two equally long column vectors into the same fixed chunks and runs `f(first_col,
/// chunk_a, chunk_b)` on each in parallel.
fn par_col_chunks_pair<F: Float>(
    a: &mut [F],
    b: &mut [F],
    f: impl Fn(usize, &mut [F], &mut [F]) + Sync,
) {
    let chunk = super::COL_CHUNK;
    a.par_chunks_mut(chunk)
        .zip(b.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(i, (ca, cb))| f(i * chunk, ca, cb));
}
