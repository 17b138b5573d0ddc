//! PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).
//!
//! A strategic merge patch is applied as a plain merge patch: the fake does not know the
//! types' patch strategies, so a list in a strategic patch replaces the whole list (as a
//! merge patch does) where the real server would merge it by key (containers by name,
//! for instance), and `$patch`/`$retainKeys` directives are not understood. Patch only
//! maps, or send whole lists, and both behave the same.

use serde_json::{Map, Value};

/// The PATCH content types the fake applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`, applied as a merge patch.
    StrategicMerge,
    /// `application/json-patch+json`.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatchError {
    /// The body is not a patch of its kind: 400.
    #[error("malformed patch: {0}")]
    Malformed(String),
    /// A well-formed patch that cannot apply (a failed `test`, a missing path): 422.
    #[error("{0}")]
    Failed(String),
    /// Server-side apply: 415.
    #[error(
        "server-side apply (application/apply-patch+yaml) is not supported by fake-kube; \
         use a merge, strategic merge or JSON patch"
    )]
    ServerSideApply,
    /// Any other content type: 415.
    #[error(
        "the body of the request was in an unknown format ({0}) - accepted media types include: \
         application/json-patch+json, application/merge-patch+json, \
         application/strategic-merge-patch+json"
    )]
    UnsupportedMediaType(String),
}

impl PatchKind {
    pub(crate) fn from_content_type(content_type: Option<&str>) -> Result<Self, PatchError> {
        let full = content_type.unwrap_or_default();
        let essence = full.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::StrategicMerge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Err(PatchError::ServerSideApply)
            }
            _ => Err(PatchError::UnsupportedMediaType(full.to_owned())),
        }
    }
}

/// The target after the patch; the target itself is left alone, so that a failing JSON
/// patch changes nothing (its operations apply all or none).
pub(crate) fn apply(kind: PatchKind, target: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| PatchError::Malformed(format!("the patch is not JSON: {e}")))?;
    match kind {
        PatchKind::Merge | PatchKind::StrategicMerge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            let mut document = target.clone();
            merge(&mut document, &patch);
            Ok(document)
        }
        PatchKind::Json => json_patch(target, &patch),
    }
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// RFC 6902: `add`, `remove`, `replace`, `move`, `copy` and `test`.
pub(crate) fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(operations) = patch else {
        return Err(PatchError::Malformed(
            "a JSON patch must be an array of operations".into(),
        ));
    };
    let mut document = target.clone();
    for operation in operations {
        let field = |name: &str| operation.get(name);
        let string = |name: &str| {
            field(name).and_then(Value::as_str).ok_or_else(|| {
                PatchError::Malformed(format!("an operation lacks its {name:?}: {operation}"))
            })
        };
        let value = || {
            field("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("an operation lacks its \"value\": {operation}"))
            })
        };
        let path = string("path")?;
        match string("op")? {
            "add" => add(&mut document, path, value()?)?,
            "remove" => {
                remove(&mut document, path)?;
            }
            "replace" => {
                check_pointer(path)?;
                let slot = document.pointer_mut(path).ok_or_else(|| missing(path))?;
                *slot = value()?;
            }
            "move" => {
                let from = string("from")?;
                if path != from {
                    if path.starts_with(&format!("{from}/")) {
                        return Err(PatchError::Failed(format!(
                            "cannot move {from} into its own child {path}"
                        )));
                    }
                    let moved = remove(&mut document, from)?;
                    add(&mut document, path, moved)?;
                }
            }
            "copy" => {
                let from = string("from")?;
                check_pointer(from)?;
                let copied = document
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| missing(from))?;
                add(&mut document, path, copied)?;
            }
            "test" => {
                check_pointer(path)?;
                let expected = value()?;
                if document.pointer(path) != Some(&expected) {
                    return Err(PatchError::Failed(format!(
                        "testing value {path} failed: expected {expected}"
                    )));
                }
            }
            other => {
                return Err(PatchError::Malformed(format!(
                    "unknown JSON patch operation {other:?}"
                )));
            }
        }
    }
    Ok(document)
}

fn missing(path: &str) -> PatchError {
    PatchError::Failed(format!("path {path} does not exist in the object"))
}

fn check_pointer(path: &str) -> Result<(), PatchError> {
    if path.is_empty() || path.starts_with('/') {
        Ok(())
    } else {
        Err(PatchError::Malformed(format!(
            "{path:?} is not a JSON pointer"
        )))
    }
}

