//! The node's HTTP API: the task store (the reference task-queue API), health, metrics.
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
//! | `POST /admin/drain` | stop as on SIGTERM: the API, then every stage flushes, commits and leaves its groups (`wellspring drain`) |
//!
//! Bodies are strict JSON: unknown fields, wrong types and bad values are `400` with a
//! message; bodies over the limit are `413`; with a token configured, every call but the
//! health checks needs `Authorization: Bearer TOKEN` (`401` otherwise).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;
use wellspring_actors::metrics::{Histogram, Metrics, names};
use wellspring_actors::supervision::Health;
use wellspring_actors::taskstore::store::{
    FORWARDED, ForwardedAnswer, ForwardedSubmit, group_name,
};
use wellspring_actors::taskstore::{Scope, TaskError, TaskStore};
use wellspring_protocol::taskstore::{
    Claim, ExtendClaim, GroupSettings, NewTask, Report, TaskStatus,
};

/// Largest request body accepted by default.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
struct Api {
    store: TaskStore,
    health: Health,
    metrics: Metrics,
    token: Option<Arc<str>>,
    /// Told when a drain is asked for; the node's runner stops the node.
    drain: Arc<tokio::sync::Notify>,
}

/// An error answer: a status and a message, as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
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
) -> Router {
    let api = Api {
        store,
        health,
        metrics,
        token: token.map(Arc::from),
        drain,
    };
    let protected = Router::new()
        .route("/groups", post(create_group).get(list_groups))
        .route("/groups/{name}", get(read_group))
        .route("/groups/{name}/stats", get(group_stats))
        .route("/groups/{name}/tasks", get(group_tasks))
        .route("/groups/{name}/autoscaling", get(autoscaling))
        .route("/tasks", post(submit))
        .route("/tasks/{id}", get(read_task))
        .route("/tasks/claim", post(claim))
        .route("/tasks/extend-claim", post(extend))
        .route("/tasks/success", post(success))
        .route("/tasks/failure", post(failure))
        .route("/internal/tasks", post(forwarded_submit))
        .route("/metrics", get(metrics_text))
        .route("/task-store/shards", get(shards))
        .route("/shards", get(cluster_shards))
        .route("/admin/drain", post(request_drain))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .merge(protected)
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such endpoint; see the README for the API".into(),
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(api)
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

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
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| same_secret(p.as_bytes(), token.as_bytes())) {
            let mut response = ApiError(
                StatusCode::UNAUTHORIZED,
                "this API needs Authorization: Bearer TOKEN".into(),
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

async fn request_drain(State(api): State<Api>) -> Response {
    tracing::info!("drain requested over the API");
    api.drain.notify_one();
    (StatusCode::ACCEPTED, Json(json!({ "draining": true }))).into_response()
}

/// Alive unless a DAG failed for good: its supervisors gave up, and only a restart of the
/// process (Kubernetes restarts the container when this fails) runs it again.
async fn live(State(api): State<Api>) -> Response {
    health_answer(api.health.gave_up(), "live")
}

async fn ready(State(api): State<Api>) -> Response {
    health_answer(api.health.failed(), "ready")
}

fn health_answer(failed: Vec<(String, String)>, what: &str) -> Response {
    if failed.is_empty() {
        (StatusCode::OK, Json(json!({ what: true }))).into_response()
    } else {
        let failed: Vec<_> = failed
            .into_iter()
            .map(|(component, reason)| json!({ "component": component, "reason": reason }))
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ what: false, "failed": failed })),
        )
            .into_response()
    }
}

async fn create_group(
    State(api): State<Api>,
    body: Result<Json<GroupSettings>, JsonRejection>,
) -> Answer<(StatusCode, Json<GroupSettings>)> {
    let Json(settings) = body?;
    let (settings, created) = api.store.create_group(settings).await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(settings),
    ))
}

async fn list_groups(State(api): State<Api>) -> Json<Vec<GroupSettings>> {
    Json(api.store.groups())
}

