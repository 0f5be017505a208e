//! Host matmul of activations against layer weights packed once per layer read.
//!
//! A layer-major wave multiplies each weight by tens of thousands of rows, so it pays to lay the
//! weight out for the kernel once: `[out, in]` becomes panels of 32 output columns, each panel
//! `in`-major, 64-byte aligned. The kernel keeps a block of outputs in registers and streams one
//! panel row (two vector loads) per step against broadcast activations: 12 rows x 32 columns
//! with AVX-512 (24 of its 32 registers), 6 rows x 16 columns with AVX2 (12 of its 16), which
//! walks a panel as two halves. The layout is the same at every level.
//!
//! Two precisions share that layout. `F32` multiplies f32 by f32 with FMA. `Bf16` stores weight
//! pairs `(w[2i], w[2i+1])` as bf16 in one 32-bit lane, rounds each activation row to bf16 pairs
//! the same way, and accumulates in f32 with `vdpbf16ps`, which does twice the multiply-adds of
//! an FMA per instruction (the same trade PyTorch's bf16 autocast makes on CPUs).

use rayon::prelude::*;

use super::super::Precision;
use super::vector::Vector;
use super::{KernelLevel, SharedOut, avx2, avx512};

/// Output columns per panel: two 16-lane vectors.
const PANEL: usize = 32;
/// Rows per parallel task: their activations stay in L2 while the task walks its panels (a
/// multiple of every level's tile rows).
const TASK_ROWS: usize = 96;
/// Panels per parallel task: enough tasks for small batches too.
const TASK_PANELS: usize = 4;

/// One 64-byte line of a packed panel: 16 f32 values, or 16 bf16 pairs.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line([u32; 16]);

/// A weight `[out, in]` in panel layout, for `x · wᵀ`.
pub struct PackedWeight {
    out_features: usize,
    in_features: usize,
    precision: Precision,
    /// The level whose kernels run.
    level: KernelLevel,
    /// Panel `p`, step `s` (an input index, or a pair of them for bf16) holds two lines.
    lines: Vec<Line>,
}

impl PackedWeight {
    /// Packs a row-major `[out, in]` weight for `level`'s kernels. Columns past `out` in the
    /// last panel are zero.
    ///
    /// # Panics
    /// Where this CPU or level lacks the kernel ([`Precision::host_kernel_available_at`]): the
    /// kernels' safety rests on that check.
    pub fn pack(
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        precision: Precision,
        level: KernelLevel,
    ) -> Self {
        assert!(
            precision.host_kernel_available_at(level),
            "this CPU cannot run the packed {precision} kernel at level {level}"
        );
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
        Self { out_features, in_features, precision, level, lines }
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
        let tile_rows = match self.level {
            KernelLevel::Avx512 => avx512::GEMM_TILE_ROWS,
            KernelLevel::Avx2 => avx2::GEMM_TILE_ROWS,
            KernelLevel::Off => unreachable!("packing checked the level"),
        };
        let tasks: Vec<(usize, usize)> = (0..rows.div_ceil(TASK_ROWS))
            .flat_map(|r| (0..panels.div_ceil(TASK_PANELS)).map(move |p| (r * TASK_ROWS, p * TASK_PANELS)))
            .collect();
        tasks.into_par_iter().for_each(|(row0, panel0)| {
            for panel in panel0..(panel0 + TASK_PANELS).min(panels) {
                let weights = &self.lines[panel * steps * 2..][..steps * 2];
                let columns = PANEL.min(self.out_features - panel * PANEL);
                for tile in (row0..(row0 + TASK_ROWS).min(rows)).step_by(tile_rows) {
                    let tile_rows = tile_rows.min(rows - tile);
                    let a = &x[tile * x_stride..][..(tile_rows - 1) * x_stride + steps];
                    // SAFETY: `out` has room for `rows x out_features`; tasks cover disjoint
                    // (row, panel) blocks, and the kernel writes rows `tile..tile + tile_rows`
                    // and this panel's valid columns only.
                    let c = unsafe { out.at(tile * self.out_features + panel * PANEL) };
                    let block = Block { a, a_stride: x_stride, weights, c, c_stride: self.out_features, columns };
                    block.run(tile_rows, self.precision, self.level);
                }
            }
        });
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
pub(super) fn bf16_pair(row: &[f32], i: usize) -> u32 {
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
            unsafe { avx512::round_row_bf16(row, out) }
        }
    });
    out
}

