//! The CUDA backend: [`CudaBackend`] implements [`Backend`] on one NVIDIA GPU with bf16
//! parameters, activations and gradients, fp32 statistics and losses, fp32 master weights and
//! AdamW moments, and fp32 accumulation in every kernel and matrix product.
//!
//! ```text
//! CudaBackend::new(ordinal)
//!   device.rs   driver + cuBLASLt found and opened (an error names a missing one), context,
//!               one compute stream, kernels compiled by NVRTC for this GPU (disk cache) and
//!               loaded
//!   memory.rs   CudaBuf (bf16 | fp32) and its views, checked by every launcher
//!   matmul.rs   cuBLASLt products, bias fused as an epilogue, one algorithm per shape
//!   embedding.rs layernorm.rs attention.rs pointwise.rs softmax_xent.rs reduce.rs adamw.rs
//!   rmsnorm.rs rope.rs swiglu.rs gqa_attention.rs (the Llama family)
//!               one launcher file per kernel family in trainer/kernels/
//!   nccl.rs     NCCL for gangs of GPUs, on its own stream (gradients and parameters)
//! ```
//!
//! Everything runs in order on the one compute stream; host copies (`download`, `sum`) wait
//! for it. Every reduction has a fixed order and no kernel uses atomics, so a step's results
//! are bit-identical from run to run on the same GPU model (the resume test relies on it).
//!
//! Rounding: the bf16 parameters are the fp32 master weights rounded to nearest even after
//! every update (adamw.cu); host uploads round the same way ([`memory::f32_to_bf16`]).
// Launchers take one argument per tensor plus dimensions, like the kernels.
#![allow(clippy::too_many_arguments)]

mod adamw;
mod attention;
pub mod device;
mod embedding;
mod gqa_attention;
mod layernorm;
mod matmul;
pub mod memory;
pub mod nccl;
mod pointwise;
mod reduce;
mod rmsnorm;
mod rope;
mod softmax_xent;
mod swiglu;

