//! The log Wellspring is built on: topics of partitions of keyed records, and consumer
//! groups that share a topic's partitions among their members.
//!
//! One interface, [`Log`], with two implementations: [`EmbeddedLog`] here (in memory, no
//! setup; the default for `wellspring demo`, the tests and the simulation harness; or on
//! disk with [`EmbeddedLog::open`], for `wellspring run --data-dir`) and [`KafkaLog`] on
//! rdkafka. Everything above the log is the same code for both.
//!
//! The interface is Kafka's consume-transform-produce loop:
//!
//! ```text
//! let mut consumer = log.consumer(config)?;
//! loop {
//!     let records = consumer.poll(&mut listener, 500, Duration::from_millis(200)).await?;
//!     let batch = process(records);          // outputs + next offsets
//!     consumer.commit(batch).await?;          // outputs durable, then offsets committed
//! }
//! ```
//!
//! - [`Consumer::poll`] is where the group's rebalancing reaches the caller: it calls the
//!   [`RebalanceListener`] before it hands partitions over (so a shard can flush and
//!   commit) and after it receives new ones (so a shard can restore its state before it
//!   processes).
//! - [`Consumer::commit`] makes a [`CommitBatch`]'s outputs durable and commits its
//!   offsets: atomically where the log supports it (the embedded log; Kafka
//!   transactions), else outputs first. A member that lost a partition in a rebalance
//!   cannot commit for it ([`LogError::NotAssigned`]): a zombie never overwrites progress.

mod committed;
mod embedded;
mod kafka;
mod partitioner;
pub mod time;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

pub use embedded::{DurableOptions, EmbeddedLog, Fsync, GroupView, Retention, StorageError};
pub use kafka::{KafkaLog, KafkaSettings};
pub use partitioner::partition_for_key;
pub use time::{Clock, SystemClock};

pub type Offset = u64;

/// A partition of a topic: the unit of sharding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// What happens to old records of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Records are kept (until retention, where the log has one).
    Delete,
    /// Only the latest record per key is guaranteed to be kept: changelogs and tables.
    Compact,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    pub cleanup: Cleanup,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: u32, cleanup: Cleanup) -> Self {
        Self {
            name: name.into(),
            partitions,
            cleanup,
        }
    }
}

pub type Headers = Vec<(String, Bytes)>;

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: Arc<str>,
    /// `None`: chosen from the key with [`partition_for_key`] (round-robin without a key).
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    /// `None` is a tombstone: on a compacted topic it deletes the key.
    pub value: Option<Bytes>,
    pub headers: Headers,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<Arc<str>>, key: Option<Bytes>, value: Option<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key,
            value,
            headers: Vec::new(),
        }
    }

    pub fn to_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: Offset,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Shared with the log's copy: reading a record allocates nothing for its headers
    /// (the embedded log hands records out under its one lock).
    pub headers: Arc<Headers>,
    /// When the log appended it (milliseconds since the Unix epoch, by the log's clock).
    pub timestamp_ms: i64,
}

impl LogRecord {
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }
}

/// Where a consumer starts in a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// What a consumer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Join the config's group and receive a share of these topics' partitions.
    Topics(Vec<String>),
    /// Read exactly these partitions from these offsets (`None`: by `start_from`); no
    /// group. Used to restore changelogs and to read whole tables.
    Assign(Vec<(TopicPartition, Option<Offset>)>),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Consumer group; required for [`Subscription::Topics`].
    pub group: Option<String>,
    /// Static membership (Kafka's `group.instance.id`): a member that comes back under the
    /// same id within the session timeout keeps its partitions without a rebalance.
    pub instance_id: Option<String>,
    /// Names the member in logs and views.
    pub client_id: String,
    pub subscription: Subscription,
    /// A member not heard from for this long is presumed dead and its partitions move.
    pub session_timeout: Duration,
    pub start_from: StartFrom,
    /// Topics whose records this consumer needs by key only (a view that counts keys):
    /// the log may hand them over without their values and headers, and the embedded log
    /// does, so that reading them copies and touches less under its lock.
    pub keys_only: Vec<String>,
    /// How long a reader's fetch that finds nothing new may wait on the log's side before
    /// it answers (Kafka's `fetch.wait.max.ms`, for consumers given their partitions;
    /// `None`: 25 ms, so that a restore's last fetch comes back at once; group members
    /// and the embedded log, which wakes readers on appends, ignore it). A Kafka broker
    /// answers as soon as records come, so a long wait costs a follower nothing but
    /// spares the brokers its idle requests; some brokers (tansu, nisshi) hold the wait
    /// in full, so it is also how late a follower may see a record.
    pub idle_wait: Option<Duration>,
}

