//! CPU token + position embedding, forward and backward.

use super::{Float, ROW_GRAIN, check_len};
use crate::backend::BackendError;
use rayon::prelude::*;

fn check_tokens(
    op: &'static str,
    tokens: &[u32],
    n: usize,
    limit: usize,
) -> Result<(), BackendError> {
    check_len(op, "tokens", n, tokens.len())?;
    if let Some((position, &token)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= limit)
    {
        return Err(BackendError::TokenOutOfRange {
            op,
            token,
            position,
            limit,
        });
    }
    Ok(())
}

/// `out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]`.
pub fn encoder_forward<F: Float>(
    out: &mut [F],
    tokens: &[u32],
    wte: &[F],
    wpe: &[F],
    batch: usize,
    seq_len: usize,
    c: usize,
) -> Result<(), BackendError> {
    const OP: &str = "encoder_forward";
    let n = batch * seq_len;
    check_len(OP, "out", n * c, out.len())?;
    if c == 0 || !wte.len().is_multiple_of(c) || wpe.len() < seq_len * c {
        return Err(BackendError::BadDimensions {
            op: OP,
            detail: format!(
                "wte ({}) and wpe ({}) must be whole rows of {c} covering {seq_len} positions",
                wte.len(),
                wpe.len()
            ),
        });
    }
    check_tokens(OP, tokens, n, wte.len() / c)?;
    out.par_chunks_mut(c)
        .with_min_len(ROW_GRAIN)
        .enumerate()
        .for_each(|(bt, row)| {
            let t = bt % seq_len;
            let tok = tokens[bt] as usize;
            let (e, p) = (&wte[tok * c..(tok + 1) * c], &wpe[t * c..(t + 1) * c]);
            for ((o, &x), &y) in row.iter_mut().zip(e).zip(p) {
                *o = x + y;
            }
        });
    Ok(())
}

/// `dwte[tokens[b,t],:] += dout[b,t,:]` (sequential over positions: a token may repeat) and
/// `dwpe[t,:] += Σ_b dout[b,t,:]` (parallel over positions, batch summed in order).
pub fn encoder_backward<F: Float>(
    dwte: &mut [F],
    dwpe: &mut [F],
    dout: &[F],
    tokens: &[u32],
    batch: usize,
    seq_len: usize,
    c: usize,
) -> Result<(), BackendError> {
    const OP: &str = "encoder_backward";
    let n = batch * seq_len;
    check_len(OP, "dout", n * c, dout.len())?;
    if c == 0 || !dwte.len().is_multiple_of(c) || dwpe.len() < seq_len * c {
        return Err(BackendError::BadDimensions {
            op: OP,
            detail: format!(
                "dwte ({}) and dwpe ({}) must be whole rows of {c} covering {seq_len} positions",
                dwte.len(),
                dwpe.len()
            ),
        });
    }
    check_tokens(OP, tokens, n, dwte.len() / c)?;
    dwpe[..seq_len * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(t, row)| {
            for b in 0..batch {
                let g = &dout[(b * seq_len + t) * c..(b * seq_len + t + 1) * c];
                for (d, &x) in row.iter_mut().zip(g) {
                    *d += x;
                }
            }
        });
    for (bt, &tok) in tokens.iter().enumerate() {
        let tok = tok as usize;
        let g = &dout[bt * c..(bt + 1) * c];
        for (d, &x) in dwte[tok * c..(tok + 1) * c].iter_mut().zip(g) {
            *d += x;
        }
    }
    Ok(())
}

fn check_rows<F: Float>(op: &'static str, table: &[F], c: usize) -> Result<(), BackendError> {
    if c == 0 || !table.len().is_multiple_of(c) {
        return Err(BackendError::BadDimensions {
            op,
            detail: format!("the table ({}) must be whole rows of {c}", table.len()),
        });
    }
    Ok(())
}

/// `out[r,:] = wte[tokens[r],:]` (no position embedding: the Llama family).
pub fn embedding_forward<F: Float>(
    out: &mut [F],
    tokens: &[u32],
    wte: &[F],
    rows: usize,
    c: usize,
) -> Result<(), BackendError> {
    const OP: &str = "embedding_forward";
    check_len(OP, "out", rows * c, out.len())?;
    check_rows(OP, wte, c)?;
    check_tokens(OP, tokens, rows, wte.len() / c)?;
    out.par_chunks_mut(c)
        .with_min_len(ROW_GRAIN)
        .zip(tokens)
        .for_each(|(row, &tok)| {
            let tok = tok as usize;
            row.copy_from_slice(&wte[tok * c..(tok + 1) * c]);
        });
    Ok(())
}

/// `dwte[tokens[r],:] += dout[r,:]`, sequential over rows (a token may repeat).
pub fn embedding_backward<F: Float>(
    dwte: &mut [F],
    dout: &[F],
    tokens: &[u32],
    rows: usize,
    c: usize,
) -> Result<(), BackendError> {
    const OP: &str = "embedding_backward";
    check_len(OP, "dout", rows * c, dout.len())?;
    check_rows(OP, dwte, c)?;
    check_tokens(OP, tokens, rows, dwte.len() / c)?;
    for (g, &tok) in dout.chunks_exact(c).zip(tokens) {
        let tok = tok as usize;
        for (d, &x) in dwte[tok * c..(tok + 1) * c].iter_mut().zip(g) {
            *d += x;
        }
    }
    Ok(())
}
