//! Opening a layer store and reading its files, each checked against the manifest.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;
use safetensors::SafeTensors;

use super::manifest::{FileEntry, Manifest};
use super::quant::{self, QuantScheme, QuantTensor};
use super::{TOKENIZER, checksum, file_tensors, layer_file};
use crate::error::{EngineError, Result};
use crate::source::LayerTensor;
use crate::tensor::{DType, HostTensor};

/// A verified layer store.
pub struct LayerStore {
    dir: PathBuf,
    manifest: Manifest,
    bytes_read: AtomicU64,
}

/// The key of the tokenizer file of a store whose source had no tokenizer.
pub(crate) const NO_TOKENIZER: &str = "no_tokenizer";

/// A tensor as a store file holds it: floats in their own dtype, or int8/int4 blocks. A device
/// receives it in this form where it can (`model::upload`); host code reads it as f32.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredTensor {
    Float(HostTensor),
    Quantized(QuantTensor),
}

impl StoredTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            StoredTensor::Float(tensor) => &tensor.shape,
            StoredTensor::Quantized(tensor) => &tensor.shape,
        }
    }

    /// Its values as f32 (dequantized, for quantized tensors).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            StoredTensor::Float(tensor) => tensor.to_f32(),
            StoredTensor::Quantized(tensor) => quant::dequantize(tensor),
        }
    }
}

/// One layer's tensors in host memory, as the store holds them.
pub struct LayerHost {
    pub index: usize,
    pub tensors: HashMap<LayerTensor, StoredTensor>,
}

impl LayerHost {
    /// Every tensor as (shape, f32 values).
    pub fn into_f32(self) -> HashMap<LayerTensor, (Vec<usize>, Vec<f32>)> {
        self.tensors.into_iter().map(|(name, tensor)| (name, (tensor.shape().to_vec(), tensor.to_f32()))).collect()
    }
}

impl LayerStore {
    pub fn is_store(dir: &Path) -> bool {
        dir.join(super::MANIFEST).is_file()
    }

