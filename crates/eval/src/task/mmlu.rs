//! MMLU exactly as lm-evaluation-harness's `mmlu` task (default template) asks it.
//!
//! ```text
//! The following are multiple choice questions (with answers) about {subject}.\n\n
//! {dev question.strip()}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer: {letter}\n\n   (k times)
//! {test question.strip()}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:
//! ```
//! scored against the continuations ` A`, ` B`, ` C`, ` D`; the prediction is the most likely one.
//! Following lm-eval keeps our accuracy comparable with published numbers.

use anyhow::Result;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::{Request, encode_pair, python_strip};
use crate::dataset::mmlu::{LETTERS, Question, Subject};

/// One scored question: which subject, which test row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub subject: String,
    /// 0-based row in the subject's test CSV.
    pub index: usize,
    pub gold: usize,
}

/// An item's outcome: the log-probability of each choice and the argmax.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemResult {
    pub subject: String,
    pub index: usize,
    pub gold: usize,
    pub pred: usize,
    pub logprobs: [f32; 4],
}

impl ItemResult {
    pub fn correct(&self) -> bool {
        self.gold == self.pred
    }
}

pub fn description(subject: &str) -> String {
    format!("The following are multiple choice questions (with answers) about {}.\n\n", subject.replace('_', " "))
}

/// lm-eval's `doc_to_text`: the question and its choices, ending in `Answer:`.
pub fn question_text(q: &Question) -> String {
    format!(
        "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
        python_strip(&q.question),
        q.choices[0],
        q.choices[1],
        q.choices[2],
        q.choices[3]
    )
}

/// The full context of one test question: description, few-shot examples, question.
pub fn prompt(subject: &str, fewshot: &[Question], question: &Question) -> String {
    let mut text = description(subject);
    for example in fewshot {
        // target_delimiter " ", then the answer letter, then fewshot_delimiter "\n\n".
        text.push_str(&question_text(example));
        text.push(' ');
        text.push_str(LETTERS[example.answer]);
        text.push_str("\n\n");
    }
    text.push_str(&question_text(question));
    text
}

/// The items of the loaded subjects, in subject order then row order.
pub fn items(subjects: &[Subject]) -> Vec<Item> {
    subjects
        .iter()
        .flat_map(|s| {
            s.test.iter().enumerate().map(|(index, q)| Item { subject: s.name.clone(), index, gold: q.answer })
        })
        .collect()
}

/// Four requests per item (continuations ` A` .. ` D`), tokenized in parallel.
pub fn requests(subjects: &[Subject], tokenizer: &Tokenizer) -> Result<Vec<Request>> {
    let questions: Vec<(&Subject, &Question)> =
        subjects.iter().flat_map(|s| s.test.iter().map(move |q| (s, q))).collect();
    let per_item: Vec<Vec<Request>> = questions
        .par_iter()
        .enumerate()
        .map(|(item, (subject, question))| {
            let context = prompt(&subject.name, &subject.fewshot, question);
            LETTERS
                .iter()
                .enumerate()
                .map(|(choice, letter)| {
                    let (context, continuation) = encode_pair(tokenizer, &context, &format!(" {letter}"))?;
                    Ok(Request { item, choice, context, continuation })
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    Ok(per_item.into_iter().flatten().collect())
}

/// lm-eval's `acc`: argmax of the choices' log-likelihoods, the first on a tie.
pub fn predict(logprobs: &[f32; 4]) -> usize {
    let mut best = 0;
    for (i, lp) in logprobs.iter().enumerate() {
        if *lp > logprobs[best] {
            best = i;
        }
    }
    best
}

/// Accuracy over a set of items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub n: usize,
    pub accuracy: f64,
    /// lm-eval's sample standard error of the mean: sqrt(p(1-p)/(n-1)); `None` below two items.
    pub stderr: Option<f64>,
}

pub fn accuracy<'a>(results: impl IntoIterator<Item = &'a ItemResult>) -> Accuracy {
    let (mut n, mut correct) = (0usize, 0usize);
    for r in results {
        n += 1;
        correct += r.correct() as usize;
    }
    let p = if n == 0 { 0.0 } else { correct as f64 / n as f64 };
    let stderr = (n > 1).then(|| (p * (1.0 - p) / (n - 1) as f64).sqrt());
    Accuracy { n, accuracy: p, stderr }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(text: &str, answer: usize) -> Question {
        Question { question: text.into(), choices: ["w".into(), "x".into(), "y".into(), "z".into()], answer }
    }

    #[test]
    fn zero_shot_prompt_is_lm_evals() {
        let text = prompt("high_school_us_history", &[], &question("  Who?\n", 0));
        assert_eq!(
            text,
            "The following are multiple choice questions (with answers) about high school us history.\n\n\
             Who?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
        );
    }

    #[test]
    fn few_shot_examples_end_in_their_letter_and_a_blank_line() {
        let shots = [question("One?", 2), question("Two?", 3)];
        let text = prompt("anatomy", &shots, &question("Three?", 0));
        assert_eq!(
            text,
            "The following are multiple choice questions (with answers) about anatomy.\n\n\
             One?\nA. w\nB. x\nC. y\nD. z\nAnswer: C\n\n\
             Two?\nA. w\nB. x\nC. y\nD. z\nAnswer: D\n\n\
             Three?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
        );
    }

    #[test]
    fn prediction_takes_the_first_best() {
        assert_eq!(predict(&[-2.0, -1.0, -1.0, -3.0]), 1);
        assert_eq!(predict(&[-1.0, -1.0, -1.0, -1.0]), 0);
    }
}
