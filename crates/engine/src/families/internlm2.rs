//! InternLM2 and InternLM2.5: llama's math under other names (`tok_embeddings`, `attention.wqkv`
//! / `wo`, `feed_forward.w1` gate / `w3` up / `w2` down, `attention_norm`, `ffn_norm`, `output`).
//!
//! `wqkv` stacks the projections per key/value head: viewed as `[kv_heads, q_per_kv + 2,
//! head_dim]` rows, group `g` holds its `q_per_kv` query heads, then its key head, then its value
//! head. The maps below gather each projection's rows back into head order.

use super::{Architecture, ConfigFields, RowPick, TensorSource, llama_hf_name};
use crate::error::Result;
use crate::source::{LayerTensor, TensorName};
use crate::spec::ModelSpec;

pub struct InternLm2;

impl Architecture for InternLm2 {
    fn name(&self) -> &'static str {
        "internlm2"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["InternLM2ForCausalLM"]
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["internlm2"]
    }

    fn spec_from_config(&self, fields: &ConfigFields) -> Result<ModelSpec> {
        let mut spec = fields.llama_common(self)?;
        spec.qkv_bias = fields.opt_bool("bias")?.unwrap_or(true);
        spec.o_bias = spec.qkv_bias;
        spec.rope_scaling = super::llama::rope_scaling(fields, spec.max_position_embeddings)?;
        Ok(spec)
    }

    fn hf_tensor(&self, name: TensorName, spec: &ModelSpec) -> TensorSource {
        let TensorName::Layer(i, tensor) = name else {
            return TensorSource::whole(match name {
                TensorName::Embed => "model.tok_embeddings.weight".into(),
                TensorName::LmHead => "output.weight".into(),
                _ => llama_hf_name(name),
            });
        };
        let at = |suffix: &str| format!("model.layers.{i}.{suffix}");
        let wqkv = |kind: &str| TensorSource::rows(at(&format!("attention.wqkv.{kind}")), grouped_rows(tensor, spec));
        match tensor {
            LayerTensor::AttnNorm => TensorSource::whole(at("attention_norm.weight")),
            LayerTensor::QProj | LayerTensor::KProj | LayerTensor::VProj => wqkv("weight"),
            LayerTensor::QBias | LayerTensor::KBias | LayerTensor::VBias => wqkv("bias"),
            LayerTensor::OProj => TensorSource::whole(at("attention.wo.weight")),
            LayerTensor::OBias => TensorSource::whole(at("attention.wo.bias")),
            LayerTensor::FfnNorm => TensorSource::whole(at("ffn_norm.weight")),
            LayerTensor::GateProj => TensorSource::whole(at("feed_forward.w1.weight")),
            LayerTensor::UpProj => TensorSource::whole(at("feed_forward.w3.weight")),
            LayerTensor::DownProj => TensorSource::whole(at("feed_forward.w2.weight")),
        }
    }
}

/// The rows of `wqkv` that make up the q, k or v projection (or bias), in head order.
fn grouped_rows(tensor: LayerTensor, spec: &ModelSpec) -> RowPick {
    let (groups, head_dim) = (spec.num_kv_heads, spec.head_dim);
    let per_group = spec.num_heads / groups;
    let slot_rows = |group: usize, slot: usize| {
        let start = (group * (per_group + 2) + slot) * head_dim;
        start..start + head_dim
    };
    let ranges = match tensor {
        LayerTensor::QProj | LayerTensor::QBias => {
            (0..groups).flat_map(|g| (0..per_group).map(move |s| slot_rows(g, s))).collect()
        }
        LayerTensor::KProj | LayerTensor::KBias => (0..groups).map(|g| slot_rows(g, per_group)).collect(),
        _ => (0..groups).map(|g| slot_rows(g, per_group + 1)).collect(),
    };
    RowPick { total: groups * (per_group + 2) * head_dim, ranges }
}
