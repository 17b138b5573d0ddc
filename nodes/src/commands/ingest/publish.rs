//! Where `wellspring ingest` sends its records: Kafka (the log crate's provider, as
//! `generate` does), a node's `POST /api/topics/{topic}/records`, or standard output for
//! a dry run. Every sink resolves a batch only once it is durable (acknowledged by the
//! brokers, answered 200 by the node, written out), so the scan marks it published after.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use wellspring_log::{Cleanup, KafkaLog, KafkaSettings, Log, LogError, Producer, TopicSpec};
use wellspring_protocol::ingest_api::{self, RefusedBatch};
use wellspring_protocol::taskstore::api;

/// One record to publish: its topic, key and value (JSON text).
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub value: String,
}

/// Why a batch was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Kafka: {0}")]
    Kafka(#[from] LogError),
    #[error("{0}")]
    Http(#[from] PostError),
    #[error("writing to standard output: {0}")]
    Output(#[from] std::io::Error),
}

/// Why a node did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} refused {count} record(s): {errors}")]
    Rejected {
        url: String,
        count: usize,
        errors: String,
    },
    #[error("{url} needs a token: set WELLSPRING_API_TOKEN to the node's")]
    Unauthorized { url: String },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

impl PostError {
    /// A node that is down or busy may take the same batch a moment later.
    fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Rejected { .. } | Self::Unauthorized { .. } => false,
        }
    }
}

/// The body of `POST /api/topics/{topic}/records`: `{"records":[{key, value, headers}]}`,
/// written directly (the values are JSON text already).
pub fn records_body(records: &[&OutRecord]) -> String {
    let mut body = String::with_capacity(records.iter().map(|r| r.value.len() + 64).sum());
    body.push_str("{\"records\":[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"key\":");
        body.push_str(&serde_json::Value::String(record.key.clone()).to_string());
        body.push_str(",\"value\":");
        body.push_str(&record.value);
        body.push_str(",\"headers\":{}}");
    }
    body.push_str("]}");
    body
}

/// Posts `records` (all of `topic`) to the node at `base_url`; `Ok` once it answered 200
/// (durable), else the node's per-record errors or its status.
pub async fn post_records(
    http: &reqwest::Client,
    base_url: &str,
    token: Option<&str>,
    topic: &str,
    records: &[&OutRecord],
) -> Result<(), PostError> {
    let url = format!(
        "{}{}",
        base_url.trim_end_matches('/'),
        ingest_api::records_path(topic)
    );
    let mut request = http
        .post(&url)
        .header("content-type", "application/json")
        .body(records_body(records));
    if let Some(token) = token {
        request = request.header(api::AUTHORIZATION, api::bearer(token));
    }
    let response = request.send().await.map_err(|e| PostError::Unreachable {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    let status = response.status().as_u16();
    if status == 200 {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    match status {
        401 => Err(PostError::Unauthorized { url }),
        // The node refused the batch whole, naming each wrong record and why.
        422 => {
            let errors: Vec<String> = serde_json::from_str::<RefusedBatch>(&body)
                .map(|refused| {
                    refused
                        .records
                        .iter()
                        .map(|r| {
                            let what = r.errors.join(", ");
                            match records.get(r.index) {
                                Some(record) => {
                                    format!("record {} ({}): {what}", r.index, record.key)
                                }
                                None => format!("record {}: {what}", r.index),
                            }
                        })
                        .collect()
                })
                .unwrap_or_else(|_| vec![body.clone()]);
            Err(PostError::Rejected {
                url,
                count: errors.len(),
                errors: errors.join("; "),
            })
        }
        _ => Err(PostError::Status { url, status, body }),
    }
}

/// Where records go.
pub enum Sink {
    Kafka {
        producer: Box<dyn Producer>,
        /// Kept open while its producer is in use.
        _log: KafkaLog,
    },
    Node {
        http: reqwest::Client,
        url: String,
        token: Option<String>,
    },
    /// One JSON object a line: `{"topic", "key", "value"}`.
    DryRun(std::io::BufWriter<std::io::Stdout>),
}

impl Sink {
    /// The Kafka producer, creating the two topics when missing (as `generate` does).
    pub async fn kafka(
        settings: KafkaSettings,
        images_topic: &str,
        metadata_topic: &str,
        partitions: u32,
    ) -> Result<Self, LogError> {
        let log = KafkaLog::connect(settings).await?;
        let topics = [
            TopicSpec::new(images_topic.to_owned(), partitions, Cleanup::Delete),
            TopicSpec::new(metadata_topic.to_owned(), 1, Cleanup::Compact),
        ];
        for spec in &topics {
            match log.partitions(&spec.name).await {
                Ok(_) => {}
                Err(LogError::UnknownTopic(_)) => log.ensure_topic(spec).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(Self::Kafka {
            producer: log.producer()?,
            _log: log,
        })
    }

    pub fn node(url: &str, token: Option<String>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self::Node {
            http,
            url: url.to_owned(),
            token,
        })
    }

    pub fn dry_run() -> Self {
        Self::DryRun(std::io::BufWriter::new(std::io::stdout()))
    }

    /// Publishes `records`, in order; resolves once they are durable.
    pub async fn publish(&mut self, records: &[OutRecord]) -> Result<(), PublishError> {
        match self {
            Self::Kafka { producer, .. } => {
                let batch = records
                    .iter()
                    .map(|r| {
                        wellspring_log::ProducerRecord::new(
                            r.topic.as_str(),
                            Some(Bytes::from(r.key.clone())),
                            Some(Bytes::from(r.value.clone())),
                        )
                    })
                    .collect();
                producer.send(batch).await?;
            }
            Self::Node { http, url, token } => {
                // One call per topic, in the records' order.
                let mut start = 0;
                while start < records.len() {
                    let topic = &records[start].topic;
                    let end = records[start..]
                        .iter()
                        .position(|r| r.topic != *topic)
                        .map_or(records.len(), |n| start + n);
                    let group: Vec<&OutRecord> = records[start..end].iter().collect();
                    post_with_retries(http, url, token.as_deref(), topic, &group).await?;
                    start = end;
                }
            }
            Self::DryRun(out) => {
                for r in records {
                    let key = serde_json::Value::String(r.key.clone());
                    let topic = serde_json::Value::String(r.topic.clone());
                    writeln!(
                        out,
                        "{{\"topic\":{topic},\"key\":{key},\"value\":{}}}",
                        r.value
                    )?;
                }
                out.flush()?;
            }
        }
        Ok(())
    }
}

/// A node restarting or shedding load takes the batch on a later try (the records'
/// keys make a repeat harmless).
async fn post_with_retries(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    topic: &str,
    records: &[&OutRecord],
) -> Result<(), PostError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match post_records(http, url, token, topic, records).await {
            Err(e) if e.is_transient() && attempt < 5 => {
                tracing::warn!("{e}; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_contract_json_with_keys_escaped() {
        let records = [
            OutRecord {
                topic: "images_channel".into(),
                key: "EXP-1/1/B02/1/1".into(),
                value: r#"{"well":"B02"}"#.into(),
            },
            OutRecord {
                topic: "images_channel".into(),
                key: "a \"quoted\" key".into(),
                value: "{}".into(),
            },
        ];
        let body = records_body(&records.iter().collect::<Vec<_>>());
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"records": [
                {"key": "EXP-1/1/B02/1/1", "value": {"well": "B02"}, "headers": {}},
                {"key": "a \"quoted\" key", "value": {}, "headers": {}},
            ]})
        );
    }
}
