//! GGUF source: SmolLM2's spec, tensors and tokenizer; dequantization of each block type (the Q5
//! and k-quant types against gguf-py's values); a k-quant GGUF split into compressed stores; the Q/K
//! un-permutation; truncated and foreign files giving errors instead of panics.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use airllm_engine::EngineError;
use airllm_engine::ModelSpec;
use airllm_engine::families::unpermute_ranges;
use airllm_engine::fingerprint::FileHashes;
use airllm_engine::source::gguf::GgufSource;
use airllm_engine::source::gguf::dequant::{GgmlType, dequantize};
use airllm_engine::source::{LayerTensor, ModelSource, TensorName, hf::HfSource};
use airllm_engine::store::{Compression, LayerStore, SplitOptions, split};
use half::{bf16, f16};
use safetensors::SafeTensors;

fn smollm2() -> GgufSource {
    let path = common::smollm2_gguf();
    GgufSource::open(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn smollm2_spec() {
    let source = smollm2();
    let expected = ModelSpec {
        family: "llama".into(),
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        tie_word_embeddings: true,
        max_position_embeddings: 8192,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..ModelSpec::default()
    };
    assert_eq!(source.spec(), &expected);
    assert_eq!(source.header().version, 3);
}

#[test]
fn smollm2_tensor_types_and_shapes() {
    let source = smollm2();
    let count = |name: &str| source.header().tensors.iter().filter(|t| t.ggml_type.name == name).count();
    assert_eq!((count("Q4_1"), count("Q8_0"), count("F32")), (210, 1, 61));
    let shape = |name: TensorName| source.tensor(name).unwrap_or_else(|e| panic!("{name:?}: {e}")).shape;
    assert_eq!(shape(TensorName::Embed), [49152, 576]);
    assert_eq!(shape(TensorName::FinalNorm), [576]);
    let layer = |t| shape(TensorName::Layer(29, t));
    assert_eq!(layer(LayerTensor::AttnNorm), [576]);
    assert_eq!(layer(LayerTensor::QProj), [576, 576]);
    assert_eq!(layer(LayerTensor::KProj), [192, 576]);
    assert_eq!(layer(LayerTensor::VProj), [192, 576]);
    assert_eq!(layer(LayerTensor::GateProj), [1536, 576]);
    assert_eq!(layer(LayerTensor::DownProj), [576, 1536]);
    // Tied: the head is the embedding matrix.
    let head = source.tensor(TensorName::LmHead).unwrap();
    let embed = source.tensor(TensorName::Embed).unwrap();
    assert!(head == embed);
    assert!(embed.to_f32().iter().all(|v| v.is_finite()));
    assert!(matches!(
        source.tensor(TensorName::Layer(0, LayerTensor::QBias)),
        Err(EngineError::MissingTensor { name, .. }) if name == "blk.0.attn_q.bias"
    ));
}

#[test]
fn smollm2_fingerprint_and_describe() {
    let source = smollm2();
    let fingerprint = source.fingerprint(&FileHashes::uncached()).unwrap();
    assert_eq!(fingerprint, source.fingerprint(&FileHashes::uncached()).unwrap());
    assert!(fingerprint.starts_with("xxh3-"), "{fingerprint}");
    assert_eq!(source.describe(), common::smollm2_gguf().display().to_string());
}

/// The tokenizer rebuilt from `tokenizer.ggml.*` encodes the reference prompts to exactly the ids
/// transformers gave (no BOS: SmolLM2's tokenizer adds none, and `add_bos_token` is false).
#[test]
fn smollm2_tokenizer_matches_transformers() {
    let tokenizer = smollm2().tokenizer().unwrap();
    let path = common::fixtures().join("reference/smollm2-135m-instruct.logits.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let texts = metadata.metadata().clone().expect("prompt texts in __metadata__");
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    for i in 0..4 {
        let text = &texts[&format!("p{i}.text")];
        let ids = tensors.tensor(&format!("p{i}.input_ids")).unwrap();
        let expected: Vec<u32> =
            ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
        let encoding = tokenizer.encode(text.as_str(), true).unwrap();
        assert_eq!(encoding.get_ids(), expected.as_slice(), "prompt {i}: {text:?}");
        assert_eq!(tokenizer.decode(&expected, false).unwrap(), *text, "prompt {i} round trip");
    }
    let chat = tokenizer.encode("<|im_start|>user\nHi 42<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids()[0], 1, "control tokens are matched whole");
    assert_eq!(*chat.get_ids().last().unwrap(), 2);
    let digits: Vec<&str> =
        chat.get_tokens().iter().map(String::as_str).filter(|t| t.contains('4') || t.contains('2')).collect();
    assert_eq!(digits, ["4", "2"], "smollm splits digits one by one");
}

/// The f16 tiny-llama GGUF (written by convert-style code with permuted Q/K) reads back as the
/// Hugging Face tiny-llama's tensors, to f16 precision (a wrong Q/K row order would differ by far
/// more).
#[test]
fn tiny_llama_gguf_matches_hf_tensors() {
    let gguf = GgufSource::open(&common::fixtures().join("gguf/tiny-llama.f16.gguf")).unwrap();
    let hf = HfSource::open(&common::fixtures().join("models/tiny-llama")).unwrap();
    let mut names = vec![TensorName::Embed, TensorName::FinalNorm, TensorName::LmHead];
    for layer in 0..hf.spec().num_layers {
        names.extend(LayerTensor::present(hf.spec()).map(|t| TensorName::Layer(layer, t)));
    }
    for name in names {
        let (ours, theirs) = (gguf.tensor(name).unwrap(), hf.tensor(name).unwrap());
        assert_eq!(ours.shape, theirs.shape, "{name:?}");
        // Weights are stored as f16, norms as f32: allow f16 rounding (relative 2^-11).
        let bad = ours.to_f32().iter().zip(theirs.to_f32()).position(|(a, b)| (a - b).abs() > b.abs() / 2048.0 + 1e-7);
        assert!(bad.is_none(), "{name:?}: element {bad:?} differs");
    }
}

// ---- dequantization on hand-made blocks ----

fn dequant(type_id: u32, data: &[u8]) -> Vec<f32> {
    dequantize(GgmlType::from_id(type_id).unwrap(), data).unwrap()
}

#[test]
fn dequant_q8_0() {
    let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
    block.extend((-16i8..16).map(|q| q as u8));
    let expected: Vec<f32> = (-16..16).map(|q| q as f32 * 0.5).collect();
    assert_eq!(dequant(GgmlType::Q8_0, &block), expected);
}

#[test]
fn dequant_q4_0() {
    let mut block = f16::from_f32(0.25).to_le_bytes().to_vec();
    // Low nibble j, high nibble 15 - j: elements 0..16 then 16..32.
    block.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    let low = (0..16).map(|j| (j - 8) as f32 * 0.25);
    let high = (0..16).map(|j| (15 - j - 8) as f32 * 0.25);
    assert_eq!(dequant(GgmlType::Q4_0, &block), low.chain(high).collect::<Vec<_>>());
}

#[test]
fn dequant_q4_1() {
    let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
    block.extend(f16::from_f32(-1.0).to_le_bytes());
    block.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    let low = (0..16).map(|j| j as f32 * 0.5 - 1.0);
    let high = (0..16).map(|j| (15 - j) as f32 * 0.5 - 1.0);
    assert_eq!(dequant(GgmlType::Q4_1, &block), low.chain(high).collect::<Vec<_>>());
}

#[test]
fn dequant_plain_floats() {
    let values = [1.5f32, -2.25, 0.0, 65504.0];
    let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16_bytes: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
    let bf16_bytes: Vec<u8> = values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
    assert_eq!(dequant(GgmlType::F32, &f32_bytes), values);
    assert_eq!(dequant(GgmlType::F16, &f16_bytes), values);
    assert_eq!(dequant(GgmlType::BF16, &bf16_bytes), [1.5, -2.25, 0.0, 65536.0]);
}

/// Many blocks (split across rayon tasks) dequantize as each block does alone.
#[test]
fn dequant_many_blocks_in_parallel() {
    let blocks: Vec<Vec<u8>> = (0..1000u32)
        .map(|b| {
            let mut block = f16::from_f32(b as f32 / 7.0).to_le_bytes().to_vec();
            block.extend((0..32).map(|j| (b * 31 + j * 7) as u8));
            block
        })
        .collect();
    let all = dequant(GgmlType::Q8_0, &blocks.concat());
    let one_by_one: Vec<f32> = blocks.iter().flat_map(|b| dequant(GgmlType::Q8_0, b)).collect();
    assert_eq!(all, one_by_one);
}

#[test]
fn unsupported_types_are_refused() {
    let iq2_xxs = GgmlType::from_id(16).unwrap();
    assert_eq!(iq2_xxs.name, "IQ2_XXS");
    assert!(!iq2_xxs.is_supported() && dequantize(iq2_xxs, &[0; 66]).is_none());
    assert_eq!(
        GgmlType::supported_names(),
        "F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16"
    );
}

/// The Q5 and k-quant types, by id.
const GGUF_PY_TYPES: [u32; 7] =
    [GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

/// Every Q5 and k-quant type dequantizes the committed blocks (random bytes, f16 scales from
/// subnormals to 60000, both signs: see make_kquant_blocks.py) to gguf-py 0.19.0's values, bit for
/// bit, in one call (blocks split across rayon tasks) as one block at a time.
#[test]
fn kquant_blocks_dequantize_as_gguf_py() {
    for id in GGUF_PY_TYPES {
        let ty = GgmlType::from_id(id).unwrap();
        let (blocks, expected) = common::gguf_py_blocks(ty.name);
        assert!(ty.is_supported(), "{}", ty.name);
        assert_eq!(expected.len(), blocks.len() / ty.block_bytes * ty.block_elems, "{}", ty.name);
        let ours = dequant(id, &blocks);
        let one_by_one: Vec<f32> = blocks.chunks(ty.block_bytes).flat_map(|b| dequant(id, b)).collect();
        for values in [&ours, &one_by_one] {
            assert_eq!(values.len(), expected.len(), "{}", ty.name);
            if let Some(i) = values.iter().zip(&expected).position(|(a, b)| a.to_bits() != b.to_bits()) {
                panic!("{} value {i}: ours {:e}, gguf-py {:e}", ty.name, values[i], expected[i]);
            }
        }
    }
}

// ---- Q/K permutation ----

/// convert_hf_to_gguf.py's `permute`, written as numpy's reshape/swapaxes index arithmetic:
/// out[h, i, j] = w[h, j, i] over the view (n_head, 2, head_dim / 2) of the rows.
fn permute_rows(w: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    let cols = w.len() / rows;
    let half = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * 2 + j) * half + i;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_inverts_convert_permute() {
    for (rows, cols, n_head) in [(576, 3, 9), (192, 5, 3), (8, 1, 2), (64, 1, 1)] {
        let w: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let permuted = permute_rows(&w, rows, n_head);
        assert_ne!(permuted, w);
        assert_eq!(unpermute_ranges(rows, n_head).gather(&permuted), w, "rows {rows}, heads {n_head}");
    }
    // head_dim 4, one head: rows [0 1 2 3] are stored as [0 2 1 3] (pairs interleaved).
    assert_eq!(permute_rows(&[0., 1., 2., 3.], 4, 1), [0., 2., 1., 3.]);
}

// ---- hand-written GGUF files ----

/// A minimal GGUF v3 writer for test files.
#[derive(Default)]
struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
    n_tensors: u64,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

impl GgufWriter {
    fn key(&mut self, key: &str, type_id: u32) -> &mut Vec<u8> {
        self.n_kv += 1;
        put_str(&mut self.kv, key);
        self.kv.extend(type_id.to_le_bytes());
        &mut self.kv
    }

    fn string(&mut self, key: &str, value: &str) -> &mut Self {
        put_str(self.key(key, 8), value);
        self
    }

    fn u32(&mut self, key: &str, value: u32) -> &mut Self {
        self.key(key, 4).extend(value.to_le_bytes());
        self
    }

    fn f32(&mut self, key: &str, value: f32) -> &mut Self {
        self.key(key, 6).extend(value.to_le_bytes());
        self
    }

    fn strings(&mut self, key: &str, values: &[&str]) -> &mut Self {
        let buf = self.key(key, 9);
        buf.extend(8u32.to_le_bytes());
        buf.extend((values.len() as u64).to_le_bytes());
        values.iter().for_each(|v| put_str(buf, v));
        self
    }

    /// A tensor with `dims` innermost first, as GGUF stores them.
    fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, bytes: &[u8]) -> &mut Self {
        self.data.resize(self.data.len().div_ceil(32) * 32, 0);
        put_str(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
        self.infos.extend(type_id.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(bytes);
        self.n_tensors += 1;
        self
    }

    fn f32_tensor(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, &bytes)
    }

    fn write(&self, path: &Path) {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(&self.data);
        std::fs::write(path, out).unwrap();
    }
}

/// The metadata of a 1-layer model (`hidden`, `heads` and `kv_heads` attention heads, ffn
/// `ffn`) with a 4-token tokenizer.
fn one_layer_metadata(arch: &str, hidden: u32, heads: u32, kv_heads: u32, ffn: u32) -> GgufWriter {
    let mut w = GgufWriter::default();
    w.string("general.architecture", arch)
        .u32(&format!("{arch}.context_length"), 64)
        .u32(&format!("{arch}.embedding_length"), hidden)
        .u32(&format!("{arch}.block_count"), 1)
        .u32(&format!("{arch}.feed_forward_length"), ffn)
        .u32(&format!("{arch}.attention.head_count"), heads)
        .u32(&format!("{arch}.attention.head_count_kv"), kv_heads)
        .f32(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-6)
        .string("tokenizer.ggml.model", "gpt2")
        .strings("tokenizer.ggml.tokens", &["a", "b", "ab", "<s>"])
        .strings("tokenizer.ggml.merges", &["a b"])
        .u32("tokenizer.ggml.bos_token_id", 3);
    w
}

/// A 1-layer llama: hidden 8, 2 heads of 4, 1 kv head, ffn 16, vocab 4; Q/K stored permuted as
/// the converter does. Every tensor but `blk.0.ffn_up.weight`, which [`tiny_llama`] adds.
fn tiny_llama_without_ffn_up(arch: &str) -> GgufWriter {
    let mut w = one_layer_metadata(arch, 8, 2, 1, 16);
    let q: Vec<f32> = (0..64).map(|v| v as f32).collect();
    let k: Vec<f32> = (0..32).map(|v| -(v as f32)).collect();
    w.f32_tensor("token_embd.weight", &[8, 4], &[0.5; 32])
        .f32_tensor("blk.0.attn_norm.weight", &[8], &[1.0; 8])
        .f32_tensor("blk.0.attn_q.weight", &[8, 8], &permute_rows(&q, 8, 2))
        .f32_tensor("blk.0.attn_k.weight", &[8, 4], &permute_rows(&k, 4, 1))
        .f32_tensor("blk.0.attn_v.weight", &[8, 4], &[0.25; 32])
        .f32_tensor("blk.0.attn_output.weight", &[8, 8], &[0.125; 64])
        .f32_tensor("blk.0.ffn_norm.weight", &[8], &[1.0; 8])
        .f32_tensor("blk.0.ffn_gate.weight", &[8, 16], &[0.5; 128])
        .f32_tensor("blk.0.ffn_down.weight", &[16, 8], &[0.5; 128])
        .f32_tensor("output_norm.weight", &[8], &[1.0; 8]);
    w
}

fn tiny_llama(arch: &str) -> GgufWriter {
    let mut w = tiny_llama_without_ffn_up(arch);
    w.f32_tensor("blk.0.ffn_up.weight", &[8, 16], &[0.5; 128]);
    w
}

#[test]
fn tiny_gguf_spec_tensors_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama("llama").write(&path);
    let source = GgufSource::open(&path).unwrap();
    let spec = source.spec();
    assert_eq!((spec.vocab_size, spec.head_dim, spec.num_kv_heads, spec.rope_theta), (4, 4, 1, 10000.0));
    assert_eq!((spec.rms_norm_eps, spec.bos_token_id, spec.tie_word_embeddings), (1e-6, Some(3), true));
    let q = source.tensor(TensorName::Layer(0, LayerTensor::QProj)).unwrap();
    assert_eq!(q.shape, [8, 8]);
    assert_eq!(q.to_f32(), (0..64).map(|v| v as f32).collect::<Vec<_>>(), "Q rows un-permuted");
    let k = source.tensor(TensorName::Layer(0, LayerTensor::KProj)).unwrap();
    assert_eq!((k.shape.as_slice(), k.to_f32()), ([4, 8].as_slice(), (0..32).map(|v| -(v as f32)).collect()));
    assert_eq!(source.tensor(TensorName::LmHead).unwrap().shape, [4, 8]);
    let tokenizer = source.tokenizer().unwrap();
    assert_eq!(tokenizer.encode("ab<s>a", false).unwrap().get_ids(), [2, 3, 0]);
}

#[test]
fn qwen2_rows_are_not_unpermuted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-qwen2.gguf");
    tiny_llama("qwen2").write(&path);
    let source = GgufSource::open(&path).unwrap();
    let stored = source.raw_tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(source.tensor(TensorName::Layer(0, LayerTensor::QProj)).unwrap(), stored);
}

// ---- a k-quant GGUF and its compressed stores ----

/// Byte offsets of the f16 fields (`d`, and `dmin` or `m`) in a block of a Q5 or k-quant type.
fn f16_fields(id: u32) -> &'static [usize] {
    match id {
        GgmlType::Q5_0 => &[0],
        GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        other => panic!("type {other}"),
    }
}

/// A `[rows, cols]` tensor of type `id`: random bytes, its f16 fields small positive scales.
fn random_blocks(rng: &mut common::Rng, id: u32, rows: usize, cols: usize) -> Vec<u8> {
    let ty = GgmlType::from_id(id).unwrap();
    let mut bytes: Vec<u8> = (0..rows * cols / ty.block_elems * ty.block_bytes).map(|_| rng.next_u64() as u8).collect();
    for block in bytes.chunks_exact_mut(ty.block_bytes) {
        for &at in f16_fields(id) {
            let scale = f16::from_f32((1 + rng.below(1000)) as f32 * 2e-5);
            block[at..at + 2].copy_from_slice(&scale.to_le_bytes());
        }
    }
    bytes
}

/// A Q4_K_M-like 1-layer llama (hidden 256, 4 heads of 64, 1 kv head, ffn 256, vocab 4, tied
/// embedding) of random blocks: embedding, Q and K in Q4_K, V in Q6_K, the output projection in
/// Q5_K, gate Q2_K, up Q3_K, down Q5_0.
fn kquant_llama() -> GgufWriter {
    let mut w = one_layer_metadata("llama", 256, 4, 1, 256);
    let mut rng = common::Rng(0x6b71_7561_6e74);
    let tensors = [
        ("token_embd.weight", 4, GgmlType::Q4_K),
        ("blk.0.attn_q.weight", 256, GgmlType::Q4_K),
        ("blk.0.attn_k.weight", 64, GgmlType::Q4_K),
        ("blk.0.attn_v.weight", 64, GgmlType::Q6_K),
        ("blk.0.attn_output.weight", 256, GgmlType::Q5_K),
        ("blk.0.ffn_gate.weight", 256, GgmlType::Q2_K),
        ("blk.0.ffn_up.weight", 256, GgmlType::Q3_K),
        ("blk.0.ffn_down.weight", 256, GgmlType::Q5_0),
    ];
    for (name, rows, id) in tensors {
        w.tensor(name, &[256, rows as u64], id, &random_blocks(&mut rng, id, rows, 256));
    }
    for name in ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"] {
        w.f32_tensor(name, &[256], &[1.0; 256]);
    }
    w
}

/// A k-quant GGUF opens, its Q rows un-permuted. Split into an int4 and an int8 store (embedding and
/// head in int8 too), the tensors with an exact form read back bit for bit: Q4_K as int4 in both
/// (the int8 store is mixed: it keeps them as int4), Q5_0 as int8 in the int8 store. The split
/// reports those and the requantized rest by type; those stay within int4's half step.
#[test]
fn kquant_gguf_splits_exactly_where_it_can_and_says_where_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kquant.gguf");
    kquant_llama().write(&path);
    let source = GgufSource::open(&path).unwrap();
    assert_eq!((source.spec().hidden_size, source.spec().head_dim), (256, 64));
    let raw_q = source.raw_tensor("blk.0.attn_q.weight").unwrap().to_f32();
    let q = source.tensor(TensorName::Layer(0, LayerTensor::QProj)).unwrap().to_f32();
    assert_eq!(q, unpermute_ranges(256, 4).gather(&raw_q));

    let count = |pairs: &[(&str, usize)]| pairs.iter().map(|&(k, n)| (k.to_string(), n)).collect();
    let cases = [
        (
            Compression::Int4,
            count(&[("Q4_K -> int4", 4)]),
            count(&[
                ("Q2_K -> int4", 1),
                ("Q3_K -> int4", 1),
                ("Q5_0 -> int4", 1),
                ("Q5_K -> int4", 1),
                ("Q6_K -> int4", 1),
            ]),
            vec![LayerTensor::QProj, LayerTensor::KProj],
        ),
        (
            Compression::Int8,
            count(&[("Q4_K -> int4", 4), ("Q5_0 -> int8", 1)]),
            count(&[("Q2_K -> int8", 1), ("Q3_K -> int8", 1), ("Q5_K -> int8", 1), ("Q6_K -> int8", 1)]),
            vec![LayerTensor::QProj, LayerTensor::KProj, LayerTensor::DownProj],
        ),
    ];
    for (compression, exact, requantized, exact_tensors) in cases {
        let out = tempfile::tempdir().unwrap();
        let options = SplitOptions { compression, quantize_embed_head: true, ..Default::default() };
        let report = split(&source, out.path(), &options, &|_, _, _| {}).unwrap();
        assert_eq!((report.compressed.exact, report.compressed.requantized), (exact, requantized), "{compression}");

        let store = LayerStore::open(out.path()).unwrap();
        let layer = store.read_layer(0).unwrap().into_f32();
        for (tensor, (shape, values)) in &layer {
            let expected = source.tensor(TensorName::Layer(0, *tensor)).unwrap();
            assert_eq!(shape, &expected.shape, "{compression} {tensor:?}");
            let expected = expected.to_f32();
            if exact_tensors.contains(tensor) || !tensor.is_linear() {
                let same = values.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{compression} {tensor:?}: not the GGUF's values");
            } else {
                let amax = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = values.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= amax / 15.0 * 1.01, "{compression} {tensor:?}: max err {err}, amax {amax}");
            }
        }
        let embed = store.read_tensors("embed.safetensors", &["embed"]).unwrap().remove(0).1;
        assert_eq!(embed, source.tensor(TensorName::Embed).unwrap().to_f32(), "{compression}: Q4_K embedding");

        // How the parts are stored: Q4_K's sub-block scales as F32, Q5_0's `d` as F16.
        let bytes = std::fs::read(out.path().join("layer-000.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let dtype = |name: &str| format!("{:?}", file.tensor(name).unwrap().dtype());
        assert_eq!(
            (dtype("q_proj.q"), dtype("q_proj.scale"), dtype("q_proj.min")),
            ("U8".into(), "F32".into(), "F32".into())
        );
        let down = if compression == Compression::Int8 { ("I8", "F16") } else { ("U8", "F16") };
        assert_eq!((dtype("down_proj.q"), dtype("down_proj.scale")), (down.0.into(), down.1.into()), "{compression}");
    }
}

#[test]
fn unsupported_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    tiny_llama("gpt2").write(&path);
    match GgufSource::open(&path) {
        Err(EngineError::UnsupportedArchitecture { path: p, found, supported }) => {
            assert_eq!((p, found.as_str()), (path, "\"gpt2\""));
            assert!(supported.contains("llama, mistral, qwen2"), "{supported}");
        }
        other => panic!("expected UnsupportedArchitecture, got {:?}", other.err()),
    }
}

