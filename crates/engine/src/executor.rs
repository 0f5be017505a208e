//! The layer-major executor: a wave of sequences goes through layer N before layer N+1 is read.
//!
//! For each wave: embed every sequence (right-padded micro-batches sorted by length), then for each
//! layer take it from the [`Prefetcher`], move it to the device, run every micro-batch through it
//! and drop it; the last layer's output projection and MLP, and the head, run only on the rows
//! that are asked for. The store is read once per wave, so disk traffic is (store size x waves)
//! however many sequences a wave holds.

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;

mod generate;
pub mod prefix;

pub use generate::{GenerationStats, kv_bytes_per_token};

use crate::backend::DefaultBackend;
use crate::error::{EngineError, Result};
use crate::model::kv_cache::{KvDtype, SequenceKv};
use crate::model::{Compute, DEVICE_TENSOR_BYTES, DecoderLayer, Head, KernelLevel, Positions, Precision, Sequences};
use crate::spec::ModelSpec;
use crate::store::prefetch::Prepare;
use crate::store::{EMBED, LayerHost, LayerStore, Prefetcher};

/// The log-probability of `token` following `tokens[..=position]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreTarget {
    pub position: usize,
    pub token: u32,
}

/// What the model says of one [`ScoreTarget`]: its log-probability, and whether it is the most
/// likely token there (the first maximum, as an argmax picks it: lm-eval's `is_greedy`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetScore {
    pub logprob: f32,
    pub greedy: bool,
}

/// One sequence of a wave: its tokens and the targets to score in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRequest {
    pub tokens: Vec<u32>,
    pub targets: Vec<ScoreTarget>,
}

/// Receives progress as a wave moves through the layers.
pub trait WaveObserver {
    /// `layer` (1-based count) of `total` has run for every sequence of the wave.
    fn layer_done(&self, _layer: usize, _total: usize) {}
}

/// An observer that ignores progress.
pub struct Quiet;
impl WaveObserver for Quiet {}

/// Counters of one engine's work so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Bytes read from the layer store (every file read counts, head and embed included).
    pub store_bytes_read: u64,
    /// Tokens of the sequences scored (padding excluded), as if each ran whole.
    pub tokens: u64,
    /// Of those, tokens not run again because a shared prefix had run them ([`prefix`]).
    pub shared_prefix_tokens: u64,
    pub waves: u64,
    /// Layer weights handed to the device (in their stored form where the backend holds it, else
    /// f32; host backends copy or pack f32), and how many layer loads that was: their ratio is the
    /// host-to-device traffic per layer.
    pub layer_bytes_to_device: u64,
    pub layer_loads: u64,
}

/// Knobs of an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Layers read ahead by the prefetch thread (0: read on the compute thread).
    pub prefetch_depth: usize,
    /// Most tokens (padding included) in one micro-batch.
    pub micro_batch_tokens: usize,
    /// Keep every layer on the device after its first read instead of streaming it again for
    /// each wave: the "model fits in memory" baseline of the benchmark.
    pub resident: bool,
    /// Input precision of the layer matmuls.
    pub precision: Precision,
    /// The level of our host kernels (packed matmul, tiled attention, SIMD of the element-wise
    /// loops), which run where the backend and CPU allow. `None`: the CPU's widest, capped by
    /// `AIRLLM_HOST_KERNELS` (`avx512`, `avx2`, `off`); `Some(level)`: that level, lowered to
    /// what the CPU runs, whatever the environment says. [`KernelLevel::Off`] is burn's ops: the
    /// reference path the bench and tests compare against.
    pub kernels: Option<KernelLevel>,
    /// How generation's KV cache stores keys and values.
    pub kv_dtype: KvDtype,
    /// Run the prefix that sequences of a wave share once ([`prefix`]; host backends).
    pub share_prefixes: bool,
    /// Most bytes of a wave's hidden states kept on a device backend's device between layers;
    /// past it they wait in host memory and go to the device a micro-batch at a time. `None`:
    /// no limit.
    pub device_budget: Option<u64>,
    /// Read the first wave's embedding table on a thread of its own from the moment the engine
    /// opens, while the tokenizer loads and the caller tokenizes (the `run` command). Off where a
    /// wave's timing and bytes read must include that read (the benchmark).
    pub read_embedding_ahead: bool,
}

impl EngineOptions {
    fn compute(&self) -> Compute {
        let kernels = self.kernels.map_or_else(KernelLevel::process, KernelLevel::capped);
        Compute { precision: self.precision, kernels }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            prefetch_depth: 1,
            micro_batch_tokens: 1024,
            resident: false,
            precision: Precision::F32,
            kernels: None,
            kv_dtype: KvDtype::F32,
            share_prefixes: true,
            device_budget: None,
            read_embedding_ahead: false,
        }
    }
}