/// One micro-tile's operands: `a` rows start `a_stride` apart, `weights` is one panel.
pub(super) struct Block<'a> {
    pub(super) a: &'a [u32],
    pub(super) a_stride: usize,
    pub(super) weights: &'a [Line],
    pub(super) c: *mut f32,
    pub(super) c_stride: usize,
    pub(super) columns: usize,
}

impl Line {
    pub(super) fn as_ptr(&self) -> *const u32 {
        self.0.as_ptr()
    }
}

/// Calls `$kernel::<$generics.., N>($block)` for `N` = `$rows` (1 to 12, the most tile rows of any
/// level).
macro_rules! dispatch_rows {
    ($rows:expr, $kernel:ident $(::<$($generic:ty),*>)? ($block:expr)) => {
        match $rows {
            1 => $kernel::<$($($generic,)*)? 1>($block),
            2 => $kernel::<$($($generic,)*)? 2>($block),
            3 => $kernel::<$($($generic,)*)? 3>($block),
            4 => $kernel::<$($($generic,)*)? 4>($block),
            5 => $kernel::<$($($generic,)*)? 5>($block),
            6 => $kernel::<$($($generic,)*)? 6>($block),
            7 => $kernel::<$($($generic,)*)? 7>($block),
            8 => $kernel::<$($($generic,)*)? 8>($block),
            9 => $kernel::<$($($generic,)*)? 9>($block),
            10 => $kernel::<$($($generic,)*)? 10>($block),
            11 => $kernel::<$($($generic,)*)? 11>($block),
            12 => $kernel::<$($($generic,)*)? 12>($block),
            _ => unreachable!("tile rows are at most 12"),
        }
    };
}
pub(super) use dispatch_rows;

impl Block<'_> {
    fn run(&self, rows: usize, precision: Precision, level: KernelLevel) {
        // SAFETY: `PackedWeight::pack` checked `precision.host_kernel_available_at(level)`, and
        // `Block` bounds were set up by `PackedWeight::run`, with `rows` at most the level's
        // tile rows.
        unsafe {
            match (level, precision) {
                (KernelLevel::Avx512, Precision::F32) => avx512::gemm_f32(self, rows),
                (KernelLevel::Avx512, Precision::Bf16) => avx512::gemm_bf16(self, rows),
                (KernelLevel::Avx2, Precision::F32) => avx2::gemm_f32(self, rows),
                (KernelLevel::Avx2 | KernelLevel::Off, _) => unreachable!("packing checked the level"),
            }
        }
    }

    /// Writes `acc` (`ROWS x 2 V::LANES`, columns `sub * 2 V::LANES..` of the panel) to the
    /// output, keeping to this panel's valid columns.
    ///
    /// # Safety
    /// `V`'s instructions must be there; `c` must hold `ROWS` rows of this panel's columns.
    #[inline(always)]
    pub(super) unsafe fn store<V: Vector, const ROWS: usize>(&self, acc: &[[V; 2]; ROWS], sub: usize) {
        let first = sub * 2 * V::LANES;
        for (r, row) in acc.iter().enumerate() {
            for (half, value) in row.iter().enumerate() {
                let start = first + half * V::LANES;
                let count = self.columns.saturating_sub(start).min(V::LANES);
                // SAFETY: lanes up to `count` lie inside this panel's valid columns.
                unsafe {
                    let at = self.c.add(r * self.c_stride + start);
                    if count == V::LANES {
                        value.store(at);
                    } else if count > 0 {
                        value.store_first(at, count);
                    }
                }
            }
        }
    }
}

