//! InternLM (v1: internlm-7b, internlm-chat-7b, internlm-20b): llama's layout and names, with
//! biases on the q, k, v *and* o projections (`bias`, default true), and its own `rotary` field
//! (`base`, `type` origin or dynamic).

use serde_json::Value;

use super::{Architecture, ConfigFields, TensorSource, llama_hf_name};
use crate::error::Result;
use crate::source::TensorName;
use crate::spec::{ModelSpec, RopeScaling};

pub struct InternLm;

impl Architecture for InternLm {
    fn name(&self) -> &'static str {
        "internlm"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["InternLMForCausalLM"]
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["internlm"]
    }

    fn spec_from_config(&self, fields: &ConfigFields) -> Result<ModelSpec> {
        let mut spec = fields.llama_common(self)?;
        spec.qkv_bias = fields.opt_bool("bias")?.unwrap_or(true);
        spec.o_bias = spec.qkv_bias;
        let rotary = &fields.config["rotary"];
        if let Some(base) = rotary["base"].as_f64() {
            spec.rope_theta = base;
        }
        match rotary["type"].as_str() {
            None | Some("origin") => {}
            Some("dynamic") => {
                let factor = rotary["scaling_factor"].as_f64().unwrap_or(1.0);
                let original_max_position_embeddings = spec.max_position_embeddings;
                spec.rope_scaling = Some(RopeScaling::Dynamic { factor, original_max_position_embeddings });
            }
            Some(other) => {
                return Err(fields.error("rotary.type", &format!("{other:?} is not supported (origin, dynamic)")));
            }
        }
        if !matches!(rotary, Value::Null | Value::Object(_)) {
            return Err(fields.error("rotary", "must be an object"));
        }
        Ok(spec)
    }

    fn hf_tensor(&self, name: TensorName, _spec: &ModelSpec) -> TensorSource {
        TensorSource::whole(llama_hf_name(name))
    }
}
