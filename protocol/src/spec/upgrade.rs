//! What upgrading a running DAG from one spec to another changes, and whether a cluster
//! can roll from one to the other node by node with nothing lost.
//!
//! [`compare`] is pure: two validated specs in, every change out, each in one of three
//! classes ([`ChangeClass`]) with the reason and, where it is not simply safe, what the
//! engine does about it or what to do instead. `wellspring upgrade-check` prints it and
//! `wellspring run` refuses to start a spec that it refuses against the one the cluster
//! runs. What holds state in the engine decides the class:
//!
//! - a `stream-operation` (a grouping) keeps its open and closed aggregates in its
//!   changelog, sharded by the grouping's key over its partitions;
//! - every sharded node (groupings and tasks) has an input topic of fixed partitions that
//!   holds the records routed to it and not yet committed;
//! - a queue task's submitted tasks live in the task store until they end;
//! - a `topic-table` topic holds the experiments' layouts the groupings wait for;
//! - a `topic-stream` topic holds the images not read yet, checked at the edge against
//!   the topic's schema.
//!
//! During a roll, nodes of both versions run side by side: both read the same topics and
//! state, so a change is safe only if either version's nodes read what the other wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::{Dag, NodeKind, NodeSpec, TaskDecl};
use crate::schema::{AdditionalFields, FieldType, Schema, SchemaSet};

/// How a change can be rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeClass {
    /// Nodes of both versions can run side by side; nothing is lost or redone.
    Safe,
    /// A new node that needs the history of a stream that already ran: it is added, and
    /// what its upstream emitted before it existed has to be replayed to it.
    Backfilled,
    /// The change breaks state or records a running cluster holds; `run` refuses it.
    Refused,
}

impl ChangeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeClass::Safe => "safe",
            ChangeClass::Backfilled => "backfilled",
            ChangeClass::Refused => "refused",
        }
    }
}

impl fmt::Display for ChangeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change between two specs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Where in the spec: `version`, `settings`, `variables.NAME`, `schemas.NAME`,
    /// `topics.NAME`, `tasks.NAME` or `graph.NODE`.
    pub location: String,
    /// What changed, in words (`url: "a" -> "b"`, `added`, `removed`).
    pub change: String,
    pub class: ChangeClass,
    /// Why the change is in its class.
    pub reason: String,
    /// For a refused change, what to do instead; for a backfilled one, what is replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

/// Every change from one version of a DAG to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradeReport {
    pub dag: String,
    pub old_version: u32,
    pub new_version: u32,
    pub changes: Vec<Change>,
}

impl UpgradeReport {
    /// The worst class of any change (`Safe` when nothing changed).
    pub fn verdict(&self) -> ChangeClass {
        self.changes
            .iter()
            .map(|c| c.class)
            .max()
            .unwrap_or(ChangeClass::Safe)
    }

    /// Whether a cluster running the old spec may roll to the new one.
    pub fn allowed(&self) -> bool {
        self.verdict() != ChangeClass::Refused
    }

    pub fn refused(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| c.class == ChangeClass::Refused)
    }

    /// The changes in `class`.
    pub fn of_class(&self, class: ChangeClass) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(move |c| c.class == class)
    }
}

/// Two specs that are not versions of one DAG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "the old spec is DAG {old:?} and the new one DAG {new:?}: an upgrade keeps the DAG's name, since its internal topics and consumer groups are named after it (to run it beside the old one, start it as a DAG of its own)"
    )]
    DifferentDags { old: String, new: String },
}

/// Every change from `old` (what the cluster runs) to `new`, classified.
pub fn compare(old: &Dag, new: &Dag) -> Result<UpgradeReport, UpgradeError> {
    if old.name != new.name {
        return Err(UpgradeError::DifferentDags {
            old: old.name.clone(),
            new: new.name.clone(),
        });
    }
    let mut comparison = Comparison {
        old,
        new,
        changes: Vec::new(),
    };
    comparison.settings();
    comparison.variables();
    comparison.schemas();
    comparison.topics();
    comparison.tasks();
    comparison.graph();
    let mut changes = comparison.version();
    changes.extend(comparison.changes);
    Ok(UpgradeReport {
        dag: new.name.clone(),
        old_version: old.version,
        new_version: new.version,
        changes,
    })
}

