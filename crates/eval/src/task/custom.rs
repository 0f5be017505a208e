//! Tasks defined in YAML over a local JSON Lines or CSV file, without code: lm-eval's task-config
//! fields, with the same meanings.
//!
//! ```yaml
//! output_type: multiple_choice        # or loglikelihood_rolling
//! dataset: ../datasets/examples/capitals.jsonl   # default data file (a job's `path:` wins)
//! description: "Answer the question.\n\n"        # template, before the few-shot examples
//! doc_to_text: "Q: {{question}}\nA:"             # template: the context
//! doc_to_choice: "{{choices}}"                   # template giving a list, or a YAML list
//! doc_to_target: "{{answer}}"                    # template or number: gold index, or choice text
//! target_delimiter: " "                          # between context and choice (default " ")
//! fewshot_delimiter: "\n\n"                      # after each example (default "\n\n")
//! fewshot: ../datasets/examples/capitals-dev.jsonl   # examples: the first num_fewshot rows
//! metrics: [acc, acc_norm]                       # rolling: word_perplexity, byte_perplexity, bits_per_byte
//! ```
//! A rolling task scores the text of `doc_to_target` and counts its words and bytes. Paths are
//! relative to the file the definition is in.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use minijinja::Environment;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::metrics::{CHOICE_METRICS, Metric, ROLLING_METRICS};
use super::template::{environment, evaluate, render, string_list};
use super::wikitext::count_words;
use super::{ChoiceDoc, Doc, RollingDoc, Task, fewshot_context};
use crate::dataset::rows::{Row, read_rows};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    #[default]
    MultipleChoice,
    LoglikelihoodRolling,
}

/// A task definition, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    #[serde(default)]
    pub output_type: OutputType,
    #[serde(default)]
    pub dataset: Option<PathBuf>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub doc_to_text: String,
    #[serde(default)]
    pub doc_to_choice: Option<Choices>,
    #[serde(default)]
    pub doc_to_target: Option<Target>,
    #[serde(default = "space")]
    pub target_delimiter: String,
    #[serde(default = "blank_line")]
    pub fewshot_delimiter: String,
    #[serde(default)]
    pub fewshot: Option<PathBuf>,
    #[serde(default)]
    pub metrics: Option<Vec<String>>,
}

fn space() -> String {
    " ".into()
}
fn blank_line() -> String {
    "\n\n".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Choices {
    List(Vec<String>),
    Template(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Target {
    Index(usize),
    Template(String),
}

/// `define:` in a job: a definition file's path, or the definition itself.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DefinitionSource {
    File(PathBuf),
    Inline(Box<Definition>),
}

impl<'de> Deserialize<'de> for DefinitionSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = DefinitionSource;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a task definition file's path or a map of task fields")
            }
            fn visit_str<E: de::Error>(self, path: &str) -> std::result::Result<DefinitionSource, E> {
                Ok(DefinitionSource::File(path.into()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> std::result::Result<DefinitionSource, A::Error> {
                Definition::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|d| DefinitionSource::Inline(Box::new(d)))
            }
        }
        deserializer.deserialize_any(SourceVisitor)
    }
}

impl DefinitionSource {
    /// The definition and the folder its relative paths start from (`base` for an inline one).
    pub fn load(&self, base: &Path) -> Result<(Definition, PathBuf)> {
        match self {
            DefinitionSource::Inline(definition) => Ok(((**definition).clone(), base.to_path_buf())),
            DefinitionSource::File(file) => {
                let path = if file.is_absolute() { file.clone() } else { base.join(file) };
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading task definition {}", path.display()))?;
                let definition =
                    crate::job::parse_yaml(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;
                Ok((definition, path.parent().unwrap_or(Path::new(".")).to_path_buf()))
            }
        }
    }
}

/// What the job says about one custom task besides its definition.
pub struct Use<'a> {
    pub name: &'a str,
    pub data: Option<PathBuf>,
    pub limit: Option<usize>,
    pub num_fewshot: usize,
    pub entry: usize,
}

