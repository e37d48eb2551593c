//! CPU fused softmax + cross-entropy + logits gradient (padded vocabulary columns ignored).

use super::{Float, check_len};
use crate::backend::BackendError;
use crate::data::loader::IGNORE_TARGET;
use rayon::prelude::*;

/// Per row: `losses[r] = logsumexp(z[..V]) - z[target]`, and `z` replaced by
/// `dloss·(softmax(z[..V]) - onehot(target))`, columns V..Vp set to zero. A row whose target
/// is [`IGNORE_TARGET`] has loss 0 and gradient 0.
pub fn softmax_cross_entropy<F: Float>(
    logits: &mut [F],
    losses: &mut [F],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    padded_vocab: usize,
    dloss: F,
) -> Result<(), BackendError> {
    const OP: &str = "softmax_cross_entropy";
    if vocab == 0 || vocab > padded_vocab {
        return Err(BackendError::BadDimensions {
            op: OP,
            detail: format!("vocab {vocab} must be in 1..={padded_vocab} (padded_vocab)"),
        });
    }
    check_len(OP, "logits", rows * padded_vocab, logits.len())?;
    check_len(OP, "losses", rows, losses.len())?;
    check_len(OP, "targets", rows, targets.len())?;
    if let Some((position, &token)) = targets
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= vocab && t != IGNORE_TARGET)
    {
        return Err(BackendError::TokenOutOfRange {
            op: OP,
            token,
            position,
            limit: vocab,
        });
    }
    logits
        .par_chunks_mut(padded_vocab)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((z, loss), &target)| {
            if target == IGNORE_TARGET {
                *loss = F::ZERO;
                z.fill(F::ZERO);
                return;
            }
            let target = target as usize;
            let (live, pad) = z.split_at_mut(vocab);
            let max = live
                .iter()
                .fold(F::from_f64(f64::NEG_INFINITY), |m, &x| m.max(x));
            let shifted_target = live[target] - max;
            let mut sum = F::ZERO;
            for x in live.iter_mut() {
                *x = (*x - max).fast_exp();
                sum += *x;
            }
            // loss = log(sum) - (z_t - max) = -log(p_t); computed from the shifted logit so
            // it stays accurate when p_t underflows.
            let inv = F::ONE / sum;
            *loss = sum.ln() - shifted_target;
            for x in live.iter_mut() {
                *x = *x * inv * dloss;
            }
            live[target] -= dloss;
            pad.fill(F::ZERO);
        });
    Ok(())
}
