//! Any bytes as a JSON Lines and as a CSV data file.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["rows.jsonl", "rows.csv"] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let _ = airllm_eval::dataset::rows::read_rows(&path);
    }
});
