//! The element types the CPU kernels are generic over: f32 for training, f64 so gradient checks
//! run the very same kernel code with finite differences that are accurate to ~1e-10.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A real floating-point scalar the CPU kernels (and `gemm`) accept.
pub trait Float:
    Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    const ZERO: Self;
    const ONE: Self;
    /// "cpu-f32" / "cpu-f64".
    const BACKEND_NAME: &'static str;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn max(self, other: Self) -> Self;
    /// `e^x` for the hot loops: f32 uses [`exp_f32`] (branch-free, vectorisable, ~1 ulp);
    /// f64 uses the standard library (gradient checks want full accuracy).
    fn fast_exp(self) -> Self;
    /// `tanh(x)` built on [`Float::fast_exp`] (absolute error ~1e-7 in f32).
    fn fast_tanh(self) -> Self;
}

/// `e^x` in f32 without libm: `x = k·ln2 + r`, |r| <= ln2/2, `e^r` by a degree-7 Taylor
/// polynomial (truncation < 1e-9 relative), `2^k` assembled in the exponent bits. Inputs are
/// clamped to [-87, 88], so results stay normal and finite (e^-87 ≈ 1.6e-38 stands in for 0).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let k_bits = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((k_bits + 127) << 23) as u32);
    p * scale
}

macro_rules! impl_float {
    ($t:ty, $name:literal, $exp:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const BACKEND_NAME: &'static str = $name;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn fast_exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn fast_tanh(self) -> Self {
                // tanh|x| = (1 - e^{-2|x|}) / (1 + e^{-2|x|}), sign restored after.
                let e = $exp(-2.0 * self.abs());
                let t = (1.0 - e) / (1.0 + e);
                if self < 0.0 { -t } else { t }
            }
        }
    };
}

impl_float!(f32, "cpu-f32", exp_f32);
impl_float!(f64, "cpu-f64", f64::exp);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 2.5e-7,
                "exp({x}) = {got}, libm {want}"
            );
            x += 0.013;
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(-1000.0) < 1e-37);
        assert!(exp_f32(1000.0).is_finite());
    }

    #[test]
    fn fast_tanh_is_within_2e7_absolute() {
        let mut x = -20.0f32;
        while x < 20.0 {
            let (got, want) = (x.fast_tanh(), (x as f64).tanh());
            assert!(
                (got as f64 - want).abs() < 2e-7,
                "tanh({x}) = {got}, want {want}"
            );
            x += 0.0037;
        }
    }
}
