//! ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B-chat: a pre-norm RMSNorm decoder with grouped-query
//! attention ("multi-query groups") under its own names (`transformer.embedding`,
//! `transformer.encoder.layers.N.self_attention.query_key_value` / `dense`, `mlp.dense_h_to_4h`
//! / `dense_4h_to_h`, `transformer.encoder.final_layernorm`, `transformer.output_layer`).
//!
//! - `query_key_value` stacks `[Q; K; V]` rows with a bias (`add_qkv_bias`).
//! - `dense_h_to_4h` stacks the gate's rows, then the up projection's.
//! - Rotary turns only the first half of each head's dimensions, on interleaved pairs
//!   `(x[2i], x[2i+1])`, base `10000 * rope_ratio` (GLM-4 and the long-context ChatGLM3s set
//!   `rope_ratio`).
//!
//! Switches of the config that change the math the other way (LayerNorm instead of RMSNorm,
//! post-norm residuals, biased linears) are refused.

use super::{Architecture, ConfigFields, RowPick, TensorSource, stacked_qkv_rows};
use crate::error::Result;
use crate::source::{LayerTensor, TensorName};
use crate::spec::{ModelSpec, RopeLayout};

pub struct ChatGlm;

impl Architecture for ChatGlm {
    fn name(&self) -> &'static str {
        "chatglm"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["ChatGLMModel", "ChatGLMForConditionalGeneration"]
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["chatglm"]
    }

    fn spec_from_config(&self, fields: &ConfigFields) -> Result<ModelSpec> {
        fields.require_bool("rmsnorm", true)?;
        fields.require_bool("apply_residual_connection_post_layernorm", false)?;
        fields.require_bool("add_bias_linear", false)?;
        fields.require_bool("post_layer_norm", true)?;
        fields.require_bool("original_rope", true)?;
        let hidden_size = fields.usize("hidden_size")?;
        let num_heads = fields.usize("num_attention_heads")?;
        let head_dim = fields.head_dim("kv_channels", hidden_size, num_heads)?;
        let num_kv_heads = match fields.opt_bool("multi_query_attention")? {
            Some(true) => fields.usize("multi_query_group_num")?,
            _ => num_heads,
        };
        let vocab_size = match fields.opt_usize("padded_vocab_size")? {
            Some(n) => n,
            None => fields.usize("vocab_size")?,
        };
        let seq_length = fields.opt_usize("seq_length")?.unwrap_or(8192);
        Ok(ModelSpec {
            family: self.name().into(),
            vocab_size,
            hidden_size,
            intermediate_size: fields.usize("ffn_hidden_size")?,
            num_layers: fields.usize("num_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: fields.opt_f64("layernorm_epsilon")?.unwrap_or(1e-5),
            rope_theta: 10000.0 * fields.opt_f64("rope_ratio")?.unwrap_or(1.0),
            rope_layout: RopeLayout { dims: Some(head_dim / 2), interleaved: true },
            qkv_bias: fields.opt_bool("add_qkv_bias")?.unwrap_or(false),
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            max_position_embeddings: seq_length,
            bos_token_id: fields.opt_token_id("bos_token_id"),
            eos_token_id: fields.opt_token_id("eos_token_id"),
            ..ModelSpec::default()
        })
    }

    fn hf_tensor(&self, name: TensorName, spec: &ModelSpec) -> TensorSource {
        let TensorName::Layer(i, tensor) = name else {
            return TensorSource::whole(match name {
                TensorName::Embed => "transformer.embedding.word_embeddings.weight",
                TensorName::FinalNorm => "transformer.encoder.final_layernorm.weight",
                _ => "transformer.output_layer.weight",
            });
        };
        let at = |suffix: &str| format!("transformer.encoder.layers.{i}.{suffix}");
        if let Some(rows) = stacked_qkv_rows(tensor, spec) {
            let kind = if tensor.is_bias() { "bias" } else { "weight" };
            return TensorSource::rows(at(&format!("self_attention.query_key_value.{kind}")), rows);
        }
        let ffn = spec.intermediate_size;
        match tensor {
            LayerTensor::GateProj => {
                TensorSource::rows(at("mlp.dense_h_to_4h.weight"), RowPick::slice(2 * ffn, 0, ffn))
            }
            LayerTensor::UpProj => {
                TensorSource::rows(at("mlp.dense_h_to_4h.weight"), RowPick::slice(2 * ffn, ffn, ffn))
            }
            LayerTensor::AttnNorm => TensorSource::whole(at("input_layernorm.weight")),
            LayerTensor::FfnNorm => TensorSource::whole(at("post_attention_layernorm.weight")),
            LayerTensor::DownProj => TensorSource::whole(at("mlp.dense_4h_to_h.weight")),
            LayerTensor::OProj => TensorSource::whole(at("self_attention.dense.weight")),
            // No other biases (add_bias_linear is false).
            _ => TensorSource::whole(at("self_attention.dense.bias")),
        }
    }
}
