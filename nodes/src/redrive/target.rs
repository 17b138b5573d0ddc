//! Where a dead letter goes back to: the input of the DAG node where it failed (not the
//! DAG's first topic), as that node's stage reads it.
//!
//! - an external task (HTTP or queue) and a stream operation read
//!   `{prefix}{dag}.{node}.input`, envelopes keyed by what their shards group on: the
//!   dead letter's key is that key already (a grouping's input is re-keyed by its group
//!   key before it is written), so the partition is the key's;
//! - a source (`topic-stream`) reads its external topic as JSON: the record goes back to
//!   the partition it was read from.
//!
//! The redriven record keeps the key, so the stage gives its output the id it would
//! have had (`MessageId::derive(dag, node, key)`): a redrive that races a late success
//! yields one output by id.

use bytes::Bytes;
use wellspring_actors::dag::{Names, shard_count};
use wellspring_log::{ProducerRecord, partition_for_key};
use wellspring_protocol::envelope::headers as envelope_headers;
use wellspring_protocol::redrive::headers;
use wellspring_protocol::spec::NodeKind;
use wellspring_protocol::{Dag, Envelope, MessageId, Origin, Value, wire};

/// How the stage reads its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// An internal topic: [`Envelope`]s in the wire format; `upstream` made the input.
    Envelope { upstream: String },
    /// An external topic: the record as JSON.
    Json,
}

/// The stage input a dead letter goes back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub topic: String,
    pub partition: u32,
    pub encoding: Encoding,
}

/// What a dead letter kept of the record that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept<'a> {
    pub dag: &'a str,
    pub node: &'a str,
    pub key: Option<&'a str>,
    pub record: &'a Value,
    pub origin: Option<&'a Origin>,
}

/// Where the dead letter goes, or why it cannot go back.
pub fn target(dag: &Dag, prefix: &str, kept: &Kept<'_>) -> Result<Target, String> {
    let Some(node) = dag.node(kept.node) else {
        return Err(format!(
            "DAG {} has no node {:?} any more (it was renamed or removed)",
            dag.name, kept.node
        ));
    };
    if !matches!(kept.record, Value::Record(_)) {
        return Err(
            "the dead letter kept no readable record (it could not be read when it failed): \
             publish a corrected record to the DAG's input instead"
                .into(),
        );
    }
    let names = Names {
        prefix,
        dag: &dag.name,
    };
    let internal = |upstream: &str| -> Result<Target, String> {
        let key = kept
            .key
            .ok_or("the dead letter has no key, so its shard is unknown")?;
        Ok(Target {
            topic: names.input(&node.name),
            partition: partition_for_key(key.as_bytes(), shard_count(dag, &node.name)),
            encoding: Encoding::Envelope {
                upstream: upstream.to_owned(),
            },
        })
    };
    match &node.kind {
        NodeKind::ExternalTask { stream, .. } => internal(stream),
        NodeKind::StreamOperation(op) => {
            // The stream the record came in on (the other inputs are tables).
            let upstream = op
                .inputs
                .iter()
                .find(|input| {
                    !matches!(
                        dag.node(input).map(|n| &n.kind),
                        Some(NodeKind::TopicTable { .. })
                    )
                })
                .ok_or("the operation has no stream input")?;
            internal(upstream)
        }
        NodeKind::TopicStream { topic } => {
            let origin = kept
                .origin
                .filter(|o| o.topic == *topic)
                .ok_or("the dead letter does not say where on the topic it was read")?;
            Ok(Target {
                topic: topic.clone(),
                partition: origin.partition,
                encoding: Encoding::Json,
            })
        }
        NodeKind::TopicTable { .. } | NodeKind::Publish { .. } => Err(format!(
            "node {} is a {} node: it has no stage to redrive into",
            node.name,
            node.kind.type_name()
        )),
    }
}

