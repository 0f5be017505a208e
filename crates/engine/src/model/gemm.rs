//! Host matmul of activations against layer weights packed once per layer read.
//!
//! A layer-major wave multiplies each weight by tens of thousands of rows, so it pays to lay the
//! weight out for the kernel once: `[out, in]` becomes panels of 32 output columns, each panel
//! `in`-major, 64-byte aligned. The kernel keeps a 12 x 32 block of outputs in AVX-512 registers
//! and streams one panel row (two vector loads) per step against 12 broadcast activations.
//!
//! Two precisions share that layout. `F32` multiplies f32 by f32 with FMA. `Bf16` stores weight
//! pairs `(w[2i], w[2i+1])` as bf16 in one 32-bit lane, rounds each activation row to bf16 pairs
//! the same way, and accumulates in f32 with `vdpbf16ps`, which does twice the multiply-adds of
//! an FMA per instruction (the same trade PyTorch's bf16 autocast makes on CPUs).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::Precision;

/// Output columns per panel: two 16-lane vectors.
const PANEL: usize = 32;
/// Rows per micro-tile: 12 x 2 accumulators + 2 panel vectors + 1 broadcast fit AVX-512's 32.
const TILE_ROWS: usize = 12;
/// Rows per parallel task: their activations stay in L2 while the task walks its panels.
const TASK_ROWS: usize = 8 * TILE_ROWS;
/// Panels per parallel task: enough tasks for small batches too.
const TASK_PANELS: usize = 4;

/// One 64-byte line of a packed panel: 16 f32 values, or 16 bf16 pairs.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// A weight `[out, in]` in panel layout, for `x · wᵀ`.
pub struct PackedWeight {
    out_features: usize,
    in_features: usize,
    precision: Precision,
    /// Panel `p`, step `s` (an input index, or a pair of them for bf16) holds two lines.
    lines: Vec<Line>,
}

impl PackedWeight {
    /// Packs a row-major `[out, in]` weight. Columns past `out` in the last panel are zero.
    ///
    /// # Panics
    /// Where this CPU lacks the kernel's instructions ([`Precision::host_kernel_available`]):
    /// the kernels' safety rests on that check.
    pub fn pack(weight: &[f32], out_features: usize, in_features: usize, precision: Precision) -> Self {
        assert!(precision.host_kernel_available(), "this CPU cannot run the packed {precision} kernel");
        assert_eq!(weight.len(), out_features * in_features, "weight size");
        let steps = steps(in_features, precision);
        let panels = out_features.div_ceil(PANEL);
        let mut lines = vec![Line([0; 16]); panels * steps * 2];
        lines.par_chunks_mut(steps * 2).enumerate().for_each(|(panel, lines)| {
            for column in 0..PANEL.min(out_features - panel * PANEL) {
                let row = &weight[(panel * PANEL + column) * in_features..][..in_features];
                for step in 0..steps {
                    let value = match precision {
                        Precision::F32 => row[step].to_bits(),
                        Precision::Bf16 => bf16_pair(row, 2 * step),
                    };
                    lines[step * 2 + column / 16].0[column % 16] = value;
                }
            }
        });
        Self { out_features, in_features, precision, lines }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `x · wᵀ (+ bias)` for `x` = `[rows, in]` row-major; returns `[rows, out]`.
    pub fn matmul(&self, x: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len() % self.in_features, 0, "activation width");
        let rows = x.len() / self.in_features;
        let mut out = Vec::with_capacity(rows * self.out_features);
        let target = SharedOut(out.as_mut_ptr());
        match self.precision {
            Precision::F32 => self.run(as_bits(x), self.in_features, rows, &target),
            Precision::Bf16 => {
                let pairs = to_bf16_pairs(x, self.in_features);
                self.run(&pairs, steps(self.in_features, Precision::Bf16), rows, &target)
            }
        }
        // SAFETY: `run` wrote every valid column of every row (tasks cover all of them), and
        // the capacity is exactly that; skipping the zero fill saves a pass over a large output.
        unsafe { out.set_len(rows * self.out_features) };
        if let Some(bias) = bias {
            out.par_chunks_mut(self.out_features).for_each(|row| row.iter_mut().zip(bias).for_each(|(o, b)| *o += b));
        }
        out
    }

