//! `split`: writes a layer store from a model source, one file at a time.
//!
//! Progress is recorded in `split-progress.json` after every file, so a split that is killed
//! resumes: files listed there whose size and checksum still match are kept, the rest redone.
//! At most one layer's tensors are in memory at once.
//!
//! A complete store of the same source and format is reused, but not blindly: every file gets a
//! cheap check (present, a file, the recorded size), and a full checksum when its mtime is newer
//! than the manifest's (it was written to after the split) or when [`SplitOptions::verify`] asks
//! for every file (`airllm-eval split` does, so "split the model again" repairs a store whose
//! bytes rotted in place). Damaged files are written again; the rest are kept.
//!
//! The split holds the store's lock (`.lock`) from start to end; a second split of the same store
//! waits for it, then finds the store complete. The source's file hashes are remembered in
//! `.source-hashes.json` (see [`crate::fingerprint`]), so an unchanged source is not read in full
//! on every run just to confirm that the store is its own.
//!
//! With [`SplitOptions::compression`] the linear weights of each layer are stored block-quantized
//! ([`super::quant`]); a source that holds them already quantized in a block format that converts
//! exactly (GGUF Q8_0 and Q5_0 for int8; Q4_0, Q4_1 and Q4_K for int4) hands its blocks over,
//! without a detour through f32 and a second rounding.
//!
//! More bits are never less accurate: an int8 store keeps a tensor as int4 where the source's
//! blocks convert exactly to int4 but not to int8 (GGUF Q4_0, Q4_1, Q4_K), rather than round the
//! source's values a second time at 8 bits; the store reader tells the scheme tensor by tensor.
//! Block-quantized tensors with no exact form (Q5_1, Q2_K, Q3_K, Q5_K, Q6_K, and Q8_0/Q5_0 into
//! int4) are quantized from their f32 values, which adds rounding to the source's: the split says
//! how many of each type (a warning, and [`SplitReport::compressed`]). A compressed store records
//! the revision of these rules it was made under ([`COMPRESSION_RULES`]); one made under other
//! rules is written again, not reused.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::manifest::{COMPRESSION_RULES, Compression, FORMAT_VERSION, FileEntry, Manifest};
use super::quant::{BLOCK, QuantScheme, QuantTensor, as_f16s, quantizable, quantize};
use super::reader::{NO_TOKENIZER, size_problem};
use super::{MANIFEST, SPLIT_PROGRESS, TOKENIZER, checksum, file_tensors, store_files, write_atomic};
use crate::error::{EngineError, Result};
use crate::fingerprint::FileHashes;
use crate::source::{ModelSource, TensorName};
use crate::tensor::{DType, HostTensor};

const LOCK: &str = ".lock";
const SOURCE_HASHES: &str = ".source-hashes.json";

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
    /// When a complete store is reused, checksum every file, not only those written to since the
    /// split (see the module doc).
    pub verify: bool,
}

/// What a split did.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitReport {
    pub manifest: Manifest,
    /// Files found complete and verified from an earlier split (interrupted, or complete and
    /// reused).
    pub reused_files: usize,
    pub written_files: usize,
    /// How the compressed tensors of the files written by this call were made.
    pub compressed: CompressedTensors,
}

/// Compressed tensors counted by how they were made, keyed `"{source type} -> {scheme}"` (e.g.
/// `"Q6_K -> int8"`). Tensors quantized from a float source are not counted: theirs is the first
/// rounding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompressedTensors {
    /// The source's own blocks, converted exactly: the store holds the source's values.
    pub exact: BTreeMap<String, usize>,
    /// Block-quantized source tensors with no exact form in the store, quantized again from their
    /// f32 values: rounding error on top of the source's.
    pub requantized: BTreeMap<String, usize>,
}