impl ConsumerConfig {
    pub fn group(
        group: impl Into<String>,
        client_id: impl Into<String>,
        topics: Vec<String>,
    ) -> Self {
        Self {
            group: Some(group.into()),
            instance_id: None,
            client_id: client_id.into(),
            subscription: Subscription::Topics(topics),
            session_timeout: Duration::from_secs(10),
            start_from: StartFrom::Earliest,
            keys_only: Vec::new(),
            idle_wait: None,
        }
    }

    pub fn assign(
        client_id: impl Into<String>,
        partitions: Vec<(TopicPartition, Option<Offset>)>,
    ) -> Self {
        Self {
            group: None,
            instance_id: None,
            client_id: client_id.into(),
            subscription: Subscription::Assign(partitions),
            session_timeout: Duration::from_secs(10),
            start_from: StartFrom::Earliest,
            keys_only: Vec::new(),
            idle_wait: None,
        }
    }
}

/// A partition given to a member, and where it will read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub partition: TopicPartition,
    /// The committed offset (or the start position when nothing was committed).
    pub position: Offset,
}

/// The ending of a changelog topic's name: a stage's state. Without transactions a
/// commit makes a batch's records on such topics durable only after its other records,
/// so that state never says an aggregate was emitted before its output is durable (a
/// node killed in between would restore "emitted" and never emit it).
pub const CHANGELOG_SUFFIX: &str = ".changelog";

/// Outputs to make durable and the input offsets they complete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitBatch {
    pub outputs: Vec<ProducerRecord>,
    /// For each partition, the offset of the next record to read.
    pub offsets: Vec<(TopicPartition, Offset)>,
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.offsets.is_empty()
    }

    pub fn extend(&mut self, other: CommitBatch) {
        self.outputs.extend(other.outputs);
        self.offsets.extend(other.offsets);
    }
}

/// Called from inside [`Consumer::poll`] when the group moves partitions.
#[async_trait(?Send)]
pub trait RebalanceListener {
    /// New partitions; the consumer reads them from `position` after this returns, so
    /// restore what they need first.
    async fn on_assigned(&mut self, partitions: &[Assigned]);
    /// Partitions about to move to another member. Return what must be committed for them
    /// before they go; after this returns they are no longer ours.
    async fn on_revoked(&mut self, partitions: &[TopicPartition]) -> CommitBatch;
    /// Partitions already taken away (this member was presumed dead): nothing of ours
    /// can be committed for them any more; drop their in-flight work.
    async fn on_lost(&mut self, partitions: &[TopicPartition]);
}

/// A listener for consumers that keep no per-partition state.
pub struct NoListener;

