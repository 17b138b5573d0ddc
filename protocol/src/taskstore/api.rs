//! The node's HTTP API as its server, its clients and the other nodes speak it: every
//! path, the headers, the query strings, and the bodies that are not task-store data
//! (those are in [`super::model`]).
//!
//! The server mounts the patterns of [`route`]; a client builds the path of a call with the
//! functions here, which fill those same patterns (path segments percent-encoded: group
//! names may hold spaces). With a token configured, every call but the health checks
//! carries [`AUTHORIZATION`]` = `[`bearer`]`(token)`; a call one node forwards to another
//! carries [`FORWARDED`], so it is served there and never forwarded again.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{Claim, DagTaskOrigin, Millis, NewTask, Report, TaskStatus, TaskView};

/// Route patterns as the server mounts them; `{name}` and `{id}` are path parameters.
/// Calls without parameters use these as their path.
pub mod route {
    /// `POST`: create or update a group; `GET`: every group.
    pub const GROUPS: &str = "/groups";
    pub const GROUP: &str = "/groups/{name}";
    pub const GROUP_STATS: &str = "/groups/{name}/stats";
    /// `?status=&limit=` (see [`super::ListQuery`]).
    pub const GROUP_TASKS: &str = "/groups/{name}/tasks";
    pub const GROUP_AUTOSCALING: &str = "/groups/{name}/autoscaling";
    /// `POST`: submit a task.
    pub const TASKS: &str = "/tasks";
    pub const TASK: &str = "/tasks/{id}";
    pub const CLAIM: &str = "/tasks/claim";
    pub const EXTEND: &str = "/tasks/extend-claim";
    pub const SUCCESS: &str = "/tasks/success";
    pub const FAILURE: &str = "/tasks/failure";
    /// Batch calls beside the reference API: many submissions, claims or reports in one
    /// request, answered once every change they make is durable (see [`super::SubmitBatch`],
    /// [`super::ClaimBatch`], [`super::ReportBatch`]). A server without them answers `404`.
    pub const SUBMIT_BATCH: &str = "/tasks/batch/submit";
    pub const CLAIM_BATCH: &str = "/tasks/batch/claim";
    pub const REPORT_BATCH: &str = "/tasks/batch/report";
    /// A submission forwarded by another node, with its id and DAG origin.
    pub const FORWARDED_SUBMIT: &str = "/internal/tasks";
    /// Open without the token, like [`READY`].
    pub const LIVE: &str = "/health/live";
    pub const READY: &str = "/health/ready";
    pub const METRICS: &str = "/metrics";
    pub const TASK_STORE_SHARDS: &str = "/task-store/shards";
    /// `?scope=local` (see [`super::ShardsQuery`]).
    pub const SHARDS: &str = "/shards";
    pub const DRAIN: &str = "/admin/drain";
}

/// The header marking a call forwarded by another node (its value: that node's id).
pub const FORWARDED: &str = "x-wellspring-forwarded";

/// The header carrying the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The [`AUTHORIZATION`] value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The token an [`AUTHORIZATION`] value presents, if it is a bearer token.
pub fn presented_token(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ")
}

/// Tasks a list returns unless the call says otherwise, and the most it returns.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 10_000;

/// What a path segment or query value keeps as it is (RFC 3986's unreserved characters).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub(crate) fn encoded(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

fn fill(pattern: &str, parameter: &str, value: &str) -> String {
    pattern.replace(parameter, &encoded(value))
}

pub fn group(name: &str) -> String {
    fill(route::GROUP, "{name}", name)
}

pub fn group_stats(name: &str) -> String {
    fill(route::GROUP_STATS, "{name}", name)
}

pub fn group_autoscaling(name: &str) -> String {
    fill(route::GROUP_AUTOSCALING, "{name}", name)
}

/// A group's tasks, with the query's filters.
pub fn group_tasks(name: &str, query: &ListQuery) -> String {
    let mut path = fill(route::GROUP_TASKS, "{name}", name);
    let mut separator = '?';
    if let Some(limit) = query.limit {
        path.push_str(&format!("{separator}limit={limit}"));
        separator = '&';
    }
    if let Some(status) = &query.status {
        path.push_str(&format!("{separator}status={}", encoded(status)));
    }
    path
}