impl CompressedTensors {
    fn log(&self, out: &Path) {
        let list = |counts: &BTreeMap<String, usize>| -> (usize, String) {
            let total = counts.values().sum();
            (total, counts.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", "))
        };
        if !self.exact.is_empty() {
            let (n, by_type) = list(&self.exact);
            tracing::info!(store = %out.display(), "{n} tensors keep the source's blocks exactly ({by_type})");
        }
        if !self.requantized.is_empty() {
            let (n, by_type) = list(&self.requantized);
            tracing::warn!(
                store = %out.display(),
                "{n} block-quantized tensors have no exact form in this store and were quantized again from their \
                 values, adding rounding error to the source's ({by_type})"
            );
        }
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Progress {
    source_fingerprint: String,
    dtype: DType,
    #[serde(default)]
    compression: Compression,
    #[serde(default)]
    quantized_embed_head: bool,
    #[serde(default)]
    compression_rules: u32,
    files: Vec<FileEntry>,
}

impl Progress {
    /// Whether a store written for `self` is one for `other`. The compression rules count only
    /// where something is compressed: an uncompressed store is the same under any of them.
    fn same_target(&self, other: &Progress) -> bool {
        let compresses = self.compression != Compression::None || self.quantized_embed_head;
        self.source_fingerprint == other.source_fingerprint
            && self.dtype == other.dtype
            && self.compression == other.compression
            && self.quantized_embed_head == other.quantized_embed_head
            && (!compresses || self.compression_rules == other.compression_rules)
    }

    fn of_manifest(manifest: &Manifest) -> Self {
        Progress {
            source_fingerprint: manifest.source_fingerprint.clone(),
            dtype: manifest.dtype,
            compression: manifest.compression,
            quantized_embed_head: manifest.quantized_embed_head,
            compression_rules: manifest.compression_rules,
            files: manifest.files.clone(),
        }
    }
}

/// Splits `source` into a layer store at `out`. An existing complete store of the same source,
/// dtype and compression is kept, its damaged files rewritten (see the module doc); one that
/// differs in any of them is written again.
pub fn split(
    source: &dyn ModelSource,
    out: &Path,
    options: &SplitOptions,
    on_file: &dyn Fn(&str, usize, usize),
) -> Result<SplitReport> {
    std::fs::create_dir_all(out).map_err(|e| EngineError::io(out, e))?;
    let _lock = lock_store(out)?;
    let fingerprint = source.fingerprint(&FileHashes::cached_in(out.join(SOURCE_HASHES)))?;
    let dtype = options.dtype.unwrap_or(source.tensor(TensorName::FinalNorm)?.dtype);
    let target = Progress {
        source_fingerprint: fingerprint.clone(),
        dtype,
        compression: options.compression,
        quantized_embed_head: options.quantize_embed_head,
        compression_rules: COMPRESSION_RULES,
        files: vec![],
    };
    let spec = source.spec();
    let names = store_files(spec.num_layers);
    let mut progress = match Manifest::read(out).ok().filter(|m| Progress::of_manifest(m).same_target(&target)) {
        Some(manifest) => {
            let damaged = damaged_files(out, &manifest, options.verify);
            if damaged.is_empty() {
                let reused_files = manifest.files.len();
                let compressed = CompressedTensors::default();
                return Ok(SplitReport { manifest, reused_files, written_files: 0, compressed });
            }
            tracing::warn!(store = %out.display(), files = ?damaged, "layer store files are damaged, writing them again");
            let mut progress = Progress::of_manifest(&manifest);
            progress.files.retain(|f| !damaged.contains(&f.name));
            // Recorded before the manifest goes, so a kill from here on still resumes.
            write_progress(out, &progress)?;
            progress
        }
        None => resume_progress(out, target, &names),
    };
    remove_if_present(&out.join(MANIFEST))?;
    let reused_files = progress.files.len();
    let mut compressed = CompressedTensors::default();
    for (i, name) in names.iter().enumerate() {
        if progress.files.iter().any(|f| &f.name == name) {
            continue;
        }
        let bytes = file_bytes(source, name, dtype, options, &mut compressed)?;
        write_atomic(&out.join(name), &bytes)?;
        progress.files.push(FileEntry { name: name.clone(), size: bytes.len() as u64, checksum: checksum(&bytes) });
        write_progress(out, &progress)?;
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
        compression_rules: COMPRESSION_RULES,
        files,
    };
    write_atomic(&out.join(MANIFEST), &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"))?;
    remove_if_present(&out.join(SPLIT_PROGRESS))?;
    compressed.log(out);
    let written_files = names.len() - reused_files;
    Ok(SplitReport { manifest, reused_files, written_files, compressed })
}

/// Takes the store's write lock, waiting (and saying so) while another split holds it.
fn lock_store(out: &Path) -> Result<File> {
    let path = out.join(LOCK);
    let file =
        File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| EngineError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(store = %out.display(), "another split is writing this layer store; waiting for it");
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(EngineError::io(&path, e)),
    }
    file.lock().map_err(|e| EngineError::io(&path, e))?;
    Ok(file)
}

fn write_progress(out: &Path, progress: &Progress) -> Result<()> {
    write_atomic(&out.join(SPLIT_PROGRESS), &serde_json::to_vec_pretty(progress).expect("progress serializes"))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(EngineError::io(path, e)),
        _ => Ok(()),
    }
}

