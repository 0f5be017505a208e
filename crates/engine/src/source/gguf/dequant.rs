//! ggml tensor types: their block sizes, and dequantization to f32 for the types the engine reads.
//!
//! Dequantization follows ggml's reference `dequantize_row_*` (and gguf-py's numpy port) exactly:
//! the f16 scales are widened to f32 first and every product is taken in f32, so results are
//! bit-identical to llama.cpp's CPU reference path. The 32-element formats are here, the 256-element
//! k-quants in [`super::kquants`]; `tests/fixtures/make_kquant_blocks.py` records gguf-py's values
//! for blocks of every Q5 and k-quant type, and the engine's tests compare them bit for bit.

use half::{bf16, f16};
use rayon::prelude::*;

use super::kquants;

/// Elements per block of the 32-element quantization formats.
const QK: usize = 32;
/// Elements per rayon task: big enough that scheduling costs nothing next to the work.
const TASK_ELEMS: usize = 8192;

/// A ggml tensor type (the `type` field of a GGUF tensor info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    /// Elements per block (1 for plain float/int types).
    pub block_elems: usize,
    /// Bytes per block.
    pub block_bytes: usize,
}

/// ggml's type table (ggml.h `enum ggml_type`, gguf-py `GGML_QUANT_SIZES`); ids 4, 5 and 31..33
/// were removed from ggml and are absent here.
const TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q5_0: u32 = 6;
    pub const Q5_1: u32 = 7;
    pub const Q8_0: u32 = 8;
    pub const Q2_K: u32 = 10;
    pub const Q3_K: u32 = 11;
    pub const Q4_K: u32 = 12;
    pub const Q5_K: u32 = 13;
    pub const Q6_K: u32 = 14;
    pub const BF16: u32 = 30;

    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|t| t.0 == id).map(|&(id, name, block_elems, block_bytes)| Self {
            id,
            name,
            block_elems,
            block_bytes,
        })
    }

    /// Bytes taken by a tensor of this type with dimensions `dims` (innermost first).
    pub fn byte_size(&self, dims: &[u64]) -> Result<u64, String> {
        let numel = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or("element count overflows")?;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(self.block_elems as u64) {
            return Err(format!(
                "row length {row} is not a multiple of the {} block size {}",
                self.name, self.block_elems
            ));
        }
        (numel / self.block_elems as u64)
            .checked_mul(self.block_bytes as u64)
            .ok_or_else(|| "byte size overflows".into())
    }

    /// Whether [`dequantize`] reads this type.
    pub fn is_supported(&self) -> bool {
        block_decoder(self.id).is_some()
    }

    /// The names of the types [`dequantize`] reads, comma-separated, for error messages.
    pub fn supported_names() -> String {
        let supported = TYPES.iter().filter(|t| block_decoder(t.0).is_some());
        supported.map(|t| t.1).collect::<Vec<_>>().join(", ")
    }
}

/// Dequantizes one block of a type (one element for the plain types).
type BlockDecoder = fn(&[u8], &mut [f32]);

fn block_decoder(id: u32) -> Option<BlockDecoder> {
    Some(match id {
        GgmlType::F32 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, o| o[0] = f16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::BF16 => |b, o| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q8_0 => dequant_q8_0,
        GgmlType::Q4_0 => dequant_q4_0,
        GgmlType::Q4_1 => dequant_q4_1,
        GgmlType::Q5_0 => dequant_q5_0,
        GgmlType::Q5_1 => dequant_q5_1,
        GgmlType::Q2_K => kquants::dequant_q2_k,
        GgmlType::Q3_K => kquants::dequant_q3_k,
        GgmlType::Q4_K => kquants::dequant_q4_k,
        GgmlType::Q5_K => kquants::dequant_q5_k,
        GgmlType::Q6_K => kquants::dequant_q6_k,
        _ => return None,
    })
}

/// Dequantizes `data` (exactly the tensor's bytes) of type `ty` to f32.
/// Returns `None` for types the engine does not read (see [`GgmlType::is_supported`]).
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Option<Vec<f32>> {
    let block = block_decoder(ty.id)?;
    let blocks = data.len() / ty.block_bytes;
    let mut out = vec![0f32; blocks * ty.block_elems];
    let task_blocks = (TASK_ELEMS / ty.block_elems).max(1);
    let (task_elems, task_bytes) = (task_blocks * ty.block_elems, task_blocks * ty.block_bytes);
    out.par_chunks_mut(task_elems).zip(data.par_chunks(task_bytes)).for_each(|(out, data)| {
        for (o, b) in out.chunks_exact_mut(ty.block_elems).zip(data.chunks_exact(ty.block_bytes)) {
            block(b, o);
        }
    });
    Some(out)
}

/// The little-endian f16 at byte `at`, widened to f32 (exactly, as ggml's `GGML_FP16_TO_FP32`).
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `block_q8_0 { f16 d; i8 qs[32]; }`: x = d·q.
pub fn dequant_q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..2 + QK]) {
        *o = (q as i8) as f32 * d;
    }
}

/// `block_q4_0 { f16 d; u8 qs[16]; }`: low nibbles are elements 0..16, high nibbles 16..32;
/// x = d·(q − 8).
pub fn dequant_q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (j, &q) in block[2..2 + QK / 2].iter().enumerate() {
        out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        out[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1 { f16 d; f16 m; u8 qs[16]; }`: nibbles as in Q4_0; x = d·q + m.
pub fn dequant_q4_1(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    for (j, &q) in block[4..4 + QK / 2].iter().enumerate() {
        out[j] = (q & 0x0f) as f32 * d + m;
        out[j + QK / 2] = (q >> 4) as f32 * d + m;
    }
}

/// The 32 five-bit codes of a Q5_0/Q5_1 block: the low four bits are nibbles in Q4_0's order
/// (`qs[j]` holds elements `j` and `j + 16`), the fifth bit of element `j` is bit `j` of the
/// little-endian `qh`.
pub(super) fn q5_codes(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let high = |j: usize| (((qh >> j) & 1) << 4) as u8;
    let mut codes = [0u8; QK];
    for (j, &q) in qs[..QK / 2].iter().enumerate() {
        codes[j] = (q & 0x0f) | high(j);
        codes[j + QK / 2] = (q >> 4) | high(j + QK / 2);
    }
    codes
}

/// `block_q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }`: x = d·(q − 16), q the five-bit code.
pub fn dequant_q5_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, q) in out.iter_mut().zip(q5_codes(&block[2..6], &block[6..])) {
        *o = (q as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }`: x = d·q + m.
pub fn dequant_q5_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    for (o, q) in out.iter_mut().zip(q5_codes(&block[4..8], &block[8..])) {
        *o = q as f32 * d + m;
    }
}
