//! CI gates: a job's `thresholds:` (`mmlu: {acc: 0.25}`, `wikitext: {word_perplexity: 40}`) name
//! the lowest acceptable value of a task's or group's metric, or the highest where lower is
//! better. They are checked against the job's tasks when it loads, so a typo fails in the first
//! second, and against the summary when a run or merge finishes: the files are written either way,
//! and a miss makes the exit code non-zero with the reason printed.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::report::SummaryRow;
use crate::task::Task;

pub type Thresholds = BTreeMap<String, BTreeMap<String, f64>>;

/// Every threshold must name a task or group of the job and one of its metrics.
pub fn check_names(thresholds: &Thresholds, tasks: &[Task]) -> Result<()> {
    for (name, metrics) in thresholds {
        let members: Vec<&Task> = tasks.iter().filter(|t| t.name == *name || t.groups.contains(name)).collect();
        if members.is_empty() {
            let mut names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
            names.extend(tasks.iter().flat_map(|t| t.groups.iter().map(String::as_str)));
            names.dedup();
            bail!("thresholds: `{name}` is no task or group of this job; it has {}", names.join(", "));
        }
        for metric in metrics.keys() {
            if !members.iter().all(|t| t.metrics.iter().any(|m| m.name() == metric)) {
                let known: Vec<&str> = members[0].metrics.iter().map(|m| m.name()).collect();
                bail!("thresholds: `{name}` has no metric `{metric}`; it has {}", known.join(", "));
            }
        }
    }
    Ok(())
}

/// The thresholds the summary misses, as sentences.
pub fn misses(thresholds: &Thresholds, summary: &[SummaryRow]) -> Vec<String> {
    let mut misses = Vec::new();
    for row in summary {
        let Some(limit) = thresholds.get(&row.task).and_then(|m| m.get(row.metric)) else { continue };
        let value = row.aggregate.value;
        let missed = if row.higher_is_better { value < *limit } else { value > *limit };
        if missed || value.is_nan() {
            let (word, bound) = if row.higher_is_better { ("below", "at least") } else { ("above", "at most") };
            misses.push(format!("{} {} = {value:.4} is {word} the threshold ({bound} {limit})", row.task, row.metric));
        }
    }
    misses
}

/// Prints the misses and fails when there are any.
pub fn enforce(thresholds: &Thresholds, summary: &[SummaryRow]) -> Result<()> {
    let misses = misses(thresholds, summary);
    if misses.is_empty() {
        return Ok(());
    }
    for miss in &misses {
        eprintln!("threshold missed: {miss}");
    }
    bail!("{} threshold(s) missed (results are written)", misses.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::metrics::Aggregate;

    fn row(task: &str, metric: &'static str, higher_is_better: bool, value: f64) -> SummaryRow {
        SummaryRow {
            task: task.into(),
            num_fewshot: None,
            metric,
            keys: (String::new(), String::new()),
            higher_is_better,
            aggregate: Aggregate { n: 10, value, stderr: None },
        }
    }

    #[test]
    fn misses_respect_the_direction() {
        let thresholds: Thresholds =
            serde_yaml::from_str("mmlu: {acc: 0.25}\nwikitext: {word_perplexity: 30}\n").unwrap();
        let summary = [
            row("mmlu", "acc", true, 0.228),
            row("wikitext", "word_perplexity", false, 32.6),
            row("arc_easy", "acc", true, 0.1),
        ];
        let misses = misses(&thresholds, &summary);
        assert_eq!(misses.len(), 2, "{misses:?}");
        assert!(misses[0].contains("mmlu acc = 0.2280 is below the threshold (at least 0.25)"), "{}", misses[0]);
        assert!(misses[1].contains("above the threshold (at most 30)"), "{}", misses[1]);
        let passing: Thresholds = serde_yaml::from_str("mmlu: {acc: 0.2}\n").unwrap();
        assert!(enforce(&passing, &summary).is_ok());
    }
}
