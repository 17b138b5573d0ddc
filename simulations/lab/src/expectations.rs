//! What a run must put out for one experiment, worked out from its layout and the DAG
//! that ran: which keys each output topic must carry, and whether they are aggregates
//! (exactly once) or task outputs (present or dead-lettered).

use std::collections::{BTreeMap, BTreeSet};

use wellspring_protocol::spec::{NodeKind, builtins};
use wellspring_protocol::{ChannelImage, Dag, ExperimentLayout, PlateKey, WellKey};

/// What one output topic should carry.
#[derive(Debug, Clone)]
pub struct Expected {
    pub label: String,
    pub topic: String,
    pub keys: BTreeSet<String>,
    /// Aggregates must appear exactly once; task outputs may instead be dead-lettered,
    /// and repeat for repeated inputs (with the same id, for consumers to drop).
    pub aggregate: bool,
}

/// A level of the imaging hierarchy: what one record of a stream is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Channel,
    Site,
    Well,
    Plate,
    Experiment,
}

impl Level {
    fn of_grouping(function: &str) -> Option<Level> {
        match function {
            builtins::IMAGES_SITE_GROUPING => Some(Level::Site),
            builtins::SITES_WELL_GROUPING => Some(Level::Well),
            builtins::WELLS_PLATE_GROUPING => Some(Level::Plate),
            builtins::PLATES_EXPERIMENT_GROUPING => Some(Level::Experiment),
            _ => None,
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Level::Channel => "channel images",
            Level::Site => "sites",
            Level::Well => "wells",
            Level::Plate => "plates",
            Level::Experiment => "experiments",
        }
    }
}

/// Every key of every level of `layout`.
struct LevelKeys(BTreeMap<Level, BTreeSet<String>>);

impl LevelKeys {
    fn of(layout: &ExperimentLayout) -> Self {
        let mut keys: BTreeMap<Level, BTreeSet<String>> = BTreeMap::new();
        let mut add = |level, key: String| keys.entry(level).or_default().insert(key);
        for plate in &layout.plates {
            let plate_key = PlateKey {
                experiment: layout.experiment.clone(),
                plate: plate.plate,
            };
            add(Level::Plate, plate_key.to_string());
            for &well in &plate.wells {
                let well_key = WellKey {
                    experiment: layout.experiment.clone(),
                    plate: plate.plate,
                    well,
                };
                add(Level::Well, well_key.to_string());
                for site in 1..=layout.sites_per_well {
                    let site_key = format!("{well_key}/{site}");
                    for channel in 1..=layout.channels_per_site {
                        add(Level::Channel, format!("{site_key}/{channel}"));
                    }
                    add(Level::Site, site_key);
                }
            }
        }
        add(Level::Experiment, layout.experiment.to_string());
        Self(keys)
    }

    fn get(&self, level: Level) -> BTreeSet<String> {
        self.0.get(&level).cloned().unwrap_or_default()
    }
}

/// The outputs of the reference DAG for one experiment.
pub fn reference_expectations(layout: &ExperimentLayout) -> Vec<Expected> {
    let keys = LevelKeys::of(layout);
    let e = |label: &str, topic: &str, level, aggregate| Expected {
        label: label.to_owned(),
        topic: topic.to_owned(),
        keys: keys.get(level),
        aggregate,
    };
    vec![
        e("image metrics", "image_metrics", Level::Channel, false),
        e("sites", "images_site", Level::Site, true),
        e("site features", "site_features", Level::Site, false),
        e("wells", "images_well", Level::Well, true),
        e("well thumbnails", "well_thumbnails", Level::Well, false),
        e("plates", "images_plate", Level::Plate, true),
        e("plate features", "plate_features", Level::Plate, false),
        e("experiments", "experiments", Level::Experiment, true),
    ]
}

/// What a DAG's published topics must carry for one experiment, and the topics whose
/// content cannot be known from the layout (what a registered function puts out).
#[derive(Debug, Clone, Default)]
pub struct DagExpectations {
    pub expected: Vec<Expected>,
    /// Each published topic left unchecked, with why.
    pub unchecked: Vec<(String, String)>,
}

