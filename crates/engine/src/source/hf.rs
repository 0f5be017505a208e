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

use super::{ModelSource, TensorName, apply_source, check_tensors, layer_index, picked_shape, tiktoken};
use crate::error::{EngineError, Result};
use crate::families::{self, Architecture, TensorSource};
use crate::fingerprint::FileHashes;
use crate::paths::safe_join;
use crate::spec::ModelSpec;
use crate::tensor::{DType, HostTensor};

pub struct HfSource {
    dir: PathBuf,
    family: &'static dyn Architecture,
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
        let family = families::detect(&config, &config_path)?;
        let spec = family.spec_from_config(&families::ConfigFields { config: &config, path: &config_path })?;
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
        let source = Self { dir: dir.to_path_buf(), family, spec, shards, index };
        check_tensors(&source)?;
        Ok(source)
    }

    /// Where the family keeps a canonical tensor (tied heads: the embedding).
    fn locate(&self, name: TensorName) -> Result<TensorSource> {
        let source = self.family.hf_tensor(name, &self.spec);
        if self.index.contains_key(&source.name) {
            return Ok(source);
        }
        if name == TensorName::LmHead && self.spec.tie_word_embeddings {
            return self.locate(TensorName::Embed);
        }
        Err(EngineError::MissingTensor { path: self.dir.clone(), name: source.name })
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

    /// `tokenizer.json`; without one, Qwen (v1)'s tiktoken `qwen.tiktoken`, converted to a
    /// byte-level BPE ([`tiktoken`]). ChatGLM's sentencepiece `tokenizer.model` (or
    /// `ice_text.model`) is not read: [`EngineError::NoTokenizer`] says so and what to provide.
    fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let path = self.dir.join("tokenizer.json");
        if !path.is_file() {
            let vocab_file = self.dir.join(tiktoken::QWEN_FILE);
            if vocab_file.is_file() {
                return tiktoken::qwen_tokenizer(&vocab_file);
            }
            return Err(EngineError::NoTokenizer { model: self.describe(), reason: missing_tokenizer(&self.dir) });
        }
        tokenizers::Tokenizer::from_file(&path).map_err(|e| EngineError::format(&path, e.to_string()))
    }

    fn tensor(&self, name: TensorName) -> Result<HostTensor> {
        let source = self.locate(name)?;
        let entry = self.entry(&source.name)?;
        let shard = &self.shards[entry.shard];
        let tensors =
            SafeTensors::deserialize(&shard.mmap).map_err(|e| EngineError::format(&shard.path, e.to_string()))?;
        let view = tensors.tensor(&source.name).map_err(|e| EngineError::format(&shard.path, e.to_string()))?;
        let dtype = DType::from_safetensors(view.dtype()).expect("dtype checked by entry()");
        picked_shape(&source, view.shape()).map_err(|e| EngineError::format(&shard.path, e))?;
        let whole = HostTensor { dtype, shape: view.shape().to_vec(), bytes: view.data().to_vec() };
        Ok(apply_source(&source, whole))
    }

    fn tensor_shape(&self, name: TensorName) -> Result<(String, Vec<usize>)> {
        let source = self.locate(name)?;
        let entry = self.entry(&source.name)?;
        let shape =
            picked_shape(&source, &entry.shape).map_err(|e| EngineError::format(&self.shards[entry.shard].path, e))?;
        Ok((source.name, shape))
    }

    /// Layers are counted by the family's naming of layer tensors (`model.layers.N.`, ...).
    fn layers_present(&self) -> usize {
        let first = self.family.hf_tensor(TensorName::Layer(0, super::LayerTensor::AttnNorm), &self.spec).name;
        let Some(prefix) = first.split_once(".0.").map(|(prefix, _)| format!("{prefix}.")) else {
            return 0;
        };
        self.index.keys().filter_map(|name| layer_index(name, &prefix)).map(|i| i + 1).max().unwrap_or(0)
    }

    /// config.json, tokenizer.json (or qwen.tiktoken), the shard index and every shard, every byte.
    fn fingerprint(&self, hashes: &FileHashes) -> Result<String> {
        let listed =
            ["config.json", "tokenizer.json", tiktoken::QWEN_FILE, SHARD_INDEX].map(|name| self.dir.join(name));
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

/// Why a folder without `tokenizer.json` has no tokenizer here, and what to provide.
fn missing_tokenizer(dir: &Path) -> String {
    let other = ["tokenizer.model", "ice_text.model"].into_iter().find(|name| dir.join(name).is_file());
    let found = match other {
        Some(name) => format!("it ships {name}, which this build does not read"),
        None => "the folder has no tokenizer.json".into(),
    };
    format!(
        "{found}; put a Hugging Face tokenizer.json for this model in the folder (transformers writes one with \
         `AutoTokenizer.from_pretrained(...).save_pretrained(...)` for tokenizers it can convert), or score token \
         ids (`airllm-eval logits --ids`)"
    )
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
