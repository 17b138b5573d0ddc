//! The status view's state: per experiment, plate and well, what has come in, as bits.
//!
//! Memory is bounded per well (a few words per output, see [`Well`]) and the number of
//! experiments and dead letters kept is capped ([`Limits`]); what is forgotten is counted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use rustc_hash::FxHashMap;

use wellspring_protocol::ExperimentLayout;
use wellspring_protocol::keys::WellId;
use wellspring_protocol::status::{DeadLetterEntry, IncompleteReport};

use super::shape::{DagShape, KeyPath, Level};

/// A growable set of small integers.
#[derive(Debug, Clone, Default)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; true when it was not set.
    pub fn insert(&mut self, i: usize) -> bool {
        let (word, bit) = (i / 64, i % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let was = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        !was
    }

    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The 64 bits of word `i` (a site's channels).
    pub fn word(&self, i: usize) -> u64 {
        self.0.get(i).copied().unwrap_or(0)
    }

    fn heap_bytes(&self) -> usize {
        self.0.capacity() * 8
    }
}

/// Sums of one QC metric.
#[derive(Debug, Clone, Copy)]
pub struct QcSum {
    pub metric: u16,
    pub sum: f64,
    pub count: u32,
}

/// One well: its images (bit `(site - 1) * 64 + channel - 1`), each in-well output's
/// members by the same numbering (a site-level output: bit `site - 1`; a well-level
/// one: bit 0), what was dead-lettered, and the QC sums of its task outputs.
///
/// About 40 bytes plus 8 per 64 members of each output: for the reference DAG (4 sites,
/// 6 channels, 9 outputs, 5 QC metrics) some 680 bytes a well
/// (`the_bytes_per_well_are_bounded`).
#[derive(Debug, Clone, Default)]
pub struct Well {
    pub images: Bits,
    /// Indexed like the DAG shape's outputs (plate- and experiment-level ones unused).
    pub outputs: Vec<Bits>,
    /// Sites reported incomplete (bit `site - 1`).
    pub incomplete_sites: Bits,
    pub incomplete: bool,
    /// `(output, member bit)` of each dead-lettered member; usually empty.
    pub dead: Vec<(u16, u32)>,
    pub dead_letters: u32,
    pub qc: Vec<QcSum>,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

impl Well {
    pub fn heap_bytes(&self) -> usize {
        self.images.heap_bytes()
            + self.incomplete_sites.heap_bytes()
            + self
                .outputs
                .iter()
                .map(|b| b.heap_bytes() + size_of::<Bits>())
                .sum::<usize>()
            + self.dead.capacity() * size_of::<(u16, u32)>()
            + self.qc.capacity() * size_of::<QcSum>()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Plate {
    pub wells: FxHashMap<WellId, Well>,
    /// Plate-level outputs present (indexed like the shape's outputs).
    pub outputs: Bits,
    pub incomplete: bool,
    pub dead_letters: u32,
    /// The plate's own figures: the numeric fields of its task outputs (latest).
    pub qc: BTreeMap<String, f64>,
    pub images: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

/// Distinct members present per output, and dead-lettered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count {
    pub present: u64,
    pub dead: u64,
}

#[derive(Debug, Clone)]
pub struct Experiment {
    /// Index of its DAG in [`Model::dags`].
    pub dag: usize,
    pub layout: Option<ExperimentLayout>,
    pub plates: BTreeMap<u32, Plate>,
    pub images: u64,
    /// Per output of the DAG.
    pub outputs: Vec<Count>,
    pub incomplete: bool,
    pub incomplete_reports: u64,
    /// The newest few, newest last.
    pub reports: VecDeque<IncompleteReport>,
    pub dead_letters: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// The model's change counter when it last changed (the oldest is evicted first).
    pub touched: u64,
}

/// What the view keeps at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub experiments: usize,
    pub dead_letters: usize,
    pub reports_per_experiment: usize,
    pub qc_metrics: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            experiments: 1000,
            dead_letters: 10_000,
            reports_per_experiment: 100,
            qc_metrics: 64,
        }
    }
}

/// What changed since the last time someone asked (for the events).
#[derive(Debug, Default)]
pub struct Changes {
    pub experiments: BTreeMap<String, BTreeMap<u32, BTreeSet<WellId>>>,
    pub dead_letters: bool,
    pub incomplete: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.experiments.is_empty() && !self.dead_letters && self.incomplete.is_empty()
    }
}

