//! From every document's responses to the result files and the printed table.
//!
//! Rows come in the job's task order (documents in file order), groups before their tasks, so a
//! finished job writes the same bytes however its waves ran or how often it was resumed.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::outputs::csv_field;
use crate::task::metrics::{Aggregate, Metric, Sample, first_argmax, pool};
use crate::task::{Doc, Response, Task, gsm8k};

/// One line of summary.csv and of the printed table.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub task: String,
    /// `None` for a group.
    pub num_fewshot: Option<usize>,
    pub metric: &'static str,
    /// results.json's keys for the value and its error.
    pub keys: (String, String),
    pub higher_is_better: bool,
    pub aggregate: Aggregate,
}

/// The contents of the final files.
pub struct Report {
    pub summary: Vec<SummaryRow>,
    pub requests_csv: String,
    pub rolling_csv: String,
    pub generations_csv: String,
    pub docs_csv: String,
    pub summary_csv: String,
    pub results_json: Value,
}

/// What every document scored: `responses[t][d]` for document `d` of task `t`, for rolling
/// documents the number of tokens scored, and for generated ones their completion.
pub struct Scores {
    pub responses: Vec<Vec<Vec<Response>>>,
    pub tokens: Vec<Vec<usize>>,
    pub completions: Vec<Vec<Option<String>>>,
}

/// Builds every table. `identity` goes into results.json as is (model, job hash, versions).
pub fn build(tasks: &[Task], scores: &Scores, identity: Value) -> Report {
    let samples: Vec<Vec<Vec<Sample>>> = tasks
        .iter()
        .zip(&scores.responses)
        .enumerate()
        .map(|(t, (task, responses))| {
            let completions = &scores.completions[t];
            task.docs
                .iter()
                .zip(responses)
                .zip(completions)
                .map(|((d, r), c)| task.metrics.iter().map(|m| m.sample(&d.doc, r, c.as_deref())).collect())
                .collect()
        })
        .collect();
    let summary = summarize(tasks, &samples);
    Report {
        requests_csv: requests_csv(tasks, scores),
        rolling_csv: rolling_csv(tasks, scores),
        generations_csv: generations_csv(tasks, scores, &samples),
        docs_csv: docs_csv(tasks, scores, &samples),
        summary_csv: summary_csv(&summary),
        results_json: results_json(tasks, &summary, identity),
        summary,
    }
}

fn requests_csv(tasks: &[Task], scores: &Scores) -> String {
    let mut text = String::from("task,doc,choice,loglikelihood,is_greedy\n");
    for (task, responses) in tasks.iter().zip(&scores.responses) {
        for (document, responses) in task.docs.iter().zip(responses) {
            if let Doc::Choice(_) = document.doc {
                for (choice, r) in responses.iter().enumerate() {
                    let name = csv_field(&task.name);
                    text.push_str(&format!(
                        "{name},{},{choice},{},{}\n",
                        document.row, r.loglikelihood, r.is_greedy as u8
                    ));
                }
            }
        }
    }
    text
}

fn rolling_csv(tasks: &[Task], scores: &Scores) -> String {
    let mut text = String::from("task,doc,loglikelihood,tokens,words,bytes\n");
    for (t, task) in tasks.iter().enumerate() {
        for (d, document) in task.docs.iter().enumerate() {
            if let Doc::Rolling(r) = &document.doc {
                let ll = scores.responses[t][d][0].loglikelihood;
                let tokens = scores.tokens[t][d];
                text.push_str(&format!(
                    "{},{},{ll},{tokens},{},{}\n",
                    csv_field(&task.name),
                    document.row,
                    r.words,
                    r.bytes
                ));
            }
        }
    }
    text
}

/// generations.csv: each generated document's completion, the answers the two filters take from
/// it, the gold answer, and `exact_match` of the strict answer then of the flexible one.
fn generations_csv(tasks: &[Task], scores: &Scores, samples: &[Vec<Vec<Sample>>]) -> String {
    let mut text = String::from("task,doc,completion,strict,flexible,gold,exact_match,exact_match_flexible\n");
    for (t, task) in tasks.iter().enumerate() {
        for (d, document) in task.docs.iter().enumerate() {
            let Doc::Generate(g) = &document.doc else { continue };
            let completion = scores.completions[t][d].as_deref().unwrap_or_default();
            let value = |metric: Metric| {
                let i = task.metrics.iter().position(|m| *m == metric);
                i.map_or_else(String::new, |i| metric.doc_value(samples[t][d][i]).to_string())
            };
            text.push_str(&format!(
                "{},{},{},{},{},{},{},{}\n",
                csv_field(&task.name),
                document.row,
                csv_field(completion),
                csv_field(&gsm8k::strict_match(completion)),
                csv_field(&gsm8k::flexible_extract(completion)),
                csv_field(&g.target),
                value(Metric::ExactMatchStrict),
                value(Metric::ExactMatchFlexible)
            ));
        }
    }
    text
}

