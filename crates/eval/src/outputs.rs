//! The output folder: final CSV/JSON files and the journal that makes a run resumable.
//!
//! ```text
//! OUT/job.json           job hash and effective spec, written when the run starts
//! OUT/items.partial.csv  journal: items appended (and fsynced) after every wave
//! OUT/items.csv          final, sorted by subject then index
//! OUT/summary.csv        per subject and overall: n, accuracy, stderr
//! OUT/run.json           run record (model, hash, tokens, speed, bytes read, memory, time)
//! OUT/.lock              held while a run writes here
//! ```
//! Final files are written through a temp name and renamed, so a reader never sees half a file.
//! A run killed at any point leaves the journal with whole waves (a torn last line is dropped),
//! and the next run of the same job skips the items found there.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use airllm_engine::store::write_atomic;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::dataset::mmlu::LETTERS;
use crate::task::mmlu::{Accuracy, ItemResult, accuracy};

pub const JOB: &str = "job.json";
pub const JOURNAL: &str = "items.partial.csv";
pub const ITEMS: &str = "items.csv";
pub const SUMMARY: &str = "summary.csv";
pub const RUN: &str = "run.json";
const LOCK: &str = ".lock";
const HEADER: &str = "subject,index,gold,pred,correct,lp_A,lp_B,lp_C,lp_D\n";

/// What `job.json` records: enough to tell whether an output folder belongs to a job.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_hash: String,
    pub spec: serde_json::Value,
}

/// An output folder opened for a run: locked, and holding the items finished so far.
pub struct OutputDir {
    dir: PathBuf,
    journal: File,
    _lock: File,
}

impl OutputDir {
    /// Opens (creating) `dir` for the job `hash`. With `resume`, the journal of an earlier run of
    /// the same job is kept and its items returned; a folder of another job is an error. Without
    /// `resume` the folder's earlier results are removed and the run starts fresh.
    pub fn open(dir: &Path, hash: &str, spec: &serde_json::Value, resume: bool) -> Result<(Self, Vec<ItemResult>)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating output folder {}", dir.display()))?;
        let lock = lock(dir)?;
        let previous = read_job_record(dir)?;
        match &previous {
            Some(record) if resume && record.job_hash != hash => bail!(
                "{} holds results of another job (hash {}, this job is {hash}); \
                 choose another output folder (--out) or start fresh with --no-resume (resume: false), \
                 which deletes them",
                dir.display(),
                record.job_hash
            ),
            Some(_) if !resume => {
                tracing::info!("resume is off: removing earlier results in {}", dir.display());
                for name in [JOURNAL, ITEMS, SUMMARY, RUN, JOB] {
                    remove_if_present(&dir.join(name))?;
                }
            }
            _ => {}
        }
        if previous.is_none() || !resume {
            remove_if_present(&dir.join(JOURNAL))?;
            let record = JobRecord { job_hash: hash.to_string(), spec: spec.clone() };
            write_atomic(&dir.join(JOB), &serde_json::to_vec_pretty(&record)?)?;
        }
        let (journal, done) = open_journal(&dir.join(JOURNAL))?;
        Ok((OutputDir { dir: dir.to_path_buf(), journal, _lock: lock }, done))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a wave's finished items and fsyncs, so a kill after this loses none of them.
    pub fn append(&mut self, items: &[ItemResult]) -> Result<()> {
        let mut text = String::new();
        for item in items {
            text.push_str(&item_row(item));
        }
        self.journal.write_all(text.as_bytes()).context("appending to the journal")?;
        self.journal.sync_data().context("syncing the journal")?;
        Ok(())
    }

    /// Writes items.csv and summary.csv (sorted, so every run of the job writes the same bytes).
    pub fn write_results(&self, items: &mut [ItemResult]) -> Result<Vec<(String, Accuracy)>> {
        items.sort_by(|a, b| (&a.subject, a.index).cmp(&(&b.subject, b.index)));
        let mut text = String::from(HEADER);
        for item in items.iter() {
            text.push_str(&item_row(item));
        }
        write_atomic(&self.dir.join(ITEMS), text.as_bytes())?;
        let summary = summarize(items);
        let mut text = String::from("subject,n,accuracy,stderr\n");
        for (name, acc) in &summary {
            let stderr = acc.stderr.map(|s| format!("{s:.6}")).unwrap_or_default();
            text.push_str(&format!("{name},{},{:.6},{stderr}\n", acc.n, acc.accuracy));
        }
        write_atomic(&self.dir.join(SUMMARY), text.as_bytes())?;
        Ok(summary)
    }

    pub fn write_run_record(&self, record: &serde_json::Value) -> Result<()> {
        Ok(write_atomic(&self.dir.join(RUN), &serde_json::to_vec_pretty(record)?)?)
    }
}

/// Per subject (sorted) then `overall`, the micro average over all items.
pub fn summarize(items: &[ItemResult]) -> Vec<(String, Accuracy)> {
    let mut by_subject: BTreeMap<&str, Vec<&ItemResult>> = BTreeMap::new();
    for item in items {
        by_subject.entry(&item.subject).or_default().push(item);
    }
    let mut rows: Vec<(String, Accuracy)> =
        by_subject.into_iter().map(|(name, list)| (name.to_string(), accuracy(list))).collect();
    rows.push(("overall".into(), accuracy(items)));
    rows
}

