//! Templates over a data row, for tasks defined in YAML: Jinja syntax (MiniJinja), with the
//! meanings lm-eval 0.4.13 gives its `doc_to_*` fields.
//!
//! - A template that is exactly the name of a row field gives that field as it is
//!   (`doc_to_choice: choices`).
//! - Otherwise it is rendered with the row's fields as variables: `{{question}}`,
//!   `{{choices.text}}`, `{{question.strip()}}`, `{{choices.label.index(answerKey)}}`.
//!   Python's string and dict methods work (MiniJinja's pycompat), and lists have `index`.
//! - Naming a field the row does not have is an error, never an empty string.
//!
//! A choice list or target comes from a template made of one `{{ expression }}` as the
//! expression's value (a list, a number or a string); a longer template's text must read as a
//! JSON list.

use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, Value};
use serde_json::{Map, Value as Json};

/// The environment every task template renders in.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // jinja2 as lm-eval sets it up: a template's final newline is part of the text.
    env.set_syntax(SyntaxConfig::builder().keep_trailing_newline(true).build().expect("valid syntax"));
    env.set_unknown_method_callback(list_index_or_pycompat);
    env
}

/// `list.index(x)`, which pycompat lacks, then Python's other methods.
fn list_index_or_pycompat(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if value.kind() == ValueKind::Seq && method == "index" {
        let [wanted] = args else {
            return Err(Error::new(ErrorKind::InvalidOperation, "index takes one argument"));
        };
        for (i, item) in value.try_iter()?.enumerate() {
            if item == *wanted {
                return Ok(Value::from(i));
            }
        }
        return Err(Error::new(ErrorKind::InvalidOperation, format!("{wanted} is not in the list")));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// A user message in a model's chat template, ready for the assistant's answer (what
/// `apply_chat_template(messages, add_generation_prompt=True)` gives).
pub fn render_chat(
    template: &str,
    message: &str,
    tokenizer: &tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
) -> anyhow::Result<String> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(list_index_or_pycompat);
    env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, message))
    });
    let token = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id)).unwrap_or_default();
    let context = minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => message }],
        add_generation_prompt => true,
        bos_token => token(bos),
        eos_token => token(eos),
    };
    env.render_str(template, context).map_err(|e| anyhow::anyhow!("rendering the model's chat template: {e}"))
}

/// A row's fields as template variables.
pub fn context(fields: &Map<String, Json>) -> Value {
    Value::from(fields.iter().map(|(k, v)| (k.clone(), to_value(v))).collect::<BTreeMap<String, Value>>())
}

fn to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => n.as_i64().map(Value::from).unwrap_or_else(|| Value::from(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(to_value).collect::<Vec<_>>()),
        Json::Object(map) => context(map),
    }
}

/// What a template gives for a row: a field as is, or the rendered text or expression value.
pub fn evaluate(env: &Environment<'static>, template: &str, fields: &Map<String, Json>) -> Result<Value, String> {
    if let Some(value) = fields.get(template) {
        return Ok(to_value(value));
    }
    let ctx = context(fields);
    let result = match single_expression(template) {
        Some(expression) => env.compile_expression(expression).and_then(|e| e.eval(&ctx)).and_then(|value| {
            // Strict mode fails on printing an undefined value, not on computing one.
            if value.is_undefined() { Err(Error::new(ErrorKind::UndefinedError, "undefined value")) } else { Ok(value) }
        }),
        None => env.render_str(template, &ctx).map(Value::from),
    };
    result.map_err(|e| describe(e, fields))
}

/// Renders a template to text (a field or expression that is not a string is written out).
pub fn render(env: &Environment<'static>, template: &str, fields: &Map<String, Json>) -> Result<String, String> {
    if single_expression(template).is_none() && !fields.contains_key(template) {
        return env.render_str(template, context(fields)).map_err(|e| describe(e, fields));
    }
    let value = evaluate(env, template, fields)?;
    Ok(value.as_str().map_or_else(|| value.to_string(), str::to_string))
}

/// `x` of a template that is exactly `{{ x }}`.
fn single_expression(template: &str) -> Option<&str> {
    let inner = template.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then_some(inner)
}

fn describe(error: Error, fields: &Map<String, Json>) -> String {
    let mut message = error.to_string();
    if error.kind() == ErrorKind::UndefinedError {
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        message.push_str(&format!(" (a field the row does not have? the row's fields: {})", names.join(", ")));
    }
    message
}

/// A value as a list of strings (a choice list).
pub fn string_list(value: &Value) -> Result<Vec<String>, String> {
    if let Some(text) = value.as_str() {
        let parsed: Vec<Json> =
            serde_json::from_str(text).map_err(|_| format!("expected a list of choices, found the text {text:?}"))?;
        return Ok(parsed.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect());
    }
    if value.kind() != ValueKind::Seq {
        return Err(format!("expected a list of choices, found {value}"));
    }
    let items = value.try_iter().map_err(|e| e.to_string())?;
    Ok(items.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Map<String, Json> {
        let json = serde_json::json!({
            "question": "  Why? ", "answerKey": "B",
            "choices": {"text": ["x", "y"], "label": ["A", "B"]},
        });
        json.as_object().unwrap().clone()
    }

    #[test]
    fn lm_evals_template_forms() {
        let env = environment();
        let row = row();
        assert_eq!(render(&env, "Question: {{question.strip()}}\nAnswer:", &row).unwrap(), "Question: Why?\nAnswer:");
        assert_eq!(string_list(&evaluate(&env, "{{choices.text}}", &row).unwrap()).unwrap(), ["x", "y"]);
        assert_eq!(evaluate(&env, "{{choices.label.index(answerKey)}}", &row).unwrap(), Value::from(1));
        assert_eq!(render(&env, "answerKey", &row).unwrap(), "B");
    }

    #[test]
    fn a_missing_field_is_an_error_naming_the_rows_fields() {
        let err = render(&environment(), "Q: {{questoin}}", &row()).unwrap_err();
        assert!(err.contains("undefined") && err.contains("answerKey, choices, question"), "{err}");
        assert!(evaluate(&environment(), "{{choices.txt}}", &row()).is_err());
    }
}
