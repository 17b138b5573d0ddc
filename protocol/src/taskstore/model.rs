//! The task store's data: the bodies of its calls (the reference task-queue API), a
//! group's settings, and the durable state of a task as the log keeps it.
//!
//! Bodies are JSON with kebab-case names and no unknown fields (a typo is a `400`, not a
//! silently ignored setting). Durations follow [`crate::duration`]: a number is
//! milliseconds, as in the reference (`"duration": 30000`), text carries its unit
//! (`"10m"`), and text without one (`"30000"`) is refused.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::envelope::{MessageId, TraceContext};
use crate::records::Origin;
use crate::value::Value;

/// A duration in milliseconds: JSON `30000` or `"30s"` (see [`crate::duration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::duration::deserialize(deserializer).map(Millis::from)
    }
}

impl From<std::time::Duration> for Millis {
    fn from(duration: std::time::Duration) -> Self {
        Millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Retries of a group's tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Attempts in all (claims that ended in failure, expiry or a halt count).
    pub max_attempts: u32,
    pub initial_backoff: Millis,
    pub max_backoff: Millis,
    pub multiplier: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Millis(1_000),
            max_backoff: Millis(60_000),
            multiplier: 2.0,
        }
    }
}

impl RetrySettings {
    /// Wait before attempt `attempts + 1` after `attempts` failed ones.
    pub fn backoff_ms(&self, attempts: u32) -> u64 {
        let factor = self
            .multiplier
            .powi(attempts.saturating_sub(1).min(64) as i32);
        ((self.initial_backoff.0 as f64) * factor).min(self.max_backoff.0 as f64) as u64
    }
}

/// How many workers a group wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AutoscalingSettings {
    /// One worker per this many waiting or running tasks.
    pub tasks_per_worker: u32,
    pub min_workers: u32,
    pub max_workers: u32,
}

impl Default for AutoscalingSettings {
    fn default() -> Self {
        Self {
            tasks_per_worker: 10,
            min_workers: 0,
            max_workers: 10,
        }
    }
}

impl AutoscalingSettings {
    /// Workers wanted for `backlog` tasks waiting or running.
    pub fn desired(&self, backlog: u64) -> u32 {
        let per = u64::from(self.tasks_per_worker.max(1));
        let wanted = backlog.div_ceil(per).min(u64::from(u32::MAX)) as u32;
        wanted.clamp(self.min_workers, self.max_workers.max(self.min_workers))
    }
}

/// `POST /groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GroupSettings {
    pub name: String,
    /// A task running longer than this (from its claim) is presumed hanging: halted and
    /// retried.
    #[serde(default = "default_max_run_time")]
    pub max_run_time: Millis,
    #[serde(default)]
    pub retry: RetrySettings,
    #[serde(default)]
    pub autoscaling: AutoscalingSettings,
    /// A Kubernetes Deployment (in the nodes' namespace) whose replicas follow the
    /// autoscaling signal (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_deployment: Option<String>,
    /// The name of a worker Job template (one of the nodes' `--worker-templates`): the
    /// leader keeps this many Jobs made from it running (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_job: Option<String>,
}

fn default_max_run_time() -> Millis {
    Millis(3_600_000)
}

impl GroupSettings {
    /// A group with default settings.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            max_run_time: default_max_run_time(),
            retry: RetrySettings::default(),
            autoscaling: AutoscalingSettings::default(),
            worker_deployment: None,
            worker_job: None,
        }
    }

    /// What is wrong with these settings, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !valid_group_name(&self.name) {
            out.push(format!(
                "name {:?} must be 1 to 200 characters of letters, digits, spaces, '-', '_', '.' or ':'",
                self.name
            ));
        }
        if self.max_run_time.0 == 0 {
            out.push("max-run-time must be longer than zero".into());
        }
        if self.retry.max_attempts == 0 {
            out.push("retry.max-attempts must be at least 1".into());
        }
        if !(1.0..=100.0).contains(&self.retry.multiplier) {
            out.push("retry.multiplier must be from 1 to 100".into());
        }
        if self.retry.initial_backoff > self.retry.max_backoff {
            out.push("retry.initial-backoff is longer than retry.max-backoff".into());
        }
        if self.autoscaling.tasks_per_worker == 0 {
            out.push("autoscaling.tasks-per-worker must be at least 1".into());
        }
        if self.autoscaling.min_workers > self.autoscaling.max_workers {
            out.push("autoscaling.min-workers is above autoscaling.max-workers".into());
        }
        if self.worker_deployment.is_some() && self.worker_job.is_some() {
            out.push("give worker-deployment or worker-job, not both".into());
        }
        for (field, name) in [
            ("worker-deployment", &self.worker_deployment),
            ("worker-job", &self.worker_job),
        ] {
            if let Some(name) = name.as_deref().filter(|n| !valid_object_name(n)) {
                out.push(format!(
                    "{field} {name:?} must be a Kubernetes name: 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
                ));
            }
        }
        out
    }
}