/// What the head hands back for each asked-for row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOutput {
    Logits,
    LogProbs,
}

pub struct Engine<B: Backend = DefaultBackend> {
    store: Arc<LayerStore>,
    /// The tokenizer, or why there is none.
    tokenizer: std::result::Result<tokenizers::Tokenizer, String>,
    device: B::Device,
    options: EngineOptions,
    /// Layers, embedding table and head kept when `options.resident` is set.
    resident_layers: Vec<DecoderLayer<B>>,
    resident_embed: Option<Arc<Vec<f32>>>,
    /// The first wave's embedding table, being read ([`EngineOptions::read_embedding_ahead`]).
    early_embed: Option<std::thread::JoinHandle<Result<Vec<f32>>>>,
    resident_head: Option<Head<B>>,
    tokens: u64,
    shared_prefix_tokens: u64,
    waves: u64,
    layer_bytes_to_device: u64,
    layer_loads: u64,
}

/// A generation's prefill: the wave's sequences, and each layer's caches their keys and values go
/// to (`caches[layer][sequence]`).
pub(crate) struct Prefill<'a> {
    pub caches: &'a mut [Vec<SequenceKv>],
}

/// Sequences of a wave that run together, padded to the longest.
struct MicroBatch<B: Backend> {
    requests: Vec<usize>,
    /// Each request's true length (at most the batch's padded length).
    lengths: Vec<usize>,
    /// `[batch, seq, hidden]`; after the last layer, `[1, scored rows, hidden]`.
    hidden: Option<Hidden<B>>,
    /// Flat indices (into `batch x seq`) of the rows whose head output is wanted: each row once,
    /// in order of sequence and position.
    scored: Vec<i64>,
    /// For each scored row, the asked-for rows it answers: several where a sequence asks for one
    /// position more than once (MMLU's four answers after one question), or where the members of
    /// a shared prefix ask for a row inside it (HellaSwag's endings, after one context).
    owners: Vec<Vec<RowOwner>>,
    /// The shared prefix each sequence continues (its rows start after it), if any.
    past: Vec<Option<usize>>,
    /// Whether the batch holds shared prefixes (`requests` are prefix ids), run for their keys
    /// and values only.
    is_prefix: bool,
}

/// An asked-for row: (sequence of the wave, index into that sequence's asked-for rows).
type RowOwner = (usize, usize);

/// A sequence's asked-for rows as (position in what the micro-batch runs of it, owner).
type WantedRows = Vec<(usize, RowOwner)>;

/// A layer from the prefetch thread. On host backends it was built there (packed, converted), so
/// that work overlaps the compute of the layer before. On device backends it comes as read and
/// moves to the device on the compute thread: an upload from the prefetch thread runs on another
/// stream, and on wgpu it raced the compute stream's memory (weights freed with their layer
/// were reused by the next upload while kernels still read them: wrong logits from the second
/// wave on).
enum Fetched<B: Backend> {
    Built(Box<DecoderLayer<B>>),
    Read(LayerHost),
}

/// Where a micro-batch's hidden states wait between layers: on the device, or, when the wave's
/// would pass [`EngineOptions::device_budget`], in host memory, going to the device for one
/// layer's run at a time.
enum Hidden<B: Backend> {
    Device(Tensor<B, 3>),
    Host(TensorData),
}

impl<B: Backend> MicroBatch<B> {
    /// The hidden states, on `device`.
    fn take_hidden(&mut self, device: &B::Device) -> Tensor<B, 3> {
        match self.hidden.take().expect("hidden state present") {
            Hidden::Device(tensor) => tensor,
            Hidden::Host(data) => Tensor::from_data(data, device),
        }
    }

    /// Keeps `hidden` until the next layer: in host memory when `on_host`.
    fn put_hidden(&mut self, hidden: Tensor<B, 3>, on_host: bool) {
        self.hidden = Some(if on_host { Hidden::Host(hidden.into_data()) } else { Hidden::Device(hidden) });
    }
}

impl Engine<DefaultBackend> {
    /// Opens a layer store on the default backend's default device.
    pub fn open(store: &Path, options: EngineOptions) -> Result<Self> {
        Self::open_on(store, options, Default::default())
    }
}

