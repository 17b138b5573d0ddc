//! Re-runs and backfills: one DAG node's work done again (a re-run, in a new generation)
//! or done for the first time over history (a backfill), for a subset of the hierarchy.
//!
//! A re-run is a **generation**: a whole number above 0 (0 is the first run). Its
//! records carry a [`RerunScope`] in their headers (the generation, the subset, whether
//! it goes on downstream), and every output made from them has the id the first run's
//! would have, moved into that generation ([`crate::MessageId::in_generation`]): a
//! consumer tells a re-run (another id, the generation header) from a replay (the same
//! id), and replays of the re-run repeat the re-run's ids. A backfill makes first-run
//! outputs (generation 0, the ids the node would have given them live).

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::keys::WellId;
use crate::value::Value;

/// Headers of a re-run's records.
pub mod headers {
    /// The generation, as a decimal number (on internal records and published outputs).
    pub const GENERATION: &str = "wellspring-generation";
    /// The re-run's scope, as JSON (internal records only).
    pub const RERUN: &str = "wellspring-rerun";
    /// The backfill a record was sent by (its ledger key), for the record's history.
    pub const BACKFILL: &str = "wellspring-backfill";
    /// The label a queue task of a re-run carries its scope in (JSON): the task store's
    /// states keep their format, and the output is named in the generation.
    pub const TASK_LABEL: &str = "wellspring-rerun";
}

/// Which part of the hierarchy: an experiment, one plate of it, or some wells of a plate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    pub experiment: String,
    // No `skip_serializing_if`: a scope also travels in the binary wire format, whose
    // fields are positional.
    #[serde(default)]
    pub plate: Option<u32>,
    /// Only with a plate; empty: every well of it.
    #[serde(default)]
    pub wells: Vec<WellId>,
}

impl Subset {
    /// Why the subset cannot be meant, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.experiment.is_empty() {
            return Some("name the experiment".into());
        }
        if !self.wells.is_empty() && self.plate.is_none() {
            return Some("wells need a plate: say which plate they are on".into());
        }
        None
    }

    /// Whether a record (its JSON: `experiment_id`, `plate_number`, `well`) is inside.
    pub fn holds_record(&self, record: &Value) -> bool {
        let field = |name: &str| record.get(name);
        if field("experiment_id").and_then(Value::as_str) != Some(self.experiment.as_str()) {
            return false;
        }
        if let Some(plate) = self.plate
            && field("plate_number").and_then(Value::as_i64) != Some(i64::from(plate))
        {
            return false;
        }
        self.wells.is_empty()
            || field("well")
                .and_then(Value::as_str)
                .and_then(|w| WellId::parse(w).ok())
                .is_some_and(|well| self.wells.contains(&well))
    }

    /// Whether the whole of the aggregate keyed `key` (`EXP[/PLATE[/WELL[/...]]]`) is
    /// inside: a plate-wide re-run holds the plate and its wells, not its experiment
    /// (which holds other plates too). A key of no hierarchy is not inside.
    pub fn holds_key(&self, key: &str) -> bool {
        let mut parts = key.split('/');
        if parts.next() != Some(self.experiment.as_str()) {
            return false;
        }
        let plate = parts.next().map(str::parse::<u32>);
        let well = parts.next().map(WellId::parse);
        match self.plate {
            None => true,
            Some(p) => {
                plate.is_some_and(|n| n == Ok(p))
                    && (self.wells.is_empty()
                        || well.is_some_and(|w| w.is_ok_and(|w| self.wells.contains(&w))))
            }
        }
    }

    /// The subset in words: "experiment EXP-1, plate 2, wells B02, C03".
    pub fn describe(&self) -> String {
        let mut text = format!("experiment {}", self.experiment);
        if let Some(plate) = self.plate {
            text.push_str(&format!(", plate {plate}"));
        }
        if !self.wells.is_empty() {
            let wells: Vec<String> = self.wells.iter().map(ToString::to_string).collect();
            text.push_str(&format!(
                ", well{} {}",
                if wells.len() == 1 { "" } else { "s" },
                wells.join(", ")
            ));
        }
        text
    }
}

