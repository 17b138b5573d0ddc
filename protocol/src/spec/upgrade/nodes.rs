//! The graph, node by node: a node added (safe, or backfilled when it reads a stream
//! that already ran), removed (refused when it holds state) or changed (its type,
//! partitions, topic, function, schemas, inputs or task).

use std::collections::BTreeSet;

use super::tasks::task_type;
use super::{ChangeClass, Comparison, arrow};
use crate::spec::{Dag, NodeKind, NodeSpec, TaskDecl};

impl Comparison<'_> {
    pub(super) fn graph(&mut self) {
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
            crate::spec::builtins::hierarchy()
                .into_iter()
                .find(|(function, _)| *function == op.function)
                .map_or_else(|| op.function.clone(), |(_, signature)| signature.output),
        ),
        _ => dag.output_schema(name),
    }
}
