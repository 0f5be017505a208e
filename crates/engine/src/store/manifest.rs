//! `manifest.json`: what a layer store holds and how to check it.

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::quant::{BLOCK, QuantScheme};
use super::store_files;
use crate::error::{EngineError, Result};
use crate::paths::safe_join;
use crate::spec::ModelSpec;
use crate::tensor::DType;

/// Bumped whenever the store layout changes; older stores are refused, not misread.
///
/// Compression did not bump it: a version-1 store without compression reads exactly as before
/// (`compression: "none"`, and the new fields have defaults). A compressed store opened by an
/// older build is refused by that build's manifest parser (unknown variant), not misread.
pub const FORMAT_VERSION: u32 = 1;

/// Revision of the rules by which a split makes compressed tensors from a source's blocks (see
/// `store::split`). A store records it, so that a compressed store made under older rules is
/// written again by the next split rather than reused: from revision 1, an int8 store keeps
/// blocks that convert exactly to int4 only, which stores without the field requantized.
pub const COMPRESSION_RULES: u32 = 1;

/// How a store's linear layer weights are compressed (see [`super::quant`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Int8,
    Int4,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Int8, Compression::Int4];

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Int8 => "int8",
            Compression::Int4 => "int4",
        }
    }

    /// The block quantization scheme, `None` for uncompressed stores.
    pub fn scheme(self) -> Option<QuantScheme> {
        match self {
            Compression::None => None,
            Compression::Int8 => Some(QuantScheme::Int8),
            Compression::Int4 => Some(QuantScheme::Int4),
        }
    }

    fn supported() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown compression {s:?} (supported: {})", Self::supported()))
    }
}

fn default_block_size() -> usize {
    BLOCK
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
    /// Values per quantization block (only [`BLOCK`] is supported).
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    /// Whether the embedding and the head are stored as int8 (else in `dtype`).
    #[serde(default)]
    pub quantized_embed_head: bool,
    /// The [`COMPRESSION_RULES`] of the split that wrote the store; 0 for stores written before.
    #[serde(default)]
    pub compression_rules: u32,
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
        let store_error = |message: String| EngineError::Store { dir: dir.to_path_buf(), message };
        let compression = &value["compression"];
        if compression.as_str().is_none_or(|name| Compression::from_str(name).is_err()) {
            return Err(store_error(format!(
                "compression {compression} is not supported by this build (supported: {}); split the model again",
                Compression::supported()
            )));
        }
        let block_size = value.get("block_size").map_or(Some(BLOCK as u64), serde_json::Value::as_u64);
        if block_size != Some(BLOCK as u64) {
            return Err(store_error(format!(
                "block_size {} is not supported (this build quantizes blocks of {BLOCK}); split the model again",
                value["block_size"]
            )));
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| EngineError::format(&path, e.to_string()))?;
        manifest.check(dir).map_err(store_error)?;
        Ok(manifest)
    }

    /// The manifest is consistent with itself: a valid spec, and exactly the files a store of
    /// that spec has (one per layer, so a layer count that disagrees with the files is refused),
    /// each a plain name inside the store.
    fn check(&self, dir: &Path) -> std::result::Result<(), String> {
        self.spec.validate().map_err(|e| format!("{}: spec: {e}; split the model again", super::MANIFEST))?;
        for entry in &self.files {
            safe_join(dir, &entry.name).map_err(|e| format!("{}: {e}", super::MANIFEST))?;
        }
        // Compared before the expected list is built, so a huge layer count allocates nothing.
        let expected_count = self.spec.num_layers.checked_add(3);
        let mut listed: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        listed.sort_unstable();
        let mut expected =
            if expected_count == Some(listed.len()) { store_files(self.spec.num_layers) } else { vec![] };
        expected.sort_unstable();
        if !listed.iter().copied().eq(expected.iter().map(String::as_str)) {
            return Err(format!(
                "{} lists {} files for a {}-layer model (tokenizer, embed, one per layer, head); split the model again",
                super::MANIFEST,
                listed.len(),
                self.spec.num_layers
            ));
        }
        Ok(())
    }

    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn entry(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}
