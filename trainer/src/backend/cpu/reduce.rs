//! CPU reductions with a fixed order: fixed-size chunks summed in parallel, partial sums
//! combined sequentially in chunk order, so the result never depends on scheduling.

use super::Float;
use rayon::prelude::*;

/// Elements per chunk; part of the result's definition, so never derived from thread counts.
const CHUNK: usize = 1 << 12;

fn chunked<F: Float>(x: &[F], term: impl Fn(F) -> f64 + Sync) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| term(v)).sum::<f64>())
        .collect();
    partials.iter().sum()
}

/// `Σ x`, accumulated in f64.
pub fn sum<F: Float>(x: &[F]) -> f64 {
    chunked(x, |v| v.to_f64())
}

/// `Σ x²`, accumulated in f64.
pub fn sum_squares<F: Float>(x: &[F]) -> f64 {
    chunked(x, |v| {
        let v = v.to_f64();
        v * v
    })
}
