//! `airllm-eval run JOB.yaml`: load, validate, fetch, tokenize, score wave by wave, report.
//!
//! Everything that can be wrong with the job (spec, subjects, data rows, model) is checked before
//! the output folder is touched, so a bad job leaves nothing behind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use airllm_engine::backend::{BackendTask, DEFAULT_BACKEND_NAME, with_backend};
use airllm_engine::executor::{Engine, EngineOptions};
use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use clap::Args;
use sha2::{Digest, Sha256};

use crate::dataset::mmlu::{self, Subject};
use crate::fetch::{self, ModelRef};
use crate::job::{Job, Overrides, Subjects};
use crate::outputs::{self, OutputDir};
use crate::progress::Progress;
use crate::schedule::{self, Sequence};
use crate::task::Request;
use crate::task::mmlu::{Accuracy, Item, ItemResult, predict};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job spec (YAML).
    pub job: PathBuf,
    #[command(flatten)]
    pub selection: Selection,
    /// Output folder, instead of the job's.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Start fresh: delete earlier results in the output folder instead of resuming.
    #[arg(long)]
    pub no_resume: bool,
}

/// Which questions of the job's dataset to score: the command-line overrides `run` and `bench` share.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Only these subjects (comma separated), instead of the job's.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub subjects: Option<Vec<String>>,
    /// The first N questions of each subject.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Solved examples before each question.
    #[arg(long, value_name = "K")]
    pub num_fewshot: Option<usize>,
}

impl Selection {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            subjects: self.subjects.clone(),
            limit: self.limit,
            num_fewshot: self.num_fewshot,
            ..Overrides::default()
        }
    }

    /// The same selection as command-line arguments, for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(subjects) = &self.subjects {
            args.extend(["--subjects".to_string(), subjects.join(",")]);
        }
        if let Some(limit) = self.limit {
            args.extend(["--limit".to_string(), limit.to_string()]);
        }
        if let Some(k) = self.num_fewshot {
            args.extend(["--num-fewshot".to_string(), k.to_string()]);
        }
        args
    }
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides { output: self.out.clone(), no_resume: self.no_resume, ..self.selection.overrides() }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let mut job = Job::load(&args.job)?;
    job.apply(&args.overrides());
    let (subjects, digest) = load_dataset(&job)?;
    let names: Vec<String> = subjects.iter().map(|s| s.name.clone()).collect();
    let hash = job.spec.hash(&names, &digest);
    let store = prepare_model(&job)?;
    let backend = &job.spec.backend;
    let task = Execute { job: &job, subjects: &subjects, hash: &hash, store: &store, started };
    with_backend(&backend.name, backend.device, task).expect("the job's backend was checked when it was loaded")
}

/// Scoring a loaded job, on whichever backend the job names.
struct Execute<'a> {
    job: &'a Job,
    subjects: &'a [Subject],
    hash: &'a str,
    store: &'a Path,
    started: Instant,
}

impl BackendTask for Execute<'_> {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let spec = &self.job.spec;
        let mut engine = Engine::<B>::open_on(self.store, engine_options(self.job), device)
            .with_context(|| format!("opening layer store {}", self.store.display()))?;
        let items = crate::task::mmlu::items(self.subjects);
        let requests = crate::task::mmlu::requests(self.subjects, engine.tokenizer())?;
        check_requests(&requests)?;
        let sequences = schedule::sequences(&requests, engine.spec().max_position_embeddings);
        let waves = schedule::waves(engine.spec(), &sequences, spec.memory.activation_budget.0);
        tracing::info!(
            items = items.len(),
            requests = requests.len(),
            sequences = sequences.len(),
            waves = waves.len(),
            "job {}: {} subjects, {}-shot",
            self.hash,
            self.subjects.len(),
            spec.num_fewshot
        );
        let (mut out, done) = OutputDir::open(&spec.output, self.hash, &serde_json::to_value(spec)?, spec.resume)?;
        let mut state = RunState::new(&items, &requests, done)?;
        let compute = Instant::now();
        run_waves(&mut engine, &sequences, &waves, &mut state, &mut out)?;
        let compute_s = compute.elapsed().as_secs_f64();

        let counts = Counts { requests: requests.len(), sequences: sequences.len(), waves: waves.len() };
        let resumed = state.resumed;
        let mut results = state.into_results();
        let summary = out.write_results(&mut results)?;
        let record = self.run_record(&engine, &counts, results.len(), resumed, compute_s, &summary);
        out.write_run_record(&record)?;
        print_summary(&summary, out.dir());
        Ok(())
    }
}

/// Sizes of the job's plan, for the run record.
struct Counts {
    requests: usize,
    sequences: usize,
    waves: usize,
}

