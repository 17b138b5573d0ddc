//! Records onto Kafka: a [`ProducerRecord`] as librdkafka's record, the partition it goes
//! to (its own, else `partition_for_key` computed here as on the embedded log), and the
//! plain producer (idempotent, not transactional) of sources, generators and tools.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, FutureRecord};

use super::admin::known_partitions;
use super::connection::Connection;
use crate::{LogError, Offset, Producer, ProducerRecord, TopicPartition, partition_for_key};

fn headers_of(record: &ProducerRecord) -> Option<OwnedHeaders> {
    (!record.headers.is_empty()).then(|| {
        record.headers.iter().fold(
            OwnedHeaders::new_with_capacity(record.headers.len()),
            |headers, (k, v)| {
                headers.insert(Header {
                    key: k,
                    value: Some(v.as_ref()),
                })
            },
        )
    })
}

fn future_record(record: &ProducerRecord, partition: i32) -> FutureRecord<'_, [u8], [u8]> {
    let mut future = FutureRecord::to(&record.topic).partition(partition);
    if let Some(key) = &record.key {
        future = future.key(key.as_ref());
    }
    if let Some(value) = &record.value {
        future = future.payload(value.as_ref());
    }
    if let Some(headers) = headers_of(record) {
        future = future.headers(headers);
    }
    future
}

/// The record for a producer without a background thread (a transaction's outputs).
pub(super) fn base_record(record: &ProducerRecord, partition: i32) -> BaseRecord<'_, [u8], [u8]> {
    let mut base = BaseRecord::to(&record.topic).partition(partition);
    if let Some(key) = &record.key {
        base = base.key(key.as_ref());
    }
    if let Some(value) = &record.value {
        base = base.payload(value.as_ref());
    }
    if let Some(headers) = headers_of(record) {
        base = base.headers(headers);
    }
    base
}

/// The partition a record goes to: its own, or its key's, or the first.
pub(super) async fn placement(
    connection: &Arc<Connection>,
    record: &ProducerRecord,
) -> Result<i32, LogError> {
    Ok(match (record.partition, &record.key) {
        (Some(p), _) => p as i32,
        (None, Some(key)) => {
            partition_for_key(key, known_partitions(connection, &record.topic).await?) as i32
        }
        (None, None) => 0,
    })
}

/// Sends records with the plain (idempotent, non-transactional) producer; resolves once
/// they are delivered, with their offsets.
pub(super) async fn send_plain(
    connection: &Arc<Connection>,
    records: &[ProducerRecord],
) -> Result<Vec<(TopicPartition, Offset)>, LogError> {
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        let partition = placement(connection, record).await?;
        loop {
            match connection
                .producer
                .send_result(future_record(record, partition))
            {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(connection.explain(&e)),
            }
        }
    }
    let mut out = Vec::with_capacity(deliveries.len());
    for (delivery, record) in deliveries.into_iter().zip(records) {
        match delivery.await {
            Ok(Ok(delivered)) => out.push((
                TopicPartition::new(record.topic.clone(), delivered.partition as u32),
                delivered.offset.max(0) as Offset,
            )),
            Ok(Err((e, _))) => return Err(connection.explain(&e)),
            Err(_) => return Err(LogError::Other("the Kafka producer was closed".into())),
        }
    }
    Ok(out)
}

/// [`Producer`] on the shared plain producer.
pub(super) struct KafkaProducer {
    pub connection: Arc<Connection>,
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(
        &self,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<(TopicPartition, Offset)>, LogError> {
        send_plain(&self.connection, &records).await
    }
}