/// A DNS-1123 label, as Kubernetes names Deployments (and as template files are named).
pub fn valid_object_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

pub fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | ':'))
}

/// `POST /tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NewTask {
    pub cmd: Vec<String>,
    pub group: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Submitting twice with the same key gives the same task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `POST /tasks/claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Claim {
    pub groups: Vec<String>,
    pub client_id: String,
    /// Lease length.
    pub duration: Millis,
}

/// `POST /tasks/extend-claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ExtendClaim {
    pub client_id: String,
    pub duration: Millis,
    pub id: Uuid,
    pub version: u64,
}

/// `POST /tasks/success` and `POST /tasks/failure`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Report {
    pub client_id: String,
    pub id: Uuid,
    pub version: u64,
    /// How long the worker ran (the reference sends it; kept for statistics).
    #[serde(default)]
    pub elapsed_time: Option<u64>,
    /// Success: the task's output (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Failure: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// What is wrong with this report as a success (`success`) or a failure: a success
    /// carries output and no error, a failure an error and no output.
    pub fn mismatch(&self, success: bool) -> Option<&'static str> {
        if success && self.error.is_some() {
            Some("a success report carries output, not error")
        } else if !success && self.output.is_some() {
            Some("a failure report carries error, not output")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskStatus {
    Available,
    Leased,
    Succeeded,
    DeadLettered,
}

impl TaskStatus {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "available" => TaskStatus::Available,
            "leased" => TaskStatus::Leased,
            "succeeded" => TaskStatus::Succeeded,
            "dead-lettered" => TaskStatus::DeadLettered,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::DeadLettered)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskStatus::Available => "available",
            TaskStatus::Leased => "leased",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::DeadLettered => "dead-lettered",
        })
    }
}

/// The lease a client holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub client_id: String,
    pub expires_ms: i64,
    /// When this attempt was claimed (the max-run-time clock).
    pub claimed_ms: i64,
}

/// Where a task submitted by a DAG's queue task reports back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagTaskOrigin {
    pub dag: String,
    pub node: String,
    /// The input record's key and id: the output carries them on.
    pub key: String,
    pub id: MessageId,
    pub trace: Option<TraceContext>,
    pub origin: Option<Origin>,
    /// Where a succeeded task's output goes (the task's output topic) and where a
    /// dead-lettered one goes.
    pub output_topic: String,
    pub dead_letter_topic: String,
    /// The input record, for the dead letter.
    pub input: Value,
}

/// A task's whole state, as kept on the log (one record per change, keyed by id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub id: Uuid,
    pub group: String,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// Starts at 0 and grows by one on every change.
    pub version: u64,
    pub status: TaskStatus,
    /// Claims so far.
    pub attempts: u32,
    /// Submission order within its shard: the group's queue order.
    pub seq: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Not claimable before this (back-off after a failure).
    pub not_before_ms: i64,
    pub lease: Option<Lease>,
    pub last_error: Option<String>,
    pub output: Option<Value>,
    pub elapsed_time: Option<u64>,
    /// The client whose report ended the task, to recognise a repeat of that report.
    pub reported_by: Option<String>,
    pub dag: Option<DagTaskOrigin>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TaskView {
    pub id: Uuid,
    pub group: String,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub version: u64,
    pub status: TaskStatus,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_time: Option<u64>,
    /// The W3C trace context of the DAG message that submitted the task, if traced: a
    /// worker continues the trace from it (e.g. as `TRACEPARENT` for its command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl TaskState {
    pub fn view(&self) -> TaskView {
        TaskView {
            id: self.id,
            group: self.group.clone(),
            cmd: self.cmd.clone(),
            labels: self.labels.clone(),
            version: self.version,
            status: self.status,
            attempts: self.attempts,
            client_id: self.lease.as_ref().map(|l| l.client_id.clone()),
            lease_expires_at: self.lease.as_ref().map(|l| l.expires_ms),
            created_at: self.created_ms,
            updated_at: self.updated_ms,
            not_before: (self.status == TaskStatus::Available
                && self.not_before_ms > self.updated_ms)
                .then_some(self.not_before_ms),
            last_error: self.last_error.clone(),
            output: self.output.as_ref().map(Value::to_json),
            elapsed_time: self.elapsed_time,
            traceparent: self
                .dag
                .as_ref()
                .and_then(|d| d.trace.as_ref())
                .map(|t| t.traceparent.clone()),
        }
    }
}

