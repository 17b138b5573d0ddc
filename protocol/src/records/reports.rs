//! The bookkeeping records: an aggregate that stayed open too long, and a record that
//! could not be processed.

use serde::{Deserialize, Serialize};

use super::fields::experiment_id;
use super::value_format::to_value;
use crate::keys::ExperimentId;
use crate::value::AsJson;
use crate::value::Value;

/// An aggregate that stayed open past its timeout, and what it is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncompleteRecord {
    /// `site`, `well`, `plate` or `experiment`.
    pub level: String,
    /// The aggregate's key (`EXP-1/3/B02/2`).
    pub key: String,
    #[serde(rename = "experiment_id", with = "experiment_id")]
    pub experiment: ExperimentId,
    pub present: u32,
    /// `None` while the experiment's metadata has not arrived.
    pub expected: Option<u32>,
    /// What is missing, in words: `channel 5 of site 3 of well B02 of plate 1`.
    pub missing: Vec<String>,
    pub open_since_ms: i64,
}

/// `incomplete` as it is written: the record and its [`IncompleteRecord::description`].
#[derive(Serialize)]
struct IncompleteFields<'a> {
    #[serde(flatten)]
    record: &'a IncompleteRecord,
    description: String,
}

impl IncompleteRecord {
    pub const SCHEMA: &'static str = "incomplete";

    pub fn description(&self) -> String {
        let what = match self.expected {
            Some(expected) => format!("{} of {} present", self.present, expected),
            None => format!("{} present, metadata not received", self.present),
        };
        format!(
            "{} {} is incomplete ({what}); missing: {}",
            self.level,
            self.key,
            self.missing.join(", ")
        )
    }

    pub fn to_value(&self) -> Value {
        to_value(&IncompleteFields {
            record: self,
            description: self.description(),
        })
    }
}

/// Where a record came from on the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

/// A record Wellspring could not process, with the reason and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub dag: String,
    pub node: String,
    pub reason: String,
    pub origin: Option<Origin>,
    pub key: Option<String>,
    /// The record as far as it could be read: JSON when it parsed, else its text.
    pub record: Value,
    pub attempts: u32,
}

/// `dead_letter` as it is written: the origin's parts as fields of their own, `null`
/// when the record has no origin.
#[derive(Serialize)]
struct DeadLetterFields<'a> {
    dag: &'a str,
    node: &'a str,
    reason: &'a str,
    source_topic: Option<&'a str>,
    source_partition: Option<u32>,
    source_offset: Option<u64>,
    key: Option<&'a str>,
    record: AsJson<'a>,
    attempts: u32,
}

impl DeadLetter {
    pub const SCHEMA: &'static str = "dead_letter";

    pub fn to_value(&self) -> Value {
        let origin = self.origin.as_ref();
        to_value(&DeadLetterFields {
            dag: &self.dag,
            node: &self.node,
            reason: &self.reason,
            source_topic: origin.map(|o| o.topic.as_str()),
            source_partition: origin.map(|o| o.partition),
            source_offset: origin.map(|o| o.offset),
            key: self.key.as_deref(),
            record: AsJson(&self.record),
            attempts: self.attempts,
        })
    }
}
