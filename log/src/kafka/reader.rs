//! A reader's clients: partitions assigned directly from given offsets (changelog
//! restores, the metadata table, `verify`), in no group that commits, one client per
//! topic so that the end of a partition (`PartitionEOF`, at the last stable offset) says
//! which partition is caught up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::call::explain;
use super::poll_thread::{Client, Spawner};
use crate::{ConsumerConfig, LogError, Offset, StartFrom, TopicPartition};

/// The clients of a reader, and what it was given.
pub(super) struct Readers {
    pub clients: Vec<Client>,
    pub assignment: BTreeSet<TopicPartition>,
}

/// Assigns `partitions` (each from its offset, or by `start_from`) to clients of
/// `config` (the consumer's settings), one per topic.
pub(super) fn assign(
    brokers: &str,
    consumer: &ConsumerConfig,
    partitions: &[(TopicPartition, Option<Offset>)],
    config: ClientConfig,
    spawner: &Spawner,
) -> Result<Readers, LogError> {
    let fail = |e| explain(&e, brokers);
    let config = reader_config(config, consumer);
    let mut assignment = BTreeSet::new();
    let mut by_topic: BTreeMap<Arc<str>, TopicPartitionList> = BTreeMap::new();
    for (tp, offset) in partitions {
        let start = match (offset, consumer.start_from) {
            (Some(o), _) => KafkaOffset::Offset(*o as i64),
            (None, StartFrom::Earliest) => KafkaOffset::Beginning,
            (None, StartFrom::Latest) => KafkaOffset::End,
        };
        by_topic
            .entry(tp.topic.clone())
            .or_default()
            .add_partition_offset(&tp.topic, tp.partition as i32, start)
            .map_err(fail)?;
        assignment.insert(tp.clone());
    }
    let mut clients = Vec::new();
    for (topic, tpl) in by_topic {
        let reader = spawner.spawn(&config, Some(topic))?;
        reader.consumer.assign(&tpl).map_err(fail)?;
        clients.push(reader);
    }
    Ok(Readers {
        clients,
        assignment,
    })
}

/// A reader's client settings on top of `config` (the consumer's): a group id that never
/// commits, partition ends reported, and how long an idle fetch may be held.
fn reader_config(mut config: ClientConfig, consumer: &ConsumerConfig) -> ClientConfig {
    // librdkafka wants a group id even to assign; this one never commits.
    config
        .set(
            "group.id",
            format!("wellspring-reader-{}", consumer.client_id),
        )
        .set("enable.partition.eof", "true")
        // A restore reads a backlog to its end and then waits on nothing: the broker should
        // answer the last fetch at once rather than after librdkafka's 500 ms. A follower
        // may ask for a longer wait.
        .set(
            "fetch.wait.max.ms",
            consumer
                .idle_wait
                .map_or(25, |wait| wait.as_millis().max(1))
                .to_string(),
        );
    config
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reader_holds_an_idle_fetch_25_ms_unless_it_asks_for_longer() {
        let mut consumer = ConsumerConfig::assign("status", Vec::new());
        let config = reader_config(ClientConfig::new(), &consumer);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("25"));
        assert_eq!(config.get("group.id"), Some("wellspring-reader-status"));
        consumer.idle_wait = Some(Duration::from_millis(250));
        let config = reader_config(ClientConfig::new(), &consumer);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("250"));
    }
}
