//! What a DAG's topics mean to the status view: which topic carries the images, which the
//! layouts, and for each publish topic the level of its records and whether they are a
//! task's outputs or an aggregate.

use wellspring_protocol::Dag;
use wellspring_protocol::keys::WellId;
use wellspring_protocol::spec::NodeKind;

/// A level of the imaging hierarchy, by the number of parts of its key
/// (`EXP/1/B02/2/5` is a channel: 5 parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Experiment = 1,
    Plate = 2,
    Well = 3,
    Site = 4,
    Channel = 5,
}

impl Level {
    pub fn from_depth(depth: usize) -> Option<Level> {
        Some(match depth {
            1 => Level::Experiment,
            2 => Level::Plate,
            3 => Level::Well,
            4 => Level::Site,
            5 => Level::Channel,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Experiment => "experiment",
            Level::Plate => "plate",
            Level::Well => "well",
            Level::Site => "site",
            Level::Channel => "channel",
        }
    }

    /// One level up (a grouping's output), the experiment staying the experiment.
    fn up(self) -> Level {
        Level::from_depth((self as usize).saturating_sub(1).max(1)).unwrap_or(Level::Experiment)
    }

    /// At or below a well: kept per well.
    pub fn in_well(self) -> bool {
        self >= Level::Well
    }
}

/// One publish topic of a DAG.
#[derive(Debug, Clone)]
pub struct Output {
    /// The node it publishes (a task's name for task outputs: `image-metrics`; a
    /// grouping's for aggregates: `images-site`).
    pub name: String,
    pub topic: String,
    pub level: Level,
    pub task: bool,
}

/// The topics of one DAG as the view reads them.
#[derive(Debug, Clone)]
pub struct DagShape {
    pub dag: Dag,
    pub images_topic: Option<String>,
    pub metadata_topic: Option<String>,
    pub outputs: Vec<Output>,
}

impl DagShape {
    pub fn of(dag: &Dag) -> DagShape {
        let mut images_topic = None;
        let mut metadata_topic = None;
        let mut outputs = Vec::new();
        for node in &dag.nodes {
            match &node.kind {
                NodeKind::TopicStream { topic } => {
                    images_topic.get_or_insert_with(|| topic.clone());
                }
                NodeKind::TopicTable { topic } => {
                    metadata_topic.get_or_insert_with(|| topic.clone());
                }
                NodeKind::Publish { stream, topic } => {
                    let task = matches!(
                        dag.node(stream).map(|n| &n.kind),
                        Some(NodeKind::ExternalTask { .. })
                    );
                    outputs.push(Output {
                        name: stream.clone(),
                        topic: topic.clone(),
                        level: level_of(dag, stream, 0),
                        task,
                    });
                }
                _ => {}
            }
        }
        // Images first, then up the hierarchy; at each level the aggregate, then its tasks.
        outputs.sort_by_key(|o| (std::cmp::Reverse(o.level), o.task, o.name.clone()));
        DagShape {
            dag: dag.clone(),
            images_topic,
            metadata_topic,
            outputs,
        }
    }

    /// Every topic the view reads.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.images_topic.iter().cloned().collect();
        topics.extend(self.metadata_topic.iter().cloned());
        topics.extend(self.outputs.iter().map(|o| o.topic.clone()));
        topics.push(self.dag.settings.dead_letter_topic.clone());
        topics.push(self.dag.settings.incomplete_topic.clone());
        topics.sort();
        topics.dedup();
        topics
    }
}

/// The level of a node's records: images are channels, each grouping one level up, a
/// task or a publish keeps its stream's level.
fn level_of(dag: &Dag, node: &str, depth: usize) -> Level {
    if depth > dag.nodes.len() {
        return Level::Channel;
    }
    match dag.node(node).map(|n| &n.kind) {
        Some(NodeKind::StreamOperation(op)) => {
            let stream = op.inputs.iter().find(|input| {
                !matches!(
                    dag.node(input).map(|n| &n.kind),
                    Some(NodeKind::TopicTable { .. })
                )
            });
            stream.map_or(Level::Experiment, |s| level_of(dag, s, depth + 1).up())
        }
        Some(NodeKind::ExternalTask { stream, .. } | NodeKind::Publish { stream, .. }) => {
            level_of(dag, stream, depth + 1)
        }
        _ => Level::Channel,
    }
}

