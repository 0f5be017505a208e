//! `airllm-eval run JOB.yaml`: load, validate, fetch, tokenize, score wave by wave, report.
//!
//! Every task of the job is tokenized up front and its requests are scheduled together: a wave
//! holds requests of any task, so the whole suite costs one pass over the weights per wave.
//! Everything that can be wrong with the job (spec, tasks, data rows, model) is checked before
//! the output folder is touched, so a bad job leaves nothing behind.

use std::path::{Path, PathBuf};
use std::time::Instant;

use airllm_engine::ModelSpec;
use airllm_engine::backend::{BackendTask, DEFAULT_BACKEND_NAME, with_backend};
use airllm_engine::executor::{Engine, EngineOptions, Quiet};
use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use clap::Args;
use sha2::{Digest, Sha256};

use crate::fetch::{self, ModelRef};
use crate::generation::{self, Completion, Prompt};
use crate::job::{Job, MemoryConfig, Overrides};
use crate::outputs::{Finished, JobRecord, JournalIndex, OutputDir};
use crate::progress::Progress;
use crate::report::{self, Scores};
use crate::schedule::{self, Sequence};
use crate::shard::{self, Shard};
use crate::task::{self, Doc, Request, Response, Task, Windowing, registry};
use crate::thresholds;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job spec (YAML).
    pub job: PathBuf,
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub sharding: Sharding,
    #[command(flatten)]
    pub backend: BackendChoice,
    /// Output folder, instead of the job's.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Start fresh: delete earlier results in the output folder instead of resuming.
    #[arg(long)]
    pub no_resume: bool,
}

/// Which documents of the job to score: the command-line overrides `run` and `bench` share.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Only these tasks (comma separated): the job's entries of that name, or built-in tasks.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub tasks: Option<Vec<String>>,
    /// mmlu: only these subjects (comma separated), instead of the job's.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub subjects: Option<Vec<String>>,
    /// The first N documents of every task (of each subject, for mmlu).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Solved examples before each question, for every task.
    #[arg(long, value_name = "K")]
    pub num_fewshot: Option<usize>,
}

/// How `run` splits its work: one shard of the job's documents.
#[derive(Debug, Clone, Args)]
pub struct Sharding {
    /// Score only shard I of N (0-based) into OUTPUT/shard-I-of-N/; default: the job's `shard:`,
    /// else Slurm's array variables or Kubernetes' JOB_COMPLETION_INDEX with AIRLLM_SHARDS.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

/// The backend to run on instead of the job's: the flags `run`, `bench` and `logits` share.
#[derive(Debug, Clone, Default, Args)]
pub struct BackendChoice {
    /// Backend: `cpu`, or `cuda` / `wgpu` in builds with those features (default: the job's
    /// `backend.name`, else cpu).
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// Device of that backend: cuda's ordinal, wgpu's n-th discrete GPU (default: the job's,
    /// else cuda's first and wgpu's default adapter).
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,
}

impl BackendChoice {
    /// The backend and device to run on, where there is no job: the flags, else the cpu; an
    /// error names the backends this build has.
    pub fn resolve(&self) -> Result<(String, Option<usize>)> {
        let name = self.backend.clone().unwrap_or_else(|| "cpu".into());
        airllm_engine::backend::check_available(&name).map_err(|e| anyhow::anyhow!("--backend: {e}"))?;
        Ok((name, self.device))
    }

    /// `overrides` with these flags' backend and device.
    pub fn apply(&self, overrides: Overrides) -> Overrides {
        Overrides { backend: self.backend.clone(), device: self.device, ..overrides }
    }

    /// The same flags as command-line arguments, for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(name) = &self.backend {
            args.extend(["--backend".to_string(), name.clone()]);
        }
        if let Some(device) = self.device {
            args.extend(["--device".to_string(), device.to_string()]);
        }
        args
    }
}

