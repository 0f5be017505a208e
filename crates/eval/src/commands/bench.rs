//! `airllm-eval bench JOB.yaml`: scores the job's requests (every task's) three ways and prints one table.
//!
//! - **resident**: every layer kept on the device after a warm-up read (the model fits in memory);
//! - **per-prompt**: AirLLM's way, every layer read again for each prompt;
//! - **layer-major**: ours, every prompt of a wave through layer N before layer N+1 is read.
//!
//! Each mode runs in a child process of its own (`bench --mode ...`), so its peak resident memory
//! is its own and not the high-water mark of an earlier mode. The matmul peak of the same backend
//! is measured in the parent first (burn's matmul and the packed host kernel the layers use, at
//! each precision benched; the higher is the yardstick); achieved GFLOP/s counts the useful work
//! of the forward pass ([`airllm_engine::perf::forward_flops`]), padding excluded. Per-prompt
//! streaming re-reads the whole store per prompt, so it runs on `--per-prompt-limit` prompts
//! spread over the workload.
//!
//! More layer-major rows: `--compress int8,int4` one per compressed store (split beside the plain
//! one on first use), `--precision bf16` one with bf16 matmul inputs, `--burn-ops` one with burn's
//! ops in place of our host kernels, `--kernels avx512,avx2,off` one per host kernel level (the
//! child runs with `AIRLLM_HOST_KERNELS` set to it, so one machine benches every level; `off` is
//! burn's ops, as `--burn-ops`). `--drop-caches` drops the page cache before every wave (every
//! prompt, in per-prompt mode), so layers come from the disk as they do for a model larger than
//! memory. The resident mode's warm-up read is not timed. Every mode, and the matmul peak, run on
//! the job's backend, or the one `--backend` / `--device` name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use airllm_engine::ModelSpec;
use airllm_engine::backend::{BackendTask, with_backend};
use airllm_engine::executor::{Engine, EngineOptions, Quiet, ScoreRequest};
use airllm_engine::model::{KERNELS_ENV, KernelLevel, Precision};
use airllm_engine::perf;
use airllm_engine::store::Compression;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::run::{BackendChoice, Selection, build_requests, engine_options, prepare_model, scores_of};
use crate::job::Job;
use crate::outputs::peak_rss_bytes;
use crate::report;
use crate::schedule::{self, Sequence};
use crate::task::{Request, Response, Task};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The job whose model and requests are scored.
    pub job: PathBuf,
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub backend: BackendChoice,
    /// Prompts scored in per-prompt mode (it re-reads the store for every one), spread evenly.
    #[arg(long, default_value_t = 20)]
    pub per_prompt_limit: usize,
    /// Also stream layer-major from stores compressed these ways (comma separated: int8,int4).
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    pub compress: Vec<Compression>,
    /// Also stream layer-major with the layer matmuls at these precisions (comma separated: bf16).
    #[arg(long, value_delimiter = ',', value_name = "PRECISIONS")]
    pub precision: Vec<Precision>,
    /// Also stream layer-major with burn's ops only (no packed matmul or tiled attention): the
    /// host kernels' gain, side by side.
    #[arg(long)]
    pub burn_ops: bool,
    /// Also stream layer-major at these host kernel levels (comma separated: avx512,avx2,off),
    /// each in a child process with `AIRLLM_HOST_KERNELS` set to the level.
    #[arg(long, value_delimiter = ',', value_name = "LEVELS")]
    pub kernels: Vec<KernelLevel>,
    /// Also stream layer-major with shared prefixes run again for every sequence (the job's
    /// `memory.share_prefixes` off): what computing each shared prefix once gains, side by side.
    #[arg(long)]
    pub unshared: bool,
    /// Drop the page cache before every wave, and so before every prompt in per-prompt mode (needs
    /// root): layers come from the disk, as they do for a model larger than the page cache.
    #[arg(long)]
    pub drop_caches: bool,
    /// Write the requests (token ids and scored positions, JSON lines) for benches/hf_transformers.py.
    #[arg(long, value_name = "FILE")]
    pub requests_out: Option<PathBuf>,
    /// Also write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Score a baseline instead: FILE is its results JSON, whose `target_scores` hold
    /// `[log-prob, greedy]` per target of each request of `--requests-out`'s file, in order. The
    /// job's metric goes into FILE as `score` and is printed; nothing is benched.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["mode", "requests_out", "json"])]
    pub scores_from: Option<PathBuf>,
    /// Run one mode in this process and print its result as JSON (used by the parent run).
    #[arg(long, value_enum, hide = true)]
    pub mode: Option<Mode>,
    /// The store kind the child run streams from (used by the parent run).
    #[arg(long, hide = true, default_value = "none")]
    pub store_kind: Compression,
    /// The matmul precision of the child run (used by the parent run).
    #[arg(long, hide = true, default_value = "f32")]
    pub child_precision: Precision,
    /// The child run uses burn's ops only (used by the parent run).
    #[arg(long, hide = true)]
    pub child_burn_ops: bool,
    /// The child run computes shared prefixes once per sequence (used by the parent run).
    #[arg(long, hide = true)]
    pub child_unshared: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Resident,
    PerPrompt,
    LayerMajor,
}

