//! Compressed (int8/int4) layer stores: unknown schemes refused by name, the GGUF fast path giving
//! the GGUF's own values (Q4_K and Q5_0 blocks against gguf-py's), an int8 store keeping a Q4 GGUF's
//! blocks as int4, resume and reuse keyed on the compression, and logits of compressed stores
//! against uncompressed ones (tiny models and SmolLM2).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use airllm_engine::executor::{Engine, EngineOptions};
use airllm_engine::fingerprint::FileHashes;
use airllm_engine::source::gguf::GgufSource;
use airllm_engine::source::gguf::convert::exact_blocks;
use airllm_engine::source::gguf::dequant::GgmlType;
use airllm_engine::source::{LayerTensor, ModelSource, TensorName};
use airllm_engine::store::quant::{QuantScheme, QuantTensor, as_f16s, dequantize};
use airllm_engine::store::{COMPRESSION_RULES, Compression, LayerStore, Manifest, SplitOptions, checksum, split};
use airllm_engine::{DType, HostTensor, ModelSpec};
use common::*;
use half::f16;
use safetensors::SafeTensors;

fn tiny_llama() -> Box<dyn ModelSource> {
    airllm_engine::source::open(&fixtures().join("models/tiny-llama")).unwrap()
}

fn options(compression: Compression) -> SplitOptions {
    SplitOptions { compression, ..Default::default() }
}

fn split_to(source: &dyn ModelSource, dir: &Path, options: &SplitOptions) {
    split(source, dir, options, &|_, _, _| {}).unwrap();
}

/// Logits of every reference prompt, concatenated.
fn logits_of(store: &Path, references: &[Reference]) -> Vec<Vec<f32>> {
    let mut engine = Engine::open(store, EngineOptions { micro_batch_tokens: 64, ..Default::default() }).unwrap();
    references.iter().map(|r| engine.logits(&r.ids).unwrap()).collect()
}

fn max_abs(logits: &[Vec<f32>]) -> f32 {
    logits.iter().flatten().fold(0f32, |m, v| m.max(v.abs()))
}

#[test]
fn compression_parses_and_prints() {
    for (text, c) in [("none", Compression::None), ("int8", Compression::Int8), ("INT4", Compression::Int4)] {
        assert_eq!(text.parse::<Compression>().unwrap(), c);
        assert_eq!(c.to_string(), text.to_lowercase());
    }
    let err = "int3".parse::<Compression>().unwrap_err();
    assert!(err.contains("int3") && err.contains("none, int8, int4"), "{err}");
}

#[test]
fn unknown_scheme_is_refused_naming_store_scheme_and_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    split_to(tiny_llama().as_ref(), dir.path(), &options(Compression::Int8));
    let path = dir.path().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"compression\": \"int8\"") && text.contains("\"block_size\": 32"), "{text}");

    std::fs::write(&path, text.replace("\"int8\"", "\"int3\"")).unwrap();
    let err = LayerStore::open(dir.path()).err().expect("must be refused").to_string();
    assert!(err.contains(&dir.path().display().to_string()), "names the store: {err}");
    assert!(err.contains("int3") && err.contains("none, int8, int4"), "{err}");

    std::fs::write(&path, text.replace("\"block_size\": 32", "\"block_size\": 64")).unwrap();
    let err = LayerStore::open(dir.path()).err().expect("must be refused").to_string();
    assert!(err.contains("block_size 64") && err.contains("32"), "{err}");

    // A store written before compression existed (no block_size) still opens.
    std::fs::write(&path, text.replace("\"int8\"", "\"none\"").replace("  \"block_size\": 32,\n", "")).unwrap();
    assert_eq!(LayerStore::open(dir.path()).unwrap().manifest().compression, Compression::None);
}

