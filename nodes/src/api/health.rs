//! Liveness and readiness, open without the token (Kubernetes probes them).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wellspring_protocol::taskstore::api::{FailedComponent, Liveness, Readiness};

use super::Api;

fn failed(components: Vec<(String, String)>) -> Vec<FailedComponent> {
    components
        .into_iter()
        .map(|(component, reason)| FailedComponent { component, reason })
        .collect()
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Alive unless a DAG failed for good: its supervisors gave up, and only a restart of the
/// process (Kubernetes restarts the container when this fails) runs it again.
pub(super) async fn live(State(api): State<Api>) -> Response {
    let failed = failed(api.health.gave_up());
    let live = failed.is_empty();
    (status(live), Json(Liveness { live, failed })).into_response()
}

/// Ready while no component is failed (escalated or for good).
pub(super) async fn ready(State(api): State<Api>) -> Response {
    let failed = failed(api.health.failed());
    let ready = failed.is_empty();
    (status(ready), Json(Readiness { ready, failed })).into_response()
}
