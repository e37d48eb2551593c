//! Launchers of `kernels/reduce.cu`: Σx and Σx² over a bf16 or fp32 buffer in two fixed-order
//! stages, the result copied to the host.

use super::{CudaBackend, CudaRef, DType, launch};
use crate::backend::BackendError;

/// Blocks of the first stage: a constant, so the summation order is the same on every GPU.
const REDUCE_BLOCKS: u32 = 1024;
const REDUCE_BLOCK: u32 = 512;

impl CudaBackend {
    pub(super) fn reduce(&self, x: CudaRef<'_>, squares: bool) -> Result<f64, BackendError> {
        if x.len == 0 {
            return Ok(0.0);
        }
        let (_guard, partial, _) = self.scratch(REDUCE_BLOCKS as usize + 1, 0)?;
        let out = partial + 4 * REDUCE_BLOCKS as u64;
        let (addr, n) = (x.addr, x.len as u64);
        let grid = (REDUCE_BLOCKS, 1, 1);
        match (x.dtype, squares) {
            (DType::Bf16, false) => {
                launch!(self, "sum_partial_bf16", grid, REDUCE_BLOCK, 0; partial, addr, n)
            }
            (DType::F32, false) => {
                launch!(self, "sum_partial_f32", grid, REDUCE_BLOCK, 0; partial, addr, n)
            }
            (DType::Bf16, true) => {
                launch!(self, "sum_squares_partial_bf16", grid, REDUCE_BLOCK, 0; partial, addr, n)
            }
            (DType::F32, true) => {
                launch!(self, "sum_squares_partial_f32", grid, REDUCE_BLOCK, 0; partial, addr, n)
            }
        }?;
        let count = REDUCE_BLOCKS as i32;
        launch!(self, "reduce_partials", (1, 1, 1), REDUCE_BLOCK, 0; out, partial, count)?;
        let mut host = [0f32; 1];
        self.copy_to_host(&mut host, out, "reduce")?;
        Ok(f64::from(host[0]))
    }
}