pub fn task(id: &Uuid) -> String {
    fill(route::TASK, "{id}", &id.to_string())
}

/// Where a report goes: [`route::SUCCESS`] or [`route::FAILURE`].
pub fn report(success: bool) -> &'static str {
    if success {
        route::SUCCESS
    } else {
        route::FAILURE
    }
}

/// This node's shards only ([`route::SHARDS`] with `?scope=local`).
pub fn local_shards() -> String {
    format!("{}?scope={LOCAL_SCOPE}", route::SHARDS)
}

/// The query of [`route::GROUP_TASKS`]: a status (`available`, `leased`, `succeeded`,
/// `dead-lettered`) and a limit ([`DEFAULT_LIST_LIMIT`], at most [`MAX_LIST_LIMIT`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub limit: Option<usize>,
}

impl ListQuery {
    pub fn new(status: Option<TaskStatus>, limit: Option<usize>) -> Self {
        Self {
            status: status.map(|s| s.to_string()),
            limit,
        }
    }
}

/// The scope of [`route::SHARDS`] that asks for this node's shards only.
pub const LOCAL_SCOPE: &str = "local";

/// The query of [`route::SHARDS`]: absent (every node) or [`LOCAL_SCOPE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsQuery {
    pub scope: Option<String>,
}

/// The most items one batch call takes (submissions, reports, or tasks claimed).
pub const MAX_BATCH: usize = 1000;

/// [`route::SUBMIT_BATCH`]: tasks to submit, each as `POST /tasks` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    pub tasks: Vec<NewTask>,
}

/// [`route::CLAIM_BATCH`]: a claim of up to `limit` tasks (at most [`MAX_BATCH`]), each
/// leased as `POST /tasks/claim` leases one. Answered by [`ClaimedBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClaimBatch {
    pub groups: Vec<String>,
    pub client_id: String,
    pub duration: Millis,
    pub limit: usize,
}

impl ClaimBatch {
    /// A claim of up to `limit` tasks.
    pub fn new(claim: Claim, limit: usize) -> Self {
        Self {
            groups: claim.groups,
            client_id: claim.client_id,
            duration: claim.duration,
            limit,
        }
    }

    /// The claim each task is leased by, and the limit.
    pub fn split(self) -> (Claim, usize) {
        let claim = Claim {
            groups: self.groups,
            client_id: self.client_id,
            duration: self.duration,
        };
        (claim, self.limit)
    }
}

/// The tasks a [`ClaimBatch`] leased (none: nothing is available).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedBatch {
    pub tasks: Vec<TaskView>,
}

/// [`route::REPORT_BATCH`]: success and failure reports, each as `POST /tasks/success`
/// and `POST /tasks/failure` take them. Answered in that order: the successes, then the
/// failures.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportBatch {
    #[serde(default)]
    pub succeeded: Vec<Report>,
    #[serde(default)]
    pub failed: Vec<Report>,
}

/// What a batch of submissions or reports answers: one result per item, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
}

/// One item's answer: the status its single call would have had, and the task's id and
/// version after the call (or the error). `created` is there for submissions. The whole
/// task is not repeated: the caller sent it (`GET /tasks/{id}` reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every error answer: `{"error": "..."}` with the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A submission forwarded between nodes: the chosen id and the DAG origin travel with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedSubmit {
    pub id: Uuid,
    pub task: NewTask,
    pub dag: Option<DagTaskOrigin>,
}

/// What a node answers a forwarded submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedAnswer {
    pub task: TaskView,
    pub created: bool,
}

/// [`route::GROUP_AUTOSCALING`]: the workers a group wants and what that comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AutoscalingAnswer {
    pub group: String,
    pub desired_workers: u32,
    /// Tasks available or leased.
    pub backlog: u64,
    pub tasks_per_worker: u32,
    pub min_workers: u32,
    pub max_workers: u32,
}

/// A component that failed, in a health answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedComponent {
    pub component: String,
    pub reason: String,
}