/// What a re-run's record carries: its generation, its subset, and whether the nodes
/// downstream of the re-run one re-run too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerunScope {
    pub generation: u32,
    pub subset: Subset,
    #[serde(default)]
    pub downstream: bool,
}

impl RerunScope {
    /// The scope an envelope carries, if it is a re-run's (a header that does not parse
    /// is no scope: the record is processed as a first run's).
    pub fn of(envelope: &Envelope) -> Option<RerunScope> {
        let scope: RerunScope = serde_json::from_str(envelope.header(headers::RERUN)?).ok()?;
        (scope.generation > 0).then_some(scope)
    }

    /// Its headers, for an envelope.
    pub fn headers(&self) -> Vec<(String, String)> {
        vec![
            (headers::GENERATION.to_owned(), self.generation.to_string()),
            (
                headers::RERUN.to_owned(),
                serde_json::to_string(self).unwrap_or_default(),
            ),
        ]
    }

    /// The scope a queue task's labels carry, if any.
    pub fn of_labels(labels: &std::collections::BTreeMap<String, String>) -> Option<RerunScope> {
        let scope: RerunScope = serde_json::from_str(labels.get(headers::TASK_LABEL)?).ok()?;
        (scope.generation > 0).then_some(scope)
    }

    /// Sets its headers on `envelope` (replacing a scope it carried).
    pub fn mark(&self, envelope: &mut Envelope) {
        envelope
            .headers
            .retain(|(name, _)| name != headers::GENERATION && name != headers::RERUN);
        envelope.headers.extend(self.headers());
    }
}

/// `POST /api/reruns`: node `node` of DAG `dag` recomputes its outputs for `subset` from
/// its retained inputs, in a new generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    pub dag: String,
    pub node: String,
    pub subset: Subset,
    /// The nodes downstream re-run too (for the aggregates the subset holds whole).
    #[serde(default)]
    pub downstream: bool,
    /// Say what would be done, do nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/backfills`: node `node` of DAG `dag` runs over the retained records of its
/// input stream that it never saw: those of `experiment`, or those appended since `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    pub dag: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Only the experiments still open: those with no experiment record yet (what a
    /// node does by itself when an upgrade adds a node).
    #[serde(default)]
    pub open: bool,
    #[serde(default)]
    pub dry_run: bool,
}

impl BackfillRequest {
    pub fn problem(&self) -> Option<&'static str> {
        match (&self.experiment, self.since, self.open) {
            (None, None, false) => Some(
                "say what to backfill: an experiment, the experiments still open, or a time since",
            ),
            (Some(_), Some(_), _) => Some("backfill an experiment or since a time, not both"),
            _ => None,
        }
    }
}

/// What a re-run or a backfill did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayAnswer {
    pub dag: String,
    pub node: String,
    /// The re-run's generation (0 for a backfill).
    pub generation: u32,
    pub dry_run: bool,
    /// Where the records were read.
    pub source: String,
    /// Records read there, and of those the ones sent (selected, without repeats).
    pub read: u64,
    pub sent: u64,
    /// Where they went: the node's input.
    pub topic: String,
    /// Per experiment, the records sent.
    pub experiments: Vec<(String, u64)>,
}

/// Progress of a long re-run or backfill, as the API streams it (one JSON object a
/// line, the last one holding the answer or the error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum ReplayProgress {
    /// Reading: `read` records so far of `total` (the partitions' ends when it began).
    Reading {
        read: u64,
        total: u64,
    },
    /// Sending: `sent` of `total`.
    Sending {
        sent: u64,
        total: u64,
    },
    Done {
        answer: ReplayAnswer,
    },
    /// It stopped: `retry` when the same call may succeed later (the log did not
    /// answer), not when what it needs is not there.
    Failed {
        error: String,
        retry: bool,
    },
}

/// The paths of the calls (`POST`, a JSON body, answered with [`ReplayProgress`] lines).
pub mod route {
    /// A [`super::RerunRequest`].
    pub const RERUNS: &str = "/api/reruns";
    /// A [`super::BackfillRequest`].
    pub const BACKFILLS: &str = "/api/backfills";
}