async fn read_group(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Answer<Json<GroupSettings>> {
    let name = group_name(&name)?;
    api.store
        .groups()
        .into_iter()
        .find(|g| g.name == name)
        .map(Json)
        .ok_or_else(|| TaskError::UnknownGroup(name.to_owned()).into())
}

async fn group_stats(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer<Response> {
    let stats = api.store.stats(group_name(&name)?, scope(&headers)).await?;
    Ok(Json(stats).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

async fn group_tasks(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let Query(query) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(TaskStatus::parse(text).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("status {text:?} is not available, leased, succeeded or dead-lettered"),
            )
        })?),
    };
    let limit = query.limit.unwrap_or(100).min(10_000);
    let tasks = api
        .store
        .list(group_name(&name)?, status, limit, scope(&headers))
        .await?;
    Ok(Json(tasks).into_response())
}

async fn autoscaling(State(api): State<Api>, Path(name): Path<String>) -> Answer<Response> {
    let name = group_name(&name)?;
    let stats = api.store.stats(name, Scope::Cluster).await?;
    let settings = api
        .store
        .groups()
        .into_iter()
        .find(|g| g.name == name)
        .ok_or_else(|| TaskError::UnknownGroup(name.to_owned()))?;
    Ok(Json(json!({
        "group": name,
        "desired-workers": stats.desired_workers,
        "backlog": stats.available + stats.leased,
        "tasks-per-worker": settings.autoscaling.tasks_per_worker,
        "min-workers": settings.autoscaling.min_workers,
        "max-workers": settings.autoscaling.max_workers,
    }))
    .into_response())
}

async fn submit(
    State(api): State<Api>,
    body: Result<Json<NewTask>, JsonRejection>,
) -> Answer<Response> {
    let Json(task) = body?;
    let (task, created) = api.store.submit(task, None).await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(task),
    )
        .into_response())
}

async fn read_task(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    let id = Uuid::try_parse(&id).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a task id (a UUID)"),
        )
    })?;
    Ok(Json(api.store.get(id, scope(&headers)).await?).into_response())
}

