//! What a forward pass should cost, and what the backend can do: the yardsticks of the benchmark.
//!
//! [`forward_flops`] counts the useful floating-point work of scoring sequences (matmuls of the
//! layers, causal attention, the head at scored rows), padding excluded, so achieved GFLOP/s is
//! comparable across schedules. [`gemm_peak`] measures the matmul rate at the shapes a layer really
//! multiplies, with burn's matmul and with the packed host kernel: the ceiling those GFLOP/s are
//! compared to.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;

#[cfg(target_arch = "x86_64")]
use crate::model::{Compute, KernelLevel, gemm::PackedWeight};
use crate::model::{Precision, TokenRows, matmul};
use crate::spec::ModelSpec;

/// Multiply-adds count two FLOPs.
const FLOPS_PER_MAC: f64 = 2.0;

/// FLOPs of the layer matmuls for sequences of these lengths.
pub fn linear_flops(spec: &ModelSpec, lengths: &[usize]) -> f64 {
    let tokens: usize = lengths.iter().sum();
    spec.layer_matmul_flops_per_token() * tokens as f64 * spec.num_layers as f64
}

/// FLOPs of one forward pass: layer matmuls, causal attention (scores and weighted values over
/// the keys each query may see) and the head at `scored_rows` positions.
pub fn forward_flops(spec: &ModelSpec, lengths: &[usize], scored_rows: usize) -> f64 {
    let attention: f64 = lengths
        .iter()
        .map(|&len| {
            let visible_keys: f64 = match spec.sliding_window {
                Some(window) => (0..len).map(|i| (i + 1).min(window) as f64).sum(),
                None => (len * (len + 1) / 2) as f64,
            };
            2.0 * FLOPS_PER_MAC * visible_keys * (spec.num_heads * spec.head_dim) as f64
        })
        .sum();
    let head = FLOPS_PER_MAC * scored_rows as f64 * (spec.hidden_size * spec.vocab_size) as f64;
    linear_flops(spec, lengths) + attention * spec.num_layers as f64 + head
}

/// The best matmul rate measured on the backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmPeak {
    pub gflops: f64,
    /// `[m, k] x [k, n]` of the best shape.
    pub shape: [usize; 3],
    /// Which matmul reached it: `burn matmul` or `packed f32` / `packed bf16`.
    pub kernel: &'static str,
}

/// Measures matmul GFLOP/s of `[rows, in] x [in, out]` for the projections of `spec`'s layers
/// and returns the best: burn's matmul (f32), and the packed host kernel at `precision` where
/// the layers use it. `rows` is the number of tokens per micro-batch.
pub fn gemm_peak<B: Backend>(spec: &ModelSpec, rows: usize, precision: Precision, device: &B::Device) -> GemmPeak {
    let (h, ffn) = (spec.hidden_size, spec.intermediate_size);
    let mut best = GemmPeak { gflops: 0.0, shape: [0; 3], kernel: "none" };
    for (k, n) in [(h, ffn), (ffn, h), (h, h)] {
        let mut consider = |kernel, seconds: f64| {
            let gflops = FLOPS_PER_MAC * (rows * k * n) as f64 / seconds / 1e9;
            if gflops > best.gflops {
                best = GemmPeak { gflops, shape: [rows, k, n], kernel };
            }
        };
        #[cfg(target_arch = "x86_64")]
        let kernels = KernelLevel::process();
        let compute = Compute { precision, kernels };
        // burn's product as the layers run it (f32 split on cuda, see `model::matmul`).
        if precision == Precision::F32 || (!compute.packed::<B>() && compute.bf16_ops::<B>(device)) {
            let dtype = compute.matmul_dtype();
            let a = Tensor::<B, 2>::random([rows, k], Distribution::Default, device).cast(dtype);
            let weight = Tensor::<B, 2>::random([n, k], Distribution::Default, device).cast(dtype);
            consider("burn matmul", seconds_per_call(|| matmul(a.clone(), weight.clone().transpose()).into_data()));
        }
        if compute.packed::<B>() {
            let a: Vec<f32> = (0..rows * k).map(|i| (i % 251) as f32 / 251.0 - 0.5).collect();
            let weight: Vec<f32> = (0..n * k).map(|i| (i % 241) as f32 / 241.0 - 0.5).collect();
            let packed = PackedWeight::pack(&weight, n, k, precision, kernels);
            let kernel = match (precision, kernels) {
                (Precision::F32, KernelLevel::Avx2) => "packed f32 avx2",
                (Precision::F32, _) => "packed f32",
                (Precision::Bf16, _) => "packed bf16",
            };
            consider(kernel, seconds_per_call(|| packed.matmul(&a, TokenRows::All, None)));
        }
    }
    best
}

/// Mean seconds of `call` over a few runs, after one untimed warm-up.
fn seconds_per_call<T>(mut call: impl FnMut() -> T) -> f64 {
    std::hint::black_box(call());
    let reps = 5;
    let start = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(call());
    }
    start.elapsed().as_secs_f64() / reps as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_of_a_known_shape() {
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({
            "family": "llama", "vocab_size": 10, "hidden_size": 4, "intermediate_size": 8,
            "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "head_dim": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "rope_scaling": null, "sliding_window": null, "qkv_bias": false,
            "tie_word_embeddings": true, "max_position_embeddings": 64, "bos_token_id": null,
            "eos_token_id": null
        }))
        .unwrap();
        // q 4x4, k and v 4x2 each, o 4x4, gate/up/down 4x8 each: 144 multiply-adds per token.
        // 3 tokens: 2 * 144 * 3 * 2 layers; attention 1+2+3 = 6 visible keys, 2 matmuls, width 4.
        let attention = 2.0 * 2.0 * 6.0 * 4.0 * 2.0;
        assert_eq!(forward_flops(&spec, &[3], 1), 2.0 * 144.0 * 3.0 * 2.0 + attention + 2.0 * 40.0);
    }
}
