//! GGUF model source: llama.cpp's single-file format, memory-mapped and read one tensor at a time.
//!
//! The spec comes from the `{arch}.*` metadata, the tokenizer from `tokenizer.ggml.*` (see
//! [`tokenizer`]), and each tensor is dequantized to f32 ([`dequant`]) and given back in Hugging
//! Face layout: row-major shape (GGUF lists dimensions innermost first) and, for llama/mistral, the
//! Q/K row order of the original checkpoint (llama.cpp's converter permutes those rows).

pub mod convert;
pub mod dequant;
pub mod kquants;
pub mod reader;
pub mod tokenizer;

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::{ModelSource, TensorName, apply_source, check_tensors, layer_index, picked_shape};
use crate::error::{EngineError, Result};
use crate::families::{self, Architecture, TensorSource, Transform};
use crate::fingerprint::FileHashes;
use crate::spec::{ModelSpec, RopeScaling};
use crate::store::quant::{QuantScheme, QuantTensor};
use crate::tensor::HostTensor;
use dequant::GgmlType;
use reader::{GgufHeader, TensorInfo, Value};

pub struct GgufSource {
    mmap: Mmap,
    header: GgufHeader,
    family: &'static dyn Architecture,
    spec: ModelSpec,
}

impl GgufSource {
    /// A string of the file's metadata, if it has that key.
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        self.header.str(key).ok()
    }

    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        // SAFETY: the file is opened read-only; a concurrent writer would be a user error, and
        // every access goes through the bounds checked at parse time, not through raw pointers.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        let header = GgufHeader::parse(&mmap, path)?;
        let (family, spec) = build_spec(&header)?;
        let source = Self { mmap, header, family, spec };
        check_tensors(&source)?;
        Ok(source)
    }

    /// The parsed header: version, metadata and tensor infos.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// A tensor by its llama.cpp name, dequantized to f32, in row-major shape, without any
    /// un-permutation.
    pub fn raw_tensor(&self, gguf_name: &str) -> Result<HostTensor> {
        let info = self.header.tensor(gguf_name).ok_or_else(|| self.missing(gguf_name))?;
        let values = self.dequantize(info)?;
        Ok(HostTensor::from_f32(info.shape(), &values))
    }

    fn missing(&self, gguf_name: &str) -> EngineError {
        EngineError::MissingTensor { path: self.header.path.clone(), name: gguf_name.to_string() }
    }

    fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let data = &self.mmap[info.start..info.start + info.len];
        dequant::dequantize(info.ggml_type, data).ok_or_else(|| self.unsupported_type(info))
    }

    fn unsupported_type(&self, info: &TensorInfo) -> EngineError {
        self.header.error(format!(
            "tensor {} has ggml type {}, which is not supported (supported: {})",
            info.name,
            info.ggml_type.name,
            GgmlType::supported_names()
        ))
    }

    /// Where the family keeps a canonical tensor, and its info (`LmHead` of a tied model: the
    /// embedding). Picked rows are checked against the tensor's shape.
    fn locate(&self, name: TensorName) -> Result<(TensorSource, &TensorInfo)> {
        let mut source = self.family.gguf_tensor(name, &self.spec);
        if name == TensorName::LmHead && self.header.tensor(&source.name).is_none() {
            source = self.family.gguf_tensor(TensorName::Embed, &self.spec);
        }
        let info = self.header.tensor(&source.name).ok_or_else(|| self.missing(&source.name))?;
        picked_shape(&source, &info.shape()).map_err(|e| self.header.error(e))?;
        Ok((source, info))
    }
}

