//! Where a re-run or a backfill reads, and what it sends: the records a DAG node's stage
//! would have read, rebuilt from what the log retains.
//!
//! - A **re-run** of node N reads N's own input topic (`{prefix}{dag}.N.input`, kept by
//!   time like every input), the first run's records only (not an earlier re-run's),
//!   and sends each back to the partition it was read from, marked with the re-run's
//!   scope.
//! - A **backfill** of node N reads the records of N's input stream S that N never saw,
//!   from the first of: the input of a task node that also reads S (envelopes exactly as
//!   S emitted them), S's publish topic (its JSON, its `wellspring-id`), or S's own
//!   topic when S is a source (validated as the source does). They go through the route
//!   into N the live path uses, so each lands where N's shards expect it with the id S
//!   gave it: a record N also gets live is a repeat by id.

use wellspring_actors::FunctionRegistry;
use wellspring_actors::dag::{Names, route_into};
use wellspring_actors::routing::{Router, origin_of};
use wellspring_log::{LogRecord, ProducerRecord};
use wellspring_protocol::envelope::headers as envelope_headers;
use wellspring_protocol::rerun::{RerunScope, headers};
use wellspring_protocol::spec::{NodeKind, NodeSpec, builtins};
use wellspring_protocol::{Dag, Envelope, MessageId, Value, wire};

/// How the records of a topic read are turned into the envelopes a stream emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// An internal topic: envelopes in the wire format.
    Envelope,
    /// A publish topic: the record as JSON, its id in `wellspring-id`.
    Published { stream: String },
    /// A source's topic: JSON, validated against `schema` as the source does.
    External { stream: String, schema: String },
}

/// A topic to read, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub topic: String,
    pub encoding: Encoding,
}

/// A node that can be re-run or backfilled: a task or an operation (the stages that
/// compute something).
pub fn computing_node<'a>(dag: &'a Dag, node: &str) -> Result<&'a NodeSpec, String> {
    let Some(spec) = dag.node(node) else {
        let names: Vec<&str> = dag
            .nodes
            .iter()
            .filter(|n| {
                matches!(
                    n.kind,
                    NodeKind::ExternalTask { .. } | NodeKind::StreamOperation(_)
                )
            })
            .map(|n| n.name.as_str())
            .collect();
        return Err(format!(
            "DAG {} has no node {node:?} (its tasks and operations: {})",
            dag.name,
            names.join(", ")
        ));
    };
    match spec.kind {
        NodeKind::ExternalTask { .. } | NodeKind::StreamOperation(_) => Ok(spec),
        _ => Err(format!(
            "node {node} is a {} node: only tasks and operations compute anything to redo (publish the records again to redo a source)",
            spec.kind.type_name()
        )),
    }
}

/// The streams `node` reads (an operation's tables are not streams).
fn streams<'a>(dag: &'a Dag, node: &'a NodeSpec) -> Vec<&'a str> {
    match &node.kind {
        NodeKind::ExternalTask { stream, .. } | NodeKind::Publish { stream, .. } => {
            vec![stream.as_str()]
        }
        NodeKind::StreamOperation(op) => op
            .inputs
            .iter()
            .filter(|input| {
                !matches!(
                    dag.node(input).map(|n| &n.kind),
                    Some(NodeKind::TopicTable { .. })
                )
            })
            .map(String::as_str)
            .collect(),
        _ => Vec::new(),
    }
}

/// Where the history of `stream` is kept (besides in `except`'s input), if anywhere.
fn stream_source(dag: &Dag, prefix: &str, stream: &str, except: &str) -> Option<Source> {
    let names = Names {
        prefix,
        dag: &dag.name,
    };
    let consumers = dag.consumers(stream);
    let task = consumers
        .iter()
        .find(|c| c.name != except && matches!(c.kind, NodeKind::ExternalTask { .. }));
    if let Some(task) = task {
        return Some(Source {
            topic: names.input(&task.name),
            encoding: Encoding::Envelope,
        });
    }
    let published = consumers.iter().find_map(|c| match &c.kind {
        NodeKind::Publish { topic, .. } if c.name != except => Some(topic.clone()),
        _ => None,
    });
    if let Some(topic) = published {
        return Some(Source {
            topic,
            encoding: Encoding::Published {
                stream: stream.to_owned(),
            },
        });
    }
    match dag.node(stream).map(|n| &n.kind) {
        Some(NodeKind::TopicStream { topic }) => dag.topics.get(topic).map(|decl| Source {
            topic: topic.clone(),
            encoding: Encoding::External {
                stream: stream.to_owned(),
                schema: decl.value_schema.clone(),
            },
        }),
        _ => None,
    }
}

