//! Device memory of the CUDA backend: buffers that know their element type (bf16 storage,
//! fp32 statistics), the views kernels take, and the host-side bf16 conversion.
//!
//! ```text
//! CudaBuf { allocation, base address, len, dtype }  ──view(range)──▶ CudaRef { addr, len, dtype }
//!                                                   ──view_mut────▶ CudaMut { addr, len, dtype }
//! ```
//!
//! Views are plain device addresses with the borrow of their buffer, so launchers pass them
//! as kernel arguments directly; every launcher checks each view's element type and length
//! before launching, and returns [`BackendError`] instead of handing a kernel a wrong buffer.
//! All work goes to the backend's one compute stream, so stream order is the only
//! synchronisation device memory needs.

use std::marker::PhantomData;

use cudarc::driver::CudaSlice;

use crate::backend::BackendError;

/// What a buffer's elements are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    Bf16,
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::Bf16 => 2,
            DType::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Bf16 => "bf16",
            DType::F32 => "fp32",
        }
    }
}

/// An owned device buffer. The allocation is freed (stream-ordered) when dropped.
#[derive(Debug)]
pub struct CudaBuf {
    pub(super) mem: CudaSlice<u8>,
    pub(super) addr: u64,
    pub(super) len: usize,
    pub(super) dtype: DType,
    pub(super) _ticket: super::Ticket,
}

impl CudaBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device address of element `index` (no bounds check: callers check ranges).
    pub(super) fn addr_of(&self, index: usize) -> u64 {
        self.addr + (index * self.dtype.size()) as u64
    }
}

/// A shared view of part of a [`CudaBuf`].
#[derive(Debug, Clone, Copy)]
pub struct CudaRef<'a> {
    pub(super) addr: u64,
    pub(super) len: usize,
    pub(super) dtype: DType,
    pub(super) _buf: PhantomData<&'a CudaBuf>,
}

/// An exclusive view of part of a [`CudaBuf`].
#[derive(Debug)]
pub struct CudaMut<'a> {
    pub(super) addr: u64,
    pub(super) len: usize,
    pub(super) dtype: DType,
    pub(super) _buf: PhantomData<&'a mut CudaBuf>,
}

/// What launchers need of a view: where, how long, of what.
pub(super) trait View {
    fn addr(&self) -> u64;
    fn len(&self) -> usize;
    fn dtype(&self) -> DType;
}

impl View for CudaRef<'_> {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

impl View for CudaMut<'_> {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// Checks that `view` holds `dtype` elements, at least `min_len` of them; returns its address.
pub(super) fn arg(
    op: &'static str,
    name: &'static str,
    view: &impl View,
    dtype: DType,
    min_len: usize,
) -> Result<u64, BackendError> {
    if view.dtype() != dtype {
        return Err(BackendError::ElementType {
            op,
            name,
            want: dtype.name(),
            got: view.dtype().name(),
        });
    }
    if view.len() < min_len {
        return Err(BackendError::ShapeMismatch {
            op,
            name,
            want: min_len,
            got: view.len(),
        });
    }
    Ok(view.addr())
}

/// [`arg`] for a view whose length must be exactly `len`.
pub(super) fn exact(
    op: &'static str,
    name: &'static str,
    view: &impl View,
    dtype: DType,
    len: usize,
) -> Result<u64, BackendError> {
    let addr = arg(op, name, view, dtype, len)?;
    if view.len() != len {
        return Err(BackendError::ShapeMismatch {
            op,
            name,
            want: len,
            got: view.len(),
        });
    }
    Ok(addr)
}

/// fp32 → bf16, rounding to nearest even (as `__float2bfloat16_rn`); NaN stays NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// bf16 → fp32 (exact).
pub fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits(u32::from(x) << 16)
}

/// Rounds every value to the nearest bf16, kept as f32: what a value looks like after a trip
/// through bf16 storage (the parity tests feed the CPU reference these).
pub fn round_to_bf16(values: &mut [f32]) {
    for v in values {
        *v = bf16_to_f32(f32_to_bf16(*v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_specials() {
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0)), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(
            bf16_to_f32(f32_to_bf16(1.0 + 3.0 / 256.0)),
            1.0 + 1.0 / 64.0
        );
        // Just above halfway rounds up.
        assert_eq!(
            bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0 + 1e-6)),
            1.0 + 1.0 / 128.0
        );
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(f32_to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(bf16_to_f32(f32_to_bf16(f32::MAX)), f32::INFINITY);
        assert_eq!(f32_to_bf16(-0.0), 0x8000);
    }

    #[test]
    fn every_bf16_value_round_trips_through_f32() {
        for h in 0..=u16::MAX {
            let x = bf16_to_f32(h);
            if x.is_nan() {
                continue;
            }
            assert_eq!(f32_to_bf16(x), h, "{h:#06x}");
        }
    }

    #[test]
    fn views_of_the_wrong_type_or_length_are_refused() {
        let view = CudaRef {
            addr: 4096,
            len: 8,
            dtype: DType::Bf16,
            _buf: PhantomData,
        };
        assert_eq!(arg("op", "x", &view, DType::Bf16, 8), Ok(4096));
        assert!(matches!(
            arg("op", "x", &view, DType::F32, 8),
            Err(BackendError::ElementType {
                want: "fp32",
                got: "bf16",
                ..
            })
        ));
        assert!(matches!(
            arg("op", "x", &view, DType::Bf16, 9),
            Err(BackendError::ShapeMismatch {
                want: 9,
                got: 8,
                ..
            })
        ));
        assert!(exact("op", "x", &view, DType::Bf16, 7).is_err());
    }
}