impl Selection {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            tasks: self.tasks.clone(),
            subjects: self.subjects.clone(),
            limit: self.limit,
            num_fewshot: self.num_fewshot,
            ..Overrides::default()
        }
    }

    /// The same selection as command-line arguments, for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(tasks) = &self.tasks {
            args.extend(["--tasks".to_string(), tasks.join(",")]);
        }
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
        self.backend.apply(Overrides {
            output: self.out.clone(),
            no_resume: self.no_resume,
            shard: self.sharding.shard,
            ..self.selection.overrides()
        })
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let mut job = Job::load(&args.job)?;
    job.apply(&args.overrides()).with_context(|| format!("{}: command line", job.path.display()))?;
    let tasks = registry::load(&job)?;
    thresholds::check_names(&job.spec.thresholds, &tasks).with_context(|| job.locate("thresholds"))?;
    let shard = match job.spec.shard {
        Some(shard) => Some(shard),
        None => Shard::from_env()?,
    };
    let store = prepare_model(&job)?;
    let hash = job.spec.hash(&tasks_digest(&tasks), &airllm_engine::store::Manifest::read(&store)?);
    let backend = &job.spec.backend;
    let execute = Execute { job: &job, tasks: &tasks, shard, hash: &hash, store: &store, started };
    with_backend(&backend.name, backend.device, execute).expect("the job's backend was checked when it was loaded")
}

/// A digest of every document the tasks ask, for the job identity.
pub fn tasks_digest(tasks: &[Task]) -> String {
    let mut digest = Sha256::new();
    for task in tasks {
        task.digest_into(&mut digest);
    }
    digest.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Scoring a loaded job, on whichever backend the job names.
struct Execute<'a> {
    job: &'a Job,
    tasks: &'a [Task],
    shard: Option<Shard>,
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
        let requests = build_requests(self.tasks, engine.tokenizer()?, engine.spec())?;
        let (tasks, requests, dir) = match self.shard {
            None => (self.tasks.to_vec(), requests, spec.output.clone()),
            Some(shard) => {
                let (tasks, requests) = shard_subset(self.tasks, requests, shard);
                (tasks, requests, shard.dir(&spec.output))
            }
        };
        let sequences = schedule::sequences(&requests, engine.spec().max_position_embeddings);
        let waves = schedule::waves(engine.spec(), &sequences, spec.memory.activation_budget.0);
        let docs: usize = tasks.iter().map(|t| t.docs.len()).sum();
        let shard = self.shard.map_or_else(|| "whole job".to_string(), |s| format!("shard {s}"));
        tracing::info!(
            docs,
            requests = requests.len(),
            sequences = sequences.len(),
            waves = waves.len(),
            "job {}, {shard}: {} tasks",
            self.hash,
            tasks.len()
        );
        let generation_prompts = generation_prompts(&engine, &tasks)?;
        let bytes_per_token = generation::kv_bytes(&engine);
        generation::plan(
            &generation_prompts.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
            bytes_per_token,
            spec.memory.kv_budget.0,
        )
        .with_context(|| self.job.locate("kv_budget"))?;
        let record = JobRecord {
            job_hash: self.hash.to_string(),
            spec: serde_json::to_value(spec)?,
            identity: self.identity(&engine),
            job: self.job.path.clone(),
            shard: self.shard,
        };
        let (mut out, done) = OutputDir::open(&dir, &record, spec.resume)?;
        let mut state = RunState::new(&tasks, &requests, done)?;
        let compute = Instant::now();
        run_waves(&mut engine, &tasks, &sequences, &waves, &mut state, &mut out)?;
        run_generations(&mut engine, generation_prompts, &mut state, &mut out, &spec.memory)?;
        let compute_s = compute.elapsed().as_secs_f64();

        let counts = Counts {
            requests: requests.len(),
            sequences: sequences.len(),
            waves: waves.len(),
            docs,
            resumed: state.resumed,
        };
        out.write_run_record(&self.run_record(&engine, &counts, compute_s))?;
        if let Some(shard) = self.shard {
            println!(
                "shard {shard} done: {docs} documents in {}; when every shard is done: airllm-eval merge {}",
                out.dir().display(),
                spec.output.display()
            );
            return Ok(());
        }
        let report = report::build(&tasks, &state.into_scores(&tasks), record.identity);
        out.write_report(&report)?;
        report::print_table(&report.summary);
        println!("results in {}", out.dir().display());
        thresholds::enforce(&spec.thresholds, &report.summary)
    }
}

