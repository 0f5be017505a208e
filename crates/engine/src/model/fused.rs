//! Fused element-wise steps of the decoder layer: RMS norm, rotary embedding and SwiGLU gating.
//!
//! On host backends (flex), a tensor's buffer is taken without a copy (`into_data` of a uniquely
//! owned contiguous tensor moves it), updated in one parallel pass, and handed back; chained burn
//! ops would make several passes with an allocation each, which profiles showed costing as much
//! as the matmuls. On other backends the same math runs as burn ops.

use std::any::TypeId;
use std::mem::MaybeUninit;

use burn::prelude::*;
use burn::tensor::activation::silu;
use rayon::prelude::*;

use super::kernels::{self, KernelLevel};
use super::position::{Positions, alibi_score};

/// Rows per rayon task: large enough that scheduling costs little next to the work.
const ROWS_PER_TASK: usize = 16;

/// Whether `B` keeps tensors in host memory with zero-copy `into_data`/`from_data`.
pub fn on_host<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    if TypeId::of::<B>() == TypeId::of::<burn::backend::Flex>() {
        return true;
    }
    let _ = TypeId::of::<B>;
    false
}

fn host_values<B: Backend, const D: usize>(x: Tensor<B, D>) -> TensorData {
    x.into_data().convert::<f32>()
}

/// Calls `read` with `x`'s values and returns `x`: on host backends its own buffer, lent without
/// a copy (`into_data` of a clone would copy it); elsewhere a download.
pub fn read_values<B: Backend, const D: usize>(x: Tensor<B, D>, read: impl FnOnce(&[f32])) -> Tensor<B, D> {
    if !on_host::<B>() {
        read(host_values(x.clone()).as_slice::<f32>().expect("f32 data"));
        return x;
    }
    let device = x.device();
    let data = host_values(x);
    read(data.as_slice::<f32>().expect("f32 data"));
    Tensor::from_data(data, &device)
}

fn slice_mut(data: &mut TensorData) -> &mut [f32] {
    data.as_mut_slice::<f32>().expect("f32 data")
}

/// `x` itself and `x / rms(x) * weight` over its last dimension (f32, as Hugging Face computes
/// it): the layers keep `x` for the residual connection. On host backends `x`'s buffer is read
/// in place and the loop is compiled for `simd`.
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: &Tensor<B, 1>,
    eps: f64,
    simd: Simd,
) -> (Tensor<B, D>, Tensor<B, D>) {
    if !on_host::<B>() {
        let variance = x.clone().powi_scalar(2).mean_dim(D - 1);
        // A division, not `recip()`: burn-ndarray's vectorized reciprocal is an approximation
        // (relative error ~5e-5, seen as logit errors up to 4e-3 on SmolLM2).
        let normed = x.clone() / (variance + eps).sqrt();
        return (x, normed * weight.clone().unsqueeze::<D>());
    }
    let device = x.device();
    let weight = host_values(weight.clone());
    let weight = weight.as_slice::<f32>().expect("f32 data");
    let data = host_values(x);
    let values = data.as_slice::<f32>().expect("f32 data");
    let width = weight.len();
    // Written where it lies, not zeroed first: the zero fill was a serial pass of its own.
    let mut normed = Vec::with_capacity(values.len());
    normed.spare_capacity_mut()[..values.len()]
        .par_chunks_mut(width * ROWS_PER_TASK)
        .zip(values.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(out, rows)| norm_rows(simd, out, rows, weight, eps as f32));
    // SAFETY: the chunks cover the first `values.len()` values, and `norm_rows` writes each.
    unsafe { normed.set_len(values.len()) };
    let normed = TensorData::new(normed, data.shape.clone());
    (Tensor::from_data(data, &device), Tensor::from_data(normed, &device))
}

/// `silu(gate) * up` for `x` = `[batch, seq, 2 * width]` holding gate then up in each row;
/// the result is `[batch, seq, width]`. On host backends the loop is compiled for `simd`.
pub fn silu_mul_halves<B: Backend>(x: Tensor<B, 3>, simd: Simd) -> Tensor<B, 3> {
    let [batch, seq, double] = x.dims();
    let width = double / 2;
    if !on_host::<B>() {
        return silu(x.clone().narrow(2, 0, width)) * x.narrow(2, width, width);
    }
    let device = x.device();
    let data = host_values(x);
    let input = data.as_slice::<f32>().expect("f32 data");
    let mut out = vec![0f32; batch * seq * width];
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(input.par_chunks(double * ROWS_PER_TASK))
        .for_each(|(out, input)| silu_mul_rows(simd, out, input, width));
    Tensor::from_data(TensorData::new(out, [batch, seq, width]), &device)
}