/// Builds the spec from `general.architecture` and the `{arch}.*` hyperparameters.
fn build_spec(header: &GgufHeader) -> Result<(&'static dyn Architecture, ModelSpec)> {
    let arch = header.str("general.architecture")?;
    let family = families::by_gguf_architecture(arch).ok_or_else(|| EngineError::UnsupportedArchitecture {
        path: header.path.clone(),
        found: format!("{arch:?}"),
        supported: format!("{} (GGUF `general.architecture`)", families::supported_gguf()),
    })?;
    if header.tensor("rope_freqs.weight").is_some() {
        return Err(header.error(
            "tensor rope_freqs.weight (llama3 rope scaling) is present; GGUF rope frequency factors are not supported yet".into(),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden_size = header.usize(&key("embedding_length"))?;
    let num_heads = header.usize(&key("attention.head_count"))?;
    if num_heads == 0 {
        return Err(header.error(format!("metadata {} is 0", key("attention.head_count"))));
    }
    let mut spec = ModelSpec {
        family: family.name().into(),
        vocab_size: vocab_size(header, arch)?,
        hidden_size,
        intermediate_size: header.usize(&key("feed_forward_length"))?,
        num_layers: header.usize(&key("block_count"))?,
        num_heads,
        num_kv_heads: header.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(num_heads),
        head_dim: header.opt_usize(&key("attention.key_length"))?.unwrap_or(hidden_size / num_heads),
        rms_norm_eps: header.opt_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
        rope_theta: header.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
        rope_scaling: rope_scaling(header, arch)?,
        sliding_window: header.opt_usize(&key("attention.sliding_window"))?,
        tie_word_embeddings: header.tensor("output.weight").is_none(),
        max_position_embeddings: header.opt_usize(&key("context_length"))?.unwrap_or(4096),
        bos_token_id: header.opt_usize("tokenizer.ggml.bos_token_id")?.map(|v| v as u32),
        eos_token_id: header.opt_usize("tokenizer.ggml.eos_token_id")?.map(|v| v as u32),
        ..ModelSpec::default()
    };
    family.gguf_quirks(&mut spec, &|name| header.tensor(name).is_some());
    Ok((family, spec))
}

/// `{arch}.vocab_size`, else the token list's length, else `token_embd.weight`'s row count.
fn vocab_size(header: &GgufHeader, arch: &str) -> Result<usize> {
    if let Some(n) = header.opt_usize(&format!("{arch}.vocab_size"))? {
        return Ok(n);
    }
    if let Some(tokens) = header.metadata.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
        return Ok(tokens.len());
    }
    let embed = header.tensor("token_embd.weight");
    let embed = embed.ok_or_else(|| {
        header.error(format!("no vocabulary size: no {arch}.vocab_size, tokens or token_embd.weight"))
    })?;
    Ok(embed.shape()[0])
}

/// `{arch}.rope.scaling.type`: linear is supported; yarn and others are refused rather than
/// ignored, since ignoring them would silently give wrong logits.
fn rope_scaling(header: &GgufHeader, arch: &str) -> Result<Option<RopeScaling>> {
    let type_key = format!("{arch}.rope.scaling.type");
    match header.metadata.get(&type_key).and_then(Value::as_str) {
        None | Some("none") => Ok(None),
        Some("linear") => {
            let factor = header.opt_f64(&format!("{arch}.rope.scaling.factor"))?.unwrap_or(1.0);
            Ok((factor != 1.0).then_some(RopeScaling::Linear { factor }))
        }
        Some(other) => Err(header.error(format!("{type_key} {other:?} is not supported (supported: none, linear)"))),
    }
}

impl ModelSource for GgufSource {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        tokenizer::build(&self.header.metadata, &self.header.path)
    }

    fn tensor(&self, name: TensorName) -> Result<HostTensor> {
        let (source, info) = self.locate(name)?;
        let values = self.dequantize(info)?;
        Ok(apply_source(&source, HostTensor::from_f32(info.shape(), &values)))
    }

    /// The name, and an error for a type [`dequant`] does not read: checked for every tensor
    /// when the file is opened, before a split writes anything.
    fn tensor_shape(&self, name: TensorName) -> Result<(String, Vec<usize>)> {
        let (source, info) = self.locate(name)?;
        if !info.ggml_type.is_supported() {
            return Err(self.unsupported_type(info));
        }
        Ok((info.name.clone(), picked_shape(&source, &info.shape()).expect("checked by locate")))
    }

    fn layers_present(&self) -> usize {
        self.header.tensors.iter().filter_map(|t| layer_index(&t.name, "blk.")).map(|i| i + 1).max().unwrap_or(0)
    }

    fn fingerprint(&self, hashes: &FileHashes) -> Result<String> {
        hashes.fingerprint(std::slice::from_ref(&self.header.path))
    }

    fn describe(&self) -> String {
        self.header.path.display().to_string()
    }

    /// The blocks of the tensors whose type converts exactly ([`convert`]: Q8_0 and Q5_0 as int8;
    /// Q4_0, Q4_1 and Q4_K as int4): the store decodes them to ggml's dequantized f32 values. A
    /// tensor with a block scale or minimum that is not finite is not handed over (`None`): the
    /// split quantizes its f32 values, or stores it uncompressed.
    /// Rows are picked (un-permuted) as in [`ModelSource::tensor`]: the pick moves whole rows, so
    /// it moves whole rows of blocks. A tensor with a value transform is not handed over.
    fn quantized_tensor(&self, name: TensorName, scheme: QuantScheme) -> Result<Option<QuantTensor>> {
        let (source, info) = self.locate(name)?;
        if source.transform != Transform::None {
            return Ok(None);
        }
        let shape = info.shape();
        let data = &self.mmap[info.start..info.start + info.len];
        let Some(mut quant) = convert::exact_blocks(info.ggml_type, data, &shape, scheme) else {
            return Ok(None);
        };
        if !quant.scale.iter().chain(&quant.min).all(|v| v.is_finite()) {
            tracing::warn!(tensor = %info.name, "a block scale or minimum is not finite, not handed over as {}", scheme.name());
            return Ok(None);
        }
        if let Some(pick) = &source.rows {
            quant.q = pick.gather(&quant.q);
            quant.scale = pick.gather(&quant.scale);
            if !quant.min.is_empty() {
                quant.min = pick.gather(&quant.min);
            }
            quant.shape[0] = pick.len();
        }
        quant.check().map_err(|e| self.header.error(format!("tensor {}: {e}", info.name)))?;
        Ok(Some(quant))
    }

    fn block_type(&self, name: TensorName) -> Option<String> {
        let ty = self.locate(name).ok()?.1.ggml_type;
        (ty.block_elems > 1).then(|| ty.name.to_string())
    }
}
