//! Hierarchical aggregation: channel → site → well → plate → experiment.
//!
//! One [`Aggregator`] per level and shard holds the open aggregates of the keys it owns.
//! Each input is a child of one aggregate (a channel image of a site, a site of a well,
//! ...). An aggregate is complete when it has every child the experiment's layout
//! expects; it is then emitted exactly once and remembered as closed, so duplicates and
//! replays change nothing. Inputs may come in any order and before their metadata: an
//! aggregate whose layout is unknown waits, and is checked again when the layout
//! arrives. An aggregate open past the timeout is reported once by an `incomplete`
//! record naming what is missing; it stays open and completes if the rest arrives.
//!
//! The aggregator is plain synchronous data (no actors, no I/O) so that it can be tested
//! exhaustively and benchmarked on its own; the grouping stage drives it.

mod children;
mod hierarchy;
mod levels;

use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wellspring_protocol::records::Provenance;
use wellspring_protocol::{ExperimentId, ExperimentLayout, IncompleteRecord, wire};

pub use children::{Children, Insert, Locations};
pub use hierarchy::{Hierarchy, LevelOutput};
pub use levels::{ExperimentLevel, PlateLevel, SiteLevel, WellLevel};

/// Finds an experiment's layout (the metadata table, or a map in tests).
pub trait Layouts {
    fn layout(&self, experiment: &ExperimentId) -> Option<&ExperimentLayout>;
}

impl Layouts for FxHashMap<ExperimentId, Arc<ExperimentLayout>> {
    fn layout(&self, experiment: &ExperimentId) -> Option<&ExperimentLayout> {
        self.get(experiment).map(|l| &**l)
    }
}

/// One level of the hierarchy: how its inputs map to aggregates and children, and what
/// the layout expects of an aggregate.
pub trait Level: 'static {
    /// `site`, `well`, `plate` or `experiment`.
    const NAME: &'static str;
    /// What the aggregate is made of: `channel`, `site`, `well` or `plate`.
    const CHILD: &'static str;
    type Key: Clone + Eq + Hash + Ord + fmt::Display + FromStr;
    type Input;
    type Child: Clone + PartialEq + Serialize + DeserializeOwned;
    /// How an open aggregate keeps its children.
    type Children: Children<Self::Child>;
    type Output;

    fn key(input: &Self::Input) -> Self::Key;
    /// The child's id within its aggregate, its payload, and the provenance it carries.
    fn split(input: Self::Input) -> (u32, Self::Child, Provenance);
    fn experiment(key: &Self::Key) -> &ExperimentId;
    /// How many children complete the aggregate, or why the aggregate itself is not in
    /// the layout.
    fn expected(layout: &ExperimentLayout, key: &Self::Key) -> Result<usize, String>;
    fn is_expected(layout: &ExperimentLayout, key: &Self::Key, child: u32) -> bool;
    fn expected_children(layout: &ExperimentLayout, key: &Self::Key) -> Vec<u32>;
    fn build(
        key: &Self::Key,
        provenance: Provenance,
        children: Vec<(u32, Self::Child)>,
    ) -> Self::Output;
    /// A child in words: `channel 5 of site 3 of well B02 of plate 1`.
    fn describe(key: &Self::Key, child: u32) -> String;
}

/// What happened to one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// A new child; the aggregate is still open.
    Accepted,
    /// A new child that completed its aggregate.
    Completed,
    /// Seen before (or its aggregate already closed): ignored.
    Duplicate,
}

/// Why an input was refused (it goes to the dead-letter topic with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    NotInLayout(String),
    #[error("{0}")]
    Conflict(String),
}

/// Why a changelog entry could not be restored (the shard skips it).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("changelog key {key:?} is not a {level} key")]
    Key { key: String, level: &'static str },
    #[error("changelog entry of {key}: {source}")]
    Entry {
        key: String,
        #[source]
        source: wire::WireError,
    },
}

impl RestoreError {
    /// The wire error of an entry that could not be read, if that was the trouble.
    pub fn wire(&self) -> Option<&wire::WireError> {
        match self {
            RestoreError::Entry { source, .. } => Some(source),
            RestoreError::Key { .. } => None,
        }
    }
}

/// Something the aggregator wants written.
#[derive(Debug, Clone, PartialEq)]
pub enum Emitted<K, O> {
    /// The key stays typed: formatting it is left to whoever needs the text.
    Complete {
        key: K,
        output: O,
    },
    Incomplete(IncompleteRecord),
    /// A child accepted before the layout was known turned out not to be in it.
    Rejected {
        key: String,
        reason: String,
    },
}

