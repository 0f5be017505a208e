//! The one interface the generic kernels ([`super::gemm`], [`super::attention_tiles`]) compute
//! through: a register of f32 lanes.

/// A SIMD register of `LANES` f32 values.
///
/// Each implementation's methods are `#[inline(always)]` wrappers of its intrinsics, so that a
/// generic kernel compiled inside a `#[target_feature]` entry point of that level turns into
/// plain vector instructions.
///
/// # Safety
/// Every method requires the CPU to have the implementation's instructions (its level's entry
/// points are the only callers), and pointers to be valid for the lanes read or written.
pub(crate) trait Vector: Copy {
    const LANES: usize;

    unsafe fn zero() -> Self;
    unsafe fn splat(value: f32) -> Self;
    /// Unaligned load of `LANES` values.
    unsafe fn load(at: *const f32) -> Self;
    /// Unaligned store of `LANES` values.
    unsafe fn store(self, at: *mut f32);
    /// `self * b + c`, fused.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
}
