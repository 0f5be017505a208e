//! Generation against its references:
//!
//! * transformers' greedy `generate` (tests/fixtures/generate/transformers_greedy.json, written by
//!   tests/fixtures/make_generate_reference.py: SmolLM2 in float32 from the same GGUF, each prompt
//!   alone): every prompt's new tokens are the same, token for token, with all prompts generated
//!   together in one wave (so per-sequence positions, cache lengths and sequences leaving the wave
//!   at their end-of-text are exercised);
//! * lm-eval 0.4.13's own `gsm8k_cot` (tests/fixtures/generate/lm_eval_gsm8k_cot.json, written by
//!   tests/fixtures/make_gsm8k_reference.py with HFLM `generate_until`): the same prompts and
//!   context token ids, the same completions (cut at the stop sequences), the same answers from
//!   both filters and the same exact_match.

#[path = "../../engine/tests/common.rs"]
mod common;

use std::path::{Path, PathBuf};

use airllm_engine::executor::{EngineOptions, Quiet};
use airllm_engine::model::kv_cache::KvDtype;
use airllm_eval::generation::{self, Prompt};
use airllm_eval::job::Job;
use airllm_eval::task::metrics::{Metric, Sample};
use airllm_eval::task::{Doc, gsm8k, registry};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> Value {
    let path = root().join("tests/fixtures/generate").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// Generates the reference prompts in one wave with the KV cache stored as `kv_dtype`; returns
/// the reference, each prompt's new tokens, and the engine's tokenizer.
fn generate_references(kv_dtype: KvDtype) -> (Value, Vec<Vec<u32>>, tokenizers::Tokenizer) {
    let reference = fixture("transformers_greedy.json");
    let options = EngineOptions { resident: true, kv_dtype, ..EngineOptions::default() };
    let (_store, mut engine) = common::engine_for(&common::smollm2_gguf(), options);
    let eos: Vec<u32> = ids(&reference["eos_token_ids"]);
    assert_eq!(engine.spec().eos_token_id, eos.first().copied(), "the model's end-of-text token");
    let prompts = reference["prompts"].as_array().unwrap();
    let inputs: Vec<Vec<u32>> = prompts.iter().map(|p| ids(&p["input_ids"])).collect();
    let max_new: Vec<usize> = prompts.iter().map(|p| p["max_new_tokens"].as_u64().unwrap() as usize).collect();
    let mut generated = vec![Vec::new(); inputs.len()];
    engine
        .generate_wave(&inputs, &max_new, &Quiet, &mut |i, token| {
            generated[i].push(token);
            !eos.contains(&token)
        })
        .unwrap();
    (reference, generated, engine.tokenizer().unwrap().clone())
}

/// A half-precision cache rounds every cached key and value: the drift it causes, stated as
/// new tokens that still agree with transformers before the first difference.
#[test]
fn half_precision_kv_cache_drift_is_bounded() {
    for (dtype, at_least) in [(KvDtype::F16, 0.95), (KvDtype::Bf16, 0.8)] {
        let (reference, generated, _) = generate_references(dtype);
        let (mut same, mut total, mut identical) = (0, 0, 0);
        for (p, ours) in reference["prompts"].as_array().unwrap().iter().zip(&generated) {
            let theirs = ids(&p["output_ids"]);
            let prefix = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
            same += prefix;
            total += theirs.len();
            identical += (*ours == theirs) as usize;
        }
        let share = same as f64 / total as f64;
        eprintln!(
            "{dtype:?} KV cache: {identical}/10 prompts identical, {same}/{total} tokens before the first difference ({share:.3})"
        );
        assert!(share >= at_least, "{dtype:?}: only {share:.3} of the tokens agree before the first difference");
    }
}

#[test]
fn greedy_generation_matches_transformers_in_one_wave() {
    let (reference, generated, tokenizer) = generate_references(KvDtype::F32);
    let prompts = reference["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 8);
    let mut failures = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let input = ids(&p["input_ids"]);
        let ours = tokenizer.encode(p["text"].as_str().unwrap(), true).unwrap();
        assert_eq!(ours.get_ids(), input.as_slice(), "prompt ids of {:?}", p["text"]);
        let theirs = ids(&p["output_ids"]);
        eprintln!("prompt {i} ({} tokens): {:?}", input.len(), tokenizer.decode(&generated[i], false).unwrap());
        if generated[i] != theirs {
            let at = generated[i]
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(generated[i].len().min(theirs.len()));
            failures.push(format!(
                "prompt {i}: first difference at new token {at} of {} (transformers' margin there {})",
                theirs.len(),
                p["margins"][at]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gsm8k_cot_matches_lm_eval() {
    let reference = fixture("lm_eval_gsm8k_cot.json");
    let docs = reference["docs"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job_path = dir.path().join("job.yaml");
    let limit = docs.iter().map(|d| d["doc"].as_u64().unwrap()).max().unwrap() + 1;
    std::fs::write(
        &job_path,
        format!("model:\n  source: unused.gguf\noutput: out\ntasks:\n  - name: gsm8k_cot\n    limit: {limit}\n"),
    )
    .unwrap();
    let task = registry::load(&Job::load(&job_path).unwrap()).unwrap().pop().unwrap();
    assert_eq!(reference["max_gen_toks"].as_u64().unwrap() as usize, gsm8k::MAX_GEN_TOKS);

    let options = EngineOptions { resident: true, ..EngineOptions::default() };
    let (_store, mut engine) = common::engine_for(&common::smollm2_gguf(), options);
    let tokenizer = engine.tokenizer().unwrap().clone();
    let until: Vec<String> =
        reference["until"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect();
    let mut prompts = Vec::new();
    for theirs in docs {
        let row = theirs["doc"].as_u64().unwrap() as usize;
        let Doc::Generate(g) = &task.docs[row].doc else { panic!("gsm8k_cot documents generate") };
        assert_eq!(g.context, theirs["context"].as_str().unwrap(), "doc {row}: context");
        assert_eq!(g.target, theirs["target"].as_str().unwrap(), "doc {row}: target");
        let ids = airllm_eval::task::encode(&tokenizer, &g.context).unwrap();
        let prompt = generation::prompt(&tokenizer, engine.spec(), ids, &g.until, g.max_gen_toks);
        assert_eq!(prompt.until, until, "HFLM's stop sequences");
        assert_eq!(prompt.ids, self::ids(&theirs["context_ids"]), "doc {row}: context ids");
        prompts.push(prompt);
    }
    let batch: Vec<&Prompt> = prompts.iter().collect();
    let (completions, _) = generation::generate_wave(&mut engine, &batch, &Quiet, &mut |_, _| {}).unwrap();
    for (theirs, completion) in docs.iter().zip(&completions) {
        let row = theirs["doc"].as_u64().unwrap() as usize;
        eprintln!("doc {row}: {} tokens, {:?}", completion.tokens, completion.text);
        assert_eq!(completion.text, theirs["generation"].as_str().unwrap(), "doc {row}: completion");
        assert_eq!(completion.tokens, theirs["output_ids"].as_array().unwrap().len(), "doc {row}: tokens generated");
        assert_eq!(gsm8k::strict_match(&completion.text), theirs["filtered"]["strict-match"].as_str().unwrap());
        assert_eq!(gsm8k::flexible_extract(&completion.text), theirs["filtered"]["flexible-extract"].as_str().unwrap());
        for (metric, filter) in
            [(Metric::ExactMatchStrict, "strict-match"), (Metric::ExactMatchFlexible, "flexible-extract")]
        {
            let Sample::Value(ours) = metric.sample(&task.docs[row].doc, &[], Some(&completion.text)) else { panic!() };
            assert_eq!(ours, theirs["exact_match"][filter].as_f64().unwrap(), "doc {row}: exact_match {filter}");
        }
    }
}
