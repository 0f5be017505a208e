//! ggml's k-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K: 256-element blocks cut into sub-blocks of 16
//! (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K) elements, each with a small integer scale (and minimum)
//! under the block's f16 `d` (and `dmin`), dequantized as ggml's reference `dequantize_row_q*_K`.
//!
//! Why the results are bit-identical to ggml's and gguf-py's: a sub-block's scale `d·sc` and
//! minimum `dmin·m` are an f16 (11 significant bits) times an integer of at most 8 bits, exact in
//! f32, and so is the scale times a code of up to 5 bits. Each value is then one rounding of
//! `scale·q − min`, as in ggml's `d1 * q - m1`. Only Q6_K's `d·sc·q` (up to 25 bits) rounds in
//! the product; it is grouped `(d·sc)·q` as ggml and gguf-py group it.
//!
//! Layouts (ggml-common.h's `block_q*_K`): 2-bit fields (Q2_K and Q3_K codes, Q6_K's high bits)
//! keep each 128-element half in 32 bytes, see `crumb`; 4-bit fields keep each 64 elements in
//! 32 bytes, the first 32 in the low nibbles, see `nibbles`.

use super::dequant::f16_at;

/// Elements per k-quant block.
pub const QK_K: usize = 256;

/// Where element `e` of a block sits in a 64-byte array of 2-bit fields: its byte and the shift of
/// its two bits. Element `32j + l` of a 128-element half is in byte `l` of the half's 32, bits
/// `2j` and `2j + 1`.
fn crumb(e: usize) -> (usize, usize) {
    (32 * (e / 128) + e % 32, 2 * (e % 128 / 32))
}

/// The 4-bit fields of the 32-element sub-block `j`: sub-blocks `2i` and `2i + 1` share the 32
/// bytes `qs[32i..32i + 32]`, the even one in the low nibbles.
fn nibbles(qs: &[u8], j: usize) -> impl Iterator<Item = u8> + '_ {
    let shift = 4 * (j % 2);
    qs[32 * (j / 2)..][..32].iter().map(move |q| (q >> shift) & 0x0f)
}

/// `block_q2_K { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }`: 16-element sub-blocks, `scales[s]`
/// holding sub-block `s`'s scale (low nibble) and minimum (high nibble); x = d·sc·q − dmin·m, q the
/// 2-bit code.
pub fn dequant_q2_k(block: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&block[..16], &block[16..80]);
    let (d, dmin) = (f16_at(block, 80), f16_at(block, 82));
    for (s, out) in out.chunks_exact_mut(16).enumerate() {
        let scale = d * (scales[s] & 0x0f) as f32;
        let min = dmin * (scales[s] >> 4) as f32;
        for (i, o) in out.iter_mut().enumerate() {
            let (byte, shift) = crumb(16 * s + i);
            *o = scale * ((qs[byte] >> shift) & 3) as f32 - min;
        }
    }
}

/// `block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }`: 16-element sub-blocks with
/// 6-bit scales biased by 32 (`q3_k_scale`); x = d·(sc − 32)·q, where q is the 2-bit code minus
/// 4 if the element's bit in `hmask` (bit `e / 32` of `hmask[e % 32]`) is clear.
pub fn dequant_q3_k(block: &[u8], out: &mut [f32]) {
    let (hmask, qs, scales) = (&block[..32], &block[32..96], &block[96..108]);
    let d = f16_at(block, 108);
    for (s, out) in out.chunks_exact_mut(16).enumerate() {
        let scale = d * (q3_k_scale(scales, s) - 32) as f32;
        for (i, o) in out.iter_mut().enumerate() {
            let e = 16 * s + i;
            let (byte, shift) = crumb(e);
            let offset = if (hmask[e % 32] >> (e / 32)) & 1 == 0 { 4 } else { 0 };
            *o = scale * (((qs[byte] >> shift) & 3) as i32 - offset) as f32;
        }
    }
}

/// Q3_K's scale of sub-block `s` (0..16), six bits packed in 12 bytes: the low four are nibble
/// `s / 8` of byte `s % 8`, the high two are bits `2·(s / 4)` and up of byte `8 + s % 4`.
fn q3_k_scale(scales: &[u8], s: usize) -> i32 {
    let low = (scales[s % 8] >> (4 * (s / 8))) & 0x0f;
    let high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    i32::from(low | (high << 4))
}

/// Sub-block `j` (0..8) of a Q4_K or Q5_K block (`f16 d; f16 dmin; u8 scales[12]; ...`): its scale
/// `d·sc` and the minimum `dmin·m` it subtracts, both exact in f32. The 6-bit `sc` and `m` are
/// packed as ggml's `get_scale_min_k4` reads them: for sub-blocks 0..4 in the low six bits of bytes
/// `j` and `j + 4`; for 4..8 in the nibbles of byte `j + 4`, their top two bits in the high bits of
/// bytes `j − 4` and `j`.
pub(super) fn k4_scale_min(block: &[u8], j: usize) -> (f32, f32) {
    let s = &block[4..16];
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    };
    (f16_at(block, 0) * sc as f32, f16_at(block, 2) * m as f32)
}

/// The 32 four-bit codes of sub-block `j` of a Q4_K block.
pub(super) fn q4_k_codes(block: &[u8], j: usize) -> impl Iterator<Item = u8> + '_ {
    nibbles(&block[16..], j)
}

/// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }`: 32-element sub-blocks
/// (`k4_scale_min`); x = d·sc·q − dmin·m, q the 4-bit code.
pub fn dequant_q4_k(block: &[u8], out: &mut [f32]) {
    for (j, out) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = k4_scale_min(block, j);
        for (o, q) in out.iter_mut().zip(q4_k_codes(block, j)) {
            *o = scale * q as f32 - min;
        }
    }
}

/// `block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`: Q4_K with a fifth bit
/// per code, for element `l` of sub-block `j` bit `j` of `qh[l]`.
pub fn dequant_q5_k(block: &[u8], out: &mut [f32]) {
    let (qh, qs) = (&block[16..48], &block[48..]);
    for (j, out) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = k4_scale_min(block, j);
        for ((o, low), high) in out.iter_mut().zip(nibbles(qs, j)).zip(qh) {
            let q = low | (((high >> j) & 1) << 4);
            *o = scale * q as f32 - min;
        }
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }`: 16-element sub-blocks with
/// signed 8-bit scales; x = d·sc·(q − 32), q six bits: the low four in `ql` (each 128-element
/// half in 64 bytes, its first 64 elements in the low nibbles), the high two in `qh`'s 2-bit fields.
pub fn dequant_q6_k(block: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    for (s, out) in out.chunks_exact_mut(16).enumerate() {
        let scale = d * (scales[s] as i8) as f32;
        for (i, o) in out.iter_mut().enumerate() {
            let e = 16 * s + i;
            let low = (ql[64 * (e / 128) + e % 64] >> (4 * (e % 128 / 64))) & 0x0f;
            let (byte, shift) = crumb(e);
            let high = (qh[byte] >> shift) & 3;
            *o = scale * (i32::from(low | (high << 4)) - 32) as f32;
        }
    }
}