/// A record's key, split into the hierarchy's parts.
/// The highest plate number the view keeps (layouts number plates from 1).
pub const MAX_PLATE: u32 = 100_000;
/// The highest site number the view keeps (imagers take a few to a few hundred fields).
pub const MAX_SITE: u16 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPath<'a> {
    pub experiment: &'a str,
    pub plate: Option<u32>,
    pub well: Option<WellId>,
    pub site: Option<u16>,
    pub channel: Option<u8>,
}

impl<'a> KeyPath<'a> {
    /// `None` when a part does not parse (a key that is not of the hierarchy).
    /// A key outside the bounds ([`MAX_PLATE`], [`MAX_SITE`]) is not a place the view
    /// keeps: a bogus site number would otherwise cost its well a bit per channel of every
    /// site before it (512 KiB for site 65,535), a bogus plate number a plate.
    pub fn parse(key: &'a str) -> Option<KeyPath<'a>> {
        let mut parts = key.split('/');
        let experiment = parts.next().filter(|e| !e.is_empty())?;
        let mut path = KeyPath {
            experiment,
            plate: None,
            well: None,
            site: None,
            channel: None,
        };
        if let Some(plate) = parts.next() {
            path.plate = Some(plate.parse().ok().filter(|p| (1..=MAX_PLATE).contains(p))?);
        }
        if let Some(well) = parts.next() {
            path.well = Some(WellId::parse(well).ok()?);
        }
        if let Some(site) = parts.next() {
            path.site = Some(site.parse().ok().filter(|s| (1..=MAX_SITE).contains(s))?);
        }
        if let Some(channel) = parts.next() {
            path.channel = Some(channel.parse().ok().filter(|c| (1..=64).contains(c))?);
        }
        if parts.next().is_some() {
            return None;
        }
        Some(path)
    }

    pub fn level(&self) -> Level {
        match (self.plate, self.well, self.site, self.channel) {
            (None, ..) => Level::Experiment,
            (Some(_), None, ..) => Level::Plate,
            (Some(_), Some(_), None, _) => Level::Well,
            (Some(_), Some(_), Some(_), None) => Level::Site,
            _ => Level::Channel,
        }
    }

    /// The bit of this key within its well: a site's channels share one 64-bit word
    /// (channels are 1 to 64), sites follow each other.
    pub fn bit_in_well(&self) -> Option<usize> {
        let site = usize::from(self.site?) - 1;
        Some(match self.channel {
            Some(channel) => site * 64 + usize::from(channel) - 1,
            None => site,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wellspring_actors::FunctionRegistry;
    use wellspring_protocol::SpecFormat;

    #[test]
    fn the_reference_dag_reads_as_images_aggregates_and_task_outputs() {
        let dag = Dag::load(
            crate::demo::REFERENCE_DAG,
            SpecFormat::Yaml,
            &FunctionRegistry::with_builtins(),
        )
        .unwrap();
        let shape = DagShape::of(&dag);
        assert_eq!(shape.images_topic.as_deref(), Some("images_channel"));
        assert_eq!(shape.metadata_topic.as_deref(), Some("experiment_metadata"));
        let found: Vec<(&str, Level, bool)> = shape
            .outputs
            .iter()
            .map(|o| (o.topic.as_str(), o.level, o.task))
            .collect();
        assert_eq!(
            found,
            [
                ("image_metrics", Level::Channel, true),
                ("images_site", Level::Site, false),
                ("site_features", Level::Site, true),
                ("images_well", Level::Well, false),
                ("well_thumbnails", Level::Well, true),
                ("images_plate", Level::Plate, false),
                ("plate_features", Level::Plate, true),
                ("experiments", Level::Experiment, false),
            ]
        );
    }

    #[test]
    fn keys_split_into_their_parts_or_not_at_all() {
        let path = KeyPath::parse("EXP-1/3/B02/2/5").unwrap();
        assert_eq!(path.level(), Level::Channel);
        assert_eq!(path.bit_in_well(), Some(64 + 4));
        assert_eq!(KeyPath::parse("EXP-1/3").unwrap().level(), Level::Plate);
        assert_eq!(KeyPath::parse("EXP-1").unwrap().level(), Level::Experiment);
        assert!(KeyPath::parse("EXP-1/x").is_none());
        assert!(KeyPath::parse("EXP-1/1/Z99").is_none());
        assert!(KeyPath::parse("a/1/B02/1/1/1").is_none());
        // Beyond the bounds, not kept: a site's bits would cost its well 512 KiB.
        assert!(KeyPath::parse("EXP-1/1/B02/65535/1").is_none());
        assert!(KeyPath::parse("EXP-1/4000000000/B02/1/1").is_none());
        assert!(KeyPath::parse("EXP-1/100000/B02/1024/64").is_some());
    }
}
