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
//!
//! What a tile does with its sums is its [`Epilogue`]: store them (plus a bias), add them to the
//! output (a residual connection, so the sum never takes a pass of its own), or, for a gate and
//! up projection packed as pairs ([`PackedWeight::pack_gated`]), store `silu(gate) · up`, so the
//! twice-as-wide product is never written out; or, for a head, fold them into each row's
//! log-softmax terms ([`PackedWeight::softmax_terms`]), so the logits are never written out.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::super::Precision;
use super::super::fused::swiglu;
use super::softmax_terms::{SoftmaxTerms, TermLanes};
use super::vector::Vector;
use super::{KernelLevel, SharedOut, TokenRows, avx2, avx512};

/// Output columns per panel: two 16-lane vectors.
const PANEL: usize = 32;
/// Rows per parallel task: their activations stay in L2 while the task walks its panels (a
/// multiple of every level's tile rows).
const TASK_ROWS: usize = 48;
/// Panels per parallel task. Tasks of 48 rows x 2 panels keep both cores busy to the end of a
/// micro-batch's matmul: with 96 x 4, a batch of 290 rows (HellaSwag's endings) left one core
/// waiting on the other's last tasks, and the MLP's matmuls ran at 170 GFLOP/s instead of 215.
const TASK_PANELS: usize = 2;
/// Panels per task of [`PackedWeight::softmax_terms`]: each panel stays in L2 while the task's
/// rows pass it, and panel groups run outermost, so a group is read from memory once per call and
/// from the last-level cache by its other row blocks (64 panels: 4.7 MB in f32 for 576 inputs).
/// Each group leaves one partial sum per row to merge: groups of 4 panels made the merges a
/// fifth of a head's time.
const TERMS_GROUP_PANELS: usize = 64;
/// Rows per task of [`PackedWeight::softmax_terms`] (a multiple of every level's tile rows).
const TERMS_TASK_ROWS: usize = 96;

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
    /// Packed by [`PackedWeight::pack_gated`]: columns pair gate and up values.
    gated: bool,
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
        assert_eq!(weight.len(), out_features * in_features, "weight size");
        Self::pack_rows(|row| &weight[row * in_features..][..in_features], out_features, in_features, precision, level)
    }

    /// Packs a gate and an up projection (`[width, in]` each) for [`matmul_swiglu`]: their rows
    /// interleave by the level's vector width (`LANES` gate rows, then the same `LANES` up rows),
    /// so that each pair of a tile's accumulators holds a gate and its up value.
    ///
    /// # Panics
    /// Where [`can_gate`](Self::can_gate) does not hold, and as [`pack`](Self::pack) does.
    ///
    /// [`matmul_swiglu`]: Self::matmul_swiglu
    pub fn pack_gated(gate: &[f32], up: &[f32], in_features: usize, precision: Precision, level: KernelLevel) -> Self {
        assert_eq!(gate.len(), up.len(), "gate and up sizes");
        let width = gate.len() / in_features;
        assert!(Self::can_gate(width, level), "{width} gated columns do not pair at level {level}");
        let lanes = lanes(level);
        let row = |row: usize| {
            let (pair, lane) = (row / (2 * lanes), row % (2 * lanes));
            let (half, lane) = if lane < lanes { (gate, lane) } else { (up, lane - lanes) };
            &half[(pair * lanes + lane) * in_features..][..in_features]
        };
        Self { gated: true, ..Self::pack_rows(row, 2 * width, in_features, precision, level) }
    }

    /// Whether [`pack_gated`](Self::pack_gated) takes a gate of `width` rows at `level`: a
    /// multiple of its vector width.
    pub fn can_gate(width: usize, level: KernelLevel) -> bool {
        level != KernelLevel::Off && width.is_multiple_of(lanes(level))
    }

    /// Packs the weight whose row `r` (of `in_features` values) is `row(r)`.
    fn pack_rows<'w>(
        row: impl Fn(usize) -> &'w [f32] + Sync,
        out_features: usize,
        in_features: usize,
        precision: Precision,
        level: KernelLevel,
    ) -> Self {
        assert!(
            precision.host_kernel_available_at(level),
            "this CPU cannot run the packed {precision} kernel at level {level}"
        );
        let steps = steps(in_features, precision);
        let panels = out_features.div_ceil(PANEL);
        let mut lines = vec![Line([0; 16]); panels * steps * 2];
        lines.par_chunks_mut(steps * 2).enumerate().for_each(|(panel, lines)| {
            for column in 0..PANEL.min(out_features - panel * PANEL) {
                let row = row(panel * PANEL + column);
                for step in 0..steps {
                    let value = match precision {
                        Precision::F32 => row[step].to_bits(),
                        Precision::Bf16 => bf16_pair(row, 2 * step),
                    };
                    lines[step * 2 + column / 16].0[column % 16] = value;
                }
            }
        });
        Self { out_features, in_features, precision, level, gated: false, lines }
    }

    /// Columns of the product: half the packed ones for a gated weight.
    pub fn out_features(&self) -> usize {
        if self.gated { self.out_features / 2 } else { self.out_features }
    }

    pub fn is_gated(&self) -> bool {
        self.gated
    }

    /// `x · wᵀ (+ bias)` for `x` = `[rows, in]` row-major, at its token rows; returns `[rows,
    /// out]`.
    pub fn matmul(&self, x: &[f32], tokens: TokenRows, bias: Option<&[f32]>) -> Vec<f32> {
        assert!(!self.gated, "a gated weight multiplies through matmul_swiglu");
        self.product(x, tokens, Epilogue::Store(bias))
    }

    /// `sum += x · wᵀ (+ bias)` at the token rows: a residual connection, added as each tile is
    /// stored.
    pub fn matmul_add_to(&self, x: &[f32], tokens: TokenRows, bias: Option<&[f32]>, sum: &mut [f32]) {
        assert!(!self.gated, "a gated weight multiplies through matmul_swiglu");
        let rows = self.rows(x);
        assert_eq!(sum.len(), rows * self.out_features, "residual size");
        let spans = tokens.spans(rows);
        self.run_precision(x, &spans, &SharedOut(sum.as_mut_ptr()), Epilogue::Accumulate(bias));
    }

    /// `silu(x · gateᵀ) · (x · upᵀ)` of a weight from [`pack_gated`](Self::pack_gated), at the
    /// token rows; returns `[rows, width]`.
    pub fn matmul_swiglu(&self, x: &[f32], tokens: TokenRows) -> Vec<f32> {
        assert!(self.gated, "matmul_swiglu needs a weight from pack_gated");
        self.product(x, tokens, Epilogue::SwiGlu)
    }

    /// The product into a new `[rows, out_features()]` buffer, zero at rows holding no token.
    fn product(&self, x: &[f32], tokens: TokenRows, epilogue: Epilogue) -> Vec<f32> {
        let (rows, width) = (self.rows(x), self.out_features());
        let spans = tokens.spans(rows);
        let mut out = Vec::with_capacity(rows * width);
        self.run_precision(x, &spans, &SharedOut(out.as_mut_ptr()), epilogue);
        let mut done = 0;
        for span in spans.iter().cloned().chain(std::iter::once(rows..rows)) {
            // SAFETY: rows `done..span.start` are within the capacity, and no task wrote them.
            unsafe { std::ptr::write_bytes(out.as_mut_ptr().add(done * width), 0, (span.start - done) * width) };
            done = span.end;
        }
        // SAFETY: `run` wrote every valid column of every token row (tasks cover all of them),
        // the loop above zeroed the rest, and the capacity is exactly that; skipping a zero fill
        // of the whole output saves a pass over it.
        unsafe { out.set_len(rows * width) };
        out
    }

    fn rows(&self, x: &[f32]) -> usize {
        assert_eq!(x.len() % self.in_features, 0, "activation width");
        x.len() / self.in_features
    }

    /// Runs the tiles on the rows `spans` of `x` as the precision takes it (bf16 pairs rounded
    /// here).
    fn run_precision(&self, x: &[f32], spans: &[Range<usize>], out: &SharedOut, epilogue: Epilogue) {
        if let Epilogue::Store(Some(bias)) | Epilogue::Accumulate(Some(bias)) = epilogue {
            assert_eq!(bias.len(), self.out_features, "bias size");
        }
        match self.precision {
            Precision::F32 => self.run(as_bits(x), self.in_features, spans, out, epilogue),
            Precision::Bf16 => {
                let pairs = to_bf16_pairs(x, self.in_features);
                self.run(&pairs, steps(self.in_features, Precision::Bf16), spans, out, epilogue)
            }
        }
    }

    /// Splits the rows `spans` x panels into tasks, each running micro-tiles panel by panel.
    fn run(&self, x: &[u32], x_stride: usize, spans: &[Range<usize>], out: &SharedOut, epilogue: Epilogue) {
        let panels = self.out_features.div_ceil(PANEL);
        // A gated product's output is half as wide: panel `p` lands at column `p * PANEL / 2`.
        let c_stride = self.out_features();
        let c_column = if self.gated { PANEL / 2 } else { PANEL };
        let row_blocks = spans.iter().flat_map(|span| {
            span.clone().step_by(TASK_ROWS).map(move |start| start..(start + TASK_ROWS).min(span.end))
        });
        let tasks: Vec<(Range<usize>, usize)> = row_blocks
            .flat_map(|rows| (0..panels.div_ceil(TASK_PANELS)).map(move |p| (rows.clone(), p * TASK_PANELS)))
            .collect();
        tasks.into_par_iter().for_each(|(rows, panel0)| {
            for panel in panel0..(panel0 + TASK_PANELS).min(panels) {
                // SAFETY: `out` has room for `rows x c_stride`; tasks cover disjoint (row, panel)
                // blocks, and the kernel writes rows `tile..tile + tile_rows` and this panel's
                // valid columns (halved, when gated) only.
                self.run_panel(x, x_stride, rows.clone(), panel, c_stride, |tile| {
                    (unsafe { out.at(tile * c_stride + panel * c_column) }, epilogue)
                });
            }
        });
    }

    /// The tiles of `rows` against `panel`, the tile at row `tile` writing to and finishing as
    /// `at(tile)` says.
    fn run_panel<'e>(
        &self,
        x: &[u32],
        x_stride: usize,
        rows: Range<usize>,
        panel: usize,
        c_stride: usize,
        at: impl Fn(usize) -> (*mut f32, Epilogue<'e>),
    ) {
        let steps = steps(self.in_features, self.precision);
        let weights = &self.lines[panel * steps * 2..][..steps * 2];
        let columns = PANEL.min(self.out_features - panel * PANEL);
        let first_column = panel * PANEL;
        for tile in rows.clone().step_by(self.tile_rows()) {
            let tile_rows = self.tile_rows().min(rows.end - tile);
            let a = &x[tile * x_stride..][..(tile_rows - 1) * x_stride + steps];
            let (c, epilogue) = at(tile);
            let block = Block { a, a_stride: x_stride, weights, c, c_stride, columns, first_column, epilogue };
            block.run(tile_rows, self.precision, self.level);
        }
    }

    /// Rows of this level's micro-tile.
    fn tile_rows(&self) -> usize {
        match self.level {
            KernelLevel::Avx512 => avx512::GEMM_TILE_ROWS,
            KernelLevel::Avx2 => avx2::GEMM_TILE_ROWS,
            KernelLevel::Off => unreachable!("packing checked the level"),
        }
    }

    /// The log-softmax terms of each row of `x · wᵀ` (`x` = `[rows, in]`, f32), folded in as each
    /// tile finishes ([`Epilogue::Terms`]): the product, `rows x out` values that a head would
    /// write and read again, is never stored. A task is a group of panels by a block of rows,
    /// panel groups outermost, so each group is read from memory once and serves every row from
    /// L2. Rows holding a NaN have a NaN sum.
    pub fn softmax_terms(&self, x: &[f32]) -> Vec<SoftmaxTerms> {
        assert!(!self.gated && self.precision == Precision::F32, "softmax terms of a plain f32 weight");
        let rows = self.rows(x);
        let panels = self.out_features.div_ceil(PANEL);
        let groups = panels.div_ceil(TERMS_GROUP_PANELS);
        // Each (group, row) cell is written by one task.
        let mut partial = vec![SoftmaxTerms::EMPTY; groups * rows];
        let cells = SharedTerms(partial.as_mut_ptr());
        let tasks: Vec<(usize, usize)> =
            (0..groups).flat_map(|group| (0..rows).step_by(TERMS_TASK_ROWS).map(move |row| (group, row))).collect();
        tasks.into_par_iter().for_each(|(group, start)| {
            let end = (start + TERMS_TASK_ROWS).min(rows);
            let mut lanes = vec![TermLanes::EMPTY; end - start];
            let lanes_at = lanes.as_mut_ptr();
            for panel in group * TERMS_GROUP_PANELS..((group + 1) * TERMS_GROUP_PANELS).min(panels) {
                // SAFETY: the tile at `tile` folds rows `tile..tile + tile_rows` of this task's
                // `lanes`, and writes nothing to `c`.
                self.run_panel(as_bits(x), self.in_features, start..end, panel, 0, |tile| {
                    (std::ptr::null_mut(), Epilogue::Terms(LanesAt(unsafe { lanes_at.add(tile - start) })))
                });
            }
            for (row, lanes) in (start..end).zip(&lanes) {
                // SAFETY: `group * rows + row` is inside `partial`, and no other task writes it.
                unsafe { *cells.at(group * rows + row) = lanes.total() };
            }
        });
        (0..rows)
            .into_par_iter()
            .map(|row| (0..groups).map(|g| partial[g * rows + row]).fold(SoftmaxTerms::EMPTY, SoftmaxTerms::merge))
            .collect()
    }

    /// Column `column` of `x_row · wᵀ` (f32), summed as the tiles sum it (one fused multiply-add
    /// per input, in order, from zero), so it equals that value of [`matmul`](Self::matmul) bit
    /// for bit: a target's logit beside [`softmax_terms`](Self::softmax_terms).
    pub fn column_product(&self, x_row: &[f32], column: usize) -> f32 {
        assert!(!self.gated && self.precision == Precision::F32, "a column of a plain f32 weight");
        assert!(column < self.out_features && x_row.len() == self.in_features, "column {column} of the product");
        let steps = self.in_features;
        let lines = &self.lines[column / PANEL * steps * 2..][..steps * 2];
        let (half, lane) = (column % PANEL / 16, column % 16);
        let weights = lines.chunks_exact(2).map(|pair| f32::from_bits(pair[half].0[lane]));
        // `mul_add` rounds once, as the kernels' FMA does; compiled without the FMA feature it
        // calls libm's software `fmaf`.
        #[inline(always)]
        fn chain(x_row: &[f32], weights: impl Iterator<Item = f32>) -> f32 {
            x_row.iter().zip(weights).fold(0.0f32, |sum, (&x, w)| x.mul_add(w, sum))
        }
        #[target_feature(enable = "fma")]
        fn with_fma(x_row: &[f32], weights: impl Iterator<Item = f32>) -> f32 {
            chain(x_row, weights)
        }
        if is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA (checked).
            return unsafe { with_fma(x_row, weights) };
        }
        chain(x_row, weights)
    }
}

