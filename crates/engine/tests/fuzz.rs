//! Bounded random-input tests of every reader of model files: GGUF files, Hugging Face folders
//! (safetensors header, config.json) and layer stores (manifest, layer files). Each case mutates a
//! valid tiny file (flipped bytes, overwritten runs, truncation, large numbers spliced in) with a
//! fixed seed and opens it: a case may fail with an error, never panic, and never allocate more
//! than its input could justify (a counting allocator watches the largest single allocation).
//! Seconds in CI; `fuzz/` holds cargo-fuzz targets of the same readers for longer runs.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use airllm_engine::store::{LayerStore, SplitOptions, split};
use common::Rng;

/// The system allocator, recording the largest single allocation.
struct Watch;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watch = Watch;

/// One random change to `bytes`, aimed at the first `focus` bytes (headers) half of the time.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, focus: usize) {
    let span = if rng.below(2) == 0 { focus.min(bytes.len()) } else { bytes.len() };
    let at = rng.below(span);
    match rng.below(5) {
        0 => bytes[at] ^= 1 << rng.below(8),
        1 => bytes[at] = rng.next_u64() as u8,
        2 => bytes.truncate(at),
        3 => {
            let big = [u64::MAX, u32::MAX as u64, 1 << 40, 1 << 31, 0][rng.below(5)].to_le_bytes();
            let end = (at + 8).min(bytes.len());
            bytes[at..end].copy_from_slice(&big[..end - at]);
        }
        _ => {
            let run = rng.below(16) + 1;
            let end = (at + run).min(bytes.len());
            bytes[at..end].fill(0xff);
        }
    }
}

/// Runs `case` `count` times on mutated copies of `seed`, checking it never panics nor allocates
/// past `limit(input size)`.
fn fuzz(name: &str, seed: &[u8], count: usize, focus: usize, mut case: impl FnMut(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let (mut errors, mut worst) = (0, 0);
    for i in 0..count {
        let mut bytes = seed.to_vec();
        for _ in 0..=rng.below(3) {
            if !bytes.is_empty() {
                mutate(&mut rng, &mut bytes, focus);
            }
        }
        LARGEST.store(0, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| case(&bytes)));
        assert!(outcome.is_ok(), "{name} case {i}: a panic on {} bytes", bytes.len());
        let largest = LARGEST.load(Ordering::Relaxed);
        worst = worst.max(largest);
        let limit = 64 * seed.len() + (64 << 20);
        assert!(
            largest <= limit,
            "{name} case {i}: an allocation of {largest} bytes for {} bytes of input",
            bytes.len()
        );
        errors += 1;
    }
    eprintln!("{name}: {count} cases, {errors} run, largest allocation {worst} bytes");
}

fn fixtures() -> std::path::PathBuf {
    common::fixtures()
}

#[test]
fn gguf_files() {
    let seed = std::fs::read(fixtures().join("gguf/tiny-llama.q4_1.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    fuzz("gguf", &seed, 1500, 4096, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        if let Ok(source) = airllm_engine::source::open(&path) {
            let _ = source.spec();
        }
    });
}

#[test]
fn hugging_face_folders() {
    let model = fixtures().join("models/tiny-llama");
    let seed = std::fs::read(model.join("model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(file), dir.path().join(file)).unwrap();
    }
    let target = dir.path().join("model.safetensors");
    let header = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    fuzz("safetensors", &seed, 800, header, |bytes| {
        std::fs::write(&target, bytes).unwrap();
        let _ = airllm_engine::source::open(dir.path());
    });
    let config = std::fs::read(model.join("config.json")).unwrap();
    std::fs::write(&target, &seed).unwrap();
    fuzz("config.json", &config, 800, config.len(), |bytes| {
        std::fs::write(dir.path().join("config.json"), bytes).unwrap();
        let _ = airllm_engine::source::open(dir.path());
    });
}

fn store_of(model: &Path, dir: &Path) {
    let source = airllm_engine::source::open(model).unwrap();
    split(source.as_ref(), dir, &SplitOptions::default(), &|_, _, _| {}).unwrap();
}

#[test]
fn layer_stores() {
    let dir = tempfile::tempdir().unwrap();
    store_of(&fixtures().join("models/tiny-llama"), dir.path());
    let manifest_path = dir.path().join("manifest.json");
    let manifest = std::fs::read(&manifest_path).unwrap();
    fuzz("manifest.json", &manifest, 800, manifest.len(), |bytes| {
        std::fs::write(&manifest_path, bytes).unwrap();
        if let Ok(store) = LayerStore::open(dir.path()) {
            let _ = store.read_layer(0);
        }
    });
    std::fs::write(&manifest_path, &manifest).unwrap();
    let layer_path = dir.path().join(airllm_engine::store::layer_file(0));
    let layer = std::fs::read(&layer_path).unwrap();
    fuzz("layer file", &layer, 500, 512, |bytes| {
        std::fs::write(&layer_path, bytes).unwrap();
        if let Ok(store) = LayerStore::open(dir.path()) {
            let _ = store.read_layer(0);
        }
    });
}
