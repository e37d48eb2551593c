//! Launcher of `kernels/softmax_xent.cu`: softmax, cross-entropy and the logits gradient in
//! one pass over each row of logits.

use super::{CudaBackend, CudaMut, CudaTokens, DType, int, launch, memory};
use crate::backend::BackendError;
use crate::data::loader::IGNORE_TARGET;

/// Threads per row (the kernel's XENT_BLOCK).
const XENT_BLOCK: u32 = 512;

impl CudaBackend {
    pub(super) fn softmax_cross_entropy_launch(
        &self,
        logits: CudaMut<'_>,
        losses: CudaMut<'_>,
        targets: &CudaTokens,
        rows: usize,
        vocab: usize,
        padded_vocab: usize,
        dloss: f64,
    ) -> Result<(), BackendError> {
        const OP: &str = "softmax_cross_entropy";
        if vocab == 0 || vocab > padded_vocab {
            return Err(BackendError::BadDimensions {
                op: OP,
                detail: format!("vocab {vocab} must be in 1..={padded_vocab} (the padded vocab)"),
            });
        }
        let logits = memory::exact(OP, "logits", &logits, DType::Bf16, rows * padded_vocab)?;
        let losses = memory::exact(OP, "losses", &losses, DType::F32, rows)?;
        if targets.host.len() < rows {
            return Err(BackendError::ShapeMismatch {
                op: OP,
                name: "targets",
                want: rows,
                got: targets.host.len(),
            });
        }
        if let Some((position, &token)) = targets.host[..rows]
            .iter()
            .enumerate()
            .find(|(_, t)| **t as usize >= vocab && **t != IGNORE_TARGET)
        {
            return Err(BackendError::TokenOutOfRange {
                op: OP,
                token,
                position,
                limit: vocab,
            });
        }
        let grid = (
            u32::try_from(rows).map_err(|_| BackendError::BadDimensions {
                op: OP,
                detail: format!("{rows} rows"),
            })?,
            1,
            1,
        );
        let tokens = targets.addr;
        let (v, vp) = (
            int(OP, "vocab", vocab)?,
            int(OP, "padded_vocab", padded_vocab)?,
        );
        let scale = dloss as f32;
        launch!(self, "softmax_cross_entropy", grid, XENT_BLOCK, 0;
            logits, losses, tokens, v, vp, scale)
    }
}
