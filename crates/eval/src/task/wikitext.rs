//! WikiText-2 perplexity (`wikitext`) as lm-eval 0.4.13 computes it, from `wiki.test.raw`.
//!
//! Documents are pages, made as the `EleutherAI/wikitext_document_level` loader makes them: the
//! file is split on `\n`; a line starts a new page when, with `= = =` read as `===` and `= =` as
//! `==` and stripped, it starts with `= ` and ends with ` =`; the lines before it, joined with
//! `\n`, are the previous page unless blank; the last page is kept as is (62 pages).
//!
//! Each page is scored with `loglikelihood_rolling` on lm-eval's detokenized text
//! ([`detokenize`]), in disjoint windows of the model's context length ([`rolling_windows`]);
//! words and bytes are counted on the page before detokenizing, as lm-eval does.

use std::path::Path;
use std::sync::LazyLock;

use anyhow::{Context, Result};
use regex::{NoExpand, Regex};

use super::metrics::ROLLING_METRICS;
use super::{Doc, RollingDoc, Task, is_python_space};

/// The pages of a WikiText raw file.
pub fn pages(text: &str) -> Vec<String> {
    let mut pages = Vec::new();
    let mut lines: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        let heading = line.replace("= = =", "===").replace("= =", "==");
        let heading = heading.trim();
        if heading.starts_with("= ") && heading.ends_with(" =") {
            let page = lines.join("\n");
            if !page.trim().is_empty() {
                pages.push(page);
            }
            lines.clear();
        }
        lines.push(line);
    }
    pages.push(lines.join("\n"));
    pages
}

/// lm-eval's `wikitext_detokenizer`.
pub fn detokenize(page: &str) -> String {
    static QUOTE_DIGIT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"/' [0-9]/").expect("valid"));
    static BRACKETS: LazyLock<[(Regex, &str); 5]> = LazyLock::new(|| {
        [
            (r"\(\s*([^\)]*?)\s*\)", "(${1})"),
            (r"\[\s*([^\]]*?)\s*\]", "[${1}]"),
            (r"\{\s*([^}]*?)\s*\}", "{${1}}"),
            (r#""\s*([^"]*?)\s*""#, "\"${1}\""),
            (r"'\s*([^']*?)\s*'", "'${1}'"),
        ]
        .map(|(pattern, replacement)| (Regex::new(pattern).expect("valid"), replacement))
    });
    let mut s = page.replace("s '", "s'");
    s = QUOTE_DIGIT.replace_all(&s, NoExpand("/'[0-9]/")).into_owned();
    for (from, to) in [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; ")] {
        s = s.replace(from, to);
    }
    for (from, to) in [(" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")] {
        s = s.replace(from, to);
    }
    for (pattern, replacement) in BRACKETS.iter() {
        s = pattern.replace_all(&s, *replacement).into_owned();
    }
    for (from, to) in [("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u{b0} ", "\u{b0}")] {
        s = s.replace(from, to);
    }
    for (from, to) in [(" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")] {
        s = s.replace(from, to);
    }
    s
}

/// `len(re.split(r"\s+", page))`: whitespace runs plus one.
pub fn count_words(page: &str) -> usize {
    let mut runs = 0;
    let mut in_space = false;
    for c in page.chars() {
        let space = is_python_space(c);
        if space && !in_space {
            runs += 1;
        }
        in_space = space;
    }
    runs + 1
}

/// lm-eval's `get_rolling_token_windows(tokens, prefix, max_length, context_len=1)` made disjoint
/// (`make_disjoint_window`): `(context, continuation)` pairs whose continuations cover every token
/// once. The first window predicts the first token from `prefix`; each later one sees up to
/// `max_length` tokens before its first prediction.
pub fn rolling_windows(tokens: &[u32], prefix: u32, max_length: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    if tokens.is_empty() {
        return Vec::new();
    }
    let first = max_length.min(tokens.len());
    let mut windows = vec![(vec![prefix], tokens[..first].to_vec())];
    let mut predicted = first;
    while predicted < tokens.len() {
        let length = (tokens.len() - predicted).min(max_length);
        let end = predicted + length;
        // The window's input is tokens[end - max_length - 1 .. end - 1]; disjoint, its context is
        // what precedes the predicted part.
        let start = (end - 1).saturating_sub(max_length);
        windows.push((tokens[start..end - length].to_vec(), tokens[end - length..end].to_vec()));
        predicted = end;
    }
    windows
}

/// Reads a raw WikiText file into the task `wikitext`, keeping the first `limit` pages.
pub fn task(path: &Path, limit: Option<usize>, max_length: Option<usize>, entry: usize) -> Result<Task> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pages = pages(&text);
    let docs = pages.iter().map(|page| {
        Ok(Doc::Rolling(RollingDoc { text: detokenize(page), words: count_words(page), bytes: page.len() }))
    });
    let task = Task {
        max_length,
        target_delimiter: String::new(),
        ..Task::new("wikitext", "2.0", ROLLING_METRICS.to_vec(), path.to_path_buf(), entry)
    };
    task.with_docs(pages.len(), docs, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_at_top_level_headings_only() {
        let text = " \n = A = \n text \n = = Sub = = \n more \n = B = \n b \n";
        let pages = pages(text);
        assert_eq!(
            pages,
            [" = A = \n text \n = = Sub = = \n more ", " = B = \n b \n"],
            "the blank first page is dropped"
        );
    }

    #[test]
    fn shipped_file_has_62_pages() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/wikitext-2/wiki.test.raw");
        let task = task(&path, None, None, 0).unwrap();
        assert_eq!(task.docs.len(), 62);
    }

    #[test]
    fn detokenizer_follows_lm_eval() {
        assert_eq!(detokenize("a @-@ b , c ( d ) \" e \" 1 @,@ 000 s ' x"), "a-b, c (d) \"e\" 1,000 s' x");
        assert_eq!(detokenize(" = = H = = \n x 's N y \n"), " == H ==\nx's 1 y\n");
    }

    #[test]
    fn words_are_whitespace_runs_plus_one() {
        assert_eq!(count_words(" a  b\n"), 4, "['', 'a', 'b', ''] in Python");
        assert_eq!(count_words("a"), 1);
    }

    #[test]
    fn windows_cover_every_token_once() {
        let tokens: Vec<u32> = (10..20).collect();
        let windows = rolling_windows(&tokens, 0, 4);
        assert_eq!(windows[0], (vec![0], vec![10, 11, 12, 13]));
        assert_eq!(windows[1], (vec![13], vec![14, 15, 16, 17]), "input 13..=16: a full window");
        assert_eq!(windows[2], (vec![15, 16, 17], vec![18, 19]), "input 15..=18");
        assert_eq!(windows.len(), 3);
        assert_eq!(rolling_windows(&tokens, 0, 100), vec![(vec![0], tokens.clone())]);
    }
}
