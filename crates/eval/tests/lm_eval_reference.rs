//! Our MMLU against lm-evaluation-harness itself (tests/fixtures/mmlu/lm_eval_reference.json,
//! written by tests/fixtures/make_mmlu_reference.py with lm-eval's own task config, prompt
//! construction, `_encode_pair` and `HFLM.loglikelihood` on SmolLM2-135M-Instruct Q4_1):
//! for every fixture item, 0-shot and 5-shot,
//!   * our prompt text (our CSV loading + `task::mmlu::prompt`) equals lm-eval's context exactly;
//!   * our requests (`task::mmlu::requests`, i.e. `encode_pair` with the store's tokenizer) carry
//!     exactly lm-eval's context and continuation token ids;
//!   * the engine's log-likelihoods (through `schedule::sequences` and `score_wave`, as the runner
//!     scores) are within 1e-3 of lm-eval's, and the predicted choice is the same.

#[path = "../../engine/tests/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airllm_engine::executor::{EngineOptions, Quiet};
use airllm_eval::dataset::mmlu::{LETTERS, load_subject};
use airllm_eval::schedule;
use airllm_eval::task::mmlu::{predict, prompt, requests};
use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// lm-eval's prediction: numpy's argmax, the first maximum.
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[test]
fn mmlu_prompts_tokens_and_loglikelihoods_match_lm_eval() {
    let (fixture, items) = read_fixture();
    eprintln!("fixture: {} items, versions {}", items.len(), fixture["versions"]);
    assert!(!items.is_empty());
    for shots in [0, 5] {
        assert!(items.iter().any(|i| i.num_fewshot == shots), "fixture has no {shots}-shot item");
    }

    let (_store, mut engine) = common::engine_for(&common::smollm2_gguf(), EngineOptions::default());

    let mmlu = root().join("datasets/mmlu");
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
        let subject = load_subject(&mmlu, name, *shots, Some(limit), &mut Sha256::new()).unwrap();
        let built = requests(std::slice::from_ref(&subject), engine.tokenizer()).unwrap();
        for item in group {
            let label = format!("{} row {} {}-shot", item.subject, item.index, item.num_fewshot);
            let question = &subject.test[item.index];
            if question.answer != item.gold {
                failures.push(format!("{label}: gold {} but lm-eval's doc says {}", question.answer, item.gold));
            }
            let text = prompt(&subject.name, &subject.fewshot, question);
            if text != item.context {
                failures.push(format!("{label}: prompt text differs, {}", string_diff(&item.context, &text)));
            }
            let mut indices = [0; 4];
            for (choice, (continuation, continuation_ids, _, _)) in item.choices.iter().enumerate() {
                let at = built.iter().position(|r| r.item == item.index && r.choice == choice).unwrap();
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

    // Score as the runner does: deduplicated sequences, waves, one score_wave per wave.
    let sequences = schedule::sequences(&ours, engine.spec().max_position_embeddings);
    let waves = schedule::waves(engine.spec(), &sequences, 1 << 31);
    let mut scores = vec![None; ours.len()];
    for wave in &waves {
        let batch: Vec<_> = wave.iter().map(|&s| sequences[s].request.clone()).collect();
        let out = engine.score_wave(&batch, &Quiet).unwrap();
        for (&s, values) in wave.iter().zip(&out) {
            schedule::request_scores(&sequences[s], values, &mut scores);
        }
    }

    let mut max_diff = 0f64;
    let mut worst = String::new();
    for (item, indices) in &item_requests {
        let label = format!("{} row {} {}-shot", item.subject, item.index, item.num_fewshot);
        let ours: [f32; 4] = indices.map(|i| scores[i].expect("request left unscored"));
        let theirs: Vec<f64> = item.choices.iter().map(|c| c.2).collect();
        for (choice, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let diff = (*a as f64 - b).abs();
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
        let (pred, reference) = (predict(&ours), argmax(&theirs));
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
        sequences.len(),
        waves.len()
    );
    assert!(failures.is_empty(), "{} mismatches with lm-eval:\n{}", failures.len(), failures.join("\n"));
}