/// Works out from `dag` what each of its `publish` nodes must write for `layout`: a
/// topic stream of channel images is at the channel level, each built-in grouping one
/// level up, and a task's outputs at its input's level. An aggregate published straight
/// from a grouping must appear exactly once; anything that went through a task or came
/// straight from an input topic must be present (or dead-lettered).
pub fn dag_expectations(dag: &Dag, layout: &ExperimentLayout) -> DagExpectations {
    let keys = LevelKeys::of(layout);
    let by_name: BTreeMap<&str, &NodeKind> = dag
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), &n.kind))
        .collect();
    let mut out = DagExpectations::default();
    for node in &dag.nodes {
        let NodeKind::Publish { stream, topic } = &node.kind else {
            continue;
        };
        match stream_level(dag, &by_name, stream, 0) {
            Ok((level, aggregate)) => out.expected.push(Expected {
                label: if aggregate {
                    level.plural().to_owned()
                } else {
                    topic.replace('_', " ")
                },
                topic: topic.clone(),
                keys: keys.get(level),
                aggregate,
            }),
            Err(why) => out.unchecked.push((topic.clone(), why)),
        }
    }
    out
}

/// The level of node `name`'s records, and whether they are aggregates (a grouping's own
/// output, not a task's answer to it). `depth` bounds the walk: validation rejects
/// cycles, but a bad spec must not hang the check.
fn stream_level(
    dag: &Dag,
    nodes: &BTreeMap<&str, &NodeKind>,
    name: &str,
    depth: usize,
) -> Result<(Level, bool), String> {
    if depth > nodes.len() {
        return Err(format!("node {name} is part of a cycle"));
    }
    match nodes.get(name) {
        None => Err(format!("node {name} is not in the DAG")),
        Some(NodeKind::TopicStream { topic }) => {
            let schema = dag.topics.get(topic).map(|t| t.value_schema.as_str());
            if schema == Some(ChannelImage::SCHEMA) {
                Ok((Level::Channel, false))
            } else {
                Err(format!(
                    "topic {topic} does not carry {} records",
                    ChannelImage::SCHEMA
                ))
            }
        }
        Some(NodeKind::TopicTable { topic }) => {
            Err(format!("it publishes the table {topic} as it is"))
        }
        Some(NodeKind::StreamOperation(op)) => Level::of_grouping(&op.function)
            .map(|level| (level, true))
            .ok_or_else(|| {
                format!(
                    "node {name} runs {}, whose outputs are not known from the layout",
                    op.function
                )
            }),
        Some(NodeKind::ExternalTask { stream, .. }) => {
            stream_level(dag, nodes, stream, depth + 1).map(|(level, _)| (level, false))
        }
        Some(NodeKind::Publish { stream, .. }) => stream_level(dag, nodes, stream, depth + 1),
    }
}

/// `expected` without what `missing` channel images (`EXP/1/B02/3/5`) take with them:
/// the image's task output, and the aggregates above it (its site, well, plate,
/// experiment) and their task outputs, which never come out.
pub fn without_images(mut expected: Vec<Expected>, missing: &[String]) -> Vec<Expected> {
    let mut gone = BTreeSet::new();
    for key in missing {
        let mut prefix = key.as_str();
        gone.insert(prefix.to_owned());
        while let Some((up, _)) = prefix.rsplit_once('/') {
            gone.insert(up.to_owned());
            prefix = up;
        }
    }
    for e in &mut expected {
        e.keys.retain(|k| !gone.contains(k));
    }
    expected
}

#[cfg(test)]
mod tests {
    use wellspring_actors::FunctionRegistry;
    use wellspring_protocol::{SpecFormat, synthetic};

    use super::*;

    /// The built-in groupings, as a node offers them, and one registered function.
    fn catalog() -> FunctionRegistry {
        let mut registry = FunctionRegistry::with_builtins();
        registry.register_map("custom/identity", "json", "json", |key, value| {
            Ok(vec![(key.to_owned(), value.clone())])
        });
        registry
    }