/// `GET /groups/{name}/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GroupStats {
    pub group: String,
    /// Claimable now or after a back-off.
    pub available: u64,
    pub leased: u64,
    pub succeeded: u64,
    /// Available again after a failed attempt (waiting for a retry).
    pub failed: u64,
    pub dead_lettered: u64,
    /// Age of the oldest task waiting to be claimed, in milliseconds.
    pub oldest_waiting_ms: Option<u64>,
    /// Workers wanted now, from the backlog and the group's autoscaling settings.
    pub desired_workers: u32,
}

impl GroupStats {
    /// Adds a shard's figures.
    pub fn merge(&mut self, other: &GroupStats) {
        self.available += other.available;
        self.leased += other.leased;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
        self.oldest_waiting_ms = match (self.oldest_waiting_ms, other.oldest_waiting_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_bodies_parse_and_typos_do_not() {
        let claim: Claim = serde_json::from_str(
            r#"{"groups": ["Group A"], "client-id": "client-123", "duration": 30000}"#,
        )
        .unwrap();
        assert_eq!(claim.duration, Millis(30_000));
        let claim: Claim =
            serde_json::from_str(r#"{"groups": ["A"], "client-id": "c", "duration": "30s"}"#)
                .unwrap();
        assert_eq!(claim.duration, Millis(30_000));
        assert!(
            serde_json::from_str::<Claim>(r#"{"groups": ["A"], "client_id": "c", "duration": 1}"#)
                .is_err()
        );
        // Text without a unit is refused, not read as seconds.
        let unitless = serde_json::from_str::<Claim>(
            r#"{"groups": ["A"], "client-id": "c", "duration": "30000"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(unitless.contains("has no unit"), "{unitless}");
        let group = serde_json::from_str::<GroupSettings>(r#"{"name": "A", "max-run-time": "60"}"#)
            .unwrap_err()
            .to_string();
        assert!(group.contains("\"60\" has no unit"), "{group}");
        let task: NewTask = serde_json::from_str(
            r#"{"cmd": ["my-program.py", "url-to-data", "settings"], "group": "Group A", "labels": {"my-label": "is-good"}}"#,
        )
        .unwrap();
        assert_eq!(task.labels["my-label"], "is-good");
        let report: Report = serde_json::from_str(r#"{"client-id": "client-123", "elapsed-time": 300232000, "id": "6b1a4b9e-9a8e-4c4e-8f5d-0f6f1c2d3e4f", "version": 43}"#).unwrap();
        assert_eq!(report.version, 43);
        let group: GroupSettings = serde_json::from_str(
            r#"{"name": "Group A", "max-run-time": "10m", "retry": {"max-attempts": 5}}"#,
        )
        .unwrap();
        assert_eq!(group.max_run_time, Millis(600_000));
        assert_eq!(group.retry.max_attempts, 5);
        assert_eq!(group.retry.multiplier, 2.0);
        assert!(group.problems().is_empty());
    }

    #[test]
    fn autoscaling_and_backoff() {
        let scaling = AutoscalingSettings {
            tasks_per_worker: 10,
            min_workers: 1,
            max_workers: 5,
        };
        assert_eq!(scaling.desired(0), 1);
        assert_eq!(scaling.desired(11), 2);
        assert_eq!(scaling.desired(1000), 5);
        let retry = RetrySettings::default();
        assert_eq!(retry.backoff_ms(1), 1_000);
        assert_eq!(retry.backoff_ms(3), 4_000);
        assert_eq!(retry.backoff_ms(30), 60_000);
    }

    #[test]
    fn worker_targets_are_kubernetes_names_and_one_at_most() {
        let mut group = GroupSettings::named("plates");
        group.worker_job = Some("plate-worker".into());
        assert!(group.problems().is_empty());
        group.worker_deployment = Some("plate-workers".into());
        assert_eq!(group.problems().len(), 1, "{:?}", group.problems());
        group.worker_deployment = None;
        for bad in ["Plate", "-x", "x-", "a b", "", &"x".repeat(64)] {
            group.worker_job = Some(bad.to_owned());
            assert_eq!(group.problems().len(), 1, "{bad:?} accepted");
        }
    }
}