/// The record that carries the dead letter back into `target`, marked as the redrive
/// of `dead_letter` (in a log header, and for envelopes in the envelope's headers too,
/// which is what a task sees).
pub fn record(target: &Target, kept: &Kept<'_>, dead_letter: &str) -> ProducerRecord {
    let key = kept.key.map(|k| Bytes::copy_from_slice(k.as_bytes()));
    let (value, id) = match &target.encoding {
        Encoding::Envelope { upstream } => {
            let key = kept.key.unwrap_or_default();
            // The id the upstream node gave the record: the input is the one that failed.
            let mut envelope = Envelope::new(
                MessageId::derive(kept.dag, upstream, key),
                key,
                kept.record.clone(),
            );
            envelope.origin = kept.origin.cloned();
            envelope
                .headers
                .push((headers::REDRIVE_OF.to_owned(), dead_letter.to_owned()));
            let id = envelope.id;
            (Bytes::from(wire::encode(&envelope)), id)
        }
        Encoding::Json => (
            Bytes::from(kept.record.to_json_string()),
            MessageId::derive(kept.dag, kept.node, kept.key.unwrap_or_default()),
        ),
    };
    ProducerRecord {
        topic: target.topic.as_str().into(),
        partition: Some(target.partition),
        key,
        value: Some(value),
        headers: vec![
            (envelope_headers::ID.to_owned(), Bytes::from(id.to_string())),
            (
                headers::REDRIVE_OF.to_owned(),
                Bytes::copy_from_slice(dead_letter.as_bytes()),
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wellspring_actors::FunctionRegistry;
    use wellspring_protocol::SpecFormat;

    const DAG: &str = r#"
name: lab
settings: {partitions: 4}
topics:
  images: {value-schema: channel_level, partitions: 3}
  metadata: {value-schema: experiment_metadata, partitions: 1}
  features: {value-schema: json}
tasks:
  site-features: {url: "http://127.0.0.1:1/features", input-schema: site_level}
graph:
  images: {type: topic-stream, topic-name: images}
  metadata: {type: topic-table, topic-name: metadata}
  site: {type: stream-operation, inputs: [images, metadata], function: aggregations/images-site-grouping}
  features: {type: external-task, stream: site, task-name: site-features}
  out: {type: publish, stream: features, topic-name: features}
"#;

    fn dag() -> Dag {
        Dag::load(DAG, SpecFormat::Yaml, &FunctionRegistry::with_builtins()).unwrap()
    }

    fn record() -> Value {
        Value::from(&serde_json::json!({"experiment_id": "E", "plate_number": 1}))
    }

    #[test]
    fn a_task_or_grouping_dead_letter_goes_to_that_nodes_input_by_its_key() {
        let dag = dag();
        let value = record();
        let kept = |node| Kept {
            dag: "lab",
            node,
            key: Some("E/1/B02/1"),
            record: &value,
            origin: None,
        };
        let task = target(&dag, "wellspring.", &kept("features")).unwrap();
        assert_eq!(task.topic, "wellspring.lab.features.input");
        assert_eq!(task.partition, partition_for_key(b"E/1/B02/1", 4));
        assert_eq!(
            task.encoding,
            Encoding::Envelope {
                upstream: "site".into()
            }
        );
        let grouping = target(&dag, "wellspring.", &kept("site")).unwrap();
        assert_eq!(grouping.topic, "wellspring.lab.site.input");
        // The stream input, not the table.
        assert_eq!(
            grouping.encoding,
            Encoding::Envelope {
                upstream: "images".into()
            }
        );

        // The envelope keeps the key and the upstream's id, and says it is a redrive.
        let out = super::record(&task, &kept("features"), "dl-1");
        assert_eq!(out.partition, Some(task.partition));
        let envelope: Envelope = wire::decode(out.value.as_deref().unwrap()).unwrap();
        assert_eq!(envelope.key, "E/1/B02/1");
        assert_eq!(envelope.id, MessageId::derive("lab", "site", "E/1/B02/1"));
        assert_eq!(envelope.header(headers::REDRIVE_OF), Some("dl-1"));
        assert_eq!(envelope.payload, value);
        assert!(
            out.headers
                .iter()
                .any(|(k, v)| k == headers::REDRIVE_OF && v.as_ref() == b"dl-1")
        );
    }

    #[test]
    fn a_source_dead_letter_goes_back_where_it_was_read_and_others_say_why_not() {
        let dag = dag();
        let value = record();
        let origin = Origin {
            topic: "images".into(),
            partition: 2,
            offset: 9,
        };
        let kept = Kept {
            dag: "lab",
            node: "images",
            key: Some("E/1/B02/1/1"),
            record: &value,
            origin: Some(&origin),
        };
        let source = target(&dag, "wellspring.", &kept).unwrap();
        assert_eq!((source.topic.as_str(), source.partition), ("images", 2));
        let out = super::record(&source, &kept, "dl-2");
        let json: serde_json::Value =
            serde_json::from_slice(out.value.as_deref().unwrap()).unwrap();
        assert_eq!(json["experiment_id"], "E");

        let text = Value::from("not json at all");
        let unreadable = Kept {
            record: &text,
            ..kept.clone()
        };
        assert!(
            target(&dag, "wellspring.", &unreadable)
                .unwrap_err()
                .contains("no readable record")
        );
        let gone = Kept {
            node: "renamed",
            ..kept.clone()
        };
        assert!(
            target(&dag, "wellspring.", &gone)
                .unwrap_err()
                .contains("no node")
        );
        let publish = Kept {
            node: "out",
            ..kept.clone()
        };
        assert!(
            target(&dag, "wellspring.", &publish)
                .unwrap_err()
                .contains("no stage")
        );
    }
}