/// The files of a complete store that fail the reuse checks of the module doc, by name.
fn damaged_files(out: &Path, manifest: &Manifest, verify_all: bool) -> Vec<String> {
    let written_at = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let manifest_written = written_at(&out.join(MANIFEST)).unwrap_or(SystemTime::UNIX_EPOCH);
    manifest
        .files
        .iter()
        .filter(|entry| {
            if let Some(problem) = size_problem(out, entry) {
                tracing::warn!(store = %out.display(), "{problem}");
                return true;
            }
            let path = out.join(&entry.name);
            let touched = written_at(&path).is_none_or(|t| t > manifest_written);
            (verify_all || touched) && !checksum_matches(&path, entry)
        })
        .map(|entry| entry.name.clone())
        .collect()
}

fn checksum_matches(path: &Path, entry: &FileEntry) -> bool {
    std::fs::read(path).is_ok_and(|bytes| bytes.len() as u64 == entry.size && checksum(&bytes) == entry.checksum)
}

/// The files an interrupted split finished, each checked against its recorded size and checksum.
/// Only the files a store of this model has are taken from the record (it is a file, and any
/// name could be written into it).
fn resume_progress(out: &Path, fresh: Progress, names: &[String]) -> Progress {
    let path = out.join(SPLIT_PROGRESS);
    let Ok(text) = std::fs::read(&path) else {
        return fresh;
    };
    let Ok(mut progress) = serde_json::from_slice::<Progress>(&text) else {
        tracing::warn!("{}: unreadable, starting the split over", path.display());
        return fresh;
    };
    if !progress.same_target(&fresh) {
        tracing::info!("{}: an earlier split of another source or format, starting over", path.display());
        return fresh;
    }
    progress.files.retain(|entry| {
        let ok = names.contains(&entry.name) && checksum_matches(&out.join(&entry.name), entry);
        if !ok {
            tracing::warn!(file = %entry.name, "split: recorded file is missing, changed or unknown, writing it again");
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

/// Block scales or minima: F16 where every value is exactly an f16, else F32 (see [`super::quant`]).
fn scale_entry(shape: Vec<usize>, values: &[f32]) -> Entry {
    match as_f16s(values) {
        Some(halves) => {
            let bytes = halves.iter().flat_map(|v| v.to_le_bytes()).collect();
            Entry { dtype: safetensors::Dtype::F16, shape, bytes }
        }
        None => {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Entry { dtype: safetensors::Dtype::F32, shape, bytes }
        }
    }
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
    entries.insert(format!("{name}.scale"), scale_entry(blocks_shape.clone(), &quant.scale));
    if quant.scheme == QuantScheme::Int4 {
        entries.insert(format!("{name}.min"), scale_entry(blocks_shape, &quant.min));
    }
    entries.insert(format!("{name}.q"), Entry { dtype: q_dtype, shape: q_shape, bytes: quant.q });
}

/// The source's own blocks for a store that asked for `scheme`, where they convert exactly. An
/// int8 store also takes exact int4 blocks: the source's 4-bit values as they are beat the same
/// values rounded again to 8 bits (see the module doc).
fn exact_blocks(source: &dyn ModelSource, name: TensorName, scheme: QuantScheme) -> Result<Option<QuantTensor>> {
    if let Some(quant) = source.quantized_tensor(name, scheme)? {
        return Ok(Some(quant));
    }
    match scheme {
        QuantScheme::Int8 => source.quantized_tensor(name, QuantScheme::Int4),
        QuantScheme::Int4 => Ok(None),
    }
}

/// A tensor quantized for a `scheme` store: the source's own blocks where they convert exactly
/// ([`exact_blocks`]), else quantized from f32. The tensor as it is (`Err`) when its shape does not
/// split into blocks or its values do not quantize (not finite, or a scale beyond f16).
fn quantized(
    source: &dyn ModelSource,
    name: TensorName,
    scheme: QuantScheme,
    compressed: &mut CompressedTensors,
) -> Result<Result<QuantTensor, HostTensor>> {
    let block_type = source.block_type(name);
    let count = |counts: &mut BTreeMap<String, usize>, made: QuantScheme| {
        let from = block_type.as_deref().unwrap_or("source blocks");
        *counts.entry(format!("{from} -> {}", made.name())).or_default() += 1;
    };
    if let Some(quant) = exact_blocks(source, name, scheme)? {
        quant.check().map_err(|e| EngineError::Other(format!("{}: tensor {name:?}: {e}", source.describe())))?;
        count(&mut compressed.exact, quant.scheme);
        return Ok(Ok(quant));
    }
    let tensor = source.tensor(name)?;
    if !quantizable(&tensor.shape) {
        tracing::debug!(?name, shape = ?tensor.shape, "not a multiple of the block size, stored uncompressed");
        return Ok(Err(tensor));
    }
    match quantize(&tensor.to_f32(), &tensor.shape, scheme) {
        Ok(quant) => {
            if block_type.is_some() {
                count(&mut compressed.requantized, scheme);
            }
            Ok(Ok(quant))
        }
        Err(reason) => {
            tracing::warn!(?name, "{}: {reason}; stored uncompressed", source.describe());
            Ok(Err(tensor))
        }
    }
}

/// The bytes of one store file, built from the source.
fn file_bytes(
    source: &dyn ModelSource,
    name: &str,
    dtype: DType,
    options: &SplitOptions,
    compressed: &mut CompressedTensors,
) -> Result<Vec<u8>> {
    let spec = source.spec();
    let embed_head = options.quantize_embed_head.then_some(QuantScheme::Int8);
    let layer_scheme = options.compression.scheme();
    if name == TOKENIZER {
        let json = match source.tokenizer() {
            Ok(tokenizer) => tokenizer.to_string(false).map_err(|e| EngineError::Other(format!("tokenizer: {e}")))?,
            Err(EngineError::NoTokenizer { reason, .. }) => {
                tracing::warn!("{}: no tokenizer ({reason}); token ids can still be scored", source.describe());
                serde_json::json!({ NO_TOKENIZER: reason }).to_string()
            }
            Err(e) => return Err(e),
        };
        return Ok(json.into_bytes());
    }
    let tensors = file_tensors(name, spec).into_iter().map(|(store_name, tensor)| {
        let scheme = match tensor {
            TensorName::Embed | TensorName::LmHead => embed_head,
            TensorName::Layer(_, t) if t.is_linear() => layer_scheme,
            _ => None,
        };
        (store_name, tensor, scheme)
    });
    let mut entries = BTreeMap::new();
    for (store_name, tensor_name, scheme) in tensors {
        let plain = match scheme {
            None => source.tensor(tensor_name)?,
            Some(scheme) => match quantized(source, tensor_name, scheme, compressed)? {
                Ok(quant) => {
                    insert_quant(&mut entries, store_name, quant);
                    continue;
                }
                Err(plain) => plain,
            },
        };
        entries.insert(store_name.to_string(), Entry::from(plain.cast(dtype)));
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