/// What one mode measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeResult {
    pub mode: Mode,
    pub store_kind: Compression,
    pub precision: Precision,
    pub host_kernels: bool,
    /// The host kernel level the layers ran at (`avx512`, `avx2`, `off`).
    #[serde(default)]
    pub kernels: Option<KernelLevel>,
    pub prompts: usize,
    /// Prompt tokens scored, every token of every sequence.
    pub tokens: u64,
    /// Of those, tokens not computed again because a prefix shared by several sequences had run.
    #[serde(default)]
    pub shared_prefix_tokens: u64,
    #[serde(default = "shared_by_default")]
    pub share_prefixes: bool,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub store_bytes_read: u64,
    pub store_passes: f64,
    /// Layer weights handed to the device per layer load (f32 bytes; 0 when no layer was loaded
    /// in the timed part, as in resident mode).
    #[serde(default)]
    pub device_bytes_per_layer: u64,
    pub peak_rss_bytes: u64,
    pub gflops: f64,
    pub waves: usize,
    /// The job's headline metric from this mode's scores (none where the mode scored only a
    /// sample of the sequences, as per-prompt mode does).
    #[serde(default)]
    pub score: Option<JobScore>,
}

/// A job's headline metric: the first row of its summary (a group's, or its first task's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobScore {
    pub task: String,
    pub metric: String,
    pub value: f64,
}

fn shared_by_default() -> bool {
    true
}

impl ModeResult {
    /// `layer-major`, or `layer-major int8` for a compressed store, `layer-major bf16` for bf16
    /// matmuls.
    pub fn label(&self) -> String {
        let mut label = self.mode.to_possible_value().expect("named").get_name().to_string();
        if self.store_kind != Compression::None {
            label = format!("{label} {}", self.store_kind.name());
        }
        if self.precision == Precision::Bf16 {
            label.push_str(" bf16");
        }
        if !self.host_kernels {
            label.push_str(" burn-ops");
        } else if let Some(level) = self.kernels.filter(|&l| l != KernelLevel::cpu()) {
            label = format!("{label} {level}");
        }
        if !self.share_prefixes {
            label.push_str(" unshared");
        }
        label
    }
}

/// The requests of the job, packed as the runner packs them.
struct Workload {
    /// The job with the command line's selection and store kind applied.
    job: Job,
    store: PathBuf,
    store_size: u64,
    spec: ModelSpec,
    tasks: Vec<Task>,
    requests: Vec<Request>,
    sequences: Vec<Sequence>,
    waves: Vec<Vec<usize>>,
}

