//! Checking a run's outputs: every expected aggregate exactly once (by deterministic id),
//! every task output present or dead-lettered.
//!
//! A [`Tracker`] watches the output topics while a run goes on (for progress and
//! latencies) and reports at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::time::Instant;
use wellspring_log::{ConsumerConfig, Log, LogError, LogRecord, NoListener, TopicPartition};
use wellspring_protocol::envelope::headers;
use wellspring_protocol::spec::NodeKind;
use wellspring_protocol::{Dag, ExperimentLayout, Value};

pub use crate::expectations::{
    DagExpectations, Expected, dag_expectations, reference_expectations, without_images,
};

/// What came out on one topic. (Fx-hashed: the simulation observes every output, and
/// SipHash on these keys was a tenth of the observing.)
#[derive(Debug, Default)]
struct Tally {
    ids: FxHashMap<String, u32>,
    keys: FxHashMap<String, KeySeen>,
}

/// One key's records on a topic.
#[derive(Debug)]
struct KeySeen {
    count: u32,
    first_seen: Instant,
    /// The key's distinct ids: more than one means the key was computed twice, not
    /// repeated (a repeat carries the id of the record it repeats). Almost always one.
    ids: Vec<String>,
}

/// Adds one to `name`'s count, allocating its name only the first time.
fn count_in(counts: &mut FxHashMap<String, u32>, name: &str) {
    match counts.get_mut(name) {
        Some(count) => *count += 1,
        None => {
            counts.insert(name.to_owned(), 1);
        }
    }
}

/// The verdict on one output topic.
#[derive(Debug, Clone)]
pub struct LevelReport {
    pub label: String,
    pub topic: String,
    pub aggregate: bool,
    pub expected: usize,
    /// Expected keys seen.
    pub present: usize,
    /// Records whose id had been seen before.
    pub repeats: usize,
    /// Aggregates: keys that came out more than once (with the same id or not).
    pub duplicated: Vec<String>,
    /// Aggregates: keys that came out under more than one id (computed twice, which
    /// consumers dropping repeated ids would not catch).
    pub conflicting: Vec<String>,
    pub missing: Vec<String>,
    /// Missing keys for which a dead letter explains why.
    pub dead_lettered: usize,
    pub unexpected: Vec<String>,
}

impl LevelReport {
    /// An aggregate must be there exactly once; a task output there or dead-lettered.
    pub fn ok(&self) -> bool {
        if self.aggregate {
            self.missing.is_empty()
                && self.repeats == 0
                && self.duplicated.is_empty()
                && self.unexpected.is_empty()
        } else {
            self.missing.len() == self.dead_lettered && self.unexpected.is_empty()
        }
    }

    /// As [`LevelReport::ok`], but an aggregate may repeat under its id: exactly once for
    /// consumers that drop repeated ids (the guarantee without transactions).
    pub fn ok_by_id(&self) -> bool {
        if self.aggregate {
            self.missing.is_empty() && self.conflicting.is_empty() && self.unexpected.is_empty()
        } else {
            self.ok()
        }
    }
}

/// Watches output topics.
pub struct Tracker {
    expected: Vec<Expected>,
    tallies: BTreeMap<String, Tally>,
    dead_letter_topic: String,
    incomplete_topic: String,
    /// Keys of dead letters, and their reasons.
    pub dead_letters: Vec<(String, String)>,
    pub incomplete: Vec<String>,
    /// Only outputs of this experiment count (a shared topic carries others too).
    scope: Option<String>,
}

impl Tracker {
    pub fn new(expected: Vec<Expected>, dead_letter_topic: &str, incomplete_topic: &str) -> Self {
        Self {
            tallies: expected
                .iter()
                .map(|e| (e.topic.clone(), Tally::default()))
                .collect(),
            expected,
            dead_letter_topic: dead_letter_topic.to_owned(),
            incomplete_topic: incomplete_topic.to_owned(),
            dead_letters: Vec::new(),
            incomplete: Vec::new(),
            scope: None,
        }
    }

    /// Counts only outputs of `experiment`: keys equal to it or under `experiment/`.
    pub fn scoped(mut self, experiment: &str) -> Self {
        self.scope = Some(experiment.to_owned());
        self
    }

