//! The status API: `GET /api/dags`, `/api/experiments`, `/api/experiments/{id}`,
//! `/api/experiments/{id}/plates/{n}`, `/api/dead-letters` and `/api/events` (SSE),
//! answered from the node's status view (`crate::status`), so for the whole cluster;
//! and `POST /api/dead-letters/redrive`, which sends dead letters back into their stages
//! (`crate::redrive`); `POST /api/reruns` and `POST /api/backfills`, which send retained
//! records into one DAG node again (`crate::replay`), streaming their progress.
//!
//! Its own router, so that `wellspring demo --serve` serves it without a task store; the
//! node merges it into its API. Same rules as the rest: with a token configured every call
//! needs `Authorization: Bearer TOKEN` (`/api/events` also takes `?token=`, as a
//! browser's `EventSource` cannot set headers), bodies are bounded, errors are
//! `{"error": "..."}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use wellspring_actors::taskstore::ApiClient;
use wellspring_protocol::redrive::RedriveRequest;
use wellspring_protocol::rerun::{
    BackfillRequest, ReplayProgress, RerunRequest, route as rerun_route,
};
use wellspring_protocol::status::{DeadLetterQuery, ExperimentQuery, UnansweredNode, route};
use wellspring_protocol::taskstore::api;

use super::ApiError;
use crate::redrive::{RedriveError, Redriver};
use crate::replay::{Job, ReplayError, Replayer};
use crate::status::StatusView;

/// What a node steers the work with: redrives, re-runs and backfills.
#[derive(Clone)]
pub struct Steering {
    pub redriver: Redriver,
    pub replayer: Replayer,
}

/// The other live nodes, as the task store's directory knows them: `(node, API URL)`.
pub type PeerList = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// How long `/api/dags` waits for each other node's metrics.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct StatusApi {
    view: StatusView,
    token: Option<Arc<str>>,
    /// `None` where nothing can be redriven or re-run (no stages to send records to).
    steering: Option<Steering>,
    /// Whom `/api/dags` asks for their stages' metrics (`None`: a node on its own).
    peers: Option<PeerList>,
}

/// The status routes, with their own token check and body limit.
pub fn router(
    view: StatusView,
    steering: Option<Steering>,
    peers: Option<PeerList>,
    token: Option<String>,
    body_limit: usize,
) -> Router {
    let state = StatusApi {
        view,
        token: token.map(Arc::from),
        steering,
        peers,
    };
    Router::new()
        .route(route::DAGS, get(dags))
        .route(route::EXPERIMENTS, get(experiments))
        .route(route::EXPERIMENT, get(experiment))
        .route(route::PLATE, get(plate))
        .route(route::DEAD_LETTERS, get(dead_letters))
        .route(route::REDRIVE, post(redrive))
        .route(rerun_route::RERUNS, post(rerun))
        .route(rerun_route::BACKFILLS, post(backfill))
        .route(route::EVENTS, get(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

fn not_found(message: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, message)
}

/// Every DAG with its nodes' counters: the stages' metrics summed over this node and
/// every live peer (each asked with `?scope=local`), unless the query says `scope=local`.
async fn dags(
    State(api): State<StatusApi>,
    query: Result<Query<api::ShardsQuery>, QueryRejection>,
) -> Result<Json<wellspring_protocol::status::DagList>, ApiError> {
    let Query(query) = query.map_err(ApiError::from)?;
    let mut list = api.view.dag_list();
    match query.scope.as_deref() {
        Some(api::LOCAL_SCOPE) => return Ok(Json(list)),
        None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "scope must be \"{}\" or absent, not {other:?}",
                api::LOCAL_SCOPE
            )));
        }
    }
    let Some(peers) = &api.peers else {
        return Ok(Json(list));
    };
    let http = ApiClient::http(PEER_TIMEOUT)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let token = api.token.as_deref().map(str::to_owned);
    for (node, url) in peers() {
        let client = ApiClient::with_http(http.clone(), &url, token.clone());
        match client.local_dags().await {
            Ok(theirs) => list.add_node(theirs),
            Err(e) => list.unanswered.push(UnansweredNode {
                node,
                url,
                error: e.to_string(),
            }),
        }
    }
    Ok(Json(list))
}

async fn experiments(
    State(api): State<StatusApi>,
    query: Result<Query<ExperimentQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return ApiError::from(rejection).into_response(),
    };
    let mut list = api.view.with(|m| m.experiment_list(&query));
    list.view_error = api.view.error();
    Json(list).into_response()
}

async fn experiment(State(api): State<StatusApi>, Path(id): Path<String>) -> Response {
    match api.view.with(|m| m.experiment_detail(&id)) {
        Some(detail) => Json(detail).into_response(),
        None => not_found(format!(
            "no experiment {id:?} (yet): GET /api/experiments lists those seen"
        ))
        .into_response(),
    }
}

async fn plate(
    State(api): State<StatusApi>,
    Path((id, plate)): Path<(String, String)>,
) -> Response {
    let Ok(number) = plate.parse::<u32>() else {
        return ApiError::bad_request(format!("plate must be a number, not {plate:?}"))
            .into_response();
    };
    match api.view.with(|m| m.plate_detail(&id, number)) {
        Some(detail) => Json(detail).into_response(),
        None => not_found(format!(
            "no plate {number} of experiment {id:?} (yet): GET /api/experiments/{id} lists its plates"
        ))
        .into_response(),
    }
}