#[test]
fn unsupported_tensor_type_names_tensor_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q4k.gguf");
    let mut w = tiny_llama_without_ffn_up("llama");
    w.tensor("blk.0.ffn_up.weight", &[256, 1], 16, &[0; 66]);
    w.write(&path);
    // Found when the file is opened, before a split has written the tokenizer and embedding.
    let message = format_message(GgufSource::open(&path).err(), &path);
    assert!(message.contains("blk.0.ffn_up.weight") && message.contains("IQ2_XXS"), "{message}");
    assert!(message.contains(&format!("(supported: {})", GgmlType::supported_names())), "{message}");
}

/// Opening `writer` fails with a `Format` error about the file containing every one of `needles`.
fn assert_refused(writer: &GgufWriter, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    writer.write(&path);
    let message = format_message(GgufSource::open(&path).err(), &path);
    assert!(needles.iter().all(|n| message.contains(n)), "{needles:?}: {message}");
}

#[test]
fn vocab_size_that_disagrees_with_the_embedding_is_refused() {
    let mut w = tiny_llama("llama");
    w.u32("llama.vocab_size", 5);
    assert_refused(&w, &["token_embd.weight", "[4, 8]", "[5, 8]"]);
}

#[test]
fn wrong_norm_and_projection_shapes_are_refused() {
    let mut w = tiny_llama_without_ffn_up("llama");
    w.f32_tensor("blk.0.ffn_up.weight", &[8, 15], &[0.5; 120]);
    assert_refused(&w, &["blk.0.ffn_up.weight", "[15, 8]", "[16, 8]"]);
}