impl<B: Backend> Engine<B> {
    pub fn open_on(store: &Path, mut options: EngineOptions, device: B::Device) -> Result<Self> {
        // The level is settled once: an unknown AIRLLM_HOST_KERNELS is an error here.
        let kernels = match options.kernels {
            Some(level) => level.capped(),
            None => KernelLevel::from_env().map_err(EngineError::Other)?,
        };
        options.kernels = Some(kernels);
        tracing::debug!(kernels = kernels.name(), "host kernel level");
        // bf16 runs in the packed kernel, or as burn's bf16 matmul where the backend has one.
        let compute = options.compute();
        if options.precision == Precision::Bf16 && !compute.packed::<B>() && !compute.bf16_ops::<B>(&device) {
            return Err(EngineError::Other(format!(
                "precision bf16: this device has no bf16 arithmetic, and the packed host kernel needs \
                 the cpu backend on a CPU with AVX512-BF16 (host kernel level here: {kernels}); use f32 here"
            )));
        }
        let store = Arc::new(LayerStore::open(store)?);
        let early_embed = options.read_embedding_ahead.then(|| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || read_embed_table(&store))
        });
        let tokenizer = match store.tokenizer() {
            Ok(tokenizer) => Ok(tokenizer),
            Err(EngineError::NoTokenizer { reason, .. }) => Err(reason),
            Err(e) => return Err(e),
        };
        Ok(Self {
            store,
            tokenizer,
            device,
            options,
            resident_layers: Vec::new(),
            resident_embed: None,
            early_embed,
            resident_head: None,
            tokens: 0,
            shared_prefix_tokens: 0,
            waves: 0,
            layer_bytes_to_device: 0,
            layer_loads: 0,
        })
    }

    /// The host kernel level the layers compute at (settled when the engine opened).
    pub fn kernels(&self) -> KernelLevel {
        self.options.compute().kernels
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.store.manifest().spec
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// From now on, keep every layer in memory after its next read (`true`), or stream them
    /// again for every wave and drop the ones kept (`false`).
    pub fn set_resident(&mut self, resident: bool) {
        self.options.resident = resident;
        if !resident {
            self.resident_layers.clear();
            self.resident_embed = None;
            self.resident_head = None;
        }
    }

    /// The model's tokenizer; [`EngineError::NoTokenizer`] where the store has none (token ids
    /// can still be scored).
    pub fn tokenizer(&self) -> Result<&tokenizers::Tokenizer> {
        self.tokenizer.as_ref().map_err(|reason| EngineError::NoTokenizer {
            model: self.store.dir().display().to_string(),
            reason: reason.clone(),
        })
    }

    /// Total bytes of the store's files.
    pub fn store_size(&self) -> u64 {
        self.store.manifest().total_size()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            store_bytes_read: self.store.bytes_read(),
            tokens: self.tokens,
            shared_prefix_tokens: self.shared_prefix_tokens,
            waves: self.waves,
            layer_bytes_to_device: self.layer_bytes_to_device,
            layer_loads: self.layer_loads,
        }
    }

    /// Runs one wave. Returns, for each request, the scores of its targets in order. Only the
    /// scores leave the device, not the head's rows.
    pub fn score_wave(
        &mut self,
        requests: &[ScoreRequest],
        observer: &dyn WaveObserver,
    ) -> Result<Vec<Vec<TargetScore>>> {
        check_targets(requests, self.spec().vocab_size)?;
        let sequences: Vec<&[u32]> = requests.iter().map(|r| r.tokens.as_slice()).collect();
        let rows: Vec<Vec<usize>> = requests.iter().map(|r| r.targets.iter().map(|t| t.position).collect()).collect();
        let (batches, head) = self.forward_wave(&sequences, &rows, observer)?;
        let mut scores: Vec<Vec<Option<TargetScore>>> = requests.iter().map(|r| vec![None; r.targets.len()]).collect();
        let chunk_rows = scoring_chunk_rows(&head, self.spec().vocab_size);
        self.for_each_head_chunk(batches, chunk_rows, &mut |chunk, owners| {
            let targets: Vec<(usize, u32)> = (owners.iter().enumerate())
                .flat_map(|(row, owners)| owners.iter().map(move |&(r, j)| (row, requests[r].targets[j].token)))
                .collect();
            let (picked, best) = head.score(chunk, &targets);
            let (picked, best) = (read_floats(picked)?, read_ints(best)?);
            for ((&(r, j), &(row, token)), logprob) in owners.iter().flatten().zip(&targets).zip(picked) {
                scores[r][j] = Some(TargetScore { logprob, greedy: best[row] == token as i64 });
            }
            Ok(())
        })?;
        let scores: Vec<Vec<TargetScore>> = (scores.into_iter())
            .map(|scores| scores.into_iter().collect::<Option<_>>())
            .collect::<Option<_>>()
            .ok_or_else(|| EngineError::Other("a target of the wave was left unscored".into()))?;
        check_scores(requests, &scores)?;
        Ok(scores)
    }

    /// Logits `[len, vocab]` (row-major) at every position of one sequence.
    pub fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let rows = vec![(0..tokens.len()).collect()];
        let mut out = Vec::with_capacity(tokens.len() * self.spec().vocab_size);
        self.run_wave(&[tokens], &rows, HeadOutput::Logits, &crate::executor::Quiet, &mut |_, _, values| {
            out.extend_from_slice(values)
        })?;
        Ok(out)
    }

    /// The core loop. `rows[i]` lists the positions of sequence `i` whose head output is wanted;
    /// `sink(i, j, values)` receives the `vocab` values of `rows[i][j]`, for each `i` in order of
    /// position (so in the order of `rows[i]` where it is sorted).
    pub fn run_wave(
        &mut self,
        sequences: &[&[u32]],
        rows: &[Vec<usize>],
        output: HeadOutput,
        observer: &dyn WaveObserver,
        sink: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let (batches, head) = self.forward_wave(sequences, rows, observer)?;
        self.apply_head(&head, batches, output, sink)
    }

    /// Embeds the wave and runs it through every layer: the micro-batches, each left holding the
    /// last layer's output at its asked-for rows, and the head to apply to them.
    fn forward_wave(
        &mut self,
        sequences: &[&[u32]],
        rows: &[Vec<usize>],
        observer: &dyn WaveObserver,
    ) -> Result<(Vec<MicroBatch<B>>, Head<B>)> {
        self.validate(sequences, rows)?;
        let spec = self.spec().clone();
        let table = self.embed_table()?;
        let mut batches = self.embed_sharing_prefixes(&table, sequences, rows);
        drop(table);
        let max_seq = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let positions = Positions::<B>::new(&spec, max_seq.max(1), &self.device);
        self.run_layers(&spec, &mut batches, &positions, observer, None)?;
        self.tokens += sequences.iter().map(|s| s.len() as u64).sum::<u64>();
        self.waves += 1;
        Ok((batches, self.head()?))
    }

    /// Every micro-batch through every layer, layer-major. The last layer computes only the
    /// rows the head reads, and of a shared prefix that holds none of them only its keys and
    /// values. With `keep` (the wave's sequences and each layer's caches, for a generation's
    /// prefill), every sequence's keys and values also go to its cache.
    fn run_layers(
        &mut self,
        spec: &ModelSpec,
        batches: &mut [MicroBatch<B>],
        positions: &Positions<B>,
        observer: &dyn WaveObserver,
        mut keep: Option<Prefill>,
    ) -> Result<()> {
        let device = self.device.clone();
        let on_host = self.hidden_on_host(batches);
        let prefix_count =
            batches.iter().filter(|b| b.is_prefix).flat_map(|b| b.requests.iter()).max().map_or(0, |&id| id + 1);
        self.for_each_layer(observer, &mut |layer, index| {
            // This layer's keys and values of the shared prefixes, kept while the layer runs.
            let mut prefix_kv = vec![SequenceKv::default(); prefix_count];
            for batch in batches.iter_mut().filter(|b| b.is_prefix) {
                let mut kv: Vec<SequenceKv> =
                    batch.requests.iter().map(|&p| std::mem::take(&mut prefix_kv[p])).collect();
                let hidden = batch.take_hidden(&device);
                let sequences = Sequences { lengths: &batch.lengths, keep: Some(&mut kv), past: None };
                if index + 1 < spec.num_layers {
                    batch.put_hidden(layer.forward(hidden, positions, sequences), on_host);
                } else if batch.scored.is_empty() {
                    layer.keep_kv(hidden, positions, &batch.lengths, &mut kv);
                } else {
                    let rows = scored_rows(&batch.scored, &device);
                    batch.put_hidden(layer.forward_rows(hidden, positions, rows, sequences), on_host);
                }
                for (&p, kv) in batch.requests.iter().zip(kv) {
                    prefix_kv[p] = kv;
                }
            }
            for batch in batches.iter_mut().filter(|b| !b.is_prefix && !b.scored.is_empty()) {
                // This micro-batch's caches, taken out of the layer's list for the call.
                let mut taken: Option<Vec<SequenceKv>> = keep.as_mut().map(|Prefill { caches, .. }| {
                    batch.requests.iter().map(|&r| std::mem::take(&mut caches[index][r])).collect()
                });
                let past: Vec<Option<&SequenceKv>> = batch.past.iter().map(|p| p.map(|p| &prefix_kv[p])).collect();
                let past = batch.past.iter().any(Option::is_some).then_some(past.as_slice());
                let hidden = batch.take_hidden(&device);
                let sequences = Sequences { lengths: &batch.lengths, keep: taken.as_deref_mut(), past };
                let hidden = if index + 1 < spec.num_layers {
                    layer.forward(hidden, positions, sequences)
                } else {
                    layer.forward_rows(hidden, positions, scored_rows(&batch.scored, &device), sequences)
                };
                batch.put_hidden(hidden, on_host);
                if let (Some(Prefill { caches, .. }), Some(kv)) = (keep.as_mut(), taken) {
                    for (&r, kv) in batch.requests.iter().zip(kv) {
                        caches[index][r] = kv;
                    }
                }
            }
            Ok(())
        })
    }

    /// Calls `run(layer, index)` for every layer in order: from the resident layers when they are
    /// loaded, else streamed through the prefetcher (and kept, when resident). One call reads the
    /// store once.
    pub(crate) fn for_each_layer(
        &mut self,
        observer: &dyn WaveObserver,
        run: &mut dyn FnMut(&DecoderLayer<B>, usize) -> Result<()>,
    ) -> Result<()> {
        let layers = self.spec().num_layers;
        if !self.resident_layers.is_empty() {
            for (index, layer) in self.resident_layers.iter().enumerate() {
                run(layer, index)?;
                observer.layer_done(index + 1, layers);
            }
            return Ok(());
        }
        let (spec, compute, device) = (self.spec().clone(), self.options.compute(), self.device.clone());
        let build: Prepare<Fetched<B>> = Arc::new(move |host| match crate::model::on_host::<B>() {
            true => Ok(Fetched::Built(Box::new(DecoderLayer::<B>::from_host(&spec, host, compute, &device)?))),
            false => Ok(Fetched::Read(host)),
        });
        let mut prefetcher = Prefetcher::start(Arc::clone(&self.store), self.options.prefetch_depth, build);
        for index in 0..layers {
            let layer = match prefetcher.next_layer()? {
                Fetched::Built(layer) => *layer,
                Fetched::Read(host) => {
                    DecoderLayer::<B>::from_host(self.spec(), host, self.options.compute(), &self.device)?
                }
            };
            self.layer_bytes_to_device += layer.uploaded_bytes();
            self.layer_loads += 1;
            run(&layer, index)?;
            tracing::trace!(layer = index, "layer done");
            observer.layer_done(index + 1, layers);
            if self.options.resident {
                self.resident_layers.push(layer);
            }
        }
        Ok(())
    }

    /// Whether the wave's hidden states wait in host memory between layers: on a device backend,
    /// when they pass [`EngineOptions::device_budget`].
    fn hidden_on_host(&self, batches: &[MicroBatch<B>]) -> bool {
        let bytes: usize = batches
            .iter()
            .map(|b| match &b.hidden {
                Some(Hidden::Device(t)) => t.shape().num_elements() * 4,
                Some(Hidden::Host(data)) => data.num_elements() * 4,
                None => 0,
            })
            .sum();
        let budget = self.options.device_budget;
        !crate::model::on_host::<B>() && budget.is_some_and(|budget| bytes as u64 > budget)
    }

    fn validate(&self, sequences: &[&[u32]], rows: &[Vec<usize>]) -> Result<()> {
        let vocab = self.spec().vocab_size;
        for (i, (tokens, wanted)) in sequences.iter().zip(rows).enumerate() {
            if tokens.is_empty() {
                return Err(EngineError::Other(format!("sequence {i} is empty")));
            }
            if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(EngineError::Other(format!(
                    "sequence {i}: token id {bad} is outside the vocabulary ({vocab})"
                )));
            }
            if let Some(bad) = wanted.iter().find(|&&p| p >= tokens.len()) {
                return Err(EngineError::Other(format!(
                    "sequence {i}: position {bad} is past its end ({})",
                    tokens.len()
                )));
            }
        }
        Ok(())
    }

    /// Groups sequences, longest first, into micro-batches of at most `micro_batch_tokens` padded
    /// tokens (a longer sequence runs alone). Where burn's matmuls run, padding costs what real
    /// rows cost, so a batch already [`BIG_ENOUGH_BATCH`] tokens long takes no sequence shorter
    /// than 95% of its longest (the short suffixes of shared prefixes, HellaSwag's endings, had
    /// been padded by 14%). The packed matmul skips padding rows ([`TokenRows`]): there fewer,
    /// fuller batches run faster (HellaSwag 1% in an A/B).
    ///
    /// [`TokenRows`]: crate::model::TokenRows
    fn plan_micro_batches(&self, sequences: &[&[u32]]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sequences[i].len()));
        let padding_is_free = self.options.compute().packed::<B>();
        let joins = |batch: &[usize], len: usize| {
            // Sorted longest first, so the batch's first sequence sets its padded length.
            let longest = sequences[batch[0]].len();
            let fits = (batch.len() + 1) * longest <= self.options.micro_batch_tokens;
            let padding_pays = padding_is_free || 20 * len >= 19 * longest;
            fits && (padding_pays || batch.len() * longest < BIG_ENOUGH_BATCH)
        };
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for i in order {
            match batches.last_mut() {
                Some(batch) if joins(batch, sequences[i].len()) => batch.push(i),
                _ => batches.push(vec![i]),
            }
        }
        batches
    }

    /// The wave's micro-batches: with [`EngineOptions::share_prefixes`] on a host backend, the
    /// shared prefixes first, then every sequence's tokens after its prefix (see [`prefix`],
    /// [`Self::embed_with_prefixes`]); else every sequence whole.
    fn embed_sharing_prefixes(
        &mut self,
        table: &[f32],
        sequences: &[&[u32]],
        rows: &[Vec<usize>],
    ) -> Vec<MicroBatch<B>> {
        // A prefix's keys must be those each member would compute: not so where the angles
        // depend on the whole sequence's length.
        let rescaled = sequences.iter().any(|s| self.spec().rope_rescales_at(s.len()));
        let plan = if self.options.share_prefixes && crate::model::on_host::<B>() && !rescaled {
            let plan = prefix::plan(sequences);
            let run: usize = plan.prefixes.iter().map(|p| p.1).sum();
            let skipped: usize = (0..sequences.len()).map(|i| plan.offset(i)).sum();
            self.shared_prefix_tokens += (skipped - run) as u64;
            plan
        } else {
            prefix::PrefixPlan::unshared(sequences.len())
        };
        self.embed_with_prefixes(table, sequences, rows, &plan)
    }

    /// The prefixes' micro-batches (none where `plan` has none), then every sequence's tokens
    /// after its prefix. An asked-for row inside a prefix is computed once, in the prefix, for
    /// every member that asks for it.
    fn embed_with_prefixes(
        &self,
        table: &[f32],
        sequences: &[&[u32]],
        rows: &[Vec<usize>],
        plan: &prefix::PrefixPlan,
    ) -> Vec<MicroBatch<B>> {
        let mut in_prefix: Vec<WantedRows> = vec![Vec::new(); plan.prefixes.len()];
        let mut after_prefix: Vec<WantedRows> = vec![Vec::new(); sequences.len()];
        for (i, rows) in rows.iter().enumerate() {
            let offset = plan.offset(i);
            for (j, &position) in rows.iter().enumerate() {
                match plan.of[i] {
                    Some(prefix) if position < offset => in_prefix[prefix].push((position, (i, j))),
                    _ => after_prefix[i].push((position - offset, (i, j))),
                }
            }
        }
        let prefixes: Vec<&[u32]> = plan.prefixes.iter().map(|&(member, len)| &sequences[member][..len]).collect();
        let mut batches = self.embed(table, &prefixes, &in_prefix, &self.plan_micro_batches(&prefixes));
        batches.iter_mut().for_each(|batch| batch.is_prefix = true);
        let suffixes: Vec<&[u32]> = sequences.iter().enumerate().map(|(i, s)| &s[plan.offset(i)..]).collect();
        let mut continued = self.embed(table, &suffixes, &after_prefix, &self.plan_micro_batches(&suffixes));
        for batch in &mut continued {
            batch.past = batch.requests.iter().map(|&r| plan.of[r]).collect();
        }
        batches.extend(continued);
        batches
    }

    /// Looks up each micro-batch's token embeddings (zero rows for padding).
    fn embed_table(&mut self) -> Result<Arc<Vec<f32>>> {
        if let Some(table) = &self.resident_embed {
            return Ok(Arc::clone(table));
        }
        let table = match self.early_embed.take() {
            Some(reading) => reading
                .join()
                .map_err(|_| EngineError::Other("the thread reading the embedding table panicked".into()))??,
            None => read_embed_table(&self.store)?,
        };
        let table = Arc::new(table);
        if self.options.resident {
            self.resident_embed = Some(Arc::clone(&table));
        }
        Ok(table)
    }

    fn head(&mut self) -> Result<Head<B>> {
        if let Some(head) = &self.resident_head {
            return Ok(head.clone());
        }
        let head = Head::<B>::load(&self.store, &self.device, self.options.compute().kernels)?;
        if self.options.resident {
            self.resident_head = Some(head.clone());
        }
        Ok(head)
    }

    /// The micro-batches of `plan` (indices into `sequences`), each sequence asking for the head
    /// rows `wanted` lists.
    fn embed(
        &self,
        table: &[f32],
        sequences: &[&[u32]],
        wanted: &[WantedRows],
        plan: &[Vec<usize>],
    ) -> Vec<MicroBatch<B>> {
        let hidden = self.spec().hidden_size;
        plan.iter()
            .map(|requests| {
                let seq = sequences[requests[0]].len();
                let mut values = vec![0f32; requests.len() * seq * hidden];
                for (slot, &request) in requests.iter().enumerate() {
                    for (pos, &token) in sequences[request].iter().enumerate() {
                        let row = &table[token as usize * hidden..(token as usize + 1) * hidden];
                        let at = (slot * seq + pos) * hidden;
                        values[at..at + hidden].copy_from_slice(row);
                    }
                }
                let tensor = Hidden::Host(TensorData::new(values, [requests.len(), seq, hidden]));
                let (scored, owners) = distinct_rows(requests.iter().map(|&r| &wanted[r]), seq);
                let lengths = requests.iter().map(|&r| sequences[r].len()).collect();
                let past = vec![None; requests.len()];
                let hidden = Some(tensor);
                MicroBatch { requests: requests.clone(), lengths, hidden, scored, owners, past, is_prefix: false }
            })
            .collect()
    }

    /// Runs the head on the asked-for rows of the micro-batches and hands them to `sink`.
    fn apply_head(
        &self,
        head: &Head<B>,
        batches: Vec<MicroBatch<B>>,
        output: HeadOutput,
        sink: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let vocab = self.spec().vocab_size;
        self.for_each_head_chunk(batches, head_chunk_rows::<B>(vocab), &mut |chunk, owners| {
            let values = read_floats(match output {
                HeadOutput::Logits => head.logits(chunk),
                HeadOutput::LogProbs => head.log_probs(chunk),
            })?;
            for (values, owners) in values.chunks_exact(vocab).zip(owners) {
                owners.iter().for_each(|&(sequence, row)| sink(sequence, row, values));
            }
            Ok(())
        })
    }

    /// Hands the last layer's output at the micro-batches' asked-for rows to `each(chunk,
    /// owners)` `chunk_rows` rows at a time (`chunk` `[rows, hidden]`, `owners` the
    /// (sequence, index into its rows) that each row answers), in micro-batch order. Rows of
    /// consecutive micro-batches share a chunk: the head's weights are read once per chunk, and
    /// a wave scoring one row per sequence (MMLU) fills few chunks instead of one per
    /// micro-batch. A rolling window scores
    /// every position, and its `[rows, vocab]` head output (1.6 GB for 8192 rows of a 49k
    /// vocabulary) need never exist at once.
    fn for_each_head_chunk(
        &self,
        batches: Vec<MicroBatch<B>>,
        chunk_rows: usize,
        each: &mut HeadChunkFn<B>,
    ) -> Result<()> {
        let mut pending: Option<Tensor<B, 2>> = None;
        let mut owners: Vec<Vec<RowOwner>> = Vec::new();
        for mut batch in batches.into_iter().filter(|b| !b.scored.is_empty()) {
            // The last layer left only the scored rows, in order.
            let hidden = batch.take_hidden(&self.device);
            let [_, count, width] = hidden.dims();
            let hidden = hidden.reshape([count, width]);
            owners.append(&mut batch.owners);
            let mut ready = match pending.take() {
                Some(earlier) => Tensor::cat(vec![earlier, hidden], 0),
                None => hidden,
            };
            while ready.dims()[0] >= chunk_rows {
                let left = ready.dims()[0] - chunk_rows;
                each(ready.clone().slice([0..chunk_rows, 0..width]), &owners[..chunk_rows])?;
                owners.drain(..chunk_rows);
                if left == 0 {
                    break;
                }
                ready = ready.slice([chunk_rows..chunk_rows + left, 0..width]);
            }
            pending = (!owners.is_empty()).then_some(ready);
        }
        match pending {
            Some(rest) => each(rest, &owners),
            None => Ok(()),
        }
    }
}

