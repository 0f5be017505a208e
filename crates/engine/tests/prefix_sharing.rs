//! Shared prefixes run once (`executor::prefix`) must not change what is scored or generated: every
//! family's tiny model, and SmolLM2, score sequences that share long prefixes with sharing on and
//! off (logits agree within 1e-4 and argmax is identical at every scored row), and generate from
//! them greedily (the same tokens, with the KV cache in f32 and in f16: each cache starts with a
//! copy of its prefix's keys and values).

mod common;

use airllm_engine::executor::{Engine, EngineOptions, HeadOutput, Quiet};
use airllm_engine::model::kv_cache::KvDtype;
use common::*;

/// Sequences sharing prefixes as few-shot prompts and multi-token continuations do: two groups of
/// three, each member with a tail of its own; and one sequence alone. Rows: of each member, the
/// last two positions of the prefix (inside it: run once for the three, as the last token of a
/// context before each of its endings) and every position of its tail; of the lone sequence, its
/// last four.
fn few_shot_like(vocab: u32, seed: u64) -> (Vec<Vec<u32>>, Vec<Vec<usize>>) {
    let mut rng = Rng(seed);
    let mut tokens = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(vocab as usize) as u32).collect() };
    let (mut sequences, mut rows) = (Vec::new(), Vec::new());
    for prefix_len in [24, 40] {
        let prefix = tokens(prefix_len);
        for tail in [5, 9, 14] {
            sequences.push([prefix.clone(), tokens(tail)].concat());
            rows.push((prefix_len - 2..prefix_len + tail).collect());
        }
    }
    sequences.push(tokens(30));
    rows.push((26..30).collect());
    (sequences, rows)
}

fn scores(engine: &mut Engine, sequences: &[Vec<u32>], rows: &[Vec<usize>]) -> Vec<Vec<f32>> {
    let slices: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
    let mut out = vec![Vec::new(); sequences.len()];
    engine
        .run_wave(&slices, rows, HeadOutput::Logits, &Quiet, &mut |i, _, values| out[i].extend_from_slice(values))
        .unwrap();
    out
}

fn check(source: &std::path::Path) {
    let options = |share_prefixes| EngineOptions { micro_batch_tokens: 48, share_prefixes, ..Default::default() };
    let (store, mut shared) = engine_for(source, options(true));
    let mut whole = Engine::open(store.path(), options(false)).unwrap();
    let vocab = shared.spec().vocab_size;
    let (sequences, rows) = few_shot_like(vocab as u32, 7);
    let (a, b) = (scores(&mut shared, &sequences, &rows), scores(&mut whole, &sequences, &rows));
    let (max, _, agree) = drift(&a, &b, vocab);
    let saved = shared.stats().shared_prefix_tokens;
    eprintln!("{}: {saved} tokens shared, max |Δ logit| {max:.3e}, argmax agreement {agree}", source.display());
    // Two groups of three: each prefix runs once instead of three times.
    let rescaled = sequences.iter().any(|s| shared.spec().rope_rescales_at(s.len()));
    let expected = if rescaled { 0 } else { 2 * (24 + 40) };
    assert_eq!(saved, expected);
    assert_eq!(whole.stats().shared_prefix_tokens, 0);
    assert!(max <= 1e-4 && agree == 1.0, "{}: max |Δ| {max}, argmax agreement {agree}", source.display());
}

/// Greedy continuations of `prompts`, `NEW_TOKENS` each.
fn generated(engine: &mut Engine, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    const NEW_TOKENS: usize = 6;
    let mut out = vec![Vec::new(); prompts.len()];
    engine
        .generate_wave(prompts, &vec![NEW_TOKENS; prompts.len()], &Quiet, &mut |i, token| {
            out[i].push(token);
            true
        })
        .unwrap();
    out
}

fn check_generation(source: &std::path::Path) {
    let (store, _) = engine_for(source, EngineOptions::default());
    for kv_dtype in [KvDtype::F32, KvDtype::F16] {
        let options =
            |share_prefixes| EngineOptions { micro_batch_tokens: 48, share_prefixes, kv_dtype, ..Default::default() };
        let mut shared = Engine::open(store.path(), options(true)).unwrap();
        let mut whole = Engine::open(store.path(), options(false)).unwrap();
        let (prompts, _) = few_shot_like(shared.spec().vocab_size as u32, 11);
        let (a, b) = (generated(&mut shared, &prompts), generated(&mut whole, &prompts));
        let rescaled = prompts.iter().any(|s| shared.spec().rope_rescales_at(s.len()));
        let expected = if rescaled { 0 } else { 2 * (24 + 40) };
        assert_eq!(shared.stats().shared_prefix_tokens, expected, "{}", source.display());
        assert_eq!(a, b, "{} ({kv_dtype:?} cache): generated tokens", source.display());
    }
}

#[test]
fn tiny_models_score_the_same_with_shared_prefixes() {
    for name in ["tiny-llama", "tiny-mistral", "tiny-qwen2"] {
        check(&fixtures().join("models").join(name));
    }
}

#[test]
fn tiny_models_and_remote_code_families_generate_the_same_with_shared_prefixes() {
    let tiny = ["tiny-llama", "tiny-mistral", "tiny-qwen2"].map(|name| fixtures().join("models").join(name));
    let archs = ["chatglm", "baichuan_7b", "baichuan2_13b", "internlm", "internlm2", "qwen", "qwen_longctx"]
        .map(|name| fixtures().join("archs").join(name));
    for source in tiny.iter().chain(&archs) {
        check_generation(source);
    }
}

#[test]
fn remote_code_families_score_the_same_with_shared_prefixes() {
    // qwen_longctx's angles depend on the sequence length past 16 tokens: sharing is off there,
    // and must be.
    for name in ["chatglm", "baichuan_7b", "baichuan2_13b", "internlm", "internlm2", "qwen", "qwen_longctx"] {
        check(&fixtures().join("archs").join(name));
    }
}

#[test]
fn smollm2_scores_and_generates_the_same_with_shared_prefixes() {
    check(&smollm2_gguf());
    check_generation(&smollm2_gguf());
}
