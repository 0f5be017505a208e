//! Architecture families: one file each, holding everything that differs between them.
//!
//! A family ([`Architecture`]) says which checkpoints it claims (`config.json`'s `architectures`
//! and `model_type`, or a GGUF's `general.architecture`), parses their config into a
//! [`ModelSpec`] with the switches the decoder layer needs, and maps each canonical
//! [`TensorName`] to where the checkpoint keeps it ([`TensorSource`]): a tensor's name, the rows
//! to take from it where the checkpoint fuses several projections into one, and a transform of
//! the values. Sources apply those maps when they read, so a layer store and the decoder only ever
//! see the canonical layout. Adding a family is one file and one line in [`ALL`].
//!
//! A config with `auto_map` (Hugging Face "remote code") is read like any other: its modeling
//! code is never run, each family is implemented natively and checked against the upstream
//! code's logits.

pub mod baichuan;
pub mod chatglm;
pub mod internlm;
pub mod internlm2;
pub mod llama;
pub mod mistral;
pub mod qwen;
pub mod qwen2;

use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::source::{LayerTensor, TensorName};
use crate::spec::ModelSpec;

/// Every family the engine runs, in the order detection tries them.
pub const ALL: &[&dyn Architecture] = &[
    &llama::Llama,
    &mistral::Mistral,
    &qwen2::Qwen2,
    &qwen::Qwen,
    &chatglm::ChatGlm,
    &baichuan::Baichuan,
    &internlm::InternLm,
    &internlm2::InternLm2,
];

/// One architecture family (see the module doc).
pub trait Architecture: Sync {
    /// The family's name in specs, stores and messages.
    fn name(&self) -> &'static str;
    /// `architectures` entries of `config.json` it claims.
    fn hf_architectures(&self) -> &'static [&'static str];
    /// `model_type` values it claims where no `architectures` entry matched.
    fn hf_model_types(&self) -> &'static [&'static str];
    /// Parses a Hugging Face `config.json`.
    fn spec_from_config(&self, fields: &ConfigFields) -> Result<ModelSpec>;
    /// Where a canonical tensor lives in a Hugging Face checkpoint of `spec`.
    fn hf_tensor(&self, name: TensorName, spec: &ModelSpec) -> TensorSource;
    /// llama.cpp's `general.architecture` for this family, where its GGUF files are read.
    fn gguf_architecture(&self) -> Option<&'static str> {
        None
    }
    /// Where a canonical tensor lives in a GGUF file of `spec` (families with a
    /// [`gguf_architecture`](Self::gguf_architecture)): llama.cpp's llama layout, Q/K permuted.
    fn gguf_tensor(&self, name: TensorName, spec: &ModelSpec) -> TensorSource {
        llama_gguf_tensor(name, spec, true)
    }
    /// Sets what a GGUF file's metadata and tensors tell beyond the common hyperparameters.
    fn gguf_quirks(&self, spec: &mut ModelSpec, has_tensor: &dyn Fn(&str) -> bool) {
        spec.qkv_bias = has_tensor("blk.0.attn_q.bias");
        spec.o_bias = has_tensor("blk.0.attn_output.bias");
    }
}

/// The family called `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Architecture> {
    ALL.iter().copied().find(|family| family.name() == name)
}

/// The family of a GGUF `general.architecture`.
pub fn by_gguf_architecture(arch: &str) -> Option<&'static dyn Architecture> {
    ALL.iter().copied().find(|family| family.gguf_architecture() == Some(arch))
}

/// The names of every family, for messages.
pub fn supported() -> String {
    ALL.iter().map(|family| family.name()).collect::<Vec<_>>().join(", ")
}

/// The names of the families whose GGUF files are read, for messages.
pub fn supported_gguf() -> String {
    ALL.iter().filter_map(|family| family.gguf_architecture()).collect::<Vec<_>>().join(", ")
}