/// The f32 micro-kernel: `ROWS` rows against columns `sub * 2 V::LANES..(sub + 1) * 2 V::LANES`
/// of the panel (the whole panel for AVX-512, a half for AVX2).
///
/// # Safety
/// `V`'s instructions must be there, and `block` set up by `PackedWeight::run`.
#[inline(always)]
pub(super) unsafe fn tile_f32<V: Vector, const ROWS: usize>(block: &Block, sub: usize) {
    if block.columns <= sub * 2 * V::LANES {
        return;
    }
    // SAFETY: (all) the caller has V's instructions; `a` holds ROWS rows of at least `steps`
    // values; each step's two lines hold PANEL contiguous f32 values.
    let mut acc = [[unsafe { V::zero() }; 2]; ROWS];
    let (a, stride) = (block.a.as_ptr(), block.a_stride);
    let offset = sub * 2 * V::LANES;
    for (step, lines) in block.weights.chunks_exact(2).enumerate() {
        unsafe {
            let w = lines[0].as_ptr().cast::<f32>().add(offset);
            let (w0, w1) = (V::load(w), V::load(w.add(V::LANES)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = V::splat(f32::from_bits(*a.add(r * stride + step)));
                acc[0] = x.mul_add(w0, acc[0]);
                acc[1] = x.mul_add(w1, acc[1]);
            }
        }
    }
    unsafe { block.store(&acc, sub) }
}

/// [`tile_f32`] over every part of the panel `V` is narrower than.
///
/// # Safety
/// As for [`tile_f32`].
#[inline(always)]
pub(super) unsafe fn panel_f32<V: Vector, const ROWS: usize>(block: &Block) {
    for sub in 0..PANEL / (2 * V::LANES) {
        // SAFETY: the caller's guarantees.
        unsafe { tile_f32::<V, ROWS>(block, sub) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x · wᵀ + bias` in f64, with the sum of the terms' magnitudes (what f32 rounding error
    /// scales with).
    fn reference(x: &[f32], w: &[f32], bias: &[f32], out: usize, inp: usize) -> Vec<(f64, f64)> {
        x.chunks(inp)
            .flat_map(|row| {
                (0..out).map(move |o| {
                    let terms = row.iter().zip(&w[o * inp..][..inp]).map(|(&a, &b)| a as f64 * b as f64);
                    let (sum, magnitude) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                    (sum + bias[o] as f64, magnitude + (bias[o] as f64).abs())
                })
            })
            .collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    /// Every level this CPU runs, at every precision it allows there, against f64 sums; shapes
    /// whose rows and columns are no multiple of any tile (6, 12 rows; 16, 32 columns) too.
    #[test]
    fn matches_a_plain_matmul_at_odd_shapes_at_every_level() {
        let mut ran = Vec::new();
        for level in [KernelLevel::Avx512, KernelLevel::Avx2] {
            for precision in [Precision::F32, Precision::Bf16] {
                if !precision.host_kernel_available_at(level) {
                    eprintln!("skipping {precision} at {level}: no kernel there, or not on this CPU");
                    continue;
                }
                ran.push(format!("{level}-{precision}"));
                for (rows, out, inp) in [
                    (1, 1, 1),
                    (5, 17, 3),
                    (7, 9, 5),
                    (13, 33, 7),
                    (100, 70, 64),
                    (25, 32, 129),
                    (97, 47, 31),
                    (200, 96, 576),
                ] {
                    let (x, w, bias) = (values(rows * inp, 1), values(out * inp, 2), values(out, 3));
                    let got = PackedWeight::pack(&w, out, inp, precision, level).matmul(&x, Some(&bias));
                    let want = reference(&x, &w, &bias, out, inp);
                    assert_eq!(got.len(), want.len());
                    for (i, (&got, &(want, magnitude))) in got.iter().zip(&want).enumerate() {
                        // f32: a sum of `inp + 1` rounded terms errs by at most (inp + 1) 2^-24
                        // of their magnitudes. bf16 inputs carry 8 significant bits: relative
                        // error 2^-8 per product at worst.
                        let tolerance = match precision {
                            Precision::F32 => (inp + 1) as f64 * f32::EPSILON as f64 / 2.0 * magnitude + 1e-6,
                            Precision::Bf16 => magnitude / 128.0 + 1e-6,
                        };
                        let error = (got as f64 - want).abs();
                        assert!(
                            error <= tolerance,
                            "{level} {precision} {rows}x{out}x{inp} at {i}: {got} vs {want} (error {error:e} > {tolerance:e})"
                        );
                    }
                }
            }
        }
        eprintln!("packed gemm checked at: {}", ran.join(", "));
    }

    #[test]
    #[should_panic(expected = "cannot run the packed bf16 kernel")]
    fn bf16_is_refused_at_avx2() {
        PackedWeight::pack(&[0.0; 4], 2, 2, Precision::Bf16, KernelLevel::Avx2);
    }
}
