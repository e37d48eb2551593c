//! CPU matrix products through the `gemm` crate (rayon-parallel), plus the bias gradient.
//!
//! This file holds the crate's only `unsafe`: `gemm::gemm` takes raw pointers and strides, so
//! [`matmul`] checks every slice length against the shape first and then makes the call.
//! `gemm` splits work over output tiles, never over the reduction dimension, so results do not
//! depend on thread scheduling.
#![allow(unsafe_code)]

use super::{Float, check_len, par_col_chunks};
use crate::backend::{BackendError, MatmulShape};
use rayon::prelude::*;

/// Products smaller than this many multiply-adds run single-threaded (thread start-up costs
/// more than the work).
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// `out (m×n) = op(a)·op(b) [+ bias]`, or `out += op(a)·op(b)` when `accumulate`.
pub fn matmul<F: Float>(
    out: &mut [F],
    a: &[F],
    b: &[F],
    bias: Option<&[F]>,
    s: MatmulShape,
    accumulate: bool,
) -> Result<(), BackendError> {
    const OP: &str = "matmul";
    let (m, n, k) = (s.m, s.n, s.k);
    check_len(OP, "out", m * n, out.len())?;
    check_len(OP, "a", m * k, a.len())?;
    check_len(OP, "b", k * n, b.len())?;
    if accumulate && bias.is_some() {
        return Err(BackendError::BadDimensions {
            op: OP,
            detail: "a bias cannot be added while accumulating".into(),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    // Start from the bias (then accumulate the product onto it) or from zero.
    let read_dst = match bias {
        Some(bias) => {
            check_len(OP, "bias", n, bias.len())?;
            out.par_chunks_mut(n)
                .for_each(|row| row.copy_from_slice(bias));
            true
        }
        None => accumulate,
    };
    if k == 0 {
        if !read_dst {
            out.fill(F::ZERO);
        }
        return Ok(());
    }
    // Row-major strides: element (i, p) of op(a) and (p, j) of op(b).
    let (a_rs, a_cs) = if s.a_transposed { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if s.b_transposed { (1, k) } else { (n, 1) };
    let parallelism = if m * n * k >= PARALLEL_MIN_FLOPS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `out` holds exactly m·n elements addressed as (i·n + j); `a` holds m·k elements
    // and every (i, p) maps to i·a_rs + p·a_cs < m·k for both layouts; likewise `b` with k·n.
    // The slices are borrowed for the duration of the call (`out` exclusively, so it cannot
    // alias `a` or `b`), and F is f32 or f64, which gemm supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            F::ONE,
            F::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// `dbias[j] += Σ_i dout[i, j]`: columns split into fixed chunks, rows summed in order.
pub fn bias_backward<F: Float>(
    dbias: &mut [F],
    dout: &[F],
    rows: usize,
    cols: usize,
) -> Result<(), BackendError> {
    check_len("bias_backward", "dbias", cols, dbias.len())?;
    check_len("bias_backward", "dout", rows * cols, dout.len())?;
    par_col_chunks(dbias, |c0, chunk| {
        for r in 0..rows {
            let row = &dout[r * cols + c0..r * cols + c0 + chunk.len()];
            for (d, &g) in chunk.iter_mut().zip(row) {
                *d += g;
            }
        }
    });
    Ok(())
}
