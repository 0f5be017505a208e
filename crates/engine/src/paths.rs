//! Joining names that come from files (manifests, progress records, shard indexes, wheel members)
//! onto the folder they belong to, so that a crafted or corrupted name cannot reach outside it.

use std::path::{Component, Path, PathBuf};

use crate::error::{EngineError, Result};

/// `base/untrusted`, where `untrusted` must be a relative path made of plain names only: an
/// absolute path, a root or drive prefix, `..` or `.` is refused, as is an empty name.
pub fn safe_join(base: &Path, untrusted: &str) -> Result<PathBuf> {
    let relative = Path::new(untrusted);
    let plain = relative.components().all(|c| matches!(c, Component::Normal(_)));
    if untrusted.is_empty() || !plain {
        return Err(EngineError::UnsafePath { base: base.to_path_buf(), name: untrusted.to_string() });
    }
    Ok(base.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_names_join() {
        let base = Path::new("/cache");
        assert_eq!(safe_join(base, "a/b.gguf").unwrap(), Path::new("/cache/a/b.gguf"));
        assert_eq!(safe_join(base, "layer-000.safetensors").unwrap(), Path::new("/cache/layer-000.safetensors"));
    }

    #[test]
    fn escaping_names_are_refused() {
        let base = Path::new("/cache");
        for name in ["", "../x", "a/../../x", "/etc/passwd", "./a", "a/.."] {
            let err = safe_join(base, name).expect_err(name).to_string();
            assert!(err.contains("/cache") && err.contains("not a plain relative path"), "{name}: {err}");
        }
    }
}