/// [`PackedWeight::softmax_terms`]' cells, written from parallel tasks.
struct SharedTerms(*mut SoftmaxTerms);
// SAFETY: each task writes disjoint cells.
unsafe impl Sync for SharedTerms {}

impl SharedTerms {
    /// # Safety
    /// `offset` must lie inside the cells.
    unsafe fn at(&self, offset: usize) -> *mut SoftmaxTerms {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(offset) }
    }
}

/// f32 lanes of `level`'s vectors (the width gate and up columns pair by).
fn lanes(level: KernelLevel) -> usize {
    match level {
        KernelLevel::Avx512 => avx512::LANES,
        KernelLevel::Avx2 => avx2::LANES,
        KernelLevel::Off => unreachable!("no packed kernels at level off"),
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

/// What a micro-tile does with its sums (see the module docs).
#[derive(Clone, Copy)]
pub(super) enum Epilogue<'a> {
    /// `c = sums + bias`.
    Store(Option<&'a [f32]>),
    /// `c = c + (sums + bias)`.
    Accumulate(Option<&'a [f32]>),
    /// `c = silu(gate) · up`, each accumulator pair holding gate and up sums of `LANES` outputs.
    SwiGlu,
    /// Nothing written to `c`: each tile row's sums fold into its [`TermLanes`] (those of the
    /// tile's first row here, the next rows after it).
    Terms(LanesAt),
}

/// Where [`Epilogue::Terms`] folds: one task's own states, which its tiles alone touch.
#[derive(Clone, Copy)]
pub(super) struct LanesAt(*mut TermLanes);
// SAFETY: a task's states are folded by that task only (`PackedWeight::softmax_terms`).
unsafe impl Send for LanesAt {}
unsafe impl Sync for LanesAt {}

/// One micro-tile's operands: `a` rows start `a_stride` apart, `weights` is one panel, whose
/// first column is `first_column` of the weight.
pub(super) struct Block<'a> {
    pub(super) a: &'a [u32],
    pub(super) a_stride: usize,
    pub(super) weights: &'a [Line],
    pub(super) c: *mut f32,
    pub(super) c_stride: usize,
    pub(super) columns: usize,
    pub(super) first_column: usize,
    pub(super) epilogue: Epilogue<'a>,
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
    /// output as the epilogue says, keeping to this panel's valid columns.
    ///
    /// The sums go through a buffer first: an epilogue working on `acc` itself made the
    /// compiler keep the accumulators in memory (zeroed by a `memset` per tile, summed through
    /// loads and stores), and the matmul ran 10% slower.
    ///
    /// # Safety
    /// `V`'s instructions must be there; `c` must hold `ROWS` rows of this panel's columns.
    #[inline(always)]
    pub(super) unsafe fn store<V: Vector, const ROWS: usize>(&self, acc: &[[V; 2]; ROWS], sub: usize) {
        let mut buffer = [MaybeUninit::<f32>::uninit(); MAX_TILE_ROWS * 2 * MAX_LANES];
        let sums = buffer.as_mut_ptr().cast::<f32>();
        let width = 2 * V::LANES;
        for (r, [low, high]) in acc.iter().enumerate() {
            // SAFETY: the buffer holds `MAX_TILE_ROWS >= ROWS` rows of `2 MAX_LANES >= width`.
            unsafe {
                low.store(sums.add(r * width));
                high.store(sums.add(r * width + V::LANES));
            }
        }
        // SAFETY: `ROWS` rows of `width` sums were just written; the caller's contract.
        unsafe {
            match self.epilogue {
                Epilogue::SwiGlu => self.finish_swiglu::<V>(sums, ROWS, sub),
                Epilogue::Store(bias) => self.finish::<V>(sums, ROWS, sub, bias, false),
                Epilogue::Accumulate(bias) => self.finish::<V>(sums, ROWS, sub, bias, true),
                Epilogue::Terms(LanesAt(lanes)) => self.finish_terms::<V>(sums, ROWS, sub, lanes),
            }
        }
    }

    /// The store of `rows` rows of `2 V::LANES` sums (`sums`, row-major) with a bias and, if
    /// `accumulate`, added to the output.
    ///
    /// # Safety
    /// As for [`store`](Self::store).
    #[inline(always)]
    unsafe fn finish<V: Vector>(
        &self,
        sums: *const f32,
        rows: usize,
        sub: usize,
        bias: Option<&[f32]>,
        accumulate: bool,
    ) {
        let first = sub * 2 * V::LANES;
        for r in 0..rows {
            for half in 0..2 {
                let start = first + half * V::LANES;
                let count = self.columns.saturating_sub(start).min(V::LANES);
                // SAFETY: lanes up to `count` lie inside this panel's valid columns, and the
                // bias has one value per column of the weight.
                unsafe {
                    let sums = sums.add((r * 2 + half) * V::LANES);
                    let at = self.c.add(r * self.c_stride + start);
                    let bias = bias.map(|b| b.as_ptr().add(self.first_column + start));
                    if count == V::LANES {
                        let sums = V::load(sums);
                        let value = bias.map_or(sums, |b| sums.add(V::load(b)));
                        let value = if accumulate { V::load(at).add(value) } else { value };
                        value.store(at);
                    } else {
                        for i in 0..count {
                            let value = bias.map_or(*sums.add(i), |b| *sums.add(i) + *b.add(i));
                            *at.add(i) = if accumulate { *at.add(i) + value } else { value };
                        }
                    }
                }
            }
        }
    }

    /// The fold of [`Epilogue::Terms`]: each row's sums at this panel's valid columns, in order.
    ///
    /// # Safety
    /// As for [`store`](Self::store), with `lanes` holding `rows` states instead of `c` rows.
    #[inline(always)]
    unsafe fn finish_terms<V: Vector>(&self, sums: *const f32, rows: usize, sub: usize, lanes: *mut TermLanes) {
        let (width, start) = (2 * V::LANES, sub * 2 * V::LANES);
        let count = self.columns.saturating_sub(start).min(width);
        for r in 0..rows {
            // SAFETY: row `r` holds `width >= count` sums; the caller's contract for `lanes`.
            unsafe {
                let values = std::slice::from_raw_parts(sums.add(r * width), count);
                (*lanes.add(r)).fold(values, (self.first_column + start) as u32);
            }
        }
    }

    /// The store of [`Epilogue::SwiGlu`]: `V::LANES` outputs per row from each row's gate sums
    /// (its first `V::LANES`) and up sums (the next), at output column `sub * V::LANES` of the
    /// panel's.
    ///
    /// # Safety
    /// As for [`store`](Self::store); the panel holds whole gate and up pairs (`pack_gated`).
    #[inline(always)]
    unsafe fn finish_swiglu<V: Vector>(&self, sums: *const f32, rows: usize, sub: usize) {
        for r in 0..rows {
            // SAFETY: row `r` holds `2 V::LANES` sums; the output row has room for `V::LANES`.
            unsafe {
                let (gates, ups) = (sums.add(r * 2 * V::LANES), sums.add((r * 2 + 1) * V::LANES));
                let at = self.c.add(r * self.c_stride + sub * V::LANES);
                for i in 0..V::LANES {
                    *at.add(i) = swiglu(*gates.add(i), *ups.add(i));
                }
            }
        }
    }
}

/// The widest [`Vector`] of any level.
const MAX_LANES: usize = 16;
/// The most rows of any level's micro-tile.
const MAX_TILE_ROWS: usize = 12;

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

    /// The levels and precisions this CPU runs (skipped ones are named).
    fn kernels_here() -> Vec<(KernelLevel, Precision)> {
        let mut here = Vec::new();
        for level in [KernelLevel::Avx512, KernelLevel::Avx2] {
            for precision in [Precision::F32, Precision::Bf16] {
                match precision.host_kernel_available_at(level) {
                    true => here.push((level, precision)),
                    false => eprintln!("skipping {precision} at {level}: no kernel there, or not on this CPU"),
                }
            }
        }
        here
    }

    /// How far a kernel's value may lie from the f64 sum of terms of `magnitude`: f32 sums of
    /// `inp + 1` rounded terms err by at most (inp + 1) 2^-24 of their magnitudes; bf16 inputs
    /// carry 8 significant bits, relative error 2^-8 per product at worst.
    fn tolerance(precision: Precision, inp: usize, magnitude: f64) -> f64 {
        match precision {
            Precision::F32 => (inp + 1) as f64 * f32::EPSILON as f64 / 2.0 * magnitude + 1e-6,
            Precision::Bf16 => magnitude / 128.0 + 1e-6,
        }
    }

    /// Shapes whose rows and columns are no multiple of any tile (6, 12 rows; 16, 32 columns)
    /// or task (48 rows, 64 columns), as `(rows, out, in)`.
    const ODD_SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (5, 17, 3),
        (7, 9, 5),
        (13, 33, 7),
        (100, 70, 64),
        (25, 32, 129),
        (97, 47, 31),
        (200, 96, 576),
        (61, 130, 40),
    ];

    /// Every level this CPU runs, at every precision it allows there, against f64 sums: stored
    /// with a bias, and added to what the output held (the residual epilogue).
    #[test]
    fn matches_a_plain_matmul_at_odd_shapes_at_every_level() {
        let here = kernels_here();
        for &(level, precision) in &here {
            for (rows, out, inp) in ODD_SHAPES {
                let (x, w, bias) = (values(rows * inp, 1), values(out * inp, 2), values(out, 3));
                let packed = PackedWeight::pack(&w, out, inp, precision, level);
                let stored = packed.matmul(&x, TokenRows::All, Some(&bias));
                let residual = values(rows * out, 4);
                let mut summed = residual.clone();
                packed.matmul_add_to(&x, TokenRows::All, Some(&bias), &mut summed);
                let want = reference(&x, &w, &bias, out, inp);
                assert_eq!((stored.len(), summed.len()), (want.len(), want.len()));
                for (i, &(want, magnitude)) in want.iter().enumerate() {
                    let tolerance = tolerance(precision, inp, magnitude);
                    let error = (stored[i] as f64 - want).abs();
                    assert!(
                        error <= tolerance,
                        "{level} {precision} {rows}x{out}x{inp} at {i}: {} vs {want} (error {error:e} > {tolerance:e})",
                        stored[i]
                    );
                    // The residual is added to the stored value, in f32, as a separate add would.
                    assert_eq!(summed[i], residual[i] + stored[i], "{level} {precision} residual at {i}");
                }
            }
        }
        let names: Vec<String> = here.iter().map(|(level, precision)| format!("{level}-{precision}")).collect();
        eprintln!("packed gemm checked at: {}", names.join(", "));
    }

    /// `silu(x · gateᵀ) · (x · upᵀ)` from a gated packing, against the gating of f64 sums, at
    /// every level and precision here; widths that do not pair at a level are refused there.
    #[test]
    fn gated_product_is_the_swiglu_of_the_two_products() {
        let silu = |g: f64| g / (1.0 + (-g).exp());
        for (level, precision) in kernels_here() {
            for (rows, width, inp) in [(1, 16, 3), (13, 48, 7), (61, 64, 40), (100, 96, 576), (7, 8, 5)] {
                if !PackedWeight::can_gate(width, level) {
                    assert!(!width.is_multiple_of(lanes(level)), "{width} pairs at {level}");
                    continue;
                }
                let (x, gate, up) = (values(rows * inp, 1), values(width * inp, 2), values(width * inp, 5));
                let got = PackedWeight::pack_gated(&gate, &up, inp, precision, level).matmul_swiglu(&x, TokenRows::All);
                let zero = vec![0f32; width];
                let (gates, ups) = (reference(&x, &gate, &zero, width, inp), reference(&x, &up, &zero, width, inp));
                assert_eq!(got.len(), rows * width);
                for (i, (&(g, g_magnitude), &(u, u_magnitude))) in gates.iter().zip(&ups).enumerate() {
                    // silu's slope stays within 1.1: errors in g and u carry over at most so.
                    let tolerance = 1.1 * u.abs() * tolerance(precision, inp, g_magnitude)
                        + silu(g).abs() * tolerance(precision, inp, u_magnitude)
                        + 1e-5 * (silu(g) * u).abs()
                        + 1e-6;
                    let error = (got[i] as f64 - silu(g) * u).abs();
                    assert!(error <= tolerance, "{level} {precision} {rows}x{width}x{inp} at {i}: error {error:e}");
                }
            }
        }
    }

    /// A gated weight multiplies only through the gated product, whose output is half as wide.
    #[test]
    #[should_panic(expected = "multiplies through matmul_swiglu")]
    fn a_gated_weight_refuses_the_plain_product() {
        let level = KernelLevel::cpu();
        if level == KernelLevel::Off {
            panic!("a gated weight multiplies through matmul_swiglu (no kernels on this CPU)");
        }
        let lanes = lanes(level);
        let gated = PackedWeight::pack_gated(&vec![0.5; lanes * 3], &vec![0.5; lanes * 3], 3, Precision::F32, level);
        assert_eq!(gated.out_features(), lanes);
        gated.matmul(&[1.0; 3], TokenRows::All, None);
    }

    /// A right-padded batch's products at its token rows only: those rows bit for bit as the
    /// whole product has them (each row's sums do not depend on the others), padding rows of a
    /// new output zero, and of a residual untouched; at every level and precision here, for the
    /// stored, the residual and the gated product, with sequences shorter than a tile, longer
    /// than a task, empty and full.
    #[test]
    fn padded_batches_compute_only_their_token_rows() {
        let (seq, lengths) = (61, [5usize, 61, 0, 50, 13]);
        let rows = seq * lengths.len();
        let tokens = TokenRows::Padded { seq, lengths: &lengths };
        let is_token = |row: usize| row % seq < lengths[row / seq];
        for (level, precision) in kernels_here() {
            let (out, inp) = (2 * lanes(level) + 3, 40);
            let (x, w, bias) = (values(rows * inp, 1), values(out * inp, 2), values(out, 3));
            let packed = PackedWeight::pack(&w, out, inp, precision, level);
            let whole = packed.matmul(&x, TokenRows::All, Some(&bias));
            let padded = packed.matmul(&x, tokens, Some(&bias));
            let residual = values(rows * out, 4);
            let mut summed = residual.clone();
            packed.matmul_add_to(&x, tokens, Some(&bias), &mut summed);
            for (i, ((&whole, &padded), (&summed, &residual))) in
                whole.iter().zip(&padded).zip(summed.iter().zip(&residual)).enumerate()
            {
                let (want, want_sum) = if is_token(i / out) { (whole, residual + whole) } else { (0.0, residual) };
                assert_eq!((padded, summed), (want, want_sum), "{level} {precision} at row {}", i / out);
            }
            let width = 2 * lanes(level);
            let gated =
                PackedWeight::pack_gated(&values(width * inp, 5), &values(width * inp, 6), inp, precision, level);
            let (whole, padded) = (gated.matmul_swiglu(&x, TokenRows::All), gated.matmul_swiglu(&x, tokens));
            for (i, (&whole, &padded)) in whole.iter().zip(&padded).enumerate() {
                assert_eq!(padded, if is_token(i / width) { whole } else { 0.0 }, "{level} {precision} gated");
            }
        }
    }

    /// The folded log-softmax terms against the stored product's, at every level here (f32),
    /// at shapes that end mid-tile, mid-panel and mid-group, and past one task's rows: the
    /// largest value bit for bit, the first of tied maxima (two equal weight rows), the sum to
    /// float rounding; a NaN row has a NaN sum. Each column product is the stored value exactly.
    #[test]
    fn softmax_terms_match_the_stored_product() {
        for (level, _) in kernels_here().into_iter().filter(|&(_, p)| p == Precision::F32) {
            for (rows, out, inp) in [(1, 1, 1), (13, 33, 7), (97, 1003, 64), (200, 257, 40), (5, 4096, 576)] {
                let (mut x, mut w) = (values(rows * inp, 1), values(out * inp, 2));
                let tied = out / 2;
                w.copy_within(0..inp, tied * inp);
                x[(rows / 2) * inp] = f32::NAN;
                let packed = PackedWeight::pack(&w, out, inp, Precision::F32, level);
                let product = packed.matmul(&x, TokenRows::All, None);
                let terms = packed.softmax_terms(&x);
                for (row, (values, terms)) in product.chunks(out).zip(&terms).enumerate() {
                    let at = format!("{level} {rows}x{out}x{inp} row {row}");
                    if row == rows / 2 {
                        assert!(terms.sum.is_nan() && terms.first_largest(out) == out, "{at}");
                        continue;
                    }
                    let largest = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let first = values.iter().position(|&v| v == largest).unwrap();
                    let sum: f64 = values.iter().map(|&v| ((v - largest) as f64).exp()).sum();
                    assert_eq!((terms.largest, terms.first_largest(out)), (largest, first), "{at}");
                    assert!((terms.sum as f64 - sum).abs() <= 1e-5 * sum, "{at}: {} vs {sum}", terms.sum);
                    let x_row = &x[row * inp..][..inp];
                    for column in [0, tied, out - 1, first] {
                        assert_eq!(packed.column_product(x_row, column), values[column], "{at} column {column}");
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "cannot run the packed bf16 kernel")]
    fn bf16_is_refused_at_avx2() {
        PackedWeight::pack(&[0.0; 4], 2, 2, Precision::Bf16, KernelLevel::Avx2);
    }
}