/// The documents of one shard: the tasks with only those documents, and their requests,
/// renumbered.
fn shard_subset(tasks: &[Task], requests: Vec<Request>, shard: Shard) -> (Vec<Task>, Vec<Request>) {
    let docs: usize = tasks.iter().map(|t| t.docs.len()).sum();
    let mut tokens = vec![0u64; docs];
    for r in &requests {
        tokens[r.doc] += (r.context.len() + r.continuation.len()) as u64;
    }
    let mine: Vec<bool> = shard::assign(&tokens, shard.count).into_iter().map(|s| s == shard.index).collect();
    let mut renumber = vec![usize::MAX; docs];
    let mut next = 0;
    let mut doc = 0;
    let subset = tasks
        .iter()
        .map(|task| {
            let kept = task.docs.iter().filter(|_| {
                let keep = mine[doc];
                if keep {
                    renumber[doc] = next;
                    next += 1;
                }
                doc += 1;
                keep
            });
            Task { docs: kept.cloned().collect(), ..task.clone() }
        })
        .collect();
    let requests =
        requests.into_iter().filter(|r| mine[r.doc]).map(|r| Request { doc: renumber[r.doc], ..r }).collect();
    (subset, requests)
}

/// Sizes of the job's plan, for the run record.
struct Counts {
    requests: usize,
    sequences: usize,
    waves: usize,
    docs: usize,
    resumed: usize,
}

impl Execute<'_> {
    /// What results.json says of the model and the job: everything that identifies the numbers.
    fn identity<B: Backend>(&self, engine: &Engine<B>) -> serde_json::Value {
        let spec = &self.job.spec;
        serde_json::json!({
            "model": "airllm-eval",
            "model_args": spec.model.source,
            "model_sha256": spec.model.sha256,
            "store_compression": spec.model.compress,
            "family": engine.spec().family,
            "backend": backend_label(&spec.backend.name),
            "precision": spec.backend.precision,
            "job_hash": self.hash,
            "airllm_eval_version": env!("CARGO_PKG_VERSION"),
            "reference": "lm-evaluation-harness 0.4.13 task definitions",
        })
    }

    fn run_record<B: Backend>(&self, engine: &Engine<B>, counts: &Counts, compute_s: f64) -> serde_json::Value {
        let spec = &self.job.spec;
        let stats = engine.stats();
        serde_json::json!({
            "model": {
                "source": spec.model.source,
                "sha256": spec.model.sha256,
                "store": self.store,
                "store_bytes": engine.store_size(),
                "compress": spec.model.compress,
                "family": engine.spec().family,
                "layers": engine.spec().num_layers,
            },
            "job": self.job.path,
            "job_hash": self.hash,
            "tasks": self.tasks.iter().map(|t| &t.name).collect::<Vec<_>>(),
            "backend": backend_label(&spec.backend.name),
            "activation_budget_bytes": spec.memory.activation_budget.0,
            "shard": self.shard,
            "docs": counts.docs,
            "docs_resumed": counts.resumed,
            "requests": counts.requests,
            "sequences": counts.sequences,
            "waves_planned": counts.waves,
            "waves_run": stats.waves,
            "tokens": stats.tokens,
            "shared_prefix_tokens": stats.shared_prefix_tokens,
            "tokens_per_s": if compute_s > 0.0 { stats.tokens as f64 / compute_s } else { 0.0 },
            "store_bytes_read": stats.store_bytes_read,
            "store_passes": stats.store_bytes_read as f64 / engine.store_size() as f64,
            "peak_rss_bytes": crate::outputs::peak_rss_bytes(),
            "compute_s": compute_s,
            "wall_s": self.started.elapsed().as_secs_f64(),
        })
    }
}

