//! The engine's error type: every variant names the file, tensor or field it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The OS error is part of the message, not a `source()`: an error chain printed with `{:#}`
    /// would otherwise name it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// `supported` lists the families (or GGUF architectures) that would have been read.
    #[error("{path}: unsupported architecture {found}; supported: {supported}")]
    UnsupportedArchitecture { path: PathBuf, found: String, supported: String },
    #[error("{path}: tensor {name:?} is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{base}: {name:?} is not a plain relative path inside this folder (absolute, `..` or a root or drive prefix)"
    )]
    UnsafePath { base: PathBuf, name: String },
    #[error("layer store {dir}: {message}")]
    Store { dir: PathBuf, message: String },
    /// The model has no tokenizer the engine reads; `reason` says what was found and what to
    /// provide. Scoring token ids (`logits --ids`) needs none.
    #[error("{model}: no tokenizer: {reason}")]
    NoTokenizer { model: String, reason: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io { path: path.into(), error }
    }

    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format { path: path.into(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_named_once() {
        let error = EngineError::io("/x/model.gguf", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(error.to_string().starts_with("/x/model.gguf: "), "{error}");
        // Printers of error chains (anyhow's `{:#}`) add each source's message again.
        assert!(std::error::Error::source(&error).is_none());
    }
}
