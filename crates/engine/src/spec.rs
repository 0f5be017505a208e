//! `ModelSpec`: the shape and quirks of a decoder-only transformer, whatever file it came from.

use serde::{Deserialize, Serialize};

/// Architecture families the engine can run. Each has a file under `families/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

impl Family {
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2";

    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }
}

/// Rotary embedding frequency scaling, as in Hugging Face's `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    Linear { factor: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Each token attends to at most this many previous tokens (itself included).
    pub sliding_window: Option<usize>,
    /// q/k/v projections carry a bias (qwen2).
    pub qkv_bias: bool,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl ModelSpec {
    /// Checks the values every file format hands over unchecked: sizes and counts positive and
    /// consistent, `rms_norm_eps` and `rope_theta` positive and finite (a negative epsilon or
    /// theta gives NaN log-likelihoods, a zero head count divides by zero). Sizes need not be
    /// small here: the tensor shape checks bound them by what the file holds.
    /// The message names the offending field, for the caller to prefix with its file.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{field} is 0; it must be positive"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} is odd; rotary embeddings rotate pairs", self.head_dim));
        }
        if self.num_heads.checked_mul(self.head_dim).is_none() || self.layer_params_checked().is_none() {
            return Err("the layer sizes overflow".into());
        }
        if self.sliding_window == Some(0) {
            return Err("sliding_window is 0; it must be positive".into());
        }
        for (field, value) in [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("{field} is {value}; it must be positive and finite"));
            }
        }
        self.validate_rope_scaling()
    }

    fn validate_rope_scaling(&self) -> Result<(), String> {
        let factors: Vec<(&str, f64)> = match &self.rope_scaling {
            None => vec![],
            Some(RopeScaling::Linear { factor }) => vec![("factor", *factor)],
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                if *original_max_position_embeddings == 0 {
                    return Err("rope_scaling.original_max_position_embeddings is 0".into());
                }
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope_scaling.high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}"
                    ));
                }
                vec![
                    ("factor", *factor),
                    ("low_freq_factor", *low_freq_factor),
                    ("high_freq_factor", *high_freq_factor),
                ]
            }
        };
        match factors.iter().find(|(_, value)| !(value.is_finite() && *value > 0.0)) {
            Some((field, value)) => Err(format!("rope_scaling.{field} is {value}; it must be positive and finite")),
            None => Ok(()),
        }
    }

    /// [`ModelSpec::layer_params`] without overflow, `None` where it would overflow.
    fn layer_params_checked(&self) -> Option<usize> {
        let h = self.hidden_size;
        let q = self.num_heads.checked_mul(self.head_dim)?;
        let kv = self.num_kv_heads.checked_mul(self.head_dim)?;
        let attention = h.checked_mul(q.checked_add(kv.checked_mul(2)?)?.checked_mul(2)?)?;
        let mlp = h.checked_mul(self.intermediate_size)?.checked_mul(3)?;
        let embed = self.vocab_size.checked_mul(h)?;
        attention.checked_add(mlp)?.checked_add(embed)?.checked_add(q + 2 * kv + 2 * h)
    }

    /// Parameters of one decoder layer (weights, norms and biases).
    pub fn layer_params(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let bias = if self.qkv_bias { q + 2 * kv } else { 0 };
        2 * h + h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + bias
    }

    /// FLOPs per token of one layer's matmuls (two per multiply-add), attention excluded.
    pub fn layer_matmul_flops_per_token(&self) -> f64 {
        let (h, q, kv) = (self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        2.0 * (h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size) as f64
    }
}
