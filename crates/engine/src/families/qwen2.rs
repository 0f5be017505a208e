//! Qwen2 and Qwen2.5: llama's layout with q/k/v biases; with `use_sliding_window`, layers from
//! `max_window_layers` on attend within `sliding_window`. llama.cpp's converter writes its Q/K
//! rows unpermuted.

use super::{Architecture, ConfigFields, TensorSource, llama_gguf_tensor, llama_hf_name};
use crate::error::Result;
use crate::source::TensorName;
use crate::spec::ModelSpec;

pub struct Qwen2;

impl Architecture for Qwen2 {
    fn name(&self) -> &'static str {
        "qwen2"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Qwen2ForCausalLM"]
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["qwen2"]
    }

    fn spec_from_config(&self, fields: &ConfigFields) -> Result<ModelSpec> {
        let mut spec = fields.llama_common(self)?;
        spec.qkv_bias = true;
        if fields.opt_bool("use_sliding_window")?.unwrap_or(false) {
            spec.sliding_window = Some(fields.usize("sliding_window")?);
            spec.sliding_window_from_layer = fields.opt_usize("max_window_layers")?.unwrap_or(0);
        }
        spec.rope_scaling = super::llama::rope_scaling(fields, spec.max_position_embeddings)?;
        Ok(spec)
    }

    fn hf_tensor(&self, name: TensorName, _spec: &ModelSpec) -> TensorSource {
        TensorSource::whole(llama_hf_name(name))
    }

    fn gguf_architecture(&self) -> Option<&'static str> {
        Some("qwen2")
    }

    fn gguf_tensor(&self, name: TensorName, spec: &ModelSpec) -> TensorSource {
        llama_gguf_tensor(name, spec, false)
    }
}
