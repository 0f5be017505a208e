//! GSM8K with chain-of-thought (`gsm8k_cot`) as lm-eval 0.4.13's registered task asks and scores
//! it, from the original `test.jsonl` (`{question, answer}`, the answer ending in `#### n`).
//!
//! The context is lm-eval's eight fixed exemplars, each `Q: {question}\nA: {worked answer}`
//! followed by a blank line, then `Q: {question}\nA:`. The model generates greedily until
//! `Q:`, `</s>` or `<|im_end|>` (and the model's end-of-text), at most 256 tokens. Two filters pull
//! the answer out of the completion: `strict-match` (the number after `The answer is`) and
//! `flexible-extract` (the last number in it); `exact_match` compares each with the gold number
//! after `####`, ignoring case, commas, dollar signs and a final period.

use std::path::Path;
use std::sync::LazyLock;

use anyhow::{Result, bail};
use regex::Regex;
use serde_json::Value;

use super::metrics::Metric;
use super::{Doc, GenerateDoc, Task, fewshot_context};
use crate::dataset::rows::read_rows;

/// lm-eval's `gsm8k-cot.yaml` few-shot samples: (question, target).
pub const EXEMPLARS: [(&str, &str); 8] = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
];

/// The task's stop sequences (the model's end-of-text string is added when the runner knows it).
pub const UNTIL: [&str; 3] = ["Q:", "</s>", "<|im_end|>"];
/// HFLM's default `max_gen_toks`.
pub const MAX_GEN_TOKS: usize = 256;
/// lm-eval's regex filters' answer for a completion they find nothing in.
pub const INVALID: &str = "[invalid]";

/// `Q: {question}\nA:`
fn question_text(question: &str) -> String {
    format!("Q: {question}\nA:")
}

pub fn prompt(question: &str) -> String {
    let shots: Vec<(String, String)> = EXEMPLARS.iter().map(|(q, a)| (question_text(q), a.to_string())).collect();
    fewshot_context("", &shots, &question_text(question), " ", "\n\n")
}

/// Reads `test.jsonl` into the task `gsm8k_cot`, keeping the first `limit` problems.
pub fn task(path: &Path, limit: Option<usize>, entry: usize) -> Result<Task> {
    let rows = read_rows(path)?;
    let docs = rows.iter().map(|row| {
        let field = |name: &str| match row.fields.get(name) {
            Some(Value::String(s)) => Ok(s.as_str()),
            _ => bail!("{}:{}: field `{name}` must be a string", path.display(), row.line),
        };
        let answer = field("answer")?;
        Ok(Doc::Generate(GenerateDoc {
            context: prompt(field("question")?),
            until: UNTIL.iter().map(|s| s.to_string()).collect(),
            max_gen_toks: MAX_GEN_TOKS,
            target: answer.rsplit("####").next().unwrap_or(answer).trim().to_string(),
        }))
    });
    let metrics = vec![Metric::ExactMatchStrict, Metric::ExactMatchFlexible];
    let task =
        Task { num_fewshot: EXEMPLARS.len(), ..Task::new("gsm8k_cot", "3.0", metrics, path.to_path_buf(), entry) };
    task.with_docs(rows.len(), docs, limit)
}

/// `strict-match`: the first `The answer is N.` in the completion.
pub fn strict_match(completion: &str) -> String {
    static STRICT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"The answer is (\-?[0-9\.\,]+).").expect("valid"));
    STRICT.captures(completion).map_or(INVALID.to_string(), |c| c[1].trim().to_string())
}

/// `flexible-extract`: the last number in the completion (lm-eval's `group_select: -1`, then the
/// first group that matched).
pub fn flexible_extract(completion: &str) -> String {
    static FLEXIBLE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("valid"));
    let last = FLEXIBLE.captures_iter(completion).last();
    last.and_then(|c| c.get(1).or_else(|| c.get(2))).map_or(INVALID.to_string(), |m| m.as_str().trim().to_string())
}

/// lm-eval's `exact_match` with gsm8k_cot's options: commas, `$`, anything up to `#### ` and a
/// final period removed from both sides, then compared ignoring case.
pub fn exact_match(prediction: &str, reference: &str) -> bool {
    static IGNORED: LazyLock<[Regex; 4]> =
        LazyLock::new(|| [",", r"\$", r"(?s).*#### ", r"\.$"].map(|p| Regex::new(p).expect("valid")));
    let clean = |text: &str| {
        let mut text = text.to_string();
        for pattern in IGNORED.iter() {
            text = pattern.replace_all(&text, "").into_owned();
        }
        text.to_lowercase()
    };
    clean(prediction) == clean(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_eight_exemplars_then_the_question() {
        let text = prompt("What is 2+2?");
        assert!(text.starts_with("Q: There are 15 trees in the grove."));
        assert!(text.contains("The answer is 6.\n\nQ: If there are 3 cars"));
        assert!(text.ends_with("The answer is 8.\n\nQ: What is 2+2?\nA:"));
    }

    #[test]
    fn filters_and_exact_match_follow_lm_eval() {
        let completion = " She has 16 - 3 - 4 = 9 eggs. 9 * $2 = $18. The answer is 18.\n\n";
        assert_eq!(strict_match(completion), "18");
        assert_eq!(flexible_extract(completion), "18.");
        assert!(exact_match("18.", "18") && exact_match("$1,000", "1000") && !exact_match("17", "18"));
        assert_eq!(strict_match("no answer here"), INVALID);
        assert_eq!(flexible_extract("x = 5"), "5");
        assert_eq!(flexible_extract("nothing"), INVALID);
    }
}
