//! The output folder: the journal that makes a run resumable, and the final files.
//!
//! ```text
//! OUT/job.json                 job hash and effective spec, written when the run starts
//! OUT/responses.partial.csv    journal: finished documents appended (and fsynced) after every wave
//! OUT/requests.csv             task,doc,choice,loglikelihood,is_greedy   (choice tasks)
//! OUT/rolling.csv              task,doc,loglikelihood,tokens,words,bytes (rolling tasks)
//! OUT/generations.csv          task,doc,completion,strict,flexible,gold,exact_match,... (generation tasks)
//! OUT/docs.csv                 task,doc,gold,pred,<metric>...            (every document)
//! OUT/summary.csv              task,metric,n,value,stderr                (tasks and groups)
//! OUT/results.json             the same numbers in lm-eval's results layout
//! OUT/run.json                 run record (model, hash, tokens, speed, bytes read, memory, time)
//! OUT/.lock                    held while a run writes here
//! ```
//! Final files are written through a temp name and renamed, so a reader never sees half a file.
//! The journal holds one line per finished document; a run killed at any point leaves it with
//! whole waves (a torn last line is dropped), and the next run of the same job skips the
//! documents found there.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use airllm_engine::store::write_atomic;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::report::Report;
use crate::shard::Shard;
use crate::task::Response;
use crate::task::{Doc, Task};

pub const JOB: &str = "job.json";
pub const JOURNAL: &str = "responses.partial.csv";
pub const REQUESTS: &str = "requests.csv";
pub const ROLLING: &str = "rolling.csv";
pub const GENERATIONS: &str = "generations.csv";
pub const DOCS: &str = "docs.csv";
pub const SUMMARY: &str = "summary.csv";
pub const RESULTS: &str = "results.json";
pub const RUN: &str = "run.json";
const LOCK: &str = ".lock";
const HEADER: &str = "task,doc,loglikelihoods,is_greedy,tokens,completion\n";

/// What `job.json` records: enough to tell whether an output folder belongs to a job, and for
/// `merge` to rebuild the job's documents and results from shard folders.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_hash: String,
    pub spec: serde_json::Value,
    /// What results.json says of the model and numerics (the same for every shard of a job).
    #[serde(default)]
    pub identity: serde_json::Value,
    /// The job file the spec came from (its paths are already resolved).
    #[serde(default)]
    pub job: PathBuf,
    /// Set in a shard's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// A finished document, as the journal keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub task: String,
    /// The document's row in its source file.
    pub doc: usize,
    /// One per choice; one for a rolling document (all its windows).
    pub responses: Vec<Response>,
    /// Tokens scored (for a rolling document, its length in tokens; for a generated one, the
    /// tokens generated).
    pub tokens: usize,
    /// A generated document's completion.
    pub completion: Option<String>,
}

/// Finds the job's document a journal line is about, and checks that the line is shaped like it
/// (one response per choice, one for a rolling text, a completion for a generated one): the same
/// rule for a resumed run and for a merge of shards.
pub struct JournalIndex<'a> {
    tasks: &'a [Task],
    /// (task name, row) -> (document number across tasks, task, position in the task).
    docs: HashMap<(&'a str, usize), (usize, usize, usize)>,
}

impl<'a> JournalIndex<'a> {
    pub fn new(tasks: &'a [Task]) -> Self {
        let positions = tasks
            .iter()
            .enumerate()
            .flat_map(|(t, task)| task.docs.iter().enumerate().map(move |(d, doc)| (t, d, doc)));
        let docs =
            positions.enumerate().map(|(n, (t, d, doc))| ((tasks[t].name.as_str(), doc.row), (n, t, d))).collect();
        Self { tasks, docs }
    }

    /// `(document number across tasks, task, position in the task)` of a finished document.
    pub fn locate(&self, finished: &Finished) -> Result<(usize, usize, usize)> {
        let &(n, t, d) = self
            .docs
            .get(&(finished.task.as_str(), finished.doc))
            .with_context(|| format!("document {} {} is not part of this job", finished.task, finished.doc))?;
        let doc = &self.tasks[t].docs[d].doc;
        let expected = doc.responses_expected();
        let generated = matches!(doc, Doc::Generate(_));
        if finished.responses.len() != expected || finished.completion.is_some() != generated {
            bail!(
                "document {} {} has {} responses{}, expected {expected}{}",
                finished.task,
                finished.doc,
                finished.responses.len(),
                if finished.completion.is_some() { " and a completion" } else { "" },
                if generated { " and a completion" } else { "" }
            );
        }
        Ok((n, t, d))
    }
}

/// An output folder opened for a run: locked, and holding the documents finished so far.
pub struct OutputDir {
    dir: PathBuf,
    journal: File,
    _lock: File,
}