/// The whole view.
#[derive(Debug)]
pub struct Model {
    pub dags: Vec<DagShape>,
    pub experiments: FxHashMap<String, Experiment>,
    pub dead_letters: VecDeque<DeadLetterEntry>,
    pub dead_letters_evicted: u64,
    pub experiments_evicted: u64,
    /// QC metric names, by id.
    pub metrics: Vec<String>,
    /// Records read per topic (for the DAG counters).
    pub records: HashMap<String, u64>,
    pub version: u64,
    pub limits: Limits,
    pub changes: Changes,
}

/// Fields of the keys, not QC values.
const KEY_FIELDS: [&str; 5] = ["experiment_id", "plate_number", "well", "site", "channel"];

impl Model {
    pub fn new(dags: Vec<DagShape>, limits: Limits) -> Model {
        Model {
            dags,
            experiments: FxHashMap::default(),
            dead_letters: VecDeque::new(),
            dead_letters_evicted: 0,
            experiments_evicted: 0,
            metrics: Vec::new(),
            records: HashMap::new(),
            version: 0,
            limits,
            changes: Changes::default(),
        }
    }

    /// The experiment of `id`, created (for DAG `dag`) when new; evicts the least
    /// recently changed one when over the limit.
    fn experiment(&mut self, id: &str, dag: usize) -> &mut Experiment {
        if !self.experiments.contains_key(id) {
            if self.experiments.len() >= self.limits.experiments {
                let oldest = self
                    .experiments
                    .iter()
                    .min_by_key(|(_, e)| e.touched)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.experiments.remove(&oldest);
                    self.experiments_evicted += 1;
                }
            }
            let outputs = vec![Count::default(); self.dags[dag].outputs.len()];
            self.experiments.insert(
                id.to_owned(),
                Experiment {
                    dag,
                    layout: None,
                    plates: BTreeMap::new(),
                    images: 0,
                    outputs,
                    incomplete: false,
                    incomplete_reports: 0,
                    reports: VecDeque::new(),
                    dead_letters: 0,
                    first_ms: None,
                    last_ms: None,
                    touched: 0,
                },
            );
        }
        let version = self.version;
        let experiment = self
            .experiments
            .get_mut(id)
            .unwrap_or_else(|| unreachable!("inserted above"));
        experiment.touched = version;
        experiment
    }

    fn changed(&mut self, experiment: &str, plate: Option<u32>, well: Option<WellId>) {
        self.version += 1;
        // Once per record: no allocation unless the experiment or plate is new here.
        let plates = match self.changes.experiments.get_mut(experiment) {
            Some(plates) => plates,
            None => self
                .changes
                .experiments
                .entry(experiment.to_owned())
                .or_default(),
        };
        if let Some(plate) = plate {
            let wells = plates.entry(plate).or_default();
            if let Some(well) = well {
                wells.insert(well);
            }
        }
    }

    pub fn count_record(&mut self, topic: &str) {
        if let Some(n) = self.records.get_mut(topic) {
            *n += 1;
        } else {
            self.records.insert(topic.to_owned(), 1);
        }
    }

    /// An experiment's layout.
    pub fn observe_layout(&mut self, dag: usize, layout: ExperimentLayout) {
        let id = layout.experiment.to_string();
        self.experiment(&id, dag).layout = Some(layout);
        self.changed(&id, None, None);
    }

    /// A channel image.
    pub fn observe_image(&mut self, dag: usize, key: &str, at_ms: i64) {
        let Some(path) = KeyPath::parse(key).filter(|p| p.level() == Level::Channel) else {
            return;
        };
        let (Some(plate_number), Some(well_id), Some(bit)) =
            (path.plate, path.well, path.bit_in_well())
        else {
            return;
        };
        let outputs = self.dags[dag].outputs.len();
        let experiment = self.experiment(path.experiment, dag);
        let plate = experiment.plates.entry(plate_number).or_default();
        let well = plate.wells.entry(well_id).or_default();
        if well.outputs.len() < outputs {
            well.outputs.resize(outputs, Bits::default());
        }
        if !well.images.insert(bit) {
            return;
        }
        stamp(&mut well.first_ms, &mut well.last_ms, at_ms);
        plate.images += 1;
        stamp(&mut plate.first_ms, &mut plate.last_ms, at_ms);
        experiment.images += 1;
        stamp(&mut experiment.first_ms, &mut experiment.last_ms, at_ms);
        self.changed(path.experiment, Some(plate_number), Some(well_id));
    }

    /// A record of the DAG's output `output` (its key, and its value when it is a task's
    /// output, for the QC values).
    pub fn observe_output(
        &mut self,
        dag: usize,
        output: usize,
        key: &str,
        value: Option<&serde_json::Value>,
    ) {
        let Some(path) = KeyPath::parse(key) else {
            return;
        };
        let qc = value.map(|v| self.qc_values(v)).unwrap_or_default();
        let outputs = self.dags[dag].outputs.len();
        let experiment = self.experiment(path.experiment, dag);
        let level = path.level();
        let new = match (path.plate, path.well) {
            (Some(plate_number), Some(well_id)) if level.in_well() => {
                let Some(bit) = (if level == Level::Well {
                    Some(0)
                } else {
                    path.bit_in_well()
                }) else {
                    return;
                };
                let well = experiment
                    .plates
                    .entry(plate_number)
                    .or_default()
                    .wells
                    .entry(well_id)
                    .or_default();
                if well.outputs.len() < outputs {
                    well.outputs.resize(outputs, Bits::default());
                }
                let new = well.outputs[output].insert(bit);
                if new {
                    for (metric, value) in &qc.numbers {
                        match well.qc.iter_mut().find(|q| q.metric == *metric) {
                            Some(q) => {
                                q.sum += value;
                                q.count += 1;
                            }
                            None => well.qc.push(QcSum {
                                metric: *metric,
                                sum: *value,
                                count: 1,
                            }),
                        }
                    }
                }
                new
            }
            (Some(plate_number), None) => {
                let plate = experiment.plates.entry(plate_number).or_default();
                for (name, value) in &qc.named {
                    plate.qc.insert(name.clone(), *value);
                }
                plate.outputs.insert(output)
            }
            (None, _) => {
                // An experiment-level output counts once.
                experiment.outputs[output].present == 0
            }
            _ => false,
        };
        if new {
            experiment.outputs[output].present += 1;
            self.changed(path.experiment, path.plate, path.well);
        }
    }

    /// The numeric (and boolean) top-level fields of a task output, but the keys'.
    fn qc_values(&mut self, value: &serde_json::Value) -> Qc {
        let mut qc = Qc::default();
        let Some(fields) = value.as_object() else {
            return qc;
        };
        for (name, field) in fields {
            if KEY_FIELDS.contains(&name.as_str()) {
                continue;
            }
            let number = match field {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
                _ => None,
            };
            let Some(number) = number.filter(|n| n.is_finite()) else {
                continue;
            };
            let id = match self.metrics.iter().position(|m| m == name) {
                Some(id) => id,
                None if self.metrics.len() < self.limits.qc_metrics => {
                    self.metrics.push(name.clone());
                    self.metrics.len() - 1
                }
                None => continue,
            };
            qc.numbers.push((id as u16, number));
            qc.named.push((name.clone(), number));
        }
        qc
    }

    /// An `incomplete` record.
    pub fn observe_incomplete(&mut self, dag: usize, report: IncompleteReport) {
        let key = report.key.clone();
        let Some(path) = KeyPath::parse(&key) else {
            return;
        };
        let id = path.experiment.to_owned();
        let limit = self.limits.reports_per_experiment;
        let experiment = self.experiment(&id, dag);
        match (path.plate, path.well, path.site) {
            (Some(p), Some(w), site) => {
                let well = experiment
                    .plates
                    .entry(p)
                    .or_default()
                    .wells
                    .entry(w)
                    .or_default();
                match site {
                    Some(site) => {
                        well.incomplete_sites.insert(usize::from(site) - 1);
                    }
                    None => well.incomplete = true,
                }
            }
            (Some(p), None, _) => experiment.plates.entry(p).or_default().incomplete = true,
            _ => experiment.incomplete = true,
        }
        experiment.incomplete_reports += 1;
        if experiment.reports.len() >= limit {
            experiment.reports.pop_front();
        }
        experiment.reports.push_back(report);
        self.changed(&id, path.plate, path.well);
        self.changes.incomplete.push(key.clone());
    }

    /// A dead letter: listed, and counted where its key says it belongs.
    pub fn observe_dead_letter(&mut self, dag: usize, mut entry: DeadLetterEntry) {
        let key = entry.key.clone();
        if let Some(path) = key.as_deref().and_then(KeyPath::parse)
            && (path.plate.is_some() || self.experiments.contains_key(path.experiment))
        {
            let id = path.experiment.to_owned();
            entry.experiment = Some(id.clone());
            entry.plate = path.plate;
            entry.well = path.well.map(|w| w.to_string());
            entry.site = path.site;
            let output = self.dags[dag]
                .outputs
                .iter()
                .position(|o| o.name == entry.node);
            let outputs = self.dags[dag].outputs.len();
            let experiment = self.experiment(&id, dag);
            experiment.dead_letters += 1;
            // A member counts as dead-lettered once, however often it was (an image
            // sent twice fails twice).
            let mut new_member = true;
            if let Some(p) = path.plate {
                let plate = experiment.plates.entry(p).or_default();
                plate.dead_letters += 1;
                if let Some(w) = path.well {
                    let well = plate.wells.entry(w).or_default();
                    if well.outputs.len() < outputs {
                        well.outputs.resize(outputs, Bits::default());
                    }
                    well.dead_letters += 1;
                    let bit = if path.level() == Level::Well {
                        Some(0)
                    } else {
                        path.bit_in_well()
                    };
                    if let (Some(output), Some(bit)) = (output, bit) {
                        let member = (output as u16, bit as u32);
                        new_member = !well.dead.contains(&member);
                        if new_member {
                            well.dead.push(member);
                        }
                    }
                }
            }
            if let Some(output) = output
                && new_member
            {
                experiment.outputs[output].dead += 1;
            }
            self.changed(&id, path.plate, path.well);
        } else {
            self.version += 1;
        }
        if self.dead_letters.len() >= self.limits.dead_letters {
            self.dead_letters.pop_front();
            self.dead_letters_evicted += 1;
        }
        self.dead_letters.push_back(entry);
        self.changes.dead_letters = true;
    }
}

