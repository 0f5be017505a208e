//! Opening a layer store and reading its files, each checked against the manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;
use safetensors::SafeTensors;

use super::manifest::Manifest;
use super::quant::{self, QuantScheme, QuantTensor};
use super::{TOKENIZER, checksum, layer_file};
use crate::error::{EngineError, Result};
use crate::source::LayerTensor;
use crate::tensor::{DType, HostTensor};

/// A verified layer store.
pub struct LayerStore {
    dir: PathBuf,
    manifest: Manifest,
    bytes_read: AtomicU64,
}

/// One layer's tensors in host memory, as f32 values ready for a device.
pub struct LayerHost {
    pub index: usize,
    pub tensors: HashMap<LayerTensor, (Vec<usize>, Vec<f32>)>,
}

impl LayerStore {
    pub fn is_store(dir: &Path) -> bool {
        dir.join(super::MANIFEST).is_file()
    }

    /// Opens a store, checking that every file of the manifest is there with its recorded size.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        for entry in &manifest.files {
            let path = dir.join(&entry.name);
            let size = std::fs::metadata(&path).map_err(|e| EngineError::io(&path, e))?.len();
            if size != entry.size {
                return Err(EngineError::Store {
                    dir: dir.to_path_buf(),
                    message: format!(
                        "{} has {size} bytes, the manifest says {}; split the model again",
                        entry.name, entry.size
                    ),
                });
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
                message: format!("{name} is corrupted (checksum mismatch); split the model again"),
            });
        }
        Ok(bytes)
    }

    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let bytes = self.read_file(TOKENIZER)?;
        tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| EngineError::format(self.dir.join(TOKENIZER), e.to_string()))
    }

    /// Reads the named tensors of a file as f32 (in the order asked); block-quantized tensors
    /// (`NAME.q`, `NAME.scale`, ...) are dequantized.
    pub fn read_tensors(&self, file: &str, names: &[&str]) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
        let bytes = self.read_file(file)?;
        let path = self.dir.join(file);
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| EngineError::format(&path, e.to_string()))?;
        names
            .iter()
            .map(|name| {
                let Ok(view) = tensors.tensor(name) else {
                    return read_quantized(&tensors, name, &path);
                };
                let dtype = DType::from_safetensors(view.dtype())
                    .ok_or_else(|| EngineError::format(&path, format!("tensor {name}: dtype {:?}", view.dtype())))?;
                let host = HostTensor { dtype, shape: view.shape().to_vec(), bytes: view.data().to_vec() };
                Ok((host.shape.clone(), host.to_f32()))
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
        let values = self.read_tensors(&layer_file(index), &names)?;
        Ok(LayerHost { index, tensors: present.into_iter().zip(values).collect() })
    }
}

/// Reads `NAME.q`, `NAME.scale` (and `NAME.min`) and dequantizes them; `NAME` missing altogether
/// is a `MissingTensor` error. Every size is checked, so a malformed file is an error, not a panic.
fn read_quantized(tensors: &SafeTensors, name: &str, path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let q = tensors
        .tensor(&format!("{name}.q"))
        .map_err(|_| EngineError::MissingTensor { path: path.to_path_buf(), name: name.to_string() })?;
    let bad = |message: String| EngineError::format(path, format!("quantized tensor {name}: {message}"));
    let (scheme, shape) = match (q.dtype(), q.shape()) {
        (safetensors::Dtype::I8, &[rows, cols]) => (QuantScheme::Int8, vec![rows, cols]),
        (safetensors::Dtype::U8, &[rows, half]) => (QuantScheme::Int4, vec![rows, 2 * half]),
        (dtype, shape) => return Err(bad(format!("{name}.q is {dtype:?} {shape:?}, expected I8 or U8 and 2-D"))),
    };
    let f16_part = |part: &str| -> Result<Vec<f16>> {
        let view = tensors
            .tensor(&format!("{name}.{part}"))
            .map_err(|_| EngineError::MissingTensor { path: path.to_path_buf(), name: format!("{name}.{part}") })?;
        if view.dtype() != safetensors::Dtype::F16 {
            return Err(bad(format!(
                "{name}.{part} is {:?}, expected F16 (block scales and minima are f16); split the model again",
                view.dtype()
            )));
        }
        Ok(view.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect())
    };
    let scale = f16_part("scale")?;
    let min = if scheme == QuantScheme::Int4 { f16_part("min")? } else { vec![] };
    let quant = QuantTensor { scheme, shape, q: q.data().to_vec(), scale, min };
    quant.check().map_err(bad)?;
    let values = quant::dequantize(&quant);
    Ok((quant.shape, values))
}
