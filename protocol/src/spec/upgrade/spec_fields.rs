//! The spec's own fields: the version rule (a changed spec raises its version), the
//! description, the settings and the variables.

use std::collections::BTreeSet;

use super::{Change, ChangeClass, Comparison, arrow};

impl Comparison<'_> {
    /// The version rule: a spec that changes raises its version, so that nodes of the
    /// two specs are told apart while they run side by side.
    pub(super) fn version(&self) -> Vec<Change> {
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

    pub(super) fn settings(&mut self) {
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

    pub(super) fn variables(&mut self) {
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
}
