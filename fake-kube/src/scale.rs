//! The `scale` subresource: an `autoscaling/v1` `Scale` read from, and written to, a
//! workload's `spec.replicas`.
//!
//! A Scale has no object of its own: its resourceVersion is the workload's, so a PUT of
//! a stale Scale conflicts like a PUT of the stale workload, and a scale that changes the
//! replicas is a MODIFIED event of the workload.

use serde_json::{Map, Value, json};

use crate::resource::Resource;
use crate::status::ApiError;

/// The resources the real server gives a scale subresource (among those the fake knows).
pub(crate) fn scalable(resource: &Resource) -> bool {
    resource.group == "apps"
        && matches!(
            resource.plural.as_str(),
            "deployments" | "statefulsets" | "replicasets"
        )
}

/// The Scale of a workload.
pub(crate) fn of(workload: &Value) -> Value {
    let metadata = workload.get("metadata").cloned().unwrap_or_default();
    let mut meta = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(value) = metadata.get(field) {
            meta.insert(field.into(), value.clone());
        }
    }
    // The API defaults a Deployment's replicas to 1; the fake stores bodies as sent.
    let replicas = workload
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let observed = workload
        .pointer("/status/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut status = json!({"replicas": observed});
    if let (Some(selector), Some(fields)) = (selector_string(workload), status.as_object_mut()) {
        fields.insert("selector".into(), selector.into());
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": replicas},
        "status": status,
    })
}

/// `spec.selector.matchLabels` as a label selector string (`app=web,tier=front`);
/// `matchExpressions` are not rendered.
fn selector_string(workload: &Value) -> Option<String> {
    let labels = workload
        .pointer("/spec/selector/matchLabels")?
        .as_object()?;
    let mut terms: Vec<String> = labels
        .iter()
        .filter_map(|(key, value)| Some(format!("{key}={}", value.as_str()?)))
        .collect();
    terms.sort();
    Some(terms.join(","))
}

/// The workload as the requested Scale would leave it: its replicas, and the Scale's
/// resourceVersion carried as the update's precondition.
pub(crate) fn apply_to(
    workload: &Value,
    scale: &Value,
    resource: &Resource,
    name: &str,
) -> Result<Value, ApiError> {
    let replicas = match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => 0,
        Some(value) => value.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!("spec.replicas must be an integer, not {value}"))
        })?,
    };
    if replicas < 0 {
        return Err(ApiError::invalid(
            resource,
            name,
            &format!(
                "spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
            ),
        ));
    }
    let mut next = workload.clone();
    let Some(fields) = next.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the stored object is not a JSON object",
        ));
    };
    let spec = fields
        .entry("spec")
        .or_insert_with(|| Value::Object(Map::new()));
    match spec.as_object_mut() {
        Some(spec) => {
            spec.insert("replicas".into(), replicas.into());
        }
        None => *spec = json!({"replicas": replicas}),
    }
    let precondition = scale
        .pointer("/metadata/resourceVersion")
        .filter(|version| version.as_str().is_some_and(|v| !v.is_empty()))
        .cloned();
    if let Some(meta) = fields.get_mut("metadata").and_then(Value::as_object_mut) {
        match precondition {
            Some(version) => meta.insert("resourceVersion".into(), version),
            None => meta.remove("resourceVersion"),
        };
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_reads_the_deployment() {
        let deployment = json!({
            "metadata": {"name": "web", "namespace": "lab", "uid": "u", "resourceVersion": "7",
                         "creationTimestamp": "2026-11-22T10:00:00Z", "labels": {"x": "y"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"tier": "front", "app": "web"}}},
            "status": {"replicas": 2},
        });
        assert_eq!(
            of(&deployment),
            json!({
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {"name": "web", "namespace": "lab", "uid": "u", "resourceVersion": "7",
                             "creationTimestamp": "2026-11-22T10:00:00Z"},
                "spec": {"replicas": 3},
                "status": {"replicas": 2, "selector": "app=web,tier=front"},
            })
        );
        let bare = json!({"metadata": {"name": "web"}});
        assert_eq!(
            of(&bare)["spec"],
            json!({"replicas": 1}),
            "replicas default to 1"
        );
        assert_eq!(of(&bare)["status"], json!({"replicas": 0}));
    }
}
