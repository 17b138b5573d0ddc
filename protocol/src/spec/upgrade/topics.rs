//! The declared topics: added and removed ones, and changes of their schemas and
//! partitions, judged by whether the cluster reads the topic's records back.

use std::collections::BTreeSet;

use super::{Comparison, arrow};
use crate::spec::{Dag, NodeKind};

impl Comparison<'_> {
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

    pub(super) fn topics(&mut self) {
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
}

/// A topic's declared partitions, or what it takes when it declares none.
fn partitions_text(partitions: Option<u32>) -> String {
    partitions.map_or_else(|| "settings.partitions".to_owned(), |p| p.to_string())
}
