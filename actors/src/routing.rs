//! Where a DAG node's output goes, and the records for what cannot be processed.
//!
//! Every edge of a DAG that crosses a shard boundary goes through the log, so each
//! output is durable before the input that caused it is committed:
//! - to a stream-operation: its input topic, keyed (and so partitioned) by the
//!   operation's group key, so that inputs of one aggregate meet in one shard;
//! - to an external task: its input topic, keyed by the record's key;
//! - to a publish node: its external topic, as JSON, with the record's deterministic id
//!   in the `wellspring-id` header.
//!
//! Internal topics carry [`Envelope`]s in the binary wire format.

use std::sync::Arc;

use bytes::Bytes;
use wellspring_log::{ProducerRecord, partition_for_key};
use wellspring_protocol::envelope::headers;
use wellspring_protocol::{DeadLetter, Envelope, IncompleteRecord, MessageId, Origin, Value, wire};

use crate::functions::GroupKeyFn;
use crate::metrics::Counter;

/// One destination of a node's output.
pub enum Route {
    /// The input topic of a sharded node (stream-operation or task).
    Shard {
        topic: Arc<str>,
        partitions: u32,
        /// `None`: keyed by the record's own key.
        group_key: Option<GroupKeyFn>,
    },
    /// An external topic, as JSON.
    Publish { topic: Arc<str> },
}

/// The routes of one node's output.
pub struct Router {
    node: Arc<str>,
    routes: Vec<Route>,
}

impl Router {
    pub fn new(node: &str, routes: Vec<Route>) -> Self {
        Self {
            node: Arc::from(node),
            routes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Appends the records that carry `envelope` to every destination. Fails (writing
    /// nothing) when a downstream operation cannot key the record: the reason is the
    /// record's dead-letter reason.
    pub fn route(&self, envelope: &Envelope, out: &mut Vec<ProducerRecord>) -> Result<(), String> {
        let mut keys = Vec::with_capacity(self.routes.len());
        for route in &self.routes {
            keys.push(match route {
                Route::Shard {
                    group_key: Some(group_key),
                    ..
                } => Some(group_key(&envelope.key, &envelope.payload)?),
                _ => None,
            });
        }
        let id = Bytes::from(envelope.id.to_string());
        for (route, key) in self.routes.iter().zip(keys) {
            match route {
                Route::Shard {
                    topic, partitions, ..
                } => {
                    let key = key.as_deref().unwrap_or(&envelope.key);
                    let partition = partition_for_key(key.as_bytes(), *partitions);
                    let value = wire::encode(&envelope.rekeyed(key));
                    out.push(ProducerRecord {
                        topic: topic.clone(),
                        partition: Some(partition),
                        key: Some(Bytes::copy_from_slice(key.as_bytes())),
                        value: Some(Bytes::from(value)),
                        headers: vec![(headers::ID.to_owned(), id.clone())],
                    });
                }
                Route::Publish { topic } => {
                    let mut record_headers = vec![
                        (headers::ID.to_owned(), id.clone()),
                        (
                            headers::NODE.to_owned(),
                            Bytes::copy_from_slice(self.node.as_bytes()),
                        ),
                    ];
                    if let Some(trace) = &envelope.trace {
                        record_headers.push((
                            headers::TRACEPARENT.to_owned(),
                            Bytes::from(trace.traceparent.clone()),
                        ));
                    }
                    out.push(ProducerRecord {
                        topic: topic.clone(),
                        partition: None,
                        key: Some(Bytes::copy_from_slice(envelope.key.as_bytes())),
                        value: Some(Bytes::from(envelope.payload.to_json_string())),
                        headers: record_headers,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Writes dead letters of one DAG node.
#[derive(Clone)]
pub struct DeadLetterWriter {
    pub dag: Arc<str>,
    pub node: Arc<str>,
    pub topic: Arc<str>,
    pub counter: Counter,
}

impl DeadLetterWriter {
    pub fn record(
        &self,
        reason: String,
        origin: Option<Origin>,
        key: Option<String>,
        record: Value,
        attempts: u32,
    ) -> ProducerRecord {
        self.counter.inc();
        tracing::debug!(dag = %self.dag, node = %self.node, %reason, "dead letter");
        let record_key = key.clone().or_else(|| {
            origin
                .as_ref()
                .map(|o| format!("{}/{}/{}", o.topic, o.partition, o.offset))
        });
        let letter = DeadLetter {
            dag: self.dag.to_string(),
            node: self.node.to_string(),
            reason,
            origin,
            key,
            record,
            attempts,
        };
        let id = MessageId::derive(
            &self.dag,
            &self.node,
            &format!("dead-letter/{}", record_key.as_deref().unwrap_or("")),
        );
        ProducerRecord {
            topic: self.topic.clone(),
            partition: None,
            key: record_key.map(Bytes::from),
            value: Some(Bytes::from(letter.to_value().to_json_string())),
            headers: vec![
                (headers::ID.to_owned(), Bytes::from(id.to_string())),
                (
                    headers::NODE.to_owned(),
                    Bytes::copy_from_slice(self.node.as_bytes()),
                ),
            ],
        }
    }

    /// A dead letter for a raw log record that could not even be read.
    pub fn unreadable(
        &self,
        reason: String,
        origin: Origin,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> ProducerRecord {
        const KEEP: usize = 4096;
        let text = value.map_or(Value::Null, |v| {
            Value::String(String::from_utf8_lossy(&v[..v.len().min(KEEP)]).into_owned())
        });
        let key = key.map(|k| String::from_utf8_lossy(k).into_owned());
        self.record(reason, Some(origin), key, text, 0)
    }
}

/// Writes `incomplete` records of one grouping.
#[derive(Clone)]
pub struct IncompleteWriter {
    pub dag: Arc<str>,
    pub node: Arc<str>,
    pub topic: Arc<str>,
    pub counter: Counter,
}

impl IncompleteWriter {
    pub fn record(&self, incomplete: &IncompleteRecord) -> ProducerRecord {
        self.counter.inc();
        tracing::warn!(dag = %self.dag, node = %self.node, "{}", incomplete.description());
        let id = MessageId::derive(
            &self.dag,
            &self.node,
            &format!("incomplete/{}", incomplete.key),
        );
        ProducerRecord {
            topic: self.topic.clone(),
            partition: None,
            key: Some(Bytes::from(incomplete.key.clone())),
            value: Some(Bytes::from(incomplete.to_value().to_json_string())),
            headers: vec![(headers::ID.to_owned(), Bytes::from(id.to_string()))],
        }
    }
}