/// The SIMD the element-wise host loops ([`widest_simd!`]) are compiled for: that of the kernel
/// level ([`KernelLevel::simd`]), so that `AIRLLM_HOST_KERNELS` caps these loops too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2Fma,
    Portable,
}

impl Simd {
    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "avx512",
            Simd::Avx2Fma => "avx2-fma",
            Simd::Portable => "portable",
        }
    }
}

/// Defines `$name(simd, ..)`, which runs `$portable` compiled for `simd` (AVX-512, AVX2 with FMA,
/// or baseline) where the CPU has it: the crate targets baseline x86-64, whose 4-wide SSE would
/// halve these loops' speed. `$portable` must be `#[inline(always)]` so that each copy gets its
/// own code generation.
macro_rules! widest_simd {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $portable:ident) => {
        $(#[$doc])*
        fn $name(simd: Simd, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                match simd {
                    // SAFETY: the CPU supports AVX-512F (checked).
                    Simd::Avx512 if std::is_x86_feature_detected!("avx512f") => return unsafe { avx512($($arg),*) },
                    // SAFETY: the CPU supports AVX2 and FMA (checked).
                    Simd::Avx2Fma | Simd::Avx512
                        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") =>
                    {
                        return unsafe { avx2($($arg),*) }
                    }
                    _ => {}
                }
            }
            let _ = simd;
            $portable($($arg),*)
        }
    };
}

widest_simd! {
    /// RMS-normalizes each `weight.len()`-wide row of `rows` into `out`.
    fn norm_rows(out: &mut [MaybeUninit<f32>], rows: &[f32], weight: &[f32], eps: f32) => norm_rows_portable
}

#[inline(always)]
fn norm_rows_portable(out: &mut [MaybeUninit<f32>], rows: &[f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for (out, row) in out.chunks_exact_mut(width).zip(rows.chunks_exact(width)) {
        let mean_square = dot(row, row) / width as f32;
        let scale = 1.0 / (mean_square + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            o.write(w * (v * scale));
        }
    }
}

widest_simd! {
    /// `silu(gate) * up` for rows of `input` holding gate then up, `width` each.
    fn silu_mul_rows(out: &mut [f32], input: &[f32], width: usize) => silu_mul_rows_portable
}

#[inline(always)]
fn silu_mul_rows_portable(out: &mut [f32], input: &[f32], width: usize) {
    for (out, row) in out.chunks_exact_mut(width).zip(input.chunks_exact(2 * width)) {
        let (gate, up) = row.split_at(width);
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = swiglu(*g, *u);
        }
    }
}

/// `silu(gate) · up`, as every path of the MLP computes it (the packed matmul's gated epilogue
/// too, so that fusing changes no bit).
#[inline(always)]
pub(crate) fn swiglu(gate: f32, up: f32) -> f32 {
    gate / (1.0 + exp(-gate)) * up
}

widest_simd! {
    /// Each `vocab`-wide row's largest value, and the log of its sum of `exp(value - largest)`.
    fn softmax_terms_rows(rows: &[f32], vocab: usize, largest: &mut [f32], log_sum: &mut [f32]) =>
        softmax_terms_rows_portable
}

#[inline(always)]
fn softmax_terms_rows_portable(rows: &[f32], vocab: usize, largest: &mut [f32], log_sum: &mut [f32]) {
    for ((row, largest), log_sum) in rows.chunks_exact(vocab).zip(largest).zip(log_sum) {
        let top = max(row);
        let mut lanes = [0f32; 8];
        let chunks = row.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - top)).sum();
        for chunk in chunks {
            for i in 0..8 {
                lanes[i] += exp(chunk[i] - top);
            }
        }
        *largest = top;
        *log_sum = (lanes.iter().sum::<f32>() + tail).ln();
    }
}

/// The log-softmax terms of each `vocab`-wide row of `logits`: its largest value `m` and
/// `ln Σ exp(x - m)`, so that a value's log-probability is `(x - m) - ln Σ`. Rows run in
/// parallel, each loop compiled for `simd`. A NaN anywhere in a row makes its sum NaN.
pub fn softmax_terms(logits: &[f32], vocab: usize, simd: Simd) -> (Vec<f32>, Vec<f32>) {
    let rows = logits.len() / vocab;
    let (mut largest, mut log_sum) = (vec![0f32; rows], vec![0f32; rows]);
    logits
        .par_chunks(vocab * ROWS_PER_TASK)
        .zip(largest.par_chunks_mut(ROWS_PER_TASK))
        .zip(log_sum.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|((rows, largest), log_sum)| softmax_terms_rows(simd, rows, vocab, largest, log_sum));
    (largest, log_sum)
}

