//! Fused element-wise steps of the decoder layer: RMS norm, rotary embedding and SwiGLU gating.
//!
//! On host backends (flex), a tensor's buffer is taken without a copy (`into_data` of a uniquely
//! owned contiguous tensor moves it), updated in one parallel pass, and handed back; chained burn
//! ops would make several passes with an allocation each, which profiles showed costing as much
//! as the matmuls. On other backends the same math runs as burn ops.

use std::any::TypeId;

use burn::prelude::*;
use burn::tensor::activation::silu;
use rayon::prelude::*;

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

fn slice_mut(data: &mut TensorData) -> &mut [f32] {
    data.as_mut_slice::<f32>().expect("f32 data")
}

/// `x / rms(x) * weight` over the last dimension (f32, as Hugging Face computes it).
pub fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    if !on_host::<B>() {
        let variance = x.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = x * (variance + eps).sqrt().recip();
        return normed * weight.clone().unsqueeze::<D>();
    }
    let device = x.device();
    let weight = host_values(weight.clone());
    let weight = weight.as_slice::<f32>().expect("f32 data");
    let mut data = host_values(x);
    let width = weight.len();
    slice_mut(&mut data).par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_exact_mut(width) {
            let mean_square = sum_squares(row) / width as f32;
            let scale = 1.0 / (mean_square + eps as f32).sqrt();
            for (v, w) in row.iter_mut().zip(weight) {
                *v = w * (*v * scale);
            }
        }
    });
    Tensor::from_data(data, &device)
}

/// Sum of squares with eight partial sums, so the loop vectorizes.
fn sum_squares(row: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v * v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `silu(gate) * up` for `x` = `[batch, seq, 2 * width]` holding gate then up in each row;
/// the result is `[batch, seq, width]`.
pub fn silu_mul_halves<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, double] = x.dims();
    let width = double / 2;
    if !on_host::<B>() {
        return silu(x.clone().narrow(2, 0, width)) * x.narrow(2, width, width);
    }
    let device = x.device();
    let data = host_values(x);
    let input = data.as_slice::<f32>().expect("f32 data");
    let mut out = vec![0f32; batch * seq * width];
    out.par_chunks_mut(width * ROWS_PER_TASK).zip(input.par_chunks(double * ROWS_PER_TASK)).for_each(|(out, input)| {
        for (out, row) in out.chunks_exact_mut(width).zip(input.chunks_exact(double)) {
            let (gate, up) = row.split_at(width);
            for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        }
    });
    Tensor::from_data(TensorData::new(out, [batch, seq, width]), &device)
}

/// Rotates `x` `[batch, seq, heads * head_dim]` in place by positions `0..seq` (`rotate_half`
/// layout); `cos`/`sin` are `[positions, head_dim]`, row-major.
pub fn rope_host<B: Backend>(x: Tensor<B, 3>, heads: usize, cos: &[f32], sin: &[f32]) -> Tensor<B, 3> {
    let [_, seq, width] = x.dims();
    let head_dim = width / heads;
    let half = head_dim / 2;
    let device = x.device();
    let mut data = host_values(x);
    slice_mut(&mut data).par_chunks_mut(width).enumerate().for_each(|(row, values)| {
        let position = row % seq;
        let cos = &cos[position * head_dim..position * head_dim + half];
        let sin = &sin[position * head_dim..position * head_dim + half];
        for head in values.chunks_exact_mut(head_dim) {
            let (first, second) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (first[i], second[i]);
                first[i] = a * cos[i] - b * sin[i];
                second[i] = b * cos[i] + a * sin[i];
            }
        }
    });
    Tensor::from_data(data, &device)
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
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
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
