//! Source shards: read an external topic (JSON), validate every record against the
//! topic's schema at the edge, and route it downstream. A record that does not parse or
//! does not match goes to the dead-letter topic with the reason and where it came from.

use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;
use opentelemetry::trace::SpanKind;
use tokio::sync::Notify;
use wellspring_log::{LogRecord, ProducerRecord, TopicPartition};
use wellspring_protocol::{Envelope, MessageId, SchemaSet, Value};

use super::shard::{Halt, RecordProcessor, RetryLater, SyncShard};
use super::{ShardFactory, ShardRequest, StartError};
use crate::metrics::Counter;
use crate::routing::{Downstream, origin_of};
use crate::telemetry;

/// Starts source shards of one topic-stream node.
pub struct SourceFactory {
    pub dag: Arc<str>,
    pub node: Arc<str>,
    /// The topic's value schema.
    pub schema: String,
    pub schemas: Arc<SchemaSet>,
    pub downstream: Downstream,
    pub records_in: Counter,
    pub panics: Counter,
    pub mailbox: usize,
}

#[async_trait(?Send)]
impl ShardFactory for SourceFactory {
    async fn start(
        &self,
        partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, StartError> {
        let processor = SourceProcessor {
            dag: self.dag.clone(),
            node: self.node.clone(),
            schema: self.schema.clone(),
            schemas: self.schemas.clone(),
            downstream: self.downstream.clone(),
            records_in: self.records_in.clone(),
        };
        let name = format!("{}/{}/{partition}", self.dag, self.node);
        Ok(SyncShard::new(
            name,
            partition.clone(),
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
    downstream: Downstream,
    records_in: Counter,
}

impl RecordProcessor for SourceProcessor {
    fn process(&mut self, record: &LogRecord, out: &mut Vec<ProducerRecord>) -> Result<(), Halt> {
        self.records_in.inc();
        let dead = &self.downstream.dead;
        let Some(bytes) = record.value.as_deref() else {
            out.push(dead.unreadable("the record has no value".into(), record, None));
            return Ok(());
        };
        let json: serde_json::Value = match serde_json::from_slice(bytes) {
            Ok(json) => json,
            Err(e) => {
                out.push(dead.unreadable(format!("not JSON: {e}"), record, Some(bytes)));
                return Ok(());
            }
        };
        let origin = origin_of(record);
        let key = match &record.key {
            Some(k) => String::from_utf8_lossy(k).into_owned(),
            None => format!("{}/{}/{}", origin.topic, origin.partition, origin.offset),
        };
        let payload = match self.schemas.validate(&self.schema, &json) {
            Ok(value) => value,
            Err(errors) => {
                out.push(dead.record(
                    errors.to_string(),
                    Some(origin),
                    Some(key),
                    Value::from(&json),
                    0,
                ));
                return Ok(());
            }
        };
        let mut envelope =
            Envelope::new(MessageId::derive(&self.dag, &self.node, &key), key, payload);
        envelope.trace = telemetry::record_trace(record);
        // The record's span: the context everything it leads to refers to.
        let _span = telemetry::enabled().then(|| {
            let mut span = telemetry::start(
                "wellspring.source",
                SpanKind::Consumer,
                telemetry::About::envelope("source shard", &self.dag, &self.node, &envelope),
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
        envelope.origin = Some(origin.clone());
        self.downstream
            .send(envelope, Some(origin), 0, out)
            .map_err(|e| RetryLater(e.to_string()).into())
    }
}
