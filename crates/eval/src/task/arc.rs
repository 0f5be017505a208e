//! ARC (`arc_easy`, `arc_challenge`) as lm-eval 0.4.13's registered tasks ask it, read from the
//! original AI2 JSON Lines (`{"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}`):
//!
//! ```text
//! Question: {stem}\nAnswer:        choices: " {text}" for each choice; gold: the answerKey's label
//! ```
//! Labels are letters or, in some rows, digits `1`-`4`: the gold choice is found by label, never
//! by assuming letters. Metrics `acc` and `acc_norm`.

use std::path::Path;

use anyhow::{Result, bail};
use serde_json::Value;

use super::metrics::Metric;
use super::{ChoiceDoc, Doc, Task};
use crate::dataset::rows::{Row, kind, read_rows};

/// Reads an ARC file into the task `name`, keeping the first `limit` rows.
pub fn task(name: &str, path: &Path, limit: Option<usize>, entry: usize) -> Result<Task> {
    let rows = read_rows(path)?;
    let docs = rows
        .iter()
        .map(|fields| document(fields).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), fields.line)));
    Task::new(name, "1.0", vec![Metric::Acc, Metric::AccNorm], path.to_path_buf(), entry).with_docs(
        rows.len(),
        docs,
        limit,
    )
}

fn document(row: &Row) -> Result<Doc> {
    let question = row.fields.get("question").ok_or_else(|| anyhow::anyhow!("field `question` is missing"))?;
    let stem = string(question.get("stem"), "question.stem")?;
    let Some(Value::Array(choices)) = question.get("choices") else {
        bail!("field `question.choices` must be a list of {{text, label}}");
    };
    if choices.is_empty() {
        bail!("field `question.choices` is empty");
    }
    let mut texts = Vec::with_capacity(choices.len());
    let mut labels = Vec::with_capacity(choices.len());
    for (i, choice) in choices.iter().enumerate() {
        texts.push(string(choice.get("text"), &format!("question.choices[{i}].text"))?.to_string());
        labels.push(string(choice.get("label"), &format!("question.choices[{i}].label"))?);
    }
    let answer = string(row.fields.get("answerKey"), "answerKey")?;
    let Some(gold) = labels.iter().position(|l| *l == answer) else {
        bail!("answerKey `{answer}` is not one of the choice labels {}", labels.join(", "));
    };
    Ok(Doc::Choice(ChoiceDoc {
        context: format!("Question: {stem}\nAnswer:"),
        choices: texts,
        gold,
        labels: Vec::new(),
    }))
}

fn string<'a>(value: Option<&'a Value>, field: &str) -> Result<&'a str> {
    match value {
        Some(Value::String(s)) => Ok(s),
        Some(other) => bail!("field `{field}` must be a string, found {}", kind(other)),
        None => bail!("field `{field}` is missing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Task> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arc.jsonl");
        std::fs::write(&path, text).unwrap();
        task("arc_easy", &path, None, 0)
    }

    const ROW: &str = r#"{"id":"x","question":{"stem":"Why?","choices":[{"text":"a","label":"1"},{"text":"b","label":"2"}]},"answerKey":"2"}"#;

    #[test]
    fn digit_labels_map_by_label() {
        let task = load(&format!("{ROW}\n")).unwrap();
        let Doc::Choice(doc) = &task.docs[0].doc else { panic!() };
        assert_eq!(doc.context, "Question: Why?\nAnswer:");
        assert_eq!(doc.choices, ["a", "b"]);
        assert_eq!(doc.gold, 1);
    }

    #[test]
    fn bad_rows_are_named_by_line() {
        let err = load(&format!("{ROW}\n{}\n", ROW.replace(r#""answerKey":"2""#, r#""answerKey":"E""#)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("arc.jsonl:2: answerKey `E` is not one of the choice labels 1, 2"), "{err}");
        let err = load(r#"{"question":{"stem":"Q","choices":[]},"answerKey":"A"}"#).unwrap_err().to_string();
        assert!(err.contains("arc.jsonl:1: field `question.choices` is empty"), "{err}");
    }
}
