//! The status API's bodies: where every DAG, experiment, plate and well stands.
//!
//! A node answers these from its status view (a view of the DAG's topics read outside the
//! consumer groups), so any node answers for the whole cluster. Paths are in [`route`];
//! every body is JSON with the field names as written here (snake case); enums are
//! lower-case strings (`"partial"`, `"dead_lettered"`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Route patterns as the server mounts them.
pub mod route {
    pub const DAGS: &str = "/api/dags";
    pub const EXPERIMENTS: &str = "/api/experiments";
    pub const EXPERIMENT: &str = "/api/experiments/{id}";
    pub const PLATE: &str = "/api/experiments/{id}/plates/{plate}";
    /// `?experiment=&plate=&node=&reason=&since=&offset=&limit=` (see [`super::DeadLetterQuery`]).
    pub const DEAD_LETTERS: &str = "/api/dead-letters";
    /// `POST`: send dead letters back into their stages (see [`crate::redrive`]).
    pub const REDRIVE: &str = "/api/dead-letters/redrive";
    /// Server-Sent Events: one [`super::StatusEvent`] per event, as JSON in `data:`.
    pub const EVENTS: &str = "/api/events";
}

/// `GET /api/dags` answered from this node's metrics alone (what a node asks its peers).
pub fn local_dags_path() -> String {
    format!(
        "{}?scope={}",
        route::DAGS,
        crate::taskstore::api::LOCAL_SCOPE
    )
}

/// The path of one experiment (ids are `[A-Za-z0-9._:-]`: nothing to encode).
pub fn experiment_path(id: &str) -> String {
    route::EXPERIMENT.replace("{id}", id)
}

/// The path of one plate.
pub fn plate_path(id: &str, plate: u32) -> String {
    route::PLATE
        .replace("{id}", id)
        .replace("{plate}", &plate.to_string())
}

/// The path of `GET /api/dead-letters` with `query` (values percent-encoded).
pub fn dead_letters_path(query: &DeadLetterQuery) -> String {
    use crate::taskstore::api::encoded;
    let mut pairs = Vec::new();
    if let Some(e) = &query.experiment {
        pairs.push(format!("experiment={}", encoded(e)));
    }
    if let Some(p) = query.plate {
        pairs.push(format!("plate={p}"));
    }
    if let Some(n) = &query.node {
        pairs.push(format!("node={}", encoded(n)));
    }
    if let Some(r) = &query.reason {
        pairs.push(format!("reason={}", encoded(r)));
    }
    if let Some(s) = query.since {
        pairs.push(format!("since={s}"));
    }
    if let Some(o) = query.offset {
        pairs.push(format!("offset={o}"));
    }
    if let Some(l) = query.limit {
        pairs.push(format!("limit={l}"));
    }
    if pairs.is_empty() {
        route::DEAD_LETTERS.to_owned()
    } else {
        format!("{}?{}", route::DEAD_LETTERS, pairs.join("&"))
    }
}

/// Where an aggregate (site, well, plate, experiment) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelState {
    /// Nothing of it in yet.
    Waiting,
    /// Some members in, not all.
    Partial,
    /// Every member in and its aggregate emitted.
    Complete,
    /// Reported incomplete after its timeout (what is missing is named).
    Incomplete,
    /// A record of it was dead-lettered.
    DeadLettered,
    /// A well the plate's layout does not use.
    NotInUse,
}

impl LevelState {
    /// One character per state, for terminal plate maps.
    pub fn symbol(self) -> char {
        match self {
            LevelState::Waiting => '.',
            LevelState::Partial => 'o',
            LevelState::Complete => '#',
            LevelState::Incomplete => '!',
            LevelState::DeadLettered => 'X',
            LevelState::NotInUse => '-',
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LevelState::Waiting => "waiting",
            LevelState::Partial => "partial",
            LevelState::Complete => "complete",
            LevelState::Incomplete => "incomplete",
            LevelState::DeadLettered => "dead_lettered",
            LevelState::NotInUse => "not_in_use",
        }
    }

    pub const ALL: [LevelState; 6] = [
        LevelState::Waiting,
        LevelState::Partial,
        LevelState::Complete,
        LevelState::Incomplete,
        LevelState::DeadLettered,
        LevelState::NotInUse,
    ];
}

