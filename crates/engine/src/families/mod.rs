//! Architecture families: how a Hugging Face `config.json` and tensor names map onto [`ModelSpec`]
//! and canonical [`TensorName`]s.
//!
//! llama, mistral and qwen2 share Hugging Face's `model.layers.N.*` naming; each family's file
//! holds only what differs: which config keys it reads and which quirks it has.

pub mod llama;
pub mod mistral;
pub mod qwen2;

use std::path::Path;

use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::source::{LayerTensor, TensorName};
use crate::spec::{Family, ModelSpec};

/// Picks the family from `architectures` (first) or `model_type`.
pub fn detect(config: &Value, path: &Path) -> Result<Family> {
    let architectures: Vec<&str> =
        config["architectures"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let model_type = config["model_type"].as_str().unwrap_or("");
    for arch in &architectures {
        match *arch {
            "LlamaForCausalLM" => return Ok(Family::Llama),
            "MistralForCausalLM" => return Ok(Family::Mistral),
            "Qwen2ForCausalLM" => return Ok(Family::Qwen2),
            _ => {}
        }
    }
    match model_type {
        "llama" => Ok(Family::Llama),
        "mistral" => Ok(Family::Mistral),
        "qwen2" => Ok(Family::Qwen2),
        _ => {
            let found = if architectures.is_empty() {
                format!("model_type {model_type:?}")
            } else {
                format!("architectures {architectures:?}, model_type {model_type:?}")
            };
            Err(EngineError::UnsupportedArchitecture { path: path.to_path_buf(), found })
        }
    }
}

/// Parses a `config.json` into a [`ModelSpec`] with the detected family's rules.
pub fn spec_from_config(config: &Value, path: &Path) -> Result<ModelSpec> {
    let family = detect(config, path)?;
    let fields = ConfigFields { config, path };
    let mut spec = fields.common(family)?;
    match family {
        Family::Llama => llama::apply_quirks(&mut spec, &fields)?,
        Family::Mistral => mistral::apply_quirks(&mut spec, &fields)?,
        Family::Qwen2 => qwen2::apply_quirks(&mut spec, &fields)?,
    }
    Ok(spec)
}

/// Hugging Face tensor name of a canonical tensor (shared by llama, mistral and qwen2).
pub fn hf_tensor_name(name: TensorName) -> String {
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
                LayerTensor::FfnNorm => "post_attention_layernorm.weight",
                LayerTensor::GateProj => "mlp.gate_proj.weight",
                LayerTensor::UpProj => "mlp.up_proj.weight",
                LayerTensor::DownProj => "mlp.down_proj.weight",
            };
            format!("model.layers.{i}.{suffix}")
        }
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

    pub fn error(&self, key: &str, what: &str) -> EngineError {
        EngineError::format(self.path, format!("field `{key}` {what}"))
    }

    fn common(&self, family: Family) -> Result<ModelSpec> {
        let hidden_size = self.usize("hidden_size")?;
        let num_heads = self.usize("num_attention_heads")?;
        let head_dim = match self.opt_usize("head_dim")? {
            Some(head_dim) => head_dim,
            None => hidden_size.checked_div(num_heads).ok_or_else(|| self.error("num_attention_heads", "is 0"))?,
        };
        Ok(ModelSpec {
            family,
            vocab_size: self.usize("vocab_size")?,
            hidden_size,
            intermediate_size: self.usize("intermediate_size")?,
            num_layers: self.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads: self.opt_usize("num_key_value_heads")?.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: self.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: self.rope_theta()?,
            rope_scaling: None,
            sliding_window: None,
            qkv_bias: false,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            max_position_embeddings: self.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            bos_token_id: self.opt_token_id("bos_token_id"),
            eos_token_id: self.opt_token_id("eos_token_id"),
        })
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
