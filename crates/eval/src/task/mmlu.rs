//! MMLU exactly as lm-evaluation-harness's `mmlu` group (default template) asks it: one task
//! `mmlu_<subject>` per subject, in the groups `mmlu` and `mmlu_<category>`.
//!
//! ```text
//! The following are multiple choice questions (with answers) about {subject}.\n\n
//! {dev question.strip()}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer: {letter}\n\n   (k times)
//! {test question.strip()}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:
//! ```
//! scored against the continuations ` A`, ` B`, ` C`, ` D` with `acc`. Few-shot examples are the
//! first k dev rows (lm-eval's `first_n` sampler).

use std::path::Path;

use anyhow::{Result, bail};

use super::metrics::Metric;
use super::{ChoiceDoc, Doc, Task, fewshot_context, python_strip};
use crate::dataset::mmlu::{self as data, LETTERS, Question};

/// lm-eval's `_generate_configs.py` SUBJECTS: each subject's category group.
const CATEGORIES: [(&str, &str); 57] = [
    ("abstract_algebra", "stem"),
    ("anatomy", "stem"),
    ("astronomy", "stem"),
    ("business_ethics", "other"),
    ("clinical_knowledge", "other"),
    ("college_biology", "stem"),
    ("college_chemistry", "stem"),
    ("college_computer_science", "stem"),
    ("college_mathematics", "stem"),
    ("college_medicine", "other"),
    ("college_physics", "stem"),
    ("computer_security", "stem"),
    ("conceptual_physics", "stem"),
    ("econometrics", "social_sciences"),
    ("electrical_engineering", "stem"),
    ("elementary_mathematics", "stem"),
    ("formal_logic", "humanities"),
    ("global_facts", "other"),
    ("high_school_biology", "stem"),
    ("high_school_chemistry", "stem"),
    ("high_school_computer_science", "stem"),
    ("high_school_european_history", "humanities"),
    ("high_school_geography", "social_sciences"),
    ("high_school_government_and_politics", "social_sciences"),
    ("high_school_macroeconomics", "social_sciences"),
    ("high_school_mathematics", "stem"),
    ("high_school_microeconomics", "social_sciences"),
    ("high_school_physics", "stem"),
    ("high_school_psychology", "social_sciences"),
    ("high_school_statistics", "stem"),
    ("high_school_us_history", "humanities"),
    ("high_school_world_history", "humanities"),
    ("human_aging", "other"),
    ("human_sexuality", "social_sciences"),
    ("international_law", "humanities"),
    ("jurisprudence", "humanities"),
    ("logical_fallacies", "humanities"),
    ("machine_learning", "stem"),
    ("management", "other"),
    ("marketing", "other"),
    ("medical_genetics", "other"),
    ("miscellaneous", "other"),
    ("moral_disputes", "humanities"),
    ("moral_scenarios", "humanities"),
    ("nutrition", "other"),
    ("philosophy", "humanities"),
    ("prehistory", "humanities"),
    ("professional_accounting", "other"),
    ("professional_law", "humanities"),
    ("professional_medicine", "other"),
    ("professional_psychology", "social_sciences"),
    ("public_relations", "social_sciences"),
    ("security_studies", "social_sciences"),
    ("sociology", "social_sciences"),
    ("us_foreign_policy", "social_sciences"),
    ("virology", "other"),
    ("world_religions", "humanities"),
];

/// The category of a subject (`other` for a subject lm-eval does not list).
pub fn category(subject: &str) -> &'static str {
    CATEGORIES.iter().find(|(s, _)| *s == subject).map_or("other", |(_, c)| c)
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
    let shots: Vec<(String, String)> =
        fewshot.iter().map(|q| (question_text(q), LETTERS[q.answer].to_string())).collect();
    fewshot_context(&description(subject), &shots, &question_text(question), " ", "\n\n")
}

/// The task `mmlu_<subject>`: the first `limit` test rows, each with `num_fewshot` dev examples.
pub fn subject_task(
    root: &Path,
    subject: &str,
    num_fewshot: usize,
    limit: Option<usize>,
    entry: usize,
) -> Result<Task> {
    let test_file = data::test_file(root, subject);
    let test = data::read_questions(&test_file, None)?;
    let fewshot = if num_fewshot == 0 {
        Vec::new()
    } else {
        let path = data::dev_file(root, subject);
        let dev = data::read_questions(&path, Some(num_fewshot))?;
        if dev.len() < num_fewshot {
            bail!("{}: {num_fewshot}-shot asked but the file has only {} rows", path.display(), dev.len());
        }
        dev
    };
    let docs = test.iter().map(|q| {
        Ok(Doc::Choice(ChoiceDoc {
            context: prompt(subject, &fewshot, q),
            choices: LETTERS.iter().map(|l| l.to_string()).collect(),
            gold: q.answer,
            labels: Vec::new(),
        }))
    });
    let task = Task {
        num_fewshot,
        groups: vec!["mmlu".into(), format!("mmlu_{}", category(subject))],
        ..Task::new(&format!("mmlu_{subject}"), "1.0", vec![Metric::Acc], test_file, entry)
    };
    task.with_docs(test.len(), docs, limit)
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
    fn every_shipped_subject_has_a_category() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mmlu");
        for subject in data::available_subjects(&root).unwrap() {
            assert!(CATEGORIES.iter().any(|(s, _)| *s == subject), "{subject}");
        }
    }
}
