//! A typed client of a node's HTTP API: one method per call, the paths and bodies of
//! [`wellspring_protocol::taskstore::api`], one error type.
//!
//! Both the nodes' peer link ([`super::HttpPeerLink`]: a call forwarded to the node that
//! serves a shard) and the command line (`wellspring tasks`, `wellspring drain`) call a
//! node through it.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;
use wellspring_protocol::redrive::{RedriveAnswer, RedriveRequest};
use wellspring_protocol::rerun::{
    self, BackfillRequest, ReplayAnswer, ReplayProgress, RerunRequest,
};
use wellspring_protocol::status;
use wellspring_protocol::taskstore::api::{
    self, AutoscalingAnswer, BatchAnswer, ClaimBatch, ClaimedBatch, ClusterShards, DrainAnswer,
    ErrorBody, FORWARDED, ForwardedAnswer, ForwardedSubmit, ListQuery, Liveness, NodeShards,
    Readiness, ReportBatch, SubmitBatch, route,
};
use wellspring_protocol::taskstore::{
    Claim, ExtendClaim, GroupSettings, GroupStats, NewTask, Report, TaskStatus, TaskView,
};

/// How long a call may take unless the client is built otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call did not give its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No answer at all: nothing listens there, the connection broke, or it timed out.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The node answered with an error status and this message (`503`: retry).
    #[error("{url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The node answered, but not with what the call expects.
    #[error("unreadable answer from {url}: {reason}")]
    Unreadable { url: String, reason: String },
    /// The call's body could not be written as JSON.
    #[error("cannot write the body of the call to {url}: {reason}")]
    Unwritable { url: String, reason: String },
}

impl ClientError {
    /// Whether the same call may succeed later: the node was unreachable or busy (`503`).
    pub fn can_retry(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Refused { status, .. } => *status == 503,
            ClientError::Unreadable { .. } | ClientError::Unwritable { .. } => false,
        }
    }
}

/// One node's API, at its base URL (`http://HOST:PORT`).
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// Set on a peer link: the calls are marked forwarded by this node.
    forwarded_by: Option<String>,
}

/// The answer to one call: its status and body.
struct Answer {
    url: String,
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        if self.status == StatusCode::NO_CONTENT {
            return Err(ClientError::Unreadable {
                url: self.url.clone(),
                reason: "the node answered nothing (204)".into(),
            });
        }
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Unreadable {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }
}

impl ApiClient {
    /// An HTTP client for node APIs: `timeout` per call, never through a proxy (nodes
    /// call each other inside the cluster).
    pub fn http(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
    }

