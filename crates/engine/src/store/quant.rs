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
//! and minima are f32 (4 bytes per 32 values; f16 would save 2 bytes per block, see below).
//!
//! - **int8** (symmetric): `scale = max|x| / 127`, `q = round(x / scale)` as i8 in `-127..=127`,
//!   `x' = q * scale`. Per 32 values: 32 + 4 bytes (0.281 of f32). `|x - x'| <= scale / 2`.
//! - **int4** (asymmetric): `min = min(x)`, `scale = (max(x) - min) / 15`,
//!   `q = round((x - min) / scale)` in `0..=15`, `x' = q * scale + min`. Per 32 values:
//!   16 + 4 + 4 bytes (0.1875 of f32). `|x - x'| <= scale / 2`. Two values per byte, in ggml's
//!   Q4 order: byte `k` of a block holds element `k` in its low nibble and element `k + 16` in its
//!   high nibble, so GGUF Q4_0/Q4_1 blocks convert without touching the nibbles.
//!
//! A block of zeros (or a constant block for int4) gets scale 0 and decodes exactly.
//!
//! # In a store file
//!
//! A compressed tensor `NAME` is stored in the same safetensors file as three (int8: two)
//! tensors, and `NAME` itself is absent:
//!
//! | tensor       | int8                 | int4                       |
//! |--------------|----------------------|----------------------------|
//! | `NAME.q`     | I8 `[rows, cols]`    | U8 `[rows, cols / 2]`      |
//! | `NAME.scale` | F32 `[rows, cols/32]`| F32 `[rows, cols / 32]`    |
//! | `NAME.min`   | -                    | F32 `[rows, cols / 32]`    |
//!
//! The scheme is told by the dtype of `NAME.q` and the original shape is recovered from it (int4
//! packs the last dimension by two). File checksums cover these bytes like any others.
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
//! the disk read shrinks. f32 scales cost 1/16 (int8) and 1/8 (int4) more bytes than f16 scales
//! would; int4 at 32-value blocks cannot reach 1/7 of f32 with an f32 minimum and scale.

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
        self.q.len() + 4 * (self.scale.len() + self.min.len())
    }
}

/// Quantizes `values` (row-major, `shape` = `[rows, cols]`, `cols` a multiple of [`BLOCK`]).
///
/// # Panics
/// If the shape is not [`quantizable`] or does not match `values`.
pub fn quantize(values: &[f32], shape: &[usize], scheme: QuantScheme) -> QuantTensor {
    assert!(quantizable(shape), "quantize: shape {shape:?} is not 2-D with rows a multiple of {BLOCK}");
    assert_eq!(values.len(), shape[0] * shape[1], "quantize: {} values for shape {shape:?}", values.len());
    let blocks = values.len() / BLOCK;
    let block_bytes = scheme.row_bytes(BLOCK);
    let mut q = vec![0u8; blocks * block_bytes];
    let mut scale = vec![0f32; blocks];
    let mut min = vec![0f32; if scheme == QuantScheme::Int4 { blocks } else { 0 }];
    match scheme {
        QuantScheme::Int8 => {
            (values.par_chunks(BLOCK), q.par_chunks_mut(block_bytes), scale.par_iter_mut()).into_par_iter().for_each(
                |(x, q, s)| {
                    *s = quantize_int8_block(x, q);
                },
            );
        }
        QuantScheme::Int4 => {
            (values.par_chunks(BLOCK), q.par_chunks_mut(block_bytes), scale.par_iter_mut(), min.par_iter_mut())
                .into_par_iter()
                .for_each(|(x, q, s, m)| {
                    (*s, *m) = quantize_int4_block(x, q);
                });
        }
    }
    QuantTensor { scheme, shape: shape.to_vec(), q, scale, min }
}

fn quantize_int8_block(x: &[f32], q: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    if !scale.is_normal() {
        // Zeros (or values so small that the scale is subnormal) decode to 0.
        q.fill(0);
        return 0.0;
    }
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v / scale).round().clamp(-127.0, 127.0) as i8) as u8;
    }
    scale
}

fn quantize_int4_block(x: &[f32], q: &mut [u8]) -> (f32, f32) {
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scale = (hi - lo) / 15.0;
    let code = |v: f32| -> u8 {
        if scale == 0.0 || !scale.is_normal() { 0 } else { ((v - lo) / scale).round().clamp(0.0, 15.0) as u8 }
    };
    let half = BLOCK / 2;
    for k in 0..half {
        q[k] = code(x[k]) | (code(x[k + half]) << 4);
    }
    let scale = if scale.is_normal() { scale } else { 0.0 };
    (scale, lo)
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

    fn check_bound(values: &[f32], shape: &[usize], scheme: QuantScheme) {
        let quant = quantize(values, shape, scheme);
        quant.check().unwrap();
        let back = dequantize(&quant);
        assert_eq!(back.len(), values.len());
        for (b, (x, y)) in values.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let scale = quant.scale[b];
            // Half a step, plus f32 rounding of the division and the product.
            let bound = scale / 2.0 + x.iter().fold(0f32, |m, v| m.max(v.abs())) * 4.0 * f32::EPSILON;
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert!((x - y).abs() <= bound, "{scheme:?} block {b} value {i}: {x} -> {y}, scale {scale}");
            }
        }
    }

    fn test_data() -> (Vec<f32>, Vec<usize>) {
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
        (values, vec![rows, cols])
    }

    #[test]
    fn int8_round_trip_within_half_a_step() {
        let (values, shape) = test_data();
        check_bound(&values, &shape, QuantScheme::Int8);
    }

    #[test]
    fn int4_round_trip_within_half_a_step() {
        let (values, shape) = test_data();
        check_bound(&values, &shape, QuantScheme::Int4);
    }

    #[test]
    fn zeros_and_constants_decode_exactly() {
        let zeros = vec![0f32; 64];
        for scheme in [QuantScheme::Int8, QuantScheme::Int4] {
            assert_eq!(dequantize(&quantize(&zeros, &[2, 32], scheme)), zeros);
        }
        let constant = vec![-1.25f32; 64];
        assert_eq!(dequantize(&quantize(&constant, &[1, 64], QuantScheme::Int4)), constant);
        // Symmetric int8 decodes a constant to within f32 rounding of q * scale.
        let back = dequantize(&quantize(&constant, &[1, 64], QuantScheme::Int8));
        assert!(back.iter().all(|v| (v + 1.25).abs() <= 1.25 * f32::EPSILON), "{back:?}");
    }

    #[test]
    fn int4_packs_in_ggml_nibble_order() {
        let values: Vec<f32> = (0..32).map(|i| i as f32 / 31.0 * 15.0).collect();
        let quant = quantize(&values, &[1, 32], QuantScheme::Int4);
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
        let int8 = quantize(&values, &[4, 64], QuantScheme::Int8);
        let int4 = quantize(&values, &[4, 64], QuantScheme::Int4);
        assert_eq!(int8.stored_bytes(), 256 + 8 * 4);
        assert_eq!(int4.stored_bytes(), 128 + 8 * 8);
        assert!(!quantizable(&[4, 48]) && !quantizable(&[64]) && quantizable(&[3, 64]));
        let mut broken = int4.clone();
        broken.min.pop();
        assert!(broken.check().is_err());
    }
}
