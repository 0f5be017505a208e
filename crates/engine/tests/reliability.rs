//! Bad input gives an error that names what is wrong, never a panic, a silently wrong score or a
//! write outside the store: specs that disagree with their tensors, NaN weights, names in
//! manifests, progress records and shard indexes that point elsewhere, damaged stores that a
//! second split must repair, and two splits of one store at once.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use airllm_engine::executor::{Engine, EngineOptions, Quiet, ScoreRequest, ScoreTarget};
use airllm_engine::fingerprint::FileHashes;
use airllm_engine::source::{ModelSource, TensorName};
use airllm_engine::store::{LayerStore, SplitOptions, SplitReport, split, write_atomic};
use airllm_engine::{HostTensor, ModelSpec};
use common::*;

/// A copy of a fixture model folder that a test may change.
fn model_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("models").join(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

fn open_error(path: &Path) -> String {
    airllm_engine::source::open(path).err().expect("the source must be refused").to_string()
}

fn tiny_llama() -> Box<dyn ModelSource> {
    airllm_engine::source::open(&fixtures().join("models/tiny-llama")).unwrap()
}

fn split_tiny(dir: &Path, options: &SplitOptions) -> SplitReport {
    split(tiny_llama().as_ref(), dir, options, &|_, _, _| {}).unwrap()
}

/// Moves a file's mtime `seconds` away from now, so a test does not depend on how fine the
/// file system's timestamps are.
fn set_mtime(path: &Path, seconds: i64) {
    let now = SystemTime::now();
    let time = if seconds >= 0 {
        now + Duration::from_secs(seconds as u64)
    } else {
        now - Duration::from_secs(seconds.unsigned_abs())
    };
    std::fs::File::options().write(true).open(path).unwrap().set_modified(time).unwrap();
}

fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(path, &bytes).unwrap();
}

// ---- specs against tensors (Hugging Face folders) ----

#[test]
fn zero_heads_in_config_is_an_error_not_a_division_by_zero() {
    let model = model_copy("tiny-llama");
    edit_json(&model.path().join("config.json"), |config| {
        config["num_attention_heads"] = 0.into();
        config.as_object_mut().unwrap().remove("head_dim");
    });
    let err = open_error(model.path());
    assert!(err.contains("num_attention_heads") && err.contains("is 0"), "{err}");
}

#[test]
fn config_vocab_size_that_disagrees_with_the_embedding_is_refused() {
    let model = model_copy("tiny-llama");
    edit_json(&model.path().join("config.json"), |config| config["vocab_size"] = 300.into());
    let err = open_error(model.path());
    assert!(
        err.contains("model.embed_tokens.weight") && err.contains("[256, 64]") && err.contains("[300, 64]"),
        "{err}"
    );
}

#[test]
fn config_layer_count_smaller_than_the_layers_present_is_refused() {
    let model = model_copy("tiny-llama");
    edit_json(&model.path().join("config.json"), |config| config["num_hidden_layers"] = 2.into());
    let err = open_error(model.path());
    assert!(err.contains("2 layers") && err.contains("tensors of 3"), "{err}");
}

#[test]
fn negative_rope_theta_and_norm_epsilon_are_refused() {
    for (field, needle) in [("rope_theta", "rope_theta is -1"), ("rms_norm_eps", "rms_norm_eps is -1")] {
        let model = model_copy("tiny-llama");
        edit_json(&model.path().join("config.json"), |config| config[field] = (-1.0).into());
        let err = open_error(model.path());
        assert!(err.contains(needle), "{field}: {err}");
    }
}

#[test]
fn shard_index_pointing_outside_the_folder_is_refused() {
    let model = model_copy("tiny-llama-sharded");
    let index = model.path().join("model.safetensors.index.json");
    edit_json(&index, |index| index["weight_map"]["model.norm.weight"] = "../../model.safetensors".into());
    let err = open_error(model.path());
    assert!(err.contains("model.safetensors.index.json") && err.contains("../../model.safetensors"), "{err}");
}

#[test]
fn fingerprint_changes_with_any_weight_byte() {
    let model = model_copy("tiny-llama");
    let before = airllm_engine::source::open(model.path()).unwrap().fingerprint(&FileHashes::uncached()).unwrap();
    // A byte far from the safetensors header: only a hash of the whole content sees it.
    flip_middle_byte(&model.path().join("model.safetensors"));
    let after = airllm_engine::source::open(model.path()).unwrap().fingerprint(&FileHashes::uncached()).unwrap();
    assert_ne!(before, after);
}

