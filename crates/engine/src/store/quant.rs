//! Block-wise int8 and int4 compression of a layer store's linear weights.
//!
//! Its purpose is fewer bytes read from disk per layer: a store is streamed once per wave, so the
//! read is what compression buys back. Values are dequantized to f32 right after the read (in the
//! prefetch thread, before the upload to the device), so the forward pass never sees them.
//!
//! # Formats
//!
//! A 2-D weight `[rows, cols]` is cut into blocks of [`BLOCK`] (32) consecutive values along each
//! row; `cols` must be a multiple of 32 (a tensor whose rows are not stays uncompressed). Scales
//! and minima are f16 when [`quantize`] makes them, as in GGUF's Q8_0/Q4_0/Q4_1 (2 bytes per 32
//! values); blocks handed over exactly from a GGUF Q4_K (see `source::gguf::convert`) have f32
//! ones, and take 16 + 4 + 4 bytes per 32 values (0.1875 of f32; the Q4_K itself takes 18).
//!
//! - **int8** (symmetric): `scale = max|x| / 127` rounded *up* to an f16, `q = round(x / scale)`
//!   as i8 in `-127..=127`, `x' = q * scale`. Per 32 values: 32 + 2 bytes (0.2656 of f32).
//! - **int4** (asymmetric): `min = min(x)` rounded *down* to an f16, `scale = (max(x) - min) / 15`
//!   rounded *up* to an f16, `q = round((x - min) / scale)` in `0..=15`, `x' = q * scale + min`.
//!   Per 32 values: 16 + 2 + 2 bytes (0.1563 of f32). Two values per byte, in ggml's Q4 order:
//!   byte `k` of a block holds element `k` in its low nibble and element `k + 16` in its high
//!   nibble, so GGUF Q4_0/Q4_1 blocks convert without touching the nibbles.
//!
//! The scale and minimum are rounded to f16 *before* the values are quantized with them, so the
//! codes are those of the stored scale, and the rounding directions keep every value inside the
//! code range (no clamping): `|x - x'| <= scale / 2` holds for the stored `scale`, up to f32
//! rounding of the arithmetic. A block of zeros (or, for int4, a constant block whose value is
//! an f16) gets scale 0 and decodes exactly.
//!
//! A tensor whose values are not all finite, or whose scale or minimum does not fit in an f16
//! (`max|x|` above about 8.3e6 for int8, `|min x|` above 65504 for int4), is not quantized:
//! [`quantize`] says why and the split stores the tensor uncompressed.
//!
//! Decoding computes `q * scale + min` in f32 with one rounding (no fused multiply-add; `q * scale`
//! is exact for every scale a GGUF block hands over, so a fused one would round the same).
//!
//! # In a store file
//!
//! A compressed tensor `NAME` is stored in the same safetensors file as three (int8: two)
//! tensors, and `NAME` itself is absent:
//!
//! | tensor       | int8                       | int4                       |
//! |--------------|----------------------------|----------------------------|
//! | `NAME.q`     | I8 `[rows, cols]`          | U8 `[rows, cols / 2]`      |
//! | `NAME.scale` | F16/F32 `[rows, cols / 32]`| F16/F32 `[rows, cols / 32]`|
//! | `NAME.min`   | -                          | F16/F32 `[rows, cols / 32]`|
//!
//! The scheme is told by the dtype of `NAME.q`, tensor by tensor, and the original shape is
//! recovered from it (int4 packs the last dimension by two). A store's scheme is what the split was
//! asked for, but an int8 store may hold int4 tensors: a source whose blocks convert exactly to
//! int4 and not to int8 (GGUF Q4_0, Q4_1, Q4_K) keeps them, since requantizing them at 8 bits
//! would only add rounding (see `store::split`). `.scale` and `.min` are F16 where every value of
//! the part is exactly an f16 (always, for what [`quantize`] makes), else F32; the reader refuses
//! any other dtype. File checksums cover these bytes like any others.
//!
//! # What is compressed
//!
//! Only the 2-D linear weights of each layer (q/k/v/o and gate/up/down projections). Norms and
//! biases keep the store dtype. The embedding and the head keep full precision unless the split
//! asks for them to be int8 too (`SplitOptions::quantize_embed_head`).
//!
//! # Known limitations
//!
//! Dequantization runs on the host (rayon over rows), also with GPU backends: the f32 values are
//! what is uploaded, so host-to-device traffic and device memory are those of an f32 layer. Only
//! the disk read shrinks.

