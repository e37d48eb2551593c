//! Launchers of `kernels/pointwise.cu` (residual add, scale, bf16 ⇄ fp32 conversion) and
//! `kernels/gelu.cu`, and of `kernels/bias_grad.cu` (the bias gradient, a column sum).

use super::{CudaBackend, CudaMut, CudaRef, DType, blocks, int, launch, memory};
use crate::backend::BackendError;

/// Rows summed per partial of the bias gradient.
const BIAS_ROWS_PER_CHUNK: usize = 64;

impl CudaBackend {
    pub(super) fn gelu_forward_launch(
        &self,
        out: CudaMut<'_>,
        inp: CudaRef<'_>,
    ) -> Result<(), BackendError> {
        const OP: &str = "gelu_forward";
        let len = inp.len;
        let out = memory::exact(OP, "out", &out, DType::Bf16, len)?;
        let inp = memory::exact(OP, "inp", &inp, DType::Bf16, len)?;
        let n = len as i64;
        launch!(self, "gelu_forward", (blocks(OP, len, 256)?, 1, 1), 256, 0; out, inp, n)
    }

    pub(super) fn gelu_backward_launch(
        &self,
        dinp: CudaMut<'_>,
        inp: CudaRef<'_>,
        dout: CudaRef<'_>,
    ) -> Result<(), BackendError> {
        const OP: &str = "gelu_backward";
        let len = inp.len;
        let dinp = memory::exact(OP, "dinp", &dinp, DType::Bf16, len)?;
        let inp = memory::exact(OP, "inp", &inp, DType::Bf16, len)?;
        let dout = memory::exact(OP, "dout", &dout, DType::Bf16, len)?;
        let n = len as i64;
        launch!(self, "gelu_backward", (blocks(OP, len, 256)?, 1, 1), 256, 0; dinp, inp, dout, n)
    }

    pub(super) fn residual_forward_launch(
        &self,
        out: CudaMut<'_>,
        a: CudaRef<'_>,
        b: CudaRef<'_>,
    ) -> Result<(), BackendError> {
        const OP: &str = "residual_forward";
        let len = a.len;
        let out = memory::exact(OP, "out", &out, DType::Bf16, len)?;
        let a = memory::exact(OP, "a", &a, DType::Bf16, len)?;
        let b = memory::exact(OP, "b", &b, DType::Bf16, len)?;
        let n = len as i64;
        launch!(self, "residual_forward", (blocks(OP, len, 256)?, 1, 1), 256, 0; out, a, b, n)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn dropout_launch(
        &self,
        out: CudaMut<'_>,
        inp: CudaRef<'_>,
        p: f32,
        key: u64,
        offset: u64,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        const OP: &str = "dropout";
        let len = inp.len;
        let out = memory::exact(OP, "out", &out, DType::Bf16, len)?;
        let inp = memory::exact(OP, "inp", &inp, DType::Bf16, len)?;
        let threshold = crate::backend::dropout_threshold(p);
        let scale = (1.0 / (1.0 - f64::from(p))) as f32;
        let accumulate = i32::from(accumulate);
        let n = len as i64;
        launch!(self, "dropout", (blocks(OP, len, 256)?, 1, 1), 256, 0;
            out, inp, threshold, scale, key, offset, accumulate, n)
    }

    pub(super) fn scale_launch(&self, x: CudaMut<'_>, factor: f32) -> Result<(), BackendError> {
        let len = x.len;
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        let grid = (blocks("scale", len, 256)?, 1, 1);
        let addr = x.addr;
        match x.dtype {
            DType::Bf16 => launch!(self, "scale_bf16", grid, 256, 0; addr, factor, n),
            DType::F32 => launch!(self, "scale_f32", grid, 256, 0; addr, factor, n),
        }
    }

    /// `out = x` converted to `out`'s element type (bf16 → fp32 exactly, fp32 → bf16 rounded
    /// to nearest even); equal lengths. NCCL's fp32 gradient sums go through here.
    pub fn convert_launch(&self, out: CudaMut<'_>, x: CudaRef<'_>) -> Result<(), BackendError> {
        const OP: &str = "convert";
        let len = x.len;
        if out.len != len {
            return Err(BackendError::ShapeMismatch {
                op: OP,
                name: "out",
                want: len,
                got: out.len,
            });
        }
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        let grid = (blocks(OP, len, 256)?, 1, 1);
        let (dst, src) = (out.addr, x.addr);
        match (out.dtype, x.dtype) {
            (DType::F32, DType::Bf16) => launch!(self, "widen_bf16", grid, 256, 0; dst, src, n),
            (DType::Bf16, DType::F32) => launch!(self, "narrow_f32", grid, 256, 0; dst, src, n),
            (a, _) => self.copy_on_device(dst, src, len * a.size(), OP),
        }
    }

    pub(super) fn bias_backward_launch(
        &self,
        dbias: CudaMut<'_>,
        dout: CudaRef<'_>,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "bias_backward";
        let dbias = memory::exact(OP, "dbias", &dbias, DType::Bf16, cols)?;
        let dout = memory::exact(OP, "dout", &dout, DType::Bf16, rows * cols)?;
        let chunks = rows.div_ceil(BIAS_ROWS_PER_CHUNK).max(1);
        let (_guard, partial, _) = self.scratch(chunks * cols, 0)?;
        let (r, c) = (int(OP, "rows", rows)?, int(OP, "cols", cols)?);
        let per_chunk = BIAS_ROWS_PER_CHUNK as i32;
        let grid = (
            blocks(OP, cols, 256)?,
            u32::try_from(chunks).map_err(|_| BackendError::BadDimensions {
                op: OP,
                detail: format!("{rows} rows"),
            })?,
            1,
        );
        launch!(self, "bias_backward_partial", grid, 256, 0; partial, dout, r, c, per_chunk)?;
        let n_chunks = int(OP, "chunks", chunks)?;
        launch!(self, "bias_backward_reduce", (blocks(OP, cols, 256)?, 1, 1), 256, 0;
            dbias, partial, n_chunks, c)
    }
}
