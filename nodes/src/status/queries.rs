//! The view's answers: the model read as the status API's bodies.

use std::collections::BTreeMap;

use wellspring_protocol::ExperimentLayout;
use wellspring_protocol::keys::WellId;
use wellspring_protocol::records::PlateLayout;
use wellspring_protocol::status::{
    DEFAULT_DEAD_LETTER_LIMIT, DeadLetterPage, DeadLetterQuery, ExperimentDetail, ExperimentList,
    ExperimentQuery, ExperimentSummary, Geometry, LevelProgress, LevelState, MAX_DEAD_LETTER_LIMIT,
    MAX_EXPERIMENT_LIMIT, PlateDetail, PlateSummary, Progress, QcRange, SiteStatus, TaskState,
    WellStatus, WellTask,
};

use super::model::{Experiment, Model, Plate, Well};
use super::shape::{DagShape, Level};

/// What one experiment's wells look like: sites and channels, from its layout.
#[derive(Clone, Copy)]
struct Shape {
    sites: u16,
    channels: u8,
}

impl Shape {
    fn of(layout: Option<&ExperimentLayout>) -> Option<Shape> {
        layout.map(|l| Shape {
            sites: l.sites_per_well,
            channels: l.channels_per_site,
        })
    }

    fn channel_mask(self) -> u64 {
        if self.channels >= 64 {
            u64::MAX
        } else {
            (1u64 << self.channels) - 1
        }
    }

    /// Members of a level within one well.
    fn members(self, level: Level) -> u32 {
        match level {
            Level::Channel => u32::from(self.sites) * u32::from(self.channels),
            Level::Site => u32::from(self.sites),
            _ => 1,
        }
    }
}

/// Members of `level` in the whole experiment.
fn expected(layout: &ExperimentLayout, level: Level) -> u64 {
    let wells: u64 = layout.plates.iter().map(|p| p.wells.len() as u64).sum();
    let sites = u64::from(layout.sites_per_well);
    match level {
        Level::Channel => layout.image_count(),
        Level::Site => wells * sites,
        Level::Well => wells,
        Level::Plate => layout.plates.len() as u64,
        Level::Experiment => 1,
    }
}

fn plate_wells_expected(layout: &PlateLayout, level: Level, shape: Shape) -> u64 {
    layout.wells.len() as u64 * u64::from(shape.members(level))
}

/// The state of a well, and its task states.
fn well_state(dag: &DagShape, shape: Option<Shape>, well: &Well) -> LevelState {
    let images_in = !well.images.is_empty();
    let complete = match shape {
        Some(shape) => {
            let images = (0..usize::from(shape.sites))
                .all(|s| well.images.word(s) & shape.channel_mask() == shape.channel_mask());
            let aggregates = dag.outputs.iter().enumerate().all(|(i, o)| {
                o.task
                    || !o.level.in_well()
                    || o.level == Level::Channel
                    || well.outputs.get(i).map_or(0, |b| b.len()) >= shape.members(o.level)
            });
            images && aggregates
        }
        None => dag.outputs.iter().enumerate().any(|(i, o)| {
            !o.task && o.level == Level::Well && well.outputs.get(i).is_some_and(|b| b.contains(0))
        }),
    };
    let incomplete = well.incomplete || !well.incomplete_sites.is_empty();
    if incomplete && !complete {
        LevelState::Incomplete
    } else if !well.dead.is_empty() || well.dead_letters > 0 {
        LevelState::DeadLettered
    } else if complete {
        LevelState::Complete
    } else if images_in || well.outputs.iter().any(|b| !b.is_empty()) {
        LevelState::Partial
    } else {
        LevelState::Waiting
    }
}

fn well_tasks(dag: &DagShape, shape: Shape, well: &Well) -> Vec<WellTask> {
    dag.outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| o.task && o.level.in_well())
        .map(|(i, o)| {
            let expected = shape.members(o.level);
            let bits = well.outputs.get(i);
            let present = bits.map_or(0, |b| b.len());
            let mut dead: Vec<u32> = well
                .dead
                .iter()
                .filter(|(output, bit)| {
                    usize::from(*output) == i && !bits.is_some_and(|b| b.contains(*bit as usize))
                })
                .map(|(_, bit)| *bit)
                .collect();
            dead.sort_unstable();
            dead.dedup();
            let dead_lettered = dead.len() as u32;
            let state = if present >= expected {
                TaskState::Done
            } else if present + dead_lettered >= expected {
                TaskState::DeadLettered
            } else if !well.images.is_empty() || present > 0 {
                TaskState::InFlight
            } else {
                TaskState::Waiting
            };
            WellTask {
                task: o.name.clone(),
                state,
                expected,
                present,
                dead_lettered,
            }
        })
        .collect()
}

