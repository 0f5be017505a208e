//! Rows of a JSON Lines file (one object a line) or of a CSV file with a header (every field a
//! string), each with the line it starts on, so that a bad row is reported as `file:line`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// One row of a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line the row starts on.
    pub line: u64,
    pub fields: Map<String, Value>,
}

/// Reads every row of `path`: `.csv` as CSV with a header, anything else as JSON Lines (blank
/// lines skipped).
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv { csv_rows(path, &text) } else { jsonl_rows(path, &text) }
}

fn jsonl_rows(path: &Path, text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_number = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{line_number}: not a JSON line: {e}", path.display()))?;
        let Value::Object(fields) = value else {
            bail!("{}:{line_number}: a row must be a JSON object, found {}", path.display(), kind(&value));
        };
        rows.push(Row { line: line_number, fields });
    }
    Ok(rows)
}

fn csv_rows(path: &Path, text: &str) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let header = reader.headers().with_context(|| format!("{}:1: reading the CSV header", path.display()))?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            anyhow::anyhow!("{}:{line}: {e}", path.display())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let fields = header.iter().zip(record.iter()).map(|(k, v)| (k.to_string(), Value::from(v))).collect();
        rows.push(Row { line, fields });
    }
    Ok(rows)
}

/// `an array`, `a string`, ... for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, text: &str) -> Result<Vec<Row>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        read_rows(&path)
    }

    #[test]
    fn jsonl_rows_keep_their_lines() {
        let rows = read("d.jsonl", "{\"a\": 1}\n\n{\"a\": [2]}\n").unwrap();
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(rows[1].fields["a"], serde_json::json!([2]));
    }

    #[test]
    fn bad_jsonl_lines_are_named() {
        let err = read("d.jsonl", "{\"a\": 1}\n{oops\n").unwrap_err().to_string();
        assert!(err.contains("d.jsonl:2: not a JSON line"), "{err}");
        let err = read("d.jsonl", "[1, 2]\n").unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1: a row must be a JSON object, found an array"), "{err}");
    }

    #[test]
    fn csv_rows_use_the_header() {
        let rows = read("d.csv", "q,answer\n\"two\nlines\",B\nx,C\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].fields["q"], "two\nlines");
        assert_eq!((rows[0].line, rows[1].line), (2, 4));
        let err = read("d.csv", "q,answer\nx,B,extra\n").unwrap_err().to_string();
        assert!(err.contains("d.csv:2:"), "{err}");
    }
}
