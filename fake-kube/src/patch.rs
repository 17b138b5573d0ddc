//! PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902), applied by the
//! `json-patch` crate; this module picks the kind from the content type and maps the
//! failures to the API's answers.
//!
//! A strategic merge patch is applied as a plain merge patch (neither the crate nor the fake
//! knows the types' patch strategies), so a list in a strategic patch replaces the whole list (as a
//! merge patch does) where the real server would merge it by key (containers by name,
//! for instance), and `$patch`/`$retainKeys` directives are not understood. Patch only
//! maps, or send whole lists, and both behave the same.

use serde_json::Value;

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
    let mut document = target.clone();
    match kind {
        PatchKind::Merge | PatchKind::StrategicMerge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            json_patch::merge(&mut document, &patch);
        }
        PatchKind::Json => {
            let operations: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
                PatchError::Malformed(format!("not a JSON patch (an array of operations): {e}"))
            })?;
            json_patch::patch(&mut document, &operations)
                .map_err(|e| PatchError::Failed(e.to_string()))?;
        }
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patched(target: Value, patch: Value) -> Result<Value, PatchError> {
        apply(PatchKind::Json, &target, patch.to_string().as_bytes())
    }

    #[test]
    fn merge_patch_merges_maps_removes_nulls_and_replaces_lists() {
        let target = json!({"a": {"b": 1, "c": 2}, "list": [1, 2], "gone": true});
        let patch = json!({"a": {"b": 10, "d": 4}, "list": [3], "gone": null}).to_string();
        for kind in [PatchKind::Merge, PatchKind::StrategicMerge] {
            let merged = apply(kind, &target, patch.as_bytes()).expect("the patch applies");
            assert_eq!(merged, json!({"a": {"b": 10, "c": 2, "d": 4}, "list": [3]}));
        }
        assert!(matches!(
            apply(PatchKind::Merge, &target, b"[1]"),
            Err(PatchError::Malformed(_))
        ));
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