fn sites(dag: &DagShape, shape: Shape, well: &Well) -> Vec<SiteStatus> {
    let site_aggregate = dag
        .outputs
        .iter()
        .position(|o| !o.task && o.level == Level::Site);
    (1..=shape.sites)
        .map(|site| {
            let index = usize::from(site) - 1;
            let word = well.images.word(index);
            let (present, missing): (Vec<u8>, Vec<u8>) =
                (1..=shape.channels).partition(|c| word & (1 << (c - 1)) != 0);
            let aggregated = site_aggregate
                .is_none_or(|i| well.outputs.get(i).is_some_and(|b| b.contains(index)));
            let state = if missing.is_empty() && aggregated {
                LevelState::Complete
            } else if well.incomplete_sites.contains(index) {
                LevelState::Incomplete
            } else if !present.is_empty() {
                LevelState::Partial
            } else {
                LevelState::Waiting
            };
            SiteStatus {
                site,
                state,
                channels_present: present,
                channels_missing: missing,
            }
        })
        .collect()
}

fn geometry(layout: Option<&PlateLayout>, plate: &Plate) -> Geometry {
    let wells: Vec<WellId> = match layout {
        Some(layout) => layout.wells.clone(),
        None => plate.wells.keys().copied().collect(),
    };
    let rows = wells.iter().map(|w| w.row() + 1).max().unwrap_or(1);
    let columns = wells.iter().map(|w| w.column()).max().unwrap_or(1);
    Geometry::fitting(rows, columns)
}

fn aggregate_present(
    dag: &DagShape,
    level: Level,
    present: impl Fn(usize) -> bool,
) -> Option<bool> {
    dag.outputs
        .iter()
        .position(|o| !o.task && o.level == level)
        .map(present)
}

impl Model {
    fn dag_of(&self, experiment: &Experiment) -> &DagShape {
        &self.dags[experiment.dag]
    }

    fn plate_state(&self, experiment: &Experiment, plate: &Plate) -> LevelState {
        let dag = self.dag_of(experiment);
        let done = aggregate_present(dag, Level::Plate, |i| plate.outputs.contains(i));
        // A plate with a well reported incomplete needs attention before its own,
        // longer, timeout passes.
        let holes = plate
            .wells
            .values()
            .any(|w| w.incomplete || !w.incomplete_sites.is_empty());
        if done == Some(true) {
            LevelState::Complete
        } else if plate.incomplete || holes {
            LevelState::Incomplete
        } else if plate.images > 0 {
            LevelState::Partial
        } else {
            LevelState::Waiting
        }
    }

    fn experiment_state(&self, experiment: &Experiment) -> LevelState {
        let dag = self.dag_of(experiment);
        let done = aggregate_present(dag, Level::Experiment, |i| {
            experiment.outputs[i].present > 0
        });
        let holes = experiment
            .plates
            .values()
            .any(|p| self.plate_state(experiment, p) == LevelState::Incomplete);
        if done == Some(true) {
            LevelState::Complete
        } else if experiment.incomplete || holes {
            LevelState::Incomplete
        } else if experiment.images > 0 {
            LevelState::Partial
        } else {
            LevelState::Waiting
        }
    }

