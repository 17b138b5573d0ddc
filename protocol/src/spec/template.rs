//! Templates in task declarations.
//!
//! - A [`TextTemplate`] (URLs, header values) interpolates `${name}` from the DAG's
//!   variables and `{field}` / `{field.sub}` from the input record. In URLs, record values
//!   are percent-encoded.
//! - A [`JsonTemplate`] (request body, task output) is a JSON value in which a string
//!   `"$.path"` is replaced by the value at that path of the context (`$` alone: the whole
//!   context), and `${name}` inside other strings is replaced by a variable. A string that
//!   starts with `$$` stands for itself minus one `$`.
//!
//! The body's context is `{"input": record, "key": ..., "id": ..., "attempt": n}`; the
//! output's adds `"response"` (the response body, JSON when it parses, else text) and
//! `"status"`.

use std::collections::BTreeMap;

use crate::value::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("variable ${{{0}}} has no value")]
    Variable(String),
    #[error("the record has no field {0}")]
    Field(String),
    #[error("field {0} is a {1}, which cannot go into text")]
    NotScalar(String, &'static str),
    #[error("{0}")]
    Syntax(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Variable(String),
    Field(String),
}

/// `https://${host}/v1/{experiment_id}/sites/{site}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextTemplate {
    source: String,
    parts: Vec<Part>,
}