impl OutputDir {
    /// Opens (creating) `dir` for the job `hash`. With `resume`, the journal of an earlier run of
    /// the same job is kept and its documents returned; a folder of another job is an error.
    /// Without `resume` the folder's earlier results are removed and the run starts fresh.
    pub fn open(dir: &Path, record: &JobRecord, resume: bool) -> Result<(Self, Vec<Finished>)> {
        let hash = &record.job_hash;
        std::fs::create_dir_all(dir).with_context(|| format!("creating output folder {}", dir.display()))?;
        let lock = lock(dir)?;
        let previous = read_job_record(dir)?;
        match &previous {
            Some(previous) if resume && previous.job_hash != *hash => bail!(
                "{} holds results of another job (hash {}, this job is {hash}); \
                 choose another output folder (--out) or start fresh with --no-resume (resume: false), \
                 which deletes them",
                dir.display(),
                previous.job_hash
            ),
            Some(_) if !resume => {
                tracing::info!("resume is off: removing earlier results in {}", dir.display());
                for name in [JOURNAL, REQUESTS, ROLLING, GENERATIONS, DOCS, SUMMARY, RESULTS, RUN, JOB] {
                    remove_if_present(&dir.join(name))?;
                }
            }
            _ => {}
        }
        if previous.is_none() || !resume {
            remove_if_present(&dir.join(JOURNAL))?;
        }
        // Rewritten on resume too, so the record always describes the run that writes here.
        write_atomic(&dir.join(JOB), &serde_json::to_vec_pretty(record)?)?;
        let (journal, done) = open_journal(&dir.join(JOURNAL))?;
        Ok((OutputDir { dir: dir.to_path_buf(), journal, _lock: lock }, done))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a wave's finished documents and fsyncs, so a kill after this loses none of them.
    pub fn append(&mut self, finished: &[Finished]) -> Result<()> {
        let text: String = finished.iter().map(journal_row).collect();
        self.journal.write_all(text.as_bytes()).context("appending to the journal")?;
        self.journal.sync_data().context("syncing the journal")?;
        Ok(())
    }

    pub fn write_report(&self, report: &Report) -> Result<()> {
        write_report(&self.dir, report)
    }

    pub fn write_run_record(&self, record: &serde_json::Value) -> Result<()> {
        Ok(write_atomic(&self.dir.join(RUN), &serde_json::to_vec_pretty(record)?)?)
    }
}

/// Writes the final files (each the same bytes for every run of the job, and for a merge of its
/// shards).
pub fn write_report(dir: &Path, report: &Report) -> Result<()> {
    write_atomic(&dir.join(REQUESTS), report.requests_csv.as_bytes())?;
    write_atomic(&dir.join(ROLLING), report.rolling_csv.as_bytes())?;
    write_atomic(&dir.join(GENERATIONS), report.generations_csv.as_bytes())?;
    write_atomic(&dir.join(DOCS), report.docs_csv.as_bytes())?;
    write_atomic(&dir.join(SUMMARY), report.summary_csv.as_bytes())?;
    write_atomic(&dir.join(RESULTS), &serde_json::to_vec_pretty(&report.results_json)?)?;
    Ok(())
}

/// One journal line. Numbers use Rust's shortest round-trip form, so a value read back prints
/// exactly as it did before.
fn journal_row(finished: &Finished) -> String {
    let lls: Vec<String> = finished.responses.iter().map(|r| r.loglikelihood.to_string()).collect();
    let greedy: String = finished.responses.iter().map(|r| if r.is_greedy { '1' } else { '0' }).collect();
    // A completion is kept as a JSON string: one line, whatever it holds.
    let completion =
        finished.completion.as_ref().map_or_else(String::new, |c| serde_json::Value::from(c.as_str()).to_string());
    format!(
        "{},{},{},{greedy},{},{}\n",
        csv_field(&finished.task),
        finished.doc,
        lls.join(" "),
        finished.tokens,
        csv_field(&completion)
    )
}

/// The complete lines of a journal (a torn last line is left out).
fn parse_journal(path: &Path, text: &str) -> Result<Vec<Finished>> {
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let mut lines = text[..complete].lines().enumerate();
    match lines.next() {
        None => return Ok(Vec::new()),
        Some((_, header)) if format!("{header}\n") != HEADER => {
            bail!("{}: not a journal of this version (header `{header}`); start fresh with --no-resume", path.display())
        }
        Some(_) => {}
    }
    lines
        .map(|(i, line)| parse_row(line).with_context(|| format!("{}:{}: bad journal row", path.display(), i + 1)))
        .collect()
}

fn parse_row(line: &str) -> Result<Finished> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
    let record = reader.records().next().context("empty row")??;
    if record.len() != 6 {
        bail!("expected 6 fields, found {}", record.len());
    }
    let lls: Vec<f64> = record[2]
        .split(' ')
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().with_context(|| format!("bad number {v}")))
        .collect::<Result<_>>()?;
    let greedy: Vec<bool> = record[3].chars().map(|c| c == '1').collect();
    if lls.len() != greedy.len() {
        bail!("{} log-likelihoods but {} greedy flags", lls.len(), greedy.len());
    }
    let responses = lls.into_iter().zip(greedy).map(|(loglikelihood, is_greedy)| Response { loglikelihood, is_greedy });
    Ok(Finished {
        task: record[0].to_string(),
        doc: record[1].parse()?,
        responses: responses.collect(),
        tokens: record[4].parse()?,
        completion: match &record[5] {
            "" => None,
            json => Some(serde_json::from_str(json).context("bad completion")?),
        },
    })
}