#[test]
fn layer_files_hold_quantized_linear_weights_and_plain_norms() {
    let source = tiny_llama();
    let (plain, int8, int4) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    split_to(source.as_ref(), plain.path(), &options(Compression::None));
    split_to(source.as_ref(), int8.path(), &options(Compression::Int8));
    split_to(source.as_ref(), int4.path(), &options(Compression::Int4));
    let store = LayerStore::open(int4.path()).unwrap();
    let names: Vec<String> = store.tensor_sizes("layer-000.safetensors").unwrap().into_iter().map(|t| t.0).collect();
    assert!(names.contains(&"attn_norm".to_string()) && names.contains(&"q_proj.q".to_string()), "{names:?}");
    assert!(names.contains(&"q_proj.min".to_string()) && !names.contains(&"q_proj".to_string()), "{names:?}");
    // Embedding and head stay as they were.
    let size = |dir: &Path, file: &str| std::fs::metadata(dir.join(file)).unwrap().len();
    assert_eq!(size(plain.path(), "embed.safetensors"), size(int4.path(), "embed.safetensors"));
    assert!(size(int8.path(), "layer-000.safetensors") < size(plain.path(), "layer-000.safetensors") / 3);
    assert!(size(int4.path(), "layer-000.safetensors") < size(int8.path(), "layer-000.safetensors"));

    // read_layer hands back f32 values of the original shapes, close to the originals.
    let reference = LayerStore::open(plain.path()).unwrap().read_layer(1).unwrap().into_f32();
    let bytes_before = store.bytes_read();
    let layer_f32 = store.read_layer(1).unwrap().into_f32();
    assert_eq!(store.bytes_read() - bytes_before, size(int4.path(), "layer-001.safetensors"), "counts disk bytes");
    for (name, (shape, values)) in &reference {
        let (our_shape, ours) = &layer_f32[name];
        assert_eq!(our_shape, shape, "{name:?}");
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = values.iter().zip(ours).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // int4: half a step, a block's range / 15 <= 2 amax / 15, widened by the f16 rounding of
        // the minimum (down) and the scale (up), each under 2^-10 relative.
        assert!(err <= amax / 15.0 * (1.0 + 1.0 / 256.0) + 1e-7, "{name:?}: max err {err}, amax {amax}");
        if !name.is_linear() {
            assert_eq!(ours, values, "{name:?} is stored as it is");
        }
    }
}

#[test]
fn gguf_fast_path_gives_the_gguf_values() {
    for (kind, scheme) in [("q8_0", QuantScheme::Int8), ("q4_0", QuantScheme::Int4), ("q4_1", QuantScheme::Int4)] {
        let source = GgufSource::open(&fixtures().join(format!("gguf/tiny-llama.{kind}.gguf"))).unwrap();
        let mut converted = 0;
        for layer in 0..source.spec().num_layers {
            for t in LayerTensor::present(source.spec()).filter(|t| t.is_linear()) {
                let name = TensorName::Layer(layer, t);
                let other = if scheme == QuantScheme::Int8 { QuantScheme::Int4 } else { QuantScheme::Int8 };
                assert!(source.quantized_tensor(name, other).unwrap().is_none(), "{kind} {name:?} as {other:?}");
                let Some(quant) = source.quantized_tensor(name, scheme).unwrap() else {
                    continue;
                };
                converted += 1;
                let expected = source.tensor(name).unwrap();
                assert_eq!(quant.shape, expected.shape, "{kind} {name:?}");
                let ours = dequantize(&quant);
                let bad = ours.iter().zip(expected.to_f32()).position(|(&a, b)| a != b);
                assert!(bad.is_none(), "{kind} {name:?}: element {bad:?} differs");
            }
        }
        assert!(converted >= 7 * source.spec().num_layers, "{kind}: only {converted} tensors took the fast path");
    }
    // A float GGUF has no blocks to hand over.
    let f16 = GgufSource::open(&fixtures().join("gguf/tiny-llama.f16.gguf")).unwrap();
    let q = TensorName::Layer(0, LayerTensor::QProj);
    assert!(f16.quantized_tensor(q, QuantScheme::Int8).unwrap().is_none());
}

