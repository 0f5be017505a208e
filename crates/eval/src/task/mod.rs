//! Tasks: documents asked the way lm-evaluation-harness asks them, and scored by named metrics.
//!
//! Every task, built-in or defined in YAML, comes down to three shapes of document, which are
//! lm-eval's request types:
//! - [`Doc::Choice`]: a context and its choices, one `loglikelihood(context, delimiter + choice)`
//!   request per choice (lm-eval's `multiple_choice`);
//! - [`Doc::Rolling`]: a text scored whole, in rolling windows of the model's context length
//!   (lm-eval's `loglikelihood_rolling`);
//! - [`Doc::Generate`]: a context continued greedily until a stop sequence (`generate_until`).
//!
//! So the task files ([`mmlu`], [`arc`], [`hellaswag`], [`truthfulqa`], [`wikitext`], [`custom`])
//! only read their data and build prompts; tokenizing ([`requests`]), scheduling, journaling,
//! scoring ([`metrics`]) and output are one path for all of them. [`registry`] turns a job's
//! task list into [`Task`]s.

pub mod arc;
pub mod custom;
pub mod gsm8k;
pub mod hellaswag;
pub mod metrics;
pub mod mmlu;
pub mod registry;
pub mod template;
pub mod truthfulqa;
pub mod wikitext;

use std::path::PathBuf;

use anyhow::Result;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use metrics::Metric;

/// One document, ready to be asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    Choice(ChoiceDoc),
    Rolling(RollingDoc),
    Generate(GenerateDoc),
}

impl Doc {
    /// How many responses a finished document has: one per choice, one for a rolling text (all
    /// its windows), none for a generation (it has a completion instead).
    pub fn responses_expected(&self) -> usize {
        match self {
            Doc::Choice(c) => c.choices.len(),
            Doc::Rolling(_) => 1,
            Doc::Generate(_) => 0,
        }
    }
}

/// A multiple-choice document: lm-eval's `fewshot_context(doc)` and `doc_to_choice(doc)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceDoc {
    pub context: String,
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
    /// Which choices are true, where several are (truthfulqa_mc2); empty otherwise.
    pub labels: Vec<bool>,
}

/// A text scored whole: what lm-eval's `doc_to_target` gives a rolling task, and the size of the
/// original document its perplexities are normalised by.
#[derive(Debug, Clone, PartialEq)]
pub struct RollingDoc {
    pub text: String,
    pub words: usize,
    pub bytes: usize,
}

/// A context to continue greedily until a stop sequence (lm-eval's `generate_until`), and the
/// answer the completion is checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateDoc {
    pub context: String,
    /// The completion ends before the first of these.
    pub until: Vec<String>,
    pub max_gen_toks: usize,
    pub target: String,
}

/// A document and the row of its source file it came from (0-based, in file order).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub row: usize,
    pub doc: Doc,
}

/// A task with its documents loaded.
#[derive(Debug, Clone)]
pub struct Task {
    /// lm-eval's task name: `arc_easy`, `mmlu_anatomy`, or a custom task's name.
    pub name: String,
    /// lm-eval's `metadata.version` of the task (custom tasks: `custom`).
    pub version: String,
    pub num_fewshot: usize,
    /// Put between a context and each choice.
    pub target_delimiter: String,
    pub metrics: Vec<Metric>,
    /// Groups the task is scored in, outermost first (`mmlu`, `mmlu_stem`).
    pub groups: Vec<String>,
    /// Position of the job's task entry this task came from (an entry may expand to several).
    pub entry: usize,
    /// Rolling tasks: the window length (default: the model's context length).
    pub max_length: Option<usize>,
    /// The file (or folder) the documents were read from.
    pub source: PathBuf,
    /// Documents in the source before the limit was applied.
    pub available: usize,
    pub docs: Vec<Document>,
}

impl Task {
    /// A 0-shot task outside any group, choices after a space, windows of the model's length.
    pub fn new(name: &str, version: &str, metrics: Vec<Metric>, source: PathBuf, entry: usize) -> Self {
        Task {
            name: name.to_string(),
            version: version.to_string(),
            num_fewshot: 0,
            target_delimiter: " ".into(),
            metrics,
            groups: Vec::new(),
            entry,
            max_length: None,
            source,
            available: 0,
            docs: Vec::new(),
        }
    }

    /// The task with the first `limit` of the source's `available` documents, numbered by
    /// position; documents past the limit are not read.
    pub fn with_docs(
        self,
        available: usize,
        docs: impl Iterator<Item = Result<Doc>>,
        limit: Option<usize>,
    ) -> Result<Self> {
        let docs = docs.take(limit.unwrap_or(usize::MAX)).enumerate().map(|(row, doc)| Ok(Document { row, doc: doc? }));
        Ok(Task { available, docs: docs.collect::<Result<_>>()?, ..self })
    }

    /// Feeds everything that decides this task's requests and scores into `digest`: the job
    /// identity covers what is asked, not the files it came from.
    pub fn digest_into(&self, digest: &mut Sha256) {
        let header = serde_json::json!({
            "name": self.name, "version": self.version, "num_fewshot": self.num_fewshot,
            "delimiter": self.target_delimiter, "metrics": self.metrics, "groups": self.groups,
            "max_length": self.max_length,
        });
        digest.update(header.to_string().as_bytes());
        for document in &self.docs {
            let value = match &document.doc {
                Doc::Choice(c) => serde_json::json!([document.row, c.context, c.choices, c.gold, c.labels]),
                Doc::Rolling(r) => serde_json::json!([document.row, r.text, r.words, r.bytes]),
                Doc::Generate(g) => serde_json::json!([document.row, g.context, g.until, g.max_gen_toks, g.target]),
            };
            digest.update(value.to_string().as_bytes());
        }
    }
}