fn load(args: &BenchArgs) -> Result<Workload> {
    let mut job = Job::load(&args.job)?;
    job.apply(&args.backend.apply(args.selection.overrides()))?;
    if args.store_kind != Compression::None {
        let model = &mut job.spec.model;
        model.compress = args.store_kind;
        model.store = model.store.take().map(|dir| suffixed(&dir, args.store_kind));
    }
    let tasks = crate::task::registry::load(&job)?;
    let store = prepare_model(&job)?;
    let engine = Engine::open(&store, EngineOptions::default())?;
    let requests = build_requests(&tasks, engine.tokenizer()?, engine.spec())?;
    let sequences = schedule::sequences(&requests, engine.spec().max_position_embeddings);
    let waves = schedule::waves(engine.spec(), &sequences, job.spec.memory.activation_budget.0);
    let (store_size, spec) = (engine.store_size(), engine.spec().clone());
    Ok(Workload { job, store, store_size, spec, tasks, requests, sequences, waves })
}

impl Workload {
    /// The job's headline metric from `(sequence, one response per target)` of every sequence;
    /// `None` when some document is left unscored.
    fn score(&self, responses: &[(usize, Vec<Response>)]) -> Result<Option<JobScore>> {
        let Some(scores) = scores_of(&self.tasks, &self.requests, &self.sequences, responses)? else {
            return Ok(None);
        };
        let summary = report::build(&self.tasks, &scores, serde_json::Value::Null).summary;
        Ok(summary.into_iter().next().map(|row| JobScore {
            task: row.task,
            metric: row.metric.to_string(),
            value: row.aggregate.value,
        }))
    }
}

