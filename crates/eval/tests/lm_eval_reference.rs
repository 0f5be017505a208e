//! Our tasks against lm-evaluation-harness itself.
//!
//! MMLU (tests/fixtures/mmlu/lm_eval_reference.json,
//! written by tests/fixtures/make_mmlu_reference.py with lm-eval's own task config, prompt
//! construction, `_encode_pair` and `HFLM.loglikelihood` on SmolLM2-135M-Instruct Q4_1):
//! for every fixture item, 0-shot and 5-shot,
//!   * our document (`task::mmlu::subject_task`: CSV loading and prompt) has lm-eval's context;
//!   * our requests (`commands::run::build_requests`, i.e. `encode_pair` with the store's
//!     tokenizer) carry exactly lm-eval's context and continuation token ids;
//!   * the engine's log-likelihoods (through `schedule::sequences` and `score_wave`, as the runner
//!     scores) are within 1e-3 of lm-eval's, and the predicted choice is the same, on every
//!     backend target (`on_every_backend!`).
//!
//! ARC, HellaSwag, TruthfulQA and WikiText (tests/fixtures/tasks/lm_eval_reference.json, written
//! by tests/fixtures/make_tasks_reference.py with lm-eval's registered task configs,
//! `build_all_requests`, `HFLM.loglikelihood` and `loglikelihood_rolling`): our tasks, loaded from
//! a job's task list, give the same prompt strings and choices, the same context/continuation
//! token ids (for wikitext: the same token list, windows, and word and byte counts), per-request
//! log-likelihoods within 2e-3, the same is_greedy flags and predictions, the same per-document
//! metrics, and word perplexities within 1e-4 relative.

#[path = "../../engine/tests/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airllm_engine::executor::{Engine, EngineOptions, Quiet};
use airllm_eval::commands::run::build_requests;
use airllm_eval::dataset::mmlu::LETTERS;
use airllm_eval::job::Job;
use airllm_eval::schedule;
use airllm_eval::task::metrics::Sample;
use airllm_eval::task::metrics::first_argmax;
use airllm_eval::task::{Doc, Request, Response, mmlu};
use airllm_eval::task::{Task, registry};
use burn::prelude::Backend;
use serde_json::Value;

