//! `manifest.json`: what a layer store holds and how to check it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::spec::ModelSpec;
use crate::tensor::DType;

/// Bumped whenever the store layout changes; older stores are refused, not misread.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// xxh3-64 of the file's bytes, hex.
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub source: String,
    pub source_fingerprint: String,
    pub spec: ModelSpec,
    pub dtype: DType,
    pub compression: Compression,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(super::MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| EngineError::format(&path, format!("invalid JSON: {e}")))?;
        let version = value["format_version"].as_u64().unwrap_or(0);
        if version != u64::from(FORMAT_VERSION) {
            return Err(EngineError::Store {
                dir: dir.to_path_buf(),
                message: format!(
                    "format version {version} is not supported (this build reads {FORMAT_VERSION}); split the model again"
                ),
            });
        }
        serde_json::from_value(value).map_err(|e| EngineError::format(&path, e.to_string()))
    }

    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn entry(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}