/// The embedding table `[vocab, hidden]` as f32.
fn read_embed_table(store: &LayerStore) -> Result<Vec<f32>> {
    Ok(store.read_tensors(EMBED, &["embed"])?.pop().expect("one tensor asked").1)
}

/// What [`Engine::for_each_head_chunk`] calls with each chunk of rows and their owners.
type HeadChunkFn<'a, B> = dyn FnMut(Tensor<B, 2>, &[Vec<RowOwner>]) -> Result<()> + 'a;

/// A micro-batch's scored rows (flat indices into `batch x seq`, sequence by sequence, by
/// position) and what each answers: every row once, however many ask for it.
fn distinct_rows<'a>(slots: impl Iterator<Item = &'a WantedRows>, seq: usize) -> (Vec<i64>, Vec<Vec<RowOwner>>) {
    let (mut scored, mut owners): (Vec<i64>, Vec<Vec<RowOwner>>) = (Vec::new(), Vec::new());
    for (slot, wanted) in slots.enumerate() {
        let mut wanted = wanted.clone();
        // Stable: the owners of one position stay in the order they asked.
        wanted.sort_by_key(|&(position, _)| position);
        for (position, owner) in wanted {
            let row = (slot * seq + position) as i64;
            match owners.last_mut() {
                Some(last) if scored.last() == Some(&row) => last.push(owner),
                _ => {
                    scored.push(row);
                    owners.push(vec![owner]);
                }
            }
        }
    }
    (scored, owners)
}

