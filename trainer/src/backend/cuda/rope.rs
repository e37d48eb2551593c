//! Launcher of `kernels/rope.cu`: the rotary position embedding, in place, one thread per
//! rotated pair, forward or inverse.

use super::{CudaBackend, CudaMut, CudaRef, DType, blocks, int, launch, memory};
use crate::backend::{BackendError, RopeShape};

/// Checks that the (cos, sin) tables of `table_len` angles each cover the shape's positions at
/// `head_dim / 2` angles per position (an even head_dim), as the CPU reference does.
fn check_table(op: &'static str, s: RopeShape, table_len: usize) -> Result<(), BackendError> {
    let half = s.head_dim / 2;
    if !s.head_dim.is_multiple_of(2)
        || !table_len.is_multiple_of(half)
        || table_len / half < s.seq_len
    {
        return Err(BackendError::BadDimensions {
            op,
            detail: format!(
                "the table holds {table_len} angles, which does not cover {} positions of \
                 head_dim {} (an even head_dim is needed)",
                s.seq_len, s.head_dim
            ),
        });
    }
    Ok(())
}

impl CudaBackend {
    pub(super) fn rope_launch(
        &self,
        x: CudaMut<'_>,
        cos: CudaRef<'_>,
        sin: CudaRef<'_>,
        s: RopeShape,
        inverse: bool,
    ) -> Result<(), BackendError> {
        const OP: &str = "rope";
        let n = s.batch * s.seq_len * s.heads * s.head_dim;
        let x = memory::exact(OP, "x", &x, DType::Bf16, n)?;
        let half = s.head_dim / 2;
        if half == 0 {
            // Nothing to rotate (the CPU reference returns before looking at the tables).
            return Ok(());
        }
        let cos_len = cos.len;
        let cos = memory::arg(OP, "cos", &cos, DType::F32, 0)?;
        let sin = memory::exact(OP, "sin", &sin, DType::F32, cos_len)?;
        check_table(OP, s, cos_len)?;
        if n == 0 {
            return Ok(());
        }
        let (b, t, h, hf) = (
            int(OP, "batch", s.batch)?,
            int(OP, "seq_len", s.seq_len)?,
            int(OP, "heads", s.heads)?,
            int(OP, "head_dim / 2", half)?,
        );
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        let grid = (blocks(OP, n / 2, 256)?, 1, 1);
        launch!(self, "rope_rotate", grid, 256, 0; x, cos, sin, b, t, h, hf, sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_must_cover_the_positions_of_an_even_head_dim() {
        let s = RopeShape {
            batch: 2,
            seq_len: 5,
            heads: 3,
            head_dim: 8,
        };
        assert!(check_table("rope", s, 5 * 4).is_ok());
        assert!(check_table("rope", s, 9 * 4).is_ok());
        assert!(check_table("rope", s, 4 * 4).is_err());
        assert!(check_table("rope", s, 5 * 4 + 1).is_err());
        let odd = RopeShape { head_dim: 7, ..s };
        assert!(check_table("rope", odd, 5 * 3).is_err());
    }
}
