//! Errors as the API server reports them: a `metav1.Status` with a reason and the
//! matching HTTP status. Clients branch on the code and reason (kube's `Error::Api`), so
//! they follow the real server's.

use serde_json::{Value, json};

use crate::resource::{Resource, Target};

/// A failed request, as answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    details: Option<Details>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Details {
    name: String,
    group: String,
    /// The plural, as the real server fills `details.kind` for most errors.
    kind: String,
}

/// The message of a conflict on a stale resourceVersion, word for word the real server's.
const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, resource: &Resource, name: &str) -> Self {
        self.details = Some(Details {
            name: name.to_owned(),
            group: resource.group.clone(),
            kind: resource.plural.clone(),
        });
        self
    }

    pub(crate) fn not_found(resource: &Resource, name: &str) -> Self {
        let message = format!("{} \"{name}\" not found", resource.qualified());
        Self::new(404, "NotFound", message).about(resource, name)
    }

    /// A path that names no resource the fake serves.
    pub(crate) fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub(crate) fn already_exists(resource: &Resource, name: &str) -> Self {
        let message = format!("{} \"{name}\" already exists", resource.qualified());
        Self::new(409, "AlreadyExists", message).about(resource, name)
    }

    /// `Operation cannot be fulfilled on {resource} "{name}": {why}`.
    pub(crate) fn conflict(resource: &Resource, name: &str, why: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            resource.qualified()
        );
        Self::new(409, "Conflict", message).about(resource, name)
    }

    /// The write named a resourceVersion that is no longer the object's.
    pub(crate) fn modified(resource: &Resource, name: &str) -> Self {
        Self::conflict(resource, name, MODIFIED)
    }

    pub(crate) fn invalid(resource: &Resource, name: &str, cause: &str) -> Self {
        let message = format!("{} \"{name}\" is invalid: {cause}", resource.kind());
        Self::new(422, "Invalid", message).about(resource, name)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 410: the watch cannot resume where the client asked; it must list again.
    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub(crate) fn unavailable() -> Self {
        Self::new(
            503,
            "ServiceUnavailable",
            "the API server is unavailable (fake-kube: set_unavailable)",
        )
    }

    /// A failure a test asked for with `fail_next`: the reason the real server gives with
    /// that code, and for a conflict its message, so that clients cannot tell it apart.
    pub(crate) fn injected(code: u16, target: Option<&Target>) -> Self {
        let about = target.map(|t| (t.resource(), t.name().unwrap_or_default()));
        let error = match (code, about) {
            (404, Some((resource, name))) => return Self::not_found(resource, name),
            (409, Some((resource, name))) => return Self::modified(resource, name),
            _ => Self::new(
                code,
                reason_for(code),
                format!("injected failure {code} (fake-kube: fail_next)"),
            ),
        };
        match about {
            Some((resource, name)) => error.about(resource, name),
            None => error,
        }
    }

    /// The `metav1.Status` body.
    pub(crate) fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(details), Some(fields)) = (&self.details, status.as_object_mut()) {
            fields.insert(
                "details".into(),
                json!({"name": details.name, "group": details.group, "kind": details.kind}),
            );
        }
        status
    }
}

/// The `StatusReason` the real server pairs with a code.
fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_reads_like_the_real_servers() {
        let leases = Resource {
            group: "coordination.k8s.io".into(),
            version: "v1".into(),
            plural: "leases".into(),
        };
        let status = ApiError::modified(&leases, "leader").status();
        assert_eq!(
            status,
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Operation cannot be fulfilled on leases.coordination.k8s.io \"leader\": \
                            the object has been modified; please apply your changes to the latest \
                            version and try again",
                "reason": "Conflict",
                "details": {"name": "leader", "group": "coordination.k8s.io", "kind": "leases"},
                "code": 409,
            })
        );
    }
}