/// Head layout of a decoder layer's attention.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Each query sees at most this many keys, itself included (Mistral); `None`: all earlier ones.
    pub window: Option<usize>,
}

/// Causal self-attention straight from the stacked q/k/v projection `[batch, seq, (heads + 2
/// kv_heads) * head_dim]` (rows right-padded to `seq`, sequence `i` `lengths[i]` long): q and k
/// prepared in place ([`Positions::prepare_qk`]: rotary embedding, logn), then for every query
/// row and head, softmax over the keys it may see (plus ALiBi's offsets) and the weighted sum of
/// values, written as `[batch, seq, heads * head_dim]`. Grouped-query heads index their shared
/// key/value head instead of copying it, and only the causal half is computed; rows run in
/// parallel. At `kernels`' level the tiled kernel (`kernels::attend_tiled`) runs where the
/// CPU, the head size and the model (no ALiBi) suit it; else rows go one at a time, compiled for
/// the level's SIMD.
pub fn attention_host<B: Backend>(
    qkv: Tensor<B, 3>,
    shape: Heads,
    positions: &Positions<B>,
    lengths: &[usize],
    kernels: KernelLevel,
) -> Tensor<B, 3> {
    let [batch, seq, width] = qkv.dims();
    let Heads { heads, kv_heads, head_dim, .. } = shape;
    let device = qkv.device();
    let mut data = host_values(qkv);
    let angles: Vec<_> = lengths.iter().map(|&length| positions.angles(length, seq)).collect();
    let rotated = heads + kv_heads;
    slice_mut(&mut data).par_chunks_mut(width).enumerate().for_each(|(row, values)| {
        let angles = angles[row / seq].as_deref();
        positions.prepare_qk(angles, &mut values[..rotated * head_dim], heads, row % seq);
    });
    let qkv = data.as_slice::<f32>().expect("f32 data");
    let keys_t = transposed_keys(qkv, batch, seq, width, shape);
    let alibi = positions.alibi_slopes();
    if alibi.is_none()
        && let Some(out) = kernels::attend_tiled(kernels, qkv, &keys_t, batch, seq, shape)
    {
        return Tensor::from_data(TensorData::new(out, [batch, seq, heads * head_dim]), &device);
    }
    let simd = kernels.simd();
    let out_width = heads * head_dim;
    let mut out = vec![0f32; batch * seq * out_width];
    let layout = RowLayout { seq, width, shape, alibi };
    out.par_chunks_mut(out_width).enumerate().for_each_init(Vec::new, |scores, (row, out)| {
        attend_row(simd, qkv, &keys_t, layout, row, out, scores);
    });
    Tensor::from_data(TensorData::new(out, [batch, seq, out_width]), &device)
}

/// Where a row's q, k and v sit in the stacked projection, and ALiBi's slopes.
#[derive(Clone, Copy)]
struct RowLayout<'a> {
    seq: usize,
    width: usize,
    shape: Heads,
    alibi: Option<&'a [f32]>,
}

