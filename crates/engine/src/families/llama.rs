//! Llama (1, 2, 3, SmolLM2, ...): rotary scaling `llama3` or `linear`, optional attention bias.

use serde_json::Value;

use super::ConfigFields;
use crate::error::Result;
use crate::spec::{ModelSpec, RopeScaling};

pub fn apply_quirks(spec: &mut ModelSpec, fields: &ConfigFields) -> Result<()> {
    spec.qkv_bias = fields.opt_bool("attention_bias")?.unwrap_or(false);
    spec.rope_scaling = rope_scaling(fields)?;
    Ok(())
}

/// Parses `rope_scaling`; kinds other than llama3 and linear are refused, not ignored, since
/// ignoring them would silently give wrong logits.
pub fn rope_scaling(fields: &ConfigFields) -> Result<Option<RopeScaling>> {
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
        other => {
            Err(fields
                .error("rope_scaling.rope_type", &format!("{other:?} is not supported (supported: llama3, linear)")))
        }
    }
}