/// The committed Q4_K and Q5_0 blocks (random bytes, scales from f16 subnormals to 60000: see
/// make_kquant_blocks.py) convert into int4 and int8 store blocks that decode to gguf-py's values
/// bit for bit. Q4_K's sub-block scales and minima are f32s, mostly not f16s (a store keeps them as
/// F32); Q5_0's scale is its f16 `d`.
#[test]
fn gguf_py_blocks_convert_exactly() {
    for (id, scheme, shape, f16_scales) in
        [(GgmlType::Q4_K, QuantScheme::Int4, [2, 512], false), (GgmlType::Q5_0, QuantScheme::Int8, [2, 128], true)]
    {
        let ty = GgmlType::from_id(id).unwrap();
        let (blocks, expected) = gguf_py_blocks(ty.name);
        let quant = exact_blocks(ty, &blocks, &shape, scheme).unwrap();
        quant.check().unwrap();
        assert_eq!(quant.scheme, scheme, "{}", ty.name);
        assert_eq!(as_f16s(&quant.scale).is_some(), f16_scales, "{}", ty.name);
        let ours = dequantize(&quant);
        if let Some(i) = ours.iter().zip(&expected).position(|(a, b)| a.to_bits() != b.to_bits()) {
            panic!("{} as {scheme:?}: value {i} decodes to {:e}, gguf-py has {:e}", ty.name, ours[i], expected[i]);
        }
        // Into the other scheme there is no exact form.
        let other = if scheme == QuantScheme::Int8 { QuantScheme::Int4 } else { QuantScheme::Int8 };
        assert!(exact_blocks(ty, &blocks, &shape, other).is_none(), "{} as {other:?}", ty.name);
    }
}

/// Rewrites the F16 tensor `tensor` of a store file as `dtype` (F32 or BF16) and fixes the
/// manifest's size and checksum.
fn retype(dir: &Path, file: &str, tensor: &str, dtype: safetensors::Dtype) {
    let bytes = std::fs::read(dir.join(file)).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.dtype(), view.shape().to_vec(), view.data().to_vec()))
        .collect();
    let entry = owned.iter_mut().find(|t| t.0 == tensor).unwrap();
    assert_eq!(entry.1, safetensors::Dtype::F16, "{tensor}");
    let values = entry.3.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32());
    entry.3 = match dtype {
        safetensors::Dtype::F32 => values.flat_map(f32::to_le_bytes).collect(),
        safetensors::Dtype::BF16 => values.flat_map(|v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        other => panic!("retype to {other:?}"),
    };
    entry.1 = dtype;
    let views = owned
        .iter()
        .map(|(name, dtype, shape, data)| {
            (name.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap())
        })
        .collect::<Vec<_>>();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join(file), &bytes).unwrap();
    let mut manifest = Manifest::read(dir).unwrap();
    let entry = manifest.files.iter_mut().find(|f| f.name == file).unwrap();
    (entry.size, entry.checksum) = (bytes.len() as u64, checksum(&bytes));
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

/// Block scales and minima are F16 in a store file where every value is an f16 (always, for values
/// quantized from f32), else F32; the reader takes both, and refuses any other dtype, naming the
/// file and the tensor, rather than misread it.
#[test]
fn scales_are_f16_or_f32_and_other_dtypes_are_refused_naming_file_and_tensor() {
    let source = tiny_llama();
    for (compression, tensor) in [(Compression::Int8, "q_proj.scale"), (Compression::Int4, "down_proj.min")] {
        let dir = tempfile::tempdir().unwrap();
        split_to(source.as_ref(), dir.path(), &options(compression));
        let store = LayerStore::open(dir.path()).unwrap();
        let sizes: std::collections::HashMap<String, usize> =
            store.tensor_sizes("layer-001.safetensors").unwrap().into_iter().collect();
        let spec = source.spec();
        let blocks = spec.num_heads * spec.head_dim * spec.hidden_size / 32;
        assert_eq!(sizes["q_proj.scale"], 2 * blocks, "{compression}: one f16 per block");
        let before = store.read_layer(1).unwrap().into_f32();

        retype(dir.path(), "layer-001.safetensors", tensor, safetensors::Dtype::F32);
        let store = LayerStore::open(dir.path()).unwrap();
        assert_eq!(store.read_layer(1).unwrap().into_f32(), before, "{compression}: F32 {tensor} reads the same");

        let dir = tempfile::tempdir().unwrap();
        split_to(source.as_ref(), dir.path(), &options(compression));
        retype(dir.path(), "layer-001.safetensors", tensor, safetensors::Dtype::BF16);
        let store = LayerStore::open(dir.path()).unwrap();
        store.read_layer(0).unwrap();
        let err = store.read_layer(1).err().expect("must be refused").to_string();
        assert!(err.contains("layer-001.safetensors") && err.contains(tensor), "names file and tensor: {err}");
        assert!(err.contains("BF16") && err.contains("expected F16 or F32"), "{err}");
    }
}