impl Execute<'_> {
    fn run_record<B: Backend>(
        &self,
        engine: &Engine<B>,
        counts: &Counts,
        items: usize,
        resumed: usize,
        compute_s: f64,
        summary: &[(String, Accuracy)],
    ) -> serde_json::Value {
        let spec = &self.job.spec;
        let stats = engine.stats();
        serde_json::json!({
            "model": {
                "source": spec.model.source,
                "sha256": spec.model.sha256,
                "store": self.store,
                "store_bytes": engine.store_size(),
                "compress": spec.model.compress,
                "family": engine.spec().family.name(),
                "layers": engine.spec().num_layers,
            },
            "job": self.job.path,
            "job_hash": self.hash,
            "task": spec.task,
            "num_fewshot": spec.num_fewshot,
            "backend": backend_label(&spec.backend.name),
            "activation_budget_bytes": spec.memory.activation_budget.0,
            "subjects": self.subjects.len(),
            "items": items,
            "items_resumed": resumed,
            "requests": counts.requests,
            "sequences": counts.sequences,
            "waves_planned": counts.waves,
            "waves_run": stats.waves,
            "tokens": stats.tokens,
            "tokens_per_s": if compute_s > 0.0 { stats.tokens as f64 / compute_s } else { 0.0 },
            "store_bytes_read": stats.store_bytes_read,
            "store_passes": stats.store_bytes_read as f64 / engine.store_size() as f64,
            "peak_rss_bytes": outputs::peak_rss_bytes(),
            "compute_s": compute_s,
            "wall_s": self.started.elapsed().as_secs_f64(),
            "accuracy": summary.last().map(|row| row.1.accuracy),
        })
    }
}

/// `flex` for the CPU, else the GPU backend's name.
fn backend_label(name: &str) -> &str {
    if name == "cpu" { DEFAULT_BACKEND_NAME } else { name }
}

/// Fetches the job's model and makes its layer store (reused when already there).
pub fn prepare_model(job: &Job) -> Result<PathBuf> {
    let config = &job.spec.model;
    let base = job.path.parent().unwrap_or(Path::new("."));
    let model = ModelRef::parse(&config.source, config.sha256.as_deref(), base)?;
    let options = config.split_options();
    let store_dir = match &config.store {
        Some(dir) => dir.clone(),
        None => fetch::default_store_dir(&model, &options)?,
    };
    fetch::prepare_store(&model, &store_dir, &options)
}

/// The engine settings of the job's `memory` section (streaming, not resident).
pub fn engine_options(job: &Job) -> EngineOptions {
    let memory = &job.spec.memory;
    EngineOptions {
        prefetch_depth: memory.prefetch_depth,
        micro_batch_tokens: memory.micro_batch_tokens,
        resident: false,
        precision: job.spec.backend.precision,
        host_kernels: true,
    }
}

/// The subjects the job asks for, loaded, and a digest of the files read.
pub fn load_dataset(job: &Job) -> Result<(Vec<Subject>, String)> {
    let spec = &job.spec;
    let root = &spec.dataset.path;
    let available = mmlu::available_subjects(root).with_context(|| format!("{}: dataset.path", job.locate("path:")))?;
    let names = match &spec.dataset.subjects {
        Subjects::All => available.clone(),
        Subjects::List(list) => {
            check_subjects(job, list, &available)?;
            list.clone()
        }
    };
    let mut digest = Sha256::new();
    let subjects = names
        .iter()
        .map(|name| mmlu::load_subject(root, name, spec.num_fewshot, spec.dataset.limit, &mut digest))
        .collect::<Result<Vec<_>>>()?;
    let digest: String = digest.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((subjects, digest))
}

fn check_subjects(job: &Job, list: &[String], available: &[String]) -> Result<()> {
    if list.is_empty() {
        bail!("{}: dataset.subjects is empty; give `all` or at least one subject", job.locate("subjects"));
    }
    let mut seen = HashSet::new();
    for name in list {
        if !available.contains(name) {
            bail!(
                "{}: unknown subject `{name}` in dataset.subjects; allowed: all, or any of {}",
                job.locate(name),
                available.join(", ")
            );
        }
        if !seen.insert(name) {
            bail!("{}: subject `{name}` is listed twice", job.locate(name));
        }
    }
    Ok(())
}

fn check_requests(requests: &[Request]) -> Result<()> {
    if let Some(bad) = requests.iter().find(|r| r.context.is_empty() || r.continuation.is_empty()) {
        bail!("item {} choice {}: the prompt tokenized to an empty context or continuation", bad.item, bad.choice);
    }
    Ok(())
}

/// What is known about every item while waves run.
struct RunState {
    items: Vec<Item>,
    /// Request index -> (item, choice).
    owners: Vec<(usize, usize)>,
    logprobs: Vec<[f32; 4]>,
    /// Requests of each item still to score (0: finished).
    remaining: Vec<usize>,
    results: Vec<Option<ItemResult>>,
    /// Items found finished in the journal.
    resumed: usize,
}

