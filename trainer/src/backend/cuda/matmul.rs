//! Matrix products through cuBLASLt: bf16 operands and output, fp32 accumulation, the bias
//! fused as an epilogue, `+=` as beta = 1.
//!
//! The model's products are row-major; cuBLASLt's are column-major. A row-major (r×c) matrix
//! is the column-major (c×r) matrix of the same memory, so `out = op(a)·op(b)` (row-major,
//! m×n) is computed as the column-major `outᵀ (n×m) = op(b)ᵀ·op(a)ᵀ`: cuBLAS's A is our `b`,
//! its B is our `a`, and the bias (one value per column of `out`) is per row of `outᵀ`, which
//! is what cuBLASLt's BIAS epilogue adds. [`geometry`] is that mapping, checked on the CPU by
//! this file's tests.
//!
//! Determinism: the algorithm for a shape is chosen once (cuBLASLt's heuristic, kept per
//! shape in a plan) and reductions that accumulate in place in the output (split-K with
//! atomics) are excluded by the preference's reduction-scheme mask, so a product's bits
//! depend only on its inputs.

use std::{collections::HashMap, ffi::c_void, mem::size_of, sync::Mutex};

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::backend::{BackendError, MatmulShape};

/// How one row-major product maps onto cuBLASLt's column-major one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct LtGeometry {
    /// cuBLAS A is our `b`: transposed?, stored rows, cols, leading dimension.
    pub trans_a: bool,
    pub a_rows: u64,
    pub a_cols: u64,
    pub lda: i64,
    /// cuBLAS B is our `a`.
    pub trans_b: bool,
    pub b_rows: u64,
    pub b_cols: u64,
    pub ldb: i64,
    /// cuBLAS C/D is `outᵀ`: `rows` (= our n) × `cols` (= our m), leading dimension `rows`.
    pub rows: u64,
    pub cols: u64,
}

pub(super) fn geometry(s: MatmulShape) -> LtGeometry {
    let (m, n, k) = (s.m as u64, s.n as u64, s.k as u64);
    // our b: row-major (k×n), or (n×k) when transposed = column-major (n×k) / (k×n).
    let (a_rows, a_cols) = if s.b_transposed { (k, n) } else { (n, k) };
    // our a: row-major (m×k), or (k×m) when transposed = column-major (k×m) / (m×k).
    let (b_rows, b_cols) = if s.a_transposed { (m, k) } else { (k, m) };
    LtGeometry {
        trans_a: s.b_transposed,
        a_rows,
        a_cols,
        lda: a_rows as i64,
        trans_b: s.a_transposed,
        b_rows,
        b_cols,
        ldb: b_rows as i64,
        rows: n,
        cols: m,
    }
}

type DescAttr = sys::cublasLtMatmulDescAttributes_t;
type PrefAttr = sys::cublasLtMatmulPreferenceAttributes_t;

/// Sets a matmul descriptor attribute to `value` (of the type the attribute takes).
fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: DescAttr,
    value: &T,
) -> Result<(), lt::CublasError> {
    // SAFETY: `desc` is live; `value` is a live T of the size passed.
    #[allow(unsafe_code)]
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            value as *const T as *const c_void,
            size_of::<T>(),
        )
    }
}

