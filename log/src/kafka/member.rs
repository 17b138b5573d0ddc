//! A consumer group member's client: the group's timing (session, heartbeats, how long a
//! rebalance waits), cooperative-sticky assignment, static membership (remembered so a
//! lost peer can be evicted from the group), and the member's transactional producer.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::BaseProducer;

use super::call::explain;
use super::connection::Connection;
use super::eviction::StaticGroup;
use super::poll_thread::{Client, Spawner};
use super::settings::KafkaSettings;
use super::transactions::transactional_producer;
use crate::{ConsumerConfig, LogError};

/// How long a group waits for its members.
pub(super) struct GroupTiming {
    /// The session timeout (at least a second).
    pub session_ms: u128,
    /// How long a rebalance waits for the members to rejoin.
    pub rebalance_timeout: Duration,
    /// How long the poll thread waits for a revocation's commit.
    pub revoke_wait: Duration,
}

impl GroupTiming {
    pub fn of(settings: &KafkaSettings, config: &ConsumerConfig) -> Self {
        // How long a rebalance waits for the members to rejoin (librdkafka sends
        // max.poll.interval.ms as the rebalance timeout). Kafka ends the wait for a member
        // whose session runs out; some brokers (tansu) wait it out in full, so it is kept
        // to twice the session timeout (at least 20 s) rather than librdkafka's 5 minutes.
        // The poll thread never blocks longer than half of it (a revoke's flush).
        let session_ms = config.session_timeout.as_millis().max(1000);
        let rebalance_timeout = match settings.properties.get("max.poll.interval.ms") {
            Some(ms) => Duration::from_millis(ms.parse().unwrap_or(300_000)),
            None => Duration::from_millis((session_ms * 2).max(20_000) as u64),
        };
        Self {
            session_ms,
            rebalance_timeout,
            revoke_wait: settings.timeout.min(rebalance_timeout / 2),
        }
    }
}

/// A group member's client, subscribed, and its transactional producer (when
/// transactions are on).
pub(super) struct Member {
    pub client: Client,
    pub producer: Option<BaseProducer>,
}

/// Joins `group` with a client of `config` (the consumer's settings) to read `topics`.
pub(super) fn join(
    connection: &Connection,
    consumer: &ConsumerConfig,
    group: &str,
    topics: &[String],
    mut config: ClientConfig,
    timing: &GroupTiming,
    spawner: &Spawner,
) -> Result<Member, LogError> {
    let settings = &connection.settings;
    let session = timing.session_ms;
    let group_properties = vec![
        (
            "max.poll.interval.ms".to_owned(),
            timing.rebalance_timeout.as_millis().to_string(),
        ),
        (
            "partition.assignment.strategy".to_owned(),
            settings
                .properties
                .get("partition.assignment.strategy")
                .map_or("cooperative-sticky", String::as_str)
                .to_owned(),
        ),
        ("session.timeout.ms".to_owned(), session.to_string()),
        // A member's group requests (heartbeats, JoinGroup, SyncGroup) wait behind its
        // fetch on the connection to a broker that is both leader and coordinator, and an
        // idle partition's fetch is held for this long: librdkafka's 500 ms made each step
        // of a rebalance of an idle group wait half a second (a drain took 2 s; 0.9 s at
        // 5 ms). Idle members then fetch every 50 ms.
        (
            "fetch.wait.max.ms".to_owned(),
            settings
                .properties
                .get("fetch.wait.max.ms")
                .map_or("50", String::as_str)
                .to_owned(),
        ),
        // Members learn of a rebalance (a peer that drained and left, a new one) at their
        // next heartbeat: at most a fifth of a second with a 6 s session, so that a
        // hand-over takes well under a second.
        (
            "heartbeat.interval.ms".to_owned(),
            (session / 30).clamp(100, 500).to_string(),
        ),
    ];
    config.set("group.id", group);
    for (key, value) in &group_properties {
        config.set(key, value);
    }
    if let Some(instance) = &consumer.instance_id {
        config.set("group.instance.id", instance);
        connection.static_groups.lock().insert(
            group.to_owned(),
            StaticGroup {
                topics: topics.to_vec(),
                properties: group_properties,
                session: Duration::from_millis(session as u64),
            },
        );
    }
    let producer = if settings.transactions {
        let member = consumer
            .instance_id
            .as_deref()
            .unwrap_or(&consumer.client_id);
        Some(
            transactional_producer(settings, group, member)
                .map_err(|e| explain(&e, &settings.brokers))?,
        )
    } else {
        None
    };
    let client = spawner.spawn(&config, None)?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    client
        .consumer
        .subscribe(&names)
        .map_err(|e| explain(&e, &settings.brokers))?;
    Ok(Member { client, producer })
}