use half::f16;
use rayon::prelude::*;

/// Values per block along a row.
pub const BLOCK: usize = 32;

/// A block-wise quantization scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantScheme {
    Int8,
    Int4,
}

impl QuantScheme {
    /// Bytes of `q` per row of `cols` values.
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            QuantScheme::Int8 => cols,
            QuantScheme::Int4 => cols / 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantScheme::Int8 => "int8",
            QuantScheme::Int4 => "int4",
        }
    }
}

/// A 2-D tensor quantized block-wise (see the module documentation for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantTensor {
    pub scheme: QuantScheme,
    /// The original `[rows, cols]`.
    pub shape: Vec<usize>,
    /// int8: one i8 (as its byte) per value; int4: two values per byte, ggml nibble order.
    pub q: Vec<u8>,
    /// One per block, row-major `[rows, cols / BLOCK]`.
    pub scale: Vec<f32>,
    /// int4 only (empty for int8): one per block.
    pub min: Vec<f32>,
}

/// Whether a tensor of this shape can be quantized: 2-D with rows a multiple of [`BLOCK`].
pub fn quantizable(shape: &[usize]) -> bool {
    shape.len() == 2 && shape[1] > 0 && shape[1].is_multiple_of(BLOCK)
}

impl QuantTensor {
    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    pub fn cols(&self) -> usize {
        self.shape[1]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Checks that the parts have the sizes the shape implies.
    pub fn check(&self) -> Result<(), String> {
        if !quantizable(&self.shape) {
            return Err(format!("shape {:?} is not 2-D with rows a multiple of {BLOCK}", self.shape));
        }
        let blocks = self.numel() / BLOCK;
        let q_len = self.rows() * self.scheme.row_bytes(self.cols());
        let min_len = if self.scheme == QuantScheme::Int4 { blocks } else { 0 };
        if self.q.len() != q_len || self.scale.len() != blocks || self.min.len() != min_len {
            return Err(format!(
                "{} parts have {} / {} / {} elements, shape {:?} needs {q_len} / {blocks} / {min_len}",
                self.scheme.name(),
                self.q.len(),
                self.scale.len(),
                self.min.len(),
                self.shape
            ));
        }
        Ok(())
    }

    /// Bytes the parts take (what a store file holds, without safetensors headers).
    pub fn stored_bytes(&self) -> usize {
        let part = |v: &[f32]| v.len() * if as_f16s(v).is_some() { 2 } else { 4 };
        self.q.len() + part(&self.scale) + part(&self.min)
    }
}

/// `values` as f16s, where every one is exactly an f16 (sign of zero included), so that a store
/// can keep a part in two bytes a value; `None` where one is not.
pub fn as_f16s(values: &[f32]) -> Option<Vec<f16>> {
    values
        .iter()
        .map(|&v| {
            let h = f16::from_f32(v);
            (h.to_f32().to_bits() == v.to_bits()).then_some(h)
        })
        .collect()
}

/// The smallest f16 `>= v`, for finite `v >= 0`; `None` if that is beyond the f16 range.
fn f16_at_least(v: f32) -> Option<f16> {
    let h = f16::from_f32(v);
    let h = if h.to_f32() < v { next_up(h) } else { h };
    h.is_finite().then_some(h)
}

/// The largest f16 `<= v`, for finite `v`; `None` if that is beyond the f16 range.
fn f16_at_most(v: f32) -> Option<f16> {
    let h = f16::from_f32(v);
    let h = if h.to_f32() > v { next_down(h) } else { h };
    h.is_finite().then_some(h)
}

/// The next f16 towards +infinity (of a finite, non-NaN `h`).
fn next_up(h: f16) -> f16 {
    match h.to_bits() {
        0x0000 | 0x8000 => f16::from_bits(0x0001),
        b if b & 0x8000 == 0 => f16::from_bits(b + 1),
        b => f16::from_bits(b - 1),
    }
}

/// The next f16 towards -infinity (of a finite, non-NaN `h`).
fn next_down(h: f16) -> f16 {
    match h.to_bits() {
        0x0000 | 0x8000 => f16::from_bits(0x8001),
        b if b & 0x8000 == 0 => f16::from_bits(b - 1),
        b => f16::from_bits(b + 1),
    }
}

/// Why a block could not be quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BlockError {
    NotFinite,
    ScaleOverflow(f32),
    MinOverflow(f32),
}