struct Comparison<'a> {
    old: &'a Dag,
    new: &'a Dag,
    changes: Vec<Change>,
}

/// `"a" -> "b"`, for values shown by their Debug form.
fn arrow(old: impl fmt::Debug, new: impl fmt::Debug) -> String {
    format!("{old:?} -> {new:?}")
}

impl Comparison<'_> {
    fn push(
        &mut self,
        location: String,
        change: String,
        class: ChangeClass,
        reason: impl Into<String>,
        advice: Option<String>,
    ) {
        self.changes.push(Change {
            location,
            change,
            class,
            reason: reason.into(),
            advice,
        });
    }

    fn safe(&mut self, location: String, change: String, reason: impl Into<String>) {
        self.push(location, change, ChangeClass::Safe, reason, None);
    }

    fn refused(
        &mut self,
        location: String,
        change: String,
        reason: impl Into<String>,
        instead: impl Into<String>,
    ) {
        self.push(
            location,
            change,
            ChangeClass::Refused,
            reason,
            Some(instead.into()),
        );
    }

    /// The version rule: a spec that changes raises its version, so that nodes of the
    /// two specs are told apart while they run side by side.
    fn version(&self) -> Vec<Change> {
        let (old, new) = (self.old.version, self.new.version);
        let location = "version".to_owned();
        if new < old {
            return vec![Change {
                location,
                change: format!("{old} -> {new}"),
                class: ChangeClass::Refused,
                reason: format!(
                    "the new spec has a lower version than the running one ({old}): versions only go up, so that a node can tell the newer spec"
                ),
                advice: Some(format!(
                    "to go back to an earlier spec, give it version {} (upgrade-check then classifies going back as any other change)",
                    old + 1
                )),
            }];
        }
        if new == old {
            if self.changes.is_empty() {
                return Vec::new();
            }
            return vec![Change {
                location,
                change: format!("{old} (unchanged)"),
                class: ChangeClass::Refused,
                reason: format!(
                    "the spec changed ({} change{}) but its version did not: nodes of both specs would run side by side under one version",
                    self.changes.len(),
                    if self.changes.len() == 1 { "" } else { "s" }
                ),
                advice: Some(format!("set version: {} in the new spec", old + 1)),
            }];
        }
        vec![Change {
            location,
            change: format!("{old} -> {new}"),
            class: ChangeClass::Safe,
            reason: if self.changes.is_empty() {
                "a new version; nothing else changed".to_owned()
            } else {
                "a new version".to_owned()
            },
            advice: None,
        }]
    }

    fn settings(&mut self) {
        let (old, new) = (self.old, self.new);
        if old.description != new.description {
            self.safe(
                "description".into(),
                "changed".into(),
                "free text; nothing reads it",
            );
        }
        if old.settings.dead_letter_topic != new.settings.dead_letter_topic {
            self.safe(
                "settings".into(),
                format!(
                    "dead-letter-topic: {}",
                    arrow(
                        &old.settings.dead_letter_topic,
                        &new.settings.dead_letter_topic
                    )
                ),
                format!(
                    "new dead letters go to the new topic; the earlier ones stay on {}",
                    old.settings.dead_letter_topic
                ),
            );
        }
        if old.settings.incomplete_topic != new.settings.incomplete_topic {
            self.safe(
                "settings".into(),
                format!(
                    "incomplete-topic: {}",
                    arrow(
                        &old.settings.incomplete_topic,
                        &new.settings.incomplete_topic
                    )
                ),
                format!(
                    "new incomplete reports go to the new topic; the earlier ones stay on {}",
                    old.settings.incomplete_topic
                ),
            );
        }
        // settings.partitions is reported on each node it reaches (`graph`), since a node
        // with its own partitions does not change with it.
    }

    fn variables(&mut self) {
        let names: BTreeSet<&String> = self
            .old
            .variables
            .keys()
            .chain(self.new.variables.keys())
            .collect();
        for name in names {
            let change = match (self.old.variables.get(name), self.new.variables.get(name)) {
                (Some(a), Some(b)) if a == b => continue,
                (Some(a), Some(b)) => arrow(a, b),
                (None, Some(_)) => "added".into(),
                (Some(_), None) => "removed".into(),
                (None, None) => continue,
            };
            self.safe(
                format!("variables.{name}"),
                change,
                "task URLs, headers and bodies read it per call: calls from now on use the new value",
            );
        }
    }

    /// Schemas whose records the running cluster holds: those of topics read as streams
    /// or tables (records not yet read, layouts), and of groupings' keys and outputs,
    /// with every schema they refer to.
    fn stored_schemas(&self) -> BTreeSet<String> {
        let dag = self.old;
        let mut roots: Vec<String> = Vec::new();
        for node in &dag.nodes {
            match &node.kind {
                NodeKind::TopicStream { topic } | NodeKind::TopicTable { topic } => {
                    if let Some(decl) = dag.topics.get(topic) {
                        roots.push(decl.key_schema.clone());
                        roots.push(decl.value_schema.clone());
                    }
                }
                NodeKind::StreamOperation(op) => {
                    roots.extend(op.key_schema.iter().cloned());
                    roots.extend(op.value_schema.iter().cloned());
                }
                NodeKind::ExternalTask { .. } | NodeKind::Publish { .. } => {}
            }
        }
        let mut stored = BTreeSet::new();
        while let Some(name) = roots.pop() {
            if !stored.insert(name.clone()) {
                continue;
            }
            if let Some(schema) = dag.schemas.get(&name) {
                for field in &schema.fields {
                    roots.extend(field.ty.references().into_iter().map(str::to_owned));
                }
            }
        }
        stored
    }

    fn schemas(&mut self) {
        let stored = self.stored_schemas();
        let declared = |dag: &Dag| -> BTreeMap<String, Schema> {
            dag.schemas
                .iter()
                .filter(|s| !s.builtin)
                .map(|s| (s.name.clone(), s.clone()))
                .collect()
        };
        let (old, new) = (declared(self.old), declared(self.new));
        let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for name in names {
            let location = format!("schemas.{name}");
            match (old.get(name), new.get(name)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => {
                    let breaks = breaking_changes(a, b, &self.new.schemas);
                    let change = describe_schema_change(a, b);
                    if breaks.is_empty() {
                        self.safe(
                            location,
                            change,
                            "every record of the old schema is still valid under the new one",
                        );
                    } else if stored.contains(name.as_str()) {
                        self.refused(
                            location,
                            change,
                            format!(
                                "records the cluster holds under this schema (on a topic it reads, or in a grouping's state) would no longer be valid: {}",
                                breaks.join("; ")
                            ),
                            format!(
                                "keep {name} readable for what is stored: add new fields as optional (type?), keep the old ones and their types; or declare a schema under a new name for new records"
                            ),
                        );
                    } else {
                        self.safe(
                            location,
                            change,
                            format!(
                                "no record the cluster holds is checked against it again, only what is produced from now on ({})",
                                breaks.join("; ")
                            ),
                        );
                    }
                }
                (None, Some(_)) => self.safe(location, "added".into(), "nothing reads it yet"),
                (Some(_), None) => self.safe(
                    location,
                    "removed".into(),
                    "no node of the new spec uses it (the spec would not validate otherwise)",
                ),
                (None, None) => {}
            }
        }
    }

    /// Topics the old spec reads as tables: they hold the layouts groupings wait for.
    fn table_topics(dag: &Dag) -> BTreeSet<&str> {
        dag.nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::TopicTable { topic } => Some(topic.as_str()),
                _ => None,
            })
            .collect()
    }

    fn stream_topics(dag: &Dag) -> BTreeSet<&str> {
        dag.nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::TopicStream { topic } => Some(topic.as_str()),
                _ => None,
            })
            .collect()
    }

    fn topics(&mut self) {
        let tables = Self::table_topics(self.old);
        let streams = Self::stream_topics(self.old);
        let names: BTreeSet<&String> = self
            .old
            .topics
            .keys()
            .chain(self.new.topics.keys())
            .collect();
        for name in names {
            let location = format!("topics.{name}");
            match (self.old.topics.get(name), self.new.topics.get(name)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => {
                    let held = tables.contains(name.as_str()) || streams.contains(name.as_str());
                    for (field, old_schema, new_schema) in [
                        ("key-schema", &a.key_schema, &b.key_schema),
                        ("value-schema", &a.value_schema, &b.value_schema),
                    ] {
                        if old_schema == new_schema {
                            continue;
                        }
                        let change = format!("{field}: {}", arrow(old_schema, new_schema));
                        let breaks = self.breaking_between(old_schema, new_schema);
                        if held && !breaks.is_empty() {
                            self.refused(
                                location.clone(),
                                change,
                                format!(
                                    "the topic's records are read again under the new schema (records not yet read, or the whole table at every start) and would fail it: {}",
                                    breaks.join("; ")
                                ),
                                format!(
                                    "keep {field} {old_schema} on {name} (a compatible change of the schema itself is safe), or publish the new records to a new topic read by a new node"
                                ),
                            );
                        } else {
                            self.safe(
                                location.clone(),
                                change,
                                if held {
                                    "every record of the old schema is valid under the new one"
                                } else {
                                    "Wellspring writes the topic and reads nothing back from it"
                                },
                            );
                        }
                    }
                    if a.partitions != b.partitions {
                        self.safe(
                            location,
                            format!(
                                "partitions: {} -> {}",
                                partitions_text(a.partitions),
                                partitions_text(b.partitions)
                            ),
                            "only used when the topic is created; a topic that exists keeps the partitions it has",
                        );
                    }
                }
                (None, Some(_)) => self.safe(
                    location,
                    "added".into(),
                    "created when a node first needs it",
                ),
                (Some(_), None) if tables.contains(name.as_str()) => self.refused(
                    location,
                    "removed".into(),
                    "the topic is read as a table: it holds the experiments' layouts that the open aggregates of the groupings wait for",
                    format!(
                        "keep {name} and the table node reading it until no experiment is open; a new table topic needs the open experiments' layouts copied to it first"
                    ),
                ),
                (Some(_), None) => self.safe(
                    location,
                    "removed".into(),
                    "the topic stays on the log as it is; the new spec neither reads nor writes it",
                ),
                (None, None) => {}
            }
        }
    }

    /// Why records valid under the schema `old` (a name) may not be under `new`.
    fn breaking_between(&self, old: &str, new: &str) -> Vec<String> {
        match (self.old.schemas.get(old), self.new.schemas.get(new)) {
            (Some(a), Some(b)) => breaking_changes(a, b, &self.new.schemas),
            _ if old == new => Vec::new(),
            _ if new == "json" => Vec::new(),
            _ => vec![format!("records of {old} are not {new}")],
        }
    }

    fn tasks(&mut self) {
        let names: BTreeSet<&String> = self.old.tasks.keys().chain(self.new.tasks.keys()).collect();
        for name in names {
            let location = format!("tasks.{name}");
            match (self.old.tasks.get(name), self.new.tasks.get(name)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(TaskDecl::Http(a)), Some(TaskDecl::Http(b))) => {
                    for change in http_task_changes(a, b) {
                        self.safe(
                            location.clone(),
                            change,
                            "read per call: calls from now on use it; records already called keep their outputs (and their ids)",
                        );
                    }
                }
                (Some(TaskDecl::Queue(a)), Some(TaskDecl::Queue(b))) => {
                    if a.group != b.group {
                        self.safe(
                            location.clone(),
                            format!("group: {}", arrow(&a.group, &b.group)),
                            format!(
                                "new tasks go to {}; tasks already submitted finish in {} and their outputs still come back (keep its workers until its queue is empty)",
                                b.group, a.group
                            ),
                        );
                    }
                    let mut rest = a.clone();
                    rest.group = b.group.clone();
                    if &rest != b {
                        self.safe(
                            location,
                            "command, labels, schemas or group settings changed".into(),
                            "read per submission: tasks submitted from now on use them",
                        );
                    }
                }
                // A change of type is judged where a node uses the task (`graph`).
                (Some(_), Some(b)) => self.safe(
                    location,
                    format!("type: now {}", task_type(b)),
                    "judged at the nodes that use it",
                ),
                (None, Some(_)) => self.safe(location, "added".into(), "nothing calls it yet"),
                (Some(_), None) => self.safe(
                    location,
                    "removed".into(),
                    "no node of the new spec calls it (the spec would not validate otherwise)",
                ),
                (None, None) => {}
            }
        }
    }

    fn graph(&mut self) {
        let names: BTreeSet<&str> = self
            .old
            .nodes
            .iter()
            .chain(&self.new.nodes)
            .map(|n| n.name.as_str())
            .collect();
        for name in names {
            match (self.old.node(name), self.new.node(name)) {
                (Some(a), Some(b)) => self.node_changed(a, b),
                (None, Some(b)) => self.node_added(b),
                (Some(a), None) => self.node_removed(a),
                (None, None) => {}
            }
        }
    }

    fn node_added(&mut self, node: &NodeSpec) {
        let location = format!("graph.{}", node.name);
        let change = format!("added ({})", node.kind.type_name());
        if matches!(
            node.kind,
            NodeKind::TopicStream { .. } | NodeKind::TopicTable { .. }
        ) {
            self.safe(
                location,
                change,
                "reads its topic from the first record the topic keeps",
            );
            return;
        }
        // A stream that already ran has emitted records the new node never saw; a table is
        // read whole at start, and a new upstream starts together with it.
        let ran_before: Vec<&str> = node
            .kind
            .upstream()
            .into_iter()
            .filter(|up| {
                self.old.node(up).is_some()
                    && !matches!(
                        self.new.node(up).map(|n| &n.kind),
                        Some(NodeKind::TopicTable { .. })
                    )
            })
            .collect();
        if ran_before.is_empty() {
            self.safe(
                location,
                change,
                "fed only by nodes new in this version: it sees everything they emit",
            );
            return;
        }
        let upstream = ran_before.join(", ");
        self.push(
            location,
            change,
            ChangeClass::Backfilled,
            format!(
                "it reads {upstream}, which ran before it existed: what {upstream} emitted before, and emits on nodes of the older version during the roll, is not routed to it, so without a backfill the experiments still open would miss its outputs for those records"
            ),
            Some(format!(
                "done as the roll goes: each node of the new version, as it starts, sends it what {upstream} emitted for the experiments still open, from the retained topics, so the last to start covers what the last old node emitted (its output ids are deterministic: records it also gets live are repeats by id); for experiments already finished, `wellspring backfill --dag {} --node {} --experiment E`",
                self.new.name, node.name
            )),
        );
    }

    fn node_removed(&mut self, node: &NodeSpec) {
        let location = format!("graph.{}", node.name);
        let change = format!("removed ({})", node.kind.type_name());
        match &node.kind {
            NodeKind::StreamOperation(_) => self.refused(
                location,
                change,
                "a grouping holds state: its open aggregates (experiments still imaging) and the closed ones it drops repeats of, in its changelog; removed, the open ones would never complete",
                format!(
                    "keep {} until no experiment it has open remains (it may publish nowhere), then remove it and start the new version with --force-upgrade",
                    node.name
                ),
            ),
            NodeKind::ExternalTask { task, .. }
                if matches!(self.old.tasks.get(task), Some(TaskDecl::Queue(_))) =>
            {
                self.refused(
                    location,
                    change,
                    format!(
                        "a queue task's submitted tasks live in the task store (group of task {task}); their outputs would come back with no node to relay them"
                    ),
                    format!(
                        "keep {} until its group's queue is empty (wellspring tasks stats), then remove it with --force-upgrade",
                        node.name
                    ),
                )
            }
            NodeKind::ExternalTask { .. } => self.safe(
                location,
                change,
                "holds no state; records on its input topic not yet called are left uncalled, as a removed step intends",
            ),
            NodeKind::TopicStream { .. }
            | NodeKind::TopicTable { .. }
            | NodeKind::Publish { .. } => self.safe(
                location,
                change,
                "holds no state of its own; its topic stays on the log as it is",
            ),
        }
    }

    fn node_changed(&mut self, a: &NodeSpec, b: &NodeSpec) {
        let location = format!("graph.{}", a.name);
        let sharded = |kind: &NodeKind| {
            matches!(
                kind,
                NodeKind::StreamOperation(_) | NodeKind::ExternalTask { .. }
            )
        };
        if a.kind.type_name() != b.kind.type_name() {
            let change = format!("type: {}", arrow(a.kind.type_name(), b.kind.type_name()));
            if sharded(&a.kind) || sharded(&b.kind) {
                self.refused(
                    location,
                    change,
                    format!(
                        "the node's input topic (and a grouping's changelog) is named after the node and holds records written for a {}",
                        a.kind.type_name()
                    ),
                    format!(
                        "add the new node under another name and keep {} until its work is done",
                        a.name
                    ),
                );
            } else {
                self.safe(location, change, "neither holds state");
            }
            return;
        }
        if let (Some(old_shards), Some(new_shards)) =
            (self.old.shards(&a.name), self.new.shards(&b.name))
            && old_shards != new_shards
        {
            let state = if matches!(a.kind, NodeKind::StreamOperation(_)) {
                "its changelog and input topic have"
            } else {
                "its input topic has"
            };
            self.refused(
                location.clone(),
                format!("partitions: {old_shards} -> {new_shards}"),
                format!(
                    "{state} {old_shards} partitions, and records and state are placed on them by key: with {new_shards} shards a key would be looked for on the wrong partition (a topic's partitions cannot change once it exists)"
                ),
                format!(
                    "keep partitions: {old_shards} for {} (set it on the node if settings.partitions changes); for more shards, add a node under a new name with the new count",
                    a.name
                ),
            );
        }
        match (&a.kind, &b.kind) {
            (NodeKind::TopicStream { topic: x }, NodeKind::TopicStream { topic: y }) if x != y => {
                self.safe(
                    location,
                    format!("topic-name: {}", arrow(x, y)),
                    format!(
                        "reads {y} from its first kept record; records of {x} not yet read are left there"
                    ),
                )
            }
            (NodeKind::TopicTable { topic: x }, NodeKind::TopicTable { topic: y }) if x != y => {
                self.refused(
                    location,
                    format!("topic-name: {}", arrow(x, y)),
                    format!(
                        "the table holds the layouts the groupings' open aggregates wait for, and {y} need not have them"
                    ),
                    format!(
                        "keep reading {x}, or copy the latest layout of every open experiment to {y} first and then start with --force-upgrade"
                    ),
                )
            }
            (NodeKind::StreamOperation(x), NodeKind::StreamOperation(y)) => {
                if x.function != y.function {
                    self.refused(
                        location.clone(),
                        format!("function: {}", arrow(&x.function, &y.function)),
                        "the grouping's level or key changes: its changelog holds aggregates keyed at the old level, which the new function would misread or never complete",
                        format!(
                            "add a grouping with the new function as a new node (it is backfilled) and remove {} once no experiment is open in it",
                            a.name
                        ),
                    );
                }
                if x.key_schema != y.key_schema {
                    self.refused(
                        location.clone(),
                        format!("key-schema: {}", arrow(&x.key_schema, &y.key_schema)),
                        "the grouping's state and input topic are keyed by it",
                        "keep the key; a different key is a new grouping under a new name",
                    );
                }
                if x.value_schema != y.value_schema {
                    let breaks = match (&x.value_schema, &y.value_schema) {
                        (Some(p), Some(q)) => self.breaking_between(p, q),
                        _ => Vec::new(),
                    };
                    let change = format!("value-schema: {}", arrow(&x.value_schema, &y.value_schema));
                    if breaks.is_empty() {
                        self.safe(
                            location.clone(),
                            change,
                            "every aggregate of the old schema is valid under the new one",
                        );
                    } else {
                        self.refused(
                            location.clone(),
                            change,
                            format!(
                                "aggregates in its state were built under the old schema: {}",
                                breaks.join("; ")
                            ),
                            "make the change compatible (new fields optional), or emit the new shape from a new node",
                        );
                    }
                }
                self.inputs_changed(&location, &a.name, &x.inputs, &y.inputs);
                if x.incomplete_timeout != y.incomplete_timeout {
                    self.safe(
                        location,
                        format!(
                            "incomplete-timeout: {}",
                            arrow(x.incomplete_timeout, y.incomplete_timeout)
                        ),
                        "checked against each open aggregate's age on every tick: open aggregates take the new timeout",
                    );
                }
            }
            (
                NodeKind::ExternalTask {
                    stream: s1,
                    task: t1,
                },
                NodeKind::ExternalTask {
                    stream: s2,
                    task: t2,
                },
            ) => {
                if s1 != s2 {
                    self.inputs_changed(
                        &location,
                        &a.name,
                        std::slice::from_ref(s1),
                        std::slice::from_ref(s2),
                    );
                }
                let (old_task, new_task) = (self.old.tasks.get(t1), self.new.tasks.get(t2));
                if matches!(old_task, Some(TaskDecl::Queue(_)))
                    && !matches!(new_task, Some(TaskDecl::Queue(_)))
                {
                    self.refused(
                        location,
                        format!(
                            "task: {t1} (queue) -> {t2} ({})",
                            new_task.map_or("unknown", task_type)
                        ),
                        "the tasks it submitted live in the task store, and their outputs come back through a relay that only a queue task runs",
                        format!(
                            "keep {} a queue task until its group's queue is empty, or add the new task as a new node",
                            a.name
                        ),
                    );
                } else if t1 != t2 {
                    self.safe(
                        location,
                        format!("task-name: {}", arrow(t1, t2)),
                        "calls from now on go to the new task; records already called keep their outputs",
                    );
                }
            }
            (
                NodeKind::Publish {
                    stream: s1,
                    topic: t1,
                },
                NodeKind::Publish {
                    stream: s2,
                    topic: t2,
                },
            ) => {
                if s1 != s2 {
                    self.safe(
                        location.clone(),
                        format!("stream: {}", arrow(s1, s2)),
                        "the topic gets the new stream's records from now on",
                    );
                }
                if t1 != t2 {
                    self.safe(
                        location,
                        format!("topic-name: {}", arrow(t1, t2)),
                        format!("records from now on go to {t2}; {t1} keeps what was published"),
                    );
                }
            }
            _ => {}
        }
    }

    /// A sharded node reads other streams: what waits on its input topic came from the
    /// old ones, and a grouping's state was built from them.
    fn inputs_changed(&mut self, location: &str, node: &str, old: &[String], new: &[String]) {
        if old == new {
            return;
        }
        let schemas = |dag: &Dag, inputs: &[String]| -> Vec<(bool, Option<String>)> {
            inputs
                .iter()
                .map(|i| {
                    let table = matches!(
                        dag.node(i).map(|n| &n.kind),
                        Some(NodeKind::TopicTable { .. })
                    );
                    (table, emitted_schema(dag, i))
                })
                .collect()
        };
        let tables = |dag: &Dag, inputs: &[String]| -> BTreeSet<String> {
            inputs
                .iter()
                .filter_map(|i| match dag.node(i).map(|n| &n.kind) {
                    Some(NodeKind::TopicTable { topic }) => Some(topic.clone()),
                    _ => None,
                })
                .collect()
        };
        let change = format!("inputs: {}", arrow(old, new));
        let same_schemas = {
            let mut a = schemas(self.old, old);
            let mut b = schemas(self.new, new);
            a.sort();
            b.sort();
            a == b
        };
        if tables(self.old, old) != tables(self.new, new) {
            self.refused(
                location.to_owned(),
                change,
                "it reads its layouts from another table topic, which need not hold the open experiments' layouts",
                format!(
                    "keep {node}'s table input; a new table topic needs the open experiments' layouts copied to it first"
                ),
            );
        } else if same_schemas {
            self.safe(
                location.to_owned(),
                change,
                "the new inputs emit records of the same schemas: what waits on its input topic, and its state, read the same",
            );
        } else {
            self.refused(
                location.to_owned(),
                change,
                "the new inputs emit records of other schemas than those waiting on its input topic and in its state",
                format!(
                    "add a node under a new name on the new inputs (it is backfilled), and keep {node} until its work is done"
                ),
            );
        }
    }
}

