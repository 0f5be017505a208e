//! Layer-major generation with the KV cache against generation without one: every new token
//! recomputed from the whole sequence (`Engine::logits`) and picked greedily. Several prompts of
//! different lengths run in one wave, so per-sequence positions, cache lengths and the removal of
//! finished sequences are exercised.

mod common;

use airllm_engine::executor::{EngineOptions, Quiet};

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn cached_generation_matches_recomputing_every_token() {
    // Resident: the reference recomputes every sequence for every token, and must not re-read the store each time.
    let options = EngineOptions { resident: true, ..EngineOptions::default() };
    let (_store, mut engine) = common::engine_for(&common::smollm2_gguf(), options);
    let vocab = engine.spec().vocab_size;
    let prompts: Vec<Vec<u32>> =
        ["The capital of France is", "1, 2, 3, 4,", "Once upon a time, in a small village by the sea, there lived"]
            .iter()
            .map(|text| engine.tokenizer().unwrap().encode(*text, false).unwrap().get_ids().to_vec())
            .collect();
    let max_new = [12, 5, 16];
    let mut generated = vec![Vec::new(); prompts.len()];
    let stats = engine
        .generate_wave(&prompts, &max_new, &Quiet, &mut |i, token| {
            generated[i].push(token);
            true
        })
        .unwrap();
    assert_eq!(generated.iter().map(Vec::len).collect::<Vec<_>>(), max_new);
    assert_eq!(stats.steps, 15, "the longest sequence needs 15 steps after the prefill");
    assert_eq!(stats.tokens, 33);
    for (i, prompt) in prompts.iter().enumerate() {
        let mut tokens = prompt.clone();
        for _ in 0..max_new[i] {
            let logits = engine.logits(&tokens).unwrap();
            tokens.push(argmax(&logits[logits.len() - vocab..]));
        }
        assert_eq!(&tokens[prompt.len()..], generated[i].as_slice(), "prompt {i}");
        eprintln!("prompt {i}: {:?}", engine.tokenizer().unwrap().decode(&generated[i], false).unwrap());
    }
}

#[test]
fn a_sequence_stops_when_told_and_leaves_the_wave() {
    let (_store, mut engine) = common::engine_for(&common::smollm2_gguf(), EngineOptions::default());
    let prompts = vec![vec![1, 2, 3], vec![4, 5]];
    let mut counts = [0usize; 2];
    let stats = engine
        .generate_wave(&prompts, &[10, 10], &Quiet, &mut |i, _| {
            counts[i] += 1;
            i == 1 || counts[0] < 3
        })
        .unwrap();
    assert_eq!(counts, [3, 10]);
    assert_eq!(stats.steps, 9);
    assert!(engine.generate_wave(&prompts, &[10, 0], &Quiet, &mut |_, _| true).is_err(), "0 new tokens is refused");
    assert!(engine.generate_wave(&[vec![]], &[1], &Quiet, &mut |_, _| true).is_err(), "an empty prompt is refused");
}
