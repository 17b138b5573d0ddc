//! Checking a run's outputs: every expected aggregate exactly once (by deterministic id),
//! every task output present or dead-lettered.
//!
//! A [`Tracker`] watches the output topics while a run goes on (for progress and
//! latencies) and reports at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::time::Instant;
use wellspring_log::LogRecord;
use wellspring_protocol::envelope::headers;
use wellspring_protocol::{ExperimentLayout, PlateKey, WellKey};

/// What one output topic should carry.
#[derive(Debug, Clone)]
pub struct Expected {
    pub label: &'static str,
    pub topic: String,
    pub keys: BTreeSet<String>,
    /// Aggregates must appear exactly once; task outputs may instead be dead-lettered,
    /// and repeat for repeated inputs (with the same id, for consumers to drop).
    pub aggregate: bool,
}

/// The outputs of the reference DAG for one experiment.
pub fn reference_expectations(layout: &ExperimentLayout) -> Vec<Expected> {
    let mut channels = BTreeSet::new();
    let mut sites = BTreeSet::new();
    let mut wells = BTreeSet::new();
    let mut plates = BTreeSet::new();
    for plate in &layout.plates {
        plates.insert(
            PlateKey {
                experiment: layout.experiment.clone(),
                plate: plate.plate,
            }
            .to_string(),
        );
        for &well in &plate.wells {
            let well_key = WellKey {
                experiment: layout.experiment.clone(),
                plate: plate.plate,
                well,
            };
            wells.insert(well_key.to_string());
            for site in 1..=layout.sites_per_well {
                let site_key = format!("{well_key}/{site}");
                for channel in 1..=layout.channels_per_site {
                    channels.insert(format!("{site_key}/{channel}"));
                }
                sites.insert(site_key);
            }
        }
    }
    let experiments = BTreeSet::from([layout.experiment.to_string()]);
    let e = |label, topic: &str, keys: &BTreeSet<String>, aggregate| Expected {
        label,
        topic: topic.to_owned(),
        keys: keys.clone(),
        aggregate,
    };
    vec![
        e("image metrics", "image_metrics", &channels, false),
        e("sites", "images_site", &sites, true),
        e("site features", "site_features", &sites, false),
        e("wells", "images_well", &wells, true),
        e("well thumbnails", "well_thumbnails", &wells, false),
        e("plates", "images_plate", &plates, true),
        e("plate features", "plate_features", &plates, false),
        e("experiments", "experiments", &experiments, true),
    ]
}

#[derive(Debug, Default)]
struct Tally {
    ids: HashMap<String, u32>,
    keys: HashMap<String, u32>,
}

/// The verdict on one output topic.
#[derive(Debug, Clone)]
pub struct LevelReport {
    pub label: &'static str,
    pub topic: String,
    pub aggregate: bool,
    pub expected: usize,
    /// Expected keys seen.
    pub present: usize,
    /// Records whose id had been seen before.
    pub repeats: usize,
    pub missing: Vec<String>,
    /// Missing keys for which a dead letter explains why.
    pub dead_lettered: usize,
    pub unexpected: Vec<String>,
}

impl LevelReport {
    /// An aggregate must be there exactly once; a task output there or dead-lettered.
    pub fn ok(&self) -> bool {
        if self.aggregate {
            self.missing.is_empty() && self.repeats == 0 && self.unexpected.is_empty()
        } else {
            self.missing.len() == self.dead_lettered && self.unexpected.is_empty()
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
    /// When each key of each topic was first seen.
    first_seen: HashMap<(String, String), Instant>,
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
            first_seen: HashMap::new(),
        }
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
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        if *record.topic == *self.dead_letter_topic {
            let reason = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
                .unwrap_or_default();
            self.dead_letters.push((key, reason));
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
                .unwrap_or(key);
            self.incomplete.push(description);
            return;
        }
        let Some(tally) = self.tallies.get_mut(&*record.topic) else {
            return;
        };
        let id = record
            .header(headers::ID)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        *tally.ids.entry(id).or_default() += 1;
        let count = tally.keys.entry(key.clone()).or_default();
        *count += 1;
        if *count == 1 {
            self.first_seen.insert((record.topic.to_string(), key), now);
        }
    }

    /// Distinct expected keys seen on `topic`.
    pub fn present(&self, topic: &str) -> usize {
        self.tallies.get(topic).map_or(0, |t| t.keys.len())
    }

    pub fn first_seen(&self, topic: &str, key: &str) -> Option<Instant> {
        self.first_seen
            .get(&(topic.to_owned(), key.to_owned()))
            .copied()
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
                    label: e.label,
                    topic: e.topic.clone(),
                    aggregate: e.aggregate,
                    expected: e.keys.len(),
                    present: e.keys.len() - missing.len(),
                    repeats: tally.map_or(0, |t| t.ids.values().map(|n| (*n - 1) as usize).sum()),
                    missing,
                    dead_lettered,
                    unexpected,
                }
            })
            .collect()
    }
}
