//! How a run ends: whether the cluster has settled once the faults stop (every partition
//! owned by a live node, every input committed, every output and task there), and the
//! invariants checked over the log, the services and the task store at the end.

use std::collections::{BTreeMap, BTreeSet};

use wellspring_actors::taskstore::Scope;
use wellspring_log::{EmbeddedLog, Log, LogRecord, TopicPartition};
use wellspring_protocol::spec::TaskDecl;
use wellspring_protocol::taskstore::{TaskStatus, TaskView};
use wellspring_protocol::{Dag, ExperimentLayout};

use crate::cluster::Cluster;
use crate::lab::Lab;
use crate::run::Violation;
use crate::workers::GROUP;
use wellspring_lab::services::Service;
use wellspring_lab::verify::{LevelReport, Tracker, reference_expectations};

/// Where the cluster stands on the way to settling.
#[derive(Default)]
pub(crate) struct Convergence {
    /// Each group's topics, remembered from when it had members.
    group_topics: BTreeMap<String, BTreeSet<String>>,
    /// The task store's tasks at the last check.
    pub(crate) tasks: Option<Vec<TaskView>>,
}

#[derive(Default)]
pub(crate) struct ConvergenceState {
    unowned: Vec<String>,
    backlog: Vec<String>,
    outputs_missing: Vec<String>,
    tasks_open: Vec<String>,
    task_store: Option<String>,
}

impl ConvergenceState {
    pub(crate) fn settled(&self) -> bool {
        self.unowned.is_empty()
            && self.backlog.is_empty()
            && self.outputs_missing.is_empty()
            && self.tasks_open.is_empty()
            && self.task_store.is_none()
    }

    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        let list = |what: &str, items: &[String]| {
            format!(
                "{} {what} ({}{})",
                items.len(),
                items.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if items.len() > 5 { ", ..." } else { "" }
            )
        };
        if !self.unowned.is_empty() {
            parts.push(list("partitions not owned by a live node", &self.unowned));
        }
        if !self.backlog.is_empty() {
            parts.push(list("partitions with uncommitted input", &self.backlog));
        }
        if !self.outputs_missing.is_empty() {
            parts.push(list("outputs missing", &self.outputs_missing));
        }
        if !self.tasks_open.is_empty() {
            parts.push(list("tasks not finished", &self.tasks_open));
        }
        if let Some(e) = &self.task_store {
            parts.push(format!("the task store cannot list its tasks: {e}"));
        }
        parts.join("; ")
    }

    pub(crate) fn subjects(&self) -> Vec<String> {
        self.outputs_missing
            .iter()
            .chain(&self.tasks_open)
            .chain(&self.unowned)
            .take(3)
            .map(|s| s.split_whitespace().last().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Convergence {
    pub(crate) async fn check(
        &mut self,
        cluster: &Cluster,
        log: &EmbeddedLog,
        lab: &Lab,
    ) -> ConvergenceState {
        let mut state = ConvergenceState::default();
        let live: BTreeSet<&str> = cluster.up.keys().map(String::as_str).collect();
        for group in log.groups() {
            let Some(view) = log.group_view(&group) else {
                continue;
            };
            let topics = self.group_topics.entry(group.clone()).or_default();
            topics.extend(view.topics.iter().cloned());
            let mut owners: BTreeMap<TopicPartition, &str> = BTreeMap::new();
            for (client, instance, held) in &view.members {
                let node = instance.as_deref().unwrap_or(client.as_str());
                if !live.contains(node) {
                    state.unowned.push(format!("{group}: dead member {node}"));
                }
                for tp in held {
                    owners.insert(tp.clone(), node);
                }
            }
            for topic in topics.iter() {
                let partitions = Log::partitions(log, topic).await.unwrap_or(0);
                for p in 0..partitions {
                    let tp = TopicPartition::new(topic.as_str(), p);
                    if !owners.get(&tp).is_some_and(|n| live.contains(n)) {
                        state.unowned.push(format!("{group} {tp}"));
                    }
                    let end = Log::end_offset(log, &tp).await.unwrap_or(0);
                    let committed = view.committed.get(&tp).copied().unwrap_or(0);
                    if committed < end {
                        state
                            .backlog
                            .push(format!("{group} {tp} {} behind", end - committed));
                    }
                }
            }
        }
        for layout in &lab.layouts {
            let tracker = track(log, layout, cluster.dag());
            let levels = tracker.report();
            state.outputs_missing.extend(
                unfinished(&tracker, &levels)
                    .into_iter()
                    .map(|(level, key)| format!("{} {key}", level.label)),
            );
        }
        let store = cluster.up.values().next().map(|i| i.store.clone());
        match store {
            None => state.task_store = Some("no node is up".into()),
            Some(store) => match store.list(GROUP, None, 100_000, Scope::Cluster).await {
                Ok(tasks) => {
                    state.tasks_open = tasks
                        .iter()
                        .filter(|t| {
                            !matches!(t.status, TaskStatus::Succeeded | TaskStatus::DeadLettered)
                        })
                        .map(|t| format!("{} {}", t.status, t.id))
                        .collect();
                    self.tasks = Some(tasks);
                }
                // The group exists once the first plate is submitted.
                Err(wellspring_actors::taskstore::TaskError::UnknownGroup(_))
                    if lab.layouts.is_empty() => {}
                Err(e) => state.task_store = Some(e.to_string()),
            },
        }
        state
    }
}

/// Every output of one experiment, read from the log.
pub(crate) fn track(log: &EmbeddedLog, layout: &ExperimentLayout, dag: &Dag) -> Tracker {
    let mut tracker = Tracker::new(
        reference_expectations(layout),
        &dag.settings.dead_letter_topic,
        &dag.settings.incomplete_topic,
    )
    .scoped(&layout.experiment.to_string());
    let now = tokio::time::Instant::now();
    for topic in tracker.topics() {
        for record in read_topic(log, &topic) {
            tracker.observe(&record, now);
        }
    }
    tracker
}

pub(crate) fn read_topic(log: &EmbeddedLog, topic: &str) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for p in 0.. {
        match log.read(&TopicPartition::new(topic, p), 0, usize::MAX) {
            Ok(records) => out.extend(records),
            Err(_) => break,
        }
    }
    out
}

/// What an experiment still lacks: aggregates not out, and task outputs neither out nor
/// dead-lettered (what settling waits for, and what the checks report).
pub(crate) fn unfinished<'a>(
    tracker: &Tracker,
    levels: &'a [LevelReport],
) -> Vec<(&'a LevelReport, &'a String)> {
    let dead: BTreeSet<&str> = tracker
        .dead_letters
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    levels
        .iter()
        .flat_map(|level| level.missing.iter().map(move |k| (level, k)))
        .filter(|(level, k)| level.aggregate || !dead.contains(k.as_str()))
        .collect()
}

