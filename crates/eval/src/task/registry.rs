//! The built-in tasks, and the job's task list turned into loaded [`Task`]s.
//!
//! | name | request | metrics | data (under `datasets/`) |
//! |---|---|---|---|
//! | `mmlu`, `mmlu_<subject>` | loglikelihood | acc (groups: mmlu, mmlu_<category>) | `mmlu/` |
//! | `arc_easy`, `arc_challenge` | loglikelihood | acc, acc_norm | `arc/ARC-*/ARC-*-Test.jsonl` |
//! | `hellaswag` | loglikelihood | acc, acc_norm | `hellaswag/hellaswag_val_full.txt` |
//! | `truthfulqa_mc1`, `truthfulqa_mc2` | loglikelihood | acc | `truthfulqa/data/v0/mc_task.json` |
//! | `wikitext` | loglikelihood_rolling | word_perplexity, byte_perplexity, bits_per_byte | `wikitext-2/wiki.test.raw` |
//! | `gsm8k_cot` | generate_until | exact_match (strict-match, flexible-extract) | `gsm8k/test.jsonl` |
//!
//! Any other name is a custom task and needs `define:` ([`super::custom`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::truthfulqa::Variant;
use super::{Doc, Task, arc, custom, gsm8k, hellaswag, metrics::Metric, mmlu, truthfulqa, wikitext};
use crate::dataset::mmlu as mmlu_data;
use crate::job::{Job, Subjects, TaskEntry};

/// Built-in task names and their default data, relative to the datasets folder.
pub const BUILT_IN: [(&str, &str); 9] = [
    ("mmlu", "mmlu"),
    ("arc_easy", "arc/ARC-Easy/ARC-Easy-Test.jsonl"),
    ("arc_challenge", "arc/ARC-Challenge/ARC-Challenge-Test.jsonl"),
    ("hellaswag", "hellaswag/hellaswag_val_full.txt"),
    ("truthfulqa_mc1", "truthfulqa/data/v0/mc_task.json"),
    ("truthfulqa_mc2", "truthfulqa/data/v0/mc_task.json"),
    ("wikitext", "wikitext-2/wiki.test.raw"),
    ("gsm8k_cot", "gsm8k/test.jsonl"),
    ("mmlu_<subject>", "mmlu"),
];

/// The project's datasets folder (`$AIRLLM_DATASETS` moves it).
pub fn datasets_root() -> PathBuf {
    std::env::var_os("AIRLLM_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets"))
}

/// The default data of a built-in task, relative to the datasets folder.
fn built_in_data(name: &str) -> &'static str {
    BUILT_IN.iter().find(|(n, _)| *n == name).map(|(_, path)| *path).unwrap_or("mmlu")
}

fn built_in_names() -> String {
    BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Loads every task the job lists, in order, checking each document.
pub fn load(job: &Job) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for (entry_index, entry) in job.spec.tasks.iter().enumerate() {
        let at = entry_location(job, &entry.name);
        let loaded = load_entry(job, entry, entry_index).with_context(|| format!("{at}: task `{}`", entry.name))?;
        tasks.extend(loaded);
    }
    let mut seen = HashSet::new();
    for task in &tasks {
        if !seen.insert(task.name.as_str()) {
            bail!("{}: task `{}` is listed twice", job.locate(&task.name), task.name);
        }
        check(task)?;
    }
    Ok(tasks)
}

/// `file:line` of a task entry: its `name:` line, or the single-task form's `task:` line.
fn entry_location(job: &Job, name: &str) -> String {
    job.locate_first(&[&format!("name: {name}"), &format!("task: {name}")])
}

