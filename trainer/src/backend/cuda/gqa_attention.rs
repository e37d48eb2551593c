//! Launchers of `kernels/gqa_attention.cu`: causal grouped-query attention for head sizes up
//! to 128, the forward saving one log-sum-exp per (batch, head, position), the backward
//! recomputing probabilities tile by tile (dq per query row, dk and dv per key row summed over
//! the group's query heads in order: no atomics).

use super::{CudaBackend, CudaMut, CudaRef, DType, blocks, int, launch, memory};
use crate::backend::{Backend, BackendError, GqaShape};

/// The largest head size the kernels hold (their MAX_D: four dimensions per lane).
pub(super) const MAX_HEAD_DIM: usize = 128;
/// Rows per block (the kernels' WARPS: one warp per row).
const ROWS: usize = 8;

/// What the launches share: (B, T, H, KV, D) as kernel ints, the scale, and the grids of the
/// query-row kernels (y = B·H) and of the key-row kernel (y = B·KV).
struct Dims {
    ints: (i32, i32, i32, i32, i32),
    scale: f32,
    query_grid: (u32, u32, u32),
    key_grid: (u32, u32, u32),
}

/// Why the kernels cannot take heads of `head_dim`, if they cannot.
pub(super) fn unsupported_head_dim(head_dim: usize) -> Option<String> {
    (head_dim == 0 || head_dim > MAX_HEAD_DIM).then(|| {
        format!(
            "the CUDA grouped-query attention kernels take a head_dim from 1 to {MAX_HEAD_DIM}; \
             this model's is {head_dim}"
        )
    })
}

/// Checks the shape; returns its [`Dims`], or `None` when there is nothing to compute (no
/// batch, position or head).
fn dims(op: &'static str, s: GqaShape) -> Result<Option<Dims>, BackendError> {
    if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
        return Err(BackendError::BadDimensions {
            op,
            detail: format!("kv_heads ({}) must divide heads ({})", s.kv_heads, s.heads),
        });
    }
    if let Some(detail) = unsupported_head_dim(s.head_dim) {
        return Err(BackendError::BadDimensions { op, detail });
    }
    if s.batch == 0 || s.seq_len == 0 || s.heads == 0 {
        return Ok(None);
    }
    let grid_y = |what: &str, n: usize| {
        u32::try_from(n)
            .ok()
            .filter(|&v| v <= 65_535)
            .ok_or_else(|| BackendError::BadDimensions {
                op,
                detail: format!("batch × {what} = {n} exceeds the 65535 blocks of grid.y"),
            })
    };
    let x = blocks(op, s.seq_len, ROWS)?;
    Ok(Some(Dims {
        ints: (
            int(op, "batch", s.batch)?,
            int(op, "seq_len", s.seq_len)?,
            int(op, "heads", s.heads)?,
            int(op, "kv_heads", s.kv_heads)?,
            int(op, "head_dim", s.head_dim)?,
        ),
        // As the CPU reference: 1/√D in f64, rounded once.
        scale: (1.0 / (s.head_dim as f64).sqrt()) as f32,
        query_grid: (x, grid_y("heads", s.batch * s.heads)?, 1),
        key_grid: (x, grid_y("kv_heads", s.batch * s.kv_heads)?, 1),
    }))
}

fn q_len(s: GqaShape) -> usize {
    s.batch * s.seq_len * s.heads * s.head_dim
}

fn kv_len(s: GqaShape) -> usize {
    s.batch * s.seq_len * s.kv_heads * s.head_dim
}

fn state_len(s: GqaShape) -> usize {
    s.batch * s.heads * s.seq_len
}

impl CudaBackend {
    pub(super) fn gqa_attention_forward_launch(
        &self,
        out: CudaMut<'_>,
        state: CudaMut<'_>,
        q: CudaRef<'_>,
        k: CudaRef<'_>,
        v: CudaRef<'_>,
        s: GqaShape,
    ) -> Result<(), BackendError> {
        const OP: &str = "gqa_attention_forward";
        let dims = dims(OP, s)?;
        let out = memory::exact(OP, "out", &out, DType::Bf16, q_len(s))?;
        let lse = memory::exact(OP, "state", &state, DType::F32, state_len(s))?;
        let q = memory::exact(OP, "q", &q, DType::Bf16, q_len(s))?;
        let k = memory::exact(OP, "k", &k, DType::Bf16, kv_len(s))?;
        let v = memory::exact(OP, "v", &v, DType::Bf16, kv_len(s))?;
        let Some(Dims {
            ints: (b, t, h, kv, d),
            scale,
            query_grid,
            ..
        }) = dims
        else {
            return Ok(());
        };
        launch!(self, "gqa_attention_forward", query_grid, (ROWS * 32) as u32, 0;
            out, lse, q, k, v, b, t, h, kv, d, scale)
    }