/// The flat indices of a micro-batch's scored rows, as [`DecoderLayer::forward_rows`] takes them.
fn scored_rows<B: Backend>(scored: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(scored.to_vec(), [scored.len()]), device)
}

/// A device tensor's values, read back as f32.
pub(crate) fn read_floats<B: Backend, const D: usize>(values: Tensor<B, D>) -> Result<Vec<f32>> {
    values
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| EngineError::Other(format!("reading head output: {e:?}")))
}

/// A device tensor's integers, read back as i64.
pub(crate) fn read_ints<B: Backend, const D: usize>(values: Tensor<B, D, Int>) -> Result<Vec<i64>> {
    values
        .into_data()
        .convert::<i64>()
        .into_vec()
        .map_err(|e| EngineError::Other(format!("reading head output: {e:?}")))
}

/// Padded tokens past which a micro-batch's matmuls run near their best speed, so that a new
/// batch costs less than padding a much shorter sequence ([`Engine::plan_micro_batches`]).
const BIG_ENOUGH_BATCH: usize = 256;

/// Rows of head output computed at once: up to 256, enough for a fast matmul, and no more than
/// [`DEVICE_TENSOR_BYTES`] of `[rows, vocab]`, which a device binds at once (256 rows of SmolLM2's
/// 49k vocabulary, 110 of Qwen's 152k), or on host backends [`HOST_HEAD_CHUNK_BYTES`] (128 and
/// 41).
fn head_chunk_rows<B: Backend>(vocab: usize) -> usize {
    const ROWS: usize = 256;
    let bytes = if crate::model::on_host::<B>() { HOST_HEAD_CHUNK_BYTES } else { DEVICE_TENSOR_BYTES };
    (bytes / (vocab.max(1) * 4)).clamp(1, ROWS)
}