/// Picks the family from `architectures` (first) or `model_type`, as AirLLM's `AutoModel` does.
pub fn detect(config: &Value, path: &Path) -> Result<&'static dyn Architecture> {
    let architectures: Vec<&str> =
        config["architectures"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let model_type = config["model_type"].as_str().unwrap_or("");
    let by_architecture =
        architectures.iter().find_map(|arch| ALL.iter().find(|family| family.hf_architectures().contains(arch)));
    let by_model_type = || ALL.iter().find(|family| family.hf_model_types().contains(&model_type));
    if let Some(family) = by_architecture.or_else(by_model_type) {
        return Ok(*family);
    }
    let found = if architectures.is_empty() {
        format!("model_type {model_type:?}")
    } else {
        format!("architectures {architectures:?}, model_type {model_type:?}")
    };
    let supported = format!("{} (config.json `architectures`/`model_type`)", supported());
    Err(EngineError::UnsupportedArchitecture { path: path.to_path_buf(), found, supported })
}

/// Parses a `config.json` into a [`ModelSpec`] with the detected family's rules.
pub fn spec_from_config(config: &Value, path: &Path) -> Result<ModelSpec> {
    let family = detect(config, path)?;
    family.spec_from_config(&ConfigFields { config, path })
}

/// The family a spec names; specs come from this crate's parsers or from a store's manifest.
pub fn of(spec: &ModelSpec) -> Result<&'static dyn Architecture> {
    by_name(&spec.family).ok_or_else(|| {
        EngineError::Other(format!("unknown architecture family {:?} (supported: {})", spec.family, supported()))
    })
}

/// Where a canonical tensor is in a checkpoint file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSource {
    /// The tensor's name in the file.
    pub name: String,
    /// Rows to take (dimension 0), where the file fuses this tensor with others or orders its rows
    /// differently; `None`: the whole tensor.
    pub rows: Option<RowPick>,
    pub transform: Transform,
}

/// Rows taken from a file tensor of exactly `total` rows, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct RowPick {
    pub total: usize,
    pub ranges: Vec<Range<usize>>,
}

impl RowPick {
    /// Rows `start..start + len` of a tensor of `total` rows.
    #[allow(clippy::single_range_in_vec_init)] // one range of rows, as meant
    pub fn slice(total: usize, start: usize, len: usize) -> Self {
        Self { total, ranges: vec![start..start + len] }
    }

    /// The number of rows taken.
    pub fn len(&self) -> usize {
        self.ranges.iter().map(ExactSizeIterator::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gathers the rows from `values` (row-major, `total` rows of any width and element type).
    pub fn gather<T: Copy>(&self, values: &[T]) -> Vec<T> {
        let width = values.len() / self.total;
        self.ranges.iter().flat_map(|rows| &values[rows.start * width..rows.end * width]).copied().collect()
    }
}

/// A change of values made when a tensor is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None,
    /// Each row divided by its L2 norm (Baichuan 2's NormHead, which its code applies on the first
    /// forward).
    NormalizeRows,
}

impl TensorSource {
    pub fn whole(name: impl Into<String>) -> Self {
        Self { name: name.into(), rows: None, transform: Transform::None }
    }

