//! `POST /api/topics/{topic}/records`: records published over HTTP, for uploaders that
//! cannot speak Kafka. The body is a batch in the shape of the Kafka REST proxies:
//!
//! ```json
//! {"records": [{"key": "EXP-1/1/B02/1/1", "value": {...}, "headers": {"source": "scope-3"}}]}
//! ```
//!
//! Only topics that this node's DAGs read (their `topic-stream` and `topic-table`
//! sources) take records, each checked against the topic's declared key and value
//! schemas. A batch is all or nothing: when any record is wrong the answer is `422` with
//! every wrong record's index and errors, and nothing is written; else the batch goes to
//! the log in one append and the answer (`200`, each record's partition and offset)
//! comes only once the log has it durably (fsynced on the durable embedded log with
//! `--fsync always`; acknowledged by the brokers on Kafka). A batch holds at most
//! [`MAX_RECORDS`] records, within the API's body limit. The route, the limit and the
//! answers' bodies are the protocol's ([`wellspring_protocol::ingest_api`]), which
//! `wellspring ingest` calls too.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes as Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value as Json_;
use wellspring_log::{Log, LogError, ProducerRecord};
use wellspring_protocol::Dag;
use wellspring_protocol::ingest_api::{
    MAX_RECORDS, RecordErrors, RefusedBatch, WrittenBatch, WrittenRecord,
};
use wellspring_protocol::schema::SchemaSet;
use wellspring_protocol::spec::NodeKind;

use super::{Answer, Api, ApiError};

/// The topics records can be posted to, with their schemas, and the log they go to.
#[derive(Clone)]
pub struct IngestTopics {
    log: Arc<dyn Log>,
    topics: Arc<BTreeMap<String, TopicSchemas>>,
}

struct TopicSchemas {
    key: String,
    value: String,
    /// The schemas of the DAG that declares the topic.
    schemas: Arc<SchemaSet>,
}

impl IngestTopics {
    /// The sources of `dags`, on `log`.
    pub fn new(log: Arc<dyn Log>, dags: &[Dag]) -> Self {
        let mut topics = BTreeMap::new();
        for dag in dags {
            let schemas = Arc::new(dag.schemas.clone());
            for node in &dag.nodes {
                let (NodeKind::TopicStream { topic } | NodeKind::TopicTable { topic }) = &node.kind
                else {
                    continue;
                };
                if let Some(decl) = dag.topics.get(topic) {
                    topics.insert(
                        topic.clone(),
                        TopicSchemas {
                            key: decl.key_schema.clone(),
                            value: decl.value_schema.clone(),
                            schemas: schemas.clone(),
                        },
                    );
                }
            }
        }
        Self {
            log,
            topics: Arc::new(topics),
        }
    }
}

pub(super) async fn publish(
    State(api): State<Api>,
    Path(topic): Path<String>,
    body: Body,
) -> Answer<Response> {
    let ingest = &api.ingest;
    let Some(schemas) = ingest.topics.get(&topic) else {
        let known: Vec<&str> = ingest.topics.keys().map(String::as_str).collect();
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            if known.is_empty() {
                format!(
                    "topic {topic:?} takes no records: this node runs no DAG that reads a topic (start it with --dag)"
                )
            } else {
                format!(
                    "topic {topic:?} is not read by this node's DAGs; records can be posted to: {}",
                    known.join(", ")
                )
            },
        ));
    };
    let batch: Json_ = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Some(records) = batch
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("records"))
        .and_then(Json_::as_array)
    else {
        return Err(ApiError::bad_request(
            r#"the body must be {"records": [{"key": ..., "value": ..., "headers": {...}}, ...]}"#,
        ));
    };
    if records.is_empty() {
        return Err(ApiError::bad_request("the batch holds no records"));
    }
    if records.len() > MAX_RECORDS {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a batch holds at most {MAX_RECORDS} records, not {}: split it",
                records.len()
            ),
        ));
    }
    let mut checked = Vec::with_capacity(records.len());
    let mut refused = Vec::new();
    for (index, record) in records.iter().enumerate() {
        match check(&topic, schemas, record) {
            Ok(record) => checked.push(record),
            Err(errors) => refused.push(RecordErrors { index, errors }),
        }
    }
    if !refused.is_empty() {
        let body = RefusedBatch {
            error: format!(
                "{} of {} records are wrong (see records); nothing was written",
                refused.len(),
                records.len()
            ),
            records: refused,
        };
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
    }
    let producer = ingest.log.producer().map_err(log_error)?;
    let written = producer.send(checked).await.map_err(log_error)?;
    let offsets = written
        .into_iter()
        .map(|(tp, offset)| WrittenRecord {
            partition: tp.partition,
            offset,
        })
        .collect();
    Ok(Json(WrittenBatch { topic, offsets }).into_response())
}

fn log_error(e: LogError) -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the log did not take the batch: {e}; send it again (a repeated image is dropped by its key)"
        ),
    )
}

/// One record of a batch, checked against the topic's schemas.
fn check(
    topic: &str,
    schemas: &TopicSchemas,
    record: &Json_,
) -> Result<ProducerRecord, Vec<String>> {
    let Some(fields) = record.as_object() else {
        return Err(vec![
            "a record must be an object with a value (and a key and headers if any)".into(),
        ]);
    };
    let mut errors = Vec::new();
    for name in fields.keys() {
        if !matches!(name.as_str(), "key" | "value" | "headers") {
            errors.push(format!(
                "unknown field {name:?} (a record has key, value and headers)"
            ));
        }
    }
    let key = match fields.get("key") {
        None | Some(Json_::Null) => None,
        Some(key) => match encode(&schemas.schemas, &schemas.key, key, "key") {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                errors.extend(e);
                None
            }
        },
    };
    let value = match fields.get("value") {
        None | Some(Json_::Null) => {
            errors.push(format!("value is required (a {} record)", schemas.value));
            None
        }
        Some(value) => match encode(&schemas.schemas, &schemas.value, value, "value") {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                errors.extend(e);
                None
            }
        },
    };
    let mut headers = Vec::new();
    match fields.get("headers") {
        None | Some(Json_::Null) => {}
        Some(Json_::Object(map)) => {
            for (name, value) in map {
                match value.as_str() {
                    Some(text) if !name.is_empty() => {
                        headers.push((name.clone(), Bytes::copy_from_slice(text.as_bytes())));
                    }
                    Some(_) => errors.push("headers: a header needs a name".into()),
                    None => errors.push(format!("headers.{name}: must be a string")),
                }
            }
        }
        Some(_) => errors.push("headers: must be an object of strings".into()),
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut record = ProducerRecord::new(topic, key, value);
    record.headers = headers;
    Ok(record)
}

/// A key or value as the log keeps it: a `string` as its text, anything else as JSON,
/// once it matches `schema`; else each error, its path under `field`.
fn encode(
    schemas: &SchemaSet,
    schema: &str,
    json: &Json_,
    field: &str,
) -> Result<Bytes, Vec<String>> {
    schemas.validate(schema, json).map_err(|e| {
        e.errors
            .iter()
            .map(|e| match e.path.as_str() {
                "" => format!("{field}: {}", e.message),
                path => format!("{field}.{path}: {}", e.message),
            })
            .collect::<Vec<_>>()
    })?;
    Ok(match json {
        Json_::String(text) if schema == "string" => Bytes::copy_from_slice(text.as_bytes()),
        other => Bytes::from(other.to_string()),
    })
}
