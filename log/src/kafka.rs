//! The Kafka log: the [`Log`] interface on rdkafka (its bundled librdkafka).
//!
//! - Topics are created (or checked: partitions and cleanup policy) with the admin API;
//!   keyed records go to `partition_for_key(key)` computed here, as on the embedded log.
//! - A group consumer is polled on a thread of its own. librdkafka calls its rebalance
//!   callback there; a revocation blocks that thread until the async side has flushed and
//!   committed the departing shards (so they move only after), an assignment reaches the
//!   async side before any record of the new partitions (so shards restore first).
//! - [`Consumer::commit`] is a transaction: begin, produce the outputs, add the input
//!   offsets (`send_offsets_to_transaction`, which the group fences: a member that lost a
//!   partition cannot commit for it), commit. With `transactions` off: outputs first,
//!   flushed, then the offsets.
//! - Consumers read `read_committed`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer as _, PurgeConfig,
};
use rdkafka::{ClientContext, Offset as KafkaOffset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};

use crate::eviction::{Evicted, StaticGroup, evict};
use crate::time::{Clock, SystemClock};
use crate::{
    Assigned, Cleanup, CommitBatch, Consumer, ConsumerConfig, Headers, Log, LogError, LogRecord,
    Offset, Producer, ProducerRecord, RebalanceListener, StartFrom, Subscription, TopicPartition,
    TopicSpec, partition_for_key,
};

/// How to reach and use a Kafka cluster.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `host:port,host:port`.
    pub brokers: String,
    /// Extra librdkafka properties, passed through: `security.protocol`, `sasl.*`,
    /// `ssl.*`, ... (secrets among them are never logged).
    pub properties: BTreeMap<String, String>,
    /// Replication factor of the topics Wellspring creates; -1: the brokers' default.
    pub replication_factor: i32,
    /// Commit with transactions (else outputs first, then offsets).
    pub transactions: bool,
    /// Bound on admin, metadata and transaction calls.
    pub timeout: Duration,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
            replication_factor: -1,
            transactions: true,
            timeout: Duration::from_secs(30),
        }
    }

    /// Whether a librdkafka property holds a secret (never printed).
    pub fn is_secret(property: &str) -> bool {
        let p = property.to_ascii_lowercase();
        [
            "password",
            "secret",
            "token",
            "jaas",
            "key.pem",
            "credentials",
        ]
        .iter()
        .any(|s| p.contains(s))
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if Self::is_secret(k) {
                        "(secret)"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("properties", &properties)
            .field("replication_factor", &self.replication_factor)
            .field("transactions", &self.transactions)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("settings", &self.shared.settings)
            .finish()
    }
}

/// What librdkafka says, in words that tell what to do.
fn explain(e: &KafkaError, brokers: &str) -> LogError {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::OperationTimedOut,
        ) => LogError::Unreachable(format!(
            "no answer from the Kafka brokers at {brokers} ({e}); check --kafka and that the brokers are up"
        )),
        Some(
            RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::FencedInstanceId,
        ) => LogError::Fenced(format!("{e}")),
        // The member may keep its partitions, but this batch is not committed: the caller
        // must restart from the last commit rather than carry on past it.
        Some(
            RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::RebalanceInProgress,
        ) => LogError::Other(format!(
            "the group rebalanced during the commit, which was aborted ({e}); resume from the last commit"
        )),
        _ => LogError::Other(format!("Kafka: {e}")),
    }
}

