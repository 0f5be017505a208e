//! Model sources: where weights, spec and tokenizer come from before they reach a layer store.
//!
//! Every source answers the same questions through [`ModelSource`]: its [`ModelSpec`], its
//! tokenizer, and each tensor under its canonical [`TensorName`]. The layer store's `split` and the
//! direct (resident) forward pass read sources only through this trait.

pub mod gguf;
pub mod hf;
pub mod synth;

use crate::error::Result;
use crate::spec::ModelSpec;
use crate::store::quant::{QuantScheme, QuantTensor};
use crate::tensor::HostTensor;

/// The tensors of one decoder layer, named independently of any file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    AttnNorm,
    QProj,
    KProj,
    VProj,
    OProj,
    QBias,
    KBias,
    VBias,
    FfnNorm,
    GateProj,
    UpProj,
    DownProj,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 12] = [
        LayerTensor::AttnNorm,
        LayerTensor::QProj,
        LayerTensor::KProj,
        LayerTensor::VProj,
        LayerTensor::OProj,
        LayerTensor::QBias,
        LayerTensor::KBias,
        LayerTensor::VBias,
        LayerTensor::FfnNorm,
        LayerTensor::GateProj,
        LayerTensor::UpProj,
        LayerTensor::DownProj,
    ];

    /// The tensors a layer of `spec` has (biases only where the family uses them).
    pub fn present(spec: &ModelSpec) -> impl Iterator<Item = LayerTensor> + '_ {
        Self::ALL.into_iter().filter(|t| spec.qkv_bias || !t.is_bias())
    }

    pub fn is_bias(self) -> bool {
        matches!(self, LayerTensor::QBias | LayerTensor::KBias | LayerTensor::VBias)
    }

    /// The 2-D linear weights (attention and MLP projections), the tensors a compressed store
    /// quantizes.
    pub fn is_linear(self) -> bool {
        matches!(
            self,
            LayerTensor::QProj
                | LayerTensor::KProj
                | LayerTensor::VProj
                | LayerTensor::OProj
                | LayerTensor::GateProj
                | LayerTensor::UpProj
                | LayerTensor::DownProj
        )
    }

    /// Name inside a layer store file.
    pub fn store_name(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "attn_norm",
            LayerTensor::QProj => "q_proj",
            LayerTensor::KProj => "k_proj",
            LayerTensor::VProj => "v_proj",
            LayerTensor::OProj => "o_proj",
            LayerTensor::QBias => "q_bias",
            LayerTensor::KBias => "k_bias",
            LayerTensor::VBias => "v_bias",
            LayerTensor::FfnNorm => "ffn_norm",
            LayerTensor::GateProj => "gate_proj",
            LayerTensor::UpProj => "up_proj",
            LayerTensor::DownProj => "down_proj",
        }
    }
}

/// A tensor of the model, named independently of any file format.
/// Linear weights are `[out_features, in_features]` as in Hugging Face checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorName {
    /// `[vocab, hidden]`
    Embed,
    Layer(usize, LayerTensor),
    /// `[hidden]`
    FinalNorm,
    /// `[vocab, hidden]`; for tied embeddings sources answer with the embedding matrix.
    LmHead,
}

/// A model checkpoint that can be read tensor by tensor.
pub trait ModelSource: Send + Sync {
    fn spec(&self) -> &ModelSpec;
    fn tokenizer(&self) -> Result<tokenizers::Tokenizer>;
    /// Reads (and dequantizes where needed) one tensor, undoing any format-specific layout.
    fn tensor(&self, name: TensorName) -> Result<HostTensor>;
    /// A short, stable fingerprint of the source files (sizes and content hashes of headers).
    fn fingerprint(&self) -> Result<String>;
    /// A human-readable description, e.g. the path.
    fn describe(&self) -> String;
    /// The tensor already quantized with `scheme`, where the source holds it in a block format
    /// that converts exactly (same values as [`ModelSource::tensor`] gives, up to f32 rounding).
    /// `Ok(None)` where it does not; the split then quantizes the f32 values itself.
    fn quantized_tensor(&self, name: TensorName, scheme: QuantScheme) -> Result<Option<QuantTensor>> {
        let _ = (name, scheme);
        Ok(None)
    }
}

/// Opens a Hugging Face directory or a `.gguf` file.
pub fn open(path: &std::path::Path) -> Result<Box<dyn ModelSource>> {
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return Ok(Box::new(gguf::GgufSource::open(path)?));
    }
    if hf::HfSource::is_hf_dir(path) {
        return Ok(Box::new(hf::HfSource::open(path)?));
    }
    if !path.exists() {
        return Err(crate::EngineError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model source not found"),
        ));
    }
    Err(crate::EngineError::format(
        path,
        "not a model source: expected a .gguf file or a Hugging Face directory with config.json",
    ))
}
