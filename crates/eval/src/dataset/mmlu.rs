//! MMLU in its original CSV layout: `dev/{subject}_dev.csv` (few-shot examples) and
//! `test/{subject}_test.csv`, each row `question,A,B,C,D,answer-letter`, no header.
//!
//! Fields may be quoted and hold newlines, so rows are read with the csv crate, and a bad row is
//! reported by the line it starts on.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub question: String,
    pub choices: [String; 4],
    /// Index of the right choice (0 = A).
    pub answer: usize,
}

pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Subjects present in `root/test/`, sorted.
pub fn available_subjects(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("test");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("reading MMLU folder {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.with_context(|| format!("reading {}", dir.display()))?.file_name();
        if let Some(subject) = name.to_str().and_then(|n| n.strip_suffix("_test.csv")) {
            names.push(subject.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("{}: no *_test.csv files: not an MMLU folder", dir.display());
    }
    Ok(names)
}

pub fn test_file(root: &Path, subject: &str) -> PathBuf {
    root.join("test").join(format!("{subject}_test.csv"))
}

pub fn dev_file(root: &Path, subject: &str) -> PathBuf {
    root.join("dev").join(format!("{subject}_dev.csv"))
}

/// Reads the first `limit` rows (all when `None`) of a question CSV.
pub fn read_questions(path: &Path, limit: Option<usize>) -> Result<Vec<Question>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes.as_slice());
    let mut questions = Vec::new();
    for record in reader.records() {
        if limit.is_some_and(|n| questions.len() >= n) {
            break;
        }
        let record = record.map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), csv_line(&e)))?;
        let line = record.position().map_or(0, |p| p.line());
        let question = parse_row(&record).map_err(|e| anyhow::anyhow!("{}:{line}: {e}", path.display()))?;
        questions.push(question);
    }
    Ok(questions)
}

fn csv_line(error: &csv::Error) -> u64 {
    error.position().map_or(0, |p| p.line())
}

fn parse_row(record: &csv::StringRecord) -> Result<Question, String> {
    if record.len() != 6 {
        return Err(format!("expected 6 fields (question, A, B, C, D, answer letter), found {}", record.len()));
    }
    let letter = record[5].trim();
    let answer = LETTERS
        .iter()
        .position(|l| *l == letter)
        .ok_or_else(|| format!("answer must be one of A, B, C, D; found `{letter}`"))?;
    Ok(Question { question: record[0].to_string(), choices: [1, 2, 3, 4].map(|i| record[i].to_string()), answer })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<Question>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x_test.csv");
        std::fs::write(&path, text).unwrap();
        read_questions(&path, None)
    }

    #[test]
    fn quoted_fields_and_newlines() {
        let rows = read("\"What is\n2+2?\",3,4,\"5, or 6\",7,B\nNext,a,b,c,d,D\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].question, "What is\n2+2?");
        assert_eq!(rows[0].choices[2], "5, or 6");
        assert_eq!(rows[0].answer, 1);
        assert_eq!(rows[1].answer, 3);
    }

    #[test]
    fn malformed_row_names_file_and_line() {
        let err = read("\"multi\nline\",a,b,c,d,A\nshort,a,b,A\n").unwrap_err().to_string();
        assert!(
            err.ends_with("x_test.csv:3: expected 6 fields (question, A, B, C, D, answer letter), found 4"),
            "{err}"
        );
        let err = read("q,a,b,c,d,E\n").unwrap_err().to_string();
        assert!(err.contains("x_test.csv:1: answer must be one of A, B, C, D; found `E`"), "{err}");
    }

    #[test]
    fn shipped_dataset_has_all_rows() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mmlu");
        let subjects = available_subjects(&root).unwrap();
        assert_eq!(subjects.len(), 57);
        let (mut dev, mut test) = (0, 0);
        for name in &subjects {
            test += read_questions(&test_file(&root, name), None).unwrap().len();
            dev += read_questions(&dev_file(&root, name), None).unwrap().len();
        }
        assert_eq!((dev, test), (285, 14_042));
    }
}
