//! Llama (1, 2, 3, SmolLM2, ...): Hugging Face's `LlamaForCausalLM` layout, rotary scaling
//! `llama3`, `linear` or `dynamic`, optional attention bias.

use serde_json::Value;

use super::{Architecture, ConfigFields, TensorSource, llama_hf_name};
use crate::error::Result;
use crate::source::TensorName;
use crate::spec::{ModelSpec, RopeScaling};

pub struct Llama;

impl Architecture for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["LlamaForCausalLM"]
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["llama"]
    }

    fn spec_from_config(&self, fields: &ConfigFields) -> Result<ModelSpec> {
        let mut spec = fields.llama_common(self)?;
        spec.qkv_bias = fields.opt_bool("attention_bias")?.unwrap_or(false);
        spec.o_bias = spec.qkv_bias;
        spec.rope_scaling = rope_scaling(fields, spec.max_position_embeddings)?;
        Ok(spec)
    }

    fn hf_tensor(&self, name: TensorName, _spec: &ModelSpec) -> TensorSource {
        TensorSource::whole(llama_hf_name(name))
    }

    fn gguf_architecture(&self) -> Option<&'static str> {
        Some("llama")
    }
}

/// Parses `rope_scaling`; kinds other than llama3, linear and dynamic are refused, not ignored,
/// since ignoring them would silently give wrong logits. `max_positions` is the context a
/// dynamic scaling starts beyond.
pub fn rope_scaling(fields: &ConfigFields, max_positions: usize) -> Result<Option<RopeScaling>> {
    let Some(scaling) = fields.rope_scaling_object() else {
        return Ok(None);
    };
    let kind = scaling.get("rope_type").or(scaling.get("type")).and_then(Value::as_str).unwrap_or_default();
    let number = |key: &str| {
        scaling[key].as_f64().ok_or_else(|| fields.error(&format!("rope_scaling.{key}"), "is missing or not a number"))
    };
    match kind {
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
        })),
        "linear" => Ok(Some(RopeScaling::Linear { factor: number("factor")? })),
        "dynamic" => Ok(Some(RopeScaling::Dynamic {
            factor: number("factor")?,
            original_max_position_embeddings: max_positions,
        })),
        other => Err(fields.error(
            "rope_scaling.rope_type",
            &format!("{other:?} is not supported (supported: llama3, linear, dynamic)"),
        )),
    }
}
