//! Greedy generation of whole prompts until a stop sequence, as lm-eval's `generate_until` asks
//! it, in waves whose KV caches fit the job's `memory.kv_budget`. Used by generation tasks in
//! `run` and by the `generate` command.
//!
//! A prompt stops at the model's end-of-text token, when its decoded completion contains one of
//! its stop sequences, or after its token budget. The completion is the generated text decoded
//! without special tokens and cut before the first stop sequence (lm-eval's `until` handling).

use airllm_engine::ModelSpec;
use airllm_engine::executor::{Engine, GenerationStats, WaveObserver, kv_bytes_per_token};
use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use tokenizers::Tokenizer;

/// One prompt to continue.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub until: Vec<String>,
    pub max_new: usize,
}

/// What a prompt got.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    /// Tokens generated (the end-of-text token included, when it ended the completion).
    pub tokens: usize,
}

/// A prompt from its token ids, as lm-eval's HFLM prepares one for `generate_until`: the last
/// `max_positions - max_new` ids kept so the completion fits the model's context, and the stop
/// sequences with the model's end-of-text token as text added.
pub fn prompt(tokenizer: &Tokenizer, model: &ModelSpec, mut ids: Vec<u32>, until: &[String], max_new: usize) -> Prompt {
    let keep = model.max_position_embeddings.saturating_sub(max_new).max(1);
    if ids.len() > keep {
        ids.drain(..ids.len() - keep);
    }
    let mut until = until.to_vec();
    if let Some(text) = model.eos_token_id.and_then(|id| tokenizer.id_to_token(id))
        && !until.contains(&text)
    {
        until.push(text);
    }
    Prompt { ids, until, max_new }
}

/// The text before the first stop sequence.
pub fn cut_at_stop<'a>(text: &'a str, until: &[String]) -> &'a str {
    let end = until.iter().filter(|u| !u.is_empty()).filter_map(|u| text.find(u.as_str())).min().unwrap_or(text.len());
    &text[..end]
}

/// Waves of prompt indices whose KV caches (prompt plus budget, every layer) fit `budget` bytes.
pub fn plan(prompts: &[Prompt], bytes_per_token: u64, budget: u64) -> Result<Vec<Vec<usize>>> {
    let mut waves: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for (i, prompt) in prompts.iter().enumerate() {
        let cost = (prompt.ids.len() + prompt.max_new) as u64 * bytes_per_token;
        if cost > budget {
            bail!(
                "memory.kv_budget ({budget} bytes) is too small for one sequence: prompt {i} needs {cost} bytes \
                 ({} prompt + {} new tokens at {bytes_per_token} bytes each)",
                prompt.ids.len(),
                prompt.max_new
            );
        }
        match waves.last_mut() {
            Some(wave) if used + cost <= budget => wave.push(i),
            _ => {
                waves.push(vec![i]);
                used = 0;
            }
        }
        used += cost;
    }
    Ok(waves)
}

/// Bytes of KV cache per token of the engine's model, in the engine's cache type.
pub fn kv_bytes<B: Backend>(engine: &Engine<B>) -> u64 {
    kv_bytes_per_token(engine.spec(), engine.options().kv_dtype)
}

/// Generates one wave. `on_text(i, piece)` receives prompt `i`'s text as it comes (for
/// streaming to a terminal).
pub fn generate_wave<B: Backend>(
    engine: &mut Engine<B>,
    prompts: &[&Prompt],
    observer: &dyn WaveObserver,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<(Vec<Completion>, GenerationStats)> {
    let tokenizer = engine.tokenizer()?.clone();
    let eos = engine.spec().eos_token_id;
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let max_new: Vec<usize> = prompts.iter().map(|p| p.max_new).collect();
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut shown: Vec<usize> = vec![0; prompts.len()];
    let mut ended: Vec<bool> = vec![false; prompts.len()];
    let stats = engine.generate_wave(&ids, &max_new, observer, &mut |i, token| {
        if Some(token) == eos {
            ended[i] = true;
            return false;
        }
        generated[i].push(token);
        let text = tokenizer.decode(&generated[i], false).unwrap_or_default();
        if text.len() > shown[i] && text.is_char_boundary(shown[i]) {
            on_text(i, &text[shown[i]..]);
            shown[i] = text.len();
        }
        !prompts[i].until.iter().any(|u| !u.is_empty() && text.contains(u.as_str()))
    })?;
    let completions = generated
        .iter()
        .zip(prompts)
        .zip(&ended)
        .map(|((ids, prompt), &ended)| {
            let text = tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("decoding a completion: {e}"))?;
            let text = cut_at_stop(&text, &prompt.until).to_string();
            Ok(Completion { text, tokens: ids.len() + ended as usize })
        })
        .collect::<Result<_>>()
        .context("decoding")?;
    Ok((completions, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(len: usize, max_new: usize) -> Prompt {
        Prompt { ids: vec![1; len], until: Vec::new(), max_new }
    }

    #[test]
    fn waves_fit_the_kv_budget() {
        let prompts = [prompt(6, 4), prompt(3, 2), prompt(1, 4), prompt(8, 2)];
        assert_eq!(plan(&prompts, 10, 200).unwrap(), vec![vec![0, 1, 2], vec![3]]);
        let err = plan(&prompts, 10, 50).unwrap_err().to_string();
        assert!(
            err.contains("memory.kv_budget (50 bytes) is too small for one sequence: prompt 0 needs 100 bytes"),
            "{err}"
        );
    }

    #[test]
    fn completions_end_before_the_first_stop() {
        let until = ["Q:".to_string(), "</s>".to_string()];
        assert_eq!(cut_at_stop(" 5 + 3 = 8.\n\nQ: next </s>", &until), " 5 + 3 = 8.\n\n");
        assert_eq!(cut_at_stop("no stop", &until), "no stop");
    }
}
