//! The layer store: checksums catch corrupted files (named in the error), and an interrupted
//! split resumes without redoing the files it finished.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use airllm_engine::executor::{Engine, EngineOptions};
use airllm_engine::store::{LayerStore, SplitOptions, split};
use common::*;

fn tiny_llama() -> Box<dyn airllm_engine::source::ModelSource> {
    airllm_engine::source::open(&fixtures().join("models/tiny-llama")).unwrap()
}

#[test]
fn corrupted_layer_file_is_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    split(tiny_llama().as_ref(), dir.path(), &SplitOptions::default(), &|_, _, _| {}).unwrap();
    let layer = dir.path().join("layer-001.safetensors");
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&layer, &bytes).unwrap();

    let mut engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let err = engine.logits(&[1, 2, 3]).expect_err("corruption must be caught").to_string();
    assert!(err.contains("layer-001.safetensors") && err.contains("corrupted"), "{err}");
}

#[test]
fn truncated_store_file_is_named_on_open() {
    let dir = tempfile::tempdir().unwrap();
    split(tiny_llama().as_ref(), dir.path(), &SplitOptions::default(), &|_, _, _| {}).unwrap();
    let head = dir.path().join("head.safetensors");
    let bytes = std::fs::read(&head).unwrap();
    std::fs::write(&head, &bytes[..bytes.len() - 10]).unwrap();
    let err = LayerStore::open(dir.path()).err().expect("must fail").to_string();
    assert!(err.contains("head.safetensors"), "{err}");
}

#[test]
fn interrupted_split_resumes_without_redoing_finished_files() {
    let clean = tempfile::tempdir().unwrap();
    let expected = split(tiny_llama().as_ref(), clean.path(), &SplitOptions::default(), &|_, _, _| {}).unwrap();

    let dir = tempfile::tempdir().unwrap();
    // Dies right after the fourth file is in place, as a kill between two files would.
    let killed = catch_unwind(AssertUnwindSafe(|| {
        split(tiny_llama().as_ref(), dir.path(), &SplitOptions::default(), &|_, done, _| {
            if done == 4 {
                panic!("killed");
            }
        })
    }));
    assert!(killed.is_err());
    assert!(!LayerStore::is_store(dir.path()), "no manifest may exist before the split ends");
    // A torn temporary file left by the kill must not be trusted.
    std::fs::write(dir.path().join("layer-002.safetensors.tmp"), b"torn").unwrap();
    // One finished file damaged after the kill is written again; the other three are kept.
    std::fs::write(dir.path().join("embed.safetensors"), b"damaged").unwrap();

    let resumed = split(tiny_llama().as_ref(), dir.path(), &SplitOptions::default(), &|_, _, _| {}).unwrap();
    assert_eq!(resumed.reused_files, 3);
    assert_eq!(resumed.written_files, expected.manifest.files.len() - 3);
    assert_eq!(resumed.manifest.files, expected.manifest.files);
    LayerStore::open(dir.path()).unwrap();

    let again = split(tiny_llama().as_ref(), dir.path(), &SplitOptions::default(), &|_, _, _| {}).unwrap();
    assert_eq!(again.written_files, 0, "a finished store is kept as it is");
}