    /// A client of the node at `base_url`, with [`DEFAULT_TIMEOUT`].
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let http = Self::http(DEFAULT_TIMEOUT).map_err(|e| ClientError::Unreachable {
            url: base_url.to_owned(),
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
        Ok(Self::with_http(http, base_url, token))
    }

    /// A client of the node at `base_url` sharing `http` (its connections and timeout).
    pub fn with_http(http: reqwest::Client, base_url: &str, token: Option<String>) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token,
            forwarded_by: None,
        }
    }

    /// Marks every call as forwarded by node `node_id`: the node called serves it itself.
    pub fn forwarded_by(mut self, node_id: impl Into<String>) -> Self {
        self.forwarded_by = Some(node_id.into());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a call; an error status not in `answers` is [`ClientError::Refused`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        answers: &[StatusCode],
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.header(api::AUTHORIZATION, api::bearer(token));
        }
        if let Some(node) = &self.forwarded_by {
            request = request.header(FORWARDED, node.as_str());
        }
        if let Some(body) = body {
            let json = serde_json::to_vec(body).map_err(|e| ClientError::Unwritable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            request = request
                .header("content-type", "application/json")
                .body(json);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: format!("the answer broke off: {e}"),
            })?;
        if status.is_success() || answers.contains(&status) {
            return Ok(Answer { url, status, body });
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        Err(ClientError::Refused {
            url,
            status: status.as_u16(),
            message,
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::GET, path, None::<&()>, &[]).await?.json()
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, ClientError> {
        self.send(Method::POST, path, Some(body), &[]).await?.json()
    }

    /// Creates a group or updates its settings: the settings and whether it is new.
    pub async fn create_group(
        &self,
        settings: &GroupSettings,
    ) -> Result<(GroupSettings, bool), ClientError> {
        let answer = self
            .send(Method::POST, route::GROUPS, Some(settings), &[])
            .await?;
        Ok((answer.json()?, answer.status == StatusCode::CREATED))
    }

    pub async fn groups(&self) -> Result<Vec<GroupSettings>, ClientError> {
        self.get_json(route::GROUPS).await
    }

    pub async fn group(&self, name: &str) -> Result<GroupSettings, ClientError> {
        self.get_json(&api::group(name)).await
    }

    /// Submits a task: the task and whether it is new (`false`: its idempotency key was
    /// used before, and this is that task).
    pub async fn submit(&self, task: &NewTask) -> Result<(TaskView, bool), ClientError> {
        let answer = self
            .send(Method::POST, route::TASKS, Some(task), &[])
            .await?;
        Ok((answer.json()?, answer.status == StatusCode::CREATED))
    }

    /// A submission with its id chosen by the forwarding node.
    pub async fn forward_submit(
        &self,
        submit: &ForwardedSubmit,
    ) -> Result<ForwardedAnswer, ClientError> {
        self.post_json(route::FORWARDED_SUBMIT, submit).await
    }

    /// Leases the next task of the claim's groups; `None` when none is available.
    pub async fn claim(&self, claim: &Claim) -> Result<Option<TaskView>, ClientError> {
        let answer = self
            .send(Method::POST, route::CLAIM, Some(claim), &[])
            .await?;
        if answer.status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        answer.json().map(Some)
    }

    /// Leases up to `claim.limit` tasks (`POST /tasks/batch/claim`).
    pub async fn claim_batch(&self, claim: &ClaimBatch) -> Result<Vec<TaskView>, ClientError> {
        let answer: ClaimedBatch = self.post_json(route::CLAIM_BATCH, claim).await?;
        Ok(answer.tasks)
    }

    /// Submits many tasks (`POST /tasks/batch/submit`): one result per task, in order.
    pub async fn submit_batch(&self, batch: &SubmitBatch) -> Result<BatchAnswer, ClientError> {
        self.post_json(route::SUBMIT_BATCH, batch).await
    }

    /// Reports many successes and failures (`POST /tasks/batch/report`): one result per
    /// report, the successes first.
    pub async fn report_batch(&self, batch: &ReportBatch) -> Result<BatchAnswer, ClientError> {
        self.post_json(route::REPORT_BATCH, batch).await
    }

    pub async fn extend(&self, extend: &ExtendClaim) -> Result<TaskView, ClientError> {
        self.post_json(route::EXTEND, extend).await
    }

    /// Reports a success (`success`) or a failure.
    pub async fn report(&self, report: &Report, success: bool) -> Result<TaskView, ClientError> {
        self.post_json(api::report(success), report).await
    }

    pub async fn get(&self, id: Uuid) -> Result<TaskView, ClientError> {
        self.get_json(&api::task(&id)).await
    }

    /// A group's tasks, oldest first (`limit`: the API's default when `None`).
    pub async fn list(
        &self,
        group: &str,
        status: Option<TaskStatus>,
        limit: Option<usize>,
    ) -> Result<Vec<TaskView>, ClientError> {
        self.get_json(&api::group_tasks(group, &ListQuery::new(status, limit)))
            .await
    }

    pub async fn stats(&self, group: &str) -> Result<GroupStats, ClientError> {
        self.get_json(&api::group_stats(group)).await
    }

    pub async fn autoscaling(&self, group: &str) -> Result<AutoscalingAnswer, ClientError> {
        self.get_json(&api::group_autoscaling(group)).await
    }

    /// Asks the node to stop as on SIGTERM.
    pub async fn drain(&self) -> Result<DrainAnswer, ClientError> {
        self.send(Method::POST, route::DRAIN, None::<&()>, &[])
            .await?
            .json()
    }

    /// Whether the node is alive (a `503` is an answer: not alive, and why).
    pub async fn live(&self) -> Result<Liveness, ClientError> {
        self.send(
            Method::GET,
            route::LIVE,
            None::<&()>,
            &[StatusCode::SERVICE_UNAVAILABLE],
        )
        .await?
        .json()
    }

    /// Whether the node is ready (a `503` is an answer: not ready, and why).
    pub async fn ready(&self) -> Result<Readiness, ClientError> {
        self.send(
            Method::GET,
            route::READY,
            None::<&()>,
            &[StatusCode::SERVICE_UNAVAILABLE],
        )
        .await?
        .json()
    }

    /// Who owns which partition of every stage: this node, then every other live one.
    pub async fn shards(&self) -> Result<ClusterShards, ClientError> {
        self.get_json(route::SHARDS).await
    }

    /// The partitions of every stage this node owns.
    pub async fn local_shards(&self) -> Result<NodeShards, ClientError> {
        self.get_json(&api::local_shards()).await
    }

    /// `GET /api/dags?scope=local`: the node's own stage metrics.
    pub async fn local_dags(&self) -> Result<status::DagList, ClientError> {
        self.get_json(&status::local_dags_path()).await
    }

    /// Every experiment the node's status view knows, with its progress per level.
    pub async fn status_experiments(&self) -> Result<status::ExperimentList, ClientError> {
        self.get_json(status::route::EXPERIMENTS).await
    }

    /// One experiment: its levels, plates and incomplete reports.
    pub async fn status_experiment(
        &self,
        id: &str,
    ) -> Result<status::ExperimentDetail, ClientError> {
        self.get_json(&status::experiment_path(id)).await
    }

    /// One plate: its geometry and every well's state.
    pub async fn status_plate(
        &self,
        id: &str,
        plate: u32,
    ) -> Result<status::PlateDetail, ClientError> {
        self.get_json(&status::plate_path(id, plate)).await
    }

    /// Dead letters the node's status view keeps that match `query`, oldest first.
    pub async fn dead_letters(
        &self,
        query: &status::DeadLetterQuery,
    ) -> Result<status::DeadLetterPage, ClientError> {
        self.get_json(&status::dead_letters_path(query)).await
    }

    /// Sends dead letters back into their stages (or, with `dry_run`, says what it would).
    pub async fn redrive(&self, request: &RedriveRequest) -> Result<RedriveAnswer, ClientError> {
        self.post_json(status::route::REDRIVE, request).await
    }

    /// Re-runs one DAG node for a subset; `progress` sees each report as it comes.
    pub async fn rerun(
        &self,
        request: &RerunRequest,
        progress: impl FnMut(&ReplayProgress),
    ) -> Result<ReplayAnswer, ClientError> {
        self.replay(rerun::route::RERUNS, request, progress).await
    }

    /// Backfills one DAG node over retained history; `progress` as for [`Self::rerun`].
    pub async fn backfill(
        &self,
        request: &BackfillRequest,
        progress: impl FnMut(&ReplayProgress),
    ) -> Result<ReplayAnswer, ClientError> {
        self.replay(rerun::route::BACKFILLS, request, progress)
            .await
    }

    /// A call answered with progress lines, the last one the answer or the failure (a
    /// failure the node says may pass is `503`, one it will not is `410`).
    async fn replay(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
        mut progress: impl FnMut(&ReplayProgress),
    ) -> Result<ReplayAnswer, ClientError> {
        let url = format!("{}{path}", self.base);
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Unwritable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let mut request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(json);
        if let Some(token) = &self.token {
            request = request.header(api::AUTHORIZATION, api::bearer(token));
        }
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.clone(),
            reason,
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Refused {
                url,
                status: status.as_u16(),
                message,
            });
        }
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| unreachable(format!("the answer broke off: {e}")))?;
            let Some(chunk) = chunk else {
                return Err(unreachable(
                    "the answer ended before the result (did the node stop?)".into(),
                ));
            };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let event: ReplayProgress =
                    serde_json::from_slice(&line).map_err(|e| ClientError::Unreadable {
                        url: url.clone(),
                        reason: e.to_string(),
                    })?;
                match event {
                    ReplayProgress::Done { answer } => return Ok(answer),
                    ReplayProgress::Failed { error, retry } => {
                        return Err(ClientError::Refused {
                            url,
                            status: if retry { 503 } else { 410 },
                            message: error,
                        });
                    }
                    other => progress(&other),
                }
            }
        }
    }
}
