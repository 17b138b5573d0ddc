//! Where a DAG node's output goes, and the records for what cannot be processed.
//!
//! Every edge of a DAG that crosses a shard boundary goes through the log, so each
//! output is durable before the input that caused it is committed:
//! - to a stream-operation: its input topic, keyed (and so partitioned) by the
//!   operation's group key, so that inputs of one aggregate meet in one shard;
//! - to an external task: its input topic, keyed by the record's key;
//! - to a publish node: its external topic, as JSON, with the record's deterministic id
//!   in the `wellspring-id` header (and a re-run's generation in `wellspring-generation`).
//!
//! A re-run's output ([`RerunScope`]) is published, and goes to the sharded nodes
//! downstream only when the re-run asked for that and the aggregate it feeds lies whole
//! inside the re-run's subset.
//!
//! Internal topics carry [`Envelope`]s in the binary wire format ([`decode_envelope`]
//! reads one back). What cannot be routed or read becomes a dead letter, naming where
//! it came from ([`origin_of`]).

use std::sync::Arc;

use bytes::Bytes;
use wellspring_log::{LogRecord, ProducerRecord, partition_for_key};
use wellspring_protocol::envelope::headers;
use wellspring_protocol::rerun::{RerunScope, headers as rerun_headers};
use wellspring_protocol::{DeadLetter, Envelope, IncompleteRecord, MessageId, Origin, Value, wire};

use crate::functions::{FunctionError, GroupKeyFn};
use crate::metrics::Counter;
use crate::telemetry;

/// Why a record could not be routed (nothing of it was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The operation reading `topic` cannot compute the record's group key; the
    /// function's reason is the record's dead-letter reason.
    #[error("{source}")]
    GroupKey {
        topic: Arc<str>,
        #[source]
        source: FunctionError,
    },
}

impl RouteError {
    /// Whether routing the record again can succeed: only when the key function said
    /// so; a record it rejected is a dead letter.
    pub fn retryable(&self) -> bool {
        match self {
            RouteError::GroupKey { source, .. } => source.retryable(),
        }
    }
}

/// Where a log record was read: what its dead letters name.
pub fn origin_of(record: &LogRecord) -> Origin {
    Origin {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
    }
}

/// An internal record in a format newer than this build reads: written by a node of a
/// newer version during a roll. It is not dead-lettered (it is not broken) and not
/// guessed at: the shard stops before it, uncommitted, for a newer node to process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "record {offset} of {topic}[{partition}] is in format version {found}, written by a newer Wellspring, and this node reads format version {supported}: it stops here rather than misread it (upgrade this node's binary; the record stays uncommitted for a node that reads it)"
)]
pub struct NewerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub found: u8,
    pub supported: u8,
}

impl NewerRecord {
    /// When `error` says `record` was written in a newer format.
    pub fn of(record: &LogRecord, error: &wire::WireError) -> Option<Self> {
        error.newer_version().map(|found| NewerRecord {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            found,
            supported: wire::FORMAT_VERSION,
        })
    }
}

/// Why an internal record carries no envelope this node can use.
#[derive(Debug)]
pub enum Undecodable {
    /// Broken: the dead letter saying why.
    DeadLetter(ProducerRecord),
    /// Written by a newer node: this node must stop before it.
    Newer(NewerRecord),
}

