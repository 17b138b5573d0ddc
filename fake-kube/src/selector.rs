//! Label and field selectors, as lists and watches take them in their query.
//!
//! Label selectors take the real grammar's equality and set forms: `k=v`, `k==v`, `k!=v`,
//! `k` (exists), `!k` (does not exist), `k in (a,b)`, `k notin (a,b)`; the numeric
//! `k>1`/`k<1` are refused. Field selectors take `path=value`, `path==value` and
//! `path!=value` on any dotted path (`metadata.name`, `status.phase`); the real server
//! accepts only the few fields each kind indexes, the fake accepts them all.

use serde_json::Value;

/// A selector that cannot be parsed: the server answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0:?}")]
pub(crate) struct SelectorError(String);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    pub(crate) fn parse(text: &str) -> Result<Self, SelectorError> {
        let requirements = split_outside_parentheses(text)
            .into_iter()
            .map(str::trim)
            .filter(|term| !term.is_empty())
            .map(Requirement::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = object
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::Equals(key, value) => label(key) == Some(value.as_str()),
                Requirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
                Requirement::In(key, values) => {
                    label(key).is_some_and(|v| values.iter().any(|x| x == v))
                }
                Requirement::NotIn(key, values) => {
                    !label(key).is_some_and(|v| values.iter().any(|x| x == v))
                }
                Requirement::Exists(key) => label(key).is_some(),
                Requirement::DoesNotExist(key) => label(key).is_none(),
            })
    }
}

impl Requirement {
    fn parse(term: &str) -> Result<Self, SelectorError> {
        let error = || SelectorError(term.to_owned());
        if let Some(key) = term.strip_prefix('!') {
            return Ok(Self::DoesNotExist(label_key(key).ok_or_else(error)?));
        }
        if let Some((head, rest)) = term.split_once('(') {
            let values = rest.trim_end().strip_suffix(')').ok_or_else(error)?;
            let values = values
                .split(',')
                .map(|v| label_value(v).ok_or_else(error))
                .collect::<Result<Vec<_>, _>>()?;
            let mut words = head.split_whitespace();
            return match (words.next(), words.next(), words.next()) {
                (Some(key), Some("in"), None) => {
                    Ok(Self::In(label_key(key).ok_or_else(error)?, values))
                }
                (Some(key), Some("notin"), None) => {
                    Ok(Self::NotIn(label_key(key).ok_or_else(error)?, values))
                }
                _ => Err(error()),
            };
        }
        // `!=` before `=`: "a!=b" also splits on its `=`.
        for operator in ["!=", "==", "="] {
            if let Some((key, value)) = term.split_once(operator) {
                let key = label_key(key).ok_or_else(error)?;
                let value = label_value(value).ok_or_else(error)?;
                return Ok(if operator == "!=" {
                    Self::NotEquals(key, value)
                } else {
                    Self::Equals(key, value)
                });
            }
        }
        Ok(Self::Exists(label_key(term).ok_or_else(error)?))
    }
}

const OPERATOR_CHARACTERS: &[char] = &['=', '!', '(', ')', '<', '>', ','];

fn label_key(text: &str) -> Option<String> {
    let key = text.trim();
    let valid =
        !key.is_empty() && !key.contains(char::is_whitespace) && !key.contains(OPERATOR_CHARACTERS);
    valid.then(|| key.to_owned())
}

/// A value may be empty (`k=` selects the label set to ""), never hold an operator.
fn label_value(text: &str) -> Option<String> {
    let value = text.trim();
    let valid = !value.contains(char::is_whitespace) && !value.contains(OPERATOR_CHARACTERS);
    valid.then(|| value.to_owned())
}

/// Splits on the commas between requirements, not those inside `in (a,b)`.
fn split_outside_parentheses(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    path: Vec<String>,
    value: String,
    equal: bool,
}

impl FieldSelector {
    pub(crate) fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let error = || SelectorError(term.to_owned());
            let (path, value, equal) = if let Some((path, value)) = term.split_once("!=") {
                (path, value, false)
            } else if let Some((path, value)) = term.split_once("==") {
                (path, value, true)
            } else if let Some((path, value)) = term.split_once('=') {
                (path, value, true)
            } else {
                return Err(error());
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(error());
            }
            requirements.push(FieldRequirement {
                path: path.split('.').map(str::to_owned).collect(),
                value: value.trim().to_owned(),
                equal,
            });
        }
        Ok(Self { requirements })
    }

    /// A missing field reads as "", as the real server's field sets do.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|requirement| {
            let field = requirement
                .path
                .iter()
                .try_fold(object, |node, key| node.get(key));
            let text = match field {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => String::new(),
            };
            (text == requirement.value) == requirement.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "lab", "labels": labels}})
    }

    fn selects(selector: &str, labels: Value) -> bool {
        LabelSelector::parse(selector)
            .expect("the selector parses")
            .matches(&labelled(labels))
    }

    #[test]
    fn label_selectors_follow_the_real_grammar() {
        let web = json!({"app": "web", "tier": "front"});
        assert!(selects("", web.clone()));
        assert!(selects("app=web", web.clone()));
        assert!(selects("app==web,tier=front", web.clone()));
        assert!(!selects("app=db", web.clone()));
        assert!(selects("app!=db", web.clone()));
        assert!(selects("missing!=x", web.clone()));
        assert!(!selects("app!=web", web.clone()));
        assert!(selects("tier", web.clone()));
        assert!(!selects("!tier", web.clone()));
        assert!(selects("!missing", web.clone()));
        assert!(selects("app in (db, web)", web.clone()));
        assert!(!selects("app in (db)", web.clone()));
        assert!(selects("app notin (db),tier in (front)", web.clone()));
        assert!(!selects("app notin (web,db)", web.clone()));
        assert!(selects("missing notin (x)", web.clone()));
        assert!(!selects("missing in (x)", web));
        assert!(!selects("app", json!(null)));
    }

    #[test]
    fn malformed_label_selectors_are_refused() {
        for bad in [
            "app>1",
            "app in web",
            "a b=c",
            "=x",
            "app in (a",
            "app is (a)",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let pod =
            json!({"metadata": {"name": "a", "namespace": "lab"}, "status": {"phase": "Running"}});
        let selects = |s: &str| {
            FieldSelector::parse(s)
                .expect("the selector parses")
                .matches(&pod)
        };
        assert!(selects("metadata.name=a"));
        assert!(selects("metadata.name==a,metadata.namespace=lab"));
        assert!(!selects("metadata.name=b"));
        assert!(selects("metadata.name!=b"));
        assert!(selects("status.phase=Running"));
        assert!(selects("spec.nodeName="));
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
