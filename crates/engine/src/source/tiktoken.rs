//! Qwen (v1)'s tiktoken tokenizer (`qwen.tiktoken`) as a `tokenizers::Tokenizer`.
//!
//! The file lists the mergeable tokens of a byte-level BPE, one `BASE64_BYTES RANK` a line, and
//! nothing else: no merges, no pre-tokenizer, no special tokens. tiktoken encodes by repeatedly
//! joining the adjacent pair whose concatenation has the lowest rank. The `tokenizers` crate's BPE
//! applies listed merges by priority instead, so the merges are recovered from the ranks the way
//! transformers' `TikTokenConverter` does ([`recover_merges`]): each token of two or more bytes is
//! encoded with only the ranks below its own, and the two parts that remain are its merge. Listed
//! in the rank order of the tokens they make, they reproduce tiktoken's choices.
//!
//! The vocabulary keeps each rank as the token id, with token bytes spelled in GPT-2's byte-level
//! alphabet ([`byte_level`]). Qwen's split regex ([`QWEN_PATTERN`]) and the byte-level mapping are
//! the pre-tokenizer, text is NFC-normalized first (Qwen's `tokenize` does so), the decoder is
//! byte-level, and Qwen's special tokens ([`qwen_special_tokens`]) follow the last rank as added
//! special tokens. No BOS is added: Qwen adds none.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{EngineError, Result};

/// The file name Qwen (v1) ships its tokenizer under.
pub const QWEN_FILE: &str = "qwen.tiktoken";

/// Qwen (v1)'s split regex (`PAT_STR` of its `tokenization_qwen.py`).
pub const QWEN_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen (v1)'s special tokens in id order: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, then
/// `<|extra_0|>` .. `<|extra_204|>`. Their ids follow the last rank.
pub fn qwen_special_tokens() -> Vec<String> {
    let named = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from);
    named.into_iter().chain((0..205).map(|i| format!("<|extra_{i}|>"))).collect()
}

/// Qwen (v1)'s tokenizer from its `qwen.tiktoken` at `path`.
pub fn qwen_tokenizer(path: &Path) -> Result<Tokenizer> {
    let ranks = read_ranks(path)?;
    build(&ranks, QWEN_PATTERN, &qwen_special_tokens()).map_err(|e| EngineError::format(path, e))
}

/// The mergeable ranks of a tiktoken file: token bytes -> rank. A line that is not
/// `BASE64 RANK`, or repeats a token or a rank, is an error naming the file and the line.
pub fn read_ranks(path: &Path) -> Result<HashMap<Vec<u8>, u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    parse_ranks(&text).map_err(|(line, message)| EngineError::format(path, format!("line {line}: {message}")))
}

/// [`read_ranks`] on the file's text; errors are (1-based line number, message).
fn parse_ranks(text: &str) -> std::result::Result<HashMap<Vec<u8>, u32>, (usize, String)> {
    let mut ranks = HashMap::new();
    let mut seen_ranks = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [token, rank] = fields[..] else {
            return Err((number, format!("expected `BASE64_TOKEN RANK`, found {line:?}")));
        };
        let bytes = base64_decode(token).ok_or_else(|| (number, format!("{token:?} is not base64")))?;
        if bytes.is_empty() {
            return Err((number, "the token is empty".into()));
        }
        let rank: u32 = rank.parse().map_err(|_| (number, format!("rank {rank:?} is not a non-negative integer")))?;
        if !seen_ranks.insert(rank) {
            return Err((number, format!("rank {rank} is given twice")));
        }
        if ranks.insert(bytes, rank).is_some() {
            return Err((number, format!("token {token} is given twice")));
        }
    }
    if ranks.is_empty() {
        return Err((1, "no tokens".into()));
    }
    Ok(ranks)
}

/// Standard base64 (`+`, `/`, `=` padding), as tiktoken writes it.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let padding = bytes.iter().rev().take_while(|&&c| c == b'=').count();
    if padding > 2 {
        return None;
    }
    let data = &bytes[..bytes.len() - padding];
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | value(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
            2 => out.push((acc >> 4) as u8),
            _ => return None,
        }
    }
    Some(out)
}

/// GPT-2's byte -> character table (`bytes_to_unicode`): printable Latin-1 bytes map to
/// themselves, the others to U+0100 onwards in byte order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            byte as char
        } else {
            next += 1;
            char::from_u32(255 + next).expect("U+0100..U+0143")
        };
    }
    table
}

/// `bytes` spelled in the byte-level alphabet.
pub fn byte_level(bytes: &[u8]) -> String {
    let table = byte_chars();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// tiktoken's encoding of `token` using only ranks below `max_rank`: starting from single bytes,
/// join the adjacent pair of lowest rank until no pair has a rank below `max_rank`.
fn bpe<'a>(ranks: &HashMap<Vec<u8>, u32>, token: &'a [u8], max_rank: u32) -> Vec<&'a [u8]> {
    let mut parts: Vec<&[u8]> = (0..token.len()).map(|i| &token[i..i + 1]).collect();
    // Parts are contiguous slices of `token`: a join is the slice spanning both.
    let start = |part: &[u8]| part.as_ptr() as usize - token.as_ptr() as usize;
    loop {
        let best = (0..parts.len().saturating_sub(1))
            .filter_map(|i| {
                let joined = &token[start(parts[i])..start(parts[i + 1]) + parts[i + 1].len()];
                ranks.get(joined).map(|&rank| (rank, i, joined))
            })
            .min();
        match best {
            Some((rank, i, joined)) if rank < max_rank => {
                parts[i] = joined;
                parts.remove(i + 1);
            }
            _ => return parts,
        }
    }
}

