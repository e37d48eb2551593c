//! Launchers of `kernels/rmsnorm.cu`: the forward (one warp per row) and the backward (input
//! gradient plus per-block weight-gradient partials, then a fixed-order reduce).

use super::{CudaBackend, CudaMut, CudaRef, DType, blocks, int, launch, memory};
use crate::backend::BackendError;

/// Rows per block of the backward; the partials are `ceil(rows / RMS_ROWS_PER_BLOCK) × C`.
const RMS_ROWS_PER_BLOCK: usize = 32;

impl CudaBackend {
    pub(super) fn rmsnorm_forward_launch(
        &self,
        out: CudaMut<'_>,
        rstd: CudaMut<'_>,
        inp: CudaRef<'_>,
        weight: CudaRef<'_>,
        rows: usize,
        channels: usize,
        eps: f64,
    ) -> Result<(), BackendError> {
        const OP: &str = "rmsnorm_forward";
        let n = rows * channels;
        let out = memory::exact(OP, "out", &out, DType::Bf16, n)?;
        let rstd = memory::exact(OP, "rstd", &rstd, DType::F32, rows)?;
        let inp = memory::exact(OP, "inp", &inp, DType::Bf16, n)?;
        let weight = memory::exact(OP, "weight", &weight, DType::Bf16, channels)?;
        // fp32, as the CPU backend's f32 adds it.
        let eps = eps as f32;
        if rows == 0 || channels == 0 {
            // No row to normalise (the CPU reference leaves everything as it is).
            return Ok(());
        }
        let (n_rows, c) = (int(OP, "rows", rows)?, int(OP, "channels", channels)?);
        // One warp per row, 8 warps per block.
        let grid = (blocks(OP, rows, 8)?, 1, 1);
        launch!(self, "rmsnorm_forward", grid, 256, 0; out, rstd, inp, weight, n_rows, c, eps)
    }

    pub(super) fn rmsnorm_backward_launch(
        &self,
        dinp: CudaMut<'_>,
        dweight: CudaMut<'_>,
        dout: CudaRef<'_>,
        inp: CudaRef<'_>,
        weight: CudaRef<'_>,
        rstd: CudaRef<'_>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "rmsnorm_backward";
        let n = rows * channels;
        let dinp = memory::exact(OP, "dinp", &dinp, DType::Bf16, n)?;
        let dweight = memory::exact(OP, "dweight", &dweight, DType::Bf16, channels)?;
        let dout = memory::exact(OP, "dout", &dout, DType::Bf16, n)?;
        let inp = memory::exact(OP, "inp", &inp, DType::Bf16, n)?;
        let weight = memory::exact(OP, "weight", &weight, DType::Bf16, channels)?;
        let rstd = memory::exact(OP, "rstd", &rstd, DType::F32, rows)?;
        if rows == 0 || channels == 0 {
            // Nothing to add to either gradient.
            return Ok(());
        }
        let (n_rows, c) = (int(OP, "rows", rows)?, int(OP, "channels", channels)?);
        let partials = rows.div_ceil(RMS_ROWS_PER_BLOCK);
        let (_guard, dweight_partial, _) = self.scratch(partials * channels, 0)?;
        let rows_per_block = RMS_ROWS_PER_BLOCK as i32;
        let shared = (RMS_ROWS_PER_BLOCK * 4) as u32;
        let grid = (blocks(OP, rows, RMS_ROWS_PER_BLOCK)?, 1, 1);
        launch!(self, "rmsnorm_backward", grid, 256, shared;
            dinp, dweight_partial, dout, inp, weight, rstd, n_rows, c, rows_per_block)?;
        let num_partials = int(OP, "partials", partials)?;
        let grid = (blocks(OP, channels, 256)?, 1, 1);
        launch!(self, "rmsnorm_backward_reduce", grid, 256, 0;
            dweight, dweight_partial, num_partials, c)
    }
}
