//! Launchers of `kernels/attention.cu`: flash-style causal attention for head size 64, the
//! forward saving one log-sum-exp per row, the backward recomputing probabilities tile by tile.

use super::{CudaBackend, CudaMut, CudaRef, DType, blocks, int, launch, memory};
use crate::backend::{AttentionShape, BackendError};

/// The head size the kernels are written for (every GPT-2 size).
pub(super) const HEAD_SIZE: usize = 64;
/// Query rows per forward / dq block, key rows per dkdv block (the kernels' ROWS).
const ROWS: usize = 64;

/// (B, T, NH) as kernel ints, and the grid of the row kernels.
type Dims = (i32, i32, i32, (u32, u32, u32));

/// Checks the shape; returns its [`Dims`].
fn dims(op: &'static str, s: AttentionShape) -> Result<Dims, BackendError> {
    if s.heads == 0 || s.channels != s.heads * HEAD_SIZE {
        return Err(BackendError::BadDimensions {
            op,
            detail: format!(
                "the CUDA attention kernels need head size {HEAD_SIZE}; width {} over {} heads \
                 is not (use a width of 64 × heads)",
                s.channels, s.heads
            ),
        });
    }
    let bh = s.batch * s.heads;
    let bh_grid = u32::try_from(bh)
        .ok()
        .filter(|&v| v <= 65_535)
        .ok_or_else(|| BackendError::BadDimensions {
            op,
            detail: format!("batch × heads = {bh} exceeds the 65535 blocks of grid.y"),
        })?;
    let grid = (blocks(op, s.seq_len, ROWS)?, bh_grid, 1);
    Ok((
        int(op, "batch", s.batch)?,
        int(op, "seq_len", s.seq_len)?,
        int(op, "heads", s.heads)?,
        grid,
    ))
}

impl CudaBackend {
    pub(super) fn attention_forward_launch(
        &self,
        out: CudaMut<'_>,
        state: CudaMut<'_>,
        qkv: CudaRef<'_>,
        s: AttentionShape,
    ) -> Result<(), BackendError> {
        const OP: &str = "attention_forward";
        let (b, t, nh, grid) = dims(OP, s)?;
        let btc = s.batch * s.seq_len * s.channels;
        let out = memory::exact(OP, "out", &out, DType::Bf16, btc)?;
        let lse = memory::exact(
            OP,
            "state",
            &state,
            DType::F32,
            s.batch * s.heads * s.seq_len,
        )?;
        let qkv = memory::exact(OP, "qkv", &qkv, DType::Bf16, 3 * btc)?;
        launch!(self, "attention_forward", grid, ROWS as u32, 0; out, lse, qkv, b, t, nh)
    }

    pub(super) fn attention_backward_launch(
        &self,
        dqkv: CudaMut<'_>,
        scratch: CudaMut<'_>,
        dout: CudaRef<'_>,
        qkv: CudaRef<'_>,
        out: CudaRef<'_>,
        state: CudaRef<'_>,
        s: AttentionShape,
    ) -> Result<(), BackendError> {
        const OP: &str = "attention_backward";
        let (b, t, nh, grid) = dims(OP, s)?;
        let btc = s.batch * s.seq_len * s.channels;
        let rows = s.batch * s.heads * s.seq_len;
        let dqkv = memory::exact(OP, "dqkv", &dqkv, DType::Bf16, 3 * btc)?;
        let delta = memory::exact(OP, "scratch", &scratch, DType::F32, rows)?;
        let dout = memory::exact(OP, "dout", &dout, DType::Bf16, btc)?;
        let qkv = memory::exact(OP, "qkv", &qkv, DType::Bf16, 3 * btc)?;
        let out = memory::exact(OP, "out", &out, DType::Bf16, btc)?;
        let lse = memory::exact(OP, "state", &state, DType::F32, rows)?;
        // One warp per (b, t, h), 8 per block.
        let pre = (blocks(OP, rows, 8)?, 1, 1);
        launch!(self, "attention_backward_preprocess", pre, 256, 0; delta, dout, out, b, t, nh)?;
        launch!(self, "attention_backward_dkdv", grid, 2 * ROWS as u32, 0;
            dqkv, dout, qkv, lse, delta, b, t, nh)?;
        launch!(self, "attention_backward_dq", grid, ROWS as u32, 0;
            dqkv, dout, qkv, lse, delta, b, t, nh)
    }
}