    pub fn rows(name: impl Into<String>, rows: RowPick) -> Self {
        Self { name: name.into(), rows: Some(rows), transform: Transform::None }
    }
}

/// Hugging Face's llama naming (`model.layers.N.self_attn.q_proj.weight`, ...), which llama,
/// mistral, qwen2, InternLM and Baichuan share.
pub fn llama_hf_name(name: TensorName) -> String {
    match name {
        TensorName::Embed => "model.embed_tokens.weight".into(),
        TensorName::FinalNorm => "model.norm.weight".into(),
        TensorName::LmHead => "lm_head.weight".into(),
        TensorName::Layer(i, t) => {
            let suffix = match t {
                LayerTensor::AttnNorm => "input_layernorm.weight",
                LayerTensor::QProj => "self_attn.q_proj.weight",
                LayerTensor::KProj => "self_attn.k_proj.weight",
                LayerTensor::VProj => "self_attn.v_proj.weight",
                LayerTensor::OProj => "self_attn.o_proj.weight",
                LayerTensor::QBias => "self_attn.q_proj.bias",
                LayerTensor::KBias => "self_attn.k_proj.bias",
                LayerTensor::VBias => "self_attn.v_proj.bias",
                LayerTensor::OBias => "self_attn.o_proj.bias",
                LayerTensor::FfnNorm => "post_attention_layernorm.weight",
                LayerTensor::GateProj => "mlp.gate_proj.weight",
                LayerTensor::UpProj => "mlp.up_proj.weight",
                LayerTensor::DownProj => "mlp.down_proj.weight",
            };
            format!("model.layers.{i}.{suffix}")
        }
    }
}

/// llama.cpp's names (`blk.N.attn_q.weight`, ...). With `permuted`, the Q/K rows (and biases)
/// are taken in Hugging Face's order, undoing convert_hf_to_gguf.py's `permute` (see
/// [`unpermute_ranges`]); qwen2's converter does not permute. The head of a tied model is
/// answered by the source with `token_embd.weight`.
pub fn llama_gguf_tensor(name: TensorName, spec: &ModelSpec, permuted: bool) -> TensorSource {
    let name_of = |suffix: &str| match name {
        TensorName::Layer(i, _) => format!("blk.{i}.{suffix}"),
        _ => suffix.to_string(),
    };
    let file_name = match name {
        TensorName::Embed => name_of("token_embd.weight"),
        TensorName::FinalNorm => name_of("output_norm.weight"),
        TensorName::LmHead => name_of("output.weight"),
        TensorName::Layer(_, t) => name_of(match t {
            LayerTensor::AttnNorm => "attn_norm.weight",
            LayerTensor::QProj => "attn_q.weight",
            LayerTensor::KProj => "attn_k.weight",
            LayerTensor::VProj => "attn_v.weight",
            LayerTensor::OProj => "attn_output.weight",
            LayerTensor::QBias => "attn_q.bias",
            LayerTensor::KBias => "attn_k.bias",
            LayerTensor::VBias => "attn_v.bias",
            LayerTensor::OBias => "attn_output.bias",
            LayerTensor::FfnNorm => "ffn_norm.weight",
            LayerTensor::GateProj => "ffn_gate.weight",
            LayerTensor::UpProj => "ffn_up.weight",
            LayerTensor::DownProj => "ffn_down.weight",
        }),
    };
    let heads = match name {
        TensorName::Layer(_, LayerTensor::QProj | LayerTensor::QBias) => spec.num_heads,
        TensorName::Layer(_, LayerTensor::KProj | LayerTensor::KBias) => spec.num_kv_heads,
        _ => 0,
    };
    if !permuted || heads == 0 {
        return TensorSource::whole(file_name);
    }
    TensorSource::rows(file_name, unpermute_ranges(heads * spec.head_dim, heads))
}

/// Inverts convert_hf_to_gguf.py's `permute`, which reorders the `rows` rows of a Q or K
/// projection (or bias) as `w.reshape(n_head, 2, head_dim / 2, -1).swapaxes(1, 2)`: the GGUF
/// row `(h, i, j)` holds Hugging Face row `(h, j, i)`. `rows` must be a multiple of `2 * n_head`.
pub fn unpermute_ranges(rows: usize, n_head: usize) -> RowPick {
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let ranges = (0..n_head)
        .flat_map(|h| (0..2).flat_map(move |j| (0..half).map(move |i| h * head_dim + i * 2 + j)))
        .map(|row| row..row + 1)
        .collect();
    RowPick { total: rows, ranges }
}

/// Rows of the Q, K and V projections when a checkpoint stacks them in one tensor, `[Q; K; V]`
/// (Baichuan's `W_pack`, Qwen's `c_attn`, ChatGLM's `query_key_value`): the projection or bias
/// `tensor` of a layer of `spec`, `None` for the other tensors.
pub fn stacked_qkv_rows(tensor: LayerTensor, spec: &ModelSpec) -> Option<RowPick> {
    let q = spec.num_heads * spec.head_dim;
    let kv = spec.num_kv_heads * spec.head_dim;
    let total = q + 2 * kv;
    match tensor {
        LayerTensor::QProj | LayerTensor::QBias => Some(RowPick::slice(total, 0, q)),
        LayerTensor::KProj | LayerTensor::KBias => Some(RowPick::slice(total, q, kv)),
        LayerTensor::VProj | LayerTensor::VBias => Some(RowPick::slice(total, q + kv, kv)),
        _ => None,
    }
}

/// Typed access to `config.json` fields with errors that name the file and field.
pub struct ConfigFields<'a> {
    pub config: &'a Value,
    pub path: &'a Path,
}

