//! Qwen2: q/k/v projections always carry a bias; the sliding window applies only when
//! `use_sliding_window` is set, and then only above `max_window_layers` (refused: not supported yet).

use super::ConfigFields;
use crate::error::Result;
use crate::spec::ModelSpec;

pub fn apply_quirks(spec: &mut ModelSpec, fields: &ConfigFields) -> Result<()> {
    spec.qkv_bias = true;
    if fields.opt_bool("use_sliding_window")?.unwrap_or(false) {
        return Err(fields.error("use_sliding_window", "true is not supported for qwen2 yet"));
    }
    spec.rope_scaling = super::llama::rope_scaling(fields)?;
    Ok(())
}
