//! Data files read from their original formats: MMLU's CSV folders ([`mmlu`]) and rows of JSON
//! Lines or CSV-with-header files ([`rows`]). Task-specific formats (HellaSwag's text form,
//! TruthfulQA's JSON, WikiText's raw pages) are read by their tasks.

pub mod mmlu;
pub mod rows;