    pub(super) fn gqa_attention_backward_launch(
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
        s: GqaShape,
    ) -> Result<(), BackendError> {
        const OP: &str = "gqa_attention_backward";
        let dims = dims(OP, s)?;
        let dq = memory::exact(OP, "dq", &dq, DType::Bf16, q_len(s))?;
        let dk_addr = memory::exact(OP, "dk", &dk, DType::Bf16, kv_len(s))?;
        let dv_addr = memory::exact(OP, "dv", &dv, DType::Bf16, kv_len(s))?;
        let dout = memory::exact(OP, "dout", &dout, DType::Bf16, q_len(s))?;
        let q = memory::exact(OP, "q", &q, DType::Bf16, q_len(s))?;
        let k = memory::exact(OP, "k", &k, DType::Bf16, kv_len(s))?;
        let v = memory::exact(OP, "v", &v, DType::Bf16, kv_len(s))?;
        let out = memory::exact(OP, "out", &out, DType::Bf16, q_len(s))?;
        let lse = memory::exact(OP, "state", &state, DType::F32, state_len(s))?;
        let Some(Dims {
            ints: (b, t, h, kv, d),
            scale,
            query_grid,
            key_grid,
        }) = dims
        else {
            // No query head (heads = 0 over kv_heads > 0): dk and dv are sums over nothing,
            // overwritten with zeros as on the CPU. Otherwise every buffer is empty.
            self.fill_zero(dk)?;
            return self.fill_zero(dv);
        };
        let (dk, dv) = (dk_addr, dv_addr);
        let rows = state_len(s);
        // D_i = dout_i · out_i, one per (b, h, t); the lock keeps the scratch until the
        // kernels that read it are enqueued.
        let (_guard, delta, _) = self.scratch(rows, 0)?;
        let pre = (blocks(OP, rows, ROWS)?, 1, 1);
        launch!(self, "gqa_attention_backward_preprocess", pre, 256, 0;
            delta, dout, out, b, t, h, d)?;
        let threads = (ROWS * 32) as u32;
        launch!(self, "gqa_attention_backward_dq", query_grid, threads, 0;
            dq, dout, q, k, v, lse, delta, b, t, h, kv, d, scale)?;
        launch!(self, "gqa_attention_backward_dkdv", key_grid, threads, 0;
            dk, dv, dout, q, k, v, lse, delta, b, t, h, kv, d, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(heads: usize, kv_heads: usize, head_dim: usize) -> GqaShape {
        GqaShape {
            batch: 2,
            seq_len: 70,
            heads,
            kv_heads,
            head_dim,
        }
    }

    #[test]
    fn head_dims_from_1_to_128_are_taken() {
        for d in [1, 8, 16, 64, 80, 128] {
            let dims = dims("op", shape(4, 2, d)).unwrap().unwrap();
            assert_eq!(dims.ints, (2, 70, 4, 2, d as i32));
            assert_eq!(dims.scale, (1.0 / (d as f64).sqrt()) as f32);
            assert_eq!(dims.query_grid, (9, 8, 1));
            assert_eq!(dims.key_grid, (9, 4, 1));
            assert!(unsupported_head_dim(d).is_none());
        }
        for d in [0, 129, 256] {
            assert!(dims("op", shape(4, 2, d)).is_err());
            let why = unsupported_head_dim(d).unwrap();
            assert!(why.contains(&format!("this model's is {d}")), "{why}");
        }
    }

    #[test]
    fn kv_heads_must_divide_heads() {
        assert!(dims("op", shape(6, 4, 64)).is_err());
        assert!(dims("op", shape(4, 0, 64)).is_err());
        assert!(dims("op", shape(6, 3, 64)).unwrap().is_some());
    }

    #[test]
    fn empty_shapes_launch_nothing_and_huge_grids_are_refused() {
        assert!(
            dims(
                "op",
                GqaShape {
                    batch: 0,
                    ..shape(4, 2, 64)
                }
            )
            .unwrap()
            .is_none()
        );
        assert!(
            dims(
                "op",
                GqaShape {
                    seq_len: 0,
                    ..shape(4, 2, 64)
                }
            )
            .unwrap()
            .is_none()
        );
        let wide = GqaShape {
            batch: 65_536,
            ..shape(1, 1, 64)
        };
        assert!(matches!(
            dims("op", wide),
            Err(BackendError::BadDimensions { .. })
        ));
    }
}
