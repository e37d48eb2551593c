//! Rotary position embeddings: the inverse frequencies from `rope_theta` and Llama 3's
//! scaling, the cos/sin table, and the rotation of q and k with its backward.
//!
//! ```text
//! inv_freq[i] = 1 / theta^(2i / head_dim)                         i < head_dim/2
//! llama3:     wavelen = 2π / inv_freq[i]
//!             wavelen < original/high_freq_factor    keep inv_freq[i]
//!             wavelen > original/low_freq_factor     inv_freq[i] / factor
//!             otherwise, s = (original/wavelen - low) / (high - low):
//!                        (1 - s) · inv_freq[i] / factor + s · inv_freq[i]
//! angle[t][i] = t · inv_freq[i]
//! forward (rotate_half, Hugging Face's layout: dimension i pairs with i + head_dim/2):
//!   y[i]        = x[i] cos - x[i+half] sin
//!   y[i+half]   = x[i+half] cos + x[i] sin
//! backward: the inverse rotation (angle → -angle), as the rotation is orthogonal.
//! ```
//! The frequencies and angles are computed in f32 in the order `transformers` computes its
//! `inv_freq` buffer and `cos`/`sin` (which it does in f32 even for a float64 model), so the
//! table matches its own.

use crate::backend::BackendError;
use crate::backend::cpu::{Float, check_len};

use super::config::RopeConfig;

/// `inv_freq` for heads of `head_dim` (even) dimensions, as `transformers` computes it.
pub fn inv_freq(rope: &RopeConfig, head_dim: usize) -> Vec<f32> {
    let theta = rope.theta as f32;
    let mut freqs: Vec<f32> = (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            let power = f64::from(theta).powf(f64::from(exponent)) as f32;
            1.0 / power
        })
        .collect();
    if let Some(s) = rope.llama3 {
        let factor = s.factor as f32;
        let low = s.low_freq_factor as f32;
        let original = s.original_max_position_embeddings as f32;
        let low_freq_wavelen =
            (s.original_max_position_embeddings as f64 / s.low_freq_factor) as f32;
        let high_freq_wavelen =
            (s.original_max_position_embeddings as f64 / s.high_freq_factor) as f32;
        let span = (s.high_freq_factor - s.low_freq_factor) as f32;
        for f in &mut freqs {
            let wavelen = std::f32::consts::TAU / *f;
            if wavelen > low_freq_wavelen {
                *f /= factor;
            } else if wavelen >= high_freq_wavelen {
                let smooth = (original / wavelen - low) / span;
                *f = (1.0 - smooth) * *f / factor + smooth * *f;
            }
        }
    }
    freqs
}

/// cos and sin of `t · inv_freq[i]` for positions `t < seq_len`, (seq_len, head_dim/2).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable<F> {
    pub seq_len: usize,
    pub half: usize,
    cos: Vec<F>,
    sin: Vec<F>,
}

impl<F: Float> RopeTable<F> {
    /// The cosines, (seq_len, half) row-major.
    pub fn cos(&self) -> &[F] {
        &self.cos
    }
    /// The sines, (seq_len, half) row-major.
    pub fn sin(&self) -> &[F] {
        &self.sin
    }
    pub fn new(inv_freq: &[f32], seq_len: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for t in 0..seq_len {
            for &f in inv_freq {
                // The angle is rounded to f32 as transformers' f32 product rounds it.
                let angle = f64::from(t as f32 * f);
                cos.push(F::from_f32(angle.cos() as f32));
                sin.push(F::from_f32(angle.sin() as f32));
            }
        }
        RopeTable {
            seq_len,
            half,
            cos,
            sin,
        }
    }
}

/// q or k laid out (batch, seq_len, heads, head_dim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeShape {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

fn rotate<F: Float>(
    op: &'static str,
    x: &mut [F],
    table: &RopeTable<F>,
    s: RopeShape,
    inverse: bool,
) -> Result<(), BackendError> {
    if table.half * 2 != s.head_dim {
        return Err(BackendError::BadDimensions {
            op,
            detail: format!(
                "the table is for head_dim {}, the input has head_dim {}",
                table.half * 2,
                s.head_dim
            ),
        });
    }
    rotate_by(op, x, &table.cos, &table.sin, s, inverse)
}