    fn in_scope(&self, key: &str) -> bool {
        self.scope.as_deref().is_none_or(|scope| {
            key.strip_prefix(scope)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// Every topic to watch.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.expected.iter().map(|e| e.topic.clone()).collect();
        topics.push(self.dead_letter_topic.clone());
        topics.push(self.incomplete_topic.clone());
        topics
    }

    pub fn observe(&mut self, record: &LogRecord, now: Instant) {
        let key = record
            .key
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if *record.topic == *self.dead_letter_topic {
            let reason = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
                .unwrap_or_default();
            self.dead_letters.push((key.into_owned(), reason));
            return;
        }
        if *record.topic == *self.incomplete_topic {
            let description = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .and_then(|v| {
                    v.get("description")
                        .and_then(|r| r.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| key.into_owned());
            self.incomplete.push(description);
            return;
        }
        if !self.in_scope(&key) {
            return;
        }
        let Some(tally) = self.tallies.get_mut(&*record.topic) else {
            return;
        };
        let id = record
            .header(headers::ID)
            .map(|v| String::from_utf8_lossy(v))
            .unwrap_or_default();
        count_in(&mut tally.ids, &id);
        match tally.keys.get_mut(&*key) {
            Some(seen) => {
                seen.count += 1;
                if !seen.ids.iter().any(|known| *known == *id) {
                    seen.ids.push(id.into_owned());
                }
            }
            None => {
                tally.keys.insert(
                    key.into_owned(),
                    KeySeen {
                        count: 1,
                        first_seen: now,
                        ids: vec![id.into_owned()],
                    },
                );
            }
        }
    }

    /// Distinct expected keys seen on `topic`.
    pub fn present(&self, topic: &str) -> usize {
        self.tallies.get(topic).map_or(0, |t| t.keys.len())
    }

    pub fn first_seen(&self, topic: &str, key: &str) -> Option<Instant> {
        Some(self.tallies.get(topic)?.keys.get(key)?.first_seen)
    }

    pub fn expected(&self) -> &[Expected] {
        &self.expected
    }

    /// True when every aggregate is in and every task output is in or dead-lettered.
    pub fn complete(&self) -> bool {
        self.report()
            .iter()
            .all(|r| r.missing.len() <= r.dead_lettered)
    }

    pub fn report(&self) -> Vec<LevelReport> {
        let dead_keys: BTreeSet<&str> = self.dead_letters.iter().map(|(k, _)| k.as_str()).collect();
        self.expected
            .iter()
            .map(|e| {
                let tally = self.tallies.get(&e.topic);
                let seen = |k: &str| tally.is_some_and(|t| t.keys.contains_key(k));
                let missing: Vec<String> = e.keys.iter().filter(|k| !seen(k)).cloned().collect();
                let dead_lettered = missing
                    .iter()
                    .filter(|k| dead_keys.contains(k.as_str()))
                    .count();
                let unexpected = tally
                    .map(|t| {
                        t.keys
                            .keys()
                            .filter(|k| !e.keys.contains(*k))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                LevelReport {
                    label: e.label.clone(),
                    topic: e.topic.clone(),
                    aggregate: e.aggregate,
                    expected: e.keys.len(),
                    present: e.keys.len() - missing.len(),
                    repeats: tally.map_or(0, |t| t.ids.values().map(|n| (*n - 1) as usize).sum()),
                    duplicated: match (e.aggregate, tally) {
                        (true, Some(t)) => {
                            let mut keys: Vec<String> = t
                                .keys
                                .iter()
                                .filter(|(_, seen)| seen.count > 1)
                                .map(|(k, _)| k.clone())
                                .collect();
                            keys.sort();
                            keys
                        }
                        _ => Vec::new(),
                    },
                    conflicting: match (e.aggregate, tally) {
                        (true, Some(t)) => {
                            let mut keys: Vec<String> = t
                                .keys
                                .iter()
                                .filter(|(_, seen)| seen.ids.len() > 1)
                                .map(|(k, _)| k.clone())
                                .collect();
                            keys.sort();
                            keys
                        }
                        _ => Vec::new(),
                    },
                    missing,
                    dead_lettered,
                    unexpected,
                }
            })
            .collect()
    }
}

/// What [`verify_experiment`] checks.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub experiment: String,
    /// The table of experiment layouts (what is expected).
    pub metadata_topic: String,
    pub dead_letter_topic: String,
    pub incomplete_topic: String,
    /// Keep reading while outputs are missing, up to this long (zero: report what is there).
    pub wait: Duration,
    /// The DAG that ran: what it publishes is what is expected.
    pub dag: Dag,
}

impl VerifyOptions {
    /// Checks the outputs `dag` publishes.
    pub fn for_dag(dag: &Dag, experiment: &str) -> Self {
        let metadata_topic = dag
            .nodes
            .iter()
            .find_map(|n| match &n.kind {
                NodeKind::TopicTable { topic } => Some(topic.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "experiment_metadata".into());
        Self {
            experiment: experiment.to_owned(),
            metadata_topic,
            dead_letter_topic: dag.settings.dead_letter_topic.clone(),
            incomplete_topic: dag.settings.incomplete_topic.clone(),
            wait: Duration::ZERO,
            dag: dag.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading the log: {0}")]
    Log(#[from] LogError),
    #[error(
        "no layout of experiment {experiment} on {topic}: nothing to check against (was it published? `wellspring generate` publishes one)"
    )]
    NoLayout { experiment: String, topic: String },
    #[error(
        "DAG {dag} publishes nothing that can be checked against a layout ({why}): verify checks the topics that groupings, and tasks called on them, publish"
    )]
    NothingToCheck { dag: String, why: String },
}

/// The verdict on one experiment's outputs.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub experiment: String,
    pub levels: Vec<LevelReport>,
    /// Dead letters of this experiment's records: key and reason.
    pub dead_letters: Vec<(String, String)>,
    pub records_read: u64,
    /// Published topics whose content the layout cannot tell, with why.
    pub unchecked: Vec<(String, String)>,
}

impl VerifyReport {
    /// Every aggregate exactly once; every task output present or dead-lettered.
    pub fn ok(&self) -> bool {
        self.levels.iter().all(LevelReport::ok)
    }

    /// Every aggregate exactly once by id (repeats of one id allowed), every task output
    /// present or dead-lettered.
    pub fn ok_by_id(&self) -> bool {
        self.levels.iter().all(LevelReport::ok_by_id)
    }

    /// The table, then every missing and every duplicated output by key.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "experiment {}: {} records read\n\n  {:<16} {:>9} {:>9} {:>8} {:>10} {:>12}",
            self.experiment,
            self.records_read,
            "output",
            "expected",
            "present",
            "missing",
            "duplicated",
            "dead-letter"
        );
        for level in &self.levels {
            let _ = writeln!(
                out,
                "  {:<16} {:>9} {:>9} {:>8} {:>10} {:>12}  {}",
                level.label,
                level.expected,
                level.present,
                level.missing.len(),
                if level.aggregate {
                    level.duplicated.len().to_string()
                } else {
                    "-".into()
                },
                level.dead_lettered,
                if level.ok() { "ok" } else { "FAILED" }
            );
        }
        for level in &self.levels {
            for key in &level.missing {
                let _ = writeln!(out, "  missing {} {key}", level.label);
            }
            for key in &level.duplicated {
                let _ = writeln!(out, "  duplicated {} {key}", level.label);
            }
            if level.aggregate && level.repeats > level.duplicated.len() {
                let _ = writeln!(
                    out,
                    "  {} records of {} repeat an id already seen",
                    level.repeats, level.label
                );
            }
            for key in &level.conflicting {
                let _ = writeln!(out, "  computed twice (two ids) {} {key}", level.label);
            }
            for key in &level.unexpected {
                let _ = writeln!(out, "  unexpected {} {key}", level.label);
            }
        }
        for (key, reason) in &self.dead_letters {
            let _ = writeln!(out, "  dead letter {key}: {reason}");
        }
        for (topic, why) in &self.unchecked {
            let _ = writeln!(out, "  not checked: {topic} ({why})");
        }
        let _ = writeln!(
            out,
            "\n  {}",
            if self.ok() {
                "every aggregate exactly once, every task output present or dead-lettered: OK"
            } else {
                "RESULT: FAILED"
            }
        );
        out
    }
}

/// Reads `topics` (every partition, from the start) until each is read to its end;
/// `on_record` sees every record. Topics that do not exist are empty.
async fn read_to_end(
    log: &dyn Log,
    reader: &str,
    topics: &[String],
    mut on_record: impl FnMut(&LogRecord),
    mut until: impl FnMut() -> bool,
    wait: Duration,
) -> Result<(), LogError> {
    let mut assignment = Vec::new();
    for topic in topics {
        match log.partitions(topic).await {
            Ok(n) => {
                assignment.extend((0..n).map(|p| (TopicPartition::new(topic.as_str(), p), Some(0))))
            }
            Err(LogError::UnknownTopic(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if assignment.is_empty() {
        return Ok(());
    }
    let partitions: Vec<TopicPartition> = assignment.iter().map(|(tp, _)| tp.clone()).collect();
    let mut consumer = log.consumer(ConsumerConfig::assign(reader, assignment))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        for record in consumer
            .poll(&mut NoListener, 10_000, Duration::from_millis(200))
            .await?
        {
            on_record(&record);
        }
        if partitions.iter().all(|tp| consumer.caught_up(tp))
            && (until() || tokio::time::Instant::now() >= deadline)
        {
            break;
        }
    }
    consumer.close(&mut NoListener).await
}

/// Checks one experiment's outputs on `log` against its layout: every aggregate exactly
/// once, every task output present (or dead-lettered). `progress` hears the records read.
pub async fn verify_experiment(
    log: &dyn Log,
    options: &VerifyOptions,
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    let mut layout = None;
    read_to_end(
        log,
        "wellspring-verify-metadata",
        std::slice::from_ref(&options.metadata_topic),
        |record| {
            let parsed = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .and_then(|json| ExperimentLayout::from_value(&Value::from(&json)).ok());
            if let Some(found) = parsed.filter(|l| l.experiment.to_string() == options.experiment) {
                layout = Some(found);
            }
        },
        || true,
        Duration::ZERO,
    )
    .await?;
    let layout = layout.ok_or_else(|| VerifyError::NoLayout {
        experiment: options.experiment.clone(),
        topic: options.metadata_topic.clone(),
    })?;
    let DagExpectations {
        expected,
        unchecked,
    } = dag_expectations(&options.dag, &layout);
    if expected.is_empty() {
        let why = unchecked
            .iter()
            .map(|(topic, why)| format!("{topic}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(VerifyError::NothingToCheck {
            dag: options.dag.name.clone(),
            why: if why.is_empty() {
                "it has no publish node".into()
            } else {
                why
            },
        });
    }
    let tracker = std::cell::RefCell::new(
        Tracker::new(
            expected,
            &options.dead_letter_topic,
            &options.incomplete_topic,
        )
        .scoped(&options.experiment),
    );
    let topics = tracker.borrow().topics();
    let mut read = 0u64;
    let now = Instant::now();
    read_to_end(
        log,
        "wellspring-verify",
        &topics,
        |record| {
            read += 1;
            if read.is_multiple_of(10_000) {
                progress(read);
            }
            tracker.borrow_mut().observe(record, now);
        },
        || tracker.borrow().complete(),
        options.wait,
    )
    .await?;
    progress(read);
    let tracker = tracker.into_inner();
    let dead_letters = tracker
        .dead_letters
        .iter()
        .filter(|(key, _)| tracker.in_scope(key))
        .cloned()
        .collect();
    Ok(VerifyReport {
        experiment: options.experiment.clone(),
        levels: tracker.report(),
        dead_letters,
        records_read: read,
        unchecked,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn record(topic: &str, key: &str, id: &str, offset: i64) -> LogRecord {
        LogRecord {
            topic: Arc::from(topic),
            partition: 0,
            offset: offset as wellspring_log::Offset,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: None,
            headers: Arc::new(vec![(
                headers::ID.to_owned(),
                Bytes::copy_from_slice(id.as_bytes()),
            )]),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn a_repeat_and_a_second_computation_are_told_apart_and_a_key_keeps_when_it_came_first() {
        let expected = Expected {
            label: "sites".into(),
            topic: "images_site".into(),
            keys: ["E/1/A01/1", "E/1/A01/2", "E/1/A01/3"]
                .into_iter()
                .map(String::from)
                .collect(),
            aggregate: true,
        };
        let mut tracker = Tracker::new(vec![expected], "dead", "incomplete").scoped("E");
        let first = Instant::now();
        let later = first + Duration::from_secs(1);
        tracker.observe(&record("images_site", "E/1/A01/1", "id-1", 0), first);
        // The same record again: a repeat under its id.
        tracker.observe(&record("images_site", "E/1/A01/1", "id-1", 1), later);
        // A key computed twice: two ids.
        tracker.observe(&record("images_site", "E/1/A01/2", "id-2", 2), first);
        tracker.observe(&record("images_site", "E/1/A01/2", "id-2b", 3), later);
        // Another experiment's output and an unwatched topic count for nothing.
        tracker.observe(&record("images_site", "F/1/A01/1", "id-f", 4), first);
        tracker.observe(&record("elsewhere", "E/1/A01/3", "id-3", 0), first);

        let report = &tracker.report()[0];
        assert_eq!(report.present, 2);
        assert_eq!(report.missing, vec!["E/1/A01/3".to_owned()]);
        assert_eq!(report.repeats, 1);
        assert_eq!(
            report.duplicated,
            vec!["E/1/A01/1".to_owned(), "E/1/A01/2".to_owned()]
        );
        assert_eq!(report.conflicting, vec!["E/1/A01/2".to_owned()]);
        assert!(report.unexpected.is_empty());
        assert!(!report.ok() && !report.ok_by_id());
        assert_eq!(tracker.present("images_site"), 2);
        assert_eq!(tracker.first_seen("images_site", "E/1/A01/1"), Some(first));
        assert_eq!(tracker.first_seen("images_site", "E/1/A01/3"), None);
        assert_eq!(tracker.first_seen("elsewhere", "E/1/A01/3"), None);
    }
}
