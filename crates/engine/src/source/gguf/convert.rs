//! GGUF blocks handed to a compressed layer store as they are, where that is exact: the store's
//! decode (`q·scale` for int8, `q·scale + min` for int4, see [`crate::store::quant`]) gives back
//! the f32 values [`super::dequant`] gives, so the store adds no rounding of its own.
//!
//! | GGUF | store | per 32 values: scale, min | exact because                                    |
//! |------|-------|---------------------------|--------------------------------------------------|
//! | Q8_0 | int8  | `d`                       | the same codes, the same product                 |
//! | Q5_0 | int8  | `d`                       | ggml's `(q − 16)·d`: `q − 16` is an int8 code    |
//! | Q4_0 | int4  | `d`, `−8d`                | `q·d` and `−8d` are exact, so their sum `(q − 8)·d` is |
//! | Q4_1 | int4  | `d`, `m`                  | ggml's `q·d + m` itself                          |
//! | Q4_K | int4  | `d·sc`, `−dmin·m`         | see below                                        |
//!
//! Q4_K: a 32-value sub-block's scale `d·sc` and minimum `dmin·m` are f16s times 6-bit integers,
//! exact in f32, and so is `q·(d·sc)`; `q·scale + (−dmin·m)` then makes the one rounding that
//! ggml's `d1·q − m1` makes (IEEE `a − b` is `a + (−b)`), so the values are bit-identical. Those
//! scales and minima are mostly not f16s: the store keeps them as F32.
//!
//! Every value is bit-identical to ggml's but one case: a Q4_0 block with `d = 0` decodes to `+0`
//! where ggml gives `−0` for codes below 8 (equal as numbers).
//!
//! No other pair converts exactly, and [`exact_blocks`] answers `None` for them: Q5_1 and Q5_K
//! have 32 levels (int4 has 16) and a minimum (int8 has none); Q2_K, Q3_K and Q6_K give every 16
//! values their own scale (the store has one per 32); and Q8_0/Q5_0 do not fit int4, nor Q4_x
//! int8's symmetric codes. The split quantizes those from their f32 values.

use super::dequant::{GgmlType, f16_at, q5_codes};
use super::kquants::{QK_K, k4_scale_min, q4_k_codes};
use crate::store::quant::{BLOCK, QuantScheme, QuantTensor, quantizable};

/// Appends one GGUF block's worth of store blocks (codes, scales and minima) to a tensor.
type BlockConverter = fn(&[u8], &mut QuantTensor);

/// `data` (the bytes of a tensor of type `ty` and row-major `shape`) as `scheme` blocks, where the
/// conversion is exact (see the module doc); `None` where it is not, or where the rows do not cut
/// into 32-value blocks. Scales and minima are not checked for being finite; the caller decides.
pub fn exact_blocks(ty: GgmlType, data: &[u8], shape: &[usize], scheme: QuantScheme) -> Option<QuantTensor> {
    let convert: BlockConverter = match (scheme, ty.id) {
        (QuantScheme::Int8, GgmlType::Q8_0) => q8_0,
        (QuantScheme::Int8, GgmlType::Q5_0) => q5_0,
        (QuantScheme::Int4, GgmlType::Q4_0) => q4_0,
        (QuantScheme::Int4, GgmlType::Q4_1) => q4_1,
        (QuantScheme::Int4, GgmlType::Q4_K) => q4_k,
        _ => return None,
    };
    if !quantizable(shape) {
        return None;
    }
    let blocks = shape.iter().product::<usize>() / BLOCK;
    let mut quant = QuantTensor {
        scheme,
        shape: shape.to_vec(),
        q: Vec::with_capacity(blocks * scheme.row_bytes(BLOCK)),
        scale: Vec::with_capacity(blocks),
        min: Vec::with_capacity(if scheme == QuantScheme::Int4 { blocks } else { 0 }),
    };
    for block in data.chunks_exact(ty.block_bytes) {
        convert(block, &mut quant);
    }
    Some(quant)
}

/// `block_q8_0 { f16 d; i8 qs[32]; }`.
fn q8_0(block: &[u8], quant: &mut QuantTensor) {
    quant.scale.push(f16_at(block, 0));
    quant.q.extend_from_slice(&block[2..2 + BLOCK]);
}

/// `block_q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }`: the five-bit codes less 16, as i8.
fn q5_0(block: &[u8], quant: &mut QuantTensor) {
    quant.scale.push(f16_at(block, 0));
    quant.q.extend(q5_codes(&block[2..6], &block[6..]).map(|q| (q as i8 - 16) as u8));
}