#[test]
fn layer_count_that_disagrees_with_the_layers_present_is_refused() {
    let mut w = tiny_llama("llama");
    w.f32_tensor("blk.1.attn_norm.weight", &[8], &[1.0; 8]);
    assert_refused(&w, &["1 layers", "tensors of 2"]);
    let mut w = tiny_llama("llama");
    w.u32("llama.block_count", 1 << 31);
    assert_refused(&w, &["2147483648 layers", "tensors of 1"]);
}

#[test]
fn non_positive_theta_eps_and_bad_head_counts_are_refused() {
    let float = [
        ("rope_theta is -10000", "llama.rope.freq_base", -10000.0),
        ("rms_norm_eps is -", "llama.attention.layer_norm_rms_epsilon", -1e-5),
    ];
    for (needle, key, value) in float {
        let mut w = tiny_llama("llama");
        w.f32(key, value);
        assert_refused(&w, &[needle]);
    }
    let kv_heads = [("num_kv_heads is 0", 0), ("not a multiple of num_kv_heads 3", 3)];
    for (needle, value) in kv_heads {
        let mut w = tiny_llama("llama");
        w.u32("llama.attention.head_count_kv", value);
        assert_refused(&w, &[needle]);
    }
}

#[test]
fn rope_freqs_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama3.gguf");
    let mut w = tiny_llama("llama");
    w.f32_tensor("rope_freqs.weight", &[2], &[1.0, 2.0]);
    w.write(&path);
    let message = format_message(GgufSource::open(&path).err(), &path);
    assert!(message.contains("rope_freqs.weight"), "{message}");
}