/// Every metric the job's tasks report, in one fixed order: the columns of docs.csv.
fn metric_columns(tasks: &[Task]) -> Vec<&'static str> {
    let order = [
        "acc",
        "acc_norm",
        "word_perplexity",
        "byte_perplexity",
        "bits_per_byte",
        "exact_match,strict-match",
        "exact_match,flexible-extract",
    ];
    order.into_iter().filter(|name| tasks.iter().any(|t| t.metrics.iter().any(|m| m.name() == *name))).collect()
}

fn docs_csv(tasks: &[Task], scores: &Scores, samples: &[Vec<Vec<Sample>>]) -> String {
    let columns = metric_columns(tasks);
    let header: Vec<String> = columns.iter().map(|c| csv_field(c)).collect();
    let mut text = format!("task,doc,gold,pred,{}\n", header.join(","));
    for (t, task) in tasks.iter().enumerate() {
        for (d, document) in task.docs.iter().enumerate() {
            let (gold, pred) = match &document.doc {
                Doc::Choice(c) => {
                    let lls: Vec<f64> = scores.responses[t][d].iter().map(|r| r.loglikelihood).collect();
                    (c.gold.to_string(), first_argmax(&lls).to_string())
                }
                Doc::Rolling(_) => (String::new(), String::new()),
                Doc::Generate(g) => {
                    let completion = scores.completions[t][d].as_deref().unwrap_or_default();
                    (csv_field(&g.target), csv_field(&gsm8k::strict_match(completion)))
                }
            };
            let values: Vec<String> = columns
                .iter()
                .map(|column| {
                    let at = task.metrics.iter().position(|m| m.name() == *column);
                    at.map_or_else(String::new, |i| task.metrics[i].doc_value(samples[t][d][i]).to_string())
                })
                .collect();
            text.push_str(&format!("{},{},{gold},{pred},{}\n", csv_field(&task.name), document.row, values.join(",")));
        }
    }
    text
}

/// Groups (first appearance in job order, the outer before the inner), then tasks, per entry.
fn summarize(tasks: &[Task], samples: &[Vec<Vec<Sample>>]) -> Vec<SummaryRow> {
    let per_task: Vec<Vec<(Metric, Aggregate)>> = tasks
        .iter()
        .zip(samples)
        .map(|(task, docs)| {
            task.metrics
                .iter()
                .enumerate()
                .map(|(i, m)| (*m, m.aggregate(&docs.iter().map(|s| s[i]).collect::<Vec<_>>())))
                .collect()
        })
        .collect();
    let mut rows = Vec::new();
    let mut entries: Vec<usize> = tasks.iter().map(|t| t.entry).collect();
    entries.dedup();
    for entry in entries {
        let members: Vec<usize> = (0..tasks.len()).filter(|&t| tasks[t].entry == entry).collect();
        let mut groups: Vec<&str> = Vec::new();
        for &t in &members {
            for g in &tasks[t].groups {
                if !groups.contains(&g.as_str()) {
                    groups.push(g);
                }
            }
        }
        for group in groups {
            rows.extend(group_rows(group, tasks, &per_task));
        }
        for &t in &members {
            for (metric, aggregate) in &per_task[t] {
                rows.push(SummaryRow {
                    task: tasks[t].name.clone(),
                    num_fewshot: Some(tasks[t].num_fewshot),
                    metric: metric.name(),
                    keys: metric.result_keys(),
                    higher_is_better: metric.higher_is_better(),
                    aggregate: *aggregate,
                });
            }
        }
    }
    rows
}

