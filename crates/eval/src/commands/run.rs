//! `airllm-eval run JOB.yaml`: load, validate, fetch, tokenize, score wave by wave, report.
//!
//! Every task of the job is tokenized up front and its requests are scheduled together: a wave
//! holds requests of any task, so the whole suite costs one pass over the weights per wave.
//! Everything that can be wrong with the job (spec, tasks, data rows, model) is checked before
//! the output folder is touched, so a bad job leaves nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use airllm_engine::ModelSpec;
use airllm_engine::backend::{BackendTask, DEFAULT_BACKEND_NAME, with_backend};
use airllm_engine::executor::{Engine, EngineOptions};
use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use clap::Args;
use sha2::{Digest, Sha256};

use crate::fetch::{self, ModelRef};
use crate::job::{Job, Overrides};
use crate::outputs::{Finished, OutputDir};
use crate::progress::Progress;
use crate::report::{self, Scores};
use crate::schedule::{self, Sequence};
use crate::task::{self, Doc, Request, Response, Task, Windowing, registry};

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
        Overrides { output: self.out.clone(), no_resume: self.no_resume, ..self.selection.overrides() }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let mut job = Job::load(&args.job)?;
    job.apply(&args.overrides()).with_context(|| format!("{}: command line", job.path.display()))?;
    let tasks = registry::load(&job)?;
    let store = prepare_model(&job)?;
    let hash = job.spec.hash(&tasks_digest(&tasks), &airllm_engine::store::Manifest::read(&store)?);
    let backend = &job.spec.backend;
    let execute = Execute { job: &job, tasks: &tasks, hash: &hash, store: &store, started };
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
        let requests = build_requests(self.tasks, engine.tokenizer(), engine.spec())?;
        let sequences = schedule::sequences(&requests, engine.spec().max_position_embeddings);
        let waves = schedule::waves(engine.spec(), &sequences, spec.memory.activation_budget.0);
        let docs: usize = self.tasks.iter().map(|t| t.docs.len()).sum();
        tracing::info!(
            docs,
            requests = requests.len(),
            sequences = sequences.len(),
            waves = waves.len(),
            "job {}: {} tasks",
            self.hash,
            self.tasks.len()
        );
        let (mut out, done) = OutputDir::open(&spec.output, self.hash, &serde_json::to_value(spec)?, spec.resume)?;
        let mut state = RunState::new(self.tasks, &requests, done)?;
        let compute = Instant::now();
        run_waves(&mut engine, self.tasks, &sequences, &waves, &mut state, &mut out)?;
        let compute_s = compute.elapsed().as_secs_f64();

        let counts = Counts { requests: requests.len(), sequences: sequences.len(), waves: waves.len() };
        let resumed = state.resumed;
        let report = report::build(self.tasks, &state.into_scores(self.tasks), self.identity(&engine));
        out.write_report(&report)?;
        out.write_run_record(&self.run_record(&engine, &counts, docs, resumed, compute_s))?;
        report::print_table(&report.summary);
        println!("results in {}", out.dir().display());
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
    /// What results.json says of the model and the job: everything that identifies the numbers.
    fn identity<B: Backend>(&self, engine: &Engine<B>) -> serde_json::Value {
        let spec = &self.job.spec;
        serde_json::json!({
            "model": "airllm-eval",
            "model_args": spec.model.source,
            "model_sha256": spec.model.sha256,
            "store_compression": spec.model.compress,
            "family": engine.spec().family.name(),
            "backend": backend_label(&spec.backend.name),
            "precision": spec.backend.precision,
            "job_hash": self.hash,
            "airllm_eval_version": env!("CARGO_PKG_VERSION"),
            "reference": "lm-evaluation-harness 0.4.13 task definitions",
        })
    }

    fn run_record<B: Backend>(
        &self,
        engine: &Engine<B>,
        counts: &Counts,
        docs: usize,
        resumed: usize,
        compute_s: f64,
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
            "tasks": self.tasks.iter().map(|t| &t.name).collect::<Vec<_>>(),
            "backend": backend_label(&spec.backend.name),
            "activation_budget_bytes": spec.memory.activation_budget.0,
            "docs": docs,
            "docs_resumed": resumed,
            "requests": counts.requests,
            "sequences": counts.sequences,
            "waves_planned": counts.waves,
            "waves_run": stats.waves,
            "tokens": stats.tokens,
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
        let results = vec![None; docs.len()];
        let mut state = Self { docs, names, owners, parts, tokens, remaining, results, resumed: 0 };
        state.resume(tasks, done)?;
        Ok(state)
    }

    fn resume(&mut self, tasks: &[Task], done: Vec<Finished>) -> Result<()> {
        let index: HashMap<(&str, usize), usize> =
            self.names.iter().enumerate().map(|(i, (name, row))| ((name.as_str(), *row), i)).collect();
        for finished in done {
            let Some(&doc) = index.get(&(finished.task.as_str(), finished.doc)) else {
                bail!("journal document {} {} is not part of this job", finished.task, finished.doc);
            };
            let (t, d) = self.docs[doc];
            let expected = match &tasks[t].docs[d].doc {
                Doc::Choice(c) => c.choices.len(),
                Doc::Rolling(_) => 1,
            };
            if finished.responses.len() != expected {
                bail!(
                    "journal document {} {} has {} responses, expected {expected}",
                    finished.task,
                    finished.doc,
                    finished.responses.len()
                );
            }
            self.remaining[doc] = 0;
            self.results[doc] = Some(finished.responses);
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
            Doc::Choice(_) => parts.collect(),
            Doc::Rolling(_) => vec![schedule::combine(parts)],
        };
        self.results[doc] = Some(responses.clone());
        Finished { task: self.names[doc].0.clone(), doc: self.names[doc].1, responses }
    }

    fn done(&self) -> usize {
        self.results.iter().filter(|r| r.is_some()).count()
    }

    fn into_scores(self, tasks: &[Task]) -> Scores {
        let mut responses: Vec<Vec<Vec<Response>>> = tasks.iter().map(|t| Vec::with_capacity(t.docs.len())).collect();
        let mut tokens: Vec<Vec<usize>> = tasks.iter().map(|t| Vec::with_capacity(t.docs.len())).collect();
        for ((result, (t, _)), n) in self.results.into_iter().zip(self.docs).zip(self.tokens) {
            responses[t].push(result.expect("every document scored"));
            tokens[t].push(n);
        }
        Scores { responses, tokens }
    }
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