/// Builds the task `use_.name` from its definition.
pub fn task(definition: &Definition, base: &Path, use_: Use) -> Result<Task> {
    let join = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    let data = match (&use_.data, &definition.dataset) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => join(path),
        (None, None) => {
            bail!("task `{}`: no data file: give `path:` in the job or `dataset:` in its definition", use_.name)
        }
    };
    let metrics = metrics(definition, use_.name)?;
    let rows = read_rows(&data)?;
    let env = environment();
    let shots = fewshot_examples(definition, &env, &join, use_.num_fewshot)?;
    let docs = rows.iter().map(|fields| {
        document(definition, &env, fields, &shots)
            .map_err(|e| anyhow::anyhow!("{}:{}: task `{}`: {e}", data.display(), fields.line, use_.name))
    });
    let task = Task {
        num_fewshot: use_.num_fewshot,
        target_delimiter: definition.target_delimiter.clone(),
        ..Task::new(use_.name, "custom", metrics, data.clone(), use_.entry)
    };
    task.with_docs(rows.len(), docs, use_.limit)
}

fn metrics(definition: &Definition, name: &str) -> Result<Vec<Metric>> {
    let allowed: &[Metric] = match definition.output_type {
        OutputType::MultipleChoice => &CHOICE_METRICS,
        OutputType::LoglikelihoodRolling => &ROLLING_METRICS,
    };
    let Some(names) = &definition.metrics else { return Ok(allowed.to_vec()) };
    if names.is_empty() {
        bail!("task `{name}`: metrics is empty");
    }
    names
        .iter()
        .map(|n| {
            allowed.iter().copied().find(|m| m.name() == n).with_context(|| {
                let list: Vec<&str> = allowed.iter().map(|m| m.name()).collect();
                format!(
                    "task `{name}`: unknown metric `{n}` for {:?}; allowed: {}",
                    definition.output_type,
                    list.join(", ")
                )
            })
        })
        .collect()
}

/// The first `num_fewshot` rows of the definition's few-shot file, as (text, answer) pairs.
fn fewshot_examples(
    definition: &Definition,
    env: &Environment<'static>,
    join: &dyn Fn(&Path) -> PathBuf,
    num_fewshot: usize,
) -> Result<Vec<(String, String)>> {
    if num_fewshot == 0 {
        return Ok(Vec::new());
    }
    if definition.output_type != OutputType::MultipleChoice {
        bail!("num_fewshot is for multiple_choice tasks");
    }
    let path =
        join(definition.fewshot.as_deref().context("num_fewshot > 0 needs a `fewshot:` file in the task definition")?);
    let rows = read_rows(&path)?;
    if rows.len() < num_fewshot {
        bail!("{}: {num_fewshot}-shot asked but the file has only {} rows", path.display(), rows.len());
    }
    rows[..num_fewshot]
        .iter()
        .map(|row| {
            let (text, choices, gold) = choice_parts(definition, env, row)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), row.line))?;
            Ok((text, choices[gold].clone()))
        })
        .collect()
}

fn document(
    definition: &Definition,
    env: &Environment<'static>,
    row: &Row,
    shots: &[(String, String)],
) -> Result<Doc, String> {
    match definition.output_type {
        OutputType::MultipleChoice => {
            let (text, choices, gold) = choice_parts(definition, env, row)?;
            let description =
                render(env, &definition.description, &row.fields).map_err(|e| format!("description: {e}"))?;
            let context = fewshot_context(
                &description,
                shots,
                &text,
                &definition.target_delimiter,
                &definition.fewshot_delimiter,
            );
            Ok(Doc::Choice(ChoiceDoc { context, choices, gold, labels: Vec::new() }))
        }
        OutputType::LoglikelihoodRolling => {
            let Some(Target::Template(template)) = &definition.doc_to_target else {
                return Err("a loglikelihood_rolling task needs doc_to_target: a template giving the text".into());
            };
            let text = render(env, template, &row.fields).map_err(|e| format!("doc_to_target: {e}"))?;
            Ok(Doc::Rolling(RollingDoc { words: count_words(&text), bytes: text.len(), text }))
        }
    }
}

/// A row's text, choices and gold index.
fn choice_parts(
    definition: &Definition,
    env: &Environment<'static>,
    row: &Row,
) -> Result<(String, Vec<String>, usize), String> {
    let text = render(env, &definition.doc_to_text, &row.fields).map_err(|e| format!("doc_to_text: {e}"))?;
    let choices = match &definition.doc_to_choice {
        Some(Choices::List(list)) => list.clone(),
        Some(Choices::Template(t)) => {
            string_list(&evaluate(env, t, &row.fields).map_err(|e| format!("doc_to_choice: {e}"))?)
                .map_err(|e| format!("doc_to_choice: {e}"))?
        }
        None => return Err("a multiple_choice task needs doc_to_choice".into()),
    };
    if choices.is_empty() {
        return Err("doc_to_choice gave an empty list of choices".into());
    }
    let gold = match &definition.doc_to_target {
        Some(Target::Index(i)) => *i,
        Some(Target::Template(t)) => {
            let value = evaluate(env, t, &row.fields).map_err(|e| format!("doc_to_target: {e}"))?;
            gold_index(&value, &choices)?
        }
        None => return Err("a multiple_choice task needs doc_to_target".into()),
    };
    if gold >= choices.len() {
        return Err(format!("doc_to_target gave choice {gold}, but there are {} choices", choices.len()));
    }
    Ok((text, choices, gold))
}