// ---- non-finite scores ----

/// tiny-llama with NaN in its final norm: every log-probability is NaN.
struct NanNorm(Box<dyn ModelSource>);

impl ModelSource for NanNorm {
    fn spec(&self) -> &ModelSpec {
        self.0.spec()
    }
    fn tokenizer(&self) -> airllm_engine::Result<tokenizers::Tokenizer> {
        self.0.tokenizer()
    }
    fn tensor(&self, name: TensorName) -> airllm_engine::Result<HostTensor> {
        let tensor = self.0.tensor(name)?;
        if name != TensorName::FinalNorm {
            return Ok(tensor);
        }
        Ok(HostTensor::from_f32(tensor.shape.clone(), &vec![f32::NAN; tensor.numel()]))
    }
    fn tensor_shape(&self, name: TensorName) -> airllm_engine::Result<(String, Vec<usize>)> {
        self.0.tensor_shape(name)
    }
    fn layers_present(&self) -> usize {
        self.0.layers_present()
    }
    fn fingerprint(&self, hashes: &FileHashes) -> airllm_engine::Result<String> {
        Ok(format!("{}-nan-norm", self.0.fingerprint(hashes)?))
    }
    fn describe(&self) -> String {
        "tiny-llama with a NaN norm".into()
    }
}

#[test]
fn nan_log_probabilities_are_an_error_naming_sequence_and_position() {
    let dir = tempfile::tempdir().unwrap();
    split(&NanNorm(tiny_llama()), dir.path(), &SplitOptions::default(), &|_, _, _| {}).unwrap();
    let mut engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let requests = [
        ScoreRequest { tokens: vec![1, 2, 3], targets: vec![ScoreTarget { position: 1, token: 3 }] },
        ScoreRequest { tokens: vec![1, 5, 6, 7], targets: vec![ScoreTarget { position: 2, token: 7 }] },
    ];
    let err = engine.score_wave(&requests, &Quiet).expect_err("NaN must not pass as a score").to_string();
    assert!(err.contains("sequence") && err.contains("after position") && err.contains("NaN"), "{err}");
}

// ---- stores: names, layer counts, shapes ----

fn manifest_path(store: &Path) -> PathBuf {
    store.join("manifest.json")
}

fn store_open_error(store: &Path) -> String {
    LayerStore::open(store).err().expect("the store must be refused").to_string()
}

#[test]
fn manifest_file_name_outside_the_store_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let store = parent.path().join("store");
    split_tiny(&store, &SplitOptions::default());
    std::fs::copy(store.join("head.safetensors"), parent.path().join("head.safetensors")).unwrap();
    edit_json(&manifest_path(&store), |m| {
        let files = m["files"].as_array_mut().unwrap();
        let head = files.iter_mut().find(|f| f["name"] == "head.safetensors").unwrap();
        head["name"] = "../head.safetensors".into();
    });
    let err = store_open_error(&store);
    assert!(err.contains("../head.safetensors") && err.contains("not a plain relative path"), "{err}");
}

#[test]
fn manifest_layer_count_that_disagrees_with_its_files_is_refused() {
    let store = tempfile::tempdir().unwrap();
    split_tiny(store.path(), &SplitOptions::default());
    edit_json(&manifest_path(store.path()), |m| m["spec"]["num_layers"] = 2.into());
    let err = store_open_error(store.path());
    assert!(err.contains("6 files for a 2-layer model"), "{err}");
}

#[test]
fn manifest_vocab_size_that_disagrees_with_the_tensors_is_refused() {
    let store = tempfile::tempdir().unwrap();
    split_tiny(store.path(), &SplitOptions::default());
    edit_json(&manifest_path(store.path()), |m| m["spec"]["vocab_size"] = 200.into());
    let err = store_open_error(store.path());
    assert!(err.contains("embed.safetensors: tensor embed has shape [256, 64], the spec needs [200, 64]"), "{err}");
}

#[test]
fn directory_in_place_of_a_layer_file_is_named_as_such() {
    let store = tempfile::tempdir().unwrap();
    split_tiny(store.path(), &SplitOptions::default());
    let layer = store.path().join("layer-001.safetensors");
    std::fs::remove_file(&layer).unwrap();
    std::fs::create_dir(&layer).unwrap();
    let err = store_open_error(store.path());
    assert!(err.contains("layer-001.safetensors is not a file"), "{err}");
}

