//! The remote-code families (ChatGLM, Baichuan, InternLM, InternLM2, Qwen v1) against logits of
//! their upstream modeling code: tiny checkpoints in each family's own format, copied from
//! `shared/reference/archs/` into `tests/fixtures/archs/` (see each folder's SOURCE.md for the
//! upstream repository and commit, and the README there for how they were made).
//!
//! Each checkpoint is split into an f32 store (the Hugging Face folder's values as they are),
//! which must match within 1e-4 with identical argmax at every position, one prompt at a time and
//! all prompts in one padded wave, on every backend target (`on_every_backend!`; ndarray and wgpu
//! run rotary/logn as tensors and ALiBi as an attention bias), and streamed and resident (seen:
//! at most 1.0e-5). The int8 and int4 stores re-quantize these random f32 weights, so their drift
//! is stated, not held to the f32 tolerance: seen at most 0.36 (int8) and 4.2 (int4, InternLM2)
//! in logits spanning about 8; the bounds below leave some margin. The tiny random models amplify
//! weight errors far more than trained ones do.

mod common;

use airllm_engine::executor::{Engine, EngineOptions};
use airllm_engine::store::{Compression, SplitOptions};
use burn::prelude::Backend;
use common::*;

/// Every fixture: (folder, family, its upstream model).
const FIXTURES: [(&str, &str); 7] = [
    ("chatglm", "chatglm"),        // ChatGLM3: partial interleaved rotary, multi-query
    ("baichuan_7b", "baichuan"),   // W_pack, rotary
    ("baichuan2_13b", "baichuan"), // ALiBi, NormHead
    ("internlm", "internlm"),      // biases on all projections
    ("internlm2", "internlm2"),    // grouped wqkv
    ("qwen", "qwen"),              // c_attn, swapped MLP roles
    ("qwen_longctx", "qwen"),      // dynamic NTK and logn past seq_length
];

fn arch_dir(name: &str) -> std::path::PathBuf {
    fixtures().join("archs").join(name)
}

fn references(name: &str) -> Vec<Reference> {
    let references = read_references(&arch_dir(name).join("reference.logits.safetensors"));
    assert_eq!(references.len(), 3);
    references
}

/// Small micro-batches so the batched wave runs several padded micro-batches.
fn options() -> EngineOptions {
    EngineOptions { micro_batch_tokens: 40, ..Default::default() }
}

fn split_fixture(name: &str, compression: Compression) -> tempfile::TempDir {
    split_to_temp(&arch_dir(name), &SplitOptions { compression, ..Default::default() })
}

/// Every family's f32 store within 1e-4 of its upstream code.
fn remote_code_families<B: Backend>(target: &Target<B>) {
    for (name, family) in FIXTURES {
        eprintln!("{name}");
        let store = split_fixture(name, Compression::None);
        let mut engine = target.open(store.path(), options());
        assert_eq!(engine.spec().family, family);
        target.check_references(&mut engine, &references(name), 1e-4);
    }
}

on_every_backend!(remote_code_families);

/// Resident layers give the streamed results.
#[test]
fn remote_code_families_resident() {
    for (name, _) in FIXTURES {
        let store = split_fixture(name, Compression::None);
        let mut engine = Engine::open(store.path(), options()).unwrap();
        engine.set_resident(true);
        check_references(&mut engine, &references(name), 1e-4);
    }
}

/// int8 and int4 stores within the drift bounds (largest |Δ logit| seen on these random weights,
/// with some margin).
#[test]
fn remote_code_families_compressed() {
    for (name, _) in FIXTURES {
        let references = references(name);
        for (compression, bound) in [(Compression::Int8, 0.5), (Compression::Int4, 6.0)] {
            let store = split_fixture(name, compression);
            let mut engine = Engine::open(store.path(), options()).unwrap();
            let vocab = engine.spec().vocab_size;
            let mut worst = 0f32;
            for reference in &references {
                let (err, _) = compare(&engine.logits(&reference.ids).unwrap(), &reference.logits, vocab);
                worst = worst.max(err);
            }
            eprintln!("{name} {compression:?}: max |Δ logit| {worst:.3e} (bound {bound})");
            assert!(worst <= bound, "{name} {compression:?}: max |Δ logit| {worst} > {bound}");
        }
    }
}