/// `flex` for the CPU, else the GPU backend's name.
/// The burn backend a job's `backend.name` runs on: `cpu` is the build's default CPU backend.
pub fn backend_label(name: &str) -> &str {
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
        kernels: None,
        kv_dtype: memory.kv_dtype,
        share_prefixes: memory.share_prefixes,
        device_budget: memory.device_budget.map(|b| b.0),
        read_embedding_ahead: true,
    }
}

/// Every request of the tasks, tokenized, each checked to have something to score.
pub fn build_requests(tasks: &[Task], tokenizer: &tokenizers::Tokenizer, model: &ModelSpec) -> Result<Vec<Request>> {
    let prefix_token = model.bos_token_id.or(model.eos_token_id).context(
        "the model names neither a BOS nor an EOS token, one of which starts a rolling window and an empty context",
    )?;
    let windowing = Windowing { prefix_token, default_max_length: model.max_position_embeddings };
    let requests = task::requests(tasks, tokenizer, windowing)?;
    if let Some(bad) = requests.iter().find(|r| r.context.is_empty() || r.continuation.is_empty()) {
        let (task, document) = locate_doc(tasks, bad.doc);
        bail!(
            "task `{}` document {} choice {}: the prompt tokenized to an empty context or continuation",
            task.name,
            document,
            bad.part
        );
    }
    Ok(requests)
}

/// The task and file row of a document numbered across tasks.
fn locate_doc(tasks: &[Task], mut doc: usize) -> (&Task, usize) {
    for task in tasks {
        if doc < task.docs.len() {
            return (task, task.docs[doc].row);
        }
        doc -= task.docs.len();
    }
    panic!("document index past the job's documents")
}

/// What is known about every document while waves run.
struct RunState {
    /// Document -> (task, position in the task's documents).
    docs: Vec<(usize, usize)>,
    names: Vec<(String, usize)>,
    /// Request -> (document, part).
    owners: Vec<(usize, usize)>,
    parts: Vec<Vec<Option<Response>>>,
    /// Tokens scored per document (a rolling document's size).
    tokens: Vec<usize>,
    /// Requests of each document still to score (0: finished).
    remaining: Vec<usize>,
    results: Vec<Option<Vec<Response>>>,
    /// Generated documents' completions.
    completions: Vec<Option<String>>,
    /// Documents found finished in the journal.
    resumed: usize,
}

impl RunState {
    fn new(tasks: &[Task], requests: &[Request], done: Vec<Finished>) -> Result<Self> {
        let docs: Vec<(usize, usize)> =
            tasks.iter().enumerate().flat_map(|(t, task)| (0..task.docs.len()).map(move |d| (t, d))).collect();
        let names: Vec<(String, usize)> =
            docs.iter().map(|&(t, d)| (tasks[t].name.clone(), tasks[t].docs[d].row)).collect();
        let mut remaining = vec![0usize; docs.len()];
        let mut tokens = vec![0usize; docs.len()];
        for request in requests {
            remaining[request.doc] += 1;
            tokens[request.doc] += request.continuation.len();
        }
        let parts = remaining.iter().map(|&n| vec![None; n]).collect();
        let owners = requests.iter().map(|r| (r.doc, r.part)).collect();
        let (results, completions) = (vec![None; docs.len()], vec![None; docs.len()]);
        let mut state = Self { docs, names, owners, parts, tokens, remaining, results, completions, resumed: 0 };
        state.resume(tasks, done)?;
        Ok(state)
    }

    fn resume(&mut self, tasks: &[Task], done: Vec<Finished>) -> Result<()> {
        let index = JournalIndex::new(tasks);
        for finished in done {
            let (doc, _, _) = index.locate(&finished).context("the journal")?;
            self.remaining[doc] = 0;
            self.tokens[doc] = finished.tokens;
            self.results[doc] = Some(finished.responses);
            self.completions[doc] = finished.completion;
            self.resumed += 1;
        }
        if self.resumed > 0 {
            tracing::info!("resuming: {} of {} documents already done", self.resumed, self.docs.len());
        }
        Ok(())
    }

    /// A sequence is needed while any request it answers belongs to an unfinished document.
    fn needed(&self, sequence: &Sequence) -> bool {
        sequence.parts.iter().any(|(request, _)| self.remaining[self.owners[*request].0] > 0)
    }