#[async_trait(?Send)]
impl RebalanceListener for NoListener {
    async fn on_assigned(&mut self, _: &[Assigned]) {}
    async fn on_revoked(&mut self, _: &[TopicPartition]) -> CommitBatch {
        CommitBatch::default()
    }
    async fn on_lost(&mut self, _: &[TopicPartition]) {}
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("topic {topic} exists with {found} but Wellspring needs {expected}; {fix}")]
    TopicMismatch {
        topic: String,
        expected: String,
        found: String,
        fix: String,
    },
    #[error(
        "partition {0} is not assigned to this member any more (the group rebalanced); nothing was committed"
    )]
    NotAssigned(TopicPartition),
    #[error(
        "a newer incarnation of this member (same node identity) took over and fenced this one; nothing was committed ({0}). Two nodes must not share an identity"
    )]
    Fenced(String),
    /// The group moved to a new generation while a commit was in flight (Kafka's
    /// ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS): nothing of the batch's
    /// offsets is committed. The member may keep its partitions; the work since the last
    /// commit must be redone from there, not carried on past it.
    #[error(
        "the group rebalanced during the commit, which was aborted ({0}); the work since the last commit is redone"
    )]
    CommitAborted(String),
    #[error("consumer group {0} is required to subscribe to topics")]
    NoGroup(String),
    #[error("the log is unreachable: {0}")]
    Unreachable(String),
    /// The brokers refuse transactions (a broker without a transaction coordinator
    /// answers `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`): commit without them.
    #[error(
        "the Kafka brokers at {0} do not support transactions (they refused a transactional producer: transactional id authorization failed)"
    )]
    TransactionsUnsupported(String),
    #[error("{0}")]
    Other(String),
}

/// A log: topics, producers and consumers.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Creates the topic, or checks that an existing one has the partitions and cleanup
    /// policy asked for.
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError>;
    async fn partitions(&self, topic: &str) -> Result<u32, LogError>;
    /// The offset the next appended record of the partition will get (the high watermark).
    async fn end_offset(&self, partition: &TopicPartition) -> Result<Offset, LogError>;
    fn producer(&self) -> Result<Box<dyn Producer>, LogError>;
    fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, LogError>;
    /// What this log is, in words for the operator ("Kafka at host:9092").
    fn describe(&self) -> String;
    /// Removes the static member `instance_id` (a node known to be gone) from every
    /// consumer group that this log's own static members belong to, so that its
    /// partitions move now instead of after its session timeout. Answers the groups it was
    /// removed from (none when it was in none, or when the log cannot do this).
    async fn evict_static_member(&self, instance_id: &str) -> Result<Vec<String>, LogError> {
        let _ = instance_id;
        Ok(Vec::new())
    }
}

/// Appends records outside any consumer: sources, generators, tools.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Appends in order; resolves once they are durable, with their offsets.
    async fn send(
        &self,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<(TopicPartition, Offset)>, LogError>;
}

#[async_trait(?Send)]
pub trait Consumer {
    /// Up to `max_records` records from the assigned partitions, waiting up to `max_wait`
    /// for some. Rebalances are delivered to `listener` from inside this call.
    async fn poll(
        &mut self,
        listener: &mut dyn RebalanceListener,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<LogRecord>, LogError>;
    /// Makes `batch.outputs` durable and commits `batch.offsets` (see the crate docs).
    async fn commit(&mut self, batch: CommitBatch) -> Result<(), LogError>;
    /// Reads `partition` from `offset` next (e.g. after a shard restarts).
    fn seek(&mut self, partition: &TopicPartition, offset: Offset) -> Result<(), LogError>;
    /// The committed offset of a partition of this consumer's group.
    async fn committed(&self, partition: &TopicPartition) -> Result<Option<Offset>, LogError>;
    fn assignment(&self) -> Vec<TopicPartition>;
    /// Whether everything of `partition` that is readable now (committed) has been read.
    /// Restores read a changelog until this holds.
    fn caught_up(&self, partition: &TopicPartition) -> bool;
    /// Ends a [`Consumer::poll`] wait early (new work to commit, shutdown).
    fn waker(&self) -> Arc<Notify>;
    /// Leaves the group cleanly: revokes every partition through `listener` (committing
    /// what it returns) so they move at once instead of after the session timeout.
    async fn close(&mut self, listener: &mut dyn RebalanceListener) -> Result<(), LogError>;
}

#[cfg(test)]
mod tests;