/// The schema of what node `name` emits; a grouping that declares no value-schema emits
/// its function's output (known here for the built-in ones, else by the function's name).
fn emitted_schema(dag: &Dag, name: &str) -> Option<String> {
    match dag.node(name).map(|n| &n.kind) {
        Some(NodeKind::StreamOperation(op)) if op.value_schema.is_none() => Some(
            super::builtins::hierarchy()
                .into_iter()
                .find(|(function, _)| *function == op.function)
                .map_or_else(|| op.function.clone(), |(_, signature)| signature.output),
        ),
        _ => dag.output_schema(name),
    }
}

/// A topic's declared partitions, or what it takes when it declares none.
fn partitions_text(partitions: Option<u32>) -> String {
    partitions.map_or_else(|| "settings.partitions".to_owned(), |p| p.to_string())
}

fn task_type(task: &TaskDecl) -> &'static str {
    match task {
        TaskDecl::Http(_) => "http",
        TaskDecl::Queue(_) => "queue",
    }
}

/// The fields of an HTTP task that differ, each in words.
fn http_task_changes(a: &super::HttpTask, b: &super::HttpTask) -> Vec<String> {
    let mut out = Vec::new();
    if a.method != b.method {
        out.push(format!(
            "method: {} -> {}",
            a.method.as_str(),
            b.method.as_str()
        ));
    }
    if a.url != b.url {
        out.push(format!("url: {}", arrow(a.url.source(), b.url.source())));
    }
    if a.max_inflight != b.max_inflight {
        out.push(format!(
            "max-inflight: {} -> {}",
            a.max_inflight, b.max_inflight
        ));
    }
    if a.retries != b.retries {
        out.push(format!("retries: {} -> {}", a.retries, b.retries));
    }
    if a.timeout != b.timeout {
        out.push(format!("timeout: {}", arrow(a.timeout, b.timeout)));
    }
    if a.backoff != b.backoff {
        out.push("backoff changed".into());
    }
    for (field, changed) in [
        ("headers", a.headers != b.headers),
        ("body", a.body != b.body),
        ("output", a.output != b.output),
        ("input-schema", a.input_schema != b.input_schema),
        ("output-schema", a.output_schema != b.output_schema),
        ("success", a.success != b.success),
        (
            "permanent-statuses",
            a.permanent_statuses != b.permanent_statuses,
        ),
    ] {
        if changed {
            out.push(format!("{field} changed"));
        }
    }
    out
}