    /// Splits `rows x panels` into tasks, each running micro-tiles panel by panel.
    fn run(&self, x: &[u32], x_stride: usize, rows: usize, out: &SharedOut) {
        let panels = self.out_features.div_ceil(PANEL);
        let steps = steps(self.in_features, self.precision);
        let tasks: Vec<(usize, usize)> = (0..rows.div_ceil(TASK_ROWS))
            .flat_map(|r| (0..panels.div_ceil(TASK_PANELS)).map(move |p| (r * TASK_ROWS, p * TASK_PANELS)))
            .collect();
        tasks.into_par_iter().for_each(|(row0, panel0)| {
            for panel in panel0..(panel0 + TASK_PANELS).min(panels) {
                let weights = &self.lines[panel * steps * 2..][..steps * 2];
                let columns = PANEL.min(self.out_features - panel * PANEL);
                for tile in (row0..(row0 + TASK_ROWS).min(rows)).step_by(TILE_ROWS) {
                    let tile_rows = TILE_ROWS.min(rows - tile);
                    let a = &x[tile * x_stride..][..(tile_rows - 1) * x_stride + steps];
                    // SAFETY: `out` has room for `rows x out_features`; tasks cover disjoint
                    // (row, panel) blocks, and the kernel writes rows `tile..tile + tile_rows`
                    // and this panel's valid columns only.
                    let c = unsafe { out.at(tile * self.out_features + panel * PANEL) };
                    let block = Block { a, a_stride: x_stride, weights, c, c_stride: self.out_features, columns };
                    block.run(tile_rows, self.precision);
                }
            }
        });
    }
}

/// An output buffer that parallel tasks write disjoint parts of.
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: every user (`PackedWeight::run`, `attention_tiles::attend`) has each task write a
// disjoint part.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` places in.
    ///
    /// # Safety
    /// `offset` must lie inside the buffer.
    pub(crate) unsafe fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// Steps of the kernel's inner loop: one per input, or one per input pair in bf16.
fn steps(in_features: usize, precision: Precision) -> usize {
    match precision {
        Precision::F32 => in_features,
        Precision::Bf16 => in_features.div_ceil(2),
    }
}

/// bf16 (round to nearest even) of `row[i]` in the low half and `row[i + 1]` (or 0) in the high.
fn bf16_pair(row: &[f32], i: usize) -> u32 {
    let low = half::bf16::from_f32(row[i]).to_bits() as u32;
    let high = row.get(i + 1).map_or(0, |&v| half::bf16::from_f32(v).to_bits() as u32);
    low | (high << 16)
}

fn as_bits(x: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) }
}

/// Rows of `x` (`width` wide) as bf16 pairs, `width.div_ceil(2)` per row.
fn to_bf16_pairs(x: &[f32], width: usize) -> Vec<u32> {
    let pairs = width.div_ceil(2);
    let mut out = vec![0u32; x.len() / width * pairs];
    out.par_chunks_mut(pairs * 64).zip(x.par_chunks(width * 64)).for_each(|(out, x)| {
        for (out, row) in out.chunks_exact_mut(pairs).zip(x.chunks_exact(width)) {
            // SAFETY: `PackedWeight::pack` checked `Precision::host_kernel_available` for bf16,
            // and the slices are in bounds.
            unsafe { round_row_bf16(row, out) }
        }
    });
    out
}

#[target_feature(enable = "avx512f,avx512bf16")]
fn round_row_bf16(row: &[f32], out: &mut [u32]) {
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

/// One micro-tile's operands: `a` rows start `a_stride` apart, `weights` is one panel.
struct Block<'a> {
    a: &'a [u32],
    a_stride: usize,
    weights: &'a [Line],
    c: *mut f32,
    c_stride: usize,
    columns: usize,
}

macro_rules! dispatch_rows {
    ($rows:expr, $kernel:ident, $block:expr) => {
        match $rows {
            1 => $kernel::<1>($block),
            2 => $kernel::<2>($block),
            3 => $kernel::<3>($block),
            4 => $kernel::<4>($block),
            5 => $kernel::<5>($block),
            6 => $kernel::<6>($block),
            7 => $kernel::<7>($block),
            8 => $kernel::<8>($block),
            9 => $kernel::<9>($block),
            10 => $kernel::<10>($block),
            11 => $kernel::<11>($block),
            12 => $kernel::<12>($block),
            _ => unreachable!("tile rows are at most {TILE_ROWS}"),
        }
    };
}