    /// Records a sequence's scores; returns the documents this finished.
    fn record(&mut self, sequence: &Sequence, scores: &[Response], finished: &mut Vec<usize>) {
        for (request, targets) in &sequence.parts {
            let (doc, part) = self.owners[*request];
            if self.remaining[doc] == 0 || self.parts[doc][part].is_some() {
                continue;
            }
            self.parts[doc][part] = Some(schedule::combine(targets.iter().map(|&t| scores[t])));
            self.remaining[doc] -= 1;
            if self.remaining[doc] == 0 {
                finished.push(doc);
            }
        }
    }

    /// A finished document's responses: one per choice, or the sum of a rolling one's windows.
    fn finish(&mut self, tasks: &[Task], doc: usize) -> Finished {
        let parts = std::mem::take(&mut self.parts[doc]).into_iter().map(|p| p.expect("every part scored"));
        let (t, d) = self.docs[doc];
        let responses = match tasks[t].docs[d].doc {
            Doc::Rolling(_) => vec![schedule::combine(parts)],
            Doc::Choice(_) | Doc::Generate(_) => parts.collect(),
        };
        self.results[doc] = Some(responses.clone());
        let (task, row) = self.names[doc].clone();
        Finished { task, doc: row, responses, tokens: self.tokens[doc], completion: None }
    }

    /// Records a generated document's completion.
    fn finish_generated(&mut self, doc: usize, completion: Completion) -> Finished {
        self.results[doc] = Some(Vec::new());
        self.tokens[doc] = completion.tokens;
        self.completions[doc] = Some(completion.text.clone());
        let (task, row) = self.names[doc].clone();
        Finished { task, doc: row, responses: Vec::new(), tokens: completion.tokens, completion: Some(completion.text) }
    }

    fn done(&self) -> usize {
        self.results.iter().filter(|r| r.is_some()).count()
    }

    fn into_scores(self, tasks: &[Task]) -> Scores {
        let mut responses: Vec<Vec<Vec<Response>>> = tasks.iter().map(|t| Vec::with_capacity(t.docs.len())).collect();
        let mut tokens: Vec<Vec<usize>> = tasks.iter().map(|t| Vec::with_capacity(t.docs.len())).collect();
        let mut completions: Vec<Vec<Option<String>>> =
            tasks.iter().map(|t| Vec::with_capacity(t.docs.len())).collect();
        for (((result, (t, _)), n), completion) in
            self.results.into_iter().zip(self.docs).zip(self.tokens).zip(self.completions)
        {
            responses[t].push(result.expect("every document scored"));
            tokens[t].push(n);
            completions[t].push(completion);
        }
        Scores { responses, tokens, completions }
    }
}

/// The documents' scores from sequences' responses (`(sequence, one per target)`), recorded as a
/// run records them; `None` while some document has none (a sample of the sequences, or a
/// generation task). `airllm-eval bench` scores its modes and the baselines this way.
pub(crate) fn scores_of(
    tasks: &[Task],
    requests: &[Request],
    sequences: &[Sequence],
    responses: &[(usize, Vec<Response>)],
) -> Result<Option<Scores>> {
    let mut state = RunState::new(tasks, requests, Vec::new())?;
    let mut finished = Vec::new();
    for (sequence, scores) in responses {
        state.record(&sequences[*sequence], scores, &mut finished);
    }
    for doc in finished {
        state.finish(tasks, doc);
    }
    Ok((state.done() == state.docs.len()).then(|| state.into_scores(tasks)))
}

/// Every generation document of the tasks (numbered across tasks) as a prompt: its context
/// encoded and cut to fit the model, its stop sequences with the model's end-of-text.
fn generation_prompts<B: Backend>(engine: &Engine<B>, tasks: &[Task]) -> Result<Vec<(usize, Prompt)>> {
    let tokenizer = engine.tokenizer()?;
    let docs = tasks.iter().flat_map(|t| &t.docs).enumerate();
    docs.filter_map(|(doc, document)| match &document.doc {
        Doc::Generate(g) => Some((doc, g)),
        _ => None,
    })
    .map(|(doc, g)| {
        let ids = task::encode(tokenizer, &g.context)?;
        Ok((doc, generation::prompt(tokenizer, engine.spec(), ids, &g.until, g.max_gen_toks)))
    })
    .collect()
}

