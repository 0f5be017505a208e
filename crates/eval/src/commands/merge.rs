//! `airllm-eval merge OUTPUT`: joins the shard folders `OUTPUT/shard-I-of-N/` of a sharded job
//! into the files a single run writes, in `OUTPUT` itself.
//!
//! The shards must all be there, come from one job (job hash and identity: model, store kind,
//! backend, precision), hold disjoint documents and together cover every document of the job. The
//! metrics are computed again from the journaled responses of every document, never averaged
//! from per-shard numbers, so the merged files are byte for byte those of an unsharded run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use airllm_engine::store::write_atomic;
use anyhow::{Context, Result, bail};
use clap::Args;

use crate::job::{Job, JobSpec};
use crate::outputs::{self, Finished, JOB, JobRecord, JournalIndex, RUN};
use crate::report::{self, Scores};
use crate::shard::Shard;
use crate::task::{Response, Task, registry};
use crate::thresholds;

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The job's output folder, holding shard-I-of-N/ folders.
    pub output: PathBuf,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let output = &args.output;
    let shards = find_shards(output)?;
    let mut folders = Vec::new();
    for shard in &shards {
        let dir = shard.dir(output);
        let (record, finished) = outputs::read_folder(&dir)?;
        folders.push((*shard, record, finished));
    }
    let record = same_job(&folders)?;
    let spec: JobSpec = serde_json::from_value(record.spec.clone()).context("the shards' job.json spec")?;
    let job = Job { path: record.job.clone(), text: String::new(), spec };
    let tasks =
        registry::load(&job).context("loading the job's tasks again (the data must be where the shards read it)")?;
    let unfinished: Vec<String> =
        shards.iter().filter(|s| !s.dir(output).join(RUN).exists()).map(Shard::dir_name).collect();
    let scores = gather(&tasks, &folders, &unfinished)?;
    let _lock = outputs::lock(output)?;
    let report = report::build(&tasks, &scores, record.identity.clone());
    outputs::write_report(output, &report)?;
    let merged = JobRecord { shard: None, ..record };
    write_atomic(&output.join(JOB), &serde_json::to_vec_pretty(&merged)?)?;
    let run = serde_json::json!({
        "merged_from": shards.iter().map(Shard::dir_name).collect::<Vec<_>>(),
        "job_hash": merged.job_hash,
        "docs": tasks.iter().map(|t| t.docs.len()).sum::<usize>(),
    });
    write_atomic(&output.join(RUN), &serde_json::to_vec_pretty(&run)?)?;
    report::print_table(&report.summary);
    println!("merged {} shards into {}", shards.len(), output.display());
    thresholds::enforce(&job.spec.thresholds, &report.summary)
}

/// The shard folders of `output`: every one of 0..N, for one N.
fn find_shards(output: &Path) -> Result<Vec<Shard>> {
    let entries = std::fs::read_dir(output).with_context(|| format!("reading {}", output.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("shard-") else { continue };
        let shard = rest
            .replace("-of-", "/")
            .parse::<Shard>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", output.join(&name).display()))?;
        found.push(shard);
    }
    let Some(count) = found.first().map(|s| s.count) else {
        bail!("{} holds no shard-I-of-N folders", output.display());
    };
    if let Some(odd) = found.iter().find(|s| s.count != count) {
        bail!(
            "{} holds shards of {count} and of {}: {} is from another split",
            output.display(),
            odd.count,
            odd.dir_name()
        );
    }
    let shards: Vec<Shard> = (0..count).map(|index| Shard { index, count }).collect();
    if let Some(missing) = shards.iter().find(|s| !found.contains(s)) {
        bail!("{} is missing from {}: every shard must run before the merge", missing.dir_name(), output.display());
    }
    Ok(shards)
}

/// The one job record every shard shares.
fn same_job(folders: &[(Shard, JobRecord, Vec<Finished>)]) -> Result<JobRecord> {
    let (first, record, _) = &folders[0];
    for (shard, other, _) in &folders[1..] {
        if other.job_hash != record.job_hash || other.identity != record.identity {
            bail!(
                "{} comes from another job than {} (job hash {} against {}; model and numerics {} against {})",
                shard.dir_name(),
                first.dir_name(),
                other.job_hash,
                record.job_hash,
                other.identity,
                record.identity
            );
        }
    }
    Ok(record.clone())
}

/// Every document's responses, from exactly one shard each.
fn gather(tasks: &[Task], folders: &[(Shard, JobRecord, Vec<Finished>)], unfinished: &[String]) -> Result<Scores> {
    let index = JournalIndex::new(tasks);
    let mut responses: Vec<Vec<Option<Vec<Response>>>> = tasks.iter().map(|t| vec![None; t.docs.len()]).collect();
    let mut tokens: Vec<Vec<usize>> = tasks.iter().map(|t| vec![0; t.docs.len()]).collect();
    let mut completions: Vec<Vec<Option<String>>> = tasks.iter().map(|t| vec![None; t.docs.len()]).collect();
    let mut owner: HashMap<(usize, usize), Shard> = HashMap::new();
    for (shard, _, finished) in folders {
        for f in finished {
            let (_, t, d) = index.locate(f).with_context(|| shard.dir_name())?;
            if let Some(other) = owner.insert((t, d), *shard) {
                bail!("document {} {} is in both {} and {}", f.task, f.doc, other.dir_name(), shard.dir_name());
            }
            responses[t][d] = Some(f.responses.clone());
            tokens[t][d] = f.tokens;
            completions[t][d] = f.completion.clone();
        }
    }
    let missing = responses.iter().flatten().filter(|r| r.is_none()).count();
    if missing > 0 {
        let (t, d) = responses
            .iter()
            .enumerate()
            .find_map(|(t, r)| r.iter().position(Option::is_none).map(|d| (t, d)))
            .expect("one is missing");
        bail!(
            "{missing} documents of the job are in no shard's journal (the first: {} {}); shards without a \
             finished run.json: {}; run them again (they resume), then merge",
            tasks[t].name,
            tasks[t].docs[d].row,
            if unfinished.is_empty() { "none".to_string() } else { unfinished.join(", ") }
        );
    }
    let responses = responses.into_iter().map(|docs| docs.into_iter().map(|r| r.expect("checked")).collect()).collect();
    Ok(Scores { responses, tokens, completions })
}