/// lm-eval's reading of a target: a number (or digits) is an index, other text names a choice.
fn gold_index(value: &minijinja::Value, choices: &[String]) -> Result<usize, String> {
    if let Ok(i) = i64::try_from(value.clone()) {
        return usize::try_from(i).map_err(|_| format!("doc_to_target gave {i}, not a choice index"));
    }
    let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("doc_to_target gave {text}, not a choice index"));
    }
    choices.iter().position(|c| *c == text).ok_or_else(|| {
        format!(
            "doc_to_target gave `{text}`, which is neither an index nor one of the choices ({})",
            choices.join(" | ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(yaml: &str) -> Definition {
        crate::job::parse_yaml(yaml).unwrap()
    }

    fn build(yaml: &str, data: &str) -> Result<Task> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d.jsonl"), data).unwrap();
        std::fs::write(dir.path().join("shots.jsonl"), "{\"q\": \"1+1?\", \"c\": [\"2\", \"3\"], \"a\": 0}\n").unwrap();
        let use_ = Use { name: "t", data: Some(dir.path().join("d.jsonl")), limit: None, num_fewshot: 0, entry: 0 };
        let shots = if yaml.contains("fewshot:") { 1 } else { 0 };
        task(&definition(yaml), dir.path(), Use { num_fewshot: shots, ..use_ })
    }

    const MC: &str = "doc_to_text: \"Q: {{q}}\\nA:\"\ndoc_to_choice: \"{{c}}\"\ndoc_to_target: \"{{a}}\"\n";

    #[test]
    fn templates_build_choice_documents_with_shots() {
        let task = build(
            &format!("{MC}fewshot: shots.jsonl\n"),
            "{\"q\": \"2+2?\", \"c\": [\"three\", \"four\"], \"a\": \"four\"}\n",
        )
        .unwrap();
        let Doc::Choice(doc) = &task.docs[0].doc else { panic!() };
        assert_eq!(doc.context, "Q: 1+1?\nA: 2\n\nQ: 2+2?\nA:");
        assert_eq!((doc.choices.clone(), doc.gold), (vec!["three".to_string(), "four".to_string()], 1));
        assert_eq!(task.metrics, CHOICE_METRICS);
    }

    #[test]
    fn bad_rows_are_named_by_file_line_and_field() {
        let err = build(MC, "{\"q\": \"x\", \"c\": [], \"a\": 0}\n").unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1: task `t`: doc_to_choice gave an empty list"), "{err}");
        let err = build(MC, "{\"q\": \"x\", \"c\": [\"a\"], \"a\": 3}\n").unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1: task `t`: doc_to_target gave choice 3, but there are 1 choices"), "{err}");
        let err = build(MC, "{\"c\": [\"a\"], \"a\": 0}\n").unwrap_err().to_string();
        assert!(err.contains("d.jsonl:1: task `t`: doc_to_text:") && err.contains("the row's fields: a, c"), "{err}");
        let err = build(MC, "{\"q\": \"x\", \"c\": [\"a\"], \"a\": 0}\nnot json\n").unwrap_err().to_string();
        assert!(err.contains("d.jsonl:2: not a JSON line"), "{err}");
        let err = build(&format!("{MC}metrics: [bleu]\n"), "").unwrap_err().to_string();
        assert!(err.contains("unknown metric `bleu`") && err.contains("acc, acc_norm"), "{err}");
    }

    #[test]
    fn rolling_documents_from_a_template() {
        let yaml = "output_type: loglikelihood_rolling\ndoc_to_target: \"{{text}}\"\n";
        let task = build(yaml, "{\"text\": \"a b  c\"}\n").unwrap();
        assert_eq!(task.docs[0].doc, Doc::Rolling(RollingDoc { text: "a b  c".into(), words: 3, bytes: 6 }));
        assert_eq!(task.metrics, ROLLING_METRICS);
    }
}