/// Where the history of every stream `node` reads is kept, or why it is not.
pub fn backfill_sources(dag: &Dag, prefix: &str, node: &NodeSpec) -> Result<Vec<Source>, String> {
    streams(dag, node)
        .into_iter()
        .map(|stream| {
            stream_source(dag, prefix, stream, &node.name).ok_or_else(|| {
                format!(
                    "the records of stream {stream} are kept nowhere node {} could be backfilled from: no other task reads it and no publish node writes it to a topic (add a publish node for {stream}: from then on its history is kept)",
                    node.name
                )
            })
        })
        .collect()
}

/// Where the DAG's experiment records are kept: the outputs of its experiment-level
/// groupings (an experiment there is finished). Empty when it has none, or keeps them
/// nowhere: then no experiment can be told finished.
pub fn finished_experiment_sources(dag: &Dag, prefix: &str) -> Vec<Source> {
    dag.nodes
        .iter()
        .filter(|n| {
            matches!(&n.kind, NodeKind::StreamOperation(op) if op.function == builtins::PLATES_EXPERIMENT_GROUPING)
        })
        .filter_map(|n| stream_source(dag, prefix, &n.name, ""))
        .collect()
}

/// The envelope a stream emitted, rebuilt from `record` of a source read with
/// `encoding`; `None` for what the stream never emitted (a record a source dead-lettered,
/// a re-run's, one that cannot be read).
pub fn envelope_of(dag: &Dag, encoding: &Encoding, record: &LogRecord) -> Option<Envelope> {
    let key = || {
        record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    };
    match encoding {
        Encoding::Envelope => {
            let envelope: Envelope = wire::decode(record.value.as_deref()?).ok()?;
            RerunScope::of(&envelope).is_none().then_some(envelope)
        }
        Encoding::Published { stream } => {
            if record.header(headers::GENERATION).is_some() {
                return None;
            }
            let json: serde_json::Value = serde_json::from_slice(record.value.as_deref()?).ok()?;
            let key = key()?;
            let id = record
                .header(envelope_headers::ID)
                .and_then(|id| MessageId::parse(&String::from_utf8_lossy(id)))
                .unwrap_or_else(|| MessageId::derive(&dag.name, stream, &key));
            Some(Envelope::new(id, key, Value::from(&json)))
        }
        Encoding::External { stream, schema } => {
            let json: serde_json::Value = serde_json::from_slice(record.value.as_deref()?).ok()?;
            let origin = origin_of(record);
            let key = key().unwrap_or_else(|| {
                format!("{}/{}/{}", origin.topic, origin.partition, origin.offset)
            });
            let payload = dag.schemas.validate(schema, &json).ok()?;
            let mut envelope =
                Envelope::new(MessageId::derive(&dag.name, stream, &key), key, payload);
            envelope.origin = Some(origin);
            Some(envelope)
        }
    }
}

/// A node that can be backfilled: one that computes, or a publish node (its topic gets
/// the stream's history).
pub fn backfilled_node<'a>(dag: &'a Dag, node: &str) -> Result<&'a NodeSpec, String> {
    match dag.node(node) {
        Some(spec) if matches!(spec.kind, NodeKind::Publish { .. }) => Ok(spec),
        _ => computing_node(dag, node),
    }
}

/// The route the live path takes into `node`.
pub fn router_into(dag: &Dag, prefix: &str, node: &NodeSpec) -> Result<Router, String> {
    let registry = FunctionRegistry::with_builtins();
    let route = route_into(dag, &registry, prefix, node)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("node {} has no input to send records to", node.name))?;
    Ok(Router::new(&node.name, vec![route]))
}

/// The record that takes `envelope` back into the input partition it was read from.
pub fn resend(record: &LogRecord, envelope: &Envelope) -> ProducerRecord {
    ProducerRecord {
        topic: record.topic.clone(),
        partition: Some(record.partition),
        key: record.key.clone(),
        value: Some(bytes::Bytes::from(wire::encode(envelope))),
        headers: vec![(
            envelope_headers::ID.to_owned(),
            bytes::Bytes::from(envelope.id.to_string()),
        )],
    }
}