/// [`route::LIVE`]: `200` while alive, `503` once a DAG failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    pub live: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedComponent>,
}

/// [`route::READY`]: `200` while ready, `503` while any component is failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedComponent>,
    /// Shards restoring their state now (`dag/stage topic/partition`): a node is ready
    /// only once every shard it owns is restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restoring: Vec<String>,
}

/// [`route::DRAIN`]'s answer (`202`): the node stops as on SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAnswer {
    pub draining: bool,
}

/// A partition of a topic, as the shard listings name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedPartition {
    pub topic: String,
    pub partition: u32,
}

/// The partitions one stage (a DAG node, or the task store's) owns on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageShards {
    pub dag: String,
    pub stage: String,
    pub partitions: Vec<OwnedPartition>,
    /// Of those, the partitions whose shards are restoring their state now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restoring: Vec<OwnedPartition>,
    /// Rebalances that moved this stage's partitions to or from the node.
    #[serde(default)]
    pub rebalances: u64,
    /// Shard restores on this node, and the time they took in all (milliseconds).
    #[serde(default)]
    pub restores: u64,
    #[serde(default)]
    pub restore_ms: u64,
}

/// [`local_shards`]: what one node owns, and where it is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeShards {
    pub node: String,
    pub url: Option<String>,
    pub stages: Vec<StageShards>,
}

/// A node in [`ClusterShards`]: its shards, or why it did not say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PeerShards {
    Answered(NodeShards),
    Unanswered {
        node: String,
        url: String,
        error: String,
    },
}

/// [`route::SHARDS`]: the node asked, then every live node (itself first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterShards {
    pub node: String,
    pub nodes: Vec<PeerShards>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_the_routes_with_encoded_segments() {
        assert_eq!(group("Group A"), "/groups/Group%20A");
        assert_eq!(group_stats("a/b"), "/groups/a%2Fb/stats");
        assert_eq!(group_autoscaling("x.y~z"), "/groups/x.y~z/autoscaling");
        let id = Uuid::from_u128(7);
        assert_eq!(task(&id), format!("/tasks/{id}"));
        assert_eq!(
            group_tasks(
                "Group A",
                &ListQuery::new(Some(TaskStatus::DeadLettered), Some(5))
            ),
            "/groups/Group%20A/tasks?limit=5&status=dead-lettered"
        );
        assert_eq!(
            group_tasks("g", &ListQuery::default()),
            "/groups/g/tasks",
            "no filters, no query"
        );
        assert_eq!(report(true), route::SUCCESS);
        assert_eq!(report(false), route::FAILURE);
        assert_eq!(local_shards(), "/shards?scope=local");
    }

    #[test]
    fn the_bearer_rule_round_trips() {
        assert_eq!(presented_token(&bearer("s3cret")), Some("s3cret"));
        assert_eq!(presented_token("Basic abc"), None);
    }

    #[test]
    fn shard_listings_read_back_an_answer_and_a_silent_node() {
        let cluster = ClusterShards {
            node: "n0".into(),
            nodes: vec![
                PeerShards::Answered(NodeShards {
                    node: "n0".into(),
                    url: None,
                    stages: vec![StageShards {
                        dag: "task-store".into(),
                        stage: "all".into(),
                        partitions: vec![OwnedPartition {
                            topic: "wellspring.tasks".into(),
                            partition: 1,
                        }],
                        restoring: Vec::new(),
                        rebalances: 2,
                        restores: 1,
                        restore_ms: 250,
                    }],
                }),
                PeerShards::Unanswered {
                    node: "n1".into(),
                    url: "http://n1".into(),
                    error: "timed out".into(),
                },
            ],
        };
        let json = serde_json::to_string(&cluster).unwrap();
        assert_eq!(
            serde_json::from_str::<ClusterShards>(&json).unwrap(),
            cluster
        );
        assert!(!json.contains("Answered"), "untagged: {json}");
    }

    #[test]
    fn a_healthy_answer_names_no_failures() {
        let live = Liveness {
            live: true,
            failed: Vec::new(),
        };
        assert_eq!(serde_json::to_string(&live).unwrap(), r#"{"live":true}"#);
    }
}
