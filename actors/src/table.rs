//! The table reader: materializes a `topic-table` of experiment metadata into this node's
//! [`MetadataTable`].
//!
//! Every node reads every partition of the table's topic from the beginning (a global
//! table: layouts are small and every grouping shard needs them). A record that is not
//! a valid layout goes to the dead-letter topic; the reader keeps going.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use wellspring_log::{ConsumerConfig, Log, NoListener, Producer, ProducerRecord, TopicPartition};
use wellspring_protocol::{ExperimentLayout, Origin, SchemaSet, Value};

use crate::metadata::MetadataTable;
use crate::metrics::Counter;
use crate::routing::DeadLetterWriter;
use crate::supervision::{ChildLink, Exit, StopChild};

pub struct TableSpec {
    pub name: String,
    pub topic: String,
    pub schema: String,
    pub schemas: Arc<SchemaSet>,
    pub log: Arc<dyn Log>,
    pub table: MetadataTable,
    pub dead: DeadLetterWriter,
    pub records_in: Counter,
}

pub struct TableActor {
    spec: Arc<TableSpec>,
    link: ChildLink,
    exit: Exit,
    stop: Arc<tokio::sync::Notify>,
}

impl TableActor {
    pub fn new(spec: Arc<TableSpec>, link: ChildLink) -> Self {
        Self {
            spec,
            link,
            exit: Exit::Normal,
            stop: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

fn layout_of(spec: &TableSpec, bytes: Option<&[u8]>) -> Result<ExperimentLayout, (String, Value)> {
    let bytes = bytes.ok_or_else(|| ("the record has no value".to_owned(), Value::Null))?;
    let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        (
            format!("not JSON: {e}"),
            Value::String(String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned()),
        )
    })?;
    let value = spec
        .schemas
        .validate(&spec.schema, &json)
        .map_err(|e| (e.to_string(), Value::from(&json)))?;
    ExperimentLayout::from_value(&value)
        .map_err(|e| (format!("not a valid layout: {e}"), Value::from(&json)))
}

async fn read_table(spec: Arc<TableSpec>, stop: Arc<tokio::sync::Notify>) -> Result<(), String> {
    let partitions = spec
        .log
        .partitions(&spec.topic)
        .await
        .map_err(|e| e.to_string())?;
    let assignment = (0..partitions)
        .map(|p| (TopicPartition::new(spec.topic.as_str(), p), Some(0)))
        .collect();
    let mut consumer = spec
        .log
        .consumer(ConsumerConfig::assign(spec.name.clone(), assignment))
        .map_err(|e| e.to_string())?;
    let producer: Box<dyn Producer> = spec.log.producer().map_err(|e| e.to_string())?;
    let mut listener = NoListener;
    loop {
        // Biased (stop first): a fixed order, so a simulated run replays exactly.
        let records = tokio::select! {
            biased;
            _ = stop.notified() => return Ok(()),
            records = consumer.poll(&mut listener, 1000, Duration::from_secs(1)) => records.map_err(|e| e.to_string())?,
        };
        let mut dead: Vec<ProducerRecord> = Vec::new();
        for record in records {
            spec.records_in.inc();
            match layout_of(&spec, record.value.as_deref()) {
                Ok(layout) => {
                    tracing::info!(table = %spec.name, experiment = %layout.experiment, plates = layout.plates.len(), "experiment layout");
                    spec.table.upsert(layout);
                }
                Err((reason, value)) => {
                    let origin = Origin {
                        topic: record.topic.to_string(),
                        partition: record.partition,
                        offset: record.offset,
                    };
                    let key = record
                        .key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into_owned());
                    dead.push(spec.dead.record(reason, Some(origin), key, value, 0));
                }
            }
        }
        if !dead.is_empty() {
            producer
                .send(dead)
                .await
                .map_err(|e| format!("writing dead letters: {e}"))?;
        }
    }
}

impl Actor for TableActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.spawn(
            read_table(self.spec.clone(), self.stop.clone())
                .into_actor(self)
                .map(|result, act, ctx| {
                    if let Err(reason) = result {
                        tracing::error!(table = %act.spec.name, %reason, "table reader failed");
                        act.exit = Exit::Failed(reason);
                    }
                    ctx.stop();
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.report(self.exit.clone());
    }
}

impl Handler<StopChild> for TableActor {
    type Result = ();

    fn handle(&mut self, _: StopChild, _: &mut Self::Context) {
        self.stop.notify_one();
    }
}
