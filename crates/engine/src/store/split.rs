//! `split`: writes a layer store from a model source, one file at a time.
//!
//! Progress is recorded in `split-progress.json` after every file, so a split that is killed
//! resumes: files listed there whose size and checksum still match are kept, the rest redone.
//! At most one layer's tensors are in memory at once.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::manifest::{Compression, FORMAT_VERSION, FileEntry, Manifest};
use super::{EMBED, HEAD, MANIFEST, TOKENIZER, checksum, layer_file, write_atomic};
use crate::error::{EngineError, Result};
use crate::source::{LayerTensor, ModelSource, TensorName};
use crate::tensor::{DType, HostTensor};

const PROGRESS: &str = "split-progress.json";

#[derive(Debug, Clone, Default)]
pub struct SplitOptions {
    /// Dtype of the stored weights; `None` keeps the source's (f32 for dequantized GGUF).
    pub dtype: Option<DType>,
}

/// What a split did.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitReport {
    pub manifest: Manifest,
    /// Files found complete and verified from an earlier, interrupted split.
    pub reused_files: usize,
    pub written_files: usize,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Progress {
    source_fingerprint: String,
    dtype: DType,
    files: Vec<FileEntry>,
}

/// Splits `source` into a layer store at `out`. An existing complete store of the same source and
/// dtype is kept as it is.
pub fn split(
    source: &dyn ModelSource,
    out: &Path,
    options: &SplitOptions,
    on_file: &dyn Fn(&str, usize, usize),
) -> Result<SplitReport> {
    std::fs::create_dir_all(out).map_err(|e| EngineError::io(out, e))?;
    let fingerprint = source.fingerprint()?;
    let dtype = options.dtype.unwrap_or(source.tensor(TensorName::FinalNorm)?.dtype);
    if let Ok(manifest) = Manifest::read(out)
        && manifest.source_fingerprint == fingerprint
        && manifest.dtype == dtype
    {
        let reused_files = manifest.files.len();
        return Ok(SplitReport { manifest, reused_files, written_files: 0 });
    }
    let _ = std::fs::remove_file(out.join(MANIFEST));
    let mut progress = resume_progress(out, &fingerprint, dtype);
    let reused_files = progress.files.len();
    let spec = source.spec();
    let names: Vec<String> = [TOKENIZER.to_string(), EMBED.to_string()]
        .into_iter()
        .chain((0..spec.num_layers).map(layer_file))
        .chain([HEAD.to_string()])
        .collect();
    for (i, name) in names.iter().enumerate() {
        if progress.files.iter().any(|f| &f.name == name) {
            continue;
        }
        let bytes = file_bytes(source, name, dtype)?;
        write_atomic(&out.join(name), &bytes)?;
        progress.files.push(FileEntry { name: name.clone(), size: bytes.len() as u64, checksum: checksum(&bytes) });
        write_atomic(&out.join(PROGRESS), &serde_json::to_vec_pretty(&progress).expect("progress serializes"))?;
        tracing::debug!(file = %name, bytes = bytes.len(), "split wrote");
        on_file(name, i + 1, names.len());
    }
    let mut files = progress.files;
    files.sort_by_key(|f| names.iter().position(|n| n == &f.name));
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        source: source.describe(),
        source_fingerprint: fingerprint,
        spec: spec.clone(),
        dtype,
        compression: Compression::None,
        files,
    };
    write_atomic(&out.join(MANIFEST), &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"))?;
    let _ = std::fs::remove_file(out.join(PROGRESS));
    let written_files = names.len() - reused_files;
    Ok(SplitReport { manifest, reused_files, written_files })
}

/// The files an interrupted split finished, each checked against its recorded size and checksum.
fn resume_progress(out: &Path, fingerprint: &str, dtype: DType) -> Progress {
    let fresh = Progress { source_fingerprint: fingerprint.to_string(), dtype, files: vec![] };
    let Ok(text) = std::fs::read(out.join(PROGRESS)) else {
        return fresh;
    };
    let Ok(mut progress) = serde_json::from_slice::<Progress>(&text) else {
        tracing::warn!("{}: unreadable, starting the split over", out.join(PROGRESS).display());
        return fresh;
    };
    if progress.source_fingerprint != fingerprint || progress.dtype != dtype {
        return fresh;
    }
    progress.files.retain(|entry| {
        let ok = std::fs::read(out.join(&entry.name))
            .is_ok_and(|bytes| bytes.len() as u64 == entry.size && checksum(&bytes) == entry.checksum);
        if !ok {
            tracing::warn!(file = %entry.name, "split: recorded file is missing or changed, writing it again");
        }
        ok
    });
    tracing::info!(reused = progress.files.len(), "resuming an interrupted split");
    progress
}

/// The bytes of one store file, built from the source.
fn file_bytes(source: &dyn ModelSource, name: &str, dtype: DType) -> Result<Vec<u8>> {
    let spec = source.spec();
    let tensors: Vec<(String, TensorName)> = if name == TOKENIZER {
        let tokenizer = source.tokenizer()?;
        let json = tokenizer.to_string(false).map_err(|e| EngineError::Other(format!("tokenizer: {e}")))?;
        return Ok(json.into_bytes());
    } else if name == EMBED {
        vec![("embed".into(), TensorName::Embed)]
    } else if name == HEAD {
        vec![("norm".into(), TensorName::FinalNorm), ("lm_head".into(), TensorName::LmHead)]
    } else {
        let index: usize = name["layer-".len()..name.len() - ".safetensors".len()].parse().expect("layer file name");
        LayerTensor::present(spec).map(|t| (t.store_name().to_string(), TensorName::Layer(index, t))).collect()
    };
    let mut loaded = BTreeMap::new();
    for (store_name, tensor_name) in tensors {
        let tensor = source.tensor(tensor_name)?.cast(dtype);
        loaded.insert(store_name, tensor);
    }
    serialize(&loaded)
}

pub(crate) fn serialize(tensors: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, t)| {
            let view = safetensors::tensor::TensorView::new(t.dtype.to_safetensors(), t.shape.clone(), &t.bytes)
                .map_err(|e| EngineError::Other(format!("tensor {name}: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| EngineError::Other(e.to_string()))
}