/// A model source that hands over tiny-llama with one weight scaled out of f16's reach.
struct Huge {
    inner: Box<dyn ModelSource>,
    name: TensorName,
    factor: f32,
}

impl ModelSource for Huge {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }
    fn tokenizer(&self) -> airllm_engine::Result<tokenizers::Tokenizer> {
        self.inner.tokenizer()
    }
    fn tensor(&self, name: TensorName) -> airllm_engine::Result<HostTensor> {
        let tensor = self.inner.tensor(name)?;
        if name != self.name {
            return Ok(tensor);
        }
        let values: Vec<f32> = tensor.to_f32().iter().map(|v| v * self.factor).collect();
        Ok(HostTensor::from_f32(tensor.shape, &values))
    }
    fn tensor_shape(&self, name: TensorName) -> airllm_engine::Result<(String, Vec<usize>)> {
        self.inner.tensor_shape(name)
    }
    fn layers_present(&self) -> usize {
        self.inner.layers_present()
    }
    fn fingerprint(&self, hashes: &FileHashes) -> airllm_engine::Result<String> {
        Ok(format!("{}-huge-{}", self.inner.fingerprint(hashes)?, self.factor))
    }
    fn describe(&self) -> String {
        "huge".into()
    }
    fn quantized_tensor(&self, name: TensorName, scheme: QuantScheme) -> airllm_engine::Result<Option<QuantTensor>> {
        self.inner.quantized_tensor(name, scheme)
    }
}

/// A weight whose block scales (or int4 minima) do not fit in an f16 is stored uncompressed, as
/// it is, and reads back exactly; the other weights of the layer are still compressed.
#[test]
fn weights_beyond_f16_scales_are_stored_uncompressed() {
    let name = TensorName::Layer(1, LayerTensor::OProj);
    let source = Huge { inner: tiny_llama(), name, factor: 1e9 };
    let expected = source.tensor(name).unwrap().to_f32();
    for compression in [Compression::Int8, Compression::Int4] {
        let dir = tempfile::tempdir().unwrap();
        let options = SplitOptions { compression, dtype: Some(DType::F32), ..Default::default() };
        split_to(&source, dir.path(), &options);
        let store = LayerStore::open(dir.path()).unwrap();
        let names: Vec<String> =
            store.tensor_sizes("layer-001.safetensors").unwrap().into_iter().map(|t| t.0).collect();
        assert!(names.contains(&"o_proj".to_string()) && !names.contains(&"o_proj.q".to_string()), "{names:?}");
        assert!(names.contains(&"q_proj.q".to_string()), "{names:?}");
        let layer = store.read_layer(1).unwrap().into_f32();
        assert_eq!(layer[&LayerTensor::OProj].1, expected, "{compression}");
    }
}

/// From a Q4_x (Q8_0) GGUF, an int4 (int8) store holds exactly the GGUF's values: its logits are
/// those of the f32 store. So does an int8 store of a Q4_x GGUF, which keeps the Q4 blocks as int4
/// (more bits must not be less accurate).
#[test]
fn gguf_fast_path_store_gives_the_f32_store_logits() {
    let references = read_references(&fixtures().join("gguf/tiny-llama.q4_1.reference.safetensors"));
    let cases = [
        ("q8_0", Compression::Int8),
        ("q4_0", Compression::Int4),
        ("q4_1", Compression::Int4),
        ("q4_0", Compression::Int8),
        ("q4_1", Compression::Int8),
    ];
    for (kind, compression) in cases {
        let source = airllm_engine::source::open(&fixtures().join(format!("gguf/tiny-llama.{kind}.gguf"))).unwrap();
        let (plain, packed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        split_to(source.as_ref(), plain.path(), &options(Compression::None));
        split_to(source.as_ref(), packed.path(), &options(compression));
        let vocab = source.spec().vocab_size;
        let (max, mean, top1) =
            drift(&logits_of(plain.path(), &references), &logits_of(packed.path(), &references), vocab);
        eprintln!("{kind} -> {compression}: max |diff| {max:.3e}, mean {mean:.3e}, top-1 agreement {top1}");
        assert!(max == 0.0 && top1 == 1.0, "{kind} -> {compression}: max {max}, top-1 {top1}");
    }
}

/// Root mean square of `a - b` over that of `b`.
fn relative_rms(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        diff += f64::from(x - y).powi(2);
        norm += f64::from(*y).powi(2);
    }
    (diff / norm).sqrt() as f32
}