/// Generates every unfinished generation document, in waves whose KV caches fit the job's
/// `memory.kv_budget`, journaling each wave. Layers stay resident for the whole generation when
/// the store fits `memory.resident_budget`; otherwise every decode step streams the store.
fn run_generations<B: Backend>(
    engine: &mut Engine<B>,
    prompts: Vec<(usize, Prompt)>,
    state: &mut RunState,
    out: &mut OutputDir,
    memory: &MemoryConfig,
) -> Result<()> {
    let (pending, prompts): (Vec<usize>, Vec<Prompt>) =
        prompts.into_iter().filter(|(doc, _)| state.results[*doc].is_none()).unzip();
    if pending.is_empty() {
        return Ok(());
    }
    let waves = generation::plan(&prompts, generation::kv_bytes(engine), memory.kv_budget.0)?;
    let resident = engine.store_size() <= memory.resident_budget.0;
    tracing::info!(
        "generating {} documents in {} waves; {}",
        prompts.len(),
        waves.len(),
        if resident {
            format!("the store ({} bytes) fits memory.resident_budget: layers stay resident", engine.store_size())
        } else {
            "the store exceeds memory.resident_budget: every decode step streams it".to_string()
        }
    );
    engine.set_resident(resident);
    let total = state.docs.len();
    for (number, wave) in waves.iter().enumerate() {
        let started = Instant::now();
        let batch: Vec<&Prompt> = wave.iter().map(|&i| &prompts[i]).collect();
        let (completions, stats) = generation::generate_wave(engine, &batch, &Quiet, &mut |_, _| {})
            .with_context(|| format!("generation wave {}", number + 1))?;
        let rows: Vec<Finished> = wave
            .iter()
            .zip(completions)
            .map(|(&i, completion)| state.finish_generated(pending[i], completion))
            .collect();
        out.append(&rows)?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            "generation wave {}/{}: {} documents, {} tokens in {} steps, {seconds:.1}s ({:.1} tokens/s), KV peak {} MiB; {}/{total} documents done",
            number + 1,
            waves.len(),
            wave.len(),
            stats.tokens,
            stats.steps,
            stats.tokens as f64 / seconds,
            stats.peak_kv_bytes >> 20,
            state.done()
        );
    }
    engine.set_resident(false);
    Ok(())
}

/// Runs the planned waves, skipping sequences of finished documents, journaling after each wave.
/// The plan covers the whole job, so a resumed run forms the same waves as an uninterrupted one.
fn run_waves<B: Backend>(
    engine: &mut Engine<B>,
    tasks: &[Task],
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
    let total = state.docs.len();
    for (number, wave) in todo.iter().enumerate() {
        let wave_tokens = wave.iter().map(|&s| sequences[s].request.tokens.len() as u64).sum();
        progress.start_wave(number + 1, todo.len(), wave_tokens, state.done(), total);
        let batch: Vec<_> = wave.iter().map(|&s| sequences[s].request.clone()).collect();
        let wave_start = Instant::now();
        let scores = engine.score_wave(&batch, &progress).with_context(|| format!("wave {}", number + 1))?;
        let mut finished = Vec::new();
        for (&s, scores) in wave.iter().zip(&scores) {
            let scores: Vec<Response> = scores.iter().map(schedule::response).collect();
            state.record(&sequences[s], &scores, &mut finished);
        }
        finished.sort_unstable();
        let rows: Vec<Finished> = finished.into_iter().map(|doc| state.finish(tasks, doc)).collect();
        out.append(&rows)?;
        progress.finish_wave(state.done(), total);
        tracing::info!(
            "wave {}/{}: {} sequences, {wave_tokens} tokens, {:.1}s; {}/{total} documents done",
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
