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
