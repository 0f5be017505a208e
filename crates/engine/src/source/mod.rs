//! Model sources: where weights, spec and tokenizer come from before they reach a layer store.
//!
//! Every source answers the same questions through [`ModelSource`]: its [`ModelSpec`], its
//! tokenizer, and each tensor under its canonical [`TensorName`]. The layer store's `split` and the
//! direct (resident) forward pass read sources only through this trait.
//!
//! A source is checked when it is opened, before anything is written: its spec's values
//! ([`ModelSpec::validate`]), every tensor the spec calls for against the shape it must have
//! ([`check_tensors`]), and the layers present against the spec's layer count. A file whose spec
//! disagrees with its tensors is refused with the tensor, the expected and the found shape named,
//! instead of reading log-probabilities from the wrong rows or dropping layers.

pub mod gguf;
pub mod hf;
pub mod synth;
pub mod tiktoken;

use crate::error::{EngineError, Result};
use crate::families::{TensorSource, Transform};
use crate::fingerprint::FileHashes;
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
    OBias,
    FfnNorm,
    GateProj,
    UpProj,
    DownProj,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 13] = [
        LayerTensor::AttnNorm,
        LayerTensor::QProj,
        LayerTensor::KProj,
        LayerTensor::VProj,
        LayerTensor::OProj,
        LayerTensor::QBias,
        LayerTensor::KBias,
        LayerTensor::VBias,
        LayerTensor::OBias,
        LayerTensor::FfnNorm,
        LayerTensor::GateProj,
        LayerTensor::UpProj,
        LayerTensor::DownProj,
    ];

    /// The tensors a layer of `spec` has (biases only where the family uses them).
    pub fn present(spec: &ModelSpec) -> impl Iterator<Item = LayerTensor> + '_ {
        Self::ALL.into_iter().filter(|t| match t {
            LayerTensor::OBias => spec.o_bias,
            t if t.is_bias() => spec.qkv_bias,
            _ => true,
        })
    }

    pub fn is_bias(self) -> bool {
        matches!(self, LayerTensor::QBias | LayerTensor::KBias | LayerTensor::VBias | LayerTensor::OBias)
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
            LayerTensor::OBias => "o_bias",
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

impl TensorName {
    /// The shape `spec` calls for, in Hugging Face layout. `spec` must be valid
    /// ([`ModelSpec::validate`] rules out overflow).
    pub fn expected_shape(self, spec: &ModelSpec) -> Vec<usize> {
        let (h, q, kv, ffn) = (
            spec.hidden_size,
            spec.num_heads * spec.head_dim,
            spec.num_kv_heads * spec.head_dim,
            spec.intermediate_size,
        );
        match self {
            TensorName::Embed | TensorName::LmHead => vec![spec.vocab_size, h],
            TensorName::FinalNorm => vec![h],
            TensorName::Layer(_, t) => match t {
                LayerTensor::AttnNorm | LayerTensor::FfnNorm | LayerTensor::OBias => vec![h],
                LayerTensor::QProj => vec![q, h],
                LayerTensor::KProj | LayerTensor::VProj => vec![kv, h],
                LayerTensor::OProj => vec![h, q],
                LayerTensor::QBias => vec![q],
                LayerTensor::KBias | LayerTensor::VBias => vec![kv],
                LayerTensor::GateProj | LayerTensor::UpProj => vec![ffn, h],
                LayerTensor::DownProj => vec![h, ffn],
            },
        }
    }

    /// Every tensor a model of `spec` has, layer by layer.
    pub fn all(spec: &ModelSpec) -> impl Iterator<Item = TensorName> + '_ {
        let layers =
            (0..spec.num_layers).flat_map(|i| LayerTensor::present(spec).map(move |t| TensorName::Layer(i, t)));
        [TensorName::Embed].into_iter().chain(layers).chain([TensorName::FinalNorm, TensorName::LmHead])
    }
}

/// A model checkpoint that can be read tensor by tensor.
pub trait ModelSource: Send + Sync {
    fn spec(&self) -> &ModelSpec;
    fn tokenizer(&self) -> Result<tokenizers::Tokenizer>;
    /// Reads (and dequantizes where needed) one tensor, undoing any format-specific layout.
    fn tensor(&self, name: TensorName) -> Result<HostTensor>;
    /// The tensor's name in the file and its shape in Hugging Face layout, without reading its
    /// data. An error where the tensor is missing or could not be read (an unsupported element
    /// type), so that [`check_tensors`] finds it before a split starts.
    fn tensor_shape(&self, name: TensorName) -> Result<(String, Vec<usize>)>;
    /// The number of layers the file holds tensors for (the highest layer index + 1).
    fn layers_present(&self) -> usize;
    /// A short, stable fingerprint of the source's content: every byte of every file it reads
    /// (see [`crate::fingerprint`]); `hashes` remembers file hashes between runs.
    fn fingerprint(&self, hashes: &FileHashes) -> Result<String>;
    /// A human-readable description, e.g. the path.
    fn describe(&self) -> String;
    /// The tensor already quantized with `scheme`, where the source holds it in a block format
    /// that converts exactly (same values as [`ModelSource::tensor`] gives, up to f32 rounding).
    /// `Ok(None)` where it does not; the split then quantizes the f32 values itself.
    fn quantized_tensor(&self, name: TensorName, scheme: QuantScheme) -> Result<Option<QuantTensor>> {
        let _ = (name, scheme);
        Ok(None)
    }
    /// The block-quantized type the source holds this tensor in (a ggml type such as `Q6_K`), for
    /// reports of what a split could not convert exactly; `None` for plain float tensors.
    fn block_type(&self, name: TensorName) -> Option<String> {
        let _ = name;
        None
    }
}