/// Quantizes `values` (row-major, `shape` = `[rows, cols]`, `cols` a multiple of [`BLOCK`]).
///
/// Fails, saying why, if a value is not finite or a block's scale or minimum does not fit in an
/// f16; the caller keeps such a tensor uncompressed.
///
/// # Panics
/// If the shape is not [`quantizable`] or does not match `values`.
pub fn quantize(values: &[f32], shape: &[usize], scheme: QuantScheme) -> Result<QuantTensor, String> {
    assert!(quantizable(shape), "quantize: shape {shape:?} is not 2-D with rows a multiple of {BLOCK}");
    assert_eq!(values.len(), shape[0] * shape[1], "quantize: {} values for shape {shape:?}", values.len());
    let blocks = values.len() / BLOCK;
    let block_bytes = scheme.row_bytes(BLOCK);
    let mut q = vec![0u8; blocks * block_bytes];
    let mut scale = vec![0f32; blocks];
    let mut min = vec![0f32; if scheme == QuantScheme::Int4 { blocks } else { 0 }];
    let failed = match scheme {
        QuantScheme::Int8 => (values.par_chunks(BLOCK), q.par_chunks_mut(block_bytes), scale.par_iter_mut())
            .into_par_iter()
            .enumerate()
            .map(|(b, (x, q, s))| quantize_int8_block(x, q).map(|v| *s = v.to_f32()).map_err(|e| (b, e)))
            .find_first(Result::is_err),
        QuantScheme::Int4 => {
            (values.par_chunks(BLOCK), q.par_chunks_mut(block_bytes), scale.par_iter_mut(), min.par_iter_mut())
                .into_par_iter()
                .enumerate()
                .map(|(b, (x, q, s, m))| {
                    quantize_int4_block(x, q).map(|(v, w)| (*s, *m) = (v.to_f32(), w.to_f32())).map_err(|e| (b, e))
                })
                .find_first(Result::is_err)
        }
    };
    if let Some(Err((b, error))) = failed {
        let (row, col) = (b * BLOCK / shape[1], b * BLOCK % shape[1]);
        let what = match error {
            BlockError::NotFinite => "holds a value that is not finite".to_string(),
            BlockError::ScaleOverflow(s) => format!("needs a scale of {s:e}, beyond f16"),
            BlockError::MinOverflow(m) => format!("has a minimum of {m:e}, beyond f16"),
        };
        return Err(format!("{} block at row {row}, columns {col}..{}: {what}", scheme.name(), col + BLOCK));
    }
    Ok(QuantTensor { scheme, shape: shape.to_vec(), q, scale, min })
}

fn quantize_int8_block(x: &[f32], q: &mut [u8]) -> Result<f16, BlockError> {
    if !x.iter().all(|v| v.is_finite()) {
        return Err(BlockError::NotFinite);
    }
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        q.fill(0);
        return Ok(f16::ZERO);
    }
    // Rounded up (to at least the smallest f16 subnormal, also where `amax / 127` underflows in
    // f32), so that |x| / scale <= 127 up to f32 rounding and no code is clamped by more.
    let exact = amax / 127.0;
    let scale = f16_at_least(exact.max(f32::MIN_POSITIVE)).ok_or(BlockError::ScaleOverflow(exact))?;
    let s = scale.to_f32();
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v / s).round().clamp(-127.0, 127.0) as i8) as u8;
    }
    Ok(scale)
}

