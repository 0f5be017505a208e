//! Content fingerprints of model files: xxh3-64 over every byte, so a changed weight always gives
//! a new fingerprint (and a new layer store, and a new job identity).
//!
//! Hashing streams at several GB/s, but a large checkpoint read from disk still takes a while, so
//! each file's hash is remembered in a small JSON cache keyed by (canonical path, size, mtime):
//! an unchanged file is not read again. The cache is an optimisation only: an unreadable or
//! stale cache file is ignored and rewritten, never trusted over a file whose size or mtime moved.
//! (A rewrite that keeps both size and mtime to the nanosecond is not noticed; filesystems update
//! mtime on every write.) The same cache remembers other digests of a file where a caller computes
//! them ([`FileHashes::digest`]: the sha256 a job pins a fetched model to).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Where file hashes are remembered between runs (or nowhere).
#[derive(Debug, Clone, Default)]
pub struct FileHashes {
    cache_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CachedHash {
    size: u64,
    mtime_ns: u128,
    #[serde(alias = "xxh3")]
    digest: String,
}

type Cache = BTreeMap<String, CachedHash>;

impl FileHashes {
    /// Remembers hashes in `cache_file` (a JSON file; created when missing).
    pub fn cached_in(cache_file: PathBuf) -> Self {
        Self { cache_file: Some(cache_file) }
    }

    /// Hashes every file every time.
    pub fn uncached() -> Self {
        Self { cache_file: None }
    }

    /// One fingerprint of `files` together: each file's name, size and content hash, in order.
    pub fn fingerprint(&self, files: &[PathBuf]) -> Result<String> {
        let loaded = self.load();
        let mut cache = loaded.clone();
        let mut combined = xxhash_rust::xxh3::Xxh3::new();
        for path in files {
            let entry = cached_digest(path, "", &mut cache, xxh3_contents)?;
            combined.update(path.file_name().unwrap_or_default().as_encoded_bytes());
            combined.update(&entry.size.to_le_bytes());
            combined.update(entry.digest.as_bytes());
        }
        self.save(&cache, &loaded);
        Ok(format!("xxh3-{:016x}", combined.digest()))
    }

    /// The `algorithm` digest of `path` (as `hash` computes it from the file: its size and the
    /// digest's text), remembered like the fingerprint's hashes, so that an unchanged file is not
    /// read again.
    pub fn digest(
        &self,
        path: &Path,
        algorithm: &str,
        hash: impl FnOnce(&Path) -> Result<(u64, String)>,
    ) -> Result<String> {
        let loaded = self.load();
        let mut cache = loaded.clone();
        let entry = cached_digest(path, &format!("{algorithm}:"), &mut cache, hash)?;
        self.save(&cache, &loaded);
        Ok(entry.digest)
    }