/// Rows of a head chunk where the logits are folded as they are computed
/// ([`Head::scores_without_logits`]): the head's weight is read from memory once a chunk, and
/// the chunk's per-row partial terms (a few MB) stay small.
const FOLDED_HEAD_CHUNK_ROWS: usize = 1024;

/// Rows of a head chunk for [`Head::score`] and [`Head::greedy`]: [`FOLDED_HEAD_CHUNK_ROWS`]
/// where no logits are written, else [`head_chunk_rows`].
pub(crate) fn scoring_chunk_rows<B: Backend>(head: &Head<B>, vocab: usize) -> usize {
    if head.scores_without_logits() { FOLDED_HEAD_CHUNK_ROWS } else { head_chunk_rows::<B>(vocab) }
}

/// The most bytes of logits a chunk of the head computes on host backends: they stay in the
/// last-level cache for the log-softmax pass that reads them next (chunks of 48 MiB, 256 rows of
/// SmolLM2's vocabulary, made HellaSwag 3% slower than chunks of 24 MiB).
const HOST_HEAD_CHUNK_BYTES: usize = 24 << 20;

/// Every target token must be in the vocabulary (the tokens the sequences hold are checked with
/// their positions when the wave is embedded).
fn check_targets(requests: &[ScoreRequest], vocab: usize) -> Result<()> {
    for (i, request) in requests.iter().enumerate() {
        if let Some(bad) = request.targets.iter().find(|t| t.token as usize >= vocab) {
            return Err(EngineError::Other(format!(
                "sequence {i}: target token id {} is outside the vocabulary ({vocab})",
                bad.token
            )));
        }
    }
    Ok(())
}