/// The merges of the BPE that `ranks` describe, in the rank order of the tokens they make, each
/// part as its bytes: for each token of two or more bytes, [`bpe`] with the ranks below its own;
/// where two parts remain they are its merge (tokens that do not reduce to two parts get none).
pub fn recover_merges(ranks: &HashMap<Vec<u8>, u32>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut tokens: Vec<(&Vec<u8>, u32)> =
        ranks.iter().filter(|(token, _)| token.len() >= 2).map(|(t, &r)| (t, r)).collect();
    tokens.sort_by_key(|&(_, rank)| rank);
    tokens
        .into_iter()
        .filter_map(|(token, rank)| match bpe(ranks, token, rank)[..] {
            [left, right] => Some((left.to_vec(), right.to_vec())),
            _ => None,
        })
        .collect()
}

/// The byte-level BPE tokenizer of `ranks` (rank = id), split first by `pattern`, with `special`
/// added as special tokens with the ids after the last rank. Errors are messages.
pub fn build(
    ranks: &HashMap<Vec<u8>, u32>,
    pattern: &str,
    special: &[String],
) -> std::result::Result<Tokenizer, String> {
    let mut vocab: Vocab = ranks.iter().map(|(token, &rank)| (byte_level(token), rank)).collect();
    let first_special = ranks.values().max().map_or(0, |&max| max + 1);
    for (id, token) in (first_special..).zip(special) {
        if vocab.insert(token.clone(), id).is_some() {
            return Err(format!("special token {token:?} is also a mergeable token"));
        }
    }
    let merges =
        recover_merges(ranks).into_iter().map(|(left, right)| (byte_level(&left), byte_level(&right))).collect();
    let model = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| format!("BPE: {e}"))?;

    let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| format!("split regex: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(NFC))
        .with_pre_tokenizer(Some(Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()])))
        .with_decoder(Some(ByteLevelDecoder::default()));
    let added: Vec<AddedToken> = special.iter().map(|token| AddedToken::from(token.clone(), true)).collect();
    tokenizer.add_special_tokens(&added);
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(bytes: &[u8], rank: u32) -> String {
        format!("{} {rank}\n", base64_encode(bytes))
    }

    fn base64_encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let acc = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(acc >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn base64_round_trips() {
        for bytes in [&b"a"[..], b"ab", b"abc", b"abcd", &[0, 255, 128, 7, 9], b" \xe6\xa0"] {
            assert_eq!(base64_decode(&base64_encode(bytes)).as_deref(), Some(bytes));
        }
        assert_eq!(base64_decode("IQ==").as_deref(), Some(&b"!"[..]));
        assert_eq!(base64_decode("IHRoZQ==").as_deref(), Some(&b" the"[..]));
        assert!(base64_decode("I").is_none());
        assert!(base64_decode("I*==").is_none());
    }

    #[test]
    fn byte_level_matches_gpt2() {
        assert_eq!(byte_level(b" the"), "Ġthe");
        assert_eq!(byte_level(b"\n"), "Ċ");
        assert_eq!(byte_level("é".as_bytes()), "Ã©");
        let table = byte_chars();
        assert_eq!(table.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn malformed_lines_are_named() {
        let good = line(b"a", 0) + &line(b"b", 1);
        for (bad, expected) in [
            ("YQ==\n", "line 3: expected"),
            ("YQ== x\n", "line 3: rank \"x\""),
            ("Y*== 2\n", "line 3: \"Y*==\" is not base64"),
            ("Yw== 1\n", "line 3: rank 1 is given twice"),
            ("YQ== 2\n", "line 3: token YQ== is given twice"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(QWEN_FILE);
            std::fs::write(&path, good.clone() + bad).unwrap();
            let error = read_ranks(&path).unwrap_err().to_string();
            assert!(error.starts_with(&path.display().to_string()), "{error}");
            assert!(error.contains(expected), "{error} lacks {expected}");
            let error = qwen_tokenizer(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn merges_follow_ranks() {
        // ab (2) then bc (3): "abc" must split ab|c, and "abc" (4) is made of ab + c.
        let mut ranks: HashMap<Vec<u8>, u32> = [(b"a", 0), (b"b", 1), (b"c", 5)].map(|(t, r)| (t.to_vec(), r)).into();
        ranks.extend([(b"ab".to_vec(), 2), (b"bc".to_vec(), 3), (b"abc".to_vec(), 4)]);
        let merges = recover_merges(&ranks);
        let expected: Vec<(Vec<u8>, Vec<u8>)> =
            vec![(b"a".into(), b"b".into()), (b"b".into(), b"c".into()), (b"ab".into(), b"c".into())];
        assert_eq!(merges, expected);
    }

    #[test]
    fn special_tokens_follow_the_last_rank() {
        let text: String = (0..=255u8).map(|b| line(&[b], b as u32)).collect::<String>() + &line(b"ab", 256);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(QWEN_FILE);
        std::fs::write(&path, text).unwrap();
        let tokenizer = qwen_tokenizer(&path).unwrap();
        assert_eq!(tokenizer.token_to_id("<|endoftext|>"), Some(257));
        assert_eq!(tokenizer.token_to_id("<|im_start|>"), Some(258));
        assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(259));
        assert_eq!(tokenizer.token_to_id("<|extra_204|>"), Some(259 + 205));
        let encoding = tokenizer.encode("<|im_start|>ab<|im_end|>", false).unwrap();
        assert_eq!(encoding.get_ids(), &[258, 256, 259]);
        // No BOS, with or without special tokens.
        assert_eq!(tokenizer.encode("ab", true).unwrap().get_ids(), &[256]);
    }
}