    fn summary(&self, id: &str, experiment: &Experiment) -> ExperimentSummary {
        let dag = self.dag_of(experiment);
        let layout = experiment.layout.as_ref();
        let expected_at = |level| layout.map_or(0, |l| expected(l, level));
        let mut levels = vec![LevelProgress {
            name: "images".into(),
            topic: dag.images_topic.clone().unwrap_or_default(),
            level: Level::Channel.name().into(),
            task: false,
            expected: expected_at(Level::Channel),
            present: experiment.images,
            dead_lettered: 0,
        }];
        levels.extend(
            dag.outputs
                .iter()
                .zip(&experiment.outputs)
                .map(|(o, c)| LevelProgress {
                    name: o.name.clone(),
                    topic: o.topic.clone(),
                    level: o.level.name().into(),
                    task: o.task,
                    expected: expected_at(o.level),
                    present: c.present,
                    dead_lettered: c.dead,
                }),
        );
        ExperimentSummary {
            id: id.to_owned(),
            dag: dag.dag.name.clone(),
            state: self.experiment_state(experiment),
            layout_known: layout.is_some(),
            plates: layout.map_or(experiment.plates.len(), |l| l.plates.len()) as u32,
            levels,
            dead_letters: experiment.dead_letters,
            incomplete_reports: experiment.incomplete_reports,
            first_image_ms: experiment.first_ms,
            last_image_ms: experiment.last_ms,
        }
    }

    /// `GET /api/experiments`, by id.
    /// A page of the experiments, by id (see [`ExperimentQuery`]).
    pub fn experiment_list(&self, query: &ExperimentQuery) -> ExperimentList {
        let mut ids: Vec<&String> = self.experiments.keys().collect();
        ids.sort();
        let offset = query.offset.unwrap_or(0);
        let limit = query
            .limit
            .unwrap_or(MAX_EXPERIMENT_LIMIT)
            .min(MAX_EXPERIMENT_LIMIT);
        let experiments: Vec<ExperimentSummary> = ids
            .iter()
            .skip(offset)
            .take(limit)
            .filter_map(|id| self.experiments.get(*id).map(|e| self.summary(id, e)))
            .collect();
        ExperimentList {
            experiments,
            total: ids.len(),
            offset,
            evicted: self.experiments_evicted,
            view_error: None,
        }
    }