    /// Opens a store, checking that every file of the manifest is there with its recorded size
    /// and that every tensor has the shape the spec calls for (from the files' headers only).
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let store_error = |message: String| EngineError::Store { dir: dir.to_path_buf(), message };
        for entry in &manifest.files {
            if let Some(problem) = size_problem(dir, entry) {
                return Err(store_error(format!("{problem}; split the model again")));
            }
            let tensors = file_tensors(&entry.name, &manifest.spec);
            if tensors.is_empty() {
                continue;
            }
            let path = dir.join(&entry.name);
            let header = read_header(&path, entry.size)?;
            for (stored_name, tensor) in tensors {
                let expected = tensor.expected_shape(&manifest.spec);
                match stored_shape(&header, stored_name) {
                    Some(found) if found == expected => {}
                    Some(found) => {
                        return Err(store_error(format!(
                            "{}: tensor {stored_name} has shape {found:?}, the spec needs {expected:?}; split the model again",
                            entry.name
                        )));
                    }
                    None => return Err(EngineError::MissingTensor { path, name: stored_name.to_string() }),
                }
            }
        }
        Ok(Self { dir: dir.to_path_buf(), manifest, bytes_read: AtomicU64::new(0) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Reads a whole file and checks it against the manifest's checksum.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        let entry = self.manifest.entry(name).ok_or_else(|| EngineError::Store {
            dir: self.dir.clone(),
            message: format!("{name} is not in the manifest"),
        })?;
        let path = self.dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
        self.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() as u64 != entry.size || checksum(&bytes) != entry.checksum {
            return Err(EngineError::Store {
                dir: self.dir.clone(),
                message: format!(
                    "{name} is corrupted (checksum mismatch); split the model again \
                     (`airllm-eval split` checks every file of a store and rewrites the damaged ones)"
                ),
            });
        }
        Ok(bytes)
    }

    /// The store's tokenizer; [`EngineError::NoTokenizer`] where its source had none.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let bytes = self.read_file(TOKENIZER)?;
        if let Ok(serde_json::Value::Object(marker)) = serde_json::from_slice(&bytes)
            && let Some(reason) = marker.get(NO_TOKENIZER).and_then(serde_json::Value::as_str)
        {
            return Err(EngineError::NoTokenizer { model: self.dir.display().to_string(), reason: reason.into() });
        }
        tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| EngineError::format(self.dir.join(TOKENIZER), e.to_string()))
    }

    /// Reads the named tensors of a file as f32 (in the order asked); block-quantized tensors
    /// (`NAME.q`, `NAME.scale`, ...) are dequantized.
    pub fn read_tensors(&self, file: &str, names: &[&str]) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
        // Float tensors convert straight from the file's bytes: no copy of them first (the
        // embedding table is read at the start of every wave).
        self.read_views(file, names, |view| match view {
            View::Float { dtype, shape, bytes } => (shape.to_vec(), crate::tensor::floats(dtype, bytes)),
            View::Quantized(tensor) => (tensor.shape().to_vec(), tensor.to_f32()),
        })
    }

    /// Reads the named tensors of a file (in the order asked) as the file holds them; a
    /// block-quantized tensor is its `NAME.q`, `NAME.scale` (and `NAME.min`), checked.
    pub fn read_stored(&self, file: &str, names: &[&str]) -> Result<Vec<StoredTensor>> {
        self.read_views(file, names, |view| match view {
            View::Float { dtype, shape, bytes } => {
                StoredTensor::Float(HostTensor { dtype, shape: shape.to_vec(), bytes: bytes.to_vec() })
            }
            View::Quantized(tensor) => tensor,
        })
    }

    /// Reads a file (checking it) and hands each named tensor to `take`, in the order asked.
    fn read_views<T>(&self, file: &str, names: &[&str], take: impl Fn(View) -> T) -> Result<Vec<T>> {
        let bytes = self.read_file(file)?;
        let path = self.dir.join(file);
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| EngineError::format(&path, e.to_string()))?;
        names
            .iter()
            .map(|name| {
                let Ok(view) = tensors.tensor(name) else {
                    return read_quantized(&tensors, name, &path).map(|tensor| take(View::Quantized(tensor)));
                };
                let dtype = DType::from_safetensors(view.dtype())
                    .ok_or_else(|| EngineError::format(&path, format!("tensor {name}: dtype {:?}", view.dtype())))?;
                Ok(take(View::Float { dtype, shape: view.shape(), bytes: view.data() }))
            })
            .collect()
    }

    /// The bytes each named tensor of a file takes on disk (quantized tensors: all their parts),
    /// without checking the file's checksum. For reports.
    pub fn tensor_sizes(&self, file: &str) -> Result<Vec<(String, usize)>> {
        let path = self.dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| EngineError::format(&path, e.to_string()))?;
        let mut sizes: Vec<(String, usize)> = tensors.tensors().into_iter().map(|(n, v)| (n, v.data().len())).collect();
        sizes.sort();
        Ok(sizes)
    }

    pub fn read_layer(&self, index: usize) -> Result<LayerHost> {
        let present: Vec<LayerTensor> = LayerTensor::present(&self.manifest.spec).collect();
        let names: Vec<&str> = present.iter().map(|t| t.store_name()).collect();
        let values = self.read_stored(&layer_file(index), &names)?;
        Ok(LayerHost { index, tensors: present.into_iter().zip(values).collect() })
    }
}

/// Why a store file does not match its manifest entry by a cheap look (missing, not a file, or
/// another size); `None` when it looks right.
pub(crate) fn size_problem(dir: &Path, entry: &FileEntry) -> Option<String> {
    let name = &entry.name;
    match std::fs::metadata(dir.join(name)) {
        Err(e) => Some(format!("{name}: {e}")),
        Ok(meta) if !meta.is_file() => Some(format!("{name} is not a file")),
        Ok(meta) if meta.len() != entry.size => {
            Some(format!("{name} has {} bytes, the manifest says {}", meta.len(), entry.size))
        }
        Ok(_) => None,
    }
}

