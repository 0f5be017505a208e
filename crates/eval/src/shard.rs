//! Sharding a job over many processes: a cluster's job engine (a Slurm job array, a Kubernetes
//! Indexed Job) runs N copies of the same job, each scores its shard of the documents into its own
//! folder, and `airllm-eval merge` joins them.
//!
//! A shard is `I/N` (0-based). It comes from `--shard I/N`, else the job's `shard:`, else the
//! environment: Slurm arrays (`SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN` of
//! `SLURM_ARRAY_TASK_COUNT`) or Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX` of
//! `AIRLLM_SHARDS`, which the manifest sets since Kubernetes does not export the count).
//!
//! Documents are dealt out by token count, longest first, each to the shard with the fewest tokens
//! so far (ties to the lower shard), so shards finish together; the deal depends only on the job,
//! so a restarted shard gets the same documents and resumes its own journal.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            bail!("shard {index}/{count}: the index must be below the count, which must be at least 1");
        }
        Ok(Shard { index, count })
    }

    /// The shard's folder inside the job's output folder.
    pub fn dir(&self, output: &Path) -> PathBuf {
        output.join(self.dir_name())
    }

    pub fn dir_name(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }

    /// The shard a cluster's job engine says this process is, if any.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| v.trim().parse::<usize>().with_context(|| format!("{name}={v} is not a number")))
                .transpose()
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let count = number("SLURM_ARRAY_TASK_COUNT")?
                .context("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")?;
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id.checked_sub(min).context("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN")?;
            return Shard::new(index, count).map(Some).context("from the Slurm array variables");
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = number("AIRLLM_SHARDS")?
                .context("JOB_COMPLETION_INDEX is set but AIRLLM_SHARDS is not: set it to the Job's `completions`")?;
            return Shard::new(index, count).map(Some).context("from JOB_COMPLETION_INDEX and AIRLLM_SHARDS");
        }
        Ok(None)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (index, count) = text.split_once('/').ok_or_else(|| format!("`{text}` is not I/N, e.g. 0/4"))?;
        let parse = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("`{text}` is not I/N, e.g. 0/4"));
        Shard::new(parse(index)?, parse(count)?).map_err(|e| e.to_string())
    }
}

/// Which shard each document goes to: longest first, each to the least loaded shard.
pub fn assign(doc_tokens: &[u64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..doc_tokens.len()).collect();
    order.sort_by_key(|&d| (std::cmp::Reverse(doc_tokens[d]), d));
    let mut load = vec![0u64; count];
    let mut shard_of = vec![0; doc_tokens.len()];
    for d in order {
        let lightest = (0..count).min_by_key(|&s| (load[s], s)).expect("at least one shard");
        shard_of[d] = lightest;
        load[lightest] += doc_tokens[d];
    }
    shard_of
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn slurm_and_kubernetes_variables() {
        let slurm =
            vars(&[("SLURM_ARRAY_TASK_ID", "7"), ("SLURM_ARRAY_TASK_MIN", "5"), ("SLURM_ARRAY_TASK_COUNT", "3")]);
        assert_eq!(Shard::from_vars(slurm).unwrap(), Some(Shard { index: 2, count: 3 }));
        let k8s = vars(&[("JOB_COMPLETION_INDEX", "1"), ("AIRLLM_SHARDS", "4")]);
        assert_eq!(Shard::from_vars(k8s).unwrap(), Some(Shard { index: 1, count: 4 }));
        let err = Shard::from_vars(vars(&[("JOB_COMPLETION_INDEX", "1")])).unwrap_err().to_string();
        assert!(err.contains("AIRLLM_SHARDS is not"), "{err}");
        let err = format!(
            "{:#}",
            Shard::from_vars(vars(&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "3")])).unwrap_err()
        );
        assert!(err.contains("shard 3/3"), "{err}");
        assert_eq!(Shard::from_vars(vars(&[])).unwrap(), None);
    }

    #[test]
    fn parses_i_of_n() {
        assert_eq!("2/5".parse::<Shard>().unwrap(), Shard { index: 2, count: 5 });
        assert!("5/5".parse::<Shard>().is_err());
        assert!("two".parse::<Shard>().is_err());
    }

    #[test]
    fn deal_balances_tokens_and_is_deterministic() {
        let tokens = [10, 9, 8, 1, 1, 1, 5, 5];
        let shards = assign(&tokens, 3);
        let mut load = [0u64; 3];
        for (d, s) in shards.iter().enumerate() {
            load[*s] += tokens[d];
        }
        assert_eq!(load.iter().max().unwrap() - load.iter().min().unwrap(), 1, "{load:?}");
        assert_eq!(assign(&tokens, 3), shards);
        assert_eq!(assign(&tokens, 1), vec![0; 8]);
    }
}
