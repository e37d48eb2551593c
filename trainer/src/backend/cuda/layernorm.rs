//! Launchers of `kernels/layernorm.cu`: the forward (one warp per row) and the backward
//! (input gradient plus per-block parameter partials, then a fixed-order reduce).

use super::{CudaBackend, CudaMut, CudaRef, DType, blocks, int, launch, memory};
use crate::backend::BackendError;

/// Rows per block of the backward; the partials are `ceil(rows / LN_ROWS_PER_BLOCK) × C`.
const LN_ROWS_PER_BLOCK: usize = 32;

impl CudaBackend {
    pub(super) fn layernorm_forward_launch(
        &self,
        out: CudaMut<'_>,
        mean: CudaMut<'_>,
        rstd: CudaMut<'_>,
        inp: CudaRef<'_>,
        weight: CudaRef<'_>,
        bias: CudaRef<'_>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "layernorm_forward";
        let n = rows * channels;
        let out = memory::exact(OP, "out", &out, DType::Bf16, n)?;
        let mean = memory::exact(OP, "mean", &mean, DType::F32, rows)?;
        let rstd = memory::exact(OP, "rstd", &rstd, DType::F32, rows)?;
        let inp = memory::exact(OP, "inp", &inp, DType::Bf16, n)?;
        let weight = memory::exact(OP, "weight", &weight, DType::Bf16, channels)?;
        let bias = memory::exact(OP, "bias", &bias, DType::Bf16, channels)?;
        let (n_rows, c) = (int(OP, "rows", rows)?, int(OP, "channels", channels)?);
        // One warp per row, 8 warps per block.
        let grid = (blocks(OP, rows, 8)?, 1, 1);
        launch!(self, "layernorm_forward", grid, 256, 0;
            out, mean, rstd, inp, weight, bias, n_rows, c)
    }

    pub(super) fn layernorm_backward_launch(
        &self,
        dinp: CudaMut<'_>,
        dweight: CudaMut<'_>,
        dbias: CudaMut<'_>,
        dout: CudaRef<'_>,
        inp: CudaRef<'_>,
        weight: CudaRef<'_>,
        mean: CudaRef<'_>,
        rstd: CudaRef<'_>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "layernorm_backward";
        let n = rows * channels;
        let dinp = memory::exact(OP, "dinp", &dinp, DType::Bf16, n)?;
        let dweight = memory::exact(OP, "dweight", &dweight, DType::Bf16, channels)?;
        let dbias = memory::exact(OP, "dbias", &dbias, DType::Bf16, channels)?;
        let dout = memory::exact(OP, "dout", &dout, DType::Bf16, n)?;
        let inp = memory::exact(OP, "inp", &inp, DType::Bf16, n)?;
        let weight = memory::exact(OP, "weight", &weight, DType::Bf16, channels)?;
        let mean = memory::exact(OP, "mean", &mean, DType::F32, rows)?;
        let rstd = memory::exact(OP, "rstd", &rstd, DType::F32, rows)?;
        let (n_rows, c) = (int(OP, "rows", rows)?, int(OP, "channels", channels)?);
        let partials = rows.div_ceil(LN_ROWS_PER_BLOCK).max(1);
        let (_guard, scratch, _) = self.scratch(2 * partials * channels, 0)?;
        let dweight_partial = scratch;
        let dbias_partial = scratch + (4 * partials * channels) as u64;
        let rows_per_block = LN_ROWS_PER_BLOCK as i32;
        let shared = (2 * LN_ROWS_PER_BLOCK * 4) as u32;
        let grid = (blocks(OP, rows, LN_ROWS_PER_BLOCK)?, 1, 1);
        launch!(self, "layernorm_backward", grid, 256, shared;
            dinp, dweight_partial, dbias_partial, dout, inp, weight, mean, rstd, n_rows, c,
            rows_per_block)?;
        let num_partials = int(OP, "partials", partials)?;
        let grid = (blocks(OP, channels, 256)?, 1, 1);
        launch!(self, "layernorm_backward_reduce", grid, 256, 0;
            dweight, dbias, dweight_partial, dbias_partial, num_partials, c)
    }
}
