//! The AVX-512 level: 16-lane [`Vector`], the packed matmul in f32 (12 x 32 tiles) and bf16
//! (`vdpbf16ps`, AVX512-BF16), and the tiled attention (6 query rows x 64 dimensions).

use std::arch::x86_64::*;

use super::attention_tiles::Group;
use super::gemm::{Block, bf16_pair, dispatch_rows, panel_f32};
use super::vector::Vector;

/// Rows per f32/bf16 micro-tile: 12 x 2 accumulators + 2 panel vectors + 1 broadcast fit
/// AVX-512's 32 registers.
pub(super) const GEMM_TILE_ROWS: usize = 12;
/// Value vectors the tiled attention sums per pass: 6 rows x 4 accumulators of its 32 registers.
const DIM_VECTORS: usize = 4;

/// f32 lanes of this level's [`Vector`].
pub(super) const LANES: usize = F32x16::LANES;

#[derive(Clone, Copy)]
pub(super) struct F32x16(__m512);

impl Vector for F32x16 {
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> Self {
        Self(unsafe { _mm512_setzero_ps() })
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        Self(unsafe { _mm512_set1_ps(value) })
    }
    #[inline(always)]
    unsafe fn load(at: *const f32) -> Self {
        // SAFETY: the caller's contract.
        Self(unsafe { _mm512_loadu_ps(at) })
    }
    #[inline(always)]
    unsafe fn store(self, at: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { _mm512_storeu_ps(at, self.0) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Self(unsafe { _mm512_fmadd_ps(self.0, b.0, c.0) })
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        Self(unsafe { _mm512_mul_ps(self.0, b.0) })
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Self(unsafe { _mm512_add_ps(self.0, b.0) })
    }
}

/// The f32 micro-tile of `rows` (at most [`GEMM_TILE_ROWS`]) rows.
///
/// # Safety
/// The CPU has AVX-512F; `block` was set up by `PackedWeight::run`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gemm_f32(block: &Block, rows: usize) {
    // SAFETY: the caller's contract.
    unsafe { dispatch_rows!(rows, panel_f32::<F32x16>(block)) }
}

/// The bf16 micro-tile of `rows` (at most [`GEMM_TILE_ROWS`]) rows.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `block` was set up by `PackedWeight::run`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn gemm_bf16(block: &Block, rows: usize) {
    // SAFETY: the caller's contract.
    unsafe { dispatch_rows!(rows, tile_bf16(block)) }
}

#[inline(always)]
unsafe fn tile_bf16<const ROWS: usize>(block: &Block) {
    // SAFETY: (all) the caller has AVX-512F and AVX512-BF16.
    let mut acc = [[unsafe { F32x16::zero() }; 2]; ROWS];
    let (a, stride) = (block.a.as_ptr(), block.a_stride);
    for (step, lines) in block.weights.chunks_exact(2).enumerate() {
        // SAFETY: lines are 64-byte aligned; `a` holds ROWS rows of at least `steps` pairs;
        // bf16 pairs and u32 lanes have the same size.
        unsafe {
            let w0: __m512bh = std::mem::transmute(_mm512_load_si512(lines[0].as_ptr().cast()));
            let w1: __m512bh = std::mem::transmute(_mm512_load_si512(lines[1].as_ptr().cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * stride + step) as i32));
                acc[0] = F32x16(_mm512_dpbf16_ps(acc[0].0, x, w0));
                acc[1] = F32x16(_mm512_dpbf16_ps(acc[1].0, x, w1));
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { block.store(&acc, 0) }
}

/// Rounds `row` to bf16 pairs (`row.len().div_ceil(2)` of them, into `out`).
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `out` holds `row.len().div_ceil(2)` values.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn round_row_bf16(row: &[f32], out: &mut [u32]) {
    let full = row.len() / 32;
    for i in 0..full {
        // SAFETY: `i * 32 + 32 <= row.len()` and `i * 16 + 16 <= out.len()`.
        unsafe {
            let low = _mm512_loadu_ps(row.as_ptr().add(i * 32));
            let high = _mm512_loadu_ps(row.as_ptr().add(i * 32 + 16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
            _mm512_storeu_si512(out.as_mut_ptr().add(i * 16).cast(), packed);
        }
    }
    for (pair, slot) in out.iter_mut().enumerate().skip(full * 16) {
        *slot = bf16_pair(row, pair * 2);
    }
}

/// Whether the tiled attention runs here for heads of `head_dim`.
pub(super) fn tiled_attention(head_dim: usize) -> bool {
    is_x86_feature_detected!("avx512f") && head_dim.is_multiple_of(DIM_VECTORS * F32x16::LANES)
}

/// One sequence and key/value head of the tiled attention.
///
/// # Safety
/// [`tiled_attention`] holds; `out` as `attention_tiles::attend` sets it up.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn attend_group(group: &Group, out: *mut f32, out_width: usize) {
    // SAFETY: the caller's contract.
    unsafe { group.run::<F32x16, DIM_VECTORS>(out, out_width) }
}
