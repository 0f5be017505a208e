//! Command-line parsing: `airllm-eval <JOB.yaml>` is short for `airllm-eval run <JOB.yaml>`.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "airllm-eval",
    version,
    about = "Layer-major batch evaluation of LLMs on small machines",
    after_help = "`airllm-eval JOB.yaml` is short for `airllm-eval run JOB.yaml`.\n\n\
                  Environment:\n  \
                  AIRLLM_CACHE     fetched models and layer stores (default ~/.cache/airllm-eval)\n  \
                  AIRLLM_DATASETS  the built-in tasks' data (default: the project's datasets/)\n  \
                  RUST_LOG         log detail, e.g. RUST_LOG=debug (default: info for airllm-eval)\n  \
                  SLURM_ARRAY_TASK_ID/_MIN/_COUNT, JOB_COMPLETION_INDEX with AIRLLM_SHARDS: the shard `run` scores"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job spec (YAML): fetch the model, split it into a layer store, score, write results.
    Run(commands::run::RunArgs),
    /// Split a model source into a layer store.
    Split(commands::split::SplitArgs),
    /// Write the logits of one prompt at every position to a safetensors file.
    Logits(commands::logits::LogitsArgs),
    /// Score a job's requests resident, per-prompt streamed and layer-major; print a table.
    Bench(commands::bench::BenchArgs),
    /// Write a Llama-shaped model with random weights straight to a layer store.
    Synth(commands::synth::SynthArgs),
    /// Generate text greedily from a prompt or a file of prompts (layer-major, with a KV cache).
    Generate(commands::generate::GenerateArgs),
    /// Join the shard folders of a sharded job into the files a single run writes.
    Merge(commands::merge::MergeArgs),
    /// Per-task metric deltas between two finished runs, with paired standard errors.
    Diff(commands::diff::DiffArgs),
}

/// Parses the command line, inserting `run` when the first argument is a job file.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Cli {
    Cli::parse_from(with_implicit_run(args.into_iter().collect()))
}

fn with_implicit_run(mut args: Vec<OsString>) -> Vec<OsString> {
    let is_job = args.get(1).and_then(|a| a.to_str()).is_some_and(|a| {
        let lower = a.to_ascii_lowercase();
        lower.ends_with(".yaml") || lower.ends_with(".yml")
    });
    if is_job {
        args.insert(1, "run".into());
    }
    args
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Split(args) => commands::split::run(args),
        Command::Logits(args) => commands::logits::run(args),
        Command::Synth(args) => commands::synth::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Diff(args) => commands::diff::run(args),
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: info for our crates, warnings otherwise).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,airllm_eval=info,airllm_engine=info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_job_file_alone_means_run() {
        assert_eq!(with_implicit_run(words(&["x", "jobs/a.yml"])), words(&["x", "run", "jobs/a.yml"]));
        assert_eq!(with_implicit_run(words(&["x", "run", "a.yaml"])), words(&["x", "run", "a.yaml"]));
        assert_eq!(with_implicit_run(words(&["x", "split", "m"])), words(&["x", "split", "m"]));
    }
}