/// A safetensors file's header: tensor name -> (dtype name, shape). Reads only the header, whose
/// length is checked against the file's size before anything is allocated.
fn read_header(path: &Path, file_size: u64) -> Result<serde_json::Map<String, serde_json::Value>> {
    let bad = |message: String| EngineError::format(path, message);
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| EngineError::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > file_size.saturating_sub(8) {
        return Err(bad(format!("safetensors header of {len} bytes does not fit in a file of {file_size}")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header: {e}")))
}

/// The shape of a stored tensor as the model sees it: `NAME`'s, or for a block-quantized tensor
/// the shape its `NAME.q` encodes (int4 packs two values a byte). `None` when neither is there.
fn stored_shape(header: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<Vec<usize>> {
    let shape_of = |key: &str| -> Option<(String, Vec<usize>)> {
        let info = header.get(key)?;
        let dtype = info["dtype"].as_str()?.to_string();
        let shape = info["shape"].as_array()?.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<_>>()?;
        Some((dtype, shape))
    };
    if let Some((_, shape)) = shape_of(name) {
        return Some(shape);
    }
    match shape_of(&format!("{name}.q"))? {
        (dtype, shape) if dtype == "U8" && shape.len() == 2 => Some(vec![shape[0], shape[1].checked_mul(2)?]),
        (_, shape) => Some(shape),
    }
}

/// A tensor of a file as read: a float tensor's bytes where they lie in the file, or a
/// block-quantized tensor gathered from its parts.
enum View<'a> {
    Float { dtype: DType, shape: &'a [usize], bytes: &'a [u8] },
    Quantized(StoredTensor),
}

/// Reads `NAME.q`, `NAME.scale` (and `NAME.min`); `NAME` missing altogether is a
/// `MissingTensor` error. Every size is checked, so a malformed file is an error, not a panic.
fn read_quantized(tensors: &SafeTensors, name: &str, path: &Path) -> Result<StoredTensor> {
    let q = tensors
        .tensor(&format!("{name}.q"))
        .map_err(|_| EngineError::MissingTensor { path: path.to_path_buf(), name: name.to_string() })?;
    let bad = |message: String| EngineError::format(path, format!("quantized tensor {name}: {message}"));
    let (scheme, shape) = match (q.dtype(), q.shape()) {
        (safetensors::Dtype::I8, &[rows, cols]) => (QuantScheme::Int8, vec![rows, cols]),
        (safetensors::Dtype::U8, &[rows, half]) => (QuantScheme::Int4, vec![rows, 2 * half]),
        (dtype, shape) => return Err(bad(format!("{name}.q is {dtype:?} {shape:?}, expected I8 or U8 and 2-D"))),
    };
    // Block scales and minima: F16, or F32 where the split kept values that are not f16s.
    let float_part = |part: &str| -> Result<Vec<f32>> {
        let view = tensors
            .tensor(&format!("{name}.{part}"))
            .map_err(|_| EngineError::MissingTensor { path: path.to_path_buf(), name: format!("{name}.{part}") })?;
        let data = view.data();
        match view.dtype() {
            safetensors::Dtype::F16 => {
                Ok(data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
            }
            safetensors::Dtype::F32 => {
                Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            dtype => Err(bad(format!(
                "{name}.{part} is {dtype:?}, expected F16 or F32 (block scales and minima); split the model again"
            ))),
        }
    };
    let scale = float_part("scale")?;
    let min = if scheme == QuantScheme::Int4 { float_part("min")? } else { vec![] };
    let quant = QuantTensor { scheme, shape, q: q.data().to_vec(), scale, min };
    quant.check().map_err(bad)?;
    Ok(StoredTensor::Quantized(quant))
}
