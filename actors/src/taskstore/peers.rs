//! How a node's task store reaches another node's: the [`PeerLink`] seam.
//!
//! A call for a shard another node serves is forwarded to that node, which serves it
//! with [`Scope::Local`] (never forwarding it again). In production the link is
//! [`HttpPeerLink`], the other node's HTTP API. A simulation that runs several nodes in
//! one process without HTTP servers links their stores with [`InProcessPeers`] instead,
//! which calls the target store directly and answers as the HTTP API would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use uuid::Uuid;
use wellspring_protocol::taskstore::{
    Claim, ExtendClaim, GroupStats, Report, TaskStatus, TaskView,
};

use super::store::{
    FORWARDED, ForwardedAnswer, ForwardedSubmit, Scope, TaskStore, WeakTaskStore, group_name,
    path_segment,
};
use super::table::TaskError;

/// A call forwarded to the node serving a shard (or asked of every other node, for
/// claims, lists and statistics).
#[derive(Debug, Clone)]
pub enum PeerCall {
    /// `POST /internal/tasks`: a submission with its chosen id and DAG origin (boxed:
    /// the DAG origin is large).
    Submit(Box<ForwardedSubmit>),
    /// `POST /tasks/claim`.
    Claim(Claim),
    /// `POST /tasks/extend-claim`.
    Extend(ExtendClaim),
    /// `POST /tasks/success` (`success`) or `POST /tasks/failure`.
    Report { report: Report, success: bool },
    /// `GET /tasks/{id}`.
    Get(Uuid),
    /// `GET /groups/{group}/tasks?limit=..&status=..`.
    List {
        group: String,
        status: Option<TaskStatus>,
        limit: usize,
    },
    /// `GET /groups/{group}/stats`.
    Stats { group: String },
}

/// What the other node answered.
#[derive(Debug, Clone)]
pub enum PeerAnswer {
    /// To [`PeerCall::Submit`].
    Submitted(ForwardedAnswer),
    /// To a claim (`None`: nothing to claim there), an extension, a report or a read.
    Task(Option<TaskView>),
    /// To [`PeerCall::List`].
    Tasks(Vec<TaskView>),
    /// To [`PeerCall::Stats`].
    Stats(GroupStats),
}

impl PeerAnswer {
    /// The variant's name, for errors about an answer that does not fit the call.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerAnswer::Submitted(_) => "Submitted",
            PeerAnswer::Task(_) => "Task",
            PeerAnswer::Tasks(_) => "Tasks",
            PeerAnswer::Stats(_) => "Stats",
        }
    }
}

/// How a task store reaches the node at `base_url` (the URL that node announced).
///
/// Errors are as the other node's HTTP API gives them: `Unavailable` for a node that
/// cannot be reached or answers `503` (retry), `Remote` with the status for any other
/// refusal.
#[async_trait]
pub trait PeerLink: Send + Sync + 'static {
    async fn call(&self, base_url: &str, call: PeerCall) -> Result<PeerAnswer, TaskError>;
}

/// The production link: the other node's HTTP API, marked as forwarded.
pub struct HttpPeerLink {
    http: reqwest::Client,
    /// Sent in the forwarded header (the receiving node only checks it is there).
    node_id: String,
    /// Bearer token for the other node's API (the cluster shares one).
    token: Option<String>,
}

impl HttpPeerLink {
    pub fn new(node_id: impl Into<String>, token: Option<String>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()?;
        Ok(Self {
            http,
            node_id: node_id.into(),
            token,
        })
    }