/// Why a record valid under `old` may not be valid under `new` (empty: every record of
/// `old` is valid under `new`); `schemas` is the new spec's, where `new` refers to others.
fn breaking_changes(old: &Schema, new: &Schema, schemas: &SchemaSet) -> Vec<String> {
    let mut out = Vec::new();
    for field in &new.fields {
        match old.field(&field.name) {
            None if !matches!(field.ty, FieldType::Optional(_)) => out.push(format!(
                "field {} is new and required (records without it fail; make it {}?)",
                field.name, field.ty
            )),
            None => {}
            Some(was) if !schemas.type_fits_in(&was.ty, &field.ty) => out.push(format!(
                "field {} changes type {} -> {}",
                field.name, was.ty, field.ty
            )),
            Some(_) => {}
        }
    }
    if new.additional_fields == AdditionalFields::Reject {
        let dropped: Vec<&str> = old
            .fields
            .iter()
            .filter(|f| new.field(&f.name).is_none())
            .map(|f| f.name.as_str())
            .collect();
        if old.additional_fields == AdditionalFields::Ignore {
            out.push(
                "additional-fields: ignore -> reject (records with undeclared fields fail)"
                    .to_owned(),
            );
        } else if !dropped.is_empty() {
            out.push(format!(
                "fields {} are removed while additional fields are rejected",
                dropped.join(", ")
            ));
        }
    }
    out
}

fn describe_schema_change(old: &Schema, new: &Schema) -> String {
    let mut parts = Vec::new();
    for field in &new.fields {
        match old.field(&field.name) {
            None => parts.push(format!("+{}: {}", field.name, field.ty)),
            Some(was) if was.ty != field.ty => {
                parts.push(format!("{}: {} -> {}", field.name, was.ty, field.ty))
            }
            Some(_) => {}
        }
    }
    for field in &old.fields {
        if new.field(&field.name).is_none() {
            parts.push(format!("-{}", field.name));
        }
    }
    if old.additional_fields != new.additional_fields {
        parts.push(format!(
            "additional-fields: {:?} -> {:?}",
            old.additional_fields, new.additional_fields
        ));
    }
    if parts.is_empty() {
        "changed".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests;