/// Sets a matmul preference attribute to `value`.
fn set_pref<T>(
    pref: sys::cublasLtMatmulPreference_t,
    attr: PrefAttr,
    value: &T,
) -> Result<(), lt::CublasError> {
    // SAFETY: `pref` is live; `value` is a live T of the size passed.
    #[allow(unsafe_code)]
    unsafe {
        lt::set_matmul_pref_attribute(
            pref,
            attr,
            value as *const T as *const c_void,
            size_of::<T>(),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    geometry: LtGeometry,
    bias: bool,
    /// The alignment in bytes every operand address has (a power of two, at most 256): the
    /// heuristic may only pick kernels that need no more (views into stacked per-layer
    /// tensors start wherever the layer does).
    alignment: u32,
}

/// The largest power of two, up to 256, dividing every address.
pub(super) fn alignment(addresses: &[u64]) -> u32 {
    let combined = addresses.iter().fold(256u64, |acc, &a| acc | a);
    1u32 << combined.trailing_zeros().min(8)
}

/// The descriptors and the chosen algorithm of one product shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by this plan and is destroyed once; errors on
        // teardown are ignored (nothing can be done about them).
        #[allow(unsafe_code)]
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle, its workspace and the plans made so far.
pub(super) struct Lt {
    handle: sys::cublasLtHandle_t,
    _workspace: CudaSlice<u8>,
    workspace_addr: u64,
    workspace_bytes: usize,
    plans: Mutex<HashMap<PlanKey, Plan>>,
}

// SAFETY: the handle and descriptors are only used under the plans mutex or for launches on
// the backend's single stream; cuBLASLt handles may be used from any thread.
#[allow(unsafe_code)]
unsafe impl Send for Lt {}
#[allow(unsafe_code)]
unsafe impl Sync for Lt {}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.lock().map(|mut p| p.clear()).ok();
        // SAFETY: created in `new`, destroyed once.
        #[allow(unsafe_code)]
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// 32 MiB, NVIDIA's recommendation for Hopper.
pub(super) const WORKSPACE_BYTES: usize = 32 << 20;

fn blas(op: &'static str) -> impl Fn(lt::CublasError) -> BackendError {
    move |e| BackendError::Device {
        op,
        detail: format!("cuBLASLt {e:?}"),
    }
}

impl Lt {
    pub fn new(stream: &std::sync::Arc<CudaStream>) -> Result<Lt, String> {
        let handle = lt::create_handle().map_err(|e| format!("cublasLtCreate: {e:?}"))?;
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| format!("workspace allocation: {e}"))?;
        let workspace_addr = workspace.device_ptr(stream).0;
        Ok(Lt {
            handle,
            _workspace: workspace,
            workspace_addr,
            workspace_bytes: WORKSPACE_BYTES,
            plans: Mutex::new(HashMap::new()),
        })
    }

    fn plan(&self, key: PlanKey) -> Result<Plan, BackendError> {
        let g = key.geometry;
        let err = blas("matmul plan");
        let bf16 = sys::cudaDataType_t::CUDA_R_16BF;
        let a = lt::create_matrix_layout(bf16, g.a_rows, g.a_cols, g.lda).map_err(&err)?;
        let b = lt::create_matrix_layout(bf16, g.b_rows, g.b_cols, g.ldb).map_err(&err)?;
        let c = lt::create_matrix_layout(bf16, g.rows, g.cols, g.rows as i64).map_err(&err)?;
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(&err)?;
        let mut plan = Plan {
            desc,
            a,
            b,
            c,
            // SAFETY: a plain-data C struct; overwritten by the heuristic below.
            #[allow(unsafe_code)]
            algo: unsafe { std::mem::zeroed() },
        };
        // cublasOperation_t: 0 = N, 1 = T (a 32-bit enum).
        let trans = |t: bool| -> i32 { i32::from(t) };
        let epilogue = if key.bias {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
        } else {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
        };
        let pref = lt::create_matmul_pref().map_err(&err)?;
        // Split-K may reduce in workspace (fixed order) but never in place in the output.
        let schemes: u32 = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
            as u32
            | sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE as u32;
        let result = (|| {
            set_desc(
                desc,
                DescAttr::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans(g.trans_a),
            )?;
            set_desc(
                desc,
                DescAttr::CUBLASLT_MATMUL_DESC_TRANSB,
                &trans(g.trans_b),
            )?;
            set_desc(desc, DescAttr::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            if key.bias {
                // The bias pointer is set per call; its type (bf16) is fixed here.
                let bias_type = sys::cudaDataType_t::CUDA_R_16BF;
                set_desc(
                    desc,
                    DescAttr::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                    &bias_type,
                )?;
            }
            set_pref(
                pref,
                PrefAttr::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &self.workspace_bytes,
            )?;
            set_pref(
                pref,
                PrefAttr::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                &schemes,
            )?;
            // SAFETY: every descriptor is live (created above).
            #[allow(unsafe_code)]
            unsafe {
                lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref)
            }
        })();
        // SAFETY: created above, destroyed once.
        #[allow(unsafe_code)]
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        let heuristic = result.map_err(|e| BackendError::Device {
            op: "matmul",
            detail: format!(
                "cuBLASLt has no algorithm for this product ({e:?}): {}×{} · {}×{}",
                g.b_cols, g.b_rows, g.a_cols, g.a_rows
            ),
        })?;
        plan.algo = heuristic.algo;
        Ok(plan)
    }

    /// `out (m×n) = op(a)·op(b) [+ bias]`, or `+=` when `accumulate`; addresses of bf16
    /// buffers already checked by the caller.
    pub fn matmul(
        &self,
        stream: &CudaStream,
        out: u64,
        a: u64,
        b: u64,
        bias: Option<u64>,
        shape: MatmulShape,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        let mut addresses = vec![out, a, b];
        addresses.extend(bias);
        let key = PlanKey {
            geometry: geometry(shape),
            bias: bias.is_some(),
            alignment: alignment(&addresses),
        };
        let mut plans = self.plans.lock().map_err(|_| BackendError::Device {
            op: "matmul",
            detail: "a previous matmul panicked".into(),
        })?;
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key)?),
        };
        let alpha: f32 = 1.0;
        let beta: f32 = if accumulate { 1.0 } else { 0.0 };
        let err = blas("matmul");
        // SAFETY: the plan's descriptors are live; `out`, `a`, `b` and `bias` are device
        // addresses of bf16 buffers whose lengths the caller checked against the shape; the
        // workspace is this handle's and is used only on this stream.
        #[allow(unsafe_code)]
        unsafe {
            if let Some(bias) = bias {
                set_desc(
                    plan.desc,
                    DescAttr::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bias,
                )
                .map_err(&err)?;
            }
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b as *const c_void,
                plan.a,
                a as *const c_void,
                plan.b,
                out as *const c_void,
                plan.c,
                out as *mut c_void,
                plan.c,
                &plan.algo,
                self.workspace_addr as *mut c_void,
                self.workspace_bytes,
                stream.cu_stream() as sys::cudaStream_t,
            )
            .map_err(&err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column-major `op(X)[i, j]` of a stored (rows × cols, ld) matrix.
    fn at(x: &[f32], rows: u64, ld: i64, trans: bool, i: usize, j: usize) -> f32 {
        let _ = rows;
        let (r, c) = if trans { (j, i) } else { (i, j) };
        x[c * ld as usize + r]
    }

    /// What cuBLASLt computes for `g`, done on the CPU: D (rows × cols, column-major).
    fn column_major_product(g: &LtGeometry, a: &[f32], b: &[f32], k: usize) -> Vec<f32> {
        let (rows, cols) = (g.rows as usize, g.cols as usize);
        let mut d = vec![0.0; rows * cols];
        for j in 0..cols {
            for i in 0..rows {
                let mut acc = 0.0;
                for p in 0..k {
                    acc += at(a, g.a_rows, g.lda, g.trans_a, i, p)
                        * at(b, g.b_rows, g.ldb, g.trans_b, p, j);
                }
                d[j * rows + i] = acc;
            }
        }
        d
    }

    #[test]
    fn alignment_is_the_largest_common_power_of_two_up_to_256() {
        assert_eq!(alignment(&[0x1000, 0x2000]), 256);
        assert_eq!(alignment(&[0x1000, 0x1002]), 2);
        assert_eq!(alignment(&[0x1040, 0x1000]), 64);
        assert_eq!(alignment(&[]), 256);
    }

    #[test]
    fn the_column_major_mapping_computes_the_row_major_product() {
        let (m, n, k) = (3usize, 5usize, 4usize);
        for a_transposed in [false, true] {
            for b_transposed in [false, true] {
                let shape = MatmulShape {
                    m,
                    n,
                    k,
                    a_transposed,
                    b_transposed,
                };
                let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
                let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.73).cos()).collect();
                // The row-major reference.
                let mut want = vec![0.0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0.0;
                        for p in 0..k {
                            let av = if a_transposed {
                                a[p * m + i]
                            } else {
                                a[i * k + p]
                            };
                            let bv = if b_transposed {
                                b[j * k + p]
                            } else {
                                b[p * n + j]
                            };
                            acc += av * bv;
                        }
                        want[i * n + j] = acc;
                    }
                }
                let g = geometry(shape);
                assert_eq!((g.rows, g.cols), (n as u64, m as u64));
                // cuBLAS A is our b, B is our a; D's memory is the row-major output.
                let got = column_major_product(&g, &b, &a, k);
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5, "{shape:?}: {got:?} vs {want:?}");
                }
                // Stored shapes hold exactly the operands' elements.
                assert_eq!((g.a_rows * g.a_cols) as usize, k * n);
                assert_eq!((g.b_rows * g.b_cols) as usize, m * k);
            }
        }
    }
}