impl TextTemplate {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let (is_var, start) = match c {
                '$' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    (true, i + 2)
                }
                '{' => (false, i + 1),
                '}' => {
                    return Err(TemplateError::Syntax(format!(
                        "unmatched '}}' at position {i} of {source:?}"
                    )));
                }
                _ => {
                    literal.push(c);
                    continue;
                }
            };
            let end = source[start..]
                .find('}')
                .map(|e| start + e)
                .ok_or_else(|| {
                    TemplateError::Syntax(format!("unclosed '{{' at position {i} of {source:?}"))
                })?;
            let name = &source[start..end];
            if name.is_empty() || name.contains('{') || name.contains(char::is_whitespace) {
                return Err(TemplateError::Syntax(format!(
                    "bad placeholder {:?} in {source:?}",
                    &source[i..=end]
                )));
            }
            while chars.peek().is_some_and(|(j, _)| *j <= end) {
                chars.next();
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(if is_var {
                Part::Variable(name.to_owned())
            } else {
                Part::Field(name.to_owned())
            });
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Variable(v) => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            _ => None,
        })
    }

    /// Renders with `record` fields; `percent_encode` for URL components.
    pub fn render(
        &self,
        variables: &BTreeMap<String, String>,
        record: &Value,
        percent_encode: bool,
    ) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Variable(name) => out.push_str(
                    variables
                        .get(name)
                        .ok_or_else(|| TemplateError::Variable(name.clone()))?,
                ),
                Part::Field(path) => {
                    let value = record
                        .path(path)
                        .ok_or_else(|| TemplateError::Field(path.clone()))?;
                    let text = match value {
                        Value::String(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => return Err(TemplateError::NotScalar(path.clone(), other.kind())),
                    };
                    if percent_encode {
                        encode_component(&text, &mut out);
                    } else {
                        out.push_str(&text);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn encode_component(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A JSON value with `$.path` references and `${var}` interpolation.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonTemplate {
    source: serde_json::Value,
}

enum StringPart<'a> {
    Reference(&'a str),
    Text(TextTemplate),
    Escaped(&'a str),
}

fn classify(s: &str) -> Result<StringPart<'_>, TemplateError> {
    if let Some(rest) = s.strip_prefix("$$") {
        let _ = rest;
        Ok(StringPart::Escaped(&s[1..]))
    } else if s == "$" {
        Ok(StringPart::Reference(""))
    } else if let Some(path) = s.strip_prefix("$.") {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(TemplateError::Syntax(format!("bad reference {s:?}")));
        }
        Ok(StringPart::Reference(path))
    } else if s.contains("${") {
        // Only variables interpolate inside strings; braces are literal otherwise.
        let template = TextTemplate::parse(s)?;
        if template.fields().next().is_some() {
            return Ok(StringPart::Escaped(s));
        }
        Ok(StringPart::Text(template))
    } else {
        Ok(StringPart::Escaped(s))
    }
}

impl JsonTemplate {
    pub fn parse(source: serde_json::Value) -> Result<Self, TemplateError> {
        fn check(v: &serde_json::Value) -> Result<(), TemplateError> {
            match v {
                serde_json::Value::String(s) => classify(s).map(|_| ()),
                serde_json::Value::Array(items) => items.iter().try_for_each(check),
                serde_json::Value::Object(fields) => fields.values().try_for_each(check),
                _ => Ok(()),
            }
        }
        check(&source)?;
        Ok(Self { source })
    }

    /// The paths this template reads (`input.location`), for validation.
    pub fn references(&self) -> Vec<String> {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) => {
                    if let Ok(StringPart::Reference(path)) = classify(s) {
                        out.push(path.to_owned());
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                serde_json::Value::Object(fields) => fields.values().for_each(|f| walk(f, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.source, &mut out);
        out
    }

    pub fn variables(&self) -> Vec<String> {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) => {
                    if let Ok(StringPart::Text(t)) = classify(s) {
                        out.extend(t.variables().map(str::to_owned));
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                serde_json::Value::Object(fields) => fields.values().for_each(|f| walk(f, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.source, &mut out);
        out
    }

    pub fn evaluate(
        &self,
        context: &Value,
        variables: &BTreeMap<String, String>,
    ) -> Result<Value, TemplateError> {
        fn eval(
            v: &serde_json::Value,
            context: &Value,
            variables: &BTreeMap<String, String>,
        ) -> Result<Value, TemplateError> {
            Ok(match v {
                serde_json::Value::String(s) => match classify(s)? {
                    StringPart::Reference(path) => context
                        .path(path)
                        .cloned()
                        .ok_or_else(|| TemplateError::Field(path.to_owned()))?,
                    StringPart::Text(t) => {
                        Value::String(t.render(variables, &Value::Null, false)?)
                    }
                    StringPart::Escaped(text) => Value::String(text.to_owned()),
                },
                serde_json::Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .map(|i| eval(i, context, variables))
                        .collect::<Result<_, _>>()?,
                ),
                serde_json::Value::Object(fields) => Value::Record(
                    fields
                        .iter()
                        .map(|(k, f)| Ok((k.clone(), eval(f, context, variables)?)))
                        .collect::<Result<_, TemplateError>>()?,
                ),
                other => Value::from(other),
            })
        }
        eval(&self.source, context, variables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([("host".to_string(), "http://127.0.0.1:9".to_string())])
    }

    #[test]
    fn text_templates_interpolate_and_encode() {
        let t = TextTemplate::parse("${host}/v1/{experiment_id}/{well}?loc={location}").unwrap();
        assert_eq!(t.variables().collect::<Vec<_>>(), ["host"]);
        assert_eq!(
            t.fields().collect::<Vec<_>>(),
            ["experiment_id", "well", "location"]
        );
        let record =
            Value::from(&json!({"experiment_id": "E 1", "well": "B02", "location": "s3://a/b"}));
        assert_eq!(
            t.render(&vars(), &record, true).unwrap(),
            "http://127.0.0.1:9/v1/E%201/B02?loc=s3%3A%2F%2Fa%2Fb"
        );
        assert_eq!(
            t.render(&BTreeMap::new(), &record, true),
            Err(TemplateError::Variable("host".into()))
        );
        for bad in ["{", "}", "${}", "{a b}", "x{y"] {
            assert!(TextTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_templates_reference_the_context() {
        let t = JsonTemplate::parse(json!({
            "image": "$.input.location", "all": "$", "url": "${host}/x",
            "literal": "$$.input", "n": 3, "list": ["$.key"]
        }))
        .unwrap();
        assert_eq!(t.references(), vec!["", "input.location", "key"]);
        let ctx = Value::from(&json!({"input": {"location": "s3://x"}, "key": "k"}));
        let out = t.evaluate(&ctx, &vars()).unwrap();
        assert_eq!(out.get("image"), Some(&Value::from("s3://x")));
        assert_eq!(out.get("url"), Some(&Value::from("http://127.0.0.1:9/x")));
        assert_eq!(out.get("literal"), Some(&Value::from("$.input")));
        assert_eq!(out.get("list"), Some(&Value::Array(vec![Value::from("k")])));
        assert_eq!(out.get("all"), Some(&ctx));
        let missing = JsonTemplate::parse(json!("$.input.nope")).unwrap();
        assert_eq!(
            missing.evaluate(&ctx, &vars()),
            Err(TemplateError::Field("input.nope".into()))
        );
        assert!(JsonTemplate::parse(json!("$.a..b")).is_err());
    }
}