/// The parent's pointer and the last token, unescaped (`~1` is `/`, `~0` is `~`).
fn split_last(path: &str) -> Result<(&str, String), PatchError> {
    check_pointer(path)?;
    let Some(slash) = path.rfind('/') else {
        return Err(PatchError::Failed(
            "the whole document cannot be the target of this operation".into(),
        ));
    };
    let last = path[slash + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..slash], last))
}

fn array_index(token: &str, len: usize, path: &str) -> Result<usize, PatchError> {
    match token.parse::<usize>() {
        Ok(index) if index <= len => Ok(index),
        _ => Err(PatchError::Failed(format!(
            "index {token:?} of {path} is out of range"
        ))),
    }
}

fn add(document: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *document = value;
        return Ok(());
    }
    let (parent, last) = split_last(path)?;
    match document.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
        }
        Some(Value::Array(items)) => {
            let index = if last == "-" {
                items.len()
            } else {
                array_index(&last, items.len(), path)?
            };
            items.insert(index, value);
        }
        _ => return Err(missing(path)),
    }
    Ok(())
}

fn remove(document: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, last) = split_last(path)?;
    match document.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&last).ok_or_else(|| missing(path)),
        Some(Value::Array(items)) => {
            let index = array_index(&last, items.len(), path)?;
            if index == items.len() {
                return Err(missing(path));
            }
            Ok(items.remove(index))
        }
        _ => Err(missing(path)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patched(target: Value, patch: Value) -> Result<Value, PatchError> {
        json_patch(&target, &patch)
    }

    #[test]
    fn merge_patch_merges_maps_removes_nulls_and_replaces_lists() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "list": [1, 2], "gone": true});
        merge(
            &mut target,
            &json!({"a": {"b": 10, "d": 4}, "list": [3], "gone": null}),
        );
        assert_eq!(target, json!({"a": {"b": 10, "c": 2, "d": 4}, "list": [3]}));
    }

    #[test]
    fn json_patch_applies_every_operation() {
        let result = patched(
            json!({"spec": {"replicas": 1, "tags": ["a", "c"]}, "a/b": {"~x": 1}}),
            json!([
                {"op": "test", "path": "/spec/replicas", "value": 1},
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "add", "path": "/spec/tags/1", "value": "b"},
                {"op": "add", "path": "/spec/tags/-", "value": "d"},
                {"op": "remove", "path": "/spec/tags/0"},
                {"op": "copy", "from": "/spec/replicas", "path": "/spec/copied"},
                {"op": "move", "from": "/a~1b/~0x", "path": "/moved"},
            ]),
        )
        .expect("the patch applies");
        assert_eq!(
            result,
            json!({"spec": {"replicas": 3, "copied": 3, "tags": ["b", "c", "d"]}, "a/b": {}, "moved": 1})
        );
    }

    #[test]
    fn json_patch_failures_change_nothing_and_say_why() {
        let target = json!({"spec": {"replicas": 1}});
        let failed = patched(
            target.clone(),
            json!([
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "test", "path": "/spec/replicas", "value": 1},
            ]),
        );
        assert!(matches!(failed, Err(PatchError::Failed(_))), "{failed:?}");
        assert!(matches!(
            patched(
                target.clone(),
                json!([{"op": "remove", "path": "/spec/absent"}])
            ),
            Err(PatchError::Failed(_))
        ));
        assert!(matches!(
            patched(
                target.clone(),
                json!([{"op": "replace", "path": "/nope/x", "value": 1}])
            ),
            Err(PatchError::Failed(_))
        ));
        assert!(matches!(
            patched(
                target.clone(),
                json!([{"op": "frobnicate", "path": "/spec"}])
            ),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            patched(target.clone(), json!({"op": "add"})),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            patched(target, json!([{"op": "add", "path": "spec", "value": 1}])),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn content_types_choose_the_patch() {
        let kind = |ct: &str| PatchKind::from_content_type(Some(ct));
        assert_eq!(
            kind("application/merge-patch+json; charset=utf-8"),
            Ok(PatchKind::Merge)
        );
        assert_eq!(
            kind("application/strategic-merge-patch+json"),
            Ok(PatchKind::StrategicMerge)
        );
        assert_eq!(kind("application/json-patch+json"), Ok(PatchKind::Json));
        assert_eq!(
            kind("application/apply-patch+yaml"),
            Err(PatchError::ServerSideApply)
        );
        assert!(matches!(
            kind("application/json"),
            Err(PatchError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            PatchKind::from_content_type(None),
            Err(PatchError::UnsupportedMediaType(_))
        ));
    }
}