const TOLERANCE: f64 = 1e-3;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One fixture item: a test question at some shot count, with lm-eval's four requests.
struct Item {
    subject: String,
    index: usize,
    num_fewshot: usize,
    gold: usize,
    context: String,
    context_ids: Vec<u32>,
    /// Per choice A..D: (continuation, its ids, loglikelihood, is_greedy).
    choices: Vec<(String, Vec<u32>, f64, bool)>,
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn read_fixture() -> (Value, Vec<Item>) {
    let path = root().join("tests/fixtures/mmlu/lm_eval_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let items = fixture["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| Item {
            subject: item["subject"].as_str().unwrap().to_string(),
            index: item["index"].as_u64().unwrap() as usize,
            num_fewshot: item["num_fewshot"].as_u64().unwrap() as usize,
            gold: item["gold"].as_u64().unwrap() as usize,
            context: item["context"].as_str().unwrap().to_string(),
            context_ids: ids(&item["context_ids"]),
            choices: item["requests"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(c, r)| {
                    assert_eq!(r["choice"].as_str().unwrap(), LETTERS[c]);
                    (
                        r["continuation"].as_str().unwrap().to_string(),
                        ids(&r["continuation_ids"]),
                        r["loglikelihood"].as_f64().unwrap(),
                        r["is_greedy"].as_bool().unwrap(),
                    )
                })
                .collect(),
        })
        .collect();
    (fixture, items)
}

/// Where two strings first differ, with a little of each around it.
fn string_diff(expected: &str, actual: &str) -> String {
    let at = expected.char_indices().zip(actual.chars()).find(|((_, a), b)| a != b).map(|((i, _), _)| i);
    let at = at.unwrap_or(expected.len().min(actual.len()));
    let around = |s: &str| {
        let (mut start, mut end) = (at.saturating_sub(40).min(s.len()), (at + 40).min(s.len()));
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        while !s.is_char_boundary(end) {
            end += 1;
        }
        format!("{:?}", &s[start..end])
    };
    format!(
        "first difference at byte {at} (lengths {} vs {}):\n    lm-eval: …{}…\n    ours:    …{}…",
        expected.len(),
        actual.len(),
        around(expected),
        around(actual)
    )
}

/// Where two id lists first differ, with a few ids of each around it.
fn ids_diff(expected: &[u32], actual: &[u32]) -> String {
    let at = expected.iter().zip(actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
    let window = |s: &[u32]| format!("{:?}", &s[at.saturating_sub(5).min(s.len())..(at + 5).min(s.len())]);
    format!(
        "first difference at token {at} (lengths {} vs {}): lm-eval {} ours {}",
        expected.len(),
        actual.len(),
        window(expected),
        window(actual)
    )
}

/// Scores requests as the runner does: deduplicated sequences, waves, one `score_wave` a wave.
fn score<B: Backend>(engine: &mut Engine<B>, requests: &[Request]) -> (Vec<Response>, usize, usize) {
    let sequences = schedule::sequences(requests, engine.spec().max_position_embeddings);
    let waves = schedule::waves(engine.spec(), &sequences, 1 << 31);
    let mut out = vec![None; requests.len()];
    for wave in &waves {
        let batch: Vec<_> = wave.iter().map(|&s| sequences[s].request.clone()).collect();
        let scores = engine.score_wave(&batch, &Quiet).unwrap();
        for (&s, values) in wave.iter().zip(&scores) {
            schedule::request_responses(&sequences[s], values, &mut out);
        }
    }
    (out.into_iter().map(|r| r.expect("request left unscored")).collect(), sequences.len(), waves.len())
}

fn mmlu_matches_lm_eval<B: Backend>(target: &common::Target<B>) {
    let (fixture, items) = read_fixture();
    eprintln!("fixture: {} items, versions {}", items.len(), fixture["versions"]);
    assert!(!items.is_empty());
    for shots in [0, 5] {
        assert!(items.iter().any(|i| i.num_fewshot == shots), "fixture has no {shots}-shot item");
    }

    let (_store, mut engine) = target.engine_for(&common::smollm2_gguf(), EngineOptions::default());
    eprintln!("on {}", target.name);

    let mmlu_root = root().join("datasets/mmlu");
    let mut failures: Vec<String> = Vec::new();
    // Group items by (subject, shots) to load each subject once, as the runner does.
    let mut groups: BTreeMap<(usize, String), Vec<&Item>> = BTreeMap::new();
    for item in &items {
        groups.entry((item.num_fewshot, item.subject.clone())).or_default().push(item);
    }

    // Our requests for every fixture item, in fixture order: (item, our request indices A..D).
    let mut ours = Vec::new();
    let mut item_requests: Vec<(&Item, [usize; 4])> = Vec::new();
    for ((shots, name), group) in &groups {
        let limit = group.iter().map(|i| i.index).max().unwrap() + 1;
        let task = mmlu::subject_task(&mmlu_root, name, *shots, Some(limit), 0).unwrap();
        let built = build_requests(std::slice::from_ref(&task), engine.tokenizer().unwrap(), engine.spec()).unwrap();
        for item in group {
            let label = format!("{} row {} {}-shot", item.subject, item.index, item.num_fewshot);
            let Doc::Choice(doc) = &task.docs[item.index].doc else { panic!("mmlu documents are choices") };
            if doc.gold != item.gold {
                failures.push(format!("{label}: gold {} but lm-eval's doc says {}", doc.gold, item.gold));
            }
            if doc.context != item.context {
                failures.push(format!("{label}: prompt text differs, {}", string_diff(&item.context, &doc.context)));
            }
            let mut indices = [0; 4];
            for (choice, (continuation, continuation_ids, _, _)) in item.choices.iter().enumerate() {
                let at = built.iter().position(|r| r.doc == item.index && r.part == choice).unwrap();
                let request = &built[at];
                if continuation != &format!(" {}", LETTERS[choice]) {
                    failures.push(format!("{label}: lm-eval's continuation is {continuation:?}"));
                }
                if request.context != item.context_ids {
                    failures.push(format!(
                        "{label} {}: context ids differ, {}",
                        LETTERS[choice],
                        ids_diff(&item.context_ids, &request.context)
                    ));
                }
                if &request.continuation != continuation_ids {
                    failures.push(format!(
                        "{label} {}: continuation ids differ: lm-eval {continuation_ids:?} ours {:?}",
                        LETTERS[choice], request.continuation
                    ));
                }
                indices[choice] = ours.len();
                ours.push(request.clone());
            }
            item_requests.push((item, indices));
        }
    }

    let (scores, sequences, waves) = score(&mut engine, &ours);
    let mut max_diff = 0f64;
    let mut worst = String::new();
    for (item, indices) in &item_requests {
        let label = format!("{} row {} {}-shot", item.subject, item.index, item.num_fewshot);
        let ours: [f64; 4] = indices.map(|i| scores[i].loglikelihood);
        let theirs: Vec<f64> = item.choices.iter().map(|c| c.2).collect();
        for (choice, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let diff = (a - b).abs();
            if diff > max_diff {
                max_diff = diff;
                worst = format!("{label} {}: ours {a} lm-eval {b}", LETTERS[choice]);
            }
            if diff > TOLERANCE {
                failures.push(format!(
                    "{label} {}: loglikelihood ours {a} lm-eval {b} (|diff| {diff:.2e} > {TOLERANCE})",
                    LETTERS[choice]
                ));
            }
        }
        let (pred, reference) = (first_argmax(&ours), first_argmax(&theirs));
        if pred != reference {
            failures.push(format!("{label}: we predict {} but lm-eval {}", LETTERS[pred], LETTERS[reference]));
        }
        eprintln!(
            "{label}: {} context tokens, ours {:?} lm-eval {:?}",
            item.context_ids.len(),
            ours,
            theirs.iter().map(|v| *v as f32).collect::<Vec<_>>()
        );
    }
    eprintln!(
        "{} requests in {} sequences, {} waves; max |loglikelihood difference| {max_diff:.3e} ({worst})",
        ours.len(),
        sequences,
        waves
    );
    assert!(failures.is_empty(), "{} mismatches with lm-eval:\n{}", failures.len(), failures.join("\n"));
}

common::on_every_backend!(mmlu_matches_lm_eval);

const TASK_TOLERANCE: f64 = 2e-3;

/// Our task for a fixture key (`wikitext@max_length=128` sets the window length), loaded through
/// a job's task list as the runner loads it, with enough documents to reach every fixture row.
fn load_task(key: &str, rows: usize) -> Task {
    let (name, max_length) = match key.split_once("@max_length=") {
        Some((name, length)) => (name, format!("\n    max_length: {length}")),
        None => (key, String::new()),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.yaml");
    let text = format!(
        "model:\n  source: unused.gguf\noutput: out\ntasks:\n  - name: {name}\n    limit: {rows}{max_length}\n"
    );
    std::fs::write(&path, text).unwrap();
    let mut tasks = registry::load(&Job::load(&path).unwrap()).unwrap();
    assert_eq!(tasks.len(), 1);
    tasks.pop().unwrap()
}

fn f64s(value: &Value) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("not a number: {value}"))
}

/// Compares one task's documents, requests and scores with the fixture's; returns the requests
/// (in fixture order) to score and, per fixture document, the range of them it owns.
fn compare_task(
    key: &str,
    reference: &Value,
    engine: &mut Engine,
    failures: &mut Vec<String>,
) -> (Task, Vec<usize>, Vec<Request>) {
    let docs = reference["docs"].as_array().unwrap();
    let rows: Vec<usize> = docs.iter().map(|d| d["doc"].as_u64().unwrap() as usize).collect();
    let task = load_task(key, rows.iter().max().unwrap() + 1);
    let subset = Task { docs: rows.iter().map(|&r| task.docs[r].clone()).collect(), ..task.clone() };
    let requests = build_requests(std::slice::from_ref(&subset), engine.tokenizer().unwrap(), engine.spec()).unwrap();
    for (i, (doc, theirs)) in subset.docs.iter().zip(docs).enumerate() {
        let label = format!("{key} doc {}", doc.row);
        let mine: Vec<&Request> = requests.iter().filter(|r| r.doc == i).collect();
        match &doc.doc {
            Doc::Choice(c) => {
                let context = theirs["context"].as_str().unwrap();
                if c.context != context {
                    failures.push(format!("{label}: context differs, {}", string_diff(context, &c.context)));
                }
                let choices: Vec<&str> =
                    theirs["choices"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                if c.choices != choices {
                    failures.push(format!("{label}: choices {:?}, lm-eval {choices:?}", c.choices));
                }
                if c.gold as u64 != theirs["gold"].as_u64().unwrap() {
                    failures.push(format!("{label}: gold {} but lm-eval {}", c.gold, theirs["gold"]));
                }
                for (request, r) in mine.iter().zip(theirs["requests"].as_array().unwrap()) {
                    let (context_ids, continuation_ids) = (ids(&r["context_ids"]), ids(&r["continuation_ids"]));
                    if request.context != context_ids {
                        failures.push(format!(
                            "{label} choice {}: context ids, {}",
                            request.part,
                            ids_diff(&context_ids, &request.context)
                        ));
                    }
                    if request.continuation != continuation_ids {
                        failures.push(format!(
                            "{label} choice {}: continuation ids {:?}, lm-eval {continuation_ids:?}",
                            request.part, request.continuation
                        ));
                    }
                }
            }
            Doc::Rolling(r) => {
                if r.text != theirs["target"].as_str().unwrap() {
                    failures.push(format!(
                        "{label}: text differs, {}",
                        string_diff(theirs["target"].as_str().unwrap(), &r.text)
                    ));
                }
                if (r.words as u64, r.bytes as u64)
                    != (theirs["words"].as_u64().unwrap(), theirs["bytes"].as_u64().unwrap())
                {
                    failures.push(format!(
                        "{label}: {} words {} bytes, lm-eval {} {}",
                        r.words, r.bytes, theirs["words"], theirs["bytes"]
                    ));
                }
                let tokens: Vec<u32> = mine.iter().flat_map(|w| w.continuation.clone()).collect();
                if tokens != ids(&theirs["token_ids"]) {
                    failures.push(format!("{label}: tokens, {}", ids_diff(&ids(&theirs["token_ids"]), &tokens)));
                }
                let windows: Vec<(Vec<u32>, Vec<u32>)> = theirs["windows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| (ids(&w["context_ids"]), ids(&w["continuation_ids"])))
                    .collect();
                let ours: Vec<(Vec<u32>, Vec<u32>)> =
                    mine.iter().map(|w| (w.context.clone(), w.continuation.clone())).collect();
                if ours != windows {
                    failures.push(format!(
                        "{label}: {} windows, lm-eval {}, or their ids differ",
                        ours.len(),
                        windows.len()
                    ));
                }
            }
            Doc::Generate(_) => unreachable!("this fixture holds no generation task"),
        }
    }
    (subset, rows, requests)
}

#[test]
fn tasks_match_lm_eval() {
    let path = root().join("tests/fixtures/tasks/lm_eval_reference.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    eprintln!("fixture versions {}", fixture["versions"]);
    let (_store, mut engine) = common::engine_for(&common::smollm2_gguf(), EngineOptions::default());
    assert_eq!(
        engine.spec().bos_token_id,
        fixture["prefix_token_id"].as_u64().map(|v| v as u32),
        "HFLM's prefix token"
    );
    assert_eq!(engine.spec().max_position_embeddings as u64, fixture["max_length"].as_u64().unwrap());
    let mut failures = Vec::new();
    let mut max_diff = (0f64, String::new());
    for (key, reference) in fixture["tasks"].as_object().unwrap() {
        let (task, rows, requests) = compare_task(key, reference, &mut engine, &mut failures);
        let (responses, _, _) = score(&mut engine, &requests);
        let docs = reference["docs"].as_array().unwrap();
        let mut samples: Vec<Vec<Sample>> = Vec::new();
        for (i, (doc, theirs)) in task.docs.iter().zip(docs).enumerate() {
            let label = format!("{key} doc {}", rows[i]);
            let mine: Vec<(usize, Response)> = requests
                .iter()
                .zip(&responses)
                .enumerate()
                .filter(|(_, (r, _))| r.doc == i)
                .map(|(k, (_, s))| (k, *s))
                .collect();
            let doc_responses: Vec<Response> = match &doc.doc {
                Doc::Choice(_) => {
                    for ((_, ours), r) in mine.iter().zip(theirs["requests"].as_array().unwrap()) {
                        let diff = (ours.loglikelihood - f64s(&r["loglikelihood"])).abs();
                        if diff > max_diff.0 {
                            max_diff = (diff, label.clone());
                        }
                        if diff > TASK_TOLERANCE {
                            failures.push(format!(
                                "{label}: loglikelihood {} vs lm-eval {} (|diff| {diff:.2e})",
                                ours.loglikelihood, r["loglikelihood"]
                            ));
                        }
                        if ours.is_greedy != r["is_greedy"].as_bool().unwrap() {
                            failures
                                .push(format!("{label}: is_greedy {} vs lm-eval {}", ours.is_greedy, r["is_greedy"]));
                        }
                    }
                    mine.iter().map(|(_, r)| *r).collect()
                }
                Doc::Rolling(_) => {
                    let total = schedule::combine(mine.iter().map(|(_, r)| *r));
                    let theirs_ll = f64s(&theirs["loglikelihood"]);
                    eprintln!("{label}: loglikelihood ours {} lm-eval {theirs_ll}", total.loglikelihood);
                    vec![total]
                }
                Doc::Generate(_) => unreachable!("this fixture holds no generation task"),
            };
            let doc_samples: Vec<Sample> =
                task.metrics.iter().map(|m| m.sample(&doc.doc, &doc_responses, None)).collect();
            for (metric, sample) in task.metrics.iter().zip(&doc_samples) {
                let (Sample::Value(ours), Some(theirs)) = (sample, theirs["metrics"][metric.name()].as_f64()) else {
                    continue;
                };
                if (ours - theirs).abs() > TASK_TOLERANCE {
                    failures.push(format!("{label}: {} {ours} vs lm-eval {theirs}", metric.name()));
                }
            }
            samples.push(doc_samples);
        }
        for (m, metric) in task.metrics.iter().enumerate() {
            let ours = metric.aggregate(&samples.iter().map(|s| s[m]).collect::<Vec<_>>());
            let theirs = &reference["aggregate"][metric.name()];
            let value = f64s(&theirs["value"]);
            let close = match metric.is_mean() {
                true => (ours.value - value).abs() <= TASK_TOLERANCE,
                false => ((ours.value - value) / value).abs() <= 1e-4,
            };
            let stderr_ok = match (ours.stderr, theirs["stderr"].as_f64()) {
                (Some(a), Some(b)) => (a - b).abs() <= TASK_TOLERANCE,
                (a, b) => a.is_none() && b.is_none(),
            };
            eprintln!(
                "{key} {}: ours {} ± {:?}, lm-eval {value} ± {}",
                metric.name(),
                ours.value,
                ours.stderr,
                theirs["stderr"]
            );
            if !close || !stderr_ok {
                failures.push(format!(
                    "{key} {}: ours {} ± {:?}, lm-eval {value} ± {}",
                    metric.name(),
                    ours.value,
                    ours.stderr,
                    theirs["stderr"]
                ));
            }
        }
    }
    eprintln!("max |loglikelihood difference| of a choice request: {:.3e} ({})", max_diff.0, max_diff.1);
    assert!(failures.is_empty(), "{} mismatches with lm-eval:\n{}", failures.len(), failures.join("\n"));
}
