//! Baichuan (Baichuan-7B, Baichuan-13B) and Baichuan 2 (7B, 13B): llama's layout and names, but
//! q, k and v stacked in one `self_attn.W_pack` (`[Q; K; V]`, full multi-head attention).
//!
//! Two switches come from the checkpoint, as the upstream code ships a different modeling file
//! for each:
//! - the 13B models use ALiBi instead of rotary embeddings. Their configs have no
//!   `max_position_embeddings` (they give `model_max_length`); the 7B configs have it.
//! - Baichuan 2 normalises each row of `lm_head` (NormHead), which its code does in place on the
//!   first forward: the head is normalised here when it is read. Baichuan 2 is told from Baichuan
//!   by its config's `tokenizer_class` `BaichuanTokenizer` or its vocabulary of 125,696 tokens.

use super::{Architecture, ConfigFields, TensorSource, Transform, llama_hf_name, stacked_qkv_rows};
use crate::error::Result;
use crate::source::TensorName;
use crate::spec::{ModelSpec, PositionEncoding};

pub struct Baichuan;

/// Baichuan 2's vocabulary size.
const BAICHUAN2_VOCAB: usize = 125_696;

impl Architecture for Baichuan {
    fn name(&self) -> &'static str {
        "baichuan"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["BaiChuanForCausalLM", "BaichuanForCausalLM"]
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["baichuan"]
    }

    fn spec_from_config(&self, fields: &ConfigFields) -> Result<ModelSpec> {
        let mut spec = fields.llama_common(self)?;
        if fields.opt_usize("max_position_embeddings")?.is_none() {
            spec.position_encoding = PositionEncoding::Alibi;
            spec.max_position_embeddings = fields.opt_usize("model_max_length")?.unwrap_or(4096);
        }
        let tokenizer_class = fields.config["tokenizer_class"].as_str();
        spec.norm_head = tokenizer_class == Some("BaichuanTokenizer") || spec.vocab_size == BAICHUAN2_VOCAB;
        Ok(spec)
    }

    fn hf_tensor(&self, name: TensorName, spec: &ModelSpec) -> TensorSource {
        match name {
            TensorName::Layer(i, tensor) => match stacked_qkv_rows(tensor, spec) {
                Some(rows) => TensorSource::rows(format!("model.layers.{i}.self_attn.W_pack.weight"), rows),
                None => TensorSource::whole(llama_hf_name(name)),
            },
            TensorName::LmHead if spec.norm_head => {
                TensorSource { transform: Transform::NormalizeRows, ..TensorSource::whole(llama_hf_name(name)) }
            }
            _ => TensorSource::whole(llama_hf_name(name)),
        }
    }
}
