//! Any bytes as a GGUF file: opening it must give a model or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).expect("write");
    let _ = airllm_engine::source::open(&path);
});
