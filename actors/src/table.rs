//! The table reader: materializes a `topic-table` of experiment metadata into this node's
//! [`MetadataTable`].
//!
//! Every node reads every partition of the table's topic from the beginning (a global
//! table: layouts are small and every grouping shard needs them). A record that is not
//! a valid layout goes to the dead-letter topic; the reader keeps going.

use std::sync::Arc;
use std::time::Duration;

use wellspring_log::{Log, LogRecord, ProducerRecord};
use wellspring_protocol::{ExperimentLayout, SchemaSet, Value};

use crate::metadata::MetadataTable;
use crate::metrics::Counter;
use crate::reader::{Follow, Partitions, Reader, ReaderSpec};
use crate::routing::{DeadLetterWriter, text_of};
use crate::supervision::ChildLink;

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

/// Applies layouts to the table, and dead-letters what is not one.
pub struct Layouts(Arc<TableSpec>);

/// The reader of one `topic-table`.
pub type TableActor = Reader<Layouts>;

impl Reader<Layouts> {
    pub fn new(spec: Arc<TableSpec>, link: ChildLink) -> Self {
        let reading = ReaderSpec {
            name: spec.name.clone(),
            topic: spec.topic.clone(),
            partitions: Partitions::All,
            log: spec.log.clone(),
            wait: Duration::from_secs(1),
        };
        Reader::following(reading, Layouts(spec), link)
    }
}

fn layout_of(spec: &TableSpec, bytes: Option<&[u8]>) -> Result<ExperimentLayout, (String, Value)> {
    let bytes = bytes.ok_or_else(|| ("the record has no value".to_owned(), Value::Null))?;
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| (format!("not JSON: {e}"), text_of(Some(bytes))))?;
    let value = spec
        .schemas
        .validate(&spec.schema, &json)
        .map_err(|e| (e.to_string(), Value::from(&json)))?;
    ExperimentLayout::from_value(&value)
        .map_err(|e| (format!("not a valid layout: {e}"), Value::from(&json)))
}

impl Follow for Layouts {
    const WRITING: &'static str = "writing dead letters";

    fn apply(&mut self, records: Vec<LogRecord>, out: &mut Vec<ProducerRecord>) {
        let spec = &self.0;
        for record in records {
            spec.records_in.inc();
            match layout_of(spec, record.value.as_deref()) {
                Ok(layout) => {
                    tracing::info!(table = %spec.name, experiment = %layout.experiment, plates = layout.plates.len(), "experiment layout");
                    spec.table.upsert(layout);
                }
                Err((reason, value)) => out.push(spec.dead.of_record(reason, &record, value)),
            }
        }
    }
}