/// Where one task stands for one aggregate (a well's image-metrics task: all its images).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Its inputs are not in yet.
    Waiting,
    /// Inputs in, outputs not all out yet (in flight or retrying).
    InFlight,
    /// Every output present.
    Done,
    /// At least one input dead-lettered (the rest done).
    DeadLettered,
}

/// Expected and present members of one level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub expected: u64,
    pub present: u64,
}

/// Progress of one level or one task output of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelProgress {
    /// `images`, `sites`, `wells`, `plates`, `experiment`, or a task's name (`image-metrics`).
    pub name: String,
    /// The topic it is read from.
    pub topic: String,
    /// `channel`, `site`, `well`, `plate` or `experiment`: what one member is.
    pub level: String,
    /// True for a task's outputs, false for images and aggregates.
    pub task: bool,
    pub expected: u64,
    pub present: u64,
    pub dead_lettered: u64,
}

/// One experiment in the list (`GET /api/experiments`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSummary {
    pub id: String,
    pub dag: String,
    pub state: LevelState,
    /// False until its layout (`experiment_metadata`) has been read: until then nothing
    /// is expected and progress counts only what came in.
    pub layout_known: bool,
    pub plates: u32,
    /// Images, then each aggregate level, then each task's outputs.
    pub levels: Vec<LevelProgress>,
    pub dead_letters: u64,
    pub incomplete_reports: u64,
    /// Milliseconds since the Unix epoch (the log's append time), `null` before any.
    pub first_image_ms: Option<i64>,
    pub last_image_ms: Option<i64>,
}

/// `GET /api/experiments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentList {
    /// The page asked for (every experiment by default), ordered by id.
    pub experiments: Vec<ExperimentSummary>,
    /// Experiments in all (the page is `offset..offset + experiments.len()` of them).
    #[serde(default)]
    pub total: usize,
    #[serde(default)]
    pub offset: usize,
    /// Experiments the view forgot to keep its memory bounded (oldest first).
    pub evicted: u64,
    /// Why the view cannot read the log now (its answers are stale meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_error: Option<String>,
}

/// `GET /api/experiments` query: `?offset=&limit=` (by id; by default every
/// experiment the view keeps, at most [`MAX_EXPERIMENT_LIMIT`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentQuery {
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

/// The most experiments one page holds (also what the view keeps at most by default).
pub const MAX_EXPERIMENT_LIMIT: usize = 1000;

/// A plate as a line of its experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateSummary {
    pub plate: u32,
    pub barcode: Option<String>,
    pub state: LevelState,
    pub geometry: Geometry,
    /// Wells the layout uses.
    pub wells_in_use: u32,
    /// Wells per state (only states that occur).
    pub wells_by_state: BTreeMap<LevelState, u32>,
    pub images: Progress,
    pub first_image_ms: Option<i64>,
    pub last_image_ms: Option<i64>,
}

/// An aggregate reported incomplete after its timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncompleteReport {
    /// `site`, `well`, `plate` or `experiment`.
    pub level: String,
    pub key: String,
    pub present: u32,
    pub expected: Option<u32>,
    /// In words: `channel 5 of site 3 of well B02 of plate 1`.
    pub missing: Vec<String>,
    pub description: String,
}

/// `GET /api/experiments/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentDetail {
    #[serde(flatten)]
    pub summary: ExperimentSummary,
    pub sites_per_well: u16,
    pub channels_per_site: u8,
    pub plate_list: Vec<PlateSummary>,
    /// The newest 100, newest last.
    pub incomplete: Vec<IncompleteReport>,
}

/// Rows × columns of a standard plate (96: 8 × 12, 384: 16 × 24, 1536: 32 × 48), the
/// smallest that holds every well of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    pub rows: u8,
    pub columns: u8,
    pub wells: u16,
}

impl Geometry {
    pub const STANDARD: [Geometry; 3] = [
        Geometry {
            rows: 8,
            columns: 12,
            wells: 96,
        },
        Geometry {
            rows: 16,
            columns: 24,
            wells: 384,
        },
        Geometry {
            rows: 32,
            columns: 48,
            wells: 1536,
        },
    ];

