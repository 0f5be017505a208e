//! `ModelSpec`: the shape and quirks of a decoder-only transformer, whatever file it came from.

use serde::{Deserialize, Serialize};

/// Rotary embedding frequency scaling, as in Hugging Face's `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    Linear {
        factor: f64,
    },
    /// Hugging Face's dynamic NTK scaling (`"type": "dynamic"`, InternLM2): a forward over a context
    /// longer than `original_max_position_embeddings` rotates with the base raised to
    /// `(factor * len / original - (factor - 1))^(d / (d - 2))`.
    Dynamic {
        factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Qwen (v1)'s dynamic NTK: a context of `len` tokens past `seq_length` rotates with the base
    /// times `alpha^(d / (d - 2))`, `alpha = max(2^ceil(log2(len / seq_length) + 1) - 1, 1)`,
    /// fixed for a sequence by its prompt.
    QwenNtk {
        seq_length: usize,
    },
}

/// Which dimensions of a head the rotary embedding turns, and how it pairs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RopeLayout {
    /// Rotated dimensions at the start of each head (ChatGLM: half of them); `None`: all.
    pub dims: Option<usize>,
    /// Pairs `(x[2i], x[2i+1])` (GPT-J, ChatGLM) instead of `(x[i], x[i + d/2])` (`rotate_half`).
    pub interleaved: bool,
}

/// How attention knows where a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionEncoding {
    /// Rotary embeddings of q and k ([`RopeLayout`], `rope_theta`, `rope_scaling`).
    #[default]
    Rotary,
    /// ALiBi (Baichuan-13B): no rotation; each head adds `-slope * distance` to its scores.
    Alibi,
}

/// Fields added after the first stores were written default to what those stores meant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The architecture family's name (see [`crate::families`]).
    pub family: String,
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
    /// Layers below this index attend to every earlier token even with a `sliding_window`
    /// (qwen2's `max_window_layers`).
    #[serde(default)]
    pub sliding_window_from_layer: usize,
    /// q/k/v projections carry a bias (qwen2).
    pub qkv_bias: bool,
    /// The attention output projection carries a bias (InternLM).
    #[serde(default)]
    pub o_bias: bool,
    #[serde(default)]
    pub position_encoding: PositionEncoding,
    #[serde(default)]
    pub rope_layout: RopeLayout,
    /// Qwen (v1)'s logn attention: a query at 1-based position `i` past this many tokens is scaled
    /// by `ln(i) / ln(n)`.
    #[serde(default)]
    pub logn_attention: Option<usize>,
    /// The head's rows are divided by their L2 norms (Baichuan 2's NormHead). Sources apply it
    /// when they read the head, so a store holds the head as it is used.
    #[serde(default)]
    pub norm_head: bool,
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
        self.validate_rope_layout()?;
        if self.num_heads.checked_mul(self.head_dim).is_none() || self.layer_params_checked().is_none() {
            return Err("the layer sizes overflow".into());
        }
        if self.sliding_window == Some(0) {
            return Err("sliding_window is 0; it must be positive".into());
        }
        if self.logn_attention.is_some_and(|n| n < 2) {
            return Err("logn_attention must be at least 2 (its logarithm divides)".into());
        }
        for (field, value) in [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("{field} is {value}; it must be positive and finite"));
            }
        }
        self.validate_rope_scaling()
    }

    /// The rotated dimensions: an even number, at most `head_dim` (and more than two where the
    /// dynamic scalings raise the base to `d / (d - 2)`).
    fn validate_rope_layout(&self) -> Result<(), String> {
        if self.position_encoding != PositionEncoding::Rotary {
            return Ok(());
        }
        let dims = self.rotary_dims();
        if dims == 0 || !dims.is_multiple_of(2) || dims > self.head_dim {
            return Err(format!(
                "{dims} rotary dimensions for head_dim {}: rotary embeddings rotate pairs of a head's dimensions",
                self.head_dim
            ));
        }
        let dynamic = matches!(self.rope_scaling, Some(RopeScaling::Dynamic { .. } | RopeScaling::QwenNtk { .. }));
        if dynamic && dims <= 2 {
            return Err(format!("dynamic rope scaling needs more than 2 rotary dimensions, not {dims}"));
        }
        Ok(())
    }

    /// Dimensions of each head the rotary embedding turns.
    pub fn rotary_dims(&self) -> usize {
        self.rope_layout.dims.unwrap_or(self.head_dim)
    }

    /// Whether the rotary angles of a sequence of `len` tokens differ from those of a shorter
    /// one (dynamic NTK scalings raise the base past a length).
    pub fn rope_rescales_at(&self, len: usize) -> bool {
        if self.position_encoding != PositionEncoding::Rotary {
            return false;
        }
        match self.rope_scaling {
            Some(RopeScaling::Dynamic { original_max_position_embeddings: original, .. }) => len > original,
            Some(RopeScaling::QwenNtk { seq_length }) => len > seq_length,
            _ => false,
        }
    }

    /// The sliding window of layer `index`, if it has one.
    pub fn layer_window(&self, index: usize) -> Option<usize> {
        self.sliding_window.filter(|_| index >= self.sliding_window_from_layer)
    }

    fn validate_rope_scaling(&self) -> Result<(), String> {
        let factors: Vec<(&str, f64)> = match &self.rope_scaling {
            None => vec![],
            Some(RopeScaling::Linear { factor }) => vec![("factor", *factor)],
            Some(RopeScaling::Dynamic { factor, original_max_position_embeddings }) => {
                if *original_max_position_embeddings == 0 {
                    return Err("rope_scaling.original_max_position_embeddings is 0".into());
                }
                vec![("factor", *factor)]
            }
            Some(RopeScaling::QwenNtk { seq_length }) => {
                if *seq_length == 0 {
                    return Err("seq_length is 0; it must be positive".into());
                }
                vec![]
            }
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
        attention.checked_add(mlp)?.checked_add(embed)?.checked_add(q + 2 * kv + 3 * h)
    }

    /// Parameters of one decoder layer (weights, norms and biases).
    pub fn layer_params(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let bias = if self.qkv_bias { q + 2 * kv } else { 0 } + if self.o_bias { h } else { 0 };
        2 * h + h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + bias
    }

    /// FLOPs per token of one layer's matmuls (two per multiply-add), attention excluded.
    pub fn layer_matmul_flops_per_token(&self) -> f64 {
        let (h, q, kv) = (self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        2.0 * (h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size) as f64
    }
}