impl RunState {
    fn new(items: &[Item], requests: &[Request], done: Vec<ItemResult>) -> Result<Self> {
        let mut remaining = vec![0usize; items.len()];
        for request in requests {
            remaining[request.item] += 1;
        }
        let mut results = vec![None; items.len()];
        let mut resumed = 0;
        for finished in done {
            let index =
                items.iter().position(|i| i.subject == finished.subject && i.index == finished.index).with_context(
                    || format!("journal item {}/{} is not part of this job", finished.subject, finished.index),
                )?;
            if items[index].gold != finished.gold {
                bail!(
                    "journal item {}/{} has another gold answer: the dataset changed",
                    finished.subject,
                    finished.index
                );
            }
            remaining[index] = 0;
            results[index] = Some(finished);
            resumed += 1;
        }
        if resumed > 0 {
            tracing::info!("resuming: {resumed} of {} items already done", items.len());
        }
        let owners = requests.iter().map(|r| (r.item, r.choice)).collect();
        Ok(Self { items: items.to_vec(), owners, logprobs: vec![[0.0; 4]; items.len()], remaining, results, resumed })
    }

    /// A sequence is needed while any request it answers belongs to an unfinished item.
    fn needed(&self, sequence: &Sequence) -> bool {
        sequence.parts.iter().any(|(request, _)| self.remaining[self.owners[*request].0] > 0)
    }

    /// Records a sequence's scores; returns the items this finished.
    fn record(&mut self, sequence: &Sequence, scores: &[f32], finished: &mut Vec<usize>) {
        for (request, targets) in &sequence.parts {
            let (item, choice) = self.owners[*request];
            if self.remaining[item] == 0 {
                continue;
            }
            self.logprobs[item][choice] = targets.iter().map(|&t| scores[t]).sum();
            self.remaining[item] -= 1;
            if self.remaining[item] == 0 {
                finished.push(item);
            }
        }
    }

    fn finish(&mut self, item: usize) -> ItemResult {
        let meta = &self.items[item];
        let logprobs = self.logprobs[item];
        let result = ItemResult {
            subject: meta.subject.clone(),
            index: meta.index,
            gold: meta.gold,
            pred: predict(&logprobs),
            logprobs,
        };
        self.results[item] = Some(result.clone());
        result
    }

    fn done(&self) -> usize {
        self.results.iter().filter(|r| r.is_some()).count()
    }

    fn into_results(self) -> Vec<ItemResult> {
        self.results.into_iter().map(|r| r.expect("every item scored")).collect()
    }
}

/// Runs the planned waves, skipping sequences of finished items, journaling after each wave.
/// The plan covers the whole job, so a resumed run forms the same waves as an uninterrupted one.
fn run_waves<B: Backend>(
    engine: &mut Engine<B>,
    sequences: &[Sequence],
    waves: &[Vec<usize>],
    state: &mut RunState,
    out: &mut OutputDir,
) -> Result<()> {
    let todo: Vec<Vec<usize>> =
        waves.iter().map(|w| w.iter().copied().filter(|&s| state.needed(&sequences[s])).collect()).collect();
    let todo: Vec<Vec<usize>> = todo.into_iter().filter(|w| !w.is_empty()).collect();
    let tokens: u64 = todo.iter().flatten().map(|&s| sequences[s].request.tokens.len() as u64).sum();
    let progress = Progress::new(tokens, engine.spec().num_layers);
    let total = state.items.len();
    for (number, wave) in todo.iter().enumerate() {
        let wave_tokens = wave.iter().map(|&s| sequences[s].request.tokens.len() as u64).sum();
        progress.start_wave(number + 1, todo.len(), wave_tokens, state.done(), total);
        let batch: Vec<_> = wave.iter().map(|&s| sequences[s].request.clone()).collect();
        let wave_start = Instant::now();
        let scores = engine.score_wave(&batch, &progress).with_context(|| format!("wave {}", number + 1))?;
        let mut finished = Vec::new();
        for (&s, scores) in wave.iter().zip(&scores) {
            state.record(&sequences[s], scores, &mut finished);
        }
        finished.sort_unstable();
        let rows: Vec<ItemResult> = finished.into_iter().map(|item| state.finish(item)).collect();
        out.append(&rows)?;
        progress.finish_wave(state.done(), total);
        tracing::info!(
            "wave {}/{}: {} sequences, {wave_tokens} tokens, {:.1}s; {}/{total} items done",
            number + 1,
            todo.len(),
            wave.len(),
            wave_start.elapsed().as_secs_f64(),
            state.done()
        );
    }
    progress.finish();
    Ok(())
}

fn print_summary(summary: &[(String, Accuracy)], dir: &Path) {
    let width = summary.iter().map(|r| r.0.len()).max().unwrap_or(7).max(7);
    println!("{:<width$}  {:>6}  {:>8}  {:>8}", "subject", "n", "accuracy", "stderr");
    for (name, acc) in summary {
        if name == "overall" {
            println!("{}", "-".repeat(width + 30));
        }
        let stderr = acc.stderr.map(|s| format!("{s:.4}")).unwrap_or_else(|| "n/a".into());
        println!("{name:<width$}  {:>6}  {:>8.4}  {stderr:>8}", acc.n, acc.accuracy);
    }
    println!("results in {}", dir.display());
}
