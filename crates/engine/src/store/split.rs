//! `split`: writes a layer store from a model source, one file at a time.
//!
//! Progress is recorded in `split-progress.json` after every file, so a split that is killed
//! resumes: files listed there whose size and checksum still match are kept, the rest redone.
//! At most one layer's tensors are in memory at once.
//!
//! With [`SplitOptions::compression`] the linear weights of each layer are stored block-quantized
//! ([`super::quant`]); a source that holds them already quantized in a matching block format (GGUF
//! Q8_0 for int8, Q4_0/Q4_1 for int4) hands its blocks over as they are, without a detour through
//! f32 and a second rounding.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use serde::{Deserialize, Serialize};

use super::manifest::{Compression, FORMAT_VERSION, FileEntry, Manifest};
use super::quant::{BLOCK, QuantScheme, QuantTensor, quantizable, quantize};
use super::{EMBED, HEAD, MANIFEST, TOKENIZER, checksum, layer_file, write_atomic};
use crate::error::{EngineError, Result};
use crate::source::{LayerTensor, ModelSource, TensorName};
use crate::tensor::{DType, HostTensor};

const PROGRESS: &str = "split-progress.json";

#[derive(Debug, Clone, Default)]
pub struct SplitOptions {
    /// Dtype of the stored weights; `None` keeps the source's (f32 for dequantized GGUF).
    pub dtype: Option<DType>,
    /// Block-wise compression of the layers' linear weights (norms and biases keep `dtype`).
    pub compression: Compression,
    /// Also store the embedding and the head as int8 (whatever `compression` is). Off by default:
    /// they are read once per wave, not once per layer, and int8 costs them some accuracy unless
    /// the source already holds them as Q8_0.
    pub quantize_embed_head: bool,
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
    #[serde(default)]
    compression: Compression,
    #[serde(default)]
    quantized_embed_head: bool,
    files: Vec<FileEntry>,
}

impl Progress {
    fn same_target(&self, other: &Progress) -> bool {
        self.source_fingerprint == other.source_fingerprint
            && self.dtype == other.dtype
            && self.compression == other.compression
            && self.quantized_embed_head == other.quantized_embed_head
    }
}

/// Splits `source` into a layer store at `out`. An existing complete store of the same source,
/// dtype and compression is kept as it is; one that differs in any of them is written again.
pub fn split(
    source: &dyn ModelSource,
    out: &Path,
    options: &SplitOptions,
    on_file: &dyn Fn(&str, usize, usize),
) -> Result<SplitReport> {
    std::fs::create_dir_all(out).map_err(|e| EngineError::io(out, e))?;
    let fingerprint = source.fingerprint()?;
    let dtype = options.dtype.unwrap_or(source.tensor(TensorName::FinalNorm)?.dtype);
    let target = Progress {
        source_fingerprint: fingerprint.clone(),
        dtype,
        compression: options.compression,
        quantized_embed_head: options.quantize_embed_head,
        files: vec![],
    };
    if let Ok(manifest) = Manifest::read(out)
        && manifest.source_fingerprint == fingerprint
        && manifest.dtype == dtype
        && manifest.compression == options.compression
        && manifest.quantized_embed_head == options.quantize_embed_head
    {
        let reused_files = manifest.files.len();
        return Ok(SplitReport { manifest, reused_files, written_files: 0 });
    }
    let _ = std::fs::remove_file(out.join(MANIFEST));
    let mut progress = resume_progress(out, target);
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
        let bytes = file_bytes(source, name, dtype, options)?;
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
        compression: options.compression,
        block_size: BLOCK,
        quantized_embed_head: options.quantize_embed_head,
        files,
    };
    write_atomic(&out.join(MANIFEST), &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"))?;
    let _ = std::fs::remove_file(out.join(PROGRESS));
    let written_files = names.len() - reused_files;
    Ok(SplitReport { manifest, reused_files, written_files })
}