/// A tiny random f32 model quantized from f32: logits stay close to the uncompressed store's.
///
/// Tolerance: block rounding adds noise of about `step / sqrt(12)` per weight, with step
/// `max|x| / 127` (int8) or `(max x - min x) / 15` (int4); for gaussian weights that is about 0.7%
/// (int8) and 11% (int4) of the weights' spread. The logits' relative RMS error must stay within
/// about three times that (3%, 35%). Top-1 agreement is checked loosely: a random tiny model's
/// logits are nearly flat (max |logit| under 4), so near-ties flip where a trained model's do not.
#[test]
fn compressed_tiny_model_logits_stay_close() {
    let dir = fixtures().join("models/tiny-llama");
    let references = read_references(&dir.join("reference.safetensors"));
    let source = tiny_llama();
    let vocab = source.spec().vocab_size;
    let plain = tempfile::tempdir().unwrap();
    split_to(source.as_ref(), plain.path(), &options(Compression::None));
    let base = logits_of(plain.path(), &references);
    let scale = max_abs(&base);
    for (compression, tolerance, min_top1) in [(Compression::Int8, 0.03, 0.85), (Compression::Int4, 0.35, 0.5)] {
        let packed = tempfile::tempdir().unwrap();
        split_to(source.as_ref(), packed.path(), &options(compression));
        let logits = logits_of(packed.path(), &references);
        let (max, mean, top1) = drift(&base, &logits, vocab);
        let rms = relative_rms(&logits, &base);
        eprintln!(
            "tiny-llama {compression}: relative RMS {rms:.3e}, max |diff| {max:.3e} (max |logit| {scale:.3}), \
             mean {mean:.3e}, top-1 {top1:.3}"
        );
        assert!(rms <= tolerance, "{compression}: relative RMS error {rms} > {tolerance}");
        assert!(top1 >= min_top1, "{compression}: top-1 agreement {top1}");
    }
}

#[test]
fn resume_and_reuse_are_keyed_on_compression() {
    let source = tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    // An int8 split killed after four files...
    let killed = catch_unwind(AssertUnwindSafe(|| {
        split(source.as_ref(), dir.path(), &options(Compression::Int8), &|_, done, _| {
            if done == 4 {
                panic!("killed");
            }
        })
    }));
    assert!(killed.is_err());
    // ...is not resumed as int4.
    let int4 = split(source.as_ref(), dir.path(), &options(Compression::Int4), &|_, _, _| {}).unwrap();
    assert_eq!(int4.reused_files, 0);
    assert_eq!(int4.manifest.compression, Compression::Int4);
    // A complete int4 store is rewritten for int8, kept for int8 again.
    let int8 = split(source.as_ref(), dir.path(), &options(Compression::Int8), &|_, _, _| {}).unwrap();
    assert_eq!((int8.reused_files, int8.written_files), (0, int4.manifest.files.len()));
    assert_eq!(LayerStore::open(dir.path()).unwrap().manifest().compression, Compression::Int8);
    let again = split(source.as_ref(), dir.path(), &options(Compression::Int8), &|_, _, _| {}).unwrap();
    assert_eq!(again.written_files, 0);
    // As is asking for the embedding and head in int8.
    let embed = SplitOptions { compression: Compression::Int8, quantize_embed_head: true, ..Default::default() };
    let report = split(source.as_ref(), dir.path(), &embed, &|_, _, _| {}).unwrap();
    assert_eq!(report.reused_files, 0);
    assert!(report.manifest.quantized_embed_head);
    assert_eq!(report.manifest.compression_rules, COMPRESSION_RULES);

    // A compressed store written under older compression rules (before int8 stores kept exact
    // int4 blocks: no field) is written again; an uncompressed one is kept.
    let manifest = dir.path().join("manifest.json");
    let older = |manifest: &Path| {
        let text = std::fs::read_to_string(manifest).unwrap();
        let field = format!("  \"compression_rules\": {COMPRESSION_RULES},\n");
        assert!(text.contains(&field), "{text}");
        std::fs::write(manifest, text.replace(&field, "")).unwrap();
    };
    older(&manifest);
    let again = split(source.as_ref(), dir.path(), &embed, &|_, _, _| {}).unwrap();
    assert_eq!((again.reused_files, again.written_files), (0, report.manifest.files.len()));
    let plain = options(Compression::None);
    let first = split(source.as_ref(), dir.path(), &plain, &|_, _, _| {}).unwrap();
    older(&manifest);
    let kept = split(source.as_ref(), dir.path(), &plain, &|_, _, _| {}).unwrap();
    assert_eq!((kept.written_files, kept.reused_files), (0, first.manifest.files.len()));
}