#[derive(Default)]
struct Qc {
    numbers: Vec<(u16, f64)>,
    named: Vec<(String, f64)>,
}

fn stamp(first: &mut Option<i64>, last: &mut Option<i64>, at: i64) {
    *first = Some(first.map_or(at, |f| f.min(at)));
    *last = Some(last.map_or(at, |l| l.max(at)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use wellspring_actors::FunctionRegistry;
    use wellspring_protocol::status::{ExperimentQuery, LevelState};
    use wellspring_protocol::{Dag, SpecFormat, synthetic};

    fn reference() -> Model {
        let dag = Dag::load(
            crate::demo::REFERENCE_DAG,
            SpecFormat::Yaml,
            &FunctionRegistry::with_builtins(),
        )
        .unwrap();
        Model::new(vec![DagShape::of(&dag)], Limits::default())
    }

    fn output(model: &Model, name: &str) -> usize {
        model.dags[0]
            .outputs
            .iter()
            .position(|o| o.name == name)
            .unwrap()
    }

    /// A whole well of the reference DAG (4 sites, 6 channels), every output in, with
    /// its QC values: the bytes it holds.
    #[test]
    fn the_bytes_per_well_are_bounded() {
        let mut model = reference();
        let layout = synthetic::layout("E", 1, 1, 4, 6).unwrap();
        let well = layout.plates[0].wells[0];
        model.observe_layout(0, layout);
        let metrics = output(&model, "image-metrics");
        let features = output(&model, "site-features");
        let thumbnails = output(&model, "well-thumbnails");
        let sites = output(&model, "images-site");
        let wells = output(&model, "images-well");
        let qc = serde_json::json!({"mean_intensity": 1.5, "std_intensity": 0.5,
            "saturated_fraction": 0.01, "experiment_id": "E"});
        for site in 1..=4 {
            for channel in 1..=6 {
                let key = format!("E/1/{well}/{site}/{channel}");
                model.observe_image(0, &key, 1000);
                model.observe_output(0, metrics, &key, Some(&qc));
            }
            let key = format!("E/1/{well}/{site}");
            model.observe_output(0, sites, &key, None);
            let cells = serde_json::json!({"cell_count": 120});
            model.observe_output(0, features, &key, Some(&cells));
        }
        let key = format!("E/1/{well}");
        model.observe_output(0, wells, &key, None);
        model.observe_output(0, thumbnails, &key, Some(&serde_json::json!({"sites": 4})));
        let plate = model.plate_detail("E", 1).unwrap();
        let state = plate
            .wells
            .iter()
            .find(|w| w.well == well.to_string())
            .unwrap();
        assert_eq!(state.state, LevelState::Complete, "{state:?}");
        assert_eq!(state.qc["mean_intensity"], 1.5);
        assert_eq!(state.qc["cell_count"], 120.0);
        let held = &model.experiments["E"].plates[&1].wells[&well];
        let bytes = size_of::<Well>() + size_of::<WellId>() + held.heap_bytes();
        // The figure ARCHITECTURE.md states.
        assert!(bytes <= 768, "{bytes} bytes a well");
    }

    #[test]
    fn a_plate_has_the_geometry_of_the_smallest_standard_plate_holding_its_layout() {
        for (wells, geometry, in_use) in [(10, 96, 10), (308, 384, 308), (1536, 1536, 1536)] {
            let mut model = reference();
            model.observe_layout(0, synthetic::layout("E", 1, wells, 1, 1).unwrap());
            let plate = model.plate_detail("E", 1).unwrap();
            assert_eq!(usize::from(plate.summary.geometry.wells), geometry);
            assert_eq!(plate.wells.len(), geometry);
            let waiting = plate
                .wells
                .iter()
                .filter(|w| w.state == LevelState::Waiting)
                .count();
            assert_eq!(waiting, in_use, "{wells} wells");
        }
    }

    #[test]
    fn the_oldest_experiment_and_dead_letter_go_first_past_the_limits() {
        let mut model = reference();
        model.limits.experiments = 2;
        model.limits.dead_letters = 1;
        for id in ["A", "B", "C"] {
            model.observe_image(0, &format!("{id}/1/B02/1/1"), 1);
        }
        let list = model.experiment_list(&Default::default());
        let ids: Vec<&str> = list.experiments.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["B", "C"]);
        assert_eq!((list.total, list.evicted), (2, 1));
        let second = model.experiment_list(&ExperimentQuery {
            offset: Some(1),
            limit: Some(1),
        });
        let ids: Vec<&str> = second.experiments.iter().map(|e| e.id.as_str()).collect();
        assert_eq!((ids, second.total, second.offset), (vec!["C"], 2, 1));
        for key in ["C/1/B02/1/1", "C/1/B03/1/1"] {
            model.observe_dead_letter(
                0,
                DeadLetterEntry {
                    id: key.into(),
                    dag: "microscopy-reference".into(),
                    node: "image-metrics".into(),
                    reason: "HTTP 500".into(),
                    key: Some(key.into()),
                    experiment: None,
                    plate: None,
                    well: None,
                    site: None,
                    attempts: 6,
                    source_topic: None,
                    source_partition: None,
                    source_offset: None,
                    trace_id: None,
                    timestamp_ms: 5,
                },
            );
        }
        let page = model.dead_letter_page(&Default::default());
        assert_eq!((page.total, page.evicted), (1, 1));
        assert_eq!(page.dead_letters[0].well.as_deref(), Some("B03"));
        assert_eq!(page.dead_letters[0].site, Some(1));
        let plate = model.plate_detail("C", 1).unwrap();
        let b03 = plate.wells.iter().find(|w| w.well == "B03").unwrap();
        assert_eq!(b03.state, LevelState::DeadLettered);
    }
}
