//! Hugging Face directory source: `config.json`, `tokenizer.json`, and `model.safetensors` or
//! shards listed in `model.safetensors.index.json`. Weights may be f32, f16 or bf16; they are
//! memory-mapped and copied out one tensor at a time.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use serde_json::Value;

use super::{ModelSource, TensorName};
use crate::error::{EngineError, Result};
use crate::families;
use crate::spec::ModelSpec;
use crate::tensor::{DType, HostTensor};

pub struct HfSource {
    dir: PathBuf,
    spec: ModelSpec,
    shards: Vec<Shard>,
    /// Tensor name -> index into `shards`.
    index: HashMap<String, usize>,
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

impl HfSource {
    pub fn is_hf_dir(path: &Path) -> bool {
        path.join("config.json").is_file()
    }

    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: Value = read_json(&config_path)?;
        let spec = families::spec_from_config(&config, &config_path)?;
        let shard_names = shard_files(dir)?;
        let mut shards = Vec::with_capacity(shard_names.len());
        let mut index = HashMap::new();
        for name in shard_names {
            let path = dir.join(&name);
            let file = File::open(&path).map_err(|e| EngineError::io(&path, e))?;
            // SAFETY: the file is opened read-only; a concurrent writer would be a user error
            // that safetensors' bounds checks turn into a parse error, not undefined reads.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(&path, e))?;
            let tensors = SafeTensors::deserialize(&mmap).map_err(|e| EngineError::format(&path, e.to_string()))?;
            for tensor_name in tensors.names() {
                index.insert(tensor_name.to_string(), shards.len());
            }
            shards.push(Shard { path, mmap });
        }
        Ok(Self { dir: dir.to_path_buf(), spec, shards, index })
    }

    fn hf_tensor(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        let Some(&shard_index) = self.index.get(hf_name) else {
            return Ok(None);
        };
        let shard = &self.shards[shard_index];
        let tensors =
            SafeTensors::deserialize(&shard.mmap).map_err(|e| EngineError::format(&shard.path, e.to_string()))?;
        let view = tensors.tensor(hf_name).map_err(|e| EngineError::format(&shard.path, e.to_string()))?;
        let dtype = DType::from_safetensors(view.dtype()).ok_or_else(|| {
            EngineError::format(
                &shard.path,
                format!("tensor {hf_name}: dtype {:?} is not supported (f32, f16, bf16)", view.dtype()),
            )
        })?;
        Ok(Some(HostTensor { dtype, shape: view.shape().to_vec(), bytes: view.data().to_vec() }))
    }
}

impl ModelSource for HfSource {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let path = self.dir.join("tokenizer.json");
        tokenizers::Tokenizer::from_file(&path).map_err(|e| EngineError::format(&path, e.to_string()))
    }

    fn tensor(&self, name: TensorName) -> Result<HostTensor> {
        let hf_name = families::hf_tensor_name(name);
        if let Some(tensor) = self.hf_tensor(&hf_name)? {
            return Ok(tensor);
        }
        if name == TensorName::LmHead && self.spec.tie_word_embeddings {
            return self.tensor(TensorName::Embed);
        }
        Err(EngineError::MissingTensor { path: self.dir.clone(), name: hf_name })
    }

    fn fingerprint(&self) -> Result<String> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for shard in &self.shards {
            hasher.update(shard.path.file_name().unwrap_or_default().as_encoded_bytes());
            hasher.update(&(shard.mmap.len() as u64).to_le_bytes());
            // The safetensors header holds every tensor's name, dtype and offsets.
            let header_len = shard.mmap.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
            let end = (8 + header_len as usize).min(shard.mmap.len());
            hasher.update(&shard.mmap[..end]);
        }
        hasher.update(std::fs::read(self.dir.join("config.json")).unwrap_or_default().as_slice());
        Ok(format!("{:016x}", hasher.digest()))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EngineError::format(path, format!("invalid JSON: {e}")))
}

/// The weight files: the shards named by the index, or the single `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<String>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let index = read_json(&index_path)?;
        let map = index["weight_map"]
            .as_object()
            .ok_or_else(|| EngineError::format(&index_path, "field `weight_map` is missing or not an object"))?;
        let mut files: Vec<String> = map.values().filter_map(Value::as_str).map(String::from).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    if dir.join("model.safetensors").is_file() {
        return Ok(vec!["model.safetensors".into()]);
    }
    Err(EngineError::format(
        dir,
        "no model.safetensors or model.safetensors.index.json (only safetensors weights are read, never pickle)",
    ))
}