/// Rotates `x` (B, T, heads, head_dim) in place by the angles whose cosines and sines `cos`
/// and `sin` hold, (positions, head_dim/2) each; `inverse` rotates by the negated angles.
pub fn rotate_by<F: Float>(
    op: &'static str,
    x: &mut [F],
    cos: &[F],
    sin: &[F],
    s: RopeShape,
    inverse: bool,
) -> Result<(), BackendError> {
    check_len(op, "x", s.batch * s.seq_len * s.heads * s.head_dim, x.len())?;
    let half = s.head_dim / 2;
    if half == 0 {
        return Ok(());
    }
    check_len(op, "sin", cos.len(), sin.len())?;
    if !s.head_dim.is_multiple_of(2)
        || !cos.len().is_multiple_of(half)
        || cos.len() / half < s.seq_len
    {
        return Err(BackendError::BadDimensions {
            op,
            detail: format!(
                "the table holds {} angles, which does not cover {} positions of head_dim {} (an even head_dim is needed)",
                cos.len(),
                s.seq_len,
                s.head_dim
            ),
        });
    }
    for (row, xs) in x.chunks_exact_mut(s.heads * s.head_dim).enumerate() {
        let t = row % s.seq_len;
        let cos = &cos[t * half..(t + 1) * half];
        let sin = &sin[t * half..(t + 1) * half];
        for head in xs.chunks_exact_mut(s.head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (c, sn) = (cos[i], if inverse { -sin[i] } else { sin[i] });
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * c - b * sn;
                hi[i] = b * c + a * sn;
            }
        }
    }
    Ok(())
}

/// Rotates `x` in place by each position's angles.
pub fn rope_forward<F: Float>(
    x: &mut [F],
    table: &RopeTable<F>,
    s: RopeShape,
) -> Result<(), BackendError> {
    rotate("rope_forward", x, table, s, false)
}

/// Turns the gradient of the rotated values into the gradient of the inputs, in place.
pub fn rope_backward<F: Float>(
    dx: &mut [F],
    table: &RopeTable<F>,
    s: RopeShape,
) -> Result<(), BackendError> {
    rotate("rope_backward", dx, table, s, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::LlamaConfig;
    use crate::llama::test_util::{Golden, assert_gradient, dot, fixture_dir, random};
    use crate::rng::Rng;

    #[test]
    fn inv_freq_matches_the_transformers_buffer() {
        // llama-gqa has llama3 scaling (all three bands: kept, smoothed, divided), qwen2
        // theta 1e6, mistral the default 1e4.
        for name in ["llama-gqa", "qwen2-tied", "mistral"] {
            let config = LlamaConfig::from_dir(&fixture_dir(name)).unwrap();
            let ours = inv_freq(&config.rope, config.head_dim);
            let golden = Golden::load(name).inv_freq;
            assert_eq!(ours.len(), golden.len(), "{name}");
            for (i, (a, b)) in ours.iter().zip(&golden).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} against {b}");
            }
        }
    }

    #[test]
    fn dimension_i_pairs_with_i_plus_half() {
        let table = RopeTable::<f64>::new(&[1.0, 0.5], 3);
        let s = RopeShape {
            batch: 1,
            seq_len: 3,
            heads: 1,
            head_dim: 4,
        };
        // Position 2, a unit vector along dimension 0: it turns towards dimension 2.
        let mut x = vec![0.0; 12];
        x[8] = 1.0;
        rope_forward(&mut x, &table, s).unwrap();
        let (c, sn) = ((2.0f32).cos() as f64, (2.0f32).sin() as f64);
        assert_eq!(&x[8..], &[c, 0.0, sn, 0.0]);
        // Position 0 is the identity.
        let mut y: Vec<f64> = (0..12).map(f64::from).collect();
        rope_forward(&mut y, &table, s).unwrap();
        assert_eq!(&y[..4], &[0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn backward_matches_finite_differences_and_undoes_forward() {
        let s = RopeShape {
            batch: 2,
            seq_len: 5,
            heads: 3,
            head_dim: 6,
        };
        let table = RopeTable::<f64>::new(&[1.0, 0.3, 0.01], s.seq_len);
        let mut rng = Rng::new(9);
        let n = s.batch * s.seq_len * s.heads * s.head_dim;
        let x = random(&mut rng, n, 1.0);
        let r = random(&mut rng, n, 1.0);
        let loss = |x: &[f64]| {
            let mut y = x.to_vec();
            rope_forward(&mut y, &table, s).unwrap();
            dot(&y, &r)
        };
        let mut dx = r.clone();
        rope_backward(&mut dx, &table, s).unwrap();
        assert_gradient("dx", &x, &dx, loss);
        let mut y = x.clone();
        rope_forward(&mut y, &table, s).unwrap();
        rope_backward(&mut y, &table, s).unwrap();
        // cos and sin are float32 values, so cos² + sin² is 1 only to ~1e-7.
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-6 * (1.0 + a.abs()), "{a} {b}");
        }
    }

    #[test]
    fn a_short_table_is_an_error() {
        let table = RopeTable::<f32>::new(&[1.0, 0.5], 2);
        let s = RopeShape {
            batch: 1,
            seq_len: 3,
            heads: 1,
            head_dim: 4,
        };
        let mut x = vec![0.0; 12];
        assert!(rope_forward(&mut x, &table, s).is_err());
        let s = RopeShape {
            head_dim: 6,
            seq_len: 2,
            ..s
        };
        assert!(rope_forward(&mut [0.0; 12], &table, s).is_err());
    }
}
