//! Tasks turn dataset rows into scoring requests and score the answers.

pub mod mmlu;

use tokenizers::Tokenizer;

/// A loglikelihood request: how likely is `continuation` after `context`, both as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The item (question) it belongs to, an index into the task's item list.
    pub item: usize,
    /// Which of the item's choices it scores.
    pub choice: usize,
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// Encodes with the tokenizer's own special-token template, as lm-evaluation-harness 0.4.13 does
/// (`add_special_tokens` left at the tokenizer's default): a Llama-style tokenizer that adds BOS
/// gets it on the context and on context+continuation alike; SmolLM2's adds nothing.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> anyhow::Result<Vec<u32>> {
    let encoding = tokenizer
        .encode(text, true)
        .map_err(|e| anyhow::anyhow!("tokenizing {:?}: {e}", text.chars().take(60).collect::<String>()))?;
    Ok(encoding.get_ids().to_vec())
}

/// lm-eval's `_encode_pair`: trailing whitespace of the context moves to the continuation, the
/// whole string is encoded once, and the continuation is what follows the context's own token
/// count. Splitting the joint encoding (instead of encoding the continuation alone) keeps the
/// tokens the model would really see, e.g. `" A"` as one token rather than `" "` + `"A"`.
pub fn encode_pair(tokenizer: &Tokenizer, context: &str, continuation: &str) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
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