async fn dead_letters(
    State(api): State<StatusApi>,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(query)) => Json(api.view.with(|m| m.dead_letter_page(&query))).into_response(),
        Err(rejection) => ApiError::from(rejection).into_response(),
    }
}

/// Sends the dead letters the body selects back into their stages, once each (or says
/// what it would, with `dry_run`): `200` with what was redriven and skipped, and why.
async fn redrive(
    State(api): State<StatusApi>,
    body: Result<Json<RedriveRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return ApiError::from(rejection).into_response(),
    };
    if let Some(problem) = request.problem() {
        return ApiError::bad_request(problem).into_response();
    }
    let Some(Steering { redriver, .. }) = &api.steering else {
        return ApiError(
            StatusCode::NOT_IMPLEMENTED,
            "this server shows the status only; redrive through a node (`wellspring run`)".into(),
        )
        .into_response();
    };
    match redriver.redrive(request).await {
        Ok(answer) => Json(answer).into_response(),
        // The log did not answer, or the node is stopping: nothing more was sent than
        // the ledger records, so the same call can be made again.
        Err(e @ (RedriveError::Log(_) | RedriveError::Stopped)) => {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; try again")).into_response()
        }
        Err(e @ RedriveError::Start(_)) => {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

/// Re-runs one DAG node for a subset, in a new generation: `200` with one JSON line per
/// progress report, the last one `done` with the answer or `failed` with why.
async fn rerun(
    State(api): State<StatusApi>,
    body: Result<Json<RerunRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(request)) => replay(&api, Job::Rerun(request)),
        Err(rejection) => ApiError::from(rejection).into_response(),
    }
}

/// Backfills one DAG node over retained history, answered as a re-run is.
async fn backfill(
    State(api): State<StatusApi>,
    body: Result<Json<BackfillRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(request)) => replay(&api, Job::Backfill(request)),
        Err(rejection) => ApiError::from(rejection).into_response(),
    }
}

fn replay_error(e: &ReplayError) -> (StatusCode, bool) {
    match e {
        ReplayError::Invalid(_) => (StatusCode::BAD_REQUEST, false),
        ReplayError::InputsGone(_) => (StatusCode::GONE, false),
        ReplayError::Log(_) | ReplayError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, true),
        ReplayError::Start(_) => (StatusCode::INTERNAL_SERVER_ERROR, false),
    }
}

/// Checks `job`, then runs it, streaming its progress as JSON lines.
fn replay(api: &StatusApi, job: Job) -> Response {
    let Some(Steering { replayer, .. }) = &api.steering else {
        return ApiError(
            StatusCode::NOT_IMPLEMENTED,
            "this server shows the status only; re-run and backfill through a node (`wellspring run`)"
                .into(),
        )
        .into_response();
    };
    if let Err(e) = replayer.check(&job) {
        return ApiError(replay_error(&e).0, e.to_string()).into_response();
    }
    let (progress, events) = tokio::sync::mpsc::unbounded_channel();
    let (finished, result) = tokio::sync::oneshot::channel();
    let replayer = replayer.clone();
    tokio::spawn(async move {
        let _ = finished.send(replayer.run(job, progress).await);
    });
    // The worker drops its progress sender when the job ends: then the result follows.
    let lines =
        futures::stream::unfold((events, Some(result)), |(mut events, result)| async move {
            if let Some(event) = events.recv().await {
                return Some((event, (events, result)));
            }
            let event = match result?.await {
                Ok(Ok(answer)) => ReplayProgress::Done { answer },
                Ok(Err(e)) => ReplayProgress::Failed {
                    retry: replay_error(&e).1,
                    error: e.to_string(),
                },
                Err(_) => ReplayProgress::Failed {
                    error: ReplayError::Stopped.to_string(),
                    retry: true,
                },
            };
            Some((event, (events, None)))
        })
        .map(|event| {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, Infallible>(bytes::Bytes::from(line))
        });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

async fn events(
    State(api): State<StatusApi>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = api.view.subscribe();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(change) => Event::default()
                .event(change.kind.clone())
                .json_data(&change)
                .unwrap_or_else(|_| Event::default().comment("unencodable")),
            // A slow client missed events: tell it to re-read everything.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("resync").data("{}")
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// With a token configured, a call presents it as a bearer token, or (for the event
/// stream) as `?token=`; compared in constant time.
async fn authorize(
    State(api): State<StatusApi>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &api.token {
        let from_header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(api::presented_token)
            .map(str::to_owned);
        let from_query = (request.uri().path() == route::EVENTS)
            .then(|| request.uri().query())
            .flatten()
            .and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix("token="))
                    .map(|t| {
                        percent_encoding::percent_decode_str(t)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
            });
        let presented = from_header.or(from_query);
        if !super::token_matches(presented.as_deref(), token) {
            return super::unauthorized();
        }
    }
    next.run(request).await
}
