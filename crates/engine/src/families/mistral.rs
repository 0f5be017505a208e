//! Mistral: llama's layout with sliding-window attention.

use super::{Architecture, ConfigFields, TensorSource, llama_hf_name};
use crate::error::Result;
use crate::source::TensorName;
use crate::spec::ModelSpec;

pub struct Mistral;

impl Architecture for Mistral {
    fn name(&self) -> &'static str {
        "mistral"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["MistralForCausalLM"]
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["mistral"]
    }

    fn spec_from_config(&self, fields: &ConfigFields) -> Result<ModelSpec> {
        let mut spec = fields.llama_common(self)?;
        spec.sliding_window = fields.opt_usize("sliding_window")?;
        spec.rope_scaling = super::llama::rope_scaling(fields, spec.max_position_embeddings)?;
        Ok(spec)
    }

    fn hf_tensor(&self, name: TensorName, _spec: &ModelSpec) -> TensorSource {
        TensorSource::whole(llama_hf_name(name))
    }

    fn gguf_architecture(&self) -> Option<&'static str> {
        Some("mistral")
    }
}
