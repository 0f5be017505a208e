//! Mistral: llama's layout with sliding-window attention.

use super::ConfigFields;
use crate::error::Result;
use crate::spec::ModelSpec;

pub fn apply_quirks(spec: &mut ModelSpec, fields: &ConfigFields) -> Result<()> {
    spec.sliding_window = fields.opt_usize("sliding_window")?;
    spec.rope_scaling = super::llama::rope_scaling(fields)?;
    Ok(())
}