/// One CSV row. Log-probabilities use Rust's shortest round-trip form, so a value read back from
/// the journal prints exactly as it did before.
fn item_row(item: &ItemResult) -> String {
    let lp = item.logprobs;
    format!(
        "{},{},{},{},{},{},{},{},{}\n",
        csv_field(&item.subject),
        item.index,
        LETTERS[item.gold],
        LETTERS[item.pred],
        item.correct() as u8,
        lp[0],
        lp[1],
        lp[2],
        lp[3]
    )
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!("{} is in use by another airllm-eval run", dir.display()),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
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

/// Opens the journal for appending, returning the items in it. A torn last line (the run was
/// killed mid-write) is cut off so that new rows start on a line of their own.
fn open_journal(path: &Path) -> Result<(File, Vec<ItemResult>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = if text.is_empty() { HEADER.len() } else { text.rfind('\n').map_or(0, |i| i + 1) };
    let mut items = Vec::new();
    for (i, line) in text[..complete.min(text.len())].lines().enumerate().skip(1) {
        items.push(parse_row(line).with_context(|| format!("{}:{}: bad journal row", path.display(), i + 1))?);
    }
    let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path)?;
    if text.is_empty() {
        file.write_all(HEADER.as_bytes())?;
    } else {
        file.set_len(complete as u64)?;
    }
    file.seek(SeekFrom::End(0))?;
    file.sync_all()?;
    Ok((file, items))
}

fn parse_row(line: &str) -> Result<ItemResult> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
    let record = reader.records().next().context("empty row")??;
    if record.len() != 9 {
        bail!("expected 9 fields, found {}", record.len());
    }
    let letter = |s: &str| LETTERS.iter().position(|l| *l == s).with_context(|| format!("bad letter {s}"));
    let lp = |i: usize| record[i].parse::<f32>().with_context(|| format!("bad number {}", &record[i]));
    Ok(ItemResult {
        subject: record[0].to_string(),
        index: record[1].parse()?,
        gold: letter(&record[2])?,
        pred: letter(&record[3])?,
        logprobs: [lp(5)?, lp(6)?, lp(7)?, lp(8)?],
    })
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

    fn item(subject: &str, index: usize, lp: [f32; 4]) -> ItemResult {
        ItemResult { subject: subject.into(), index, gold: 1, pred: crate::task::mmlu::predict(&lp), logprobs: lp }
    }

    #[test]
    fn journal_round_trips_and_drops_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({});
        let a = item("anatomy", 0, [-1.25, -0.1, f32::NEG_INFINITY, -3.0e-7]);
        {
            let (mut out, done) = OutputDir::open(dir.path(), "h1", &spec, true).unwrap();
            assert!(done.is_empty());
            out.append(std::slice::from_ref(&a)).unwrap();
        }
        let mut journal = OpenOptions::new().append(true).open(dir.path().join(JOURNAL)).unwrap();
        journal.write_all(b"anatomy,1,B,A,0,-1.5,-2").unwrap();
        drop(journal);
        let (mut out, done) = OutputDir::open(dir.path(), "h1", &spec, true).unwrap();
        assert_eq!(done, vec![a.clone()]);
        let b = item("anatomy", 1, [-2.0, -1.0, -3.0, -4.0]);
        out.append(std::slice::from_ref(&b)).unwrap();
        drop(out);
        let (_out, done) = OutputDir::open(dir.path(), "h1", &spec, true).unwrap();
        assert_eq!(done, vec![a, b]);
    }

    #[test]
    fn another_job_is_refused_unless_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({});
        let (mut out, _) = OutputDir::open(dir.path(), "h1", &spec, true).unwrap();
        out.append(&[item("x", 0, [0.0; 4])]).unwrap();
        drop(out);
        let err = OutputDir::open(dir.path(), "h2", &spec, true).err().unwrap().to_string();
        assert!(err.contains("another job") && err.contains("--no-resume"), "{err}");
        let (_out, done) = OutputDir::open(dir.path(), "h2", &spec, false).unwrap();
        assert!(done.is_empty());
    }

    #[test]
    fn a_second_run_on_the_same_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({});
        let (_out, _) = OutputDir::open(dir.path(), "h1", &spec, true).unwrap();
        let err = OutputDir::open(dir.path(), "h1", &spec, true).err().unwrap().to_string();
        assert!(err.contains("in use"), "{err}");
    }

    #[test]
    fn summary_has_subjects_then_overall() {
        let items = vec![
            item("b", 0, [0.0, 1.0, 0.0, 0.0]),
            item("a", 0, [1.0, 0.0, 0.0, 0.0]),
            item("a", 1, [0.0, 1.0, 0.0, 0.0]),
        ];
        let rows = summarize(&items);
        let names: Vec<_> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["a", "b", "overall"]);
        assert_eq!(rows[0].1.accuracy, 0.5);
        assert!((rows[0].1.stderr.unwrap() - 0.5).abs() < 1e-12);
        assert!((rows[2].1.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(rows[1].1.stderr, None);
    }
}
