//! Launchers of `kernels/swiglu.cu`: the Llama MLP's gate, `silu(gate) · up`, and its
//! backward, elementwise.

use super::{CudaBackend, CudaMut, CudaRef, DType, blocks, launch, memory};
use crate::backend::BackendError;

impl CudaBackend {
    pub(super) fn swiglu_forward_launch(
        &self,
        out: CudaMut<'_>,
        gate: CudaRef<'_>,
        up: CudaRef<'_>,
    ) -> Result<(), BackendError> {
        const OP: &str = "swiglu_forward";
        let len = gate.len;
        let out = memory::exact(OP, "out", &out, DType::Bf16, len)?;
        let gate = memory::exact(OP, "gate", &gate, DType::Bf16, len)?;
        let up = memory::exact(OP, "up", &up, DType::Bf16, len)?;
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        launch!(self, "swiglu_forward", (blocks(OP, len, 256)?, 1, 1), 256, 0; out, gate, up, n)
    }

    pub(super) fn swiglu_backward_launch(
        &self,
        dgate: CudaMut<'_>,
        dup: CudaMut<'_>,
        dout: CudaRef<'_>,
        gate: CudaRef<'_>,
        up: CudaRef<'_>,
    ) -> Result<(), BackendError> {
        const OP: &str = "swiglu_backward";
        let len = dout.len;
        let dgate = memory::exact(OP, "dgate", &dgate, DType::Bf16, len)?;
        let dup = memory::exact(OP, "dup", &dup, DType::Bf16, len)?;
        let dout = memory::exact(OP, "dout", &dout, DType::Bf16, len)?;
        let gate = memory::exact(OP, "gate", &gate, DType::Bf16, len)?;
        let up = memory::exact(OP, "up", &up, DType::Bf16, len)?;
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        launch!(self, "swiglu_backward", (blocks(OP, len, 256)?, 1, 1), 256, 0;
            dgate, dup, dout, gate, up, n)
    }
}
