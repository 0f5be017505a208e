//! Qwen (v1: Qwen-1.8B, 7B, 14B, 72B and their chat models): GPT-2-style names
//! (`transformer.wte`, `transformer.h.N.ln_1` / `attn.c_attn` / `attn.c_proj` / `ln_2` /
//! `mlp.w1` / `mlp.w2` / `mlp.c_proj`, `transformer.ln_f`) over a llama-like decoder.
//!
//! - `c_attn` stacks `[Q; K; V]` with a bias; nothing else has one (`no_bias`).
//! - The MLP is `c_proj(w1(x) * silu(w2(x)))`: `w2` is the gate, `w1` the up projection, and the
//!   config's `intermediate_size` is twice their width.
//! - Rotary over `kv_channels * rotary_pct` dimensions, base `rotary_emb_base`.
//! - `use_dynamic_ntk` and `use_logn_attn` act on sequences longer than `seq_length`.

use super::{Architecture, ConfigFields, TensorSource, stacked_qkv_rows};
use crate::error::Result;
use crate::source::{LayerTensor, TensorName};
use crate::spec::{ModelSpec, RopeLayout, RopeScaling};

pub struct Qwen;

impl Architecture for Qwen {
    fn name(&self) -> &'static str {
        "qwen"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["QWenLMHeadModel"]
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["qwen"]
    }

    fn spec_from_config(&self, fields: &ConfigFields) -> Result<ModelSpec> {
        fields.require_bool("no_bias", true)?;
        let hidden_size = fields.usize("hidden_size")?;
        let num_heads = fields.usize("num_attention_heads")?;
        let head_dim = fields.head_dim("kv_channels", hidden_size, num_heads)?;
        let rotary_pct = fields.opt_f64("rotary_pct")?.unwrap_or(1.0);
        let seq_length = fields.opt_usize("seq_length")?.unwrap_or(8192);
        let doubled = fields.usize("intermediate_size")?;
        if !doubled.is_multiple_of(2) {
            return Err(fields.error("intermediate_size", "must be even (it is twice the MLP's width)"));
        }
        let tokens = |key: &str| fields.opt_token_id(key);
        Ok(ModelSpec {
            family: self.name().into(),
            vocab_size: fields.usize("vocab_size")?,
            hidden_size,
            intermediate_size: doubled / 2,
            num_layers: fields.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads: num_heads,
            head_dim,
            rms_norm_eps: fields.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-6),
            rope_theta: fields.opt_f64("rotary_emb_base")?.unwrap_or(10000.0),
            rope_layout: RopeLayout { dims: Some((head_dim as f64 * rotary_pct) as usize), interleaved: false },
            rope_scaling: fields
                .opt_bool("use_dynamic_ntk")?
                .unwrap_or(false)
                .then_some(RopeScaling::QwenNtk { seq_length }),
            logn_attention: fields.opt_bool("use_logn_attn")?.unwrap_or(false).then_some(seq_length),
            qkv_bias: true,
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            max_position_embeddings: fields.opt_usize("max_position_embeddings")?.unwrap_or(seq_length),
            bos_token_id: tokens("bos_token_id"),
            eos_token_id: tokens("eos_token_id"),
            ..ModelSpec::default()
        })
    }

    fn hf_tensor(&self, name: TensorName, spec: &ModelSpec) -> TensorSource {
        let TensorName::Layer(i, tensor) = name else {
            return TensorSource::whole(match name {
                TensorName::Embed => "transformer.wte.weight",
                TensorName::FinalNorm => "transformer.ln_f.weight",
                _ => "lm_head.weight",
            });
        };
        let at = |suffix: &str| format!("transformer.h.{i}.{suffix}");
        if let Some(rows) = stacked_qkv_rows(tensor, spec) {
            let kind = if tensor.is_bias() { "bias" } else { "weight" };
            return TensorSource::rows(at(&format!("attn.c_attn.{kind}")), rows);
        }
        TensorSource::whole(at(match tensor {
            LayerTensor::AttnNorm => "ln_1.weight",
            LayerTensor::OProj => "attn.c_proj.weight",
            LayerTensor::FfnNorm => "ln_2.weight",
            LayerTensor::GateProj => "mlp.w2.weight",
            LayerTensor::UpProj => "mlp.w1.weight",
            LayerTensor::DownProj => "mlp.c_proj.weight",
            // No bias but c_attn's (no_bias).
            _ => "attn.c_proj.bias",
        }))
    }
}
