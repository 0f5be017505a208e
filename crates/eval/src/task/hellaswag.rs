//! HellaSwag from llama.cpp's text form of the validation set (`hellaswag_val_full.txt`): six
//! lines a task, the preprocessed context (`activity_label: ctx`), the gold label 0-3, then the
//! four endings.
//!
//! The document is lm-eval 0.4.13's `hellaswag` document made from those lines: context = line 1
//! as is, choices = the endings as is, target delimiter " ", metrics `acc` and `acc_norm`. The
//! file has lost the split of the context into `ctx_a` and `ctx_b`, which lm-eval capitalises, so
//! absolute numbers may differ slightly from lm-eval's run on the original JSON Lines.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::metrics::Metric;
use super::{ChoiceDoc, Doc, Task};

const LINES_PER_TASK: usize = 6;

/// Reads the file into the task `hellaswag`, keeping the first `limit` tasks.
pub fn task(path: &Path, limit: Option<usize>, entry: usize) -> Result<Task> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    if !lines.len().is_multiple_of(LINES_PER_TASK) {
        bail!(
            "{}:{}: the file ends inside a task: {} lines is not a multiple of {LINES_PER_TASK} \
             (context, gold label, four endings)",
            path.display(),
            lines.len(),
            lines.len()
        );
    }
    let docs = lines.chunks(LINES_PER_TASK).enumerate().map(|(row, chunk)| {
        let label_line = row * LINES_PER_TASK + 2;
        let gold = chunk[1].trim().parse::<usize>().ok().filter(|g| *g < 4).ok_or_else(|| {
            anyhow::anyhow!("{}:{label_line}: the gold label must be 0-3, found `{}`", path.display(), chunk[1])
        })?;
        let choices = chunk[2..].iter().map(|s| s.to_string()).collect();
        Ok(Doc::Choice(ChoiceDoc { context: chunk[0].to_string(), choices, gold, labels: Vec::new() }))
    });
    let task = Task::new("hellaswag", "1.0", vec![Metric::Acc, Metric::AccNorm], path.to_path_buf(), entry);
    task.with_docs(lines.len() / LINES_PER_TASK, docs, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Task> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hs.txt");
        std::fs::write(&path, text).unwrap();
        task(&path, None, 0)
    }

    #[test]
    fn six_lines_a_task() {
        let task = load("Label: ctx. he\n3\na.\nb.\nc.\nd.\nX: y\n0\n1\n2\n3\n4\n").unwrap();
        assert_eq!(task.docs.len(), 2);
        let Doc::Choice(doc) = &task.docs[0].doc else { panic!() };
        assert_eq!((doc.context.as_str(), doc.gold, doc.choices[3].as_str()), ("Label: ctx. he", 3, "d."));
    }

    #[test]
    fn bad_label_and_torn_file_are_named() {
        let err = load("X: y\n0\n1\n2\n3\n4\nZ: w\n7\n1\n2\n3\n4\n").unwrap_err().to_string();
        assert!(err.contains("hs.txt:8: the gold label must be 0-3, found `7`"), "{err}");
        let err = load("X: y\n0\n1\n2\n").unwrap_err().to_string();
        assert!(err.contains("hs.txt:4: the file ends inside a task"), "{err}");
    }
}
