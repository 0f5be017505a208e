//! Compares CPU backends on a SmolLM2-shaped synthetic model: forward tokens/s at batch x 128.
//! `cargo run --release --example backend_speed --features ndarray,candle`

use std::time::Instant;

use airllm_engine::DType;
use airllm_engine::executor::{Engine, EngineOptions, HeadOutput, Quiet};
use airllm_engine::source::synth::{SynthShape, SynthSource};
use airllm_engine::store::{SplitOptions, split};
use burn::prelude::Backend;

fn run<B: Backend>(name: &str, store: &std::path::Path) {
    let mut engine = Engine::<B>::open_on(store, EngineOptions::default(), Default::default()).unwrap();
    for batch in [1usize, 8, 32] {
        let seqs: Vec<Vec<u32>> =
            (0..batch).map(|b| (0..128).map(|t| ((b * 131 + t * 7) % 256) as u32).collect()).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let rows: Vec<Vec<usize>> = seqs.iter().map(|s| vec![s.len() - 1]).collect();
        let start = Instant::now();
        engine.run_wave(&refs, &rows, HeadOutput::LogProbs, &Quiet, &mut |_, _| {}).unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!("{name:8} batch {batch:3} x 128: {:8.1} tok/s ({secs:.2}s)", (batch * 128) as f64 / secs);
    }
}

unsafe extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
}

fn main() {
    if std::env::var("MALLOPT").is_ok() {
        unsafe {
            mallopt(-3, 1 << 30);
            mallopt(-1, 1 << 30);
        }
    }
    let shape = SynthShape { layers: 30, hidden: 576, intermediate: 1536, heads: 9, kv_heads: 3, vocab: 49152 };
    let dir = tempfile::tempdir().unwrap();
    let source = SynthSource::new(&shape, 1, DType::F32).unwrap();
    split(&source, dir.path(), &SplitOptions::default(), &|_, _, _| {}).unwrap();
    #[cfg(feature = "flex")]
    run::<burn::backend::Flex>("flex", dir.path());
    #[cfg(feature = "ndarray")]
    run::<burn::backend::NdArray>("ndarray", dir.path());
    #[cfg(feature = "candle")]
    run::<burn::backend::Candle>("candle", dir.path());
}