    /// The smallest standard plate with at least `rows` rows and `columns` columns.
    pub fn fitting(rows: u8, columns: u8) -> Geometry {
        Self::STANDARD
            .into_iter()
            .find(|g| rows <= g.rows && columns <= g.columns)
            .unwrap_or(Self::STANDARD[2])
    }
}

/// One task's state at one well.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WellTask {
    pub task: String,
    pub state: TaskState,
    /// Outputs expected at this well (an image task: sites × channels; a well task: 1).
    pub expected: u32,
    pub present: u32,
    pub dead_lettered: u32,
}

/// One site of a well: which channels are in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteStatus {
    pub site: u16,
    /// Complete when every channel is in and the site record was emitted.
    pub state: LevelState,
    pub channels_present: Vec<u8>,
    pub channels_missing: Vec<u8>,
}

/// One well of a plate map. Wells not in use carry only `well` and `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WellStatus {
    /// `B02`.
    pub well: String,
    /// 0-based row (0 = A), 1-based column.
    pub row: u8,
    pub column: u8,
    pub state: LevelState,
    /// Images in and expected (sites × channels).
    pub images: Progress,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<WellTask>,
    /// The means of the numeric fields of the task outputs at this well
    /// (`mean_intensity`, `saturated_fraction`, `cell_count`...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub qc: BTreeMap<String, f64>,
    pub dead_letters: u32,
    pub first_image_ms: Option<i64>,
    pub last_image_ms: Option<i64>,
}

impl WellStatus {
    /// A well in `state` of which nothing has been seen (no image, task or QC value).
    pub fn unseen(well: String, row: u8, column: u8, state: LevelState) -> Self {
        WellStatus {
            well,
            row,
            column,
            state,
            images: Progress::default(),
            sites: Vec::new(),
            tasks: Vec::new(),
            qc: BTreeMap::new(),
            dead_letters: 0,
            first_image_ms: None,
            last_image_ms: None,
        }
    }
}

/// `GET /api/experiments/{id}/plates/{n}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateDetail {
    pub experiment: String,
    #[serde(flatten)]
    pub summary: PlateSummary,
    /// The plate's own figures: the numeric fields of its task outputs (`z_prime`...).
    pub qc: BTreeMap<String, f64>,
    /// Each QC metric's range over the plate's wells, for a heatmap's scale.
    pub qc_ranges: BTreeMap<String, QcRange>,
    /// Every position of the geometry, row by row (A01, A02, ... then B01...): a
    /// `rows × columns` list, wells not in use included.
    pub wells: Vec<WellStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QcRange {
    pub min: f64,
    pub max: f64,
}

/// A node of a DAG with its counters (`GET /api/dags`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagNodeStatus {
    pub name: String,
    /// `topic-stream`, `topic-table`, `external-task`, `stream-operation`, `publish`...
    pub kind: String,
    /// The nodes it reads from.
    pub inputs: Vec<String>,
    /// The topic it reads (topic nodes) or writes (publish nodes).
    pub topic: Option<String>,
    /// Records on its topic (cluster-wide, from the view): a topic node's records in, a
    /// publish node's records out.
    pub records: u64,
    /// Records per second over the last few seconds.
    pub rate: f64,
    /// The metrics of the stage, summed over every node that answered (see
    /// [`DagList::nodes_answered`]).
    pub records_in: u64,
    pub records_out: u64,
    pub in_flight: u64,
    pub retries: u64,
    pub dead_letters: u64,
    /// Records of its input not yet read by its consumer group, when known.
    pub consumer_lag: Option<u64>,
    /// The shards (partitions) of its input each node owns: node id → partitions.
    pub shards: BTreeMap<String, Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagStatus {
    pub name: String,
    pub description: Option<String>,
    pub nodes: Vec<DagNodeStatus>,
    /// Edges as `[from, to]` node names.
    pub edges: Vec<[String; 2]>,
    pub dead_letter_topic: String,
    pub incomplete_topic: String,
}

/// `GET /api/dags`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagList {
    /// The node that answered.
    pub node: String,
    pub dags: Vec<DagStatus>,
    /// The nodes whose stage metrics are summed in (this node's, then every live peer's
    /// that answered; only this node's with `?scope=local`).
    #[serde(default)]
    pub nodes_answered: Vec<String>,
    /// Live peers that did not answer: their stages' metrics are missing from the sums.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<UnansweredNode>,
    /// Why the view cannot read the log now (its answers are stale meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_error: Option<String>,
}