fn load_entry(job: &Job, entry: &TaskEntry, index: usize) -> Result<Vec<Task>> {
    let name = entry.name.as_str();
    let shots = entry.num_fewshot.unwrap_or(0);
    let default = |relative: &str| default_data(name, relative);
    let data = || entry.path.clone().map_or_else(|| default(built_in_data(name)), Ok);
    if name == "gsm8k_cot" && entry.num_fewshot.is_some_and(|k| k != gsm8k::EXEMPLARS.len()) {
        bail!("gsm8k_cot asks with lm-eval's 8 fixed exemplars; num_fewshot can only be 8");
    }
    if entry.define.is_none() && shots > 0 && !name.starts_with("mmlu") && name != "gsm8k_cot" {
        bail!(
            "num_fewshot {shots}: lm-eval draws this task's examples at random from a training split, which \
             is not reproduced here; only mmlu and custom tasks take few-shot examples"
        );
    }
    let with_max_length_checked = |task: Task| {
        if entry.max_length.is_some() && !task.docs.iter().all(|d| matches!(d.doc, Doc::Rolling(_))) {
            bail!("max_length applies to rolling tasks only");
        }
        Ok(vec![task])
    };
    if let Some(source) = &entry.define {
        check_custom_name(name)?;
        let (definition, base) = source.load(job.path.parent().unwrap_or(Path::new(".")))?;
        let use_ = custom::Use { name, data: entry.path.clone(), limit: entry.limit, num_fewshot: shots, entry: index };
        let mut task = custom::task(&definition, &base, use_)?;
        task.max_length = entry.max_length;
        return with_max_length_checked(task);
    }
    if entry.subjects != Subjects::All && name != "mmlu" {
        bail!("subjects applies to mmlu only");
    }
    match name {
        "mmlu" => mmlu_tasks(job, entry, &data()?, index),
        "arc_easy" | "arc_challenge" => with_max_length_checked(arc::task(name, &data()?, entry.limit, index)?),
        "hellaswag" => with_max_length_checked(hellaswag::task(&data()?, entry.limit, index)?),
        "truthfulqa_mc1" => with_max_length_checked(truthfulqa::task(Variant::Mc1, &data()?, entry.limit, index)?),
        "truthfulqa_mc2" => with_max_length_checked(truthfulqa::task(Variant::Mc2, &data()?, entry.limit, index)?),
        "wikitext" => Ok(vec![wikitext::task(&data()?, entry.limit, entry.max_length, index)?]),
        "gsm8k_cot" => with_max_length_checked(gsm8k::task(&data()?, entry.limit, index)?),
        _ if name.starts_with("mmlu_") => {
            let root = data()?;
            let subject = &name["mmlu_".len()..];
            let available = mmlu_data::available_subjects(&root)?;
            if !available.iter().any(|s| s == subject) {
                bail!("no MMLU subject `{subject}` in {}; subjects: {}", root.display(), available.join(", "));
            }
            with_max_length_checked(mmlu::subject_task(&root, subject, shots, entry.limit, index)?)
        }
        _ => bail!("unknown task; built-in tasks: {}; or define a custom task with `define:`", built_in_names()),
    }
}

fn default_data(name: &str, relative: &str) -> Result<PathBuf> {
    let path = datasets_root().join(relative);
    if !path.exists() {
        bail!("the project's data for `{name}` is not at {}; give the task a `path:`", path.display());
    }
    Ok(path)
}

fn mmlu_tasks(job: &Job, entry: &TaskEntry, root: &Path, index: usize) -> Result<Vec<Task>> {
    let available = mmlu_data::available_subjects(root)?;
    let subjects = match &entry.subjects {
        Subjects::All => available,
        Subjects::List(list) => {
            check_subjects(job, list, &available)?;
            list.clone()
        }
    };
    let shots = entry.num_fewshot.unwrap_or(0);
    let mut tasks: Vec<Task> =
        subjects.iter().map(|s| mmlu::subject_task(root, s, shots, entry.limit, index)).collect::<Result<_>>()?;
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tasks)
}

fn check_subjects(job: &Job, list: &[String], available: &[String]) -> Result<()> {
    if list.is_empty() {
        bail!("subjects is empty; give `all` or at least one subject");
    }
    let mut seen = HashSet::new();
    for name in list {
        if !available.contains(name) {
            bail!(
                "unknown subject `{name}` in subjects (at {}); allowed: all, or any of {}",
                job.locate(name),
                available.join(", ")
            );
        }
        if !seen.insert(name) {
            bail!("subject `{name}` is listed twice (at {})", job.locate(name));
        }
    }
    Ok(())
}

fn check_custom_name(name: &str) -> Result<()> {
    if BUILT_IN.iter().any(|(n, _)| *n == name) || name.starts_with("mmlu_") {
        bail!("a custom task cannot take a built-in task's name");
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        bail!("a task name may hold letters, digits, `_`, `-` and `.` only");
    }
    Ok(())
}

/// Every document must be askable and scorable: choices to pick from, a gold among them,
/// no empty choice where lengths divide, some text to roll over.
fn check(task: &Task) -> Result<()> {
    for document in &task.docs {
        let at = || format!("{}: task `{}`, document {}", task.source.display(), task.name, document.row);
        match &document.doc {
            Doc::Choice(c) => {
                if c.choices.is_empty() {
                    bail!("{}: the list of choices is empty", at());
                }
                if c.gold >= c.choices.len() {
                    bail!("{}: gold index {} is out of range for {} choices", at(), c.gold, c.choices.len());
                }
                if task.metrics.contains(&Metric::AccNorm) && c.choices.iter().any(String::is_empty) {
                    bail!("{}: a choice is empty, and acc_norm divides by its length", at());
                }
            }
            Doc::Rolling(r) => {
                if r.text.trim().is_empty() {
                    bail!("{}: the document is empty; a rolling task needs text to score", at());
                }
            }
            Doc::Generate(g) => {
                if g.context.is_empty() {
                    bail!("{}: the prompt is empty", at());
                }
            }
        }
    }
    if task.docs.is_empty() {
        bail!("{}: task `{}` has no documents", task.source.display(), task.name);
    }
    Ok(())
}