/// A NaN or +inf log-probability is never an answer but broken weights or numerics (a NaN weight,
/// an overflow): an error naming where it is, not a silently wrong score. -inf is what a model
/// says of a token it rules out, and is passed on.
fn check_scores(requests: &[ScoreRequest], scores: &[Vec<TargetScore>]) -> Result<()> {
    for (index, (request, scores)) in requests.iter().zip(scores).enumerate() {
        for (target, score) in request.targets.iter().zip(scores) {
            if score.logprob.is_nan() || score.logprob == f32::INFINITY {
                return Err(EngineError::Other(format!(
                    "sequence {index} of the wave: the log-probability of token {} after position {} is {}; \
                     the model's weights or numerics are broken (a NaN weight, an overflow)",
                    target.token, target.position, score.logprob
                )));
            }
        }
    }
    Ok(())
}

/// Splits requests (by index) into waves whose hidden states fit `activation_budget_bytes`.
/// Requests are taken in the given order; each wave holds at least one request.
pub fn plan_waves(spec: &ModelSpec, lengths: &[usize], activation_budget_bytes: u64) -> Vec<Vec<usize>> {
    let per_token = (spec.hidden_size * 4) as u64;
    let mut waves = vec![];
    let mut current = vec![];
    let mut used = 0u64;
    for (i, &len) in lengths.iter().enumerate() {
        let cost = len as u64 * per_token;
        if !current.is_empty() && used + cost > activation_budget_bytes {
            waves.push(std::mem::take(&mut current));
            used = 0;
        }
        current.push(i);
        used += cost;
    }
    if !current.is_empty() {
        waves.push(current);
    }
    waves
}