/// A peer that did not answer for its metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnansweredNode {
    pub node: String,
    pub url: String,
    pub error: String,
}

impl DagList {
    /// Adds another node's stage metrics (from its `?scope=local` answer) into this list's.
    pub fn add_node(&mut self, other: DagList) {
        for theirs in other.dags {
            let Some(ours) = self.dags.iter_mut().find(|d| d.name == theirs.name) else {
                continue;
            };
            for node in theirs.nodes {
                let Some(mine) = ours.nodes.iter_mut().find(|n| n.name == node.name) else {
                    continue;
                };
                mine.records_in += node.records_in;
                mine.records_out += node.records_out;
                mine.in_flight += node.in_flight;
                mine.retries += node.retries;
                mine.dead_letters += node.dead_letters;
                mine.consumer_lag = match (mine.consumer_lag, node.consumer_lag) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
                mine.shards.extend(node.shards);
            }
        }
        self.nodes_answered.push(other.node);
    }
}

/// `GET /api/dead-letters` query; every filter optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    pub experiment: Option<String>,
    pub plate: Option<u32>,
    /// The DAG node that dead-lettered it.
    pub node: Option<String>,
    /// Substring of the reason (case-insensitive).
    pub reason: Option<String>,
    /// Milliseconds since the Unix epoch: only dead letters appended at or after it.
    pub since: Option<i64>,
    /// Skip this many matches (oldest first).
    pub offset: Option<usize>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

impl DeadLetterQuery {
    /// What the query selects, without its paging.
    pub fn filter(&self) -> crate::redrive::DeadLetterFilter {
        crate::redrive::DeadLetterFilter {
            experiment: self.experiment.clone(),
            plate: self.plate,
            node: self.node.clone(),
            reason: self.reason.clone(),
            since: self.since,
        }
    }
}

pub const DEFAULT_DEAD_LETTER_LIMIT: usize = 100;
pub const MAX_DEAD_LETTER_LIMIT: usize = 1000;

/// One dead letter as the status view keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterEntry {
    /// Stable: where it sits on its dead-letter topic ([`crate::redrive::dead_letter_id`]).
    pub id: String,
    pub dag: String,
    pub node: String,
    pub reason: String,
    pub key: Option<String>,
    pub experiment: Option<String>,
    pub plate: Option<u32>,
    pub well: Option<String>,
    pub site: Option<u16>,
    pub attempts: u32,
    pub source_topic: Option<String>,
    pub source_partition: Option<u32>,
    pub source_offset: Option<u64>,
    /// The trace id of the record, when it carried one.
    pub trace_id: Option<String>,
    /// When the log appended the dead letter (ms since the Unix epoch).
    pub timestamp_ms: i64,
}

/// `GET /api/dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    /// Matches in all (the page is `offset..offset + dead_letters.len()` of them).
    pub total: usize,
    pub offset: usize,
    pub dead_letters: Vec<DeadLetterEntry>,
    /// Dead letters the view forgot to keep its memory bounded (oldest first).
    pub evicted: u64,
}

/// What an SSE event of `GET /api/events` says changed: the event's name (`event:`) is
/// `kind`, its `data:` this record as JSON. Changes are coalesced: at most one event per
/// experiment (and per plate) per interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// `experiment`, `plate`, `dead_letter`, `incomplete`, or `dags` (counters moved).
    pub kind: String,
    pub experiment: Option<String>,
    pub plate: Option<u32>,
    /// The wells of the plate that changed since the last event (`plate` events).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wells: Vec<String>,
    /// A monotonic counter of the view's changes: a client that sees it jump re-reads.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_query_becomes_its_path_encoded() {
        assert_eq!(
            dead_letters_path(&DeadLetterQuery::default()),
            "/api/dead-letters"
        );
        let query = DeadLetterQuery {
            experiment: Some("EXP-1".into()),
            plate: Some(2),
            reason: Some("503 Service Unavailable".into()),
            since: Some(17),
            limit: Some(1000),
            ..Default::default()
        };
        assert_eq!(
            dead_letters_path(&query),
            "/api/dead-letters?experiment=EXP-1&plate=2&reason=503%20Service%20Unavailable&since=17&limit=1000"
        );
    }
}
