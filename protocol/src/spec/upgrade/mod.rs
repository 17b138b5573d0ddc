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
//!
//! This module holds the report ([`UpgradeReport`], [`Change`], [`ChangeClass`]),
//! [`compare`] and the `Comparison` it fills in; each part of a spec is compared in a
//! module of its own:
//!
//! - `spec_fields`: the version rule, the description, the settings and the variables;
//! - `schemas`: the declared schemas, and which schema changes break stored records;
//! - `topics`: the declared topics, their schemas and partitions;
//! - `tasks`: the declared tasks (HTTP and queue);
//! - `nodes`: the graph, node by node: added, removed and changed nodes.

use std::fmt;

use serde::Serialize;

use super::Dag;
// The tests compare schemas directly.
#[cfg(test)]
use crate::schema::{AdditionalFields, Schema, SchemaSet};
#[cfg(test)]
use schemas::breaking_changes;

mod nodes;
mod schemas;
mod spec_fields;
mod tasks;
mod topics;

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
/// What [`compare`] has found so far; the modules of this one each add the changes to one
/// part of the spec.
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
}

#[cfg(test)]
mod tests;