/// Every aggregate exactly once; every task output there or dead-lettered with a reason;
/// every malformed input dead-lettered.
pub(crate) fn check_outputs(log: &EmbeddedLog, lab: &Lab, dag: &Dag) -> Vec<Violation> {
    let mut violations = Vec::new();
    let dead_topic = dag.settings.dead_letter_topic.as_str();
    for layout in &lab.layouts {
        let tracker = track(log, layout, dag);
        let levels = tracker.report();
        for (level, key) in unfinished(&tracker, &levels) {
            violations.push(if level.aggregate {
                violation(
                    "every aggregate is emitted exactly once",
                    format!("{} {key} never came out", level.label),
                    key,
                )
            } else {
                violation(
                    "no input is lost: every task ends in an output or a dead letter",
                    format!("{} {key}: neither output nor dead letter", level.label),
                    key,
                )
            });
        }
        for level in &levels {
            for key in &level.duplicated {
                violations.push(violation(
                    "every aggregate is emitted exactly once",
                    format!("{} {key} came out more than once", level.label),
                    key,
                ));
            }
            for key in &level.unexpected {
                violations.push(violation(
                    "outputs match the layout",
                    format!("unexpected {} {key}", level.label),
                    key,
                ));
            }
        }
    }
    let mut bad_offsets = BTreeSet::new();
    for record in read_topic(log, dead_topic) {
        let json = record
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .unwrap_or_default();
        let key = json["key"].as_str().unwrap_or_default().to_owned();
        if json["reason"].as_str().unwrap_or_default().is_empty() {
            violations.push(violation(
                "every dead letter says why",
                format!("dead letter at offset {} has no reason", record.offset),
                &key,
            ));
        }
        if json["node"] == "images-channel" {
            bad_offsets.insert((
                json["source_partition"].as_i64(),
                json["source_offset"].as_i64(),
            ));
        }
    }
    if bad_offsets.len() != lab.bad_records() {
        violations.push(violation(
            "no input is lost: malformed input is dead-lettered",
            format!(
                "{} malformed records published, {} dead-lettered at the source",
                lab.bad_records(),
                bad_offsets.len()
            ),
            "images-channel",
        ));
    }
    violations
}

pub(crate) fn violation(invariant: &'static str, detail: String, subject: &str) -> Violation {
    Violation {
        invariant,
        detail,
        subjects: vec![subject.to_owned()],
    }
}

/// The simulation DAG's HTTP task behind each service.
const TASK_OF_SERVICE: [(Service, &str); 3] = [
    (Service::ImageMetrics, "image-metrics"),
    (Service::SiteFeatures, "extract-site-features"),
    (Service::WellThumbnails, "well-thumbnails"),
];

/// No node ever had more requests in flight to a service than the task allows.
pub(crate) fn check_inflight(cluster: &Cluster, dag: &Dag) -> Vec<Violation> {
    let limits: BTreeMap<Service, u32> = TASK_OF_SERVICE
        .iter()
        .filter_map(|(service, task)| match dag.tasks.get(*task) {
            Some(TaskDecl::Http(http)) => Some((*service, http.max_inflight)),
            _ => None,
        })
        .collect();
    let mut violations = Vec::new();
    for incarnation in cluster.incarnations() {
        for (service, max) in incarnation.transport.max_inflight() {
            let limit = limits.get(&service).copied().unwrap_or(0);
            if max > limit {
                violations.push(Violation {
                    invariant: "in-flight requests never exceed a task's limit",
                    detail: format!(
                        "{}#{} had {max} requests to {} in flight (limit {limit})",
                        incarnation.id,
                        incarnation.number,
                        service.name()
                    ),
                    subjects: vec![incarnation.id.clone()],
                });
            }
        }
    }
    violations
}

/// Every task finished, and every dead-lettered one says why.
pub(crate) fn check_tasks(tasks: &[TaskView]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for task in tasks {
        match task.status {
            TaskStatus::Succeeded => {}
            TaskStatus::DeadLettered
                if task.last_error.as_deref().is_some_and(|e| !e.is_empty()) => {}
            TaskStatus::DeadLettered => violations.push(violation(
                "every task ends: succeeded, or dead-lettered with a reason",
                format!("task {} was dead-lettered without a reason", task.id),
                &task.id.to_string(),
            )),
            status => violations.push(violation(
                "every task ends: succeeded, or dead-lettered with a reason",
                format!("task {} is still {status}", task.id),
                &task.id.to_string(),
            )),
        }
    }
    violations
}