#[test]
fn incomplete_store_is_named_as_such() {
    let store = tempfile::tempdir().unwrap();
    let killed = catch_unwind(AssertUnwindSafe(|| {
        split(tiny_llama().as_ref(), store.path(), &SplitOptions::default(), &|_, done, _| {
            if done == 2 {
                panic!("killed");
            }
        })
    }));
    assert!(killed.is_err());
    let err = open_error(store.path());
    assert!(err.contains("incomplete layer store"), "{err}");
}

// ---- splitting again repairs ----

#[test]
fn split_again_rewrites_damaged_files_of_a_reused_store() {
    let store = tempfile::tempdir().unwrap();
    let clean = split_tiny(store.path(), &SplitOptions::default());

    // Written to after the split (mtime newer than the manifest's): found by the default check.
    let layer = store.path().join("layer-001.safetensors");
    flip_middle_byte(&layer);
    set_mtime(&layer, 5);
    // Shorter than recorded: found by the size check.
    let head = store.path().join("head.safetensors");
    let bytes = std::fs::read(&head).unwrap();
    std::fs::write(&head, &bytes[..bytes.len() - 10]).unwrap();

    let repaired = split_tiny(store.path(), &SplitOptions::default());
    assert_eq!(repaired.written_files, 2);
    assert_eq!(repaired.manifest.files, clean.manifest.files);
    let mut engine = Engine::open(store.path(), EngineOptions::default()).unwrap();
    engine.logits(&[1, 2, 3]).unwrap();
}

#[test]
fn split_with_verify_finds_bytes_that_rotted_in_place() {
    let store = tempfile::tempdir().unwrap();
    split_tiny(store.path(), &SplitOptions::default());
    // Same size, and an mtime older than the manifest's: as bit rot would leave it.
    let layer = store.path().join("layer-002.safetensors");
    flip_middle_byte(&layer);
    set_mtime(&layer, -3600);

    let cheap = split_tiny(store.path(), &SplitOptions::default());
    assert_eq!(cheap.written_files, 0, "the default reuse check reads no file in full");
    let verified = split_tiny(store.path(), &SplitOptions { verify: true, ..Default::default() });
    assert_eq!(verified.written_files, 1);
    Engine::open(store.path(), EngineOptions::default()).unwrap().logits(&[1, 2, 3]).unwrap();
}

#[test]
fn split_progress_naming_other_files_is_not_trusted() {
    let parent = tempfile::tempdir().unwrap();
    let store = parent.path().join("store");
    let killed = catch_unwind(AssertUnwindSafe(|| {
        split(tiny_llama().as_ref(), &store, &SplitOptions::default(), &|_, done, _| {
            if done == 2 {
                panic!("killed");
            }
        })
    }));
    assert!(killed.is_err());
    let outside = parent.path().join("outside.bin");
    std::fs::write(&outside, b"not part of any store").unwrap();
    edit_json(&store.join("split-progress.json"), |progress| {
        let entry = serde_json::json!({
            "name": "../outside.bin",
            "size": 21,
            "checksum": airllm_engine::store::checksum(b"not part of any store"),
        });
        progress["files"].as_array_mut().unwrap().push(entry);
    });
    let report = split_tiny(&store, &SplitOptions::default());
    assert!(report.manifest.files.iter().all(|f| !f.name.contains("..")), "{:?}", report.manifest.files);
    LayerStore::open(&store).unwrap();
}

#[test]
fn a_split_waits_for_another_split_of_the_same_store() {
    let store = tempfile::tempdir().unwrap();
    let lock = std::fs::File::create(store.path().join(".lock")).unwrap();
    lock.lock().unwrap();
    let path = store.path().to_path_buf();
    let other = std::thread::spawn(move || split_tiny(&path, &SplitOptions::default()));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!other.is_finished(), "the split must wait while the store is locked");
    assert!(!LayerStore::is_store(store.path()));
    drop(lock);
    other.join().unwrap();
    LayerStore::open(store.path()).unwrap();
}

#[test]
fn failed_atomic_write_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    // A non-empty folder where the file should go: the final rename fails.
    let target = dir.path().join("results.json");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("inside"), b"x").unwrap();
    write_atomic(&target, b"{}").expect_err("renaming over a folder fails");
    assert!(!dir.path().join("results.json.tmp").exists());
}