use std::{
    marker::PhantomData,
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use cudarc::driver::{CudaSlice, DevicePtr};

use super::{
    AdamWStep, AttentionShape, Backend, BackendError, GqaShape, MatmulShape, RopeShape, check_range,
};
pub use adamw::CudaOptState;
pub use device::{DeviceError, gpu_count};
use device::{Gpu, Kernels};
pub use memory::{CudaBuf, CudaMut, CudaRef, DType};

/// Launches kernel `$name` on the backend's stream: grid (x, y, z), `$block` threads,
/// `$smem` bytes of dynamic shared memory, then the arguments (bound names: each is passed by
/// reference until the launch).
macro_rules! launch {
    ($be:expr, $name:literal, $grid:expr, $block:expr, $smem:expr; $($arg:ident),+ $(,)?) => {{
        let function = $be.kernels.get($name)?;
        let mut builder = $be.gpu.stream.launch_builder(function);
        $( cudarc::driver::PushKernelArg::arg(&mut builder, &$arg); )+
        let config = cudarc::driver::LaunchConfig {
            grid_dim: $grid,
            block_dim: ($block, 1, 1),
            shared_mem_bytes: $smem,
        };
        // SAFETY: the launcher checked every buffer's element type and length against the
        // kernel's contract (its file's header) and passes arguments of the C types.
        #[allow(unsafe_code)]
        let launched = unsafe { builder.launch(config) };
        launched.map(|_| ()).map_err($crate::backend::cuda::device_error($name))
    }};
}
pub(crate) use launch;

/// Blocks of `per` threads covering `n` items, as a grid dimension.
fn blocks(op: &'static str, n: usize, per: usize) -> Result<u32, BackendError> {
    u32::try_from(n.div_ceil(per).max(1)).map_err(|_| BackendError::BadDimensions {
        op,
        detail: format!("{n} items need more than 2^32 blocks"),
    })
}

/// `v` as a kernel's `int`.
fn int(op: &'static str, what: &str, v: usize) -> Result<i32, BackendError> {
    i32::try_from(v).map_err(|_| BackendError::BadDimensions {
        op,
        detail: format!("{what} = {v} does not fit a 32-bit int"),
    })
}

pub(crate) fn device_error(
    op: &'static str,
) -> impl Fn(cudarc::driver::DriverError) -> BackendError {
    move |e| BackendError::Device {
        op,
        detail: e.to_string(),
    }
}

/// Bytes of device memory the backend's buffers hold, now and at most.
#[derive(Debug, Default)]
struct Ledger {
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl Ledger {
    fn add(&self, bytes: usize) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    fn sub(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A buffer's entry in the ledger, returned when the buffer is dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    ledger: Arc<Ledger>,
    bytes: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.ledger.sub(self.bytes);
    }
}

/// Token ids on the device, with the host copy they were uploaded from (the embedding
/// backward sorts positions by token on the host).
#[derive(Debug)]
pub struct CudaTokens {
    mem: CudaSlice<u8>,
    addr: u64,
    host: Vec<u32>,
    _ticket: Ticket,
}

/// Grow-only device scratch shared by launchers (partial sums, index tables). Launchers hold
/// the lock while they enqueue work that uses it; stream order does the rest.
#[derive(Default)]
struct Scratch {
    f32s: Option<CudaBuf>,
    u32s: Option<CudaBuf>,
}

/// One GPU, ready to train.
pub struct CudaBackend {
    gpu: Gpu,
    kernels: Kernels,
    lt: matmul::Lt,
    scratch: Mutex<Scratch>,
    ledger: Arc<Ledger>,
}

impl CudaBackend {
    /// Opens GPU `ordinal`, compiles (or takes from the cache) and loads every kernel.
    pub fn new(ordinal: usize) -> Result<CudaBackend, DeviceError> {
        let gpu = Gpu::open(ordinal)?;
        let kernels = Kernels::load(&gpu)?;
        let lt = matmul::Lt::new(&gpu.stream).map_err(DeviceError::Blas)?;
        let ledger = Arc::new(Ledger::default());
        ledger.add(matmul::WORKSPACE_BYTES);
        Ok(CudaBackend {
            gpu,
            kernels,
            lt,
            scratch: Mutex::new(Scratch::default()),
            ledger,
        })
    }

    /// Why a model cannot train on this backend, if it cannot: the attention kernels are
    /// written for a head size of 64 (every GPT-2 size).
    pub fn unsupported(config: &crate::config::ModelConfig) -> Option<String> {
        let head = config.width / config.heads.max(1);
        (head != attention::HEAD_SIZE).then(|| {
            format!(
                "the CUDA backend's attention needs a head size of {} (width = 64 × heads); \
                 width {} over {} heads is {head}",
                attention::HEAD_SIZE,
                config.width,
                config.heads
            )
        })
    }

    /// Why a Llama-family model with heads of `head_dim` dimensions cannot train on this
    /// backend, if it cannot: the grouped-query attention kernels spread a head over a warp's
    /// registers, up to 128 dimensions (the usual 64 and 128 included). RMSNorm, RoPE, SwiGLU
    /// and the embedding take every shape the CPU reference takes. For callers to check before
    /// they allocate; the launchers refuse the same shapes with a [`BackendError`].
    pub fn unsupported_llama(head_dim: usize) -> Option<String> {
        gqa_attention::unsupported_head_dim(head_dim)
    }

    /// The GPU's name as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.gpu.name
    }

    /// Compute capability as major·10 + minor.
    pub fn arch(&self) -> u32 {
        self.gpu.arch
    }

    /// Waits for every enqueued kernel and copy.
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.gpu
            .stream
            .synchronize()
            .map_err(device_error("synchronize"))
    }

    fn alloc_typed(&self, len: usize, dtype: DType) -> Result<CudaBuf, BackendError> {
        let bytes = len.max(1) * dtype.size();
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(device_error("alloc"))?;
        let mem =
            self.gpu
                .stream
                .alloc_zeros::<u8>(bytes)
                .map_err(|e| BackendError::Allocation {
                    len,
                    detail: e.to_string(),
                })?;
        let addr = mem.device_ptr(&self.gpu.stream).0;
        self.ledger.add(bytes);
        Ok(CudaBuf {
            mem,
            addr,
            len,
            dtype,
            _ticket: Ticket {
                ledger: self.ledger.clone(),
                bytes,
            },
        })
    }

    /// Scratch of at least `f32s` fp32 and `u32s` u32 elements; the guard keeps it.
    fn scratch(
        &self,
        f32s: usize,
        u32s: usize,
    ) -> Result<(std::sync::MutexGuard<'_, Scratch>, u64, u64), BackendError> {
        let mut s = self.scratch.lock().map_err(|_| BackendError::Device {
            op: "scratch",
            detail: "a previous launcher panicked".into(),
        })?;
        if s.f32s.as_ref().is_none_or(|b| b.len < f32s) {
            s.f32s = Some(self.alloc_typed(f32s.next_power_of_two(), DType::F32)?);
        }
        if s.u32s.as_ref().is_none_or(|b| b.len < u32s) {
            // u32 tables: fp32-sized elements, reinterpreted by the kernels.
            s.u32s = Some(self.alloc_typed(u32s.next_power_of_two(), DType::F32)?);
        }
        let (fa, ua) = (
            s.f32s.as_ref().map_or(0, |b| b.addr),
            s.u32s.as_ref().map_or(0, |b| b.addr),
        );
        Ok((s, fa, ua))
    }

    /// Copies `host` to device address `addr` (stream-ordered; `host` may be dropped after).
    fn copy_to_device<T>(
        &self,
        addr: u64,
        host: &[T],
        op: &'static str,
    ) -> Result<(), BackendError> {
        if host.is_empty() {
            return Ok(());
        }
        self.gpu.ctx.bind_to_thread().map_err(device_error(op))?;
        // SAFETY: the caller checked that `addr` starts a device range of at least
        // size_of_val(host) bytes; a copy from pageable memory has read `host` when it returns.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::driver::result::memcpy_htod_async(addr, host, self.gpu.stream.cu_stream())
        }
        .map_err(device_error(op))
    }

    /// Copies `bytes` bytes from device address `src` to `dst` (stream-ordered).
    fn copy_on_device(
        &self,
        dst: u64,
        src: u64,
        bytes: usize,
        op: &'static str,
    ) -> Result<(), BackendError> {
        self.gpu.ctx.bind_to_thread().map_err(device_error(op))?;
        // SAFETY: the caller checked that both ranges hold `bytes` bytes of live buffers.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.gpu.stream.cu_stream())
        }
        .map_err(device_error(op))
    }

    /// Copies from device address `addr` into `host` and waits for it.
    fn copy_to_host<T>(
        &self,
        host: &mut [T],
        addr: u64,
        op: &'static str,
    ) -> Result<(), BackendError> {
        if host.is_empty() {
            return Ok(());
        }
        self.gpu.ctx.bind_to_thread().map_err(device_error(op))?;
        // SAFETY: the caller checked that `addr` starts a device range of at least
        // size_of_val(host) bytes; the stream is synchronised before `host` is read.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(host, addr, self.gpu.stream.cu_stream())
        }
        .map_err(device_error(op))?;
        self.synchronize()
    }

    fn make_ref<'a>(
        &self,
        buf: &'a CudaBuf,
        range: Range<usize>,
    ) -> Result<CudaRef<'a>, BackendError> {
        check_range(&range, buf.len)?;
        Ok(CudaRef {
            addr: buf.addr_of(range.start),
            len: range.len(),
            dtype: buf.dtype,
            _buf: PhantomData,
        })
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Tokens = CudaTokens;
    type OptState = CudaOptState;
    type Ref<'a> = CudaRef<'a>;
    type Mut<'a> = CudaMut<'a>;

    fn name(&self) -> &'static str {
        "cuda-bf16"
    }

    fn peak_flops(&self) -> f64 {
        self.gpu.peak_bf16_flops()
    }

    fn peak_memory_bytes(&self) -> Option<u64> {
        Some(self.ledger.peak.load(Ordering::Relaxed) as u64)
    }

    fn device_collective(
        &self,
        host: &mut dyn crate::collective::Collective,
        choice: crate::collective::device::CollectiveChoice,
    ) -> crate::collective::device::DeviceCollectiveResult<Self> {
        nccl::connect(self, host, choice)
    }

    // === memory ===

    fn alloc(&self, len: usize) -> Result<CudaBuf, BackendError> {
        self.alloc_typed(len, DType::Bf16)
    }

    fn alloc_f32(&self, len: usize) -> Result<CudaBuf, BackendError> {
        self.alloc_typed(len, DType::F32)
    }

    fn buf_len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn upload(&self, dst: &mut CudaBuf, offset: usize, src: &[f32]) -> Result<(), BackendError> {
        check_range(&(offset..offset.saturating_add(src.len())), dst.len)?;
        let addr = dst.addr_of(offset);
        match dst.dtype {
            DType::F32 => self.copy_to_device(addr, src, "upload"),
            DType::Bf16 => {
                let host: Vec<u16> = src.iter().map(|&x| memory::f32_to_bf16(x)).collect();
                self.copy_to_device(addr, &host, "upload")
            }
        }
    }

    fn download(&self, src: &CudaBuf, offset: usize, dst: &mut [f32]) -> Result<(), BackendError> {
        check_range(&(offset..offset.saturating_add(dst.len())), src.len)?;
        let addr = src.addr_of(offset);
        match src.dtype {
            DType::F32 => self.copy_to_host(dst, addr, "download"),
            DType::Bf16 => {
                let mut host = vec![0u16; dst.len()];
                self.copy_to_host(&mut host, addr, "download")?;
                for (d, h) in dst.iter_mut().zip(host) {
                    *d = memory::bf16_to_f32(h);
                }
                Ok(())
            }
        }
    }

    fn alloc_tokens(&self, len: usize) -> Result<CudaTokens, BackendError> {
        let buf = self.alloc_typed(len, DType::F32)?;
        Ok(CudaTokens {
            addr: buf.addr,
            mem: buf.mem,
            host: vec![0; len],
            _ticket: buf._ticket,
        })
    }

    fn upload_tokens(&self, dst: &mut CudaTokens, src: &[u32]) -> Result<(), BackendError> {
        check_range(&(0..src.len()), dst.host.len())?;
        dst.host[..src.len()].copy_from_slice(src);
        let _ = &dst.mem;
        self.copy_to_device(dst.addr, src, "upload_tokens")
    }

    fn view<'a>(&self, buf: &'a CudaBuf, range: Range<usize>) -> Result<CudaRef<'a>, BackendError> {
        self.make_ref(buf, range)
    }

    fn view_mut<'a>(
        &self,
        buf: &'a mut CudaBuf,
        range: Range<usize>,
    ) -> Result<CudaMut<'a>, BackendError> {
        check_range(&range, buf.len)?;
        Ok(CudaMut {
            addr: buf.addr_of(range.start),
            len: range.len(),
            dtype: buf.dtype,
            _buf: PhantomData,
        })
    }

    fn views_mut<'a, const N: usize>(
        &self,
        buf: &'a mut CudaBuf,
        ranges: [Range<usize>; N],
    ) -> Result<[CudaMut<'a>; N], BackendError> {
        for (i, a) in ranges.iter().enumerate() {
            check_range(a, buf.len)?;
            for b in &ranges[i + 1..] {
                if a.start < b.end && b.start < a.end && !a.is_empty() && !b.is_empty() {
                    return Err(BackendError::OverlappingRanges {
                        a: a.clone(),
                        b: b.clone(),
                    });
                }
            }
        }
        Ok(ranges.map(|r| CudaMut {
            addr: buf.addr_of(r.start),
            len: r.len(),
            dtype: buf.dtype,
            _buf: PhantomData,
        }))
    }

    fn fill_zero(&self, x: CudaMut<'_>) -> Result<(), BackendError> {
        if x.len == 0 {
            return Ok(());
        }
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(device_error("fill_zero"))?;
        // SAFETY: `x` is a live view of `len` elements of its type.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::driver::result::memset_d8_async(
                x.addr,
                0,
                x.len * x.dtype.size(),
                self.gpu.stream.cu_stream(),
            )
        }
        .map_err(device_error("fill_zero"))
    }

    fn scale(&self, x: CudaMut<'_>, factor: f32) -> Result<(), BackendError> {
        self.scale_launch(x, factor)
    }

    // === embedding ===

    fn encoder_forward(
        &self,
        out: CudaMut<'_>,
        tokens: &CudaTokens,
        wte: CudaRef<'_>,
        wpe: CudaRef<'_>,
        batch: usize,
        seq_len: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        self.encoder_forward_launch(out, tokens, wte, wpe, batch, seq_len, channels)
    }

    fn encoder_backward(
        &self,
        dwte: CudaMut<'_>,
        dwpe: CudaMut<'_>,
        dout: CudaRef<'_>,
        tokens: &CudaTokens,
        batch: usize,
        seq_len: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        self.encoder_backward_launch(dwte, dwpe, dout, tokens, batch, seq_len, channels)
    }

    // === layernorm ===

    fn layernorm_forward(
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
        self.layernorm_forward_launch(out, mean, rstd, inp, weight, bias, rows, channels)
    }

    fn layernorm_backward(
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
        self.layernorm_backward_launch(
            dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, channels,
        )
    }

    // === matmul ===

    fn matmul(
        &self,
        out: CudaMut<'_>,
        a: CudaRef<'_>,
        b: CudaRef<'_>,
        bias: Option<CudaRef<'_>>,
        shape: MatmulShape,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        const OP: &str = "matmul";
        let MatmulShape { m, n, k, .. } = shape;
        if m == 0 || n == 0 || k == 0 {
            return Err(BackendError::BadDimensions {
                op: OP,
                detail: format!("m={m} n={n} k={k} must all be positive"),
            });
        }
        if accumulate && bias.is_some() {
            return Err(BackendError::BadDimensions {
                op: OP,
                detail: "an accumulating product takes no bias".into(),
            });
        }
        let out = memory::exact(OP, "out", &out, DType::Bf16, m * n)?;
        let a = memory::exact(OP, "a", &a, DType::Bf16, m * k)?;
        let b = memory::exact(OP, "b", &b, DType::Bf16, k * n)?;
        let bias = bias
            .map(|v| memory::exact(OP, "bias", &v, DType::Bf16, n))
            .transpose()?;
        self.lt
            .matmul(&self.gpu.stream, out, a, b, bias, shape, accumulate)
    }

    fn bias_backward(
        &self,
        dbias: CudaMut<'_>,
        dout: CudaRef<'_>,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError> {
        self.bias_backward_launch(dbias, dout, rows, cols)
    }

    // === attention ===

    fn attention_state_len(&self, s: AttentionShape) -> usize {
        s.batch * s.heads * s.seq_len
    }

    fn attention_scratch_len(&self, s: AttentionShape) -> usize {
        s.batch * s.heads * s.seq_len
    }

    fn attention_forward(
        &self,
        out: CudaMut<'_>,
        state: CudaMut<'_>,
        qkv: CudaRef<'_>,
        shape: AttentionShape,
    ) -> Result<(), BackendError> {
        self.attention_forward_launch(out, state, qkv, shape)
    }

    fn attention_backward(
        &self,
        dqkv: CudaMut<'_>,
        scratch: CudaMut<'_>,
        dout: CudaRef<'_>,
        qkv: CudaRef<'_>,
        out: CudaRef<'_>,
        state: CudaRef<'_>,
        shape: AttentionShape,
    ) -> Result<(), BackendError> {
        self.attention_backward_launch(dqkv, scratch, dout, qkv, out, state, shape)
    }

    // === pointwise ===

    fn gelu_forward(&self, out: CudaMut<'_>, inp: CudaRef<'_>) -> Result<(), BackendError> {
        self.gelu_forward_launch(out, inp)
    }

    fn gelu_backward(
        &self,
        dinp: CudaMut<'_>,
        inp: CudaRef<'_>,
        dout: CudaRef<'_>,
    ) -> Result<(), BackendError> {
        self.gelu_backward_launch(dinp, inp, dout)
    }

    fn residual_forward(
        &self,
        out: CudaMut<'_>,
        a: CudaRef<'_>,
        b: CudaRef<'_>,
    ) -> Result<(), BackendError> {
        self.residual_forward_launch(out, a, b)
    }

    fn dropout(
        &self,
        out: CudaMut<'_>,
        inp: CudaRef<'_>,
        p: f32,
        key: u64,
        offset: u64,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        self.dropout_launch(out, inp, p, key, offset, accumulate)
    }

    // === Llama family ===

    fn embedding_forward(
        &self,
        out: CudaMut<'_>,
        tokens: &CudaTokens,
        wte: CudaRef<'_>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        self.embedding_forward_launch(out, tokens, wte, rows, channels)
    }

    fn embedding_backward(
        &self,
        dwte: CudaMut<'_>,
        dout: CudaRef<'_>,
        tokens: &CudaTokens,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        self.embedding_backward_launch(dwte, dout, tokens, rows, channels)
    }

    fn rmsnorm_forward(
        &self,
        out: CudaMut<'_>,
        rstd: CudaMut<'_>,
        inp: CudaRef<'_>,
        weight: CudaRef<'_>,
        rows: usize,
        channels: usize,
        eps: f64,
    ) -> Result<(), BackendError> {
        self.rmsnorm_forward_launch(out, rstd, inp, weight, rows, channels, eps)
    }

    fn rmsnorm_backward(
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
        self.rmsnorm_backward_launch(dinp, dweight, dout, inp, weight, rstd, rows, channels)
    }

    fn rope(
        &self,
        x: CudaMut<'_>,
        cos: CudaRef<'_>,
        sin: CudaRef<'_>,
        shape: RopeShape,
        inverse: bool,
    ) -> Result<(), BackendError> {
        self.rope_launch(x, cos, sin, shape, inverse)
    }

    fn swiglu_forward(
        &self,
        out: CudaMut<'_>,
        gate: CudaRef<'_>,
        up: CudaRef<'_>,
    ) -> Result<(), BackendError> {
        self.swiglu_forward_launch(out, gate, up)
    }

    fn swiglu_backward(
        &self,
        dgate: CudaMut<'_>,
        dup: CudaMut<'_>,
        dout: CudaRef<'_>,
        gate: CudaRef<'_>,
        up: CudaRef<'_>,
    ) -> Result<(), BackendError> {
        self.swiglu_backward_launch(dgate, dup, dout, gate, up)
    }

    fn gqa_state_len(&self, s: GqaShape) -> usize {
        s.batch * s.heads * s.seq_len
    }

    fn gqa_attention_forward(
        &self,
        out: CudaMut<'_>,
        state: CudaMut<'_>,
        q: CudaRef<'_>,
        k: CudaRef<'_>,
        v: CudaRef<'_>,
        shape: GqaShape,
    ) -> Result<(), BackendError> {
        self.gqa_attention_forward_launch(out, state, q, k, v, shape)
    }

    fn gqa_attention_backward(
        &self,
        dq: CudaMut<'_>,
        dk: CudaMut<'_>,
        dv: CudaMut<'_>,
        dout: CudaRef<'_>,
        q: CudaRef<'_>,
        k: CudaRef<'_>,
        v: CudaRef<'_>,
        out: CudaRef<'_>,
        state: CudaRef<'_>,
        shape: GqaShape,
    ) -> Result<(), BackendError> {
        self.gqa_attention_backward_launch(dq, dk, dv, dout, q, k, v, out, state, shape)
    }

    // === loss ===

    fn softmax_cross_entropy(
        &self,
        logits: CudaMut<'_>,
        losses: CudaMut<'_>,
        targets: &CudaTokens,
        rows: usize,
        vocab: usize,
        padded_vocab: usize,
        dloss: f64,
    ) -> Result<(), BackendError> {
        self.softmax_cross_entropy_launch(logits, losses, targets, rows, vocab, padded_vocab, dloss)
    }

    // === reductions ===

    fn sum(&self, x: CudaRef<'_>) -> Result<f64, BackendError> {
        self.reduce(x, false)
    }

    fn sum_squares(&self, x: CudaRef<'_>) -> Result<f64, BackendError> {
        self.reduce(x, true)
    }

    // === optimizer ===

    fn alloc_opt_state(
        &self,
        params: &CudaBuf,
        owned: Range<usize>,
    ) -> Result<CudaOptState, BackendError> {
        self.alloc_opt_state_impl(params, owned)
    }

    fn opt_state_bytes(&self, state: &CudaOptState) -> usize {
        state.bytes()
    }

    fn adamw_update(
        &self,
        params: &mut CudaBuf,
        grads: CudaRef<'_>,
        state: &mut CudaOptState,
        range: Range<usize>,
        step: &AdamWStep,
    ) -> Result<(), BackendError> {
        self.adamw_update_launch(params, grads, state, range, step)
    }

    fn download_opt_state(
        &self,
        state: &CudaOptState,
        m: &mut [f32],
        v: &mut [f32],
    ) -> Result<(), BackendError> {
        self.download_opt_state_impl(state, m, v)
    }

    fn download_master_weights(
        &self,
        state: &CudaOptState,
        master: &mut [f32],
    ) -> Result<bool, BackendError> {
        self.download_master_impl(state, master)?;
        Ok(true)
    }

    fn upload_opt_state(
        &self,
        state: &mut CudaOptState,
        params: &CudaBuf,
        m: &[f32],
        v: &[f32],
        master: Option<&[f32]>,
    ) -> Result<(), BackendError> {
        self.upload_opt_state_impl(state, params, m, v, master)
    }
}
