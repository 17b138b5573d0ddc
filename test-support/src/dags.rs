//! DAG specs the benchmarks share.

/// The four groupings (site, well, plate, experiment) over `images` and `metadata`, the
/// experiment aggregate published to `experiments`; no tasks. `name` names the DAG (its
/// internal topics and groups are named after it).
pub fn four_groupings(name: &str) -> String {
    format!(
        r#"
name: {name}
settings: {{partitions: 4}}
topics:
  images: {{value-schema: channel_level, partitions: 4}}
  metadata: {{value-schema: experiment_metadata, partitions: 1}}
  experiments: {{value-schema: experiment_level}}
graph:
  images: {{type: topic-stream, topic-name: images}}
  metadata: {{type: topic-table, topic-name: metadata}}
  site: {{type: stream-operation, inputs: [images, metadata], function: aggregations/images-site-grouping}}
  well: {{type: stream-operation, inputs: [site, metadata], function: aggregations/sites-well-grouping}}
  plate: {{type: stream-operation, inputs: [well, metadata], function: aggregations/wells-plate-grouping}}
  experiment: {{type: stream-operation, inputs: [plate, metadata], function: aggregations/plates-experiment-grouping}}
  out: {{type: publish, stream: experiment, topic-name: experiments}}
"#
    )
}
