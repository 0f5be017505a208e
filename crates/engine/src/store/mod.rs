//! The layer store: a model split into one file per layer, written once and streamed many times.
//!
//! ```text
//! STORE/manifest.json        format version, source fingerprint, spec, dtype, files + checksums
//! STORE/tokenizer.json
//! STORE/embed.safetensors    embed
//! STORE/layer-NNN.safetensors attn_norm, q_proj, ..., down_proj (compressed: q_proj.q,
//!                            q_proj.scale, ...; see [`quant`])
//! STORE/head.safetensors     norm, lm_head (a copy of embed when embeddings are tied)
//! ```
//! A store is valid only once `manifest.json` exists; every file is written through a temporary
//! name and renamed, so a torn file is never taken for a finished one. Opening checks presence and
//! sizes; every read checks the file's checksum and names the file that fails.

mod manifest;
pub mod prefetch;
pub mod quant;
mod reader;
mod split;

pub use manifest::{Compression, FORMAT_VERSION, FileEntry, Manifest};
pub use prefetch::Prefetcher;
pub use reader::{LayerHost, LayerStore};
pub use split::{SplitOptions, SplitReport, split};

use std::io::Write;
use std::path::Path;

use crate::error::{EngineError, Result};

pub const MANIFEST: &str = "manifest.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const EMBED: &str = "embed.safetensors";
pub const HEAD: &str = "head.safetensors";

pub fn layer_file(index: usize) -> String {
    format!("layer-{index:03}.safetensors")
}

/// Content checksum used by the manifest (xxh3-64, hex).
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Writes `bytes` to `path` through `path.tmp`, fsynced, then renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or_default()));
    let mut file = std::fs::File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| EngineError::io(&tmp, e))?;
    file.sync_all().map_err(|e| EngineError::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}
