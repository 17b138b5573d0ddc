//! The operator's calls: drain the node, and who owns which shard (the task store's, and
//! every stage's on every node).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use wellspring_actors::taskstore::ApiClient;
use wellspring_protocol::taskstore::api::{
    ClusterShards, DrainAnswer, LOCAL_SCOPE, NodeShards, OwnedPartition, PeerShards, ShardsQuery,
    StageShards,
};

use super::{Answer, Api, ApiError};

/// How long `/shards` waits for each other node.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn drain(State(api): State<Api>) -> Response {
    tracing::info!("drain requested over the API");
    api.drain.notify_one();
    (StatusCode::ACCEPTED, Json(DrainAnswer { draining: true })).into_response()
}

/// The shards this node serves, and every node's announcement.
pub(super) async fn task_store_shards(State(api): State<Api>) -> Response {
    Json(json!({
        "node": api.store.config().node_id,
        "serving": api.store.local_partitions(),
        "partitions": api.store.config().partitions,
        "nodes": api.store.directory(),
    }))
    .into_response()
}

/// This node's stages and the partitions each owns here.
fn local_shards(api: &Api) -> NodeShards {
    let listed = |partitions: Vec<wellspring_log::TopicPartition>| -> Vec<OwnedPartition> {
        partitions
            .iter()
            .map(|tp| OwnedPartition {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            })
            .collect()
    };
    let stages = api
        .metrics
        .stages()
        .into_iter()
        .map(|(dag, stage, owned)| {
            let (restores, took) = owned.restore_totals();
            StageShards {
                dag,
                stage,
                partitions: listed(owned.list()),
                restoring: listed(owned.restoring_now()),
                rebalances: owned.rebalances.get(),
                restores,
                restore_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            }
        })
        .collect();
    NodeShards {
        node: api.store.config().node_id.clone(),
        url: api.store.config().advertise_url.clone(),
        stages,
    }
}

/// Who owns what: this node's partitions, and every other live node's (they announce
/// themselves in the task store's directory), asked of each in turn.
pub(super) async fn cluster_shards(
    State(api): State<Api>,
    query: Result<Query<ShardsQuery>, QueryRejection>,
) -> Answer<Response> {
    let Query(query) = query?;
    let local = local_shards(&api);
    match query.scope.as_deref() {
        Some(LOCAL_SCOPE) => return Ok(Json(local).into_response()),
        None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "scope must be \"{LOCAL_SCOPE}\" or absent, not {other:?}"
            )));
        }
    }
    let me = api.store.config().node_id.clone();
    let http = ApiClient::http(PEER_TIMEOUT)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let token = api.token.as_deref().map(str::to_owned);
    let mut nodes = vec![PeerShards::Answered(local)];
    for peer in api.store.directory().into_iter().filter(|a| a.node != me) {
        let client = ApiClient::with_http(http.clone(), &peer.url, token.clone());
        nodes.push(match client.local_shards().await {
            Ok(shards) => PeerShards::Answered(shards),
            Err(e) => PeerShards::Unanswered {
                node: peer.node,
                url: peer.url,
                error: e.to_string(),
            },
        });
    }
    Ok(Json(ClusterShards { node: me, nodes }).into_response())
}