    /// Calls another node's API; `Ok(None)` for `204`.
    async fn send<T: DeserializeOwned>(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Option<T>, TaskError> {
        let url = format!("{base}{path}");
        let mut request = self
            .http
            .request(method, &url)
            .header(FORWARDED, self.node_id.as_str());
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| {
            TaskError::Unavailable(format!(
                "the node serving this shard ({base}) is unreachable: {e}; retry"
            ))
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| TaskError::Unavailable(format!("reading {url}: {e}")))?;
        match status {
            204 => Ok(None),
            200..=299 => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| TaskError::Unavailable(format!("unreadable answer from {url}: {e}"))),
            _ => {
                let message = serde_json::from_slice::<Json>(&bytes)
                    .ok()
                    .and_then(|j| j.get("error").and_then(Json::as_str).map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                Err(match status {
                    503 => TaskError::Unavailable(message),
                    _ => TaskError::Remote { status, message },
                })
            }
        }
    }
}

fn json_body<T: serde::Serialize>(value: &T) -> Result<Json, TaskError> {
    serde_json::to_value(value).map_err(|e| TaskError::Invalid(e.to_string()))
}

#[async_trait]
impl PeerLink for HttpPeerLink {
    async fn call(&self, base: &str, call: PeerCall) -> Result<PeerAnswer, TaskError> {
        use reqwest::Method;
        Ok(match call {
            PeerCall::Submit(submit) => {
                let body = json_body(submit.as_ref())?;
                let answer: Option<ForwardedAnswer> = self
                    .send(base, Method::POST, "/internal/tasks", Some(&body))
                    .await?;
                PeerAnswer::Submitted(
                    answer.ok_or_else(|| {
                        TaskError::Unavailable(format!("{base} answered nothing"))
                    })?,
                )
            }
            PeerCall::Claim(claim) => {
                let body = json_body(&claim)?;
                PeerAnswer::Task(
                    self.send(base, Method::POST, "/tasks/claim", Some(&body))
                        .await?,
                )
            }
            PeerCall::Extend(extend) => {
                let body = json_body(&extend)?;
                PeerAnswer::Task(
                    self.send(base, Method::POST, "/tasks/extend-claim", Some(&body))
                        .await?,
                )
            }
            PeerCall::Report { report, success } => {
                let body = json_body(&report)?;
                let path = if success {
                    "/tasks/success"
                } else {
                    "/tasks/failure"
                };
                PeerAnswer::Task(self.send(base, Method::POST, path, Some(&body)).await?)
            }
            PeerCall::Get(id) => PeerAnswer::Task(
                self.send(base, Method::GET, &format!("/tasks/{id}"), None)
                    .await?,
            ),
            PeerCall::List {
                group,
                status,
                limit,
            } => {
                let status = status.map(|s| format!("&status={s}")).unwrap_or_default();
                let path = format!(
                    "/groups/{}/tasks?limit={limit}{status}",
                    path_segment(&group)
                );
                let found: Option<Vec<TaskView>> =
                    self.send(base, Method::GET, &path, None).await?;
                PeerAnswer::Tasks(found.unwrap_or_default())
            }
            PeerCall::Stats { group } => {
                let path = format!("/groups/{}/stats", path_segment(&group));
                // `204` adds nothing: empty statistics merge as a no-op.
                let part: Option<GroupStats> = self.send(base, Method::GET, &path, None).await?;
                PeerAnswer::Stats(part.unwrap_or_default())
            }
        })
    }
}

/// Task stores of one process, by the URL each announces: a simulation's cluster without
/// HTTP. A call is served by the target store with [`Scope::Local`], as the HTTP API
/// serves a forwarded call, and its errors come back as they would over HTTP (`503` as
/// `Unavailable`, any other refusal as `Remote` with the API's status), so the calling
/// store behaves exactly as in production.
///
/// Stores are held weakly: each store holds this registry as its link, so strong
/// references would form a cycle that keeps every node of a finished simulation alive.
/// A store whose handles are all dropped is unreachable, like an unregistered one.
#[derive(Clone, Default)]
pub struct InProcessPeers {
    stores: Arc<RwLock<BTreeMap<String, WeakTaskStore>>>,
}

impl InProcessPeers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `store` reachable at `url` (the `advertise_url` of its config), replacing
    /// any store registered there.
    pub fn register(&self, url: impl Into<String>, store: &TaskStore) {
        self.stores.write().insert(url.into(), store.downgrade());
    }

    /// Makes `url` unreachable (a node that stopped or is cut off).
    pub fn unregister(&self, url: &str) {
        self.stores.write().remove(url);
    }

    /// The store registered at `url`, if it is still alive.
    pub fn get(&self, url: &str) -> Option<TaskStore> {
        // Upgraded and returned before any await: the lock is never held across one.
        self.stores.read().get(url).and_then(WeakTaskStore::upgrade)
    }
}

/// An error as the calling node sees it after a trip through the HTTP API.
fn as_over_http(error: TaskError) -> TaskError {
    match error {
        TaskError::Unavailable(message) => TaskError::Unavailable(message),
        other => TaskError::Remote {
            status: other.http_status(),
            message: other.to_string(),
        },
    }
}

fn bad_request(message: &str) -> TaskError {
    TaskError::Remote {
        status: 400,
        message: message.to_owned(),
    }
}

#[async_trait]
impl PeerLink for InProcessPeers {
    async fn call(&self, base: &str, call: PeerCall) -> Result<PeerAnswer, TaskError> {
        let Some(store) = self.get(base) else {
            return Err(TaskError::Unavailable(format!(
                "the node serving this shard ({base}) is unreachable: not registered in this process; retry"
            )));
        };
        // The same calls, checks and limits as the API's handlers for a forwarded call.
        let answer = match call {
            PeerCall::Submit(submit) => {
                let ForwardedSubmit { id, task, dag } = *submit;
                store
                    .submit_with_id(id, task, dag, Scope::Local)
                    .await
                    .map(|(task, created)| PeerAnswer::Submitted(ForwardedAnswer { task, created }))
            }
            PeerCall::Claim(claim) => store.claim(claim, Scope::Local).await.map(PeerAnswer::Task),
            PeerCall::Extend(extend) => store
                .extend(extend, Scope::Local)
                .await
                .map(|task| PeerAnswer::Task(Some(task))),
            PeerCall::Report { report, success } => {
                if success && report.error.is_some() {
                    return Err(bad_request("a success report carries output, not error"));
                }
                if !success && report.output.is_some() {
                    return Err(bad_request("a failure report carries error, not output"));
                }
                store
                    .report(report, success, Scope::Local)
                    .await
                    .map(|task| PeerAnswer::Task(Some(task)))
            }
            PeerCall::Get(id) => store
                .get(id, Scope::Local)
                .await
                .map(|task| PeerAnswer::Task(Some(task))),
            PeerCall::List {
                group,
                status,
                limit,
            } => match group_name(&group) {
                Ok(group) => store
                    .list(group, status, limit.min(10_000), Scope::Local)
                    .await
                    .map(PeerAnswer::Tasks),
                Err(e) => Err(e),
            },
            PeerCall::Stats { group } => match group_name(&group) {
                Ok(group) => store
                    .stats(group, Scope::Local)
                    .await
                    .map(PeerAnswer::Stats),
                Err(e) => Err(e),
            },
        };
        answer.map_err(as_over_http)
    }
}