/// SmolLM2-135M (Q4_1 GGUF, embedding in Q8_0): an int4 store takes the GGUF blocks as they are
/// and gives the f32 store's logits exactly; so does storing the embedding/head as int8 (the GGUF's
/// own Q8_0). So does an int8 store: more bits must never be less accurate, and requantizing the
/// Q4_1 values at 8 bits drifted (max 3.1, mean 0.20 when it was done), so it keeps the Q4_1 blocks
/// as int4 and is the int4 store. Sizes: layer files 0.1566 of f32, totals 0.4512 (embedding f32)
/// and 0.1965 (int8); the bounds leave about 0.005.
#[test]
fn smollm2_compressed_stores() {
    let references = read_references(&fixtures().join("reference/smollm2-135m-instruct.logits.safetensors"));
    let source = airllm_engine::source::open(&smollm2_gguf()).unwrap();
    let vocab = source.spec().vocab_size;
    let plain = tempfile::tempdir().unwrap();
    split_to(source.as_ref(), plain.path(), &options(Compression::None));
    let base = logits_of(plain.path(), &references);
    let sizes = |dir: &Path| -> (u64, u64) {
        let manifest = LayerStore::open(dir).unwrap().manifest().clone();
        let layers = manifest.files.iter().filter(|f| f.name.starts_with("layer-")).map(|f| f.size).sum();
        (layers, manifest.total_size())
    };
    let (plain_layers, plain_total) = sizes(plain.path());
    // (compression, embed/head int8, max layer-file ratio, max total ratio, max drift, mean drift, top-1)
    let cases = [
        (Compression::Int4, false, 0.16, 0.455, 1e-5, 1e-6, 1.0),
        (Compression::Int4, true, 0.16, 0.20, 1e-5, 1e-6, 1.0),
        (Compression::Int8, false, 0.16, 0.455, 1e-5, 1e-6, 1.0),
        (Compression::Int8, true, 0.16, 0.20, 1e-5, 1e-6, 1.0),
    ];
    let mut logits = Vec::new();
    for (compression, quantize_embed_head, layer_ratio, total_ratio, max_drift, mean_drift, min_top1) in cases {
        let dir = tempfile::tempdir().unwrap();
        let options = SplitOptions { compression, quantize_embed_head, ..Default::default() };
        let report = split(source.as_ref(), dir.path(), &options, &|_, _, _| {}).unwrap();
        let linear = 7 * source.spec().num_layers;
        assert_eq!(report.compressed.exact.get("Q4_1 -> int4"), Some(&linear), "{compression}: {report:?}");
        assert!(report.compressed.requantized.is_empty(), "{compression}: {:?}", report.compressed);
        let (layers, total) = sizes(dir.path());
        let (layers, total) = (layers as f64 / plain_layers as f64, total as f64 / plain_total as f64);
        let ours = logits_of(dir.path(), &references);
        let (max, mean, top1) = drift(&base, &ours, vocab);
        eprintln!(
            "smollm2 {compression} (embed/head int8: {quantize_embed_head}): layers {layers:.4} of f32, total \
             {total:.4}, logit drift max {max:.3e} mean {mean:.3e}, top-1 agreement {top1:.4}"
        );
        assert!(layers <= layer_ratio && total <= total_ratio, "{compression}: sizes {layers}, {total} of f32");
        assert!(max <= max_drift && mean <= mean_drift, "{compression}: drift max {max}, mean {mean}");
        assert!(top1 >= min_top1, "{compression}: top-1 agreement {top1}");
        logits.push(ours);
    }
    // The int8 stores hold the int4 stores' very values: the same logits, bit for bit.
    assert!(logits[2] == logits[0] && logits[3] == logits[1], "int8 and int4 stores of a Q4_1 GGUF differ");
}