/// lm-eval's few-shot context: description, then each shot's text, the target delimiter, its
/// answer and the few-shot delimiter, then the document's own text.
pub fn fewshot_context(
    description: &str,
    shots: &[(String, String)],
    text: &str,
    target_delimiter: &str,
    fewshot_delimiter: &str,
) -> String {
    let mut context = description.to_string();
    for (shot_text, answer) in shots {
        context.push_str(shot_text);
        context.push_str(target_delimiter);
        context.push_str(answer);
        context.push_str(fewshot_delimiter);
    }
    context.push_str(text);
    context
}

/// A loglikelihood request in token ids: how likely is `continuation` after `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The document it belongs to: an index into the job's documents (all tasks, in order).
    pub doc: usize,
    /// Which choice (or rolling window) of the document.
    pub part: usize,
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// What a request (or, for a rolling document, all of its windows) scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Response {
    pub loglikelihood: f64,
    /// Every continuation token was the model's most likely one.
    pub is_greedy: bool,
}

/// How rolling documents are cut into windows.
#[derive(Debug, Clone, Copy)]
pub struct Windowing {
    /// The token that starts the first window (HFLM's `prefix_token_id`: BOS, else EOS).
    pub prefix_token: u32,
    /// The model's context length, for tasks that set none.
    pub default_max_length: usize,
}

/// Every request of every document of `tasks`, tokenized in parallel. Documents are numbered
/// across tasks in order; a choice document gives one request per choice, a rolling one one
/// per window.
pub fn requests(tasks: &[Task], tokenizer: &Tokenizer, windowing: Windowing) -> Result<Vec<Request>> {
    let docs: Vec<(&Task, &Document)> = tasks.iter().flat_map(|t| t.docs.iter().map(move |d| (t, d))).collect();
    let per_doc: Vec<Vec<Request>> = docs
        .par_iter()
        .enumerate()
        .map(|(index, (task, document))| {
            let pairs = match &document.doc {
                Doc::Choice(choice) => choice
                    .choices
                    .iter()
                    .map(|c| {
                        let continuation = format!("{}{c}", task.target_delimiter);
                        if choice.context.is_empty() {
                            // lm-eval scores an empty context after the prefix token.
                            return Ok((vec![windowing.prefix_token], encode(tokenizer, &continuation)?));
                        }
                        encode_pair(tokenizer, &choice.context, &continuation)
                    })
                    .collect::<Result<Vec<_>>>()?,
                Doc::Rolling(rolling) => {
                    let tokens = encode_plain(tokenizer, &rolling.text)?;
                    let max_length = task.max_length.unwrap_or(windowing.default_max_length);
                    wikitext::rolling_windows(&tokens, windowing.prefix_token, max_length)
                }
                // Generated, not scored: see `generations`.
                Doc::Generate(_) => Vec::new(),
            };
            Ok(pairs
                .into_iter()
                .enumerate()
                .map(|(part, (context, continuation))| Request { doc: index, part, context, continuation })
                .collect())
        })
        .collect::<Result<_>>()?;
    Ok(per_doc.into_iter().flatten().collect())
}

/// Encodes with the tokenizer's own special-token template, as lm-evaluation-harness 0.4.13 does
/// for loglikelihood requests (`add_special_tokens` left at the tokenizer's default): a
/// Llama-style tokenizer that adds BOS gets it on the context and on context+continuation alike;
/// SmolLM2's adds nothing.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    encode_with(tokenizer, text, true)
}

/// Encodes without special tokens: HFLM's `tok_encode` of a rolling document.
pub fn encode_plain(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    encode_with(tokenizer, text, false)
}

fn encode_with(tokenizer: &Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    let encoding = tokenizer
        .encode(text, special)
        .map_err(|e| anyhow::anyhow!("tokenizing {:?}: {e}", text.chars().take(60).collect::<String>()))?;
    Ok(encoding.get_ids().to_vec())
}

/// lm-eval's `_encode_pair`: trailing whitespace of the context moves to the continuation, the
/// whole string is encoded once, and the continuation is what follows the context's own token
/// count. Splitting the joint encoding (instead of encoding the continuation alone) keeps the
/// tokens the model would really see, e.g. `" A"` as one token rather than `" "` + `"A"`.
pub fn encode_pair(tokenizer: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(is_python_space);
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    let whole = encode(tokenizer, &format!("{trimmed}{continuation}"))?;
    let context = encode(tokenizer, trimmed)?;
    let continuation = whole.get(context.len()..).unwrap_or_default().to_vec();
    Ok((context, continuation))
}

/// Python's `str.isspace`: Unicode whitespace plus the ASCII separators 0x1c..0x1f.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn python_strip(text: &str) -> &str {
    text.trim_matches(is_python_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewshot_context_is_lm_evals_layout() {
        let shots = [("Q1".to_string(), "a".to_string()), ("Q2".to_string(), "b".to_string())];
        assert_eq!(fewshot_context("D: ", &shots, "Q3", " ", "\n\n"), "D: Q1 a\n\nQ2 b\n\nQ3");
        assert_eq!(fewshot_context("", &[], "Q", " ", "\n\n"), "Q");
    }
}
