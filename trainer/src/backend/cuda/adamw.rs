//! Launcher of `kernels/adamw.cu` and the optimizer state it updates: fp32 master weights and
//! AdamW moments for the rank's owned range of the flat parameter space.

use std::ops::Range;

use super::{CudaBackend, CudaBuf, CudaRef, DType, launch, memory};
use crate::backend::{AdamWStep, BackendError, check_range};

/// AdamW state on the GPU for `owned`.
#[derive(Debug)]
pub struct CudaOptState {
    owned: Range<usize>,
    master: CudaBuf,
    m: CudaBuf,
    v: CudaBuf,
    /// The kernel's one-tensor table: start (u64), length (u64), decay (f32).
    table: CudaBuf,
}

impl CudaOptState {
    pub(super) fn bytes(&self) -> usize {
        3 * 4 * self.owned.len()
    }
}

/// Blocks per tensor, capped: each thread strides over the rest.
const MAX_BLOCKS: usize = 8192;

impl CudaBackend {
    pub(super) fn alloc_opt_state_impl(
        &self,
        params: &CudaBuf,
        owned: Range<usize>,
    ) -> Result<CudaOptState, BackendError> {
        check_range(&owned, params.len)?;
        let n = owned.len();
        let mut state = CudaOptState {
            master: self.alloc_typed(n, DType::F32)?,
            m: self.alloc_typed(n, DType::F32)?,
            v: self.alloc_typed(n, DType::F32)?,
            table: self.alloc_typed(6, DType::F32)?,
            owned,
        };
        self.refresh_master(&mut state, params)?;
        Ok(state)
    }

    /// master = params[owned], widened to fp32.
    fn refresh_master(
        &self,
        state: &mut CudaOptState,
        params: &CudaBuf,
    ) -> Result<(), BackendError> {
        let mut host = vec![0f32; state.owned.len()];
        crate::backend::Backend::download(self, params, state.owned.start, &mut host)?;
        self.copy_to_device(state.master.addr, &host, "alloc_opt_state")
    }

    pub(super) fn adamw_update_launch(
        &self,
        params: &mut CudaBuf,
        grads: CudaRef<'_>,
        state: &mut CudaOptState,
        range: Range<usize>,
        step: &AdamWStep,
    ) -> Result<(), BackendError> {
        const OP: &str = "adamw_update";
        check_range(&range, params.len)?;
        if range.start < state.owned.start || range.end > state.owned.end {
            return Err(BackendError::OutOfBounds {
                start: range.start,
                end: range.end,
                len: state.owned.end,
            });
        }
        if params.dtype != DType::Bf16 {
            return Err(BackendError::ElementType {
                op: OP,
                name: "params",
                want: "bf16",
                got: params.dtype.name(),
            });
        }
        let len = range.len();
        if len == 0 {
            return Ok(());
        }
        let grads = memory::exact(OP, "grads", &grads, DType::Bf16, len)?;
        let local = range.start - state.owned.start;
        let table: [u64; 3] = [0, len as u64, u64::from(step.weight_decay.to_bits())];
        self.copy_to_device(state.table.addr, &table, OP)?;
        let p = params.addr_of(range.start);
        let master = state.master.addr_of(local);
        let m = state.m.addr_of(local);
        let v = state.v.addr_of(local);
        let tensor_start = state.table.addr;
        let tensor_len = tensor_start + 8;
        let tensor_decay = tensor_start + 16;
        let (lr, beta1, beta2, eps, grad_scale, bc1, bc2) = (
            step.lr,
            step.beta1,
            step.beta2,
            step.eps,
            step.grad_scale,
            step.bias_correction1,
            step.bias_correction2,
        );
        let grid = (len.div_ceil(256).clamp(1, MAX_BLOCKS) as u32, 1, 1);
        launch!(self, "adamw_update", grid, 256, 0;
            p, grads, master, m, v, tensor_start, tensor_len, tensor_decay,
            lr, beta1, beta2, eps, grad_scale, bc1, bc2)
    }

    pub(super) fn download_opt_state_impl(
        &self,
        state: &CudaOptState,
        m: &mut [f32],
        v: &mut [f32],
    ) -> Result<(), BackendError> {
        for (name, host) in [("m", &*m), ("v", &*v)] {
            if host.len() != state.owned.len() {
                return Err(BackendError::ShapeMismatch {
                    op: "download_opt_state",
                    name,
                    want: state.owned.len(),
                    got: host.len(),
                });
            }
        }
        self.copy_to_host(m, state.m.addr, "download_opt_state")?;
        self.copy_to_host(v, state.v.addr, "download_opt_state")
    }

    pub(super) fn download_master_impl(
        &self,
        state: &CudaOptState,
        master: &mut [f32],
    ) -> Result<(), BackendError> {
        if master.len() != state.owned.len() {
            return Err(BackendError::ShapeMismatch {
                op: "download_master_weights",
                name: "master",
                want: state.owned.len(),
                got: master.len(),
            });
        }
        self.copy_to_host(master, state.master.addr, "download_master_weights")
    }

    pub(super) fn upload_opt_state_impl(
        &self,
        state: &mut CudaOptState,
        params: &CudaBuf,
        m: &[f32],
        v: &[f32],
        master: Option<&[f32]>,
    ) -> Result<(), BackendError> {
        let empty: &[f32] = &[];
        for (name, host) in [("m", m), ("v", v), ("master", master.unwrap_or(empty))] {
            if name == "master" && master.is_none() {
                continue;
            }
            if host.len() != state.owned.len() {
                return Err(BackendError::ShapeMismatch {
                    op: "upload_opt_state",
                    name,
                    want: state.owned.len(),
                    got: host.len(),
                });
            }
        }
        self.copy_to_device(state.m.addr, m, "upload_opt_state")?;
        self.copy_to_device(state.v.addr, v, "upload_opt_state")?;
        match master {
            Some(master) => self.copy_to_device(state.master.addr, master, "upload_opt_state"),
            None => self.refresh_master(state, params),
        }
    }
}