    const GROUPINGS_ONLY: &str = r#"
name: groupings-only
topics:
  images: {value-schema: channel_level}
  metadata: {value-schema: experiment_metadata, partitions: 1}
  sites: {value-schema: site_level}
  experiments: {value-schema: experiment_level}
graph:
  images: {type: topic-stream, topic-name: images}
  metadata: {type: topic-table, topic-name: metadata}
  site: {type: stream-operation, inputs: [images, metadata], function: aggregations/images-site-grouping}
  well: {type: stream-operation, inputs: [site, metadata], function: aggregations/sites-well-grouping}
  plate: {type: stream-operation, inputs: [well, metadata], function: aggregations/wells-plate-grouping}
  experiment: {type: stream-operation, inputs: [plate, metadata], function: aggregations/plates-experiment-grouping}
  sites-out: {type: publish, stream: site, topic-name: sites}
  out: {type: publish, stream: experiment, topic-name: experiments}
"#;

    #[test]
    fn a_dag_of_groupings_expects_only_what_it_publishes() {
        let dag = Dag::load(GROUPINGS_ONLY, SpecFormat::Yaml, &catalog()).expect("valid DAG");
        let layout = synthetic::layout("EXP-1", 2, 10, 4, 6).expect("layout");
        let found = dag_expectations(&dag, &layout);
        assert!(found.unchecked.is_empty(), "{:?}", found.unchecked);
        let mut summary: Vec<(&str, &str, usize, bool)> = found
            .expected
            .iter()
            .map(|e| {
                (
                    e.label.as_str(),
                    e.topic.as_str(),
                    e.keys.len(),
                    e.aggregate,
                )
            })
            .collect();
        summary.sort();
        assert_eq!(
            summary,
            [
                ("experiments", "experiments", 1, true),
                ("sites", "sites", 2 * 10 * 4, true)
            ]
        );
        let experiments = found.expected.iter().find(|e| e.topic == "experiments");
        assert!(experiments.is_some_and(|e| e.keys.contains("EXP-1")));
    }

    #[test]
    fn the_reference_dag_expects_what_the_reference_expectations_list() {
        let text = include_str!("../../../examples/reference-dag.yaml");
        let dag = Dag::load(text, SpecFormat::Yaml, &catalog()).expect("valid DAG");
        let layout = synthetic::layout("EXP-1", 2, 10, 4, 6).expect("layout");
        let found = dag_expectations(&dag, &layout);
        assert!(found.unchecked.is_empty(), "{:?}", found.unchecked);
        let mut from_dag: Vec<(String, String, BTreeSet<String>, bool)> = found
            .expected
            .into_iter()
            .map(|e| (e.label, e.topic, e.keys, e.aggregate))
            .collect();
        let mut reference: Vec<(String, String, BTreeSet<String>, bool)> =
            reference_expectations(&layout)
                .into_iter()
                .map(|e| (e.label, e.topic, e.keys, e.aggregate))
                .collect();
        from_dag.sort();
        reference.sort();
        assert_eq!(from_dag, reference);
    }

    #[test]
    fn what_a_registered_function_publishes_is_left_unchecked_and_said_why() {
        let text = GROUPINGS_ONLY
            .replace("  sites: {value-schema: site_level}\n", "  copies: {value-schema: json}\n")
            .replace(
                "  sites-out: {type: publish, stream: site, topic-name: sites}",
                "  copy: {type: stream-operation, inputs: [images], function: custom/identity}\n  copies-out: {type: publish, stream: copy, topic-name: copies}",
            );
        let dag = Dag::load(&text, SpecFormat::Yaml, &catalog()).expect("valid DAG");
        let layout = synthetic::layout("EXP-1", 1, 10, 4, 6).expect("layout");
        let found = dag_expectations(&dag, &layout);
        assert_eq!(found.expected.len(), 1);
        assert_eq!(found.unchecked.len(), 1);
        assert_eq!(found.unchecked[0].0, "copies");
        assert!(
            found.unchecked[0].1.contains("custom/identity"),
            "{:?}",
            found.unchecked
        );
    }
}
