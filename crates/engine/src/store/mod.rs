//! The layer store: a model split into one file per layer, written once and streamed many times.
//!
//! ```text
//! STORE/manifest.json        format version, source fingerprint, spec, dtype, files + checksums
//! STORE/tokenizer.json     or {"no_tokenizer": REASON} where the source had none it reads
//! STORE/embed.safetensors    embed
//! STORE/layer-NNN.safetensors attn_norm, q_proj, ..., down_proj (compressed: q_proj.q,
//!                            q_proj.scale, ...; see [`quant`])
//! STORE/head.safetensors     norm, lm_head (a copy of embed when embeddings are tied)
//! ```
//! A store is valid only once `manifest.json` exists; every file is written through a temporary
//! name and renamed, so a torn file is never taken for a finished one. Opening checks the
//! manifest (file names inside the store, a valid spec, one file per layer), every file's
//! presence and size, and every tensor's shape against the spec (from the safetensors headers);
//! every read checks the file's checksum and names the file that fails.
//!
//! A split holds `STORE/.lock` while it writes, so two runs sharing a store wait for each other
//! instead of writing the same files; readers take no lock (they see a store only once its
//! manifest is in place, and a split removes the manifest before it rewrites any file).

mod manifest;
pub mod prefetch;
pub mod quant;
mod reader;
mod split;

pub use manifest::{COMPRESSION_RULES, Compression, FORMAT_VERSION, FileEntry, Manifest};
pub use prefetch::Prefetcher;
pub use reader::{LayerHost, LayerStore, StoredTensor};
pub use split::{CompressedTensors, SplitOptions, SplitReport, split};

use std::io::Write;
use std::path::Path;

use crate::error::{EngineError, Result};
use crate::source::{LayerTensor, TensorName};
use crate::spec::ModelSpec;

pub const MANIFEST: &str = "manifest.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const EMBED: &str = "embed.safetensors";
pub const HEAD: &str = "head.safetensors";
/// Files an unfinished split has written; present only while a split is under way or killed.
pub const SPLIT_PROGRESS: &str = "split-progress.json";

pub fn layer_file(index: usize) -> String {
    format!("layer-{index:03}.safetensors")
}

/// The files of a store of a `num_layers`-layer model, in the order a split writes them.
pub fn store_files(num_layers: usize) -> Vec<String> {
    [TOKENIZER.to_string(), EMBED.to_string()]
        .into_iter()
        .chain((0..num_layers).map(layer_file))
        .chain([HEAD.to_string()])
        .collect()
}

/// The tensors of a store file: each one's name inside the file and the model tensor it holds
/// (none for the tokenizer). `file` is one of [`store_files`].
pub(crate) fn file_tensors(file: &str, spec: &ModelSpec) -> Vec<(&'static str, TensorName)> {
    match file {
        TOKENIZER => vec![],
        EMBED => vec![("embed", TensorName::Embed)],
        HEAD => vec![("norm", TensorName::FinalNorm), ("lm_head", TensorName::LmHead)],
        layer => {
            let index = layer
                .strip_prefix("layer-")
                .and_then(|rest| rest.strip_suffix(".safetensors"))
                .and_then(|n| n.parse().ok())
                .expect("a store file name (checked against the manifest)");
            LayerTensor::present(spec).map(|t| (t.store_name(), TensorName::Layer(index, t))).collect()
        }
    }
}

/// Content checksum used by the manifest (xxh3-64, hex).
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Writes `bytes` to `path` through `path.tmp`, fsynced, then renamed into place. On failure the
/// temporary file is removed (a full disk must not also leave half a layer behind).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or_default()));
    let written =
        write_and_sync(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_and_sync(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(|e| EngineError::io(path, e))?;
    file.write_all(bytes).map_err(|e| EngineError::io(path, e))?;
    file.sync_all().map_err(|e| EngineError::io(path, e))
}
