//! Dead-letter redrive: which dead letters an operator means (ids or a filter), what a
//! redrive answers, the headers a redriven record carries, and the ledger entry that
//! makes each dead letter go back once.
//!
//! A dead letter's id is where it sits on its dead-letter topic (topic, partition,
//! offset), as a deterministic UUID: stable across nodes and restarts, and different for
//! a record that failed again after a redrive (a new dead letter, a new id).

use serde::{Deserialize, Serialize};

use crate::envelope::MessageId;
use crate::records::Origin;
use crate::status::DeadLetterEntry;

/// Headers of a redriven record (besides `wellspring-id`).
pub mod headers {
    /// The id of the dead letter the record was redriven from.
    pub const REDRIVE_OF: &str = "wellspring-redrive-of";
}

/// The id of the dead letter at `offset` of `partition` of `topic`.
pub fn dead_letter_id(topic: &str, partition: u32, offset: u64) -> String {
    MessageId::of_origin(&Origin {
        topic: topic.to_owned(),
        partition,
        offset,
    })
    .to_string()
}

/// Which dead letters: every field given must match (none given: all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate: Option<u32>,
    /// The DAG node that dead-lettered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Substring of the reason (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds since the Unix epoch: only dead letters appended at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

impl DeadLetterFilter {
    pub fn is_empty(&self) -> bool {
        self == &DeadLetterFilter::default()
    }

    /// Whether `entry` is one of the dead letters meant.
    pub fn matches(&self, entry: &DeadLetterEntry) -> bool {
        self.experiment
            .as_ref()
            .is_none_or(|e| entry.experiment.as_ref() == Some(e))
            && self.plate.is_none_or(|p| entry.plate == Some(p))
            && self.node.as_ref().is_none_or(|n| entry.node == *n)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| entry.reason.to_lowercase().contains(&r.to_lowercase()))
            && self.since.is_none_or(|s| entry.timestamp_ms >= s)
    }
}

/// `POST /api/dead-letters/redrive`: the dead letters to send back into the stage where
/// each failed. `ids` and `filter` together mean the dead letters of those ids that
/// also match the filter; one of them is needed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    #[serde(default)]
    pub filter: DeadLetterFilter,
    /// Say what would be done, do nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Redrive dead letters that were redriven before, too.
    #[serde(default)]
    pub again: bool,
}

impl RedriveRequest {
    /// Why the request cannot be served, if it cannot: it must name what it means.
    pub fn problem(&self) -> Option<&'static str> {
        (self.ids.is_empty() && self.filter.is_empty()).then_some(
            "say which dead letters: ids, or a filter (experiment, plate, node, reason, since)",
        )
    }
}

/// What happened, or would, to one dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedriveItem {
    pub id: String,
    pub dag: String,
    pub node: String,
    pub key: Option<String>,
    pub experiment: Option<String>,
    pub plate: Option<u32>,
    pub well: Option<String>,
    pub site: Option<u16>,
    /// Where it went (or would go): the stage's input topic and partition.
    pub topic: Option<String>,
    pub partition: Option<u32>,
    /// How often it was redriven before this request.
    pub redriven_before: u32,
    /// Why it was skipped (skipped items only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The answer of a redrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedriveAnswer {
    pub dry_run: bool,
    /// Sent back into their stages (with `dry_run`: would be).
    pub redriven: Vec<RedriveItem>,
    /// Left alone, each with why.
    pub skipped: Vec<RedriveItem>,
    /// Ids asked for that no dead-letter topic of the node's DAGs holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_ids: Vec<String>,
}

/// Where a redrive stands in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    /// Written before the record is sent: a redrive that crashed here is finished by
    /// looking for the record past `from_offset`, not by sending it again.
    Sending,
    /// The record is on the stage's input.
    Sent,
}

/// One entry of the redrive ledger (a compacted topic keyed by dead-letter id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub dead_letter: String,
    pub state: LedgerState,
    pub topic: String,
    pub partition: u32,
    /// The partition's end before the record was sent: the record is at or after it.
    pub from_offset: u64,
    /// Where the record landed, once sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// How many redrives of this dead letter were sent, this one included.
    pub count: u32,
    pub at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, experiment: Option<&str>, plate: Option<u32>, at: i64) -> DeadLetterEntry {
        DeadLetterEntry {
            id: dead_letter_id("d.dead-letters", 0, at as u64),
            dag: "d".into(),
            node: node.into(),
            reason: "POST http://svc answered 503 Service Unavailable".into(),
            key: None,
            experiment: experiment.map(str::to_owned),
            plate,
            well: None,
            site: None,
            attempts: 2,
            source_topic: None,
            source_partition: None,
            source_offset: None,
            trace_id: None,
            timestamp_ms: at,
        }
    }

    #[test]
    fn a_filter_matches_only_what_every_given_field_says() {
        let letter = entry("features", Some("EXP-1"), Some(2), 1000);
        assert!(DeadLetterFilter::default().matches(&letter));
        let by = |f: DeadLetterFilter| f.matches(&letter);
        assert!(by(DeadLetterFilter {
            experiment: Some("EXP-1".into()),
            plate: Some(2),
            node: Some("features".into()),
            reason: Some("answered 503".into()),
            since: Some(1000),
        }));
        assert!(!by(DeadLetterFilter {
            experiment: Some("EXP-2".into()),
            ..Default::default()
        }));
        assert!(!by(DeadLetterFilter {
            plate: Some(1),
            ..Default::default()
        }));
        assert!(!by(DeadLetterFilter {
            node: Some("feature".into()),
            ..Default::default()
        }));
        // The reason is a substring, whatever its case.
        assert!(by(DeadLetterFilter {
            reason: Some("SERVICE UNAVAILABLE".into()),
            ..Default::default()
        }));
        assert!(!by(DeadLetterFilter {
            reason: Some("timed out".into()),
            ..Default::default()
        }));
        assert!(!by(DeadLetterFilter {
            since: Some(1001),
            ..Default::default()
        }));
        // A dead letter whose key names no experiment matches no experiment filter.
        let anonymous = entry("images", None, None, 5);
        assert!(
            !DeadLetterFilter {
                experiment: Some("EXP-1".into()),
                ..Default::default()
            }
            .matches(&anonymous)
        );
    }

    #[test]
    fn ids_are_where_the_dead_letter_sits_and_a_request_must_say_which() {
        // The ledger is keyed by these: they must not change between versions.
        assert_eq!(
            dead_letter_id("microscopy-reference.dead-letters", 0, 0),
            "c1866063-73bd-5db7-b64c-7206788b38fd"
        );
        let id = dead_letter_id("d.dead-letters", 0, 7);
        assert_eq!(id, dead_letter_id("d.dead-letters", 0, 7));
        assert_ne!(id, dead_letter_id("d.dead-letters", 0, 8));
        assert_ne!(id, dead_letter_id("e.dead-letters", 0, 7));
        assert!(RedriveRequest::default().problem().is_some());
        let by_id = RedriveRequest {
            ids: vec![id],
            ..Default::default()
        };
        assert_eq!(by_id.problem(), None);
        let by_filter: RedriveRequest =
            serde_json::from_str(r#"{"filter": {"node": "features"}, "dry_run": true}"#).unwrap();
        assert_eq!(by_filter.problem(), None);
        assert!(by_filter.dry_run && !by_filter.again);
        // Strict bodies: a misspelt field is an error, not a redrive of everything.
        assert!(serde_json::from_str::<RedriveRequest>(r#"{"filter": {"nod": "x"}}"#).is_err());
        assert!(serde_json::from_str::<RedriveRequest>(r#"{"dryrun": true}"#).is_err());
    }
}