/// `block_q4_0 { f16 d; u8 qs[16]; }`: ggml's nibble order is the store's.
fn q4_0(block: &[u8], quant: &mut QuantTensor) {
    let d = f16_at(block, 0);
    quant.scale.push(d);
    quant.min.push(-8.0 * d);
    quant.q.extend_from_slice(&block[2..2 + BLOCK / 2]);
}

/// `block_q4_1 { f16 d; f16 m; u8 qs[16]; }`.
fn q4_1(block: &[u8], quant: &mut QuantTensor) {
    quant.scale.push(f16_at(block, 0));
    quant.min.push(f16_at(block, 2));
    quant.q.extend_from_slice(&block[4..4 + BLOCK / 2]);
}

/// `block_q4_K`: eight 32-value store blocks, the codes repacked from Q4_K's order (a sub-block's
/// 32 codes in the low or high nibbles of 32 bytes) into the store's (byte `k` holds codes `k`
/// and `k + 16`).
fn q4_k(block: &[u8], quant: &mut QuantTensor) {
    for j in 0..QK_K / BLOCK {
        let (scale, min) = k4_scale_min(block, j);
        quant.scale.push(scale);
        quant.min.push(-min);
        let mut codes = [0u8; BLOCK];
        codes.iter_mut().zip(q4_k_codes(block, j)).for_each(|(c, q)| *c = q);
        let (low, high) = codes.split_at(BLOCK / 2);
        quant.q.extend(low.iter().zip(high).map(|(l, h)| l | (h << 4)));
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::source::gguf::dequant::{dequant_q4_0, dequant_q4_1, dequantize};
    use crate::store::quant::dequantize as decode;

    /// Q4_0 converts for every f16 `d` (the minimum `−8d` is an f32, so none overflows): the store
    /// decodes each block to ggml's values, as numbers (see the module doc for `d = 0`).
    #[test]
    fn q4_0_converts_exactly_for_every_d() {
        let ty = GgmlType::from_id(GgmlType::Q4_0).unwrap();
        let codes: Vec<u8> = (0..16u8).map(|k| k | ((15 - k) << 4)).collect();
        let finite = (0..=u16::MAX).map(f16::from_bits).filter(|d| d.is_finite());
        let data: Vec<u8> = finite.flat_map(|d| d.to_le_bytes().into_iter().chain(codes.iter().copied())).collect();
        let rows = data.len() / ty.block_bytes;
        let quant = exact_blocks(ty, &data, &[rows, BLOCK], QuantScheme::Int4).unwrap();
        quant.check().unwrap();
        let (ours, ggml) = (decode(&quant), dequantize(ty, &data).unwrap());
        let differs = ours.iter().zip(&ggml).position(|(a, b)| a != b);
        assert!(differs.is_none(), "value {differs:?}");
    }

    /// Q4_1 and Q4_0 blocks copy their nibbles as they are; other pairs are refused.
    #[test]
    fn q4_blocks_keep_their_nibbles_and_other_pairs_are_refused() {
        let block: Vec<u8> = [f16::from_f32(0.5).to_le_bytes(), f16::from_f32(-3.0).to_le_bytes()]
            .concat()
            .into_iter()
            .chain(0..16u8)
            .collect();
        let q4_1 = GgmlType::from_id(GgmlType::Q4_1).unwrap();
        let quant = exact_blocks(q4_1, &block, &[1, 32], QuantScheme::Int4).unwrap();
        assert_eq!((quant.q.as_slice(), quant.scale[0], quant.min[0]), (&block[4..], 0.5, -3.0));
        let mut expected = [0f32; 32];
        dequant_q4_1(&block, &mut expected);
        assert_eq!(decode(&quant), expected);
        let q4_0 = GgmlType::from_id(GgmlType::Q4_0).unwrap();
        let quant = exact_blocks(q4_0, &block[2..], &[1, 32], QuantScheme::Int4).unwrap();
        dequant_q4_0(&block[2..], &mut expected);
        assert_eq!((quant.min[0], decode(&quant)), (24.0, expected.to_vec()));
        for (id, scheme) in [(GgmlType::Q4_1, QuantScheme::Int8), (GgmlType::Q8_0, QuantScheme::Int4)] {
            let ty = GgmlType::from_id(id).unwrap();
            assert!(exact_blocks(ty, &vec![0; ty.block_bytes], &[1, 32], scheme).is_none(), "{}", ty.name);
        }
        for id in [GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            let ty = GgmlType::from_id(id).unwrap();
            for scheme in [QuantScheme::Int8, QuantScheme::Int4] {
                let data = vec![0; ty.block_bytes];
                assert!(exact_blocks(ty, &data, &[1, ty.block_elems], scheme).is_none(), "{} {scheme:?}", ty.name);
            }
        }
    }
}
