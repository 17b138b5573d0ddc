//! [`KafkaLog`]: a Kafka cluster as a [`Log`], built from the other modules: topics from
//! [`admin`](super::admin), producers from [`producer`](super::producer), consumers from
//! [`consumer`](super::consumer), evictions from [`eviction`](super::eviction).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use super::admin;
use super::call::blocking;
use super::connection::Connection;
use super::consumer::KafkaConsumer;
use super::eviction::{Evicted, StaticGroup, evict};
use super::producer::KafkaProducer;
use super::settings::KafkaSettings;
use crate::{
    Cleanup, Consumer, ConsumerConfig, Log, LogError, NoListener, Offset, Producer, TopicPartition,
    TopicSpec,
};

/// A Kafka cluster as a [`Log`]. Cloning gives another handle to the same clients.
#[derive(Clone)]
pub struct KafkaLog {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("settings", &self.connection.settings)
            .finish()
    }
}

impl KafkaLog {
    /// Connects, and checks that the brokers answer.
    pub async fn connect(settings: KafkaSettings) -> Result<Self, LogError> {
        let connection = Arc::new(Connection::open(settings)?);
        let probe = connection.clone();
        let timeout = connection.settings.timeout.min(Duration::from_secs(10));
        blocking(move || probe.meta.fetch_metadata(None, timeout).map(|_| ()))
            .await?
            .map_err(|e| connection.explain(&e))?;
        Ok(KafkaLog { connection })
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.connection.settings
    }

    /// Whether read_committed consumers of this broker skip records of aborted
    /// transactions (a broker that does not report aborted transactions leaves them
    /// visible: then outputs are effectively once only by their ids).
    pub async fn hides_aborted_transactions(&self, topic_prefix: &str) -> Result<bool, LogError> {
        let topic = format!("{topic_prefix}probe.aborted-transactions");
        self.ensure_topic(&TopicSpec::new(topic.clone(), 1, Cleanup::Delete))
            .await?;
        let tp = TopicPartition::new(topic.as_str(), 0);
        let start = self.end_offset(&tp).await?;
        let settings = self.connection.settings.clone();
        let id = format!("wellspring-probe-{}", self.connection.clock.now_ms());
        let (t, marker) = (topic.clone(), format!("aborted-{id}"));
        blocking(move || -> Result<(), KafkaError> {
            let producer: FutureProducer =
                settings.client().set("transactional.id", &id).create()?;
            producer.init_transactions(settings.timeout)?;
            producer.begin_transaction()?;
            let _ = producer.send_result(
                FutureRecord::<str, str>::to(&t)
                    .partition(0)
                    .payload(marker.as_str()),
            );
            producer.flush(settings.timeout)?;
            producer.abort_transaction(settings.timeout)
        })
        .await?
        .map_err(|e| self.connection.explain(&e))?;
        let mut reader = self.consumer(ConsumerConfig::assign(
            "probe",
            vec![(tp.clone(), Some(start))],
        ))?;
        let mut listener = NoListener;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            let records = reader
                .poll(&mut listener, 100, Duration::from_millis(200))
                .await?;
            if !records.is_empty() {
                return Ok(false);
            }
            if reader.caught_up(&tp) {
                return Ok(true);
            }
        }
        Ok(true)
    }
}

#[async_trait]
impl Log for KafkaLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        admin::ensure_topic(&self.connection, spec).await
    }

    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        admin::partitions(&self.connection, topic).await
    }

    async fn end_offset(&self, partition: &TopicPartition) -> Result<Offset, LogError> {
        admin::end_offset(&self.connection, partition).await
    }

    fn producer(&self) -> Result<Box<dyn Producer>, LogError> {
        Ok(Box::new(KafkaProducer {
            connection: self.connection.clone(),
        }))
    }

    fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, LogError> {
        Ok(Box::new(KafkaConsumer::start(
            self.connection.clone(),
            config,
        )?))
    }

    fn describe(&self) -> String {
        format!("Kafka at {}", self.connection.settings.brokers)
    }

    async fn evict_static_member(&self, instance_id: &str) -> Result<Vec<String>, LogError> {
        let groups: Vec<(String, StaticGroup)> = self
            .connection
            .static_groups
            .lock()
            .iter()
            .map(|(name, spec)| (name.clone(), spec.clone()))
            .collect();
        // Every group at once: each stand-in waits on its own coordinator.
        let running: Vec<_> = groups
            .into_iter()
            .map(|(group, spec)| {
                let client = self.connection.settings.client();
                let timeout = self.connection.settings.timeout;
                let instance = instance_id.to_owned();
                let name = group.clone();
                let task = tokio::task::spawn_blocking(move || {
                    evict(client, &name, &spec, &instance, timeout)
                });
                (group, task)
            })
            .collect();
        let mut evicted = Vec::new();
        let mut failures = Vec::new();
        for (group, task) in running {
            match task.await {
                Ok(Ok(Evicted::Removed)) => evicted.push(group),
                Ok(Ok(Evicted::NotAMember)) => {}
                Ok(Err(e)) => failures.push(format!("{group}: {e}")),
                Err(e) => failures.push(format!("{group}: {e}")),
            }
        }
        if !evicted.is_empty() {
            tracing::info!(member = %instance_id, groups = ?evicted, "evicted a lost static member; its partitions move");
        }
        if failures.is_empty() {
            Ok(evicted)
        } else {
            Err(LogError::Other(format!(
                "could not evict {instance_id} from every group (evicted from {}): {}",
                evicted.len(),
                failures.join("; ")
            )))
        }
    }
}