impl Block<'_> {
    fn run(&self, rows: usize, precision: Precision) {
        // SAFETY: `PackedWeight::pack` checked `precision.host_kernel_available()`, and `Block`
        // bounds were set up by `PackedWeight::run`.
        unsafe {
            match precision {
                Precision::F32 => dispatch_rows!(rows, tile_f32, self),
                Precision::Bf16 => dispatch_rows!(rows, tile_bf16, self),
            }
        }
    }

    /// Writes `acc` (`ROWS x 32`) to the output, keeping to this panel's valid columns.
    #[target_feature(enable = "avx512f")]
    unsafe fn store<const ROWS: usize>(&self, acc: &[[__m512; 2]; ROWS]) {
        let masks = [lane_mask(self.columns), lane_mask(self.columns.saturating_sub(16))];
        for (r, row) in acc.iter().enumerate() {
            for (half, (&value, &mask)) in row.iter().zip(&masks).enumerate() {
                // SAFETY: masked lanes are not touched; unmasked ones lie inside `out`.
                unsafe { _mm512_mask_storeu_ps(self.c.add(r * self.c_stride + half * 16), mask, value) };
            }
        }
    }
}

fn lane_mask(columns: usize) -> __mmask16 {
    if columns >= 16 { 0xffff } else { ((1u32 << columns) - 1) as __mmask16 }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile_f32<const ROWS: usize>(block: &Block) {
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    let (a, stride) = (block.a.as_ptr(), block.a_stride);
    for (step, lines) in block.weights.chunks_exact(2).enumerate() {
        // SAFETY: lines are 64-byte aligned; `a` holds ROWS rows of at least `steps` values.
        unsafe {
            let w0 = _mm512_load_ps(lines[0].0.as_ptr().cast());
            let w1 = _mm512_load_ps(lines[1].0.as_ptr().cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(f32::from_bits(*a.add(r * stride + step)));
                acc[0] = _mm512_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, w1, acc[1]);
            }
        }
    }
    unsafe { block.store(&acc) }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_bf16<const ROWS: usize>(block: &Block) {
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    let (a, stride) = (block.a.as_ptr(), block.a_stride);
    for (step, lines) in block.weights.chunks_exact(2).enumerate() {
        // SAFETY: as in `tile_f32`; bf16 pairs and u32 lanes have the same size.
        unsafe {
            let w0: __m512bh = std::mem::transmute(_mm512_load_si512(lines[0].0.as_ptr().cast()));
            let w1: __m512bh = std::mem::transmute(_mm512_load_si512(lines[1].0.as_ptr().cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * stride + step) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, w0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, w1);
            }
        }
    }
    unsafe { block.store(&acc) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], out: usize, inp: usize) -> Vec<f32> {
        x.chunks(inp)
            .flat_map(|row| (0..out).map(move |o| row.iter().zip(&w[o * inp..][..inp]).map(|(a, b)| a * b).sum()))
            .collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn matches_a_plain_matmul_at_odd_shapes() {
        for precision in [Precision::F32, Precision::Bf16] {
            if !precision.host_kernel_available() {
                eprintln!("skipping {precision:?}: this CPU lacks the instructions");
                continue;
            }
            for (rows, out, inp) in [(1, 1, 1), (13, 33, 7), (100, 70, 64), (25, 32, 129), (200, 96, 576)] {
                let (x, w, bias) = (values(rows * inp, 1), values(out * inp, 2), values(out, 3));
                let got = PackedWeight::pack(&w, out, inp, precision).matmul(&x, Some(&bias));
                let want: Vec<f32> =
                    reference(&x, &w, out, inp).iter().enumerate().map(|(i, v)| v + bias[i % out]).collect();
                // bf16 inputs carry 8 significant bits: relative error 2^-9 per product.
                let tolerance = match precision {
                    Precision::F32 => 1e-4,
                    Precision::Bf16 => 1e-2 * (inp as f32).sqrt(),
                };
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst <= tolerance, "{precision:?} {rows}x{out}x{inp}: max error {worst}");
            }
        }
    }
}