/// The files an interrupted split finished, each checked against its recorded size and checksum.
fn resume_progress(out: &Path, fresh: Progress) -> Progress {
    let Ok(text) = std::fs::read(out.join(PROGRESS)) else {
        return fresh;
    };
    let Ok(mut progress) = serde_json::from_slice::<Progress>(&text) else {
        tracing::warn!("{}: unreadable, starting the split over", out.join(PROGRESS).display());
        return fresh;
    };
    if !progress.same_target(&fresh) {
        tracing::info!("{}: an earlier split of another source or format, starting over", out.join(PROGRESS).display());
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

/// A tensor as it goes into a store file.
struct Entry {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl From<HostTensor> for Entry {
    fn from(t: HostTensor) -> Self {
        Self { dtype: t.dtype.to_safetensors(), shape: t.shape, bytes: t.bytes }
    }
}

fn f16_entry(shape: Vec<usize>, values: &[f16]) -> Entry {
    Entry { dtype: safetensors::Dtype::F16, shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
}

/// Adds `NAME.q`, `NAME.scale` (and `NAME.min`) for a quantized tensor.
fn insert_quant(entries: &mut BTreeMap<String, Entry>, name: &str, quant: QuantTensor) {
    let (rows, cols) = (quant.rows(), quant.cols());
    let blocks_shape = vec![rows, cols / BLOCK];
    let q_dtype = match quant.scheme {
        QuantScheme::Int8 => safetensors::Dtype::I8,
        QuantScheme::Int4 => safetensors::Dtype::U8,
    };
    let q_shape = vec![rows, quant.scheme.row_bytes(cols)];
    entries.insert(format!("{name}.scale"), f16_entry(blocks_shape.clone(), &quant.scale));
    if quant.scheme == QuantScheme::Int4 {
        entries.insert(format!("{name}.min"), f16_entry(blocks_shape, &quant.min));
    }
    entries.insert(format!("{name}.q"), Entry { dtype: q_dtype, shape: q_shape, bytes: quant.q });
}

/// A tensor quantized with `scheme`: the source's own blocks where it has them in that format,
/// else quantized from f32. The tensor as it is (`Err`) when its shape does not split into
/// blocks or its values do not quantize (not finite, or a scale beyond f16).
fn quantized(
    source: &dyn ModelSource,
    name: TensorName,
    scheme: QuantScheme,
) -> Result<Result<QuantTensor, HostTensor>> {
    if let Some(quant) = source.quantized_tensor(name, scheme)? {
        quant.check().map_err(|e| EngineError::Other(format!("{}: tensor {name:?}: {e}", source.describe())))?;
        return Ok(Ok(quant));
    }
    let tensor = source.tensor(name)?;
    if !quantizable(&tensor.shape) {
        tracing::debug!(?name, shape = ?tensor.shape, "not a multiple of the block size, stored uncompressed");
        return Ok(Err(tensor));
    }
    match quantize(&tensor.to_f32(), &tensor.shape, scheme) {
        Ok(quant) => Ok(Ok(quant)),
        Err(reason) => {
            tracing::warn!(?name, "{}: {reason}; stored uncompressed", source.describe());
            Ok(Err(tensor))
        }
    }
}

/// The bytes of one store file, built from the source.
fn file_bytes(source: &dyn ModelSource, name: &str, dtype: DType, options: &SplitOptions) -> Result<Vec<u8>> {
    let spec = source.spec();
    let embed_head = options.quantize_embed_head.then_some(QuantScheme::Int8);
    let layer_scheme = options.compression.scheme();
    let tensors: Vec<(String, TensorName, Option<QuantScheme>)> = if name == TOKENIZER {
        let tokenizer = source.tokenizer()?;
        let json = tokenizer.to_string(false).map_err(|e| EngineError::Other(format!("tokenizer: {e}")))?;
        return Ok(json.into_bytes());
    } else if name == EMBED {
        vec![("embed".into(), TensorName::Embed, embed_head)]
    } else if name == HEAD {
        vec![("norm".into(), TensorName::FinalNorm, None), ("lm_head".into(), TensorName::LmHead, embed_head)]
    } else {
        let index: usize = name["layer-".len()..name.len() - ".safetensors".len()].parse().expect("layer file name");
        LayerTensor::present(spec)
            .map(|t| {
                let scheme = if t.is_linear() { layer_scheme } else { None };
                (t.store_name().to_string(), TensorName::Layer(index, t), scheme)
            })
            .collect()
    };
    let mut entries = BTreeMap::new();
    for (store_name, tensor_name, scheme) in tensors {
        let plain = match scheme {
            None => source.tensor(tensor_name)?,
            Some(scheme) => match quantized(source, tensor_name, scheme)? {
                Ok(quant) => {
                    insert_quant(&mut entries, &store_name, quant);
                    continue;
                }
                Err(plain) => plain,
            },
        };
        entries.insert(store_name, Entry::from(plain.cast(dtype)));
    }
    serialize(&entries)
}

fn serialize(tensors: &BTreeMap<String, Entry>) -> Result<Vec<u8>> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, t)| {
            let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map_err(|e| EngineError::Other(format!("tensor {name}: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| EngineError::Other(e.to_string()))
}
