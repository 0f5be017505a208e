//! The AVX2 + FMA level: 8-lane [`Vector`], the packed f32 matmul (6 x 16 tiles, a panel in two
//! halves) and the tiled attention (6 query rows x 16 dimensions). bf16 matmuls have no kernel
//! here: AVX2 has no bf16 dot product, and the engine refuses that precision.

use std::arch::x86_64::*;

use super::attention_tiles::Group;
use super::gemm::{Block, dispatch_rows, panel_f32};
use super::vector::Vector;

/// Rows per f32 micro-tile: 6 x 2 accumulators + 2 panel vectors + 1 broadcast fit AVX2's 16
/// registers (the 6 x 16 shape of BLIS's Haswell kernel).
pub(super) const GEMM_TILE_ROWS: usize = 6;
/// Value vectors the tiled attention sums per pass: 6 rows x 2 accumulators, as in the matmul.
const DIM_VECTORS: usize = 2;

/// f32 lanes of this level's [`Vector`].
pub(super) const LANES: usize = F32x8::LANES;

#[derive(Clone, Copy)]
pub(super) struct F32x8(__m256);

impl Vector for F32x8 {
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> Self {
        Self(unsafe { _mm256_setzero_ps() })
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        Self(unsafe { _mm256_set1_ps(value) })
    }
    #[inline(always)]
    unsafe fn load(at: *const f32) -> Self {
        // SAFETY: the caller's contract.
        Self(unsafe { _mm256_loadu_ps(at) })
    }
    #[inline(always)]
    unsafe fn store(self, at: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { _mm256_storeu_ps(at, self.0) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Self(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        Self(unsafe { _mm256_mul_ps(self.0, b.0) })
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Self(unsafe { _mm256_add_ps(self.0, b.0) })
    }
}

fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// The f32 micro-tile of `rows` (at most [`GEMM_TILE_ROWS`]) rows.
///
/// # Safety
/// The CPU has AVX2 and FMA; `block` was set up by `PackedWeight::run`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_f32(block: &Block, rows: usize) {
    debug_assert!(rows <= GEMM_TILE_ROWS);
    // SAFETY: the caller's contract.
    unsafe { dispatch_rows!(rows, panel_f32::<F32x8>(block)) }
}

/// Whether the tiled attention runs here for heads of `head_dim`.
pub(super) fn tiled_attention(head_dim: usize) -> bool {
    has_avx2_fma() && head_dim.is_multiple_of(DIM_VECTORS * F32x8::LANES)
}

/// One sequence and key/value head of the tiled attention.
///
/// # Safety
/// [`tiled_attention`] holds; `out` as `attention_tiles::attend` sets it up.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn attend_group(group: &Group, out: *mut f32, out_width: usize) {
    // SAFETY: the caller's contract.
    unsafe { group.run::<F32x8, DIM_VECTORS>(out, out_width) }
}
