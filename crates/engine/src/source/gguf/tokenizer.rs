//! Rebuilds a Hugging Face `tokenizers::Tokenizer` from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = gpt2`) is handled. The GGUF keeps the vocabulary,
//! merges and token types but not the pre-tokenizer itself, only its llama.cpp name in
//! `tokenizer.ggml.pre`; each supported name maps to the `pre_tokenizer` of the original
//! `tokenizer.json`, so that encodings match transformers' exactly. The tokenizer is assembled as
//! `tokenizer.json` text and handed to the `tokenizers` crate, which keeps us on its documented
//! serialization format instead of its builder APIs.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value as Json, json};

use super::reader::Value;
use crate::error::{EngineError, Result};

/// llama.cpp token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// Llama 3's split regex, as in its `tokenizer.json` (llama.cpp `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: Llama 3's with single digits.
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds the tokenizer described by `metadata` (the GGUF at `path`).
pub fn build(metadata: &HashMap<String, Value>, path: &Path) -> Result<tokenizers::Tokenizer> {
    let meta = Meta { metadata, path };
    let model = meta.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(meta.error(format!("tokenizer.ggml.model {model:?} is not supported (only gpt2, byte-level BPE)")));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let pre = meta.opt_str("tokenizer.ggml.pre").unwrap_or("default");
    let (normalizer, pre_tokenizer) = pre_tokenizer(pre).ok_or_else(|| {
        meta.error(format!(
            "tokenizer.ggml.pre {pre:?} is not supported (supported: default, gpt-2, smollm, llama-bpe, qwen2)"
        ))
    })?;
    let vocab: Map<String, Json> = tokens.iter().enumerate().map(|(id, t)| (t.to_string(), json!(id))).collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(&meta, &tokens)?,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(&meta, &tokens)?,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let bytes = serde_json::to_vec(&tokenizer).map_err(|e| meta.error(format!("tokenizer: {e}")))?;
    tokenizers::Tokenizer::from_bytes(bytes)
        .map_err(|e| meta.error(format!("building the tokenizer from tokenizer.ggml.*: {e}")))
}

/// `(normalizer, pre_tokenizer)` of the original `tokenizer.json` for a llama.cpp pre-tokenizer name.
fn pre_tokenizer(pre: &str) -> Option<(Json, Json)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split =
        |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let sequence = |items: Vec<Json>| json!({"type": "Sequence", "pretokenizers": items});
    Some(match pre {
        "default" | "gpt-2" | "gpt2" => (Json::Null, byte_level(true)),
        // SmolLM2's tokenizer.json: digits split one by one, then GPT-2's byte-level regex.
        "smollm" => {
            (Json::Null, sequence(vec![json!({"type": "Digits", "individual_digits": true}), byte_level(true)]))
        }
        "llama-bpe" => (Json::Null, sequence(vec![split(LLAMA3_REGEX), byte_level(false)])),
        "qwen2" => (json!({"type": "NFC"}), sequence(vec![split(QWEN2_REGEX), byte_level(false)])),
        _ => return None,
    })
}

/// Control and user-defined tokens, plus bos/eos/pad, as `added_tokens` entries. Control tokens
/// (and bos/eos/pad) are special; user-defined ones are plain added tokens, as llama.cpp's
/// converter gives that type to the non-special entries of `added_tokens`.
fn added_tokens(meta: &Meta, tokens: &[&str]) -> Result<Vec<Json>> {
    let types = match meta.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v.as_array().ok_or_else(|| meta.error("tokenizer.ggml.token_type is not an array".into()))?,
        None => &[],
    };
    let named: Vec<u32> = ["bos", "eos", "padding"]
        .iter()
        .filter_map(|k| meta.token_id(&format!("tokenizer.ggml.{k}_token_id")))
        .collect();
    let mut added = Vec::new();
    for (id, &content) in tokens.iter().enumerate() {
        let kind = types.get(id).and_then(Value::as_u64);
        let special = kind == Some(TOKEN_TYPE_CONTROL) || named.contains(&(id as u32));
        if special || kind == Some(TOKEN_TYPE_USER_DEFINED) {
            added.push(json!({
                "id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": !special, "special": special,
            }));
        }
    }
    Ok(added)
}

/// Byte-level post-processing, preceded by a template adding BOS/EOS where the GGUF asks for it.
fn post_processor(meta: &Meta, tokens: &[&str]) -> Result<Json> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    let add = |key: &str, id_key: &str| -> Result<Option<(String, u32)>> {
        if !meta.metadata.get(key).and_then(Value::as_bool).unwrap_or(false) {
            return Ok(None);
        }
        let id = meta.token_id(id_key).ok_or_else(|| meta.error(format!("{key} is true but {id_key} is missing")))?;
        let token =
            tokens.get(id as usize).ok_or_else(|| meta.error(format!("{id_key} {id} is outside the vocabulary")))?;
        Ok(Some((token.to_string(), id)))
    };
    let bos = add("tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id")?;
    let eos = add("tokenizer.ggml.add_eos_token", "tokenizer.ggml.eos_token_id")?;
    if bos.is_none() && eos.is_none() {
        return Ok(byte_level);
    }
    let special = |t: &Option<(String, u32)>| {
        t.iter().map(|(s, _)| json!({"SpecialToken": {"id": s, "type_id": 0}})).collect::<Vec<_>>()
    };
    let seq = |id: &str| json!({"Sequence": {"id": id, "type_id": 0}});
    let single: Vec<Json> = [special(&bos), vec![seq("A")], special(&eos)].concat();
    let pair: Vec<Json> = [single.clone(), special(&bos), vec![seq("B")], special(&eos)].concat();
    let special_tokens: Map<String, Json> =
        bos.iter().chain(&eos).map(|(s, id)| (s.clone(), json!({"id": s, "ids": [id], "tokens": [s]}))).collect();
    let template =
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens});
    Ok(json!({"type": "Sequence", "processors": [byte_level, template]}))
}

/// Typed access to the tokenizer metadata, with errors naming the file.
struct Meta<'a> {
    metadata: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn error(&self, message: String) -> EngineError {
        EngineError::format(self.path, message)
    }

    fn opt_str(&self, key: &str) -> Option<&'a str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    fn str(&self, key: &str) -> Result<&'a str> {
        self.opt_str(key).ok_or_else(|| self.error(format!("{key} is missing or not a string")))
    }

    fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        let items = self.metadata.get(key).and_then(Value::as_array);
        let items = items.ok_or_else(|| self.error(format!("{key} is missing or not an array")))?;
        items.iter().map(|v| v.as_str().ok_or_else(|| self.error(format!("{key} holds a non-string")))).collect()
    }

    fn token_id(&self, key: &str) -> Option<u32> {
        self.metadata.get(key).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok())
    }
}