/// The shards this node serves, and every node's announcement.
async fn shards(State(api): State<Api>) -> Response {
    Json(json!({
        "node": api.store.config().node_id,
        "serving": api.store.local_partitions(),
        "partitions": api.store.config().partitions,
        "nodes": api.store.directory(),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardsQuery {
    scope: Option<String>,
}

/// This node's stages and the partitions each owns here.
fn local_shards(api: &Api) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = api
        .metrics
        .owned_partitions()
        .into_iter()
        .map(|(dag, stage, partitions)| {
            json!({
                "dag": dag,
                "stage": stage,
                "partitions": partitions
                    .iter()
                    .map(|tp| json!({"topic": &*tp.topic, "partition": tp.partition}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "node": api.store.config().node_id,
        "url": api.store.config().advertise_url,
        "stages": stages,
    })
}

/// Who owns what: this node's partitions, and every other live node's (they announce
/// themselves in the task store's directory), asked of each in turn.
async fn cluster_shards(
    State(api): State<Api>,
    query: Result<Query<ShardsQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let Query(query) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let local = local_shards(&api);
    match query.scope.as_deref() {
        Some("local") => return Ok(Json(local).into_response()),
        None => {}
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("scope must be \"local\" or absent, not {other:?}"),
            ));
        }
    }
    let me = api.store.config().node_id.clone();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut nodes = vec![local];
    for peer in api.store.directory().into_iter().filter(|a| a.node != me) {
        let mut request = http.get(format!("{}/shards?scope=local", peer.url));
        if let Some(token) = &api.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let answer = match request.send().await {
            Ok(response) => match response.bytes().await {
                Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                    .map_err(|e| format!("not JSON: {e}")),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        nodes.push(
            answer.unwrap_or_else(
                |error| json!({"node": peer.node, "url": peer.url, "error": error}),
            ),
        );
    }
    Ok(Json(json!({ "node": me, "nodes": nodes })).into_response())
}

/// A submission another node forwarded here, with its id and DAG origin.
async fn forwarded_submit(
    State(api): State<Api>,
    body: Result<Json<ForwardedSubmit>, JsonRejection>,
) -> Answer<Response> {
    let Json(ForwardedSubmit { id, task, dag }) = body?;
    let (task, created) = api
        .store
        .submit_with_id(id, task, dag, Scope::Local)
        .await?;
    Ok(Json(ForwardedAnswer { task, created }).into_response())
}

async fn claim(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<Claim>, JsonRejection>,
) -> Answer<Response> {
    let Json(claim) = body?;
    Ok(match api.store.claim(claim, scope(&headers)).await? {
        Some(task) => Json(task).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn extend(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<ExtendClaim>, JsonRejection>,
) -> Answer<Response> {
    let Json(extend) = body?;
    Ok(Json(api.store.extend(extend, scope(&headers)).await?).into_response())
}

async fn success(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<Report>, JsonRejection>,
) -> Answer<Response> {
    let Json(report) = body?;
    if report.error.is_some() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a success report carries output, not error".into(),
        ));
    }
    Ok(Json(api.store.report(report, true, scope(&headers)).await?).into_response())
}

async fn failure(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<Report>, JsonRejection>,
) -> Answer<Response> {
    let Json(report) = body?;
    if report.output.is_some() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a failure report carries error, not output".into(),
        ));
    }
    Ok(Json(api.store.report(report, false, scope(&headers)).await?).into_response())
}

/// Prometheus text: every counter, gauge and histogram of the node, each stage's shards
/// (owned partitions, consumer lag, rebalances, restore times), and per task group its
/// queue depth, leases and desired workers (the autoscaling signal).
async fn metrics_text(State(api): State<Api>) -> Response {
    let mut out = String::new();
    let labels =
        |dag: &str, node: &str| format!("dag=\"{}\",node=\"{}\"", escape(dag), escape(node));
    // One family at a time: Prometheus wants a family's samples together, after its
    // HELP and TYPE.
    let mut counters = api.metrics.counters();
    counters.sort_by(|a, b| a.2.cmp(b.2));
    let mut family = "";
    for (dag, node, name, value) in &counters {
        if *name != family {
            family = name;
            let _ = writeln!(out, "# HELP wellspring_{name}_total {}", names::help(name));
            let _ = writeln!(out, "# TYPE wellspring_{name}_total counter");
        }
        let _ = writeln!(
            out,
            "wellspring_{name}_total{{{}}} {value}",
            labels(dag, node)
        );
    }
    let mut gauges = api.metrics.gauge_values();
    gauges.sort_by(|a, b| a.2.cmp(b.2));
    let mut family = "";
    for (dag, node, name, value) in &gauges {
        if *name != family {
            family = name;
            let _ = writeln!(out, "# HELP wellspring_{name} {}", names::help(name));
            let _ = writeln!(out, "# TYPE wellspring_{name} gauge");
        }
        let _ = writeln!(out, "wellspring_{name}{{{}}} {value}", labels(dag, node));
    }
    let mut histograms = api.metrics.histograms();
    histograms.sort_by(|a, b| a.2.cmp(b.2));
    let mut family = "";
    for (dag, node, name, histogram) in &histograms {
        if *name != family {
            family = name;
            let _ = writeln!(out, "# HELP wellspring_{name} {}", names::help(name));
            let _ = writeln!(out, "# TYPE wellspring_{name} histogram");
        }
        write_histogram(
            &mut out,
            &format!("wellspring_{name}"),
            &labels(dag, node),
            histogram,
        );
    }
    // Each stage's shards on this node (the `node` label is the DAG node).
    let stages = api.metrics.stages();
    let _ = writeln!(
        out,
        "# HELP wellspring_shards Partitions of a stage this node owns."
    );
    let _ = writeln!(out, "# TYPE wellspring_shards gauge");
    for (dag, stage, owned) in &stages {
        let _ = writeln!(
            out,
            "wellspring_shards{{{}}} {}",
            labels(dag, stage),
            owned.list().len()
        );
    }
    let _ = writeln!(
        out,
        "# HELP wellspring_consumer_lag Records of an owned partition not yet committed (end offset minus committed offset)."
    );
    let _ = writeln!(out, "# TYPE wellspring_consumer_lag gauge");
    for (dag, stage, owned) in &stages {
        for (tp, lag) in owned.lags() {
            let _ = writeln!(
                out,
                "wellspring_consumer_lag{{{},topic=\"{}\",partition=\"{}\"}} {lag}",
                labels(dag, stage),
                escape(&tp.topic),
                tp.partition
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP wellspring_rebalances_total Times the consumer group moved partitions of a stage to or from this node."
    );
    let _ = writeln!(out, "# TYPE wellspring_rebalances_total counter");
    for (dag, stage, owned) in &stages {
        let _ = writeln!(
            out,
            "wellspring_rebalances_total{{{}}} {}",
            labels(dag, stage),
            owned.rebalances.get()
        );
    }
    let _ = writeln!(
        out,
        "# HELP wellspring_restore_duration_seconds Time to restore a shard from its changelog before it runs."
    );
    let _ = writeln!(out, "# TYPE wellspring_restore_duration_seconds histogram");
    for (dag, stage, owned) in &stages {
        write_histogram(
            &mut out,
            "wellspring_restore_duration_seconds",
            &labels(dag, stage),
            &owned.restores,
        );
    }
    // Task groups: this node's shards only (every node exports its own, and a scraper
    // sums them). One family after the other.
    let mut groups = Vec::new();
    for group in api.store.groups() {
        if let Ok(stats) = api.store.stats(&group.name, Scope::Local).await {
            groups.push((escape(&group.name), stats));
        }
    }
    let _ = writeln!(
        out,
        "# HELP wellspring_task_group_tasks Tasks of a group by status (available: the queue depth; leased: held by workers)."
    );
    let _ = writeln!(out, "# TYPE wellspring_task_group_tasks gauge");
    for (g, stats) in &groups {
        for (status, n) in [
            ("available", stats.available),
            ("leased", stats.leased),
            ("succeeded", stats.succeeded),
            ("failed", stats.failed),
            ("dead-lettered", stats.dead_lettered),
        ] {
            let _ = writeln!(
                out,
                "wellspring_task_group_tasks{{group=\"{g}\",status=\"{status}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP wellspring_task_group_desired_workers Workers a group wants now (autoscaling signal)."
    );
    let _ = writeln!(out, "# TYPE wellspring_task_group_desired_workers gauge");
    for (g, stats) in &groups {
        let _ = writeln!(
            out,
            "wellspring_task_group_desired_workers{{group=\"{g}\"}} {}",
            stats.desired_workers
        );
    }
    let _ = writeln!(
        out,
        "# HELP wellspring_task_group_oldest_waiting_seconds How long the oldest available task has waited."
    );
    let _ = writeln!(
        out,
        "# TYPE wellspring_task_group_oldest_waiting_seconds gauge"
    );
    for (g, stats) in &groups {
        if let Some(oldest) = stats.oldest_waiting_ms {
            let _ = writeln!(
                out,
                "wellspring_task_group_oldest_waiting_seconds{{group=\"{g}\"}} {}",
                oldest as f64 / 1000.0
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn write_histogram(out: &mut String, family: &str, labels: &str, histogram: &Histogram) {
    let (buckets, sum, count) = histogram.snapshot();
    for (bound, cumulative) in buckets {
        let le = if bound.is_infinite() {
            "+Inf".to_owned()
        } else {
            bound.to_string()
        };
        let _ = writeln!(out, "{family}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{family}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{family}_count{{{labels}}} {count}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
