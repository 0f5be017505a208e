//! Hugging Face directory source: `config.json`, `tokenizer.json`, and `model.safetensors` or
//! shards listed in `model.safetensors.index.json`. Weights may be f32, f16 or bf16; they are
//! memory-mapped and copied out one tensor at a time. Shard names from the index are joined with
//! [`safe_join`], so an index cannot point outside the model folder.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use serde_json::Value;

use super::{ModelSource, TensorName, check_tensors, layer_index};
use crate::error::{EngineError, Result};
use crate::families;
use crate::fingerprint::FileHashes;
use crate::paths::safe_join;
use crate::spec::ModelSpec;
use crate::tensor::{DType, HostTensor};

pub struct HfSource {
    dir: PathBuf,
    spec: ModelSpec,
    shards: Vec<Shard>,
    /// Tensor name -> where it is and what it is.
    index: HashMap<String, IndexEntry>,
}

struct IndexEntry {
    shard: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
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
            // shard_files checked the name.
            let path = dir.join(&name);
            let file = File::open(&path).map_err(|e| EngineError::io(&path, e))?;
            // SAFETY: the file is opened read-only; a concurrent writer would be a user error
            // that safetensors' bounds checks turn into a parse error, not undefined reads.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(&path, e))?;
            let tensors = SafeTensors::deserialize(&mmap).map_err(|e| EngineError::format(&path, e.to_string()))?;
            for (tensor_name, view) in tensors.tensors() {
                let entry = IndexEntry { shard: shards.len(), dtype: view.dtype(), shape: view.shape().to_vec() };
                index.insert(tensor_name, entry);
            }
            shards.push(Shard { path, mmap });
        }
        let source = Self { dir: dir.to_path_buf(), spec, shards, index };
        check_tensors(&source)?;
        Ok(source)
    }

    /// The Hugging Face name a canonical tensor is stored under (tied heads: the embedding's).
    fn hf_name(&self, name: TensorName) -> Result<String> {
        let hf_name = families::hf_tensor_name(name);
        if self.index.contains_key(&hf_name) {
            return Ok(hf_name);
        }
        if name == TensorName::LmHead && self.spec.tie_word_embeddings {
            return self.hf_name(TensorName::Embed);
        }
        Err(EngineError::MissingTensor { path: self.dir.clone(), name: hf_name })
    }

    /// The entry of a tensor whose dtype this source reads.
    fn entry(&self, hf_name: &str) -> Result<&IndexEntry> {
        let entry = &self.index[hf_name];
        if DType::from_safetensors(entry.dtype).is_none() {
            let path = &self.shards[entry.shard].path;
            let message = format!("tensor {hf_name}: dtype {:?} is not supported (f32, f16, bf16)", entry.dtype);
            return Err(EngineError::format(path, message));
        }
        Ok(entry)
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
        let hf_name = self.hf_name(name)?;
        let entry = self.entry(&hf_name)?;
        let shard = &self.shards[entry.shard];
        let tensors =
            SafeTensors::deserialize(&shard.mmap).map_err(|e| EngineError::format(&shard.path, e.to_string()))?;
        let view = tensors.tensor(&hf_name).map_err(|e| EngineError::format(&shard.path, e.to_string()))?;
        let dtype = DType::from_safetensors(view.dtype()).expect("dtype checked by entry()");
        Ok(HostTensor { dtype, shape: view.shape().to_vec(), bytes: view.data().to_vec() })
    }

    fn tensor_shape(&self, name: TensorName) -> Result<(String, Vec<usize>)> {
        let hf_name = self.hf_name(name)?;
        let shape = self.entry(&hf_name)?.shape.clone();
        Ok((hf_name, shape))
    }

    fn layers_present(&self) -> usize {
        self.index.keys().filter_map(|name| layer_index(name, "model.layers.")).map(|i| i + 1).max().unwrap_or(0)
    }

    /// config.json, tokenizer.json, the shard index and every shard, every byte.
    fn fingerprint(&self, hashes: &FileHashes) -> Result<String> {
        let listed = ["config.json", "tokenizer.json", SHARD_INDEX].map(|name| self.dir.join(name));
        let files: Vec<PathBuf> = listed
            .into_iter()
            .filter(|path| path.is_file())
            .chain(self.shards.iter().map(|shard| shard.path.clone()))
            .collect();
        hashes.fingerprint(&files)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EngineError::format(path, format!("invalid JSON: {e}")))
}

const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The weight files: the distinct shards named by the index (sorted), or the single
/// `model.safetensors`. A shard name that is not a plain relative path is refused.
pub fn shard_files(dir: &Path) -> Result<Vec<String>> {
    let index_path = dir.join(SHARD_INDEX);
    if index_path.is_file() {
        let index = read_json(&index_path)?;
        let map = index["weight_map"]
            .as_object()
            .ok_or_else(|| EngineError::format(&index_path, "field `weight_map` is missing or not an object"))?;
        let mut files: Vec<String> = map.values().filter_map(Value::as_str).map(String::from).collect();
        files.sort();
        files.dedup();
        for name in &files {
            safe_join(dir, name).map_err(|e| EngineError::format(&index_path, e.to_string()))?;
        }
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