    fn plate_numbers(experiment: &Experiment) -> Vec<u32> {
        let mut numbers: Vec<u32> = experiment.plates.keys().copied().collect();
        if let Some(layout) = &experiment.layout {
            numbers.extend(layout.plates.iter().map(|p| p.plate));
        }
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    fn plate_summary(&self, experiment: &Experiment, number: u32, plate: &Plate) -> PlateSummary {
        let dag = self.dag_of(experiment);
        let layout = experiment.layout.as_ref();
        let plate_layout = layout.and_then(|l| l.plate(number));
        let shape = Shape::of(layout);
        let mut wells_by_state: BTreeMap<LevelState, u32> = BTreeMap::new();
        let in_use: Vec<WellId> = match plate_layout {
            Some(p) => p.wells.clone(),
            None => {
                let mut wells: Vec<WellId> = plate.wells.keys().copied().collect();
                wells.sort_unstable();
                wells
            }
        };
        let empty = Well::default();
        for well in &in_use {
            let state = well_state(dag, shape, plate.wells.get(well).unwrap_or(&empty));
            *wells_by_state.entry(state).or_default() += 1;
        }
        let outside = plate
            .wells
            .keys()
            .filter(|w| plate_layout.is_some_and(|p| !p.has_well(**w)))
            .count();
        if outside > 0 {
            // Images of wells the layout does not name: shown as such, not dropped.
            *wells_by_state.entry(LevelState::Partial).or_default() += outside as u32;
        }
        PlateSummary {
            plate: number,
            barcode: plate_layout.and_then(|p| p.barcode.clone()),
            state: self.plate_state(experiment, plate),
            geometry: geometry(plate_layout, plate),
            wells_in_use: in_use.len() as u32,
            wells_by_state,
            images: Progress {
                expected: match (plate_layout, shape) {
                    (Some(p), Some(s)) => plate_wells_expected(p, Level::Channel, s),
                    _ => 0,
                },
                present: plate.images,
            },
            first_image_ms: plate.first_ms,
            last_image_ms: plate.last_ms,
        }
    }

    /// `GET /api/experiments/{id}`.
    pub fn experiment_detail(&self, id: &str) -> Option<ExperimentDetail> {
        let experiment = self.experiments.get(id)?;
        let empty = Plate::default();
        let plate_list = Self::plate_numbers(experiment)
            .into_iter()
            .map(|n| self.plate_summary(experiment, n, experiment.plates.get(&n).unwrap_or(&empty)))
            .collect();
        let layout = experiment.layout.as_ref();
        Some(ExperimentDetail {
            summary: self.summary(id, experiment),
            sites_per_well: layout.map_or(0, |l| l.sites_per_well),
            channels_per_site: layout.map_or(0, |l| l.channels_per_site),
            plate_list,
            incomplete: experiment.reports.iter().cloned().collect(),
        })
    }

    /// `GET /api/experiments/{id}/plates/{n}`: `None` when neither the layout nor any
    /// record names the plate.
    pub fn plate_detail(&self, id: &str, number: u32) -> Option<PlateDetail> {
        let experiment = self.experiments.get(id)?;
        let layout = experiment.layout.as_ref();
        let plate_layout = layout.and_then(|l| l.plate(number));
        let empty = Plate::default();
        let plate = match experiment.plates.get(&number) {
            Some(plate) => plate,
            None if plate_layout.is_some() => &empty,
            None => return None,
        };
        let dag = self.dag_of(experiment);
        let shape = Shape::of(layout);
        let summary = self.plate_summary(experiment, number, plate);
        let geometry = summary.geometry;
        let mut qc_ranges: BTreeMap<String, QcRange> = BTreeMap::new();
        let mut wells = Vec::with_capacity(usize::from(geometry.wells));
        let no_well = Well::default();
        for row in 0..geometry.rows {
            for column in 1..=geometry.columns {
                let Some(id) = WellId::new(row, column) else {
                    continue;
                };
                let seen = plate.wells.get(&id);
                let in_use = plate_layout.map_or(seen.is_some(), |p| p.has_well(id));
                if !in_use && seen.is_none() {
                    wells.push(WellStatus::unseen(
                        id.to_string(),
                        row,
                        column,
                        LevelState::NotInUse,
                    ));
                    continue;
                }
                let well = seen.unwrap_or(&no_well);
                let qc: BTreeMap<String, f64> = well
                    .qc
                    .iter()
                    .filter(|q| q.count > 0)
                    .filter_map(|q| {
                        let name = self.metrics.get(usize::from(q.metric))?;
                        Some((name.clone(), q.sum / f64::from(q.count)))
                    })
                    .collect();
                for (name, value) in &qc {
                    let range = qc_ranges.entry(name.clone()).or_insert(QcRange {
                        min: *value,
                        max: *value,
                    });
                    range.min = range.min.min(*value);
                    range.max = range.max.max(*value);
                }
                wells.push(WellStatus {
                    well: id.to_string(),
                    row,
                    column,
                    state: well_state(dag, shape, well),
                    images: Progress {
                        expected: shape.map_or(0, |s| u64::from(s.members(Level::Channel))),
                        present: u64::from(well.images.len()),
                    },
                    sites: shape.map(|s| sites(dag, s, well)).unwrap_or_default(),
                    tasks: shape.map(|s| well_tasks(dag, s, well)).unwrap_or_default(),
                    qc,
                    dead_letters: well.dead_letters,
                    first_image_ms: well.first_ms,
                    last_image_ms: well.last_ms,
                });
            }
        }
        let mut summary = summary;
        let not_in_use = wells
            .iter()
            .filter(|w| w.state == LevelState::NotInUse)
            .count() as u32;
        summary
            .wells_by_state
            .insert(LevelState::NotInUse, not_in_use);
        summary.wells_by_state.retain(|_, n| *n > 0);
        Some(PlateDetail {
            experiment: id.to_owned(),
            summary,
            qc: plate.qc.clone(),
            qc_ranges,
            wells,
        })
    }

    /// `GET /api/dead-letters`: the matches, oldest first, one page of them.
    pub fn dead_letter_page(&self, query: &DeadLetterQuery) -> DeadLetterPage {
        let filter = query.filter();
        let matches: Vec<_> = self
            .dead_letters
            .iter()
            .filter(|d| filter.matches(d))
            .collect();
        let offset = query.offset.unwrap_or(0);
        let limit = query
            .limit
            .unwrap_or(DEFAULT_DEAD_LETTER_LIMIT)
            .min(MAX_DEAD_LETTER_LIMIT);
        DeadLetterPage {
            total: matches.len(),
            offset,
            dead_letters: matches
                .into_iter()
                .skip(offset)
                .take(limit)
                .cloned()
                .collect(),
            evicted: self.dead_letters_evicted,
        }
    }
}