/// A CSV field, quoted when it must be.
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

/// Locks an output folder for writing (released when the file is dropped).
pub fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!("{} is in use by another airllm-eval run", dir.display()),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// A finished or running output folder's job record and the documents in its journal, read
/// without locking or changing anything (for `merge`).
pub fn read_folder(dir: &Path) -> Result<(JobRecord, Vec<Finished>)> {
    let record =
        read_job_record(dir)?.with_context(|| format!("{} has no {JOB}: not an output folder", dir.display()))?;
    let path = dir.join(JOURNAL);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok((record, parse_journal(&path, &text)?))
}

fn read_job_record(dir: &Path) -> Result<Option<JobRecord>> {
    let path = dir.join(JOB);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    let record = serde_json::from_str(&text).with_context(|| format!("{} is not a job record", path.display()))?;
    Ok(Some(record))
}

/// Opens the journal for appending, returning the documents in it. A torn last line (the run was
/// killed mid-write) is cut off so that new rows start on a line of their own.
fn open_journal(path: &Path) -> Result<(File, Vec<Finished>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = if text.is_empty() { HEADER.len() } else { text.rfind('\n').map_or(0, |i| i + 1) };
    let done = parse_journal(path, &text)?;
    let write = |e: std::io::Error| anyhow::Error::new(e).context(format!("writing the journal {}", path.display()));
    let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).map_err(write)?;
    if text.is_empty() {
        file.write_all(HEADER.as_bytes()).map_err(write)?;
    } else {
        file.set_len(complete as u64).map_err(write)?;
    }
    file.seek(SeekFrom::End(0)).map_err(write)?;
    file.sync_all().map_err(write)?;
    Ok((file, done))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Peak resident memory (VmHWM) in bytes, where /proc says it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(task: &str, doc: usize, lls: &[f64]) -> Finished {
        let responses = lls.iter().enumerate().map(|(i, &loglikelihood)| Response { loglikelihood, is_greedy: i == 1 });
        Finished { task: task.into(), doc, responses: responses.collect(), tokens: 7, completion: None }
    }

    fn record(hash: &str) -> JobRecord {
        JobRecord {
            job_hash: hash.into(),
            spec: serde_json::json!({}),
            identity: serde_json::json!({}),
            job: PathBuf::new(),
            shard: None,
        }
    }

    #[test]
    fn journal_round_trips_and_drops_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let spec = record("h1");
        let a = finished("mmlu_anatomy", 0, &[-1.25, -0.1, f64::NEG_INFINITY, -3.0e-7]);
        {
            let (mut out, done) = OutputDir::open(dir.path(), &spec, true).unwrap();
            assert!(done.is_empty());
            out.append(std::slice::from_ref(&a)).unwrap();
        }
        let mut journal = OpenOptions::new().append(true).open(dir.path().join(JOURNAL)).unwrap();
        journal.write_all(b"mmlu_anatomy,1,-1.5 -2").unwrap();
        drop(journal);
        let (mut out, done) = OutputDir::open(dir.path(), &spec, true).unwrap();
        assert_eq!(done, vec![a.clone()]);
        let b = Finished {
            completion: Some("Q: 2, \"3\"\nA: x".into()),
            ..finished("wikitext", 3, &[-12345.678901234567])
        };
        out.append(std::slice::from_ref(&b)).unwrap();
        drop(out);
        let (_out, done) = OutputDir::open(dir.path(), &spec, true).unwrap();
        assert_eq!(done, vec![a, b]);
    }

    #[test]
    fn another_job_is_refused_unless_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let spec = record("h1");
        let (mut out, _) = OutputDir::open(dir.path(), &spec, true).unwrap();
        out.append(&[finished("x", 0, &[0.0; 4])]).unwrap();
        drop(out);
        let err = OutputDir::open(dir.path(), &record("h2"), true).err().unwrap().to_string();
        assert!(err.contains("another job") && err.contains("--no-resume"), "{err}");
        let (_out, done) = OutputDir::open(dir.path(), &record("h2"), false).unwrap();
        assert!(done.is_empty());
    }

    #[test]
    fn a_second_run_on_the_same_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = record("h1");
        let (_out, _) = OutputDir::open(dir.path(), &spec, true).unwrap();
        let err = OutputDir::open(dir.path(), &spec, true).err().unwrap().to_string();
        assert!(err.contains("in use"), "{err}");
    }
}
