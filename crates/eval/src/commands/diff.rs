//! `airllm-eval diff RUN_A RUN_B`: per-task metric deltas between two finished (or merged) runs,
//! with the paired standard error over the documents both scored: the comparison a model or
//! quantisation change needs, where two independent error bars would hide a real difference.
//!
//! Means (`acc`, `acc_norm`) are compared document by document: delta = mean(B - A) over the
//! documents both runs have, stderr = sample stddev of the differences / sqrt(n); groups pool
//! their tasks' documents. Ratio metrics (perplexities) are compared as the two summary values,
//! without an error. It says when the runs' models, numerics or documents differ.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::outputs::{DOCS, JOB, RESULTS, SUMMARY};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The baseline run's output folder.
    pub a: PathBuf,
    /// The run compared with it.
    pub b: PathBuf,
}

/// One finished run, as its files say.
struct Run {
    /// (task, metric) -> (document -> value).
    per_doc: BTreeMap<(String, String), HashMap<String, f64>>,
    /// (task or group, metric) -> value, in summary order.
    summary: Vec<((String, String), f64)>,
    groups: BTreeMap<String, Vec<String>>,
    identity: Value,
}

/// One line of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub task: String,
    pub metric: String,
    /// Documents both runs scored (0 for a ratio metric).
    pub n: usize,
    pub a: f64,
    pub b: f64,
    pub delta: f64,
    pub stderr: Option<f64>,
}

pub fn run(args: DiffArgs) -> Result<()> {
    let (a, b) = (read_run(&args.a)?, read_run(&args.b)?);
    for line in identity_differences(&a.identity, &b.identity) {
        println!("note: {line}");
    }
    let deltas = compare(&a, &b);
    let width = deltas.iter().map(|d| d.task.len()).max().unwrap_or(4).max(4);
    println!(
        "|{:<width$}|{:<15}|{:>6}|{:>10}|{:>10}|{:>10}|   |{:>8}|",
        "Task", "Metric", "n", "A", "B", "B - A", "Stderr"
    );
    println!("|{}|{}|-----:|---------:|---------:|---------:|---|-------:|", "-".repeat(width), "-".repeat(15));
    for d in &deltas {
        let stderr = d.stderr.map_or_else(|| "N/A".to_string(), |s| format!("{s:.4}"));
        println!(
            "|{:<width$}|{:<15}|{:>6}|{:>10.4}|{:>10.4}|{:>+10.4}|±  |{stderr:>8}|",
            d.task, d.metric, d.n, d.a, d.b, d.delta
        );
    }
    Ok(())
}

fn read_run(dir: &Path) -> Result<Run> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let mut per_doc: BTreeMap<(String, String), HashMap<String, f64>> = BTreeMap::new();
    let docs_text = read(DOCS)?;
    let mut docs = csv::Reader::from_reader(docs_text.as_bytes());
    let header = docs.headers()?.clone();
    for record in docs.records() {
        let record = record?;
        for (i, metric) in header.iter().enumerate().skip(4) {
            if let Ok(value) = record[i].parse::<f64>() {
                per_doc
                    .entry((record[0].to_string(), metric.to_string()))
                    .or_default()
                    .insert(record[1].to_string(), value);
            }
        }
    }
    let mut summary = Vec::new();
    let summary_text = read(SUMMARY)?;
    for record in csv::Reader::from_reader(summary_text.as_bytes()).records() {
        let record = record?;
        summary.push(((record[0].to_string(), record[1].to_string()), record[3].parse::<f64>()?));
    }
    let results: Value = serde_json::from_str(&read(RESULTS)?)?;
    let groups = serde_json::from_value(results["group_subtasks"].clone()).unwrap_or_default();
    let job: Value = serde_json::from_str(&read(JOB)?)?;
    Ok(Run { per_doc, summary, groups, identity: job["identity"].clone() })
}

/// What differs between the runs' models and numerics, as sentences.
fn identity_differences(a: &Value, b: &Value) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> =
        a.as_object().into_iter().chain(b.as_object()).flat_map(|m| m.keys()).collect();
    keys.into_iter()
        .filter(|k| a[k.as_str()] != b[k.as_str()])
        .map(|k| format!("the runs differ in {k}: A {} B {}", a[k.as_str()], b[k.as_str()]))
        .collect()
}

/// Every (task or group, metric) both runs report, in A's summary order.
fn compare(a: &Run, b: &Run) -> Vec<Delta> {
    let b_summary: HashMap<&(String, String), f64> = b.summary.iter().map(|(k, v)| (k, *v)).collect();
    a.summary
        .iter()
        .filter_map(|(key, a_value)| {
            let b_value = *b_summary.get(key)?;
            let (task, metric) = key;
            let members = a.groups.get(task).cloned().unwrap_or_else(|| vec![task.clone()]);
            let pairs = paired(a, b, &members, metric);
            let base = Delta {
                task: task.clone(),
                metric: metric.clone(),
                n: 0,
                a: *a_value,
                b: b_value,
                delta: b_value - a_value,
                stderr: None,
            };
            Some(if pairs.is_empty() || !is_mean(metric) { base } else { paired_delta(base, &pairs) })
        })
        .collect()
}

fn is_mean(metric: &str) -> bool {
    matches!(metric, "acc" | "acc_norm")
}

/// (A, B) values of the documents of `tasks` both runs scored.
fn paired(a: &Run, b: &Run, tasks: &[String], metric: &str) -> Vec<(f64, f64)> {
    let mut pairs = Vec::new();
    for task in tasks {
        let key = (task.clone(), metric.to_string());
        let (Some(a_docs), Some(b_docs)) = (a.per_doc.get(&key), b.per_doc.get(&key)) else { continue };
        let mut docs: Vec<&String> = a_docs.keys().filter(|d| b_docs.contains_key(*d)).collect();
        docs.sort();
        pairs.extend(docs.into_iter().map(|d| (a_docs[d], b_docs[d])));
    }
    pairs
}

/// Means over the paired documents and the paired standard error of their difference.
fn paired_delta(base: Delta, pairs: &[(f64, f64)]) -> Delta {
    let n = pairs.len() as f64;
    let a = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let b = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let diffs: Vec<f64> = pairs.iter().map(|(x, y)| y - x).collect();
    let delta = b - a;
    let stderr = (pairs.len() > 1).then(|| {
        let variance = diffs.iter().map(|d| (d - delta).powi(2)).sum::<f64>() / (n - 1.0);
        variance.sqrt() / n.sqrt()
    });
    Delta { n: pairs.len(), a, b, delta, stderr, ..base }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_error_is_over_the_differences() {
        let base = Delta { task: "t".into(), metric: "acc".into(), n: 0, a: 0.0, b: 0.0, delta: 0.0, stderr: None };
        let same = paired_delta(base.clone(), &[(1.0, 1.0), (0.0, 0.0), (1.0, 1.0)]);
        assert_eq!((same.delta, same.stderr), (0.0, Some(0.0)));
        let d = paired_delta(base, &[(1.0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0)]);
        assert_eq!((d.n, d.a, d.b, d.delta), (4, 0.5, 0.5, 0.0));
        // differences -1, 0, 0, 1: sample variance 2/3, stderr sqrt(2/3)/2
        assert!((d.stderr.unwrap() - (2.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
    }
}
