//! Any bytes as the weights of a Hugging Face folder (with the tiny test model's config).
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-llama");
    std::fs::copy(model.join("config.json"), dir.path().join("config.json")).expect("config");
    std::fs::copy(model.join("tokenizer.json"), dir.path().join("tokenizer.json")).expect("tokenizer");
    std::fs::write(dir.path().join("model.safetensors"), bytes).expect("write");
    let _ = airllm_engine::source::open(dir.path());
});