/// Checks the spec and every tensor it calls for against the source (see the module doc).
/// Errors name the source, the tensor, and the expected and found shapes.
pub fn check_tensors(source: &dyn ModelSource) -> Result<()> {
    let spec = source.spec();
    let describe = source.describe();
    spec.validate().map_err(|e| EngineError::format(&describe, format!("model spec: {e}")))?;
    let present = source.layers_present();
    if present != spec.num_layers {
        return Err(EngineError::format(
            &describe,
            format!("the spec says {} layers but the file holds tensors of {present}", spec.num_layers),
        ));
    }
    for name in TensorName::all(spec) {
        let expected = name.expected_shape(spec);
        let (file_name, found) = source.tensor_shape(name)?;
        if found != expected {
            return Err(EngineError::format(
                &describe,
                format!("tensor {file_name} has shape {found:?}, the spec needs {expected:?}"),
            ));
        }
    }
    Ok(())
}

/// The shape a [`TensorSource`] gives from a file tensor of shape `file_shape`: its picked rows.
/// An error (for the caller to prefix with the file) where the file tensor has another number of
/// rows than the pick was made for.
pub(crate) fn picked_shape(source: &TensorSource, file_shape: &[usize]) -> std::result::Result<Vec<usize>, String> {
    let Some(pick) = &source.rows else {
        return Ok(file_shape.to_vec());
    };
    match file_shape.split_first() {
        Some((&rows, rest)) if rows == pick.total => Ok([&[pick.len()], rest].concat()),
        _ => Err(format!(
            "tensor {} has shape {file_shape:?}; {} rows were expected, holding several projections",
            source.name, pick.total
        )),
    }
}

/// Applies a [`TensorSource`]'s row pick and transform to the whole file tensor `tensor`.
pub(crate) fn apply_source(source: &TensorSource, tensor: HostTensor) -> HostTensor {
    let tensor = match &source.rows {
        None => tensor,
        Some(pick) => {
            let shape = [&[pick.len()], &tensor.shape[1..]].concat();
            HostTensor { dtype: tensor.dtype, shape, bytes: pick.gather(&tensor.bytes) }
        }
    };
    match source.transform {
        Transform::None => tensor,
        Transform::NormalizeRows => {
            let mut values = tensor.to_f32();
            normalize_rows(&mut values, tensor.shape[0]);
            HostTensor::from_f32(tensor.shape, &values)
        }
    }
}

/// Divides each of `rows` rows by its L2 norm, as torch's `F.normalize` (eps 1e-12) does.
fn normalize_rows(values: &mut [f32], rows: usize) {
    let width = values.len() / rows.max(1);
    for row in values.chunks_exact_mut(width.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// The layer index of a tensor name such as `blk.3.attn_q.weight` after `prefix` (`blk.`).
pub(crate) fn layer_index(tensor_name: &str, prefix: &str) -> Option<usize> {
    tensor_name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
}

/// The chat template a model ships (Jinja text): GGUF metadata `tokenizer.chat_template`, or a
/// Hugging Face folder's `tokenizer_config.json` `chat_template` (its `default` entry where it
/// lists several). `None` where the model has none, or `path` is a layer store.
pub fn chat_template(path: &std::path::Path) -> Result<Option<String>> {
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        let source = gguf::GgufSource::open(path)?;
        return Ok(source.metadata_str("tokenizer.chat_template").map(str::to_string));
    }
    let config = path.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config).map_err(|e| crate::EngineError::io(&config, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| crate::EngineError::format(&config, format!("invalid JSON: {e}")))?;
    Ok(match &json["chat_template"] {
        serde_json::Value::String(template) => Some(template.clone()),
        serde_json::Value::Array(named) => {
            named.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string)
        }
        _ => None,
    })
}

/// Opens a Hugging Face directory or a `.gguf` file.
pub fn open(path: &std::path::Path) -> Result<Box<dyn ModelSource>> {
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return Ok(Box::new(gguf::GgufSource::open(path)?));
    }
    if hf::HfSource::is_hf_dir(path) {
        return Ok(Box::new(hf::HfSource::open(path)?));
    }
    if path.join(crate::store::SPLIT_PROGRESS).is_file() {
        return Err(crate::EngineError::format(
            path,
            "an incomplete layer store (a split that did not finish): split the model into it again",
        ));
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