fn quantize_int4_block(x: &[f32], q: &mut [u8]) -> Result<(f16, f16), BlockError> {
    if !x.iter().all(|v| v.is_finite()) {
        return Err(BlockError::NotFinite);
    }
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Rounded down, so that x - min >= 0; the scale rounded up, so that (x - min) / scale <= 15.
    let min = f16_at_most(lo).ok_or(BlockError::MinOverflow(lo))?;
    let m = min.to_f32();
    let exact = (hi - m) / 15.0;
    let scale = if hi == m {
        f16::ZERO
    } else {
        f16_at_least(exact.max(f32::MIN_POSITIVE)).ok_or(BlockError::ScaleOverflow(exact))?
    };
    let s = scale.to_f32();
    let code = |v: f32| -> u8 { if s == 0.0 { 0 } else { ((v - m) / s).round().clamp(0.0, 15.0) as u8 } };
    let half = BLOCK / 2;
    for k in 0..half {
        q[k] = code(x[k]) | (code(x[k + half]) << 4);
    }
    Ok((scale, min))
}

/// Dequantizes to f32, row-major `[rows, cols]`, in parallel over blocks.
pub fn dequantize(tensor: &QuantTensor) -> Vec<f32> {
    let mut out = vec![0f32; tensor.numel()];
    // Several blocks per task so that scheduling costs nothing next to the work.
    const TASK_BLOCKS: usize = 256;
    let block_bytes = tensor.scheme.row_bytes(BLOCK);
    let tasks = out
        .par_chunks_mut(BLOCK * TASK_BLOCKS)
        .zip(tensor.q.par_chunks(block_bytes * TASK_BLOCKS))
        .zip(tensor.scale.par_chunks(TASK_BLOCKS));
    match tensor.scheme {
        QuantScheme::Int8 => tasks.for_each(|((out, q), scale)| {
            for ((out, q), &s) in out.chunks_exact_mut(BLOCK).zip(q.chunks_exact(BLOCK)).zip(scale) {
                for (o, &q) in out.iter_mut().zip(q) {
                    *o = (q as i8) as f32 * s;
                }
            }
        }),
        QuantScheme::Int4 => tasks.zip(tensor.min.par_chunks(TASK_BLOCKS)).for_each(|(((out, q), scale), min)| {
            let half = BLOCK / 2;
            for (((out, q), &s), &m) in out.chunks_exact_mut(BLOCK).zip(q.chunks_exact(half)).zip(scale).zip(min) {
                for (k, &byte) in q.iter().enumerate() {
                    out[k] = (byte & 0x0f) as f32 * s + m;
                    out[k + half] = (byte >> 4) as f32 * s + m;
                }
            }
        }),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the tests need no dependency.
    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    /// Quantizes, checks the stored scale (and minimum) are the tightest f16s on the right side of
    /// the exact ones, and that every value decodes within half a step of the *stored* scale.
    fn check_bound(values: &[f32], shape: &[usize], scheme: QuantScheme) {
        let quant = quantize(values, shape, scheme).unwrap();
        quant.check().unwrap();
        // What quantize makes is f16 scales and minima: exactly representable, stored in 2 bytes.
        let (scales, mins) = (as_f16s(&quant.scale).unwrap(), as_f16s(&quant.min).unwrap());
        let back = dequantize(&quant);
        assert_eq!(back.len(), values.len());
        for (b, (x, y)) in values.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let scale = quant.scale[b];
            let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (exact, zero, mut magnitude) = match scheme {
                QuantScheme::Int8 => (amax / 127.0, amax == 0.0, amax),
                QuantScheme::Int4 => {
                    let min = quant.min[b];
                    assert!(min <= lo && next_up(mins[b]).to_f32() > lo, "block {b}: min {min} for {lo}");
                    ((hi - min) / 15.0, hi == min, amax.max(min.abs()))
                }
            };
            if zero {
                assert_eq!(scale, 0.0, "{scheme:?} block {b}");
            } else {
                let floor = f32::MIN_POSITIVE.max(exact);
                assert!(scale >= floor && next_down(scales[b]).to_f32() < floor, "block {b}: {scale} for {exact}");
            }
            magnitude = magnitude.max(scale * 15.0);
            // Half a step of the stored scale, plus f32 rounding of the division and the sum.
            let bound = scale / 2.0 + magnitude * 4.0 * f32::EPSILON;
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert!((x - y).abs() <= bound, "{scheme:?} block {b} value {i}: {x} -> {y}, scale {scale}");
            }
        }
    }

    /// `big` scales row 8: up to the largest that the scheme's f16 scale and minimum hold.
    fn test_data(big: f32) -> (Vec<f32>, Vec<usize>) {
        let (rows, cols) = (24, 96);
        let mut values = random(rows * cols, 7);
        // Row 0: zeros; row 1: a constant; row 2: one large outlier; row 3: tiny values.
        values[..cols].fill(0.0);
        values[cols..2 * cols].fill(0.375);
        values[2 * cols + 5] = 40.0;
        for v in &mut values[3 * cols..4 * cols] {
            *v *= 1e-30;
        }
        // Row 4: blocks of mixed sign magnitudes.
        for (i, v) in values[4 * cols..5 * cols].iter_mut().enumerate() {
            *v *= 10f32.powi((i / BLOCK) as i32 - 1);
        }
        // Row 5: scales among the f16 subnormals, where rounding to f16 moves them the most.
        for v in &mut values[5 * cols..6 * cols] {
            *v *= 1e-5;
        }
        // Row 6: a large offset (int4's minimum rounds down by up to 0.5); row 7: a constant that
        // is not an f16; row 8: `big`.
        for v in &mut values[6 * cols..7 * cols] {
            *v += 1000.0;
        }
        values[7 * cols..8 * cols].fill(0.1);
        for v in &mut values[8 * cols..9 * cols] {
            *v *= big;
        }
        (values, vec![rows, cols])
    }

    #[test]
    fn int8_round_trip_within_half_a_step() {
        // Scales up to 8.3e6 / 127, near the largest f16 (65504).
        let (values, shape) = test_data(8.3e6);
        check_bound(&values, &shape, QuantScheme::Int8);
    }

    #[test]
    fn int4_round_trip_within_half_a_step() {
        // Minima down to -65000, near the most negative f16 (-65504).
        let (values, shape) = test_data(6.5e4);
        check_bound(&values, &shape, QuantScheme::Int4);
    }

    #[test]
    fn zeros_and_f16_constants_decode_exactly() {
        let zeros = vec![0f32; 64];
        for scheme in [QuantScheme::Int8, QuantScheme::Int4] {
            assert_eq!(dequantize(&quantize(&zeros, &[2, 32], scheme).unwrap()), zeros);
        }
        let constant = vec![-1.25f32; 64];
        let quant = quantize(&constant, &[1, 64], QuantScheme::Int4).unwrap();
        assert_eq!(quant.scale, [0.0; 2]);
        assert_eq!(dequantize(&quant), constant);
        // Symmetric int8 decodes a constant as -127 * scale, the scale rounded up to an f16: within
        // one f16 ulp (2^-10 relative) of it, much less than half a step.
        let back = dequantize(&quantize(&constant, &[1, 64], QuantScheme::Int8).unwrap());
        assert!(back.iter().all(|v| *v <= -1.25 && (v + 1.25).abs() <= 1.25 / 1024.0), "{back:?}");
    }

    #[test]
    fn values_beyond_f16_scales_or_not_finite_are_refused() {
        let mut values = random(2 * 64, 5);
        // The largest int8 scale is 65504: max |x| = 65504 * 127 still quantizes, above does not.
        values[70] = 65504.0 * 127.0;
        assert_eq!(quantize(&values, &[2, 64], QuantScheme::Int8).unwrap().scale[2], f16::MAX.to_f32());
        values[70] = 8.4e6;
        let err = quantize(&values, &[2, 64], QuantScheme::Int8).unwrap_err();
        assert!(err.contains("int8 block at row 1, columns 0..32") && err.contains("scale"), "{err}");
        // int4: a range over 15 * 65504, or a minimum below -65504.
        let err = quantize(&values, &[2, 64], QuantScheme::Int4).unwrap_err();
        assert!(err.contains("int4 block at row 1, columns 0..32") && err.contains("scale"), "{err}");
        values[70] = -70000.0;
        let err = quantize(&values, &[2, 64], QuantScheme::Int4).unwrap_err();
        assert!(err.contains("minimum of -7e4"), "{err}");
        for bad in [f32::NAN, f32::INFINITY] {
            values[70] = bad;
            for scheme in [QuantScheme::Int8, QuantScheme::Int4] {
                let err = quantize(&values, &[2, 64], scheme).unwrap_err();
                assert!(err.contains("not finite"), "{err}");
            }
        }
    }

    #[test]
    fn f16_rounding_directions() {
        for v in [0.0f32, 1e-30, 5.9e-8, 6.0e-8, 1.0, 0.1, 1000.3, 65504.0, -0.1, -1e-30, -65504.0] {
            let (up, down) = (f16_at_least(v.abs()), f16_at_most(v));
            let up = up.unwrap();
            assert!(up.to_f32() >= v.abs() && next_down(up).to_f32() < v.abs() || v == 0.0, "{v}: up {up}");
            let down = down.unwrap();
            assert!(down.to_f32() <= v && next_up(down).to_f32() > v, "{v}: down {down}");
        }
        assert_eq!(f16_at_least(65504.5), None);
        assert_eq!(f16_at_most(-65504.5), None);
        assert_eq!(next_up(f16::from_bits(0x8001)).to_bits(), 0x8000);
        assert_eq!(next_down(f16::from_bits(0x0001)).to_bits(), 0x0000);
    }

    #[test]
    fn int4_packs_in_ggml_nibble_order() {
        let values: Vec<f32> = (0..32).map(|i| i as f32 / 31.0 * 15.0).collect();
        let quant = quantize(&values, &[1, 32], QuantScheme::Int4).unwrap();
        assert_eq!((quant.scale[0], quant.min[0]), (1.0, 0.0));
        let expected: Vec<u8> = (0..16u8)
            .map(|k| {
                let lo = (values[k as usize]).round() as u8;
                let hi = (values[k as usize + 16]).round() as u8;
                lo | (hi << 4)
            })
            .collect();
        assert_eq!(quant.q, expected);
        assert_eq!(quant.q.len(), 16);
    }

    #[test]
    fn sizes_and_shape_checks() {
        let values = random(4 * 64, 3);
        let int8 = quantize(&values, &[4, 64], QuantScheme::Int8).unwrap();
        let int4 = quantize(&values, &[4, 64], QuantScheme::Int4).unwrap();
        assert_eq!(int8.stored_bytes(), 256 + 8 * 2);
        assert_eq!(int4.stored_bytes(), 128 + 8 * 4);
        // A part with one value that is not an f16 takes four bytes a value.
        let mut wide = int4.clone();
        wide.min[3] = 1.0 + f32::EPSILON;
        assert_eq!(wide.stored_bytes(), 128 + 8 * 2 + 8 * 4);
        assert_eq!(as_f16s(&[0.5, -0.0, 65504.0]).unwrap()[1].to_bits(), 0x8000);
        assert!(as_f16s(&[65520.0]).is_none() && as_f16s(&[1e-8]).is_none());
        assert!(!quantizable(&[4, 48]) && !quantizable(&[64]) && quantizable(&[3, 64]));
        let mut broken = int4.clone();
        broken.min.pop();
        assert!(broken.check().is_err());
    }
}
