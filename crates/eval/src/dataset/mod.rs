//! Datasets shipped with the project, read from their original files.

pub mod mmlu;