widest_simd! {
    /// One query row, every head.
    fn attend_row(qkv: &[f32], keys_t: &[f32], layout: RowLayout<'_>, row: usize, out: &mut [f32], scores: &mut Vec<f32>)
        => attend_row_portable
}

#[inline(always)]
fn attend_row_portable(
    qkv: &[f32],
    keys_t: &[f32],
    layout: RowLayout<'_>,
    row: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let RowLayout { seq, width, shape: Heads { heads, kv_heads, head_dim, window }, alibi } = layout;
    let (sequence, query) = (row / seq, row % seq);
    let first_key = window.map_or(0, |w| (query + 1).saturating_sub(w));
    let count = query + 1 - first_key;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let group = heads / kv_heads;
    let stride = seq + KEY_PADDING;
    // Plain loops, no closures: a closure is compiled apart from this function and would lose
    // its AVX2 code generation.
    for (head, out) in out.chunks_exact_mut(head_dim).enumerate() {
        let kv_head = head / group;
        let q = &qkv[row * width + head * head_dim..][..head_dim];
        // Scores eight keys at a time: a sum over dimensions of q[d] times a run of K^T's row d,
        // kept in one SIMD register until all dimensions are in.
        scores.clear();
        scores.resize(count, 0.0);
        let key_rows = (sequence * kv_heads + kv_head) * head_dim * stride + first_key;
        for (chunk, scores) in scores.chunks_mut(8).enumerate() {
            let mut lanes = [0f32; 8];
            for (d, &q) in q.iter().enumerate() {
                let weight = q * scale;
                // Rows of K^T have eight spare zeros at the end, so the last chunk reads whole too.
                let at = key_rows + d * stride + chunk * 8;
                let run: &[f32; 8] = keys_t[at..at + 8].try_into().expect("eight keys");
                for (lane, key) in lanes.iter_mut().zip(run) {
                    *lane += weight * key;
                }
            }
            scores.copy_from_slice(&lanes[..scores.len()]);
        }
        if let Some(slopes) = alibi {
            add_alibi(scores, slopes[head], query, first_key);
        }
        let largest = max(scores);
        for score in scores.iter_mut() {
            *score = exp(*score - largest);
        }
        let total = sum(scores);
        let v_at = (heads + kv_heads + kv_head) * head_dim;
        let first_row = sequence * seq + first_key;
        for (i, &score) in scores.iter().enumerate() {
            let v = &qkv[(first_row + i) * width + v_at..][..head_dim];
            let weight = score / total;
            for (o, v) in out.iter_mut().zip(v) {
                *o += weight * v;
            }
        }
    }
}

/// Adds ALiBi's offsets to the scores of keys `first_key..` of query `query`.
#[inline(always)]
pub(crate) fn add_alibi(scores: &mut [f32], slope: f32, query: usize, first_key: usize) {
    for (i, score) in scores.iter_mut().enumerate() {
        *score += alibi_score(slope, query, first_key + i);
    }
}

/// Zeros after each row of K^T, so that scoring reads whole chunks of keys (eight here, 32 in
/// the tiled kernels).
pub(crate) const KEY_PADDING: usize = 32;

/// Keys as `[batch, kv_heads, head_dim, seq + KEY_PADDING]`: for one query, a row of this holds one
/// dimension of every key, so scoring all keys is a run of contiguous multiply-adds.
pub(crate) fn transposed_keys(qkv: &[f32], batch: usize, seq: usize, width: usize, shape: Heads) -> Vec<f32> {
    let Heads { heads, kv_heads, head_dim, .. } = shape;
    let stride = seq + KEY_PADDING;
    let len = batch * kv_heads * head_dim * stride;
    // Written in parallel without a zero fill first: the fill ran on the calling thread alone.
    let mut keys_t: Vec<f32> = Vec::with_capacity(len);
    let blocks = keys_t.spare_capacity_mut().par_chunks_mut(kv_heads * head_dim * stride);
    blocks.enumerate().for_each(|(sequence, block)| {
        let keys =
            |position: usize| &qkv[(sequence * seq + position) * width + heads * head_dim..][..kv_heads * head_dim];
        for (i, row) in block.chunks_exact_mut(stride).enumerate() {
            let (values, padding) = row.split_at_mut(seq);
            values.iter_mut().enumerate().for_each(|(position, value)| _ = value.write(keys(position)[i]));
            padding.iter_mut().for_each(|value| _ = value.write(0.0));
        }
    });
    // SAFETY: every block wrote every value of each of its rows, and the blocks cover `len`.
    unsafe { keys_t.set_len(len) };
    keys_t
}

/// Sum with eight partial sums, so the loop vectorizes.
#[inline(always)]
pub(crate) fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for i in 0..8 {
            lanes[i] += chunk[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Largest value, with eight partial maxima so the loop vectorizes (`f32::max` folded one by one
/// is a serial chain).
#[inline(always)]
pub(crate) fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for i in 0..8 {
            lanes[i] = if chunk[i] > lanes[i] { chunk[i] } else { lanes[i] };
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// Dot product with eight partial sums, so the loop vectorizes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `e^x` to within a few ulps, branch-free so that loops over it vectorize: 2^n · p(r) with
/// n = round(x / ln 2) and a degree-6 polynomial on |r| ≤ ln 2 / 2.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from the bits of `shifted`, whose last mantissa bits hold n (|n| < 2^22): integer
    // arithmetic that vectorizes, where `n as i32` (saturating, NaN to 0) compiled to a scalar
    // conversion and compares per value, and kept the loops around it scalar.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f32;
        for i in -8000..8000 {
            let x = i as f32 * 0.01;
            let rel = (super::exp(x) - x.exp()).abs() / x.exp();
            worst = worst.max(rel);
        }
        assert!(worst < 1e-6, "relative error {worst}");
    }
}
