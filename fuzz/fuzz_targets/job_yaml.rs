//! Any text as a job file, loaded and its tasks read.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, bytes).expect("write");
    if let Ok(job) = airllm_eval::job::Job::load(&path) {
        let _ = airllm_eval::task::registry::load(&job);
    }
});
