//! Liveness and readiness, open without the token (Kubernetes probes them).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wellspring_protocol::taskstore::api::{FailedComponent, Liveness, Readiness};

use wellspring_actors::metrics::Metrics;
use wellspring_actors::supervision::Health;

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

/// Ready while no component is failed (escalated or for good) and every shard this node
/// owns is restored: a node that took partitions over answers for them only once their
/// state is back.
pub(super) async fn ready(State(api): State<Api>) -> Response {
    let readiness = readiness(&api.health, &api.metrics);
    (status(readiness.ready), Json(readiness)).into_response()
}

fn readiness(health: &Health, metrics: &Metrics) -> Readiness {
    let failed = failed(health.failed());
    let restoring: Vec<String> = metrics
        .restoring()
        .into_iter()
        .flat_map(|(dag, stage, partitions)| {
            partitions
                .into_iter()
                .map(move |tp| format!("{dag}/{stage} {}/{}", tp.topic, tp.partition))
        })
        .collect();
    Readiness {
        ready: failed.is_empty() && restoring.is_empty(),
        failed,
        restoring,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wellspring_actors::supervision::ComponentState;
    use wellspring_log::TopicPartition;

    #[test]
    fn a_node_is_ready_only_once_its_shards_are_restored() {
        let (health, metrics) = (Health::default(), Metrics::default());
        health.set("reference/images-site", ComponentState::Running);
        let owned = metrics.owned_shards("reference", "images-site");
        let tp = TopicPartition::new("images_channel", 3);
        owned.insert(&tp);
        assert!(readiness(&health, &metrics).ready);

        owned.restoring(&tp);
        let restoring = readiness(&health, &metrics);
        assert!(!restoring.ready);
        assert_eq!(
            restoring.restoring,
            vec!["reference/images-site images_channel/3".to_owned()]
        );
        let mut text = String::new();
        metrics.encode(&mut text).unwrap_or_default();
        assert!(
            text.contains("wellspring_shards_restoring{dag=\"reference\",node=\"images-site\"} 1"),
            "{text}"
        );

        owned.restored(&tp);
        owned.restore_took(std::time::Duration::from_millis(40));
        assert!(readiness(&health, &metrics).ready);
        assert_eq!(owned.restore_totals().0, 1);

        health.set(
            "reference/images-site",
            ComponentState::Failed("boom".into()),
        );
        assert!(!readiness(&health, &metrics).ready);
    }
}