/// The envelope an internal record carries, or why it has none.
pub fn decode_envelope(
    record: &LogRecord,
    dead: &DeadLetterWriter,
) -> Result<Envelope, Undecodable> {
    match record.value.as_deref().map(wire::decode) {
        Some(Ok(envelope)) => Ok(envelope),
        Some(Err(e)) => match NewerRecord::of(record, &e) {
            Some(newer) => Err(Undecodable::Newer(newer)),
            None => Err(Undecodable::DeadLetter(dead.unreadable(
                format!("unreadable internal record: {e}"),
                record,
                None,
            ))),
        },
        None => Err(Undecodable::DeadLetter(dead.unreadable(
            "the record has no value".into(),
            record,
            None,
        ))),
    }
}

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
    /// nothing) when a downstream operation cannot key the record.
    pub fn route(
        &self,
        envelope: &Envelope,
        out: &mut Vec<ProducerRecord>,
    ) -> Result<(), RouteError> {
        // A re-run's output goes on downstream only when the re-run says so, and only to
        // aggregates its subset holds whole; it is always published.
        let rerun = if envelope.headers.is_empty() {
            None
        } else {
            RerunScope::of(envelope)
        };
        let mut keys = Vec::with_capacity(self.routes.len());
        for route in &self.routes {
            keys.push(match route {
                Route::Shard {
                    topic,
                    group_key: Some(group_key),
                    ..
                } => Some(
                    group_key(&envelope.key, &envelope.payload).map_err(|source| {
                        RouteError::GroupKey {
                            topic: topic.clone(),
                            source,
                        }
                    })?,
                ),
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
                    if let Some(rerun) = &rerun
                        && !(rerun.downstream && rerun.subset.holds_key(key))
                    {
                        continue;
                    }
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
                    if let Some(rerun) = &rerun {
                        record_headers.push((
                            rerun_headers::GENERATION.to_owned(),
                            Bytes::from(rerun.generation.to_string()),
                        ));
                    }
                    if let Some(trace) = &envelope.trace {
                        telemetry::inject(
                            trace,
                            &mut telemetry::RecordHeaders(&mut record_headers),
                        );
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

/// Where a DAG node's outputs go: its routes, its dead letters, and the count of what
/// went out.
#[derive(Clone)]
pub struct Downstream {
    pub router: Arc<Router>,
    pub dead: DeadLetterWriter,
    pub records_out: Counter,
}

impl Downstream {
    /// Routes `envelope`, or writes it to the dead-letter topic (naming `origin` and
    /// `attempts`) when it cannot be routed for good. An `Err` is a failure a retry can
    /// help with: nothing was written.
    pub fn send(
        &self,
        envelope: Envelope,
        origin: Option<Origin>,
        attempts: u32,
        out: &mut Vec<ProducerRecord>,
    ) -> Result<(), RouteError> {
        match self.router.route(&envelope, out) {
            Ok(()) => {
                self.records_out.inc();
                Ok(())
            }
            Err(e) if e.retryable() => Err(e),
            Err(e) => {
                let Envelope { key, payload, .. } = envelope;
                out.push(
                    self.dead
                        .record(e.to_string(), origin, Some(key), payload, attempts),
                );
                Ok(())
            }
        }
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

    /// A dead letter for a log record as it was read (its key, where it was read),
    /// keeping `value` of it.
    pub fn of_record(&self, reason: String, record: &LogRecord, value: Value) -> ProducerRecord {
        let key = record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        self.record(reason, Some(origin_of(record)), key, value, 0)
    }

    /// A dead letter for a log record that could not even be read, keeping `value` (the
    /// record's bytes, or none) as text.
    pub fn unreadable(
        &self,
        reason: String,
        record: &LogRecord,
        value: Option<&[u8]>,
    ) -> ProducerRecord {
        self.of_record(reason, record, text_of(value))
    }
}

/// Bytes that could not be read, as the text a dead letter keeps of them (the start).
pub fn text_of(value: Option<&[u8]>) -> Value {
    const KEEP: usize = 4096;
    value.map_or(Value::Null, |v| {
        Value::String(String::from_utf8_lossy(&v[..v.len().min(KEEP)]).into_owned())
    })
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
    /// The record of `incomplete`, found in re-run `generation` (0: the first run).
    pub fn record(&self, incomplete: &IncompleteRecord, generation: u32) -> ProducerRecord {
        self.counter.inc();
        tracing::warn!(dag = %self.dag, node = %self.node, generation, "{}", incomplete.description());
        let id = MessageId::derive(
            &self.dag,
            &self.node,
            &format!("incomplete/{}", incomplete.key),
        )
        .in_generation(generation);
        let mut record_headers = vec![(headers::ID.to_owned(), Bytes::from(id.to_string()))];
        if generation > 0 {
            record_headers.push((
                rerun_headers::GENERATION.to_owned(),
                Bytes::from(generation.to_string()),
            ));
        }
        ProducerRecord {
            topic: self.topic.clone(),
            partition: None,
            key: Some(Bytes::from(incomplete.key.clone())),
            value: Some(Bytes::from(incomplete.to_value().to_json_string())),
            headers: record_headers,
        }
    }
}
