//! The task store's calls: groups, submissions, claims, extensions, reports, reads, and
//! the submissions other nodes forward. A call another node forwarded (it carries the
//! forwarded header) is served from this node's shards only.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;
use wellspring_actors::taskstore::store::group_name;
use wellspring_actors::taskstore::{Scope, TaskError};
use wellspring_protocol::taskstore::api::{
    AutoscalingAnswer, BatchAnswer, BatchResult, ClaimBatch, ClaimedBatch, DEFAULT_LIST_LIMIT,
    ForwardedAnswer, ForwardedSubmit, ListQuery, MAX_LIST_LIMIT, ReportBatch, SubmitBatch,
};
use wellspring_protocol::taskstore::{
    Claim, ExtendClaim, GroupSettings, NewTask, Report, TaskStatus, TaskView,
};

use super::{Answer, Api, ApiError, scope};

/// `201` for something new, `200` for what was there.
fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

pub(super) async fn create_group(
    State(api): State<Api>,
    body: Result<Json<GroupSettings>, JsonRejection>,
) -> Answer<(StatusCode, Json<GroupSettings>)> {
    let Json(settings) = body?;
    let (settings, created) = api.store.create_group(settings).await?;
    Ok((created_or_ok(created), Json(settings)))
}

pub(super) async fn list_groups(State(api): State<Api>) -> Json<Vec<GroupSettings>> {
    Json(api.store.groups())
}

fn settings_of(api: &Api, name: &str) -> Result<GroupSettings, TaskError> {
    api.store
        .groups()
        .into_iter()
        .find(|g| g.name == name)
        .ok_or_else(|| TaskError::UnknownGroup(name.to_owned()))
}

pub(super) async fn read_group(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Answer<Json<GroupSettings>> {
    Ok(Json(settings_of(&api, group_name(&name)?)?))
}

pub(super) async fn group_stats(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer<Response> {
    let stats = api.store.stats(group_name(&name)?, scope(&headers)).await?;
    Ok(Json(stats).into_response())
}

pub(super) async fn group_tasks(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer<Response> {
    let Query(query) = query?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(TaskStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status {text:?} is not available, leased, succeeded or dead-lettered"
            ))
        })?),
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .min(MAX_LIST_LIMIT);
    let tasks = api
        .store
        .list(group_name(&name)?, status, limit, scope(&headers))
        .await?;
    Ok(Json(tasks).into_response())
}

pub(super) async fn autoscaling(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Answer<Json<AutoscalingAnswer>> {
    let name = group_name(&name)?;
    let stats = api.store.stats(name, Scope::Cluster).await?;
    let settings = settings_of(&api, name)?;
    Ok(Json(AutoscalingAnswer {
        group: name.to_owned(),
        desired_workers: stats.desired_workers,
        backlog: stats.available + stats.leased,
        tasks_per_worker: settings.autoscaling.tasks_per_worker,
        min_workers: settings.autoscaling.min_workers,
        max_workers: settings.autoscaling.max_workers,
    }))
}

pub(super) async fn submit(
    State(api): State<Api>,
    body: Result<Json<NewTask>, JsonRejection>,
) -> Answer<Response> {
    let Json(task) = body?;
    let (task, created) = api.store.submit(task, None).await?;
    Ok((created_or_ok(created), Json(task)).into_response())
}

pub(super) async fn read_task(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer<Response> {
    let id = Uuid::try_parse(&id)
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a task id (a UUID)")))?;
    Ok(Json(api.store.get(id, scope(&headers)).await?).into_response())
}

/// A submission another node forwarded here, with its id and DAG origin.
pub(super) async fn forwarded_submit(
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

pub(super) async fn claim(
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

pub(super) async fn extend(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<ExtendClaim>, JsonRejection>,
) -> Answer<Response> {
    let Json(extend) = body?;
    Ok(Json(api.store.extend(extend, scope(&headers)).await?).into_response())
}

pub(super) async fn success(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<Report>, JsonRejection>,
) -> Answer<Response> {
    report(api, headers, body, true).await
}

pub(super) async fn failure(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<Report>, JsonRejection>,
) -> Answer<Response> {
    report(api, headers, body, false).await
}

async fn report(
    api: Api,
    headers: HeaderMap,
    body: Result<Json<Report>, JsonRejection>,
    success: bool,
) -> Answer<Response> {
    let Json(report) = body?;
    if let Some(mismatch) = report.mismatch(success) {
        return Err(ApiError::bad_request(mismatch));
    }
    Ok(Json(api.store.report(report, success, scope(&headers)).await?).into_response())
}

/// One item of a batch, answered as its single call would be (a submission's `created`
/// is `Some`: `201` when new).
fn batch_result(result: Result<(TaskView, Option<bool>), TaskError>) -> BatchResult {
    match result {
        Ok((task, created)) => BatchResult {
            status: created_or_ok(created.unwrap_or(false)).as_u16(),
            id: Some(task.id),
            version: Some(task.version),
            created,
            error: None,
        },
        Err(e) => BatchResult {
            status: e.http_status(),
            id: None,
            version: None,
            created: None,
            error: Some(e.to_string()),
        },
    }
}

pub(super) async fn submit_batch(
    State(api): State<Api>,
    body: Result<Json<SubmitBatch>, JsonRejection>,
) -> Answer<Json<BatchAnswer>> {
    let Json(batch) = body?;
    let results = api.store.submit_many(batch.tasks).await?;
    Ok(Json(BatchAnswer {
        results: results
            .into_iter()
            .map(|result| batch_result(result.map(|(task, created)| (task, Some(created)))))
            .collect(),
    }))
}

pub(super) async fn claim_batch(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<ClaimBatch>, JsonRejection>,
) -> Answer<Json<ClaimedBatch>> {
    let Json(batch) = body?;
    let (claim, limit) = batch.split();
    let tasks = api.store.claim_many(claim, limit, scope(&headers)).await?;
    Ok(Json(ClaimedBatch { tasks }))
}

pub(super) async fn report_batch(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<ReportBatch>, JsonRejection>,
) -> Answer<Json<BatchAnswer>> {
    let Json(batch) = body?;
    let reports = batch
        .succeeded
        .into_iter()
        .map(|report| (report, true))
        .chain(batch.failed.into_iter().map(|report| (report, false)))
        .collect();
    let results = api.store.report_many(reports, scope(&headers)).await?;
    Ok(Json(BatchAnswer {
        results: results
            .into_iter()
            .map(|result| batch_result(result.map(|task| (task, None))))
            .collect(),
    }))
}