/// `--scores-from FILE`: the job's metric from a baseline's per-target scores, written into FILE.
fn score_baseline(workload: &Workload, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut record: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let per_request: Vec<Vec<(f64, bool)>> =
        serde_json::from_value(record["target_scores"].clone()).with_context(|| {
            format!("{}: field `target_scores`: expected [[log-prob, greedy], ...] per request", path.display())
        })?;
    if per_request.len() != workload.sequences.len() {
        bail!(
            "{}: field `target_scores` has {} requests; the job has {} (a baseline run with --limit scores only part)",
            path.display(),
            per_request.len(),
            workload.sequences.len()
        );
    }
    let mut responses = Vec::with_capacity(per_request.len());
    for (i, (scores, sequence)) in per_request.into_iter().zip(&workload.sequences).enumerate() {
        if scores.len() != sequence.request.targets.len() {
            bail!(
                "{}: `target_scores[{i}]` has {} targets, request {i} has {}",
                path.display(),
                scores.len(),
                sequence.request.targets.len()
            );
        }
        let scores =
            scores.into_iter().map(|(loglikelihood, is_greedy)| Response { loglikelihood, is_greedy }).collect();
        responses.push((i, scores));
    }
    let score = workload.score(&responses)?.context("the job has documents the requests do not score (generation)")?;
    println!("{}: {} {} {:.4}", path.display(), score.task, score.metric, score.value);
    record["score"] = serde_json::to_value(&score)?;
    airllm_engine::store::write_atomic(path, &serde_json::to_vec_pretty(&record)?)?;
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    let workload = load(&args)?;
    if let Some(path) = &args.scores_from {
        return score_baseline(&workload, path);
    }
    if let Some(path) = &args.requests_out {
        write_requests(path, &workload.sequences)?;
    }
    if let Some(mode) = args.mode {
        let defaults = engine_options(&workload.job);
        let options = EngineOptions {
            precision: args.child_precision,
            kernels: args.child_burn_ops.then_some(KernelLevel::Off),
            share_prefixes: defaults.share_prefixes && !args.child_unshared,
            // Each timed wave reads its own embedding table.
            read_embedding_ahead: false,
            ..defaults
        };
        let measure = Measure {
            mode,
            store_kind: args.store_kind,
            workload: &workload,
            options,
            per_prompt_limit: args.per_prompt_limit,
            drop_caches: args.drop_caches,
        };
        let result = workload.on_backend(measure)?;
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let micro_batch = workload.job.spec.memory.micro_batch_tokens.min(512);
    let precisions: Vec<Precision> = std::iter::once(Precision::F32)
        .chain(args.precision.iter().copied().filter(|&p| p != Precision::F32))
        .collect();
    let peaks: Vec<(Precision, perf::GemmPeak)> = precisions
        .iter()
        .map(|&precision| (precision, workload.on_backend(GemmPeak { spec: &workload.spec, micro_batch, precision })))
        .collect();
    let plain = |mode| Run {
        mode,
        kind: Compression::None,
        precision: Precision::F32,
        burn_ops: false,
        kernels: None,
        unshared: false,
    };
    let runs = [Mode::Resident, Mode::PerPrompt, Mode::LayerMajor]
        .into_iter()
        .map(plain)
        .chain(args.compress.iter().map(|&kind| Run { kind, ..plain(Mode::LayerMajor) }))
        .chain(precisions[1..].iter().map(|&precision| Run { precision, ..plain(Mode::LayerMajor) }))
        .chain(args.burn_ops.then(|| Run { burn_ops: true, ..plain(Mode::LayerMajor) }))
        .chain(args.kernels.iter().map(|&level| Run { kernels: Some(level), ..plain(Mode::LayerMajor) }))
        .chain(args.unshared.then(|| Run { unshared: true, ..plain(Mode::LayerMajor) }));
    let mut results = Vec::new();
    for run in runs {
        tracing::info!("bench: {run:?}");
        results.push(run_child(&args, run)?);
    }
    let store_size = workload.store_size;
    print_table(&workload.job.spec.backend.name, &results, &peaks, store_size);
    if let Some(path) = &args.json {
        let record = serde_json::json!({
            "backend": super::run::backend_label(&workload.job.spec.backend.name),
            "store": workload.store,
            "store_bytes": store_size,
            "gemm_peaks": peaks.iter().map(|(precision, peak)| serde_json::json!({
                "precision": precision, "gflops": peak.gflops, "shape": peak.shape, "kernel": peak.kernel,
            })).collect::<Vec<_>>(),
            "modes": results,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&record)?).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

/// One row of the table: a mode, the store it streams from and how the layers compute.
#[derive(Debug, Clone, Copy)]
struct Run {
    mode: Mode,
    kind: Compression,
    precision: Precision,
    burn_ops: bool,
    /// The host kernel level the child is capped at (`AIRLLM_HOST_KERNELS`); `None`: inherited.
    kernels: Option<KernelLevel>,
    /// Shared prefixes computed again for every sequence.
    unshared: bool,
}

/// Runs one mode in a child process and reads its result.
fn run_child(args: &BenchArgs, Run { mode, kind, precision, burn_ops, kernels, unshared }: Run) -> Result<ModeResult> {
    let exe = std::env::current_exe().context("finding the airllm-eval binary")?;
    let mut command = Command::new(exe);
    command.arg("bench").arg(&args.job).arg("--mode").arg(mode.to_possible_value().expect("named").get_name());
    command.arg("--store-kind").arg(kind.name());
    command.arg("--child-precision").arg(precision.name());
    if burn_ops {
        command.arg("--child-burn-ops");
    }
    if unshared {
        command.arg("--child-unshared");
    }
    if let Some(level) = kernels {
        command.env(KERNELS_ENV, level.name());
    }
    if args.drop_caches {
        command.arg("--drop-caches");
    }
    command.arg("--per-prompt-limit").arg(args.per_prompt_limit.to_string());
    command.args(args.selection.to_args());
    command.args(args.backend.to_args());
    let output = command.stderr(std::process::Stdio::inherit()).output()?;
    if !output.status.success() {
        bail!("bench mode {mode:?} failed ({})", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().context("bench mode printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("bench mode {mode:?} printed {line:?}"))
}

impl Workload {
    /// Runs `task` on the job's backend (the command line's, if it names one).
    fn on_backend<T: BackendTask>(&self, task: T) -> T::Output {
        let backend = &self.job.spec.backend;
        with_backend(&backend.name, backend.device, task).expect("the job's backend was checked when it was loaded")
    }
}

/// The matmul peak of the backend at a precision, at the model's shapes.
struct GemmPeak<'a> {
    spec: &'a ModelSpec,
    micro_batch: usize,
    precision: Precision,
}

impl BackendTask for GemmPeak<'_> {
    type Output = perf::GemmPeak;

    fn run<B: burn::prelude::Backend>(self, device: B::Device) -> perf::GemmPeak {
        perf::gemm_peak::<B>(self.spec, self.micro_batch, self.precision, &device)
    }
}

/// Scores the workload one way, timing only the scoring.
struct Measure<'a> {
    mode: Mode,
    store_kind: Compression,
    workload: &'a Workload,
    options: EngineOptions,
    per_prompt_limit: usize,
    drop_caches: bool,
}

impl BackendTask for Measure<'_> {
    type Output = Result<ModeResult>;

    fn run<B: burn::prelude::Backend>(self, device: B::Device) -> Result<ModeResult> {
        let Measure { mode, store_kind, workload, options, per_prompt_limit, drop_caches } = self;
        let resident = mode == Mode::Resident;
        let mut engine = Engine::<B>::open_on(&workload.store, EngineOptions { resident, ..options }, device)?;
        measure(&mut engine, mode, store_kind, workload, per_prompt_limit, drop_caches)
    }
}

fn measure<B: burn::prelude::Backend>(
    engine: &mut Engine<B>,
    mode: Mode,
    store_kind: Compression,
    workload: &Workload,
    per_prompt_limit: usize,
    drop_caches: bool,
) -> Result<ModeResult> {
    let options = engine.options().clone();
    let resident = mode == Mode::Resident;
    let waves: Vec<Vec<usize>> = match mode {
        Mode::PerPrompt => evenly_spaced(workload.sequences.len(), per_prompt_limit).map(|s| vec![s]).collect(),
        _ => workload.waves.clone(),
    };
    if resident {
        // The warm-up wave reads every layer once and keeps it; the timed run reads nothing.
        let shortest = workload.sequences.iter().min_by_key(|s| s.request.tokens.len()).context("no requests")?;
        engine.score_wave(std::slice::from_ref(&shortest.request), &Quiet)?;
    }
    let before = engine.stats();
    let mut seconds = 0.0;
    let mut responses = Vec::new();
    for wave in &waves {
        if drop_caches {
            drop_page_cache()?;
        }
        let batch: Vec<ScoreRequest> = wave.iter().map(|&s| workload.sequences[s].request.clone()).collect();
        let start = Instant::now();
        let scores = engine.score_wave(&batch, &Quiet)?;
        seconds += start.elapsed().as_secs_f64();
        for (&s, scores) in wave.iter().zip(scores) {
            responses.push((s, scores.iter().map(schedule::response).collect()));
        }
    }
    let after = engine.stats();
    let lengths: Vec<usize> = waves.iter().flatten().map(|&s| workload.sequences[s].request.tokens.len()).collect();
    let scored: usize = waves.iter().flatten().map(|&s| distinct_rows(&workload.sequences[s].request)).sum();
    let tokens = after.tokens - before.tokens;
    let shared_prefix_tokens = after.shared_prefix_tokens - before.shared_prefix_tokens;
    let bytes = after.store_bytes_read - before.store_bytes_read;
    Ok(ModeResult {
        mode,
        store_kind,
        precision: options.precision,
        host_kernels: engine.kernels() != KernelLevel::Off,
        kernels: Some(engine.kernels()),
        prompts: lengths.len(),
        tokens,
        shared_prefix_tokens,
        share_prefixes: options.share_prefixes,
        seconds,
        tokens_per_s: tokens as f64 / seconds,
        store_bytes_read: bytes,
        store_passes: bytes as f64 / engine.store_size() as f64,
        device_bytes_per_layer: (after.layer_bytes_to_device - before.layer_bytes_to_device)
            .checked_div(after.layer_loads - before.layer_loads)
            .unwrap_or(0),
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        // The FLOPs of what ran: the layers ran shared prefixes' tokens once (attention scaled
        // the same way, an approximation); the head ran every scored row.
        gflops: (perf::forward_flops(engine.spec(), &lengths, 0) * (1.0 - shared_prefix_tokens as f64 / tokens as f64)
            + perf::forward_flops(engine.spec(), &[], scored))
            / seconds
            / 1e9,
        waves: waves.len(),
        score: workload.score(&responses)?,
    })
}

/// `DIR-int8` beside `DIR`.
fn suffixed(dir: &Path, kind: Compression) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(format!("-{}", kind.name()));
    PathBuf::from(name)
}

/// Writes back dirty pages and drops the page cache, so the next reads come from the disk.
fn drop_page_cache() -> Result<()> {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe extern "C" {
        fn sync();
    }
    unsafe { sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (--drop-caches needs root)")
}

/// `count` indices spread evenly over `0..len`: a sample with the workload's mix of sequences
/// (sorted by tokens, so the first few would all share one prefix).
fn evenly_spaced(len: usize, count: usize) -> impl Iterator<Item = usize> {
    let count = count.min(len);
    (0..count).map(move |i| i * len / count)
}

/// Positions whose head output a request needs.
fn distinct_rows(request: &ScoreRequest) -> usize {
    let mut positions: Vec<usize> = request.targets.iter().map(|t| t.position).collect();
    positions.sort_unstable();
    positions.dedup();
    positions.len()
}

/// `{"tokens": [...], "positions": [...], "targets": [[position, token], ...]}` per sequence, the
/// format of benches/hf_transformers.py (targets: what `--scores-from` reads scores of).
fn write_requests(path: &Path, sequences: &[Sequence]) -> Result<()> {
    let mut text = String::new();
    for sequence in sequences {
        let mut positions: Vec<usize> = sequence.request.targets.iter().map(|t| t.position).collect();
        positions.dedup();
        let targets: Vec<[usize; 2]> =
            sequence.request.targets.iter().map(|t| [t.position, t.token as usize]).collect();
        let line = serde_json::json!({"tokens": sequence.request.tokens, "positions": positions, "targets": targets});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn print_table(backend: &str, results: &[ModeResult], peaks: &[(Precision, perf::GemmPeak)], store_size: u64) {
    let resident = results.iter().find(|r| r.mode == Mode::Resident).map_or(f64::NAN, |r| r.tokens_per_s);
    println!(
        "backend {}; store {:.1} MiB",
        super::run::backend_label(backend),
        store_size as f64 / (1u64 << 20) as f64
    );
    if let Some(score) = results.iter().find_map(|r| r.score.as_ref()) {
        println!("score: {} {}", score.task, score.metric);
    }
    for (precision, peak) in peaks {
        let [m, k, n] = peak.shape;
        println!("GEMM peak {precision:?}: {:.1} GFLOP/s ({}, [{m}x{k}] x [{k}x{n}])", peak.gflops, peak.kernel);
    }
    let peak_of = |p: Precision| peaks.iter().find(|(q, _)| *q == p).map_or(f64::NAN, |(_, peak)| peak.gflops);
    println!(
        "{:<24} {:>7} {:>8} {:>7} {:>9} {:>7} {:>10} {:>7} {:>9} {:>8} {:>6} {:>7}",
        "mode",
        "prompts",
        "tokens",
        "shared",
        "tokens/s",
        "vs res",
        "MiB read",
        "passes",
        "peak MiB",
        "GFLOP/s",
        "% peak",
        "score"
    );
    for r in results {
        println!(
            "{:<24} {:>7} {:>8} {:>6.1}% {:>9.1} {:>6.2}x {:>10.1} {:>7.2} {:>9.1} {:>8.1} {:>5.0}% {:>7}",
            r.label(),
            r.prompts,
            r.tokens,
            100.0 * r.shared_prefix_tokens as f64 / r.tokens as f64,
            r.tokens_per_s,
            r.tokens_per_s / resident,
            r.store_bytes_read as f64 / (1u64 << 20) as f64,
            r.store_passes,
            r.peak_rss_bytes as f64 / (1u64 << 20) as f64,
            r.gflops,
            100.0 * r.gflops / peak_of(r.precision),
            r.score.as_ref().map_or("-".to_string(), |s| format!("{:.4}", s.value))
        );
    }
}