/// One entry of the re-run ledger (compacted, keyed `DAG/GENERATION` for re-runs and
/// `DAG/NODE/backfill/...` for backfills): what was sent, and by which node, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRecord {
    pub dag: String,
    pub node: String,
    pub generation: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<Subset>,
    #[serde(default)]
    pub downstream: bool,
    pub sent: u64,
    pub by: String,
    pub at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subset(experiment: &str, plate: Option<u32>, wells: &[&str]) -> Subset {
        Subset {
            experiment: experiment.into(),
            plate,
            wells: wells.iter().map(|w| WellId::parse(w).unwrap()).collect(),
        }
    }

    #[test]
    fn a_subset_holds_the_records_and_whole_aggregates_inside_it() {
        let plate = subset("E", Some(2), &[]);
        let record = |e: &str, p: i64, w: &str| {
            Value::from(&serde_json::json!({"experiment_id": e, "plate_number": p, "well": w}))
        };
        assert!(plate.holds_record(&record("E", 2, "B02")));
        assert!(!plate.holds_record(&record("E", 3, "B02")));
        assert!(!plate.holds_record(&record("F", 2, "B02")));
        assert!(plate.holds_key("E/2") && plate.holds_key("E/2/B02/1"));
        // The experiment holds other plates: a plate's re-run stops below it.
        assert!(!plate.holds_key("E") && !plate.holds_key("E/3") && !plate.holds_key("E/22"));

        let wells = subset("E", Some(2), &["B2", "C03"]);
        assert!(wells.holds_record(&record("E", 2, "B02")));
        assert!(wells.holds_record(&record("E", 2, "C3")));
        assert!(!wells.holds_record(&record("E", 2, "D04")));
        assert!(wells.holds_key("E/2/B02") && wells.holds_key("E/2/C03/4/1"));
        assert!(!wells.holds_key("E/2") && !wells.holds_key("E/2/D04"));

        let experiment = subset("E", None, &[]);
        assert!(experiment.holds_key("E") && experiment.holds_key("E/9/A01"));
        assert!(!experiment.holds_key("EE") && !experiment.holds_key("not/a/key"));
        assert_eq!(wells.describe(), "experiment E, plate 2, wells B02, C03");
        assert!(
            Subset {
                plate: None,
                ..wells
            }
            .problem()
            .is_some()
        );
    }

    #[test]
    fn a_scope_travels_in_headers_and_generation_0_is_none() {
        let mut envelope = Envelope::new(crate::MessageId::derive("d", "n", "k"), "k", Value::Null);
        assert_eq!(RerunScope::of(&envelope), None);
        let scope = RerunScope {
            generation: 3,
            subset: subset("E", Some(1), &["B02"]),
            downstream: true,
        };
        scope.mark(&mut envelope);
        scope.mark(&mut envelope);
        assert_eq!(envelope.headers.len(), 2, "{:?}", envelope.headers);
        assert_eq!(envelope.header(headers::GENERATION), Some("3"));
        assert_eq!(RerunScope::of(&envelope), Some(scope.clone()));
        // A queue task carries it in a label (the task store's states keep their format).
        let mut labels = std::collections::BTreeMap::new();
        assert_eq!(RerunScope::of_labels(&labels), None);
        labels.insert(
            headers::TASK_LABEL.to_owned(),
            serde_json::to_string(&scope).unwrap(),
        );
        assert_eq!(RerunScope::of_labels(&labels), Some(scope.clone()));
        // In the binary wire format too (fields are positional there).
        for scope in [
            scope.clone(),
            RerunScope {
                subset: subset("E", None, &[]),
                ..scope.clone()
            },
        ] {
            let bytes = crate::wire::encode(&scope);
            assert_eq!(crate::wire::decode::<RerunScope>(&bytes).unwrap(), scope);
        }
        RerunScope {
            generation: 0,
            ..scope
        }
        .mark(&mut envelope);
        assert_eq!(RerunScope::of(&envelope), None);
    }
}
