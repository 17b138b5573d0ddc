//! Source shards: read an external topic (JSON), validate every record against the
//! topic's schema at the edge, and route it downstream. A record that does not parse or
//! does not match goes to the dead-letter topic with the reason and where it came from.

use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;
use opentelemetry::trace::SpanKind;
use tokio::sync::Notify;
use wellspring_log::{LogRecord, ProducerRecord, TopicPartition};
use wellspring_protocol::envelope::headers;
use wellspring_protocol::{Envelope, MessageId, Origin, SchemaSet, TraceContext, Value};

use crate::telemetry;

use super::shard::{RecordProcessor, SyncShard};
use super::{ShardFactory, ShardRequest};
use crate::metrics::Counter;
use crate::routing::{DeadLetterWriter, Router};

/// Starts source shards of one topic-stream node.
pub struct SourceFactory {
    pub dag: Arc<str>,
    pub node: Arc<str>,
    /// The topic's value schema.
    pub schema: String,
    pub schemas: Arc<SchemaSet>,
    pub router: Arc<Router>,
    pub dead: DeadLetterWriter,
    pub records_in: Counter,
    pub records_out: Counter,
    pub panics: Counter,
    pub mailbox: usize,
}

#[async_trait(?Send)]
impl ShardFactory for SourceFactory {
    async fn start(
        &self,
        partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, String> {
        let processor = SourceProcessor {
            dag: self.dag.clone(),
            node: self.node.clone(),
            schema: self.schema.clone(),
            schemas: self.schemas.clone(),
            router: self.router.clone(),
            dead: self.dead.clone(),
            records_in: self.records_in.clone(),
            records_out: self.records_out.clone(),
        };
        let name = format!("{}/{}/{partition}", self.dag, self.node);
        Ok(SyncShard::new(
            name,
            processor,
            Vec::new(),
            waker,
            self.panics.clone(),
            self.mailbox,
        )
        .start()
        .recipient())
    }
}

pub struct SourceProcessor {
    dag: Arc<str>,
    node: Arc<str>,
    schema: String,
    schemas: Arc<SchemaSet>,
    router: Arc<Router>,
    dead: DeadLetterWriter,
    records_in: Counter,
    records_out: Counter,
}

/// A W3C `traceparent` header, if the record carries a well-formed one.
pub(crate) fn trace_of(record: &LogRecord) -> Option<TraceContext> {
    let parent = std::str::from_utf8(record.header(headers::TRACEPARENT)?).ok()?;
    let well_formed = parent.len() == 55 && parent.split('-').count() == 4;
    well_formed.then(|| TraceContext {
        traceparent: parent.to_owned(),
        tracestate: record
            .header(headers::TRACESTATE)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned),
    })
}

impl RecordProcessor for SourceProcessor {
    fn process(&mut self, record: &LogRecord, out: &mut Vec<ProducerRecord>) {
        self.records_in.inc();
        let origin = Origin {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
        };
        let Some(bytes) = record.value.as_deref() else {
            out.push(self.dead.unreadable(
                "the record has no value".into(),
                origin,
                record.key.as_deref(),
                None,
            ));
            return;
        };
        let json: serde_json::Value = match serde_json::from_slice(bytes) {
            Ok(json) => json,
            Err(e) => {
                out.push(self.dead.unreadable(
                    format!("not JSON: {e}"),
                    origin,
                    record.key.as_deref(),
                    Some(bytes),
                ));
                return;
            }
        };
        let key = match &record.key {
            Some(k) => String::from_utf8_lossy(k).into_owned(),
            None => format!("{}/{}/{}", origin.topic, origin.partition, origin.offset),
        };
        let payload = match self.schemas.validate(&self.schema, &json) {
            Ok(value) => value,
            Err(errors) => {
                out.push(self.dead.record(
                    errors.to_string(),
                    Some(origin),
                    Some(key),
                    Value::from(&json),
                    0,
                ));
                return;
            }
        };
        let mut envelope =
            Envelope::new(MessageId::derive(&self.dag, &self.node, &key), key, payload);
        envelope.trace = trace_of(record);
        // The record's span: the context everything it leads to refers to.
        let _span = telemetry::enabled().then(|| {
            let mut span = telemetry::start(
                "wellspring.source",
                SpanKind::Consumer,
                telemetry::About {
                    actor: "source shard",
                    dag: &self.dag,
                    node: &self.node,
                    key: &envelope.key,
                    attempt: envelope.attempt,
                },
                envelope.trace.as_ref(),
                Vec::new(),
            );
            span.set("messaging.source.name", origin.topic.clone());
            span.set("messaging.kafka.offset", origin.offset as i64);
            if let Some(trace) = span.trace() {
                envelope.trace = Some(trace);
            }
            span
        });
        envelope.origin = Some(origin);
        match self.router.route(&envelope, out) {
            Ok(()) => self.records_out.inc(),
            Err(reason) => {
                let Envelope {
                    origin,
                    key,
                    payload,
                    ..
                } = envelope;
                out.push(self.dead.record(reason, origin, Some(key), payload, 0));
            }
        }
    }
}