#[test]
fn bad_magic_and_version_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, b"GGML\x03\0\0\0").unwrap();
    assert!(format_message(GgufSource::open(&path).err(), &path).contains("not a GGUF file"));
    std::fs::write(&path, b"GGUF\x01\0\0\0").unwrap();
    assert!(format_message(GgufSource::open(&path).err(), &path).contains("version 1"));
}

// ---- truncation ----

/// The message of a `Format` error about `path`; anything else fails the test.
fn format_message(error: Option<EngineError>, path: &Path) -> String {
    match error {
        Some(EngineError::Format { path: p, message }) => {
            assert_eq!(p, path);
            message
        }
        other => panic!("expected a Format error about {}, got {other:?}", path.display()),
    }
}

fn truncated_copy(source: &Path, dir: &Path, len: u64) -> PathBuf {
    let path = dir.join(format!("cut-{len}.gguf"));
    let mut out = std::fs::File::create(&path).unwrap();
    std::io::copy(&mut std::fs::File::open(source).unwrap().take(len), &mut out).unwrap();
    out.flush().unwrap();
    path
}

#[test]
fn truncated_smollm2_gives_format_errors() {
    let full = common::smollm2_gguf();
    let file_len = std::fs::metadata(&full).unwrap().len();
    let data_offset = smollm2().header().data_offset as u64;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (0, "header (magic)"),
        (3, "header (magic)"),
        (10, "header (tensor count)"),
        (20, "header (metadata count)"),
        (100, "metadata"),
        (1_000_000, "metadata value tokenizer.ggml."),
        (data_offset - 100, "tensor info"),
        (data_offset + 1000, "tensor token_embd.weight"),
        (file_len - 1, "tensor "),
    ];
    for (len, what) in cases {
        let path = truncated_copy(&full, dir.path(), len);
        let message = format_message(GgufSource::open(&path).err(), &path);
        assert!(message.starts_with("truncated: ") && message.contains(what), "cut at {len}: {message}");
        assert!(message.ends_with(&format!("but file has ..{len}")), "cut at {len}: {message}");
        std::fs::remove_file(&path).unwrap();
    }
}
