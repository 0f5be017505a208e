//! `airllm-eval synth`: a Llama-shaped model with random weights, written straight to a layer
//! store. For benchmarks, and for models larger than this machine's memory: tensors are generated
//! one layer at a time, so nothing bigger than a layer is ever held.

use std::path::PathBuf;

use airllm_engine::source::synth::{SynthShape, SynthSource};
use airllm_engine::store::SplitOptions;
use anyhow::Result;
use clap::Args;

use super::split::StoreDtype;
use crate::fetch;

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Decoder layers.
    #[arg(long)]
    pub layers: usize,
    /// Hidden size.
    #[arg(long)]
    pub hidden: usize,
    /// Feed-forward (MLP) size.
    #[arg(long)]
    pub intermediate: usize,
    /// Attention heads.
    #[arg(long)]
    pub heads: usize,
    /// Key/value heads (grouped-query attention); default: as many as `--heads`.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Vocabulary size (at least 256, and at least the tokenizer's).
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    /// A `tokenizer.json` to ship in the store (default: a byte-level one, one token per byte).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dtype of the stored weights.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: StoreDtype,
    /// Folder of the layer store to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let shape = SynthShape {
        layers: args.layers,
        hidden: args.hidden,
        intermediate: args.intermediate,
        heads: args.heads,
        kv_heads: args.kv_heads.unwrap_or(args.heads),
        vocab: args.vocab,
    };
    let mut source = SynthSource::new(&shape, args.seed, args.dtype.into())?;
    if let Some(path) = &args.tokenizer {
        let tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("reading tokenizer {}: {e}", path.display()))?;
        source = source.with_tokenizer(tokenizer)?;
    }
    let report = fetch::split_with_progress(&source, &args.out, &SplitOptions::default())?;
    let total = report.manifest.total_size() as f64 / (1u64 << 30) as f64;
    println!("synthetic layer store {}: {} files, {total:.2} GiB", args.out.display(), report.manifest.files.len());
    Ok(())
}