impl ConfigFields<'_> {
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.error(key, "is missing"))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match &self.config[key] {
            Value::Null => Ok(None),
            v => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| self.error(key, "must be a non-negative integer")),
        }
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.error(key, "is missing"))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match &self.config[key] {
            Value::Null => Ok(None),
            v => v.as_f64().map(Some).ok_or_else(|| self.error(key, "must be a number")),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match &self.config[key] {
            Value::Null => Ok(None),
            v => v.as_bool().map(Some).ok_or_else(|| self.error(key, "must be true or false")),
        }
    }

    /// A token id field, which may also be a list (the first id is taken).
    pub fn opt_token_id(&self, key: &str) -> Option<u32> {
        match &self.config[key] {
            Value::Array(a) => a.first().and_then(Value::as_u64).map(|n| n as u32),
            v => v.as_u64().map(|n| n as u32),
        }
    }

    /// Refuses a switch whose value the engine does not implement, rather than ignoring it.
    pub fn require_bool(&self, key: &str, supported: bool) -> Result<()> {
        match self.opt_bool(key)? {
            Some(value) if value != supported => {
                Err(self.error(key, &format!("{value} is not supported (only {supported} is)")))
            }
            _ => Ok(()),
        }
    }

    pub fn error(&self, key: &str, what: &str) -> EngineError {
        EngineError::format(self.path, format!("field `{key}` {what}"))
    }

    /// The fields llama-style configs share (`hidden_size`, `num_attention_heads`, ...), for
    /// family `family`; families with other field names build their spec themselves.
    pub fn llama_common(&self, family: &dyn Architecture) -> Result<ModelSpec> {
        let hidden_size = self.usize("hidden_size")?;
        let num_heads = self.usize("num_attention_heads")?;
        Ok(ModelSpec {
            family: family.name().into(),
            vocab_size: self.usize("vocab_size")?,
            hidden_size,
            intermediate_size: self.usize("intermediate_size")?,
            num_layers: self.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads: self.opt_usize("num_key_value_heads")?.unwrap_or(num_heads),
            head_dim: self.head_dim("head_dim", hidden_size, num_heads)?,
            rms_norm_eps: self.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: self.rope_theta()?,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            max_position_embeddings: self.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            bos_token_id: self.opt_token_id("bos_token_id"),
            eos_token_id: self.opt_token_id("eos_token_id"),
            ..ModelSpec::default()
        })
    }

    /// The head size: field `key` where the config has it, else `hidden_size / heads`.
    pub fn head_dim(&self, key: &str, hidden_size: usize, num_heads: usize) -> Result<usize> {
        match self.opt_usize(key)? {
            Some(head_dim) => Ok(head_dim),
            None => hidden_size.checked_div(num_heads).ok_or_else(|| self.error("num_attention_heads", "is 0")),
        }
    }

    /// `rope_theta` at top level, or inside `rope_parameters` (transformers 5).
    fn rope_theta(&self) -> Result<f64> {
        if let Some(theta) = self.opt_f64("rope_theta")? {
            return Ok(theta);
        }
        Ok(self.config["rope_parameters"]["rope_theta"].as_f64().unwrap_or(10000.0))
    }

    /// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5), if it scales.
    pub fn rope_scaling_object(&self) -> Option<&Value> {
        [&self.config["rope_scaling"], &self.config["rope_parameters"]].into_iter().find(|v| {
            v.is_object()
                && v.get("rope_type").or(v.get("type")).and_then(Value::as_str).is_some_and(|t| t != "default")
        })
    }
}