/// A config with `auto_map` names its remote code; detection never needs it, and a family the
/// engine lacks is refused with the supported list.
#[test]
fn unsupported_remote_code_family_is_refused_with_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"{"architectures": ["MossForCausalLM"], "model_type": "moss",
        "auto_map": {"AutoModelForCausalLM": "modeling_moss.MossForCausalLM"}}"#;
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = airllm_engine::source::open(dir.path()).err().expect("must fail").to_string();
    for family in ["chatglm", "baichuan", "internlm2", "qwen", "qwen2"] {
        assert!(err.contains(family), "{err}");
    }
    assert!(err.contains("MossForCausalLM") && err.contains("config.json"), "{err}");
}

/// A fused tensor with the wrong number of rows is refused naming it, not sliced silently.
#[test]
fn fused_tensor_of_the_wrong_height_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = arch_dir("baichuan_7b");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap()).unwrap();
    // Two key/value heads would make W_pack 128 rows high; the file's is 192.
    config["num_key_value_heads"] = 2.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(source.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let err = airllm_engine::source::open(dir.path()).err().expect("must fail").to_string();
    assert!(err.contains("W_pack") && err.contains("128 rows"), "{err}");
}

fn spec_of(config: serde_json::Value) -> airllm_engine::Result<airllm_engine::ModelSpec> {
    airllm_engine::families::spec_from_config(&config, std::path::Path::new("config.json"))
}

fn fixture_config(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(arch_dir(name).join("config.json")).unwrap()).unwrap()
}

/// The switches each family reads from its config, including those the fixtures leave at their
/// defaults (GLM-4's `rope_ratio`, qwen2's `max_window_layers`).
#[test]
fn family_switches_come_from_the_config() {
    use airllm_engine::{PositionEncoding, RopeScaling};
    let chatglm = spec_of(fixture_config("chatglm")).unwrap();
    assert_eq!((chatglm.num_kv_heads, chatglm.rotary_dims(), chatglm.rope_layout.interleaved), (2, 8, true));
    let mut glm4 = fixture_config("chatglm");
    glm4["rope_ratio"] = 500.into();
    assert_eq!(spec_of(glm4).unwrap().rope_theta, 5_000_000.0);
    let mut post_norm = fixture_config("chatglm");
    post_norm["apply_residual_connection_post_layernorm"] = true.into();
    let err = spec_of(post_norm).unwrap_err().to_string();
    assert!(err.contains("apply_residual_connection_post_layernorm") && err.contains("config.json"), "{err}");

    let baichuan2 = spec_of(fixture_config("baichuan2_13b")).unwrap();
    assert_eq!((baichuan2.position_encoding, baichuan2.norm_head), (PositionEncoding::Alibi, true));
    let baichuan = spec_of(fixture_config("baichuan_7b")).unwrap();
    assert_eq!((baichuan.position_encoding, baichuan.norm_head), (PositionEncoding::Rotary, false));

    let internlm2 = spec_of(fixture_config("internlm2")).unwrap();
    let dynamic = RopeScaling::Dynamic { factor: 2.0, original_max_position_embeddings: 32768 };
    assert_eq!(internlm2.rope_scaling, Some(dynamic));
    let qwen = spec_of(fixture_config("qwen_longctx")).unwrap();
    assert_eq!((qwen.rope_scaling, qwen.logn_attention), (Some(RopeScaling::QwenNtk { seq_length: 16 }), Some(16)));
    assert_eq!(qwen.intermediate_size, 128);

    let qwen2 = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
        "intermediate_size": 128, "num_hidden_layers": 4, "vocab_size": 256,
        "use_sliding_window": true, "sliding_window": 16, "max_window_layers": 2
    });
    let qwen2 = spec_of(qwen2).unwrap();
    let windows: Vec<_> = (0..4).map(|layer| qwen2.layer_window(layer)).collect();
    assert_eq!(windows, [None, None, Some(16), Some(16)]);
}
