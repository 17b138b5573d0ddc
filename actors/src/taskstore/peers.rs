//! The links a node's task store reaches the others' through ([`PeerLink`]).
//!
//! In production the link is [`HttpPeerLink`], the other node's HTTP API through the
//! typed [`ApiClient`]. A simulation that runs several nodes in one process without HTTP
//! servers links their stores with [`InProcessPeers`] instead, which calls the target
//! store directly and answers as the HTTP API would.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use wellspring_protocol::taskstore::api::{ForwardedAnswer, ForwardedSubmit, MAX_LIST_LIMIT};

use super::client::{ApiClient, ClientError, DEFAULT_TIMEOUT};
use super::link::{PeerAnswer, PeerCall, PeerLink};
use super::store::{Scope, TaskStore, WeakTaskStore, group_name};
use super::table::TaskError;

/// The production link: the other node's HTTP API, each call marked forwarded.
pub struct HttpPeerLink {
    /// Shared by the calls to every node (connections are kept per node).
    http: reqwest::Client,
    /// Sent in the forwarded header (the receiving node only checks it is there).
    node_id: String,
    /// Bearer token for the other node's API (the cluster shares one).
    token: Option<String>,
}

impl HttpPeerLink {
    pub fn new(node_id: impl Into<String>, token: Option<String>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: ApiClient::http(DEFAULT_TIMEOUT)?,
            node_id: node_id.into(),
            token,
        })
    }

    fn client(&self, base: &str) -> ApiClient {
        ApiClient::with_http(self.http.clone(), base, self.token.clone())
            .forwarded_by(self.node_id.as_str())
    }
}

/// A failed forward as the calling store sees it: unreachable, busy or unreadable is
/// `Unavailable` (retry); any other refusal keeps the other node's status.
fn as_task_error(base: &str, error: ClientError) -> TaskError {
    match error {
        ClientError::Unreachable { reason, .. } => TaskError::Unavailable(format!(
            "the node serving this shard ({base}) is unreachable: {reason}; retry"
        )),
        ClientError::Refused {
            status: 503,
            message,
            ..
        } => TaskError::Unavailable(message),
        ClientError::Refused {
            status, message, ..
        } => TaskError::Remote { status, message },
        other @ (ClientError::Unreadable { .. } | ClientError::Unwritable { .. }) => {
            TaskError::Unavailable(other.to_string())
        }
    }
}

#[async_trait]
impl PeerLink for HttpPeerLink {
    async fn call(&self, base: &str, call: PeerCall) -> Result<PeerAnswer, TaskError> {
        let client = self.client(base);
        let answer = match call {
            PeerCall::Submit(submit) => client
                .forward_submit(&submit)
                .await
                .map(PeerAnswer::Submitted),
            PeerCall::Claim(claim) => client.claim(&claim).await.map(PeerAnswer::Task),
            PeerCall::ClaimBatch(claim) => client.claim_batch(&claim).await.map(PeerAnswer::Tasks),
            PeerCall::Extend(extend) => client
                .extend(&extend)
                .await
                .map(|task| PeerAnswer::Task(Some(task))),
            PeerCall::Report { report, success } => client
                .report(&report, success)
                .await
                .map(|task| PeerAnswer::Task(Some(task))),
            PeerCall::Get(id) => client
                .get(id)
                .await
                .map(|task| PeerAnswer::Task(Some(task))),
            PeerCall::List {
                group,
                status,
                limit,
            } => client
                .list(&group, status, Some(limit))
                .await
                .map(PeerAnswer::Tasks),
            PeerCall::Stats { group } => client.stats(&group).await.map(PeerAnswer::Stats),
        };
        answer.map_err(|e| as_task_error(base, e))
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
            PeerCall::ClaimBatch(batch) => {
                let (claim, limit) = batch.split();
                store
                    .claim_many(claim, limit, Scope::Local)
                    .await
                    .map(PeerAnswer::Tasks)
            }
            PeerCall::Extend(extend) => store
                .extend(extend, Scope::Local)
                .await
                .map(|task| PeerAnswer::Task(Some(task))),
            PeerCall::Report { report, success } => {
                if let Some(mismatch) = report.mismatch(success) {
                    return Err(bad_request(mismatch));
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
                    .list(group, status, limit.min(MAX_LIST_LIMIT), Scope::Local)
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