/// A group's rows: every mean metric its tasks all have, pooled over them by size.
fn group_rows(group: &str, tasks: &[Task], per_task: &[Vec<(Metric, Aggregate)>]) -> Vec<SummaryRow> {
    let members: Vec<usize> = (0..tasks.len()).filter(|&t| tasks[t].groups.iter().any(|g| g == group)).collect();
    let metrics: Vec<Metric> = per_task[members[0]].iter().map(|(m, _)| *m).filter(|m| m.is_mean()).collect();
    metrics
        .into_iter()
        .filter_map(|metric| {
            let parts: Option<Vec<Aggregate>> =
                members.iter().map(|&t| per_task[t].iter().find(|(m, _)| *m == metric).map(|(_, a)| *a)).collect();
            parts.map(|parts| SummaryRow {
                task: group.to_string(),
                num_fewshot: None,
                metric: metric.name(),
                keys: metric.result_keys(),
                higher_is_better: metric.higher_is_better(),
                aggregate: pool(&parts),
            })
        })
        .collect()
}

fn summary_csv(summary: &[SummaryRow]) -> String {
    let mut text = String::from("task,metric,n,value,stderr\n");
    for row in summary {
        let stderr = row.aggregate.stderr.map(|s| s.to_string()).unwrap_or_default();
        let a = &row.aggregate;
        text.push_str(&format!("{},{},{},{},{stderr}\n", csv_field(&row.task), csv_field(row.metric), a.n, a.value));
    }
    text
}

/// lm-eval's `results_*.json` layout: `results` (tasks and groups, `metric,none` keys), `groups`,
/// `group_subtasks`, `versions`, `n-shot`, `higher-is-better`, `n-samples`, then ours.
fn results_json(tasks: &[Task], summary: &[SummaryRow], identity: Value) -> Value {
    let mut results: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut higher: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for row in summary {
        let entry = results.entry(row.task.clone()).or_insert_with(|| {
            let alias = row.task.strip_prefix("mmlu_").filter(|_| row.task != "mmlu").unwrap_or(&row.task);
            let mut m = Map::new();
            m.insert("alias".into(), json!(alias));
            m
        });
        let (value_key, stderr_key) = row.keys.clone();
        entry.insert(value_key, json!(row.aggregate.value));
        let stderr = row.aggregate.stderr.map_or(json!("N/A"), |s| json!(s));
        entry.insert(stderr_key, stderr);
        entry.insert("sample_len".into(), json!(row.aggregate.n));
        higher.entry(row.task.clone()).or_default().insert(row.metric.into(), json!(row.higher_is_better));
    }
    let group_names: Vec<&String> = summary.iter().filter(|r| r.num_fewshot.is_none()).map(|r| &r.task).collect();
    let groups: BTreeMap<&String, &Map<String, Value>> = group_names.iter().map(|g| (*g, &results[*g])).collect();
    let mut subtasks: BTreeMap<&String, Vec<&str>> = BTreeMap::new();
    for g in &group_names {
        let members = tasks.iter().filter(|t| t.groups.contains(g)).map(|t| t.name.as_str());
        subtasks.insert(g, members.collect());
    }
    let versions: BTreeMap<&str, &str> = tasks.iter().map(|t| (t.name.as_str(), t.version.as_str())).collect();
    let shots: BTreeMap<&str, usize> = tasks.iter().map(|t| (t.name.as_str(), t.num_fewshot)).collect();
    let samples: BTreeMap<&str, Value> =
        tasks.iter().map(|t| (t.name.as_str(), json!({"original": t.available, "effective": t.docs.len()}))).collect();
    json!({
        "results": results,
        "groups": groups,
        "group_subtasks": subtasks,
        "versions": versions,
        "n-shot": shots,
        "higher_is_better": higher,
        "n-samples": samples,
        "config": identity,
    })
}

/// The table lm-eval prints at the end: task, shots, metric, value ± stderr.
pub fn print_table(summary: &[SummaryRow]) {
    let width = summary.iter().map(|r| r.task.len()).max().unwrap_or(5).max(5);
    let metric_width = summary.iter().map(|r| r.metric.len()).max().unwrap_or(6).max(15);
    println!("|{:<width$}|n-shot|{:<metric_width$}|   | {:>10} |   | {:>8} |", "Tasks", "Metric", "Value", "Stderr");
    println!("|{}|-----:|{}|---|-----------:|---|---------:|", "-".repeat(width), "-".repeat(metric_width));
    for row in summary {
        let shots = row.num_fewshot.map_or_else(String::new, |k| k.to_string());
        let arrow = if row.higher_is_better { "↑" } else { "↓" };
        let stderr = row.aggregate.stderr.map_or_else(|| "N/A".to_string(), |s| format!("{s:.4}"));
        println!(
            "|{:<width$}|{shots:>6}|{:<metric_width$}|{arrow}  | {:>10.4} |±  | {stderr:>8} |",
            row.task, row.metric, row.aggregate.value
        );
    }
}
