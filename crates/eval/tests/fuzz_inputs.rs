//! Bounded random-input tests of the runner's readers of user files: job YAML, task definitions
//! and data rows (JSON Lines, CSV, HellaSwag's text form, TruthfulQA's JSON). Each case mutates a
//! valid file with a fixed seed (flipped bytes, overwritten runs, truncation, deep nesting) and
//! loads it: an error is fine, a panic is not. `fuzz/` holds cargo-fuzz targets for longer runs.

#[path = "../../engine/tests/common.rs"]
mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use airllm_eval::dataset::rows::read_rows;
use airllm_eval::job::{Job, parse_spec};
use airllm_eval::task::{hellaswag, registry, truthfulqa};
use common::Rng;

/// Changes a few bytes of `text` in ways that hit parsers: syntax characters, deletions,
/// duplications, truncation; the result may not be UTF-8.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    const SYNTAX: &[u8] = b"{}[]:,\"'\n -#&*!|>%@`\\\t0";
    for _ in 0..=rng.below(3) {
        if bytes.is_empty() {
            return;
        }
        let at = rng.below(bytes.len());
        match rng.below(5) {
            0 => bytes[at] = SYNTAX[rng.below(SYNTAX.len())],
            1 => {
                bytes.remove(at);
            }
            2 => {
                let end = (at + rng.below(40)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
            3 => bytes.truncate(at),
            _ => bytes[at] = rng.next_u64() as u8,
        }
    }
}

fn fuzz(name: &str, seed: &str, count: usize, path: &Path, mut case: impl FnMut(&Path)) {
    let mut rng = Rng(0x2545_f491 ^ name.len() as u64);
    for i in 0..count {
        let mut bytes = seed.as_bytes().to_vec();
        mutate(&mut rng, &mut bytes);
        std::fs::write(path, &bytes).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| case(path)));
        assert!(outcome.is_ok(), "{name} case {i}: a panic on {:?}", String::from_utf8_lossy(&bytes));
    }
}

const JOB: &str = "model:\n  source: m.gguf\n  sha256: ab\nbackend:\n  name: cpu\n  precision: f32\nmemory:\n  activation_budget: 2GiB\n  kv_budget: 1GiB\n\
                   output: out\nthresholds:\n  mmlu: {acc: 0.25}\ntasks:\n  - name: arc_easy\n    limit: 3\n  - name: mine\n    path: rows.jsonl\n    define:\n      \
                   doc_to_text: \"Q: {{q}}\"\n      doc_to_choice: \"{{c}}\"\n      doc_to_target: \"{{a}}\"\n      metrics: [acc]\n";
const ROWS: &str = "{\"q\": \"x\", \"c\": [\"a\", \"b\"], \"a\": 1}\n{\"q\": \"y\", \"c\": [\"a\"], \"a\": \"a\"}\n";

#[test]
fn job_files_and_task_definitions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rows.jsonl"), ROWS).unwrap();
    let path = dir.path().join("job.yaml");
    fuzz("job yaml", JOB, 3000, &path, |path| {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
        let _ = parse_spec(&text);
        if let Ok(job) = Job::load(path) {
            let _ = registry::load(&job);
        }
    });
}

#[test]
fn data_rows() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "q,answer\n\"two\nlines\",B\nx,C\n";
    fuzz("jsonl rows", ROWS, 2000, &dir.path().join("d.jsonl"), |p| drop(read_rows(p)));
    fuzz("csv rows", csv, 2000, &dir.path().join("d.csv"), |p| drop(read_rows(p)));
    let hellaswag = "Label: ctx. he\n3\na.\nb.\nc.\nd.\nX: y\n0\n1\n2\n3\n4\n";
    fuzz("hellaswag", hellaswag, 1000, &dir.path().join("h.txt"), |p| drop(hellaswag::task(p, None, 0)));
    let mc = r#"[{"question": "Q?", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "b": 0}}]"#;
    fuzz("truthfulqa", mc, 1000, &dir.path().join("mc.json"), |p| {
        drop(truthfulqa::task(truthfulqa::Variant::Mc2, p, None, 0))
    });
}