    fn load(&self) -> Cache {
        let Some(path) = &self.cache_file else { return Cache::new() };
        std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    /// Writes the cache where it differs from what was `loaded` (a run whose files all hit the
    /// cache writes nothing), less the entries of files that no longer exist (temp folders,
    /// models deleted from the cache), so that it does not grow without end.
    fn save(&self, cache: &Cache, loaded: &Cache) {
        let Some(path) = &self.cache_file else { return };
        if cache == loaded {
            return;
        }
        let live: Cache = (cache.iter())
            .filter(|(key, _)| key.find('/').is_some_and(|start| Path::new(&key[start..]).exists()))
            .map(|(key, entry)| (key.clone(), entry.clone()))
            .collect();
        let bytes = serde_json::to_vec_pretty(&live).expect("hash cache serializes");
        if let Err(e) = crate::store::write_atomic(path, &bytes) {
            tracing::warn!("{e}: file hashes not remembered; the next run hashes the model again");
        }
    }
}

/// The file's digest (cache key: `prefix` and its canonical path) from the cache when its size
/// and mtime are unchanged, else read and hashed by `hash` (and the cache updated).
fn cached_digest(
    path: &Path,
    prefix: &str,
    cache: &mut Cache,
    hash: impl FnOnce(&Path) -> Result<(u64, String)>,
) -> Result<CachedHash> {
    let canonical = path.canonicalize().map_err(|e| EngineError::io(path, e))?;
    let metadata = std::fs::metadata(&canonical).map_err(|e| EngineError::io(path, e))?;
    if !metadata.is_file() {
        return Err(EngineError::format(path, "is not a file"));
    }
    let mtime_ns = metadata.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let key = format!("{prefix}{}", canonical.to_string_lossy());
    if let Some(hit) = cache.get(&key).filter(|c| c.size == metadata.len() && c.mtime_ns == mtime_ns && mtime_ns != 0) {
        return Ok(hit.clone());
    }
    let (size, digest) = hash(path)?;
    let entry = CachedHash { size, mtime_ns, digest };
    cache.insert(key, entry.clone());
    Ok(entry)
}

/// Size and xxh3-64 of every byte of the file, read in large chunks.
fn xxh3_contents(path: &Path) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buffer = vec![0u8; 8 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            return Ok((size, format!("{:016x}", hasher.digest())));
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_changed_byte_changes_the_fingerprint_even_with_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.gguf");
        let mut bytes = vec![7u8; 5 << 20];
        std::fs::write(&file, &bytes).unwrap();
        let hashes = FileHashes::cached_in(dir.path().join("hashes.json"));
        let before = hashes.fingerprint(std::slice::from_ref(&file)).unwrap();
        assert_eq!(before, hashes.fingerprint(std::slice::from_ref(&file)).unwrap());
        assert_eq!(before, FileHashes::uncached().fingerprint(std::slice::from_ref(&file)).unwrap());

        // A byte in the middle, same size: neither the first nor the last MiB moves.
        bytes[5 << 19] = 8;
        std::fs::write(&file, &bytes).unwrap();
        // Make the change visible to the cache even where mtime granularity is coarse.
        let later = std::fs::metadata(&file).unwrap().modified().unwrap() + std::time::Duration::from_secs(2);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        let after = hashes.fingerprint(std::slice::from_ref(&file)).unwrap();
        assert_ne!(before, after);
        assert_eq!(after, FileHashes::uncached().fingerprint(&[file]).unwrap());
    }

    #[test]
    fn a_digest_is_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.gguf");
        std::fs::write(&file, b"weights").unwrap();
        let hashes = FileHashes::cached_in(dir.path().join("hashes.json"));
        let calls = std::cell::Cell::new(0);
        let count = |path: &Path| {
            calls.set(calls.get() + 1);
            let bytes = std::fs::read(path).unwrap();
            Ok((bytes.len() as u64, format!("len{}", bytes.len())))
        };
        assert_eq!(hashes.digest(&file, "test", count).unwrap(), "len7");
        let written = std::fs::metadata(dir.path().join("hashes.json")).unwrap().modified().unwrap();
        assert_eq!(hashes.digest(&file, "test", count).unwrap(), "len7");
        assert_eq!(calls.get(), 1, "an unchanged file is not hashed again");
        let kept = std::fs::metadata(dir.path().join("hashes.json")).unwrap().modified().unwrap();
        assert_eq!(written, kept, "a run whose files all hit the cache writes nothing");
        // Another algorithm's digest of the same file is its own entry, beside the xxh3 one.
        hashes.fingerprint(std::slice::from_ref(&file)).unwrap();
        assert_eq!(hashes.digest(&file, "test", count).unwrap(), "len7");
        assert_eq!(calls.get(), 1);
        std::fs::write(&file, b"other weights").unwrap();
        assert_eq!(hashes.digest(&file, "test", count).unwrap(), "len13");
        assert_eq!(calls.get(), 2);
        // A file that is gone loses its entries at the next save.
        let other = dir.path().join("other.gguf");
        std::fs::write(&other, b"x").unwrap();
        std::fs::remove_file(&file).unwrap();
        hashes.digest(&other, "test", count).unwrap();
        let saved = std::fs::read_to_string(dir.path().join("hashes.json")).unwrap();
        assert!(saved.contains("other.gguf") && !saved.contains("model.gguf"), "{saved}");
    }

    #[test]
    fn a_corrupt_cache_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, b"{}").unwrap();
        std::fs::write(dir.path().join("hashes.json"), b"not json").unwrap();
        let hashes = FileHashes::cached_in(dir.path().join("hashes.json"));
        let cached = hashes.fingerprint(std::slice::from_ref(&file)).unwrap();
        assert_eq!(cached, FileHashes::uncached().fingerprint(&[file]).unwrap());
    }
}
