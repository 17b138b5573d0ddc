//! The node's HTTP API: the task store (the reference task-queue API), admin, health,
//! metrics. Paths, headers and bodies are `wellspring_protocol::taskstore::api`; this is
//! the server.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /groups` | create a group, or update its settings |
//! | `GET /groups`, `GET /groups/{name}` | list groups, read one |
//! | `GET /groups/{name}/stats` | available, leased, succeeded, failed, dead-lettered, oldest waiting, desired workers |
//! | `GET /groups/{name}/tasks?status=&limit=` | a group's tasks, oldest first |
//! | `GET /groups/{name}/autoscaling` | the desired number of workers and why |
//! | `POST /tasks` | submit a task |
//! | `GET /tasks/{id}` | read a task |
//! | `POST /tasks/claim` | lease the next task (`204` when none) |
//! | `POST /tasks/extend-claim` | extend a lease |
//! | `POST /tasks/success`, `POST /tasks/failure` | report how a task ended |
//! | `GET /health/live`, `GET /health/ready` | liveness, readiness |
//! | `GET /metrics` | Prometheus metrics |
//! | `GET /task-store/shards` | the shards this node serves, and every node's |
//! | `GET /shards` | the partitions every stage owns, on this node and on every other (`?scope=local`: this node's) |
//! | `POST /internal/tasks` | a submission forwarded by another node |
//! | `POST /api/topics/{topic}/records` | records for a topic the node's DAGs read, checked against its schema, answered once durable ([`ingest`]) |
//! | `GET /api/dags`, `/api/experiments[/{id}[/plates/{n}]]`, `/api/dead-letters`, `/api/events` | the status view ([`status`]) |
//! | `POST /api/dead-letters/redrive`, `/api/reruns`, `/api/backfills` | steering: dead letters back into their stages, a node's work redone or done over history ([`status`], `crate::redrive`, `crate::replay`) |
//! | `GET /`, `GET /ui/...` | the web UI (open without the token; its API calls send it) |
//! | `POST /admin/drain` | stop as on SIGTERM: the API, then every stage flushes, commits and leaves its groups (`wellspring drain`) |
//!
//! Here: the router, the token check, error answers and the body limit; the handlers by
//! concept in [`tasks`], [`admin`], [`health`] and [`metrics`].
//!
//! Bodies are strict JSON: unknown fields, wrong types and bad values are `400` with a
//! message; bodies over the limit are `413`; with a token configured, every call but the
//! health checks needs `Authorization: Bearer TOKEN` (`401` otherwise).

mod admin;
mod health;
pub mod ingest;
mod metrics;
pub mod status;
mod tasks;
pub mod ui;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use subtle::ConstantTimeEq;
use wellspring_actors::metrics::Metrics;
use wellspring_actors::supervision::Health;
use wellspring_actors::taskstore::{Scope, TaskError, TaskStore};
use wellspring_protocol::ingest_api;
use wellspring_protocol::taskstore::api::{self, ErrorBody, FORWARDED, route};

/// Largest request body accepted by default.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// What every handler reaches.
#[derive(Clone)]
struct Api {
    store: TaskStore,
    health: Health,
    metrics: Metrics,
    token: Option<Arc<str>>,
    /// Told when a drain is asked for; the node's runner stops the node.
    drain: Arc<tokio::sync::Notify>,
    /// The topics records can be posted to.
    ingest: ingest::IngestTopics,
}

/// An error answer: a status and a message, as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
        ApiError(status, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match &rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

type Answer<T> = Result<T, ApiError>;

/// A call another node forwarded is served here only.
fn scope(headers: &HeaderMap) -> Scope {
    if headers.contains_key(FORWARDED) {
        Scope::Local
    } else {
        Scope::Cluster
    }
}

/// The API, ready to serve.
pub fn router(
    store: TaskStore,
    health: Health,
    metrics: Metrics,
    token: Option<String>,
    body_limit: usize,
    drain: Arc<tokio::sync::Notify>,
    ingest: ingest::IngestTopics,
) -> Router {
    let api = Api {
        store,
        health,
        metrics,
        token: token.map(Arc::from),
        drain,
        ingest,
    };
    let protected = Router::new()
        .route(
            route::GROUPS,
            post(tasks::create_group).get(tasks::list_groups),
        )
        .route(route::GROUP, get(tasks::read_group))
        .route(route::GROUP_STATS, get(tasks::group_stats))
        .route(route::GROUP_TASKS, get(tasks::group_tasks))
        .route(route::GROUP_AUTOSCALING, get(tasks::autoscaling))
        .route(route::TASKS, post(tasks::submit))
        .route(route::TASK, get(tasks::read_task))
        .route(route::CLAIM, post(tasks::claim))
        .route(route::EXTEND, post(tasks::extend))
        .route(route::SUCCESS, post(tasks::success))
        .route(route::FAILURE, post(tasks::failure))
        .route(route::SUBMIT_BATCH, post(tasks::submit_batch))
        .route(route::CLAIM_BATCH, post(tasks::claim_batch))
        .route(route::REPORT_BATCH, post(tasks::report_batch))
        .route(route::FORWARDED_SUBMIT, post(tasks::forwarded_submit))
        .route(route::METRICS, get(metrics::exposition))
        .route(route::TASK_STORE_SHARDS, get(admin::task_store_shards))
        .route(route::SHARDS, get(admin::cluster_shards))
        .route(route::DRAIN, post(admin::drain))
        .route(ingest_api::route::RECORDS, post(ingest::publish))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .route(route::LIVE, get(health::live))
        .route(route::READY, get(health::ready))
        .merge(protected)
        .merge(ui::routes(ui::Served {
            task_store: true,
            redrive: true,
        }))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint; see the README for the API".into(),
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(api)
}

/// With a token configured, a call must present it (compared in constant time).
async fn authorize(
    State(api): State<Api>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &api.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(api::presented_token);
        if !token_matches(presented, token) {
            return unauthorized();
        }
    }
    next.run(request).await
}

/// Whether the token a call presented is the node's (compared in constant time).
pub(crate) fn token_matches(presented: Option<&str>, token: &str) -> bool {
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.as_bytes())))
}

/// The answer to a call without the node's token: `401`, saying what to send.
pub(crate) fn unauthorized() -> Response {
    let mut response = ApiError(
        StatusCode::UNAUTHORIZED,
        "this API needs Authorization: Bearer TOKEN".into(),
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}