/// Runs a blocking librdkafka call off the async thread.
/// Waits until every record sent by `producer` is delivered, serving the delivery
/// reports, so that `commit_transaction` (which flushes first) finds nothing to wait for.
///
/// rdkafka's own `flush` and `poll(d)` return only when `d` has passed, even when the
/// reports came at once (a `flush` slice is 100 ms: every transaction took 100 ms), and
/// a `poll` spins through its last millisecond. So this serves whatever is ready without
/// blocking and sleeps briefly between looks: at most 200 µs late, and idle meanwhile.
fn deliver(producer: &BaseProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    // A zero-timeout flush tells the broker threads to send now instead of lingering.
    let _ = producer.flush(Duration::ZERO);
    loop {
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Aborts the producer's current transaction. The abort waits until every record of the
/// transaction has had its delivery report served, and nothing else serves this
/// producer's reports: so the records still queued or in flight are purged and their
/// reports served here first. When the abort still outlasts `timeout`, librdkafka asks
/// for the call to be repeated, which it is, a few times.
fn abort(producer: &BaseProducer, timeout: Duration) -> Result<(), KafkaError> {
    producer.purge(PurgeConfig::default().queue().inflight());
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut attempts = 0;
    loop {
        match producer.abort_transaction(timeout) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => {
                attempts += 1;
                producer.poll(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Other(format!("a Kafka call panicked: {e}")))
}

struct Shared {
    settings: KafkaSettings,
    admin: AdminClient<DefaultClientContext>,
    /// For metadata and watermarks (read_committed: the end is the last stable offset).
    meta: BaseConsumer,
    producer: FutureProducer,
    partitions: Mutex<HashMap<String, u32>>,
    clock: Arc<dyn Clock>,
    /// The groups this log's static members joined (to evict a lost peer from them).
    static_groups: Mutex<BTreeMap<String, StaticGroup>>,
}

/// A Kafka cluster as a [`Log`]. Cloning gives another handle to the same clients.
#[derive(Clone)]
pub struct KafkaLog {
    shared: Arc<Shared>,
}

impl KafkaLog {
    /// Connects, and checks that the brokers answer.
    pub async fn connect(settings: KafkaSettings) -> Result<Self, LogError> {
        let brokers = settings.brokers.clone();
        let fail = |e: KafkaError| explain(&e, &brokers);
        let admin: AdminClient<DefaultClientContext> = settings.client().create().map_err(fail)?;
        let meta: BaseConsumer = settings
            .client()
            .set("group.id", "wellspring-metadata")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(fail)?;
        let producer: FutureProducer = settings
            .client()
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .create()
            .map_err(fail)?;
        let log = KafkaLog {
            shared: Arc::new(Shared {
                settings,
                admin,
                meta,
                producer,
                partitions: Mutex::new(HashMap::new()),
                clock: Arc::new(SystemClock),
                static_groups: Mutex::new(BTreeMap::new()),
            }),
        };
        let probe = log.clone();
        let timeout = log.shared.settings.timeout.min(Duration::from_secs(10));
        blocking(move || probe.shared.meta.fetch_metadata(None, timeout).map(|_| ()))
            .await?
            .map_err(|e| explain(&e, &log.shared.settings.brokers))?;
        Ok(log)
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.shared.settings
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
        let settings = self.shared.settings.clone();
        let id = format!("wellspring-probe-{}", self.shared.clock.now_ms());
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
        .map_err(|e| explain(&e, &self.shared.settings.brokers))?;
        let mut reader = self.consumer(ConsumerConfig::assign(
            "probe",
            vec![(tp.clone(), Some(start))],
        ))?;
        let mut listener = crate::NoListener;
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

    async fn partitions_of(&self, topic: &str) -> Result<u32, LogError> {
        if let Some(n) = self.shared.partitions.lock().get(topic) {
            return Ok(*n);
        }
        let n = self.partitions(topic).await?;
        self.shared.partitions.lock().insert(topic.to_owned(), n);
        Ok(n)
    }

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

    fn future_record<'a>(
        record: &'a ProducerRecord,
        partition: i32,
    ) -> FutureRecord<'a, [u8], [u8]> {
        let mut future = FutureRecord::to(&record.topic).partition(partition);
        if let Some(key) = &record.key {
            future = future.key(key.as_ref());
        }
        if let Some(value) = &record.value {
            future = future.payload(value.as_ref());
        }
        if let Some(headers) = Self::headers_of(record) {
            future = future.headers(headers);
        }
        future
    }

    fn base_record<'a>(record: &'a ProducerRecord, partition: i32) -> BaseRecord<'a, [u8], [u8]> {
        let mut base = BaseRecord::to(&record.topic).partition(partition);
        if let Some(key) = &record.key {
            base = base.key(key.as_ref());
        }
        if let Some(value) = &record.value {
            base = base.payload(value.as_ref());
        }
        if let Some(headers) = Self::headers_of(record) {
            base = base.headers(headers);
        }
        base
    }

    /// The partition a record goes to: its own, or its key's, or the first.
    async fn placement(&self, record: &ProducerRecord) -> Result<i32, LogError> {
        Ok(match (record.partition, &record.key) {
            (Some(p), _) => p as i32,
            (None, Some(key)) => {
                partition_for_key(key, self.partitions_of(&record.topic).await?) as i32
            }
            (None, None) => 0,
        })
    }

    /// Sends records with the plain (idempotent, non-transactional) producer.
    async fn send_plain(
        &self,
        records: &[ProducerRecord],
    ) -> Result<Vec<(TopicPartition, Offset)>, LogError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let partition = self.placement(record).await?;
            loop {
                match self
                    .shared
                    .producer
                    .send_result(Self::future_record(record, partition))
                {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(explain(&e, &self.shared.settings.brokers)),
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
                Ok(Err((e, _))) => return Err(explain(&e, &self.shared.settings.brokers)),
                Err(_) => return Err(LogError::Other("the Kafka producer was closed".into())),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Log for KafkaLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        let brokers = self.shared.settings.brokers.clone();
        match self.partitions(&spec.name).await {
            Ok(found) => {
                if found != spec.partitions {
                    return Err(LogError::TopicMismatch {
                        topic: spec.name.clone(),
                        expected: format!("{} partitions", spec.partitions),
                        found: format!("{found} partitions"),
                        fix: "its shards are its partitions: recreate it, or set Wellspring's partitions to match".into(),
                    });
                }
                let configs = self
                    .shared
                    .admin
                    .describe_configs(
                        &[ResourceSpecifier::Topic(&spec.name)],
                        &AdminOptions::new().request_timeout(Some(self.shared.settings.timeout)),
                    )
                    .await
                    .map_err(|e| explain(&e, &brokers))?;
                let policy = configs
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c.entries)
                    .find(|e| e.name == "cleanup.policy")
                    .and_then(|e| e.value)
                    .unwrap_or_else(|| "delete".into());
                let compacted = policy.split(',').any(|p| p.trim() == "compact");
                if compacted != (spec.cleanup == Cleanup::Compact) {
                    return Err(LogError::TopicMismatch {
                        topic: spec.name.clone(),
                        expected: format!("cleanup.policy {}", if spec.cleanup == Cleanup::Compact { "compact" } else { "delete" }),
                        found: format!("cleanup.policy {policy}"),
                        fix: "a changelog must be compacted and a stream must not be: change the topic's cleanup.policy".into(),
                    });
                }
                Ok(())
            }
            Err(LogError::UnknownTopic(_)) => {
                let policy = if spec.cleanup == Cleanup::Compact {
                    "compact"
                } else {
                    "delete"
                };
                let topic = NewTopic::new(
                    &spec.name,
                    spec.partitions as i32,
                    TopicReplication::Fixed(self.shared.settings.replication_factor),
                )
                .set("cleanup.policy", policy);
                let results = self
                    .shared
                    .admin
                    .create_topics(
                        &[topic],
                        &AdminOptions::new().operation_timeout(Some(self.shared.settings.timeout)),
                    )
                    .await
                    .map_err(|e| explain(&e, &brokers))?;
                for result in results {
                    match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => {
                            return Err(LogError::Other(format!("creating topic {topic}: {code}")));
                        }
                    }
                }
                // Creation is asynchronous on the brokers: wait until metadata shows it.
                let deadline = tokio::time::Instant::now() + self.shared.settings.timeout;
                loop {
                    match self.partitions(&spec.name).await {
                        Ok(n) if n == spec.partitions => break,
                        Ok(_) | Err(LogError::UnknownTopic(_))
                            if tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(n) => {
                            return Err(LogError::Other(format!(
                                "topic {} was created with {n} partitions, not {}",
                                spec.name, spec.partitions
                            )));
                        }
                        Err(e) => return Err(e),
                    }
                }
                self.shared
                    .partitions
                    .lock()
                    .insert(spec.name.clone(), spec.partitions);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        let shared = self.shared.clone();
        let name = topic.to_owned();
        let metadata = blocking(move || {
            shared
                .meta
                .fetch_metadata(Some(&name), shared.settings.timeout)
        })
        .await?
        .map_err(|e| explain(&e, &self.shared.settings.brokers))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(LogError::UnknownTopic(topic.to_owned()));
        };
        match found.error() {
            None if !found.partitions().is_empty() => Ok(found.partitions().len() as u32),
            _ => Err(LogError::UnknownTopic(topic.to_owned())),
        }
    }

    async fn end_offset(&self, partition: &TopicPartition) -> Result<Offset, LogError> {
        let shared = self.shared.clone();
        let (topic, p) = (partition.topic.to_string(), partition.partition as i32);
        let (_, high) = blocking(move || {
            shared
                .meta
                .fetch_watermarks(&topic, p, shared.settings.timeout)
        })
        .await?
        .map_err(|e| explain(&e, &self.shared.settings.brokers))?;
        Ok(high.max(0) as Offset)
    }

    fn producer(&self) -> Result<Box<dyn Producer>, LogError> {
        Ok(Box::new(KafkaProducer { log: self.clone() }))
    }

    fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, LogError> {
        Ok(Box::new(KafkaConsumer::start(self.clone(), config)?))
    }

    fn describe(&self) -> String {
        format!("Kafka at {}", self.shared.settings.brokers)
    }

    async fn evict_static_member(&self, instance_id: &str) -> Result<Vec<String>, LogError> {
        let groups: Vec<(String, StaticGroup)> = self
            .shared
            .static_groups
            .lock()
            .iter()
            .map(|(name, spec)| (name.clone(), spec.clone()))
            .collect();
        // Every group at once: each stand-in waits on its own coordinator.
        let running: Vec<_> = groups
            .into_iter()
            .map(|(group, spec)| {
                let client = self.shared.settings.client();
                let timeout = self.shared.settings.timeout;
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

struct KafkaProducer {
    log: KafkaLog,
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(
        &self,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<(TopicPartition, Offset)>, LogError> {
        self.log.send_plain(&records).await
    }
}

/// What the polling thread tells the async side, in order.
enum Event {
    Records(Vec<LogRecord>),
    Assigned(Vec<Assigned>),
    /// Partitions about to go; the thread waits on the sender until they are committed.
    Revoked(Vec<TopicPartition>, std_mpsc::SyncSender<()>),
    Lost(Vec<TopicPartition>, std_mpsc::SyncSender<()>),
    /// Records after this, of this partition, come from the seek numbered so.
    Seeked(TopicPartition, u64),
    /// The consumer reached the end of a partition (it read everything committed).
    End(TopicPartition),
    Failed(String),
}

enum Command {
    Seek(TopicPartition, Offset, u64),
    Close(std_mpsc::SyncSender<()>),
}

/// Hands librdkafka's rebalance callbacks to the async side.
struct GroupContext {
    events: mpsc::Sender<Event>,
    /// Set when the consumer is closed or dropped: librdkafka's own close runs the
    /// callbacks again, with nobody left to answer them.
    detached: Arc<AtomicBool>,
    start_from: StartFrom,
    timeout: Duration,
}

impl ClientContext for GroupContext {}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition() as u32))
        .collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.detached.load(Ordering::Acquire) {
            return;
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            if partitions.is_empty() {
                return;
            }
            let (ack, done) = std_mpsc::sync_channel(1);
            let event = if consumer.assignment_lost() {
                Event::Lost(partitions, ack)
            } else {
                Event::Revoked(partitions, ack)
            };
            if self.events.blocking_send(event).is_ok() {
                // Wait (bounded) until the shards flushed and committed.
                let _ = done.recv_timeout(self.timeout);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.detached.load(Ordering::Acquire) {
            return;
        }
        if let Rebalance::Assign(tpl) = rebalance {
            if tpl.count() == 0 {
                return;
            }
            let committed = consumer
                .committed_offsets((*tpl).clone(), self.timeout)
                .ok();
            let mut assigned = Vec::new();
            for element in tpl.elements() {
                let tp = TopicPartition::new(element.topic(), element.partition() as u32);
                let stored = committed
                    .as_ref()
                    .and_then(|c| c.find_partition(element.topic(), element.partition()))
                    .and_then(|e| match e.offset() {
                        KafkaOffset::Offset(o) if o >= 0 => Some(o as Offset),
                        _ => None,
                    });
                let position = stored.unwrap_or_else(|| match self.start_from {
                    StartFrom::Earliest => consumer
                        .fetch_watermarks(element.topic(), element.partition(), self.timeout)
                        .map_or(0, |(low, _)| low.max(0) as Offset),
                    StartFrom::Latest => consumer
                        .fetch_watermarks(element.topic(), element.partition(), self.timeout)
                        .map_or(0, |(_, high)| high.max(0) as Offset),
                });
                assigned.push(Assigned {
                    partition: tp,
                    position,
                });
            }
            let _ = self.events.blocking_send(Event::Assigned(assigned));
        }
    }
}

fn to_record(message: &rdkafka::message::BorrowedMessage<'_>) -> LogRecord {
    let headers: Headers = message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    LogRecord {
        topic: Arc::from(message.topic()),
        partition: message.partition() as u32,
        offset: message.offset().max(0) as Offset,
        key: message.key().map(Bytes::copy_from_slice),
        value: message.payload().map(Bytes::copy_from_slice),
        headers,
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
    }
}

/// Leaves the consumer group, so that the member's partitions move to the others at once
/// instead of after its session timeout. librdkafka's close never sends a LeaveGroup for
/// a static member (KIP-345: a restarted pod should get its partitions back), but an
/// unsubscribe of a running member does, once the revoke is served: so unsubscribe, poll
/// until the member owns nothing, and give the LeaveGroup a moment to go out before the
/// consumer is closed. (A member that crashes or is killed sends nothing, and keeps its
/// partitions for the session timeout, as static membership intends.)
pub(crate) fn leave_group<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && consumer
            .assignment()
            .is_ok_and(|assigned| assigned.count() > 0)
    {
        let _ = consumer.poll(Duration::from_millis(20));
    }
    let settle = Instant::now() + Duration::from_millis(200);
    while Instant::now() < settle {
        let _ = consumer.poll(Duration::from_millis(20));
    }
}

/// The polling thread: turns librdkafka's poll into ordered events.
///
/// `topic` is the one topic a reader reads: librdkafka reports the end of a partition by
/// its number only, so each topic of a reader has a client (and thread) of its own.
fn poll_thread(
    consumer: Arc<BaseConsumer<GroupContext>>,
    events: mpsc::Sender<Event>,
    commands: std_mpsc::Receiver<Command>,
    topic: Option<Arc<str>>,
) {
    let mut batch = Vec::new();
    loop {
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Seek(tp, offset, epoch) => {
                    if !batch.is_empty()
                        && events
                            .blocking_send(Event::Records(std::mem::take(&mut batch)))
                            .is_err()
                    {
                        return;
                    }
                    let result = consumer.seek(
                        &tp.topic,
                        tp.partition as i32,
                        KafkaOffset::Offset(offset as i64),
                        Duration::from_secs(10),
                    );
                    if let Err(e) = result {
                        tracing::warn!(partition = %tp, "seek failed: {e}");
                    }
                    if events.blocking_send(Event::Seeked(tp, epoch)).is_err() {
                        return;
                    }
                }
                Command::Close(done) => {
                    if topic.is_none() {
                        leave_group(&consumer);
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
        // Wait for records only when there is nothing to hand over: records already
        // taken go to the stage as soon as no more are ready.
        let wait = if batch.is_empty() {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                batch.push(to_record(&message));
                if batch.len() < 1000 {
                    continue;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if !batch.is_empty()
                    && events
                        .blocking_send(Event::Records(std::mem::take(&mut batch)))
                        .is_err()
                {
                    return;
                }
                let end = topic
                    .as_ref()
                    .map(|t| Event::End(TopicPartition::new(t.clone(), p as u32)));
                if end.is_some_and(|end| events.blocking_send(end).is_err()) {
                    return;
                }
                continue;
            }
            Some(Err(e)) => {
                let fatal = matches!(&e, KafkaError::Global(code) if matches!(code, RDKafkaErrorCode::Fatal));
                tracing::warn!("Kafka consumer: {e}");
                if fatal {
                    let _ = events.blocking_send(Event::Failed(e.to_string()));
                    return;
                }
            }
            None => {}
        }
        if !batch.is_empty()
            && events
                .blocking_send(Event::Records(std::mem::take(&mut batch)))
                .is_err()
        {
            return;
        }
        if events.is_closed() {
            return;
        }
    }
}

/// One librdkafka consumer and the thread that polls it.
struct Client {
    consumer: Arc<BaseConsumer<GroupContext>>,
    commands: std_mpsc::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The topic it reads, for a reader; `None` for a group member.
    topic: Option<Arc<str>>,
}

struct KafkaConsumer {
    log: KafkaLog,
    config: ConsumerConfig,
    /// A group member has one client; a reader one per topic.
    clients: Vec<Client>,
    events: mpsc::Receiver<Event>,
    /// The transactional producer of this member's commits.
    transactional: Option<Arc<BaseProducer>>,
    /// `init_transactions` ran for it.
    transactions_ready: bool,
    /// A failed transaction whose abort has not completed yet: it must complete before
    /// the next transaction begins.
    abort_pending: Arc<AtomicBool>,
    waker: Arc<Notify>,
    detached: Arc<AtomicBool>,
    assignment: BTreeSet<TopicPartition>,
    /// Next offset to hand out, per partition.
    positions: HashMap<TopicPartition, Offset>,
    /// Partitions whose records are stale until the seek with this number is seen.
    seeking: HashMap<TopicPartition, u64>,
    seeks: u64,
    /// Partitions read to their end (and nothing newer seen since).
    at_end: BTreeSet<TopicPartition>,
    /// Records received beyond what a poll could return.
    pending: VecDeque<LogRecord>,
}

impl KafkaConsumer {
    fn start(log: KafkaLog, config: ConsumerConfig) -> Result<Self, LogError> {
        let settings = &log.shared.settings;
        let brokers = settings.brokers.clone();
        let fail = |e: KafkaError| explain(&e, &brokers);
        let (events_tx, events) = mpsc::channel(64);
        let detached = Arc::new(AtomicBool::new(false));
        let mut client = settings.client();
        client
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("client.id", &config.client_id)
            .set(
                "auto.offset.reset",
                match config.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
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
        let revoke_wait = settings.timeout.min(rebalance_timeout / 2);
        let spawn = |client: &ClientConfig, topic: Option<Arc<str>>| -> Result<Client, LogError> {
            let context = GroupContext {
                events: events_tx.clone(),
                detached: detached.clone(),
                start_from: config.start_from,
                timeout: revoke_wait,
            };
            let consumer: Arc<BaseConsumer<GroupContext>> =
                Arc::new(client.create_with_context(context).map_err(fail)?);
            let (commands, commands_rx) = std_mpsc::channel();
            let (polled, events, thread_topic) =
                (consumer.clone(), events_tx.clone(), topic.clone());
            let thread = std::thread::Builder::new()
                .name(format!("kafka-{}", config.client_id))
                .spawn(move || poll_thread(polled, events, commands_rx, thread_topic))
                .map_err(|e| LogError::Other(format!("cannot start the consumer thread: {e}")))?;
            Ok(Client {
                consumer,
                commands,
                thread: Some(thread),
                topic,
            })
        };
        let mut transactional = None;
        let mut clients = Vec::new();
        let mut positions = HashMap::new();
        let mut assignment = BTreeSet::new();
        match &config.subscription {
            Subscription::Topics(topics) => {
                let group = config
                    .group
                    .clone()
                    .ok_or_else(|| LogError::NoGroup(config.client_id.clone()))?;
                let session = session_ms;
                let group_properties = vec![
                    (
                        "max.poll.interval.ms".to_owned(),
                        rebalance_timeout.as_millis().to_string(),
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
                    (
                        "heartbeat.interval.ms".to_owned(),
                        (session / 4).clamp(100, 1000).to_string(),
                    ),
                ];
                client.set("group.id", &group);
                for (key, value) in &group_properties {
                    client.set(key, value);
                }
                if let Some(instance) = &config.instance_id {
                    client.set("group.instance.id", instance);
                    log.shared.static_groups.lock().insert(
                        group.clone(),
                        StaticGroup {
                            topics: topics.clone(),
                            properties: group_properties,
                            session: Duration::from_millis(session as u64),
                        },
                    );
                }
                if settings.transactions {
                    // One transactional id per member of a group: a restarted member with
                    // the same id fences its zombie predecessor.
                    let id = format!(
                        "{group}-{}",
                        config.instance_id.as_deref().unwrap_or(&config.client_id)
                    );
                    // A producer without a background thread: the commit polls it for
                    // the outputs' delivery itself.
                    let mut producer_config = settings.client();
                    if !settings.properties.contains_key("transaction.timeout.ms") {
                        // A member killed mid-transaction leaves it open, holding back
                        // read_committed readers of its output partitions until the
                        // coordinator aborts it: after 10 s (as Kafka Streams sets it),
                        // not the broker's default minute.
                        producer_config.set("transaction.timeout.ms", "10000");
                    }
                    let producer: BaseProducer = producer_config
                        .set("transactional.id", &id)
                        .set("linger.ms", "1")
                        // Adding a partition to the next transaction is refused (and
                        // retried) while the previous one completes: retry soon, not
                        // after librdkafka's default 100 ms (the backoff still grows
                        // exponentially on repeated failures).
                        .set("retry.backoff.ms", "5")
                        .create()
                        .map_err(fail)?;
                    transactional = Some(Arc::new(producer));
                }
                let member = spawn(&client, None)?;
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                member.consumer.subscribe(&names).map_err(fail)?;
                clients.push(member);
            }
            Subscription::Assign(list) => {
                // librdkafka wants a group id even to assign; this one never commits.
                client
                    .set(
                        "group.id",
                        format!("wellspring-reader-{}", config.client_id),
                    )
                    .set("enable.partition.eof", "true");
                let mut by_topic: BTreeMap<Arc<str>, TopicPartitionList> = BTreeMap::new();
                for (tp, offset) in list {
                    let start = match (offset, config.start_from) {
                        (Some(o), _) => KafkaOffset::Offset(*o as i64),
                        (None, StartFrom::Earliest) => KafkaOffset::Beginning,
                        (None, StartFrom::Latest) => KafkaOffset::End,
                    };
                    by_topic
                        .entry(tp.topic.clone())
                        .or_default()
                        .add_partition_offset(&tp.topic, tp.partition as i32, start)
                        .map_err(fail)?;
                    positions.insert(tp.clone(), offset.unwrap_or(0));
                    assignment.insert(tp.clone());
                }
                for (topic, tpl) in by_topic {
                    let reader = spawn(&client, Some(topic))?;
                    reader.consumer.assign(&tpl).map_err(fail)?;
                    clients.push(reader);
                }
            }
        }
        Ok(Self {
            log,
            config,
            clients,
            events,
            transactional,
            transactions_ready: false,
            abort_pending: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(Notify::new()),
            detached,
            assignment,
            positions,
            seeking: HashMap::new(),
            seeks: 0,
            at_end: BTreeSet::new(),
            pending: VecDeque::new(),
        })
    }

    /// The group member's client (a reader's first), for commits and group metadata.
    fn member(&self) -> Result<&Arc<BaseConsumer<GroupContext>>, LogError> {
        self.clients.first().map(|c| &c.consumer).ok_or_else(|| {
            LogError::Other(format!("{} reads no partitions", self.config.client_id))
        })
    }

    /// Keeps a record if it belongs to an assigned partition and is not stale.
    fn accept(&mut self, record: LogRecord) -> Option<LogRecord> {
        let tp = record.topic_partition();
        if !self.assignment.contains(&tp) || self.seeking.contains_key(&tp) {
            return None;
        }
        self.at_end.remove(&tp);
        self.positions.insert(tp, record.offset + 1);
        Some(record)
    }

    async fn handle(
        &mut self,
        event: Event,
        listener: &mut dyn RebalanceListener,
        out: &mut Vec<LogRecord>,
    ) -> Result<(), LogError> {
        match event {
            Event::Records(records) => {
                for record in records {
                    if let Some(r) = self.accept(record) {
                        out.push(r);
                    }
                }
            }
            Event::Assigned(assigned) => {
                listener.on_assigned(&assigned).await;
                for a in assigned {
                    self.positions.insert(a.partition.clone(), a.position);
                    self.assignment.insert(a.partition);
                }
            }
            Event::Revoked(partitions, ack) => {
                // Hand over records already read of those partitions: they are not ours.
                out.retain(|r| !partitions.contains(&r.topic_partition()));
                self.pending
                    .retain(|r| !partitions.contains(&r.topic_partition()));
                let batch = listener.on_revoked(&partitions).await;
                let result = self.commit_batch(batch).await;
                for tp in &partitions {
                    self.assignment.remove(tp);
                    self.positions.remove(tp);
                }
                let _ = ack.send(());
                if let Err(e) = result {
                    tracing::warn!(client = %self.config.client_id, "committing revoked partitions: {e}");
                }
            }
            Event::Lost(partitions, ack) => {
                out.retain(|r| !partitions.contains(&r.topic_partition()));
                self.pending
                    .retain(|r| !partitions.contains(&r.topic_partition()));
                listener.on_lost(&partitions).await;
                for tp in &partitions {
                    self.assignment.remove(tp);
                    self.positions.remove(tp);
                }
                let _ = ack.send(());
            }
            Event::Seeked(tp, epoch) => {
                if self.seeking.get(&tp) == Some(&epoch) {
                    self.seeking.remove(&tp);
                }
            }
            Event::End(partition) => {
                if self.assignment.contains(&partition) && !self.seeking.contains_key(&partition) {
                    self.at_end.insert(partition);
                }
            }
            Event::Failed(reason) => {
                return Err(LogError::Other(format!(
                    "the Kafka consumer failed: {reason}"
                )));
            }
        }
        Ok(())
    }

    /// Initialises the transactional producer on first use: it registers with the
    /// transaction coordinator, which fences any previous incarnation of this member.
    async fn ensure_transactions(&mut self) -> Result<(), LogError> {
        let (Some(producer), false) = (self.transactional.clone(), self.transactions_ready) else {
            return Ok(());
        };
        let timeout = self.log.shared.settings.timeout;
        let brokers = self.log.shared.settings.brokers.clone();
        blocking(move || producer.init_transactions(timeout))
            .await?
            .map_err(|e| explain(&e, &brokers))?;
        self.transactions_ready = true;
        Ok(())
    }

    async fn commit_batch(&mut self, batch: CommitBatch) -> Result<(), LogError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.ensure_transactions().await?;
        for (tp, _) in &batch.offsets {
            if !self.assignment.contains(tp) {
                return Err(LogError::NotAssigned(tp.clone()));
            }
        }
        let brokers = self.log.shared.settings.brokers.clone();
        let timeout = self.log.shared.settings.timeout;
        let mut offsets = TopicPartitionList::new();
        for (tp, offset) in &batch.offsets {
            offsets
                .add_partition_offset(
                    &tp.topic,
                    tp.partition as i32,
                    KafkaOffset::Offset(*offset as i64),
                )
                .map_err(|e| explain(&e, &brokers))?;
        }
        let Some(producer) = self.transactional.clone() else {
            // Outputs first, durable; then the offsets.
            self.log.send_plain(&batch.outputs).await?;
            if offsets.count() > 0 {
                let consumer = self.member()?.clone();
                blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                    .await?
                    .map_err(|e| explain(&e, &brokers))?;
            }
            return Ok(());
        };
        let mut placed = Vec::with_capacity(batch.outputs.len());
        for record in &batch.outputs {
            placed.push(self.log.placement(record).await?);
        }
        let metadata = match (offsets.count(), self.member()?.group_metadata()) {
            (0, metadata) => metadata,
            (_, Some(metadata)) => Some(metadata),
            (_, None) => {
                return Err(LogError::Other(
                    "the consumer has no group metadata to commit offsets with".into(),
                ));
            }
        };
        let outputs = batch.outputs;
        let abort_pending = self.abort_pending.clone();
        blocking(move || -> Result<(), KafkaError> {
            if abort_pending.load(Ordering::SeqCst) {
                abort(&producer, timeout)?;
                abort_pending.store(false, Ordering::SeqCst);
            }
            let run = || -> Result<(), KafkaError> {
                producer.begin_transaction()?;
                for (record, partition) in outputs.iter().zip(placed) {
                    let mut base = KafkaLog::base_record(record, partition);
                    loop {
                        match producer.send(base) {
                            Ok(()) => break,
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                back,
                            )) => {
                                producer.poll(Duration::from_millis(10));
                                base = back;
                            }
                            Err((e, _)) => return Err(e),
                        }
                    }
                }
                // Deliver the outputs, serving their delivery reports here (the commit
                // would otherwise wait for someone to serve them).
                deliver(&producer, timeout)?;
                if let Some(metadata) = &metadata {
                    producer.send_offsets_to_transaction(&offsets, metadata, timeout)?;
                }
                producer.commit_transaction(timeout)
            };
            let result = run();
            if let Err(e) = &result {
                tracing::warn!("transaction failed, aborting: {e}");
                if let Err(e) = abort(&producer, timeout) {
                    // The next commit finishes the abort before it begins.
                    tracing::warn!("the abort did not complete yet: {e}");
                    abort_pending.store(true, Ordering::SeqCst);
                }
            }
            result
        })
        .await?
        .map_err(|e| explain(&e, &brokers))
    }
}

#[async_trait(?Send)]
impl Consumer for KafkaConsumer {
    async fn poll(
        &mut self,
        listener: &mut dyn RebalanceListener,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.ensure_transactions().await?;
        let mut out: Vec<LogRecord> = Vec::new();
        while out.len() < max_records {
            let Some(record) = self.pending.pop_front() else {
                break;
            };
            if let Some(r) = self.accept(record) {
                out.push(r);
            }
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Take whatever is already there without waiting.
            while out.len() < max_records {
                match self.events.try_recv() {
                    Ok(event) => self.handle(event, listener, &mut out).await?,
                    Err(_) => break,
                }
            }
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => self.handle(event, listener, &mut out).await?,
                    None => return Err(LogError::Other("the Kafka consumer thread stopped".into())),
                },
                _ = self.waker.notified() => break,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if out.len() > max_records {
            self.pending.extend(out.drain(max_records..));
        }
        Ok(out)
    }

    async fn commit(&mut self, batch: CommitBatch) -> Result<(), LogError> {
        self.commit_batch(batch).await
    }

    fn seek(&mut self, partition: &TopicPartition, offset: Offset) -> Result<(), LogError> {
        if !self.assignment.contains(partition) {
            return Err(LogError::NotAssigned(partition.clone()));
        }
        self.seeks += 1;
        self.seeking.insert(partition.clone(), self.seeks);
        self.pending.retain(|r| r.topic_partition() != *partition);
        self.positions.insert(partition.clone(), offset);
        let client = self
            .clients
            .iter()
            .find(|c| c.topic.as_ref().is_none_or(|t| *t == partition.topic))
            .ok_or_else(|| LogError::NotAssigned(partition.clone()))?;
        client
            .commands
            .send(Command::Seek(partition.clone(), offset, self.seeks))
            .map_err(|_| LogError::Other("the Kafka consumer thread stopped".into()))
    }

    async fn committed(&self, partition: &TopicPartition) -> Result<Option<Offset>, LogError> {
        let consumer = self.member()?.clone();
        let timeout = self.log.shared.settings.timeout;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&partition.topic, partition.partition as i32);
        let brokers = self.log.shared.settings.brokers.clone();
        let committed = blocking(move || consumer.committed_offsets(tpl, timeout))
            .await?
            .map_err(|e| explain(&e, &brokers))?;
        Ok(committed
            .find_partition(&partition.topic, partition.partition as i32)
            .and_then(|e| match e.offset() {
                KafkaOffset::Offset(o) if o >= 0 => Some(o as Offset),
                _ => None,
            }))
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.iter().cloned().collect()
    }

    fn caught_up(&self, partition: &TopicPartition) -> bool {
        self.at_end.contains(partition)
    }

    fn waker(&self) -> Arc<Notify> {
        self.waker.clone()
    }

    async fn close(&mut self, listener: &mut dyn RebalanceListener) -> Result<(), LogError> {
        let partitions: Vec<TopicPartition> = self.assignment.iter().cloned().collect();
        let mut result = Ok(());
        if !partitions.is_empty() && self.config.group.is_some() {
            let batch = listener.on_revoked(&partitions).await;
            result = self.commit_batch(batch).await;
        }
        self.assignment.clear();
        self.detached.store(true, Ordering::Release);
        for client in &mut self.clients {
            let (done, wait) = std_mpsc::sync_channel(1);
            if client.commands.send(Command::Close(done)).is_ok() {
                // The thread may be blocked handing us events: keep draining while it closes.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while wait.try_recv().is_err() && tokio::time::Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_millis(20), self.events.recv()).await
                    {
                        Ok(Some(Event::Revoked(_, ack) | Event::Lost(_, ack))) => {
                            let _ = ack.send(());
                        }
                        Ok(None) => break,
                        _ => {}
                    }
                }
            }
            if let Some(thread) = client.thread.take() {
                let _ = blocking(move || thread.join()).await;
            }
        }
        result
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Like a crash: no commit, no leave (the group notices after the session
        // timeout). The thread ends when it finds the event channel closed.
        self.detached.store(true, Ordering::Release);
        self.events.close();
    }
}