/// An open aggregate. Kept small (with a site's key, one 64-byte cache line in the
/// table): a lab holds hundreds of thousands open, and each input looks one up.
struct Open<S> {
    /// Shared by the aggregates of a plate (see [`SharedProvenances`]).
    provenance: Arc<Provenance>,
    children: S,
    opened_ms: i64,
    /// Children that complete it, once the layout is known ([`Open::UNKNOWN`] before).
    expected: u32,
    reported_incomplete: bool,
    /// Already listed as dirty: the hot path then skips listing it again.
    dirty: bool,
}

impl<S> Open<S> {
    const UNKNOWN: u32 = u32::MAX;

    fn expected(&self) -> Option<u32> {
        (self.expected != Self::UNKNOWN).then_some(self.expected)
    }
}

/// An aggregate's state as written to the changelog.
#[derive(Serialize, Deserialize)]
enum StateEntry<C> {
    Open {
        cell_type: String,
        plate_barcode: String,
        children: Vec<(u32, C)>,
        opened_ms: i64,
        reported_incomplete: bool,
    },
    Closed {
        closed_ms: i64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct AggregatorConfig {
    /// Report an aggregate open this long (`None`: never).
    pub incomplete_timeout: Option<Duration>,
    /// Forget a closed aggregate this long after it closed; a duplicate arriving later
    /// would open it again.
    pub closed_retention: Duration,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            incomplete_timeout: None,
            closed_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The aggregates of one level in one shard.
pub struct Aggregator<L: Level> {
    config: AggregatorConfig,
    /// Never shares a key with `closed`: a key opens only when it is not closed.
    open: FxHashMap<L::Key, Open<L::Children>>,
    /// When each emitted aggregate closed, by key: what makes it emitted once. (Re-runs
    /// of an experiment will add a generation to the key here.)
    closed: FxHashMap<L::Key, i64>,
    /// Open aggregates whose experiment had no layout when they opened.
    awaiting_layout: FxHashMap<ExperimentId, Vec<L::Key>>,
    /// Keys changed since the last [`Aggregator::take_changes`] (may repeat: a vector
    /// push is cheaper than a set insert on the hot path; repeats are dropped there).
    dirty: Vec<L::Key>,
    next_scan_ms: i64,
    provenances: SharedProvenances,
}

/// The provenances (cell type and plate barcode) of open aggregates, each once: every
/// input decoded carries its own copy, and an open site would keep its first image's.
/// Bounded: past [`SharedProvenances::MAX`] it starts again (what aggregates hold stays valid;
/// new ones share anew).
#[derive(Default)]
struct SharedProvenances(rustc_hash::FxHashSet<Arc<Provenance>>);

impl SharedProvenances {
    const MAX: usize = 4096;

    fn provenance(&mut self, provenance: Provenance) -> Arc<Provenance> {
        if let Some(shared) = self.0.get(&provenance) {
            return shared.clone();
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        let shared = Arc::new(provenance);
        self.0.insert(shared.clone());
        shared
    }
}

impl<L: Level> Aggregator<L> {
    pub fn new(config: AggregatorConfig) -> Self {
        Self {
            config,
            open: FxHashMap::default(),
            closed: FxHashMap::default(),
            awaiting_layout: FxHashMap::default(),
            dirty: Vec::new(),
            next_scan_ms: i64::MIN,
            provenances: SharedProvenances::default(),
        }
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn closed_count(&self) -> usize {
        self.closed.len()
    }

    /// Adds one input. Completed aggregates are pushed to `out`.
    pub fn ingest(
        &mut self,
        input: L::Input,
        layouts: &dyn Layouts,
        now_ms: i64,
        out: &mut Vec<Emitted<L::Key, L::Output>>,
    ) -> Result<Ingested, Rejection> {
        let key = L::key(&input);
        let layout = layouts.layout(L::experiment(&key));
        if layout.is_some()
            && !self.awaiting_layout.is_empty()
            && self.awaiting_layout.contains_key(L::experiment(&key))
        {
            // Aggregates opened before the layout was known must be checked against it
            // before this input counts toward completing one of them.
            let experiment = L::experiment(&key).clone();
            self.layout_arrived(&experiment, layouts, now_ms, out);
        }
        let (child, payload, provenance) = L::split(input);
        if let Some(layout) = layout
            && !L::is_expected(layout, &key, child)
        {
            return Err(Rejection::NotInLayout(format!(
                "{} is not in the layout of experiment {}",
                L::describe(&key, child),
                L::experiment(&key)
            )));
        }
        let open = match self.open.get_mut(&key) {
            Some(open) => open,
            None => {
                if self.closed.contains_key(&key) {
                    return Ok(Ingested::Duplicate);
                }
                // Whether the aggregate itself is in the layout is checked once, when it opens.
                let expected = match layout {
                    Some(layout) => {
                        Some(L::expected(layout, &key).map_err(Rejection::NotInLayout)? as u32)
                    }
                    None => {
                        self.awaiting_layout
                            .entry(L::experiment(&key).clone())
                            .or_default()
                            .push(key.clone());
                        None
                    }
                };
                self.open.entry(key.clone()).or_insert(Open {
                    provenance: self.provenances.provenance(provenance),
                    children: L::Children::with_capacity(expected.unwrap_or(4) as usize),
                    expected: expected.unwrap_or(Open::<L::Children>::UNKNOWN),
                    opened_ms: now_ms,
                    reported_incomplete: false,
                    dirty: false,
                })
            }
        };
        match open.children.insert(child, payload) {
            Insert::Same => return Ok(Ingested::Duplicate),
            Insert::Different => {
                return Err(Rejection::Conflict(format!(
                    "{} arrived twice with different contents; the first is kept",
                    L::describe(&key, child)
                )));
            }
            Insert::Added => {}
        }
        if open
            .expected()
            .is_some_and(|n| open.children.len() >= n as usize)
        {
            self.close(key, now_ms, out);
            return Ok(Ingested::Completed);
        }
        if !open.dirty {
            open.dirty = true;
            self.dirty.push(key);
        }
        Ok(Ingested::Accepted)
    }

    /// Emits the open aggregate `key` and remembers it as closed.
    fn close(&mut self, key: L::Key, now_ms: i64, out: &mut Vec<Emitted<L::Key, L::Output>>) {
        let Some(open) = self.open.remove(&key) else {
            return;
        };
        let closed_before = self.closed.insert(key.clone(), now_ms);
        invariant!(
            closed_before.is_none(),
            "the {} aggregate {key} is emitted twice: it closed at {closed_before:?} ms and again at {now_ms} ms",
            L::NAME
        );
        let provenance = Arc::unwrap_or_clone(open.provenance);
        let output = L::build(&key, provenance, open.children.into_sorted());
        out.push(Emitted::Complete {
            key: key.clone(),
            output,
        });
        self.dirty.push(key);
    }

    /// The layout of `experiment` arrived (or changed): check what waited for it.
    pub fn layout_arrived(
        &mut self,
        experiment: &ExperimentId,
        layouts: &dyn Layouts,
        now_ms: i64,
        out: &mut Vec<Emitted<L::Key, L::Output>>,
    ) {
        let Some(layout) = layouts.layout(experiment) else {
            return;
        };
        let Some(mut keys) = self.awaiting_layout.remove(experiment) else {
            return;
        };
        let layout = layout.clone();
        keys.sort();
        keys.dedup();
        for key in keys {
            let Some(open) = self.open.get_mut(&key) else {
                continue;
            };
            let expected = match L::expected(&layout, &key) {
                Ok(n) => n,
                Err(reason) => {
                    // The whole aggregate is outside the layout: drop it.
                    self.open.remove(&key);
                    self.dirty.push(key.clone());
                    out.push(Emitted::Rejected {
                        key: key.to_string(),
                        reason,
                    });
                    continue;
                }
            };
            let before = open.children.len();
            let mut rejected = Vec::new();
            open.children.retain(|child| {
                let keep = L::is_expected(&layout, &key, child);
                if !keep {
                    rejected.push(child);
                }
                keep
            });
            for child in rejected {
                out.push(Emitted::Rejected {
                    key: key.to_string(),
                    reason: format!(
                        "{} is not in the layout of experiment {} (it arrived before the metadata)",
                        L::describe(&key, child),
                        experiment
                    ),
                });
            }
            open.expected = expected as u32;
            let complete = open.children.len() >= expected;
            if open.children.len() != before || complete {
                self.dirty.push(key.clone());
            }
            if open.children.is_empty() {
                self.open.remove(&key);
            } else if complete {
                self.close(key, now_ms, out);
            }
        }
    }

    /// When [`Aggregator::tick`] has work next (clock milliseconds): its next scan, when
    /// there are open aggregates a timeout can report or closed ones to forget.
    pub fn due_ms(&self) -> Option<i64> {
        let scans = (self.config.incomplete_timeout.is_some() && !self.open.is_empty())
            || !self.closed.is_empty();
        scans.then_some(self.next_scan_ms)
    }

    /// Reports aggregates open past the timeout and forgets old closed ones. Cheap to
    /// call often: it scans at most every tenth of the timeout.
    pub fn tick(
        &mut self,
        layouts: &dyn Layouts,
        now_ms: i64,
        out: &mut Vec<Emitted<L::Key, L::Output>>,
    ) {
        if now_ms < self.next_scan_ms {
            return;
        }
        let interval = self
            .config
            .incomplete_timeout
            .map_or(Duration::from_secs(60), |t| t / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        self.next_scan_ms = now_ms + interval.as_millis() as i64;

        if let Some(timeout) = self.config.incomplete_timeout {
            let timeout_ms = timeout.as_millis() as i64;
            let mut due: Vec<L::Key> = self
                .open
                .iter()
                .filter(|(_, o)| !o.reported_incomplete && now_ms - o.opened_ms >= timeout_ms)
                .map(|(k, _)| k.clone())
                .collect();
            due.sort();
            for key in due {
                let Some(open) = self.open.get_mut(&key) else {
                    continue;
                };
                open.reported_incomplete = true;
                let layout = layouts.layout(L::experiment(&key));
                let (expected, missing) = match layout {
                    Some(layout) => {
                        let missing: Vec<String> = L::expected_children(layout, &key)
                            .into_iter()
                            .filter(|c| !open.children.contains(*c))
                            .map(|c| L::describe(&key, c))
                            .collect();
                        (L::expected(layout, &key).ok().map(|n| n as u32), missing)
                    }
                    None => (
                        None,
                        vec![format!("metadata of experiment {}", L::experiment(&key))],
                    ),
                };
                out.push(Emitted::Incomplete(IncompleteRecord {
                    level: L::NAME.to_owned(),
                    key: key.to_string(),
                    experiment: L::experiment(&key).clone(),
                    present: open.children.len() as u32,
                    expected,
                    missing,
                    open_since_ms: open.opened_ms,
                }));
                self.dirty.push(key);
            }
        }
        let retention_ms = self.config.closed_retention.as_millis() as i64;
        let expired: Vec<L::Key> = self
            .closed
            .iter()
            .filter(|(_, closed_ms)| now_ms - **closed_ms > retention_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.closed.remove(&key);
            self.dirty.push(key);
        }
    }

    /// The state changes since the last call, as changelog entries: the key's text and
    /// its encoded state (`None`: forget the key).
    pub fn take_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut keys: Vec<L::Key> = std::mem::take(&mut self.dirty);
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|key| {
                let entry = if let Some(open) = self.open.get_mut(&key) {
                    open.dirty = false;
                    Some(wire::encode(&StateEntry::Open {
                        cell_type: open.provenance.cell_type.to_string(),
                        plate_barcode: open.provenance.plate_barcode.to_string(),
                        children: open.children.to_sorted(),
                        opened_ms: open.opened_ms,
                        reported_incomplete: open.reported_incomplete,
                    }))
                } else {
                    self.closed.get(&key).map(|closed_ms| {
                        wire::encode(&StateEntry::<L::Child>::Closed {
                            closed_ms: *closed_ms,
                        })
                    })
                };
                (key.to_string(), entry)
            })
            .collect()
    }

    /// Applies one changelog entry (restoring a shard). The last entry of a key wins.
    pub fn restore(&mut self, key: &str, entry: Option<&[u8]>) -> Result<(), RestoreError> {
        let key: L::Key = key.parse().map_err(|_| RestoreError::Key {
            key: key.to_owned(),
            level: L::NAME,
        })?;
        self.open.remove(&key);
        self.closed.remove(&key);
        let Some(bytes) = entry else { return Ok(()) };
        match wire::decode::<StateEntry<L::Child>>(bytes).map_err(|source| RestoreError::Entry {
            key: key.to_string(),
            source,
        })? {
            StateEntry::Open {
                cell_type,
                plate_barcode,
                children,
                opened_ms,
                reported_incomplete,
            } => {
                self.awaiting_layout
                    .entry(L::experiment(&key).clone())
                    .or_default()
                    .push(key.clone());
                self.open.insert(
                    key,
                    Open {
                        provenance: self.provenances.provenance(Provenance {
                            cell_type: Arc::from(cell_type),
                            plate_barcode: Arc::from(plate_barcode),
                        }),
                        children: L::Children::from_sorted(children),
                        opened_ms,
                        reported_incomplete,
                        dirty: false,
                        expected: Open::<L::Children>::UNKNOWN,
                    },
                );
            }
            StateEntry::Closed { closed_ms } => {
                self.closed.insert(key, closed_ms);
            }
        }
        Ok(())
    }

    /// After a restore: complete what the layouts already allow.
    pub fn restored(
        &mut self,
        layouts: &dyn Layouts,
        now_ms: i64,
        out: &mut Vec<Emitted<L::Key, L::Output>>,
    ) {
        let experiments: Vec<ExperimentId> = self.awaiting_layout.keys().cloned().collect();
        for experiment in experiments {
            self.layout_arrived(&experiment, layouts, now_ms, out);
        }
    }
}

#[cfg(test)]
mod tests;
