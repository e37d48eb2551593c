//! Next-token cross-entropy as `transformers` computes a causal LM's loss: position `t`
//! predicts the label at `t + 1`, positions whose label is -100 are skipped, and the loss is
//! the mean over the remaining positions. Forward and backward together.
//!
//! ```text
//! loss = (1/N) Σ_(b,t) [ logsumexp(logits[b,t]) - logits[b,t,target[b,t]] ]   N = positions with a target
//! dlogits[b,t] = (softmax(logits[b,t]) - onehot(target[b,t])) / N           (0 where no target)
//! ```
//! The sums over the vocabulary and over positions run in f64 and are rounded once, so in f32
//! the loss is as close to the exact value as the logits allow.

use crate::backend::BackendError;
use crate::backend::cpu::{Float, check_len};

/// The label that marks a position as not trained on (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// `targets[r]`: the token row `r` of `logits` (rows, vocab) must predict, or None.
/// Returns the mean loss and its gradient with respect to the logits.
pub fn cross_entropy<F: Float>(
    logits: &[F],
    targets: &[Option<u32>],
    vocab: usize,
) -> Result<(F, Vec<F>), BackendError> {
    const OP: &str = "cross_entropy";
    check_len(OP, "logits", targets.len() * vocab, logits.len())?;
    let count = targets.iter().flatten().count();
    if count == 0 {
        return Err(BackendError::BadDimensions {
            op: OP,
            detail: "no position has a target".into(),
        });
    }
    let mut dlogits = vec![F::ZERO; logits.len()];
    let mut total = 0.0f64;
    for (position, (row, target)) in logits.chunks_exact(vocab).zip(targets).enumerate() {
        let Some(target) = *target else { continue };
        let target = target as usize;
        if target >= vocab {
            return Err(BackendError::TokenOutOfRange {
                op: OP,
                token: target as u32,
                position,
                limit: vocab,
            });
        }
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &x| m.max(x.to_f64()));
        let sum: f64 = row.iter().map(|&x| (x.to_f64() - max).exp()).sum();
        let log_sum = max + sum.ln();
        total += log_sum - row[target].to_f64();
        let grad = &mut dlogits[position * vocab..(position + 1) * vocab];
        for (i, (g, &x)) in grad.iter_mut().zip(row).enumerate() {
            let p = (x.to_f64() - log_sum).exp();
            let onehot = if i == target { 1.0 } else { 0.0 };
            *g = F::from_f64((p - onehot) / count as f64);
        }
    }
    Ok((F::from_f64(total / count as f64), dlogits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::test_util::{assert_gradient, random};
    use crate::rng::Rng;

    #[test]
    fn uniform_logits_cost_ln_vocab() {
        let (loss, _) = cross_entropy(&[0.5f64; 12], &[Some(1), None, Some(3)], 4).unwrap();
        assert!((loss - 4f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn backward_matches_finite_differences_and_skips_ignored_rows() {
        let mut rng = Rng::new(3);
        let (rows, vocab) = (5, 7);
        let logits = random(&mut rng, rows * vocab, 2.0);
        let targets = [Some(3), None, Some(0), Some(6), None];
        let (_, grad) = cross_entropy(&logits, &targets, vocab).unwrap();
        assert_gradient("dlogits", &logits, &grad, |l| {
            cross_entropy(l, &targets, vocab).unwrap().0
        });
        assert!(grad[vocab..2 * vocab].iter().all(|&g| g == 0.0));
    }

    #[test]
    fn no_target_or_a_target_beyond_the_vocabulary_is_an_error() {
        assert!(cross_entropy(&[0.0f32; 6], &[None, None], 3).is_err());
        assert!(cross_entropy(&[0.0f32; 6], &[Some(3), None], 3).is_err());
        assert!(cross_entropy(&[0.0f32; 5], &[Some(1), None], 3).is_err());
    }
}
