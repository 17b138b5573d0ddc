//! The four levels chained in one place: what a DAG does across shards and topics, done
//! in one process. Used by the property tests and the aggregation benchmark.

use wellspring_protocol::{
    ChannelImage, ExperimentId, ExperimentRecord, IncompleteRecord, PlateKey, PlateRecord, SiteKey,
    SiteRecord, WellKey, WellRecord,
};

use super::{
    Aggregator, AggregatorConfig, Emitted, ExperimentLevel, Ingested, Layouts, PlateLevel,
    Rejection, SiteLevel, WellLevel,
};

/// One record emitted by some level.
#[derive(Debug)]
pub enum LevelOutput<'a> {
    Site(&'a SiteRecord),
    Well(&'a WellRecord),
    Plate(&'a PlateRecord),
    Experiment(&'a ExperimentRecord),
    Incomplete(&'a IncompleteRecord),
    Rejected { key: &'a str, reason: &'a str },
}

pub struct Hierarchy {
    pub sites: Aggregator<SiteLevel>,
    pub wells: Aggregator<WellLevel>,
    pub plates: Aggregator<PlateLevel>,
    pub experiments: Aggregator<ExperimentLevel>,
    site_out: Vec<Emitted<SiteKey, SiteRecord>>,
    well_out: Vec<Emitted<WellKey, WellRecord>>,
    plate_out: Vec<Emitted<PlateKey, PlateRecord>>,
    experiment_out: Vec<Emitted<ExperimentId, ExperimentRecord>>,
}

fn forward<K, O>(
    emitted: Emitted<K, O>,
    sink: &mut dyn FnMut(LevelOutput<'_>),
    wrap: for<'o> fn(&'o O) -> LevelOutput<'o>,
) -> Option<O> {
    match emitted {
        Emitted::Complete { output, .. } => {
            sink(wrap(&output));
            Some(output)
        }
        Emitted::Incomplete(record) => {
            sink(LevelOutput::Incomplete(&record));
            None
        }
        Emitted::Rejected { key, reason } => {
            sink(LevelOutput::Rejected {
                key: &key,
                reason: &reason,
            });
            None
        }
    }
}

impl Hierarchy {
    pub fn new(config: AggregatorConfig) -> Self {
        Self {
            sites: Aggregator::new(config),
            wells: Aggregator::new(config),
            plates: Aggregator::new(config),
            experiments: Aggregator::new(config),
            site_out: Vec::new(),
            well_out: Vec::new(),
            plate_out: Vec::new(),
            experiment_out: Vec::new(),
        }
    }

    /// Feeds one channel image through all four levels; `sink` sees every emitted record.
    pub fn ingest(
        &mut self,
        image: ChannelImage,
        layouts: &dyn Layouts,
        now_ms: i64,
        sink: &mut dyn FnMut(LevelOutput<'_>),
    ) -> Result<Ingested, Rejection> {
        let result = self
            .sites
            .ingest(image, layouts, now_ms, &mut self.site_out);
        self.propagate(layouts, now_ms, sink);
        result
    }

    /// The layout of an experiment arrived: every level checks what waited for it.
    pub fn layout_arrived(
        &mut self,
        experiment: &ExperimentId,
        layouts: &dyn Layouts,
        now_ms: i64,
        sink: &mut dyn FnMut(LevelOutput<'_>),
    ) {
        self.sites
            .layout_arrived(experiment, layouts, now_ms, &mut self.site_out);
        self.wells
            .layout_arrived(experiment, layouts, now_ms, &mut self.well_out);
        self.plates
            .layout_arrived(experiment, layouts, now_ms, &mut self.plate_out);
        self.experiments
            .layout_arrived(experiment, layouts, now_ms, &mut self.experiment_out);
        self.propagate(layouts, now_ms, sink);
    }

    pub fn tick(
        &mut self,
        layouts: &dyn Layouts,
        now_ms: i64,
        sink: &mut dyn FnMut(LevelOutput<'_>),
    ) {
        self.sites.tick(layouts, now_ms, &mut self.site_out);
        self.wells.tick(layouts, now_ms, &mut self.well_out);
        self.plates.tick(layouts, now_ms, &mut self.plate_out);
        self.experiments
            .tick(layouts, now_ms, &mut self.experiment_out);
        self.propagate(layouts, now_ms, sink);
    }

    fn propagate(
        &mut self,
        layouts: &dyn Layouts,
        now_ms: i64,
        sink: &mut dyn FnMut(LevelOutput<'_>),
    ) {
        // Upper levels reject nothing a lower level emitted for a known layout; what they
        // do reject is reported through the sink like any other rejection.
        let report = |sink: &mut dyn FnMut(LevelOutput<'_>), r: Result<Ingested, Rejection>| {
            if let Err(e) = r {
                sink(LevelOutput::Rejected {
                    key: "",
                    reason: &e.to_string(),
                });
            }
        };
        // Drain into the next level, keeping each buffer's capacity for the next event.
        let mut sites = std::mem::take(&mut self.site_out);
        for emitted in sites.drain(..) {
            if let Some(site) = forward(emitted, sink, |o| LevelOutput::Site(o)) {
                let r = self.wells.ingest(site, layouts, now_ms, &mut self.well_out);
                report(sink, r);
            }
        }
        self.site_out = sites;
        let mut wells = std::mem::take(&mut self.well_out);
        for emitted in wells.drain(..) {
            if let Some(well) = forward(emitted, sink, |o| LevelOutput::Well(o)) {
                let r = self
                    .plates
                    .ingest(well, layouts, now_ms, &mut self.plate_out);
                report(sink, r);
            }
        }
        self.well_out = wells;
        let mut plates = std::mem::take(&mut self.plate_out);
        for emitted in plates.drain(..) {
            if let Some(plate) = forward(emitted, sink, |o| LevelOutput::Plate(o)) {
                let r = self
                    .experiments
                    .ingest(plate, layouts, now_ms, &mut self.experiment_out);
                report(sink, r);
            }
        }
        self.plate_out = plates;
        for emitted in self.experiment_out.drain(..) {
            forward(emitted, sink, |o| LevelOutput::Experiment(o));
        }
    }
}
