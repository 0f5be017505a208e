//! Synthetic Llama-shaped models with random weights, for benchmarks and for models larger than
//! any checkpoint at hand. Tensors are generated on demand from a seed and the tensor's name, so
//! splitting one into a store never holds more than the layer being written.

use tokenizers::Tokenizer;

use super::{LayerTensor, ModelSource, TensorName};
use crate::error::{EngineError, Result};
use crate::fingerprint::FileHashes;
use crate::spec::ModelSpec;
use crate::tensor::{DType, HostTensor};

pub struct SynthSource {
    spec: ModelSpec,
    seed: u64,
    dtype: DType,
    /// A real tokenizer to ship in the store instead of the byte-level one, so prompts tokenize
    /// to realistic lengths.
    tokenizer: Option<Tokenizer>,
}

/// Shape of a synthetic model.
#[derive(Debug, Clone)]
pub struct SynthShape {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
}

impl SynthSource {
    pub fn new(shape: &SynthShape, seed: u64, dtype: DType) -> Result<Self> {
        if shape.heads == 0
            || !shape.hidden.is_multiple_of(shape.heads)
            || shape.kv_heads == 0
            || !shape.heads.is_multiple_of(shape.kv_heads)
        {
            return Err(EngineError::Other(format!(
                "synthetic model: hidden {} must divide into {} heads, and heads into {} kv heads",
                shape.hidden, shape.heads, shape.kv_heads
            )));
        }
        if shape.vocab < 256 {
            return Err(EngineError::Other("synthetic model: vocab must be at least 256 (byte tokens)".into()));
        }
        let spec = ModelSpec {
            family: "llama".into(),
            vocab_size: shape.vocab,
            hidden_size: shape.hidden,
            intermediate_size: shape.intermediate,
            num_layers: shape.layers,
            num_heads: shape.heads,
            num_kv_heads: shape.kv_heads,
            head_dim: shape.hidden / shape.heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            max_position_embeddings: 4096,
            ..ModelSpec::default()
        };
        spec.validate().map_err(|e| EngineError::Other(format!("synthetic model: {e}")))?;
        Ok(Self { spec, seed, dtype, tokenizer: None })
    }

    /// Ships `tokenizer` in the store; the model's vocabulary must cover its ids.
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Result<Self> {
        let needed = tokenizer.get_vocab_size(true);
        if needed > self.spec.vocab_size {
            return Err(EngineError::Other(format!(
                "synthetic model: the tokenizer has {needed} tokens but the vocabulary is {}; raise --vocab",
                self.spec.vocab_size
            )));
        }
        self.tokenizer = Some(tokenizer);
        Ok(self)
    }
}

impl ModelSource for SynthSource {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Byte-level BPE with the 256 byte tokens and no merges.
    fn tokenizer(&self) -> Result<Tokenizer> {
        if let Some(tokenizer) = &self.tokenizer {
            return Ok(tokenizer.clone());
        }
        let mut alphabet: Vec<char> =
            tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
        alphabet.sort();
        let vocab: serde_json::Map<String, serde_json::Value> =
            alphabet.iter().enumerate().map(|(i, c)| (c.to_string(), i.into())).collect();
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "vocab": vocab, "merges": []}
        });
        Tokenizer::from_bytes(json.to_string()).map_err(|e| EngineError::Other(format!("synthetic tokenizer: {e}")))
    }

    fn tensor(&self, name: TensorName) -> Result<HostTensor> {
        let shape = name.expected_shape(&self.spec);
        let numel: usize = shape.iter().product();
        let is_norm =
            matches!(name, TensorName::FinalNorm | TensorName::Layer(_, LayerTensor::AttnNorm | LayerTensor::FfnNorm));
        let values: Vec<f32> = if is_norm {
            vec![1.0; numel]
        } else {
            // Uniform with the variance of N(0, 1/fan_in), so activations keep their scale.
            let limit = (3.0 / *shape.last().expect("non-empty shape") as f32).sqrt();
            let mut state = self.seed ^ xxhash_rust::xxh3::xxh3_64(format!("{name:?}").as_bytes());
            (0..numel).map(|_| (next_unit(&mut state) * 2.0 - 1.0) * limit).collect()
        };
        Ok(HostTensor::from_f32(shape, &values).cast(self.dtype))
    }

    fn tensor_shape(&self, name: TensorName) -> Result<(String, Vec<usize>)> {
        Ok((format!("{name:?}"), name.expected_shape(&self.spec)))
    }

    fn layers_present(&self) -> usize {
        self.spec.num_layers
    }

    fn fingerprint(&self, _hashes: &FileHashes) -> Result<String> {
        let tokenizer = self.tokenizer.as_ref().map(|t| t.to_string(false).unwrap_or_default());
        let identity = format!("{:?}{}{:?}{:?}", self.spec, self.seed, self.dtype, tokenizer);
        Ok(format!("synth-{:016x}", xxhash_rust::xxh3::xxh3_64(identity.as_bytes())))
    }

    fn describe(&self) -> String {
        format!("synthetic llama {}x{} (seed {})", self.spec.num_layers, self.spec.hidden_size, self.seed)
    }
}

/// splitmix64 mapped to [0, 1).
fn next_unit(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}
