//! [`Consumer::commit`](crate::Consumer::commit) on Kafka: a member's batch of outputs
//! and input offsets, refused whole for a partition the member does not own, then
//! committed as one transaction ([`transactions`](super::transactions)) or, with
//! transactions off, outputs first (delivered) and then the offsets.
//!
//! The committer also keeps the member's own record of the committed offsets of the
//! partitions it owns (found when they were assigned, then what it committed), to assert
//! that no commit moves one back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::call::blocking;
use super::connection::Connection;
use super::context::GroupContext;
use super::producer::{placement, send_plain};
use super::transactions::{self, Transaction};
use crate::committed::CommittedOffsets;
use crate::{CommitBatch, LogError, Offset, TopicPartition};

pub(super) struct Committer {
    connection: Arc<Connection>,
    /// The transactional producer of this member's commits (`None`: transactions are
    /// off, or this is a reader).
    producer: Option<Arc<BaseProducer>>,
    /// `init_transactions` ran for it.
    transactions_ready: bool,
    /// A failed transaction whose abort has not completed yet: it must complete before
    /// the next transaction begins.
    abort_pending: Arc<AtomicBool>,
    /// The committed offsets of the partitions this member owns, as far as it knows.
    committed: CommittedOffsets,
}

/// The consumer whose offsets a commit commits: the group member's client (a reader's
/// first), and its client id for an error when there is none.
pub(super) struct MemberClient<'a> {
    pub consumer: Option<&'a Arc<BaseConsumer<GroupContext>>>,
    pub client_id: &'a str,
}

impl MemberClient<'_> {
    fn consumer(&self) -> Result<Arc<BaseConsumer<GroupContext>>, LogError> {
        self.consumer
            .cloned()
            .ok_or_else(|| LogError::Other(format!("{} reads no partitions", self.client_id)))
    }
}

impl Committer {
    pub fn new(connection: Arc<Connection>, producer: Option<BaseProducer>) -> Self {
        Self {
            connection,
            producer: producer.map(Arc::new),
            transactions_ready: false,
            abort_pending: Arc::new(AtomicBool::new(false)),
            committed: CommittedOffsets::default(),
        }
    }

    /// Initialises the transactional producer on first use: it registers with the
    /// transaction coordinator, which fences any previous incarnation of this member.
    pub async fn ensure_transactions(&mut self) -> Result<(), LogError> {
        let (Some(producer), false) = (self.producer.clone(), self.transactions_ready) else {
            return Ok(());
        };
        let timeout = self.connection.settings.timeout;
        blocking(move || producer.init_transactions(timeout))
            .await?
            .map_err(|e| self.connection.explain(&e))?;
        self.transactions_ready = true;
        Ok(())
    }

    /// The group's committed offsets of partitions just assigned to this member.
    pub fn assigned(&mut self, committed: Vec<(TopicPartition, Offset)>) {
        for (partition, offset) in committed {
            self.committed.forget(&partition);
            self.committed.advance(partition, offset);
        }
    }

    /// Partitions this member no longer owns.
    pub fn released(&mut self, partitions: &[TopicPartition]) {
        for partition in partitions {
            self.committed.forget(partition);
        }
    }

    /// Makes `batch.outputs` durable and commits `batch.offsets`, if this member owns
    /// (`owned`) every partition of them.
    pub async fn commit(
        &mut self,
        batch: CommitBatch,
        owned: &BTreeSet<TopicPartition>,
        member: MemberClient<'_>,
    ) -> Result<(), LogError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.ensure_transactions().await?;
        for (tp, offset) in &batch.offsets {
            if !owned.contains(tp) {
                return Err(LogError::NotAssigned(tp.clone()));
            }
            self.committed.check(tp, *offset);
        }
        let timeout = self.connection.settings.timeout;
        let mut offsets = TopicPartitionList::new();
        for (tp, offset) in &batch.offsets {
            offsets
                .add_partition_offset(
                    &tp.topic,
                    tp.partition as i32,
                    KafkaOffset::Offset(*offset as i64),
                )
                .map_err(|e| self.connection.explain(&e))?;
        }
        let Some(producer) = self.producer.clone() else {
            // Outputs first, durable; then the state they leave behind; then the offsets.
            let (state, outputs): (Vec<crate::ProducerRecord>, Vec<crate::ProducerRecord>) = batch
                .outputs
                .into_iter()
                .partition(|r| r.topic.ends_with(crate::CHANGELOG_SUFFIX));
            send_plain(&self.connection, &outputs).await?;
            send_plain(&self.connection, &state).await?;
            if offsets.count() > 0 {
                let consumer = member.consumer()?;
                blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                    .await?
                    .map_err(|e| self.connection.explain(&e))?;
            }
            self.advance(batch.offsets);
            return Ok(());
        };
        let mut outputs = Vec::with_capacity(batch.outputs.len());
        for record in batch.outputs {
            let partition = placement(&self.connection, &record).await?;
            outputs.push((record, partition));
        }
        let metadata = match (offsets.count(), member.consumer()?.group_metadata()) {
            (0, metadata) => metadata,
            (_, Some(metadata)) => Some(metadata),
            (_, None) => {
                return Err(LogError::Other(
                    "the consumer has no group metadata to commit offsets with".into(),
                ));
            }
        };
        let transaction = Transaction {
            outputs,
            offsets,
            metadata,
        };
        let abort_pending = self.abort_pending.clone();
        blocking(move || transactions::run(&producer, transaction, timeout, &abort_pending))
            .await?
            .map_err(|e| self.connection.explain(&e))?;
        self.advance(batch.offsets);
        Ok(())
    }

    fn advance(&mut self, offsets: Vec<(TopicPartition, Offset)>) {
        for (partition, offset) in offsets {
            self.committed.advance(partition, offset);
        }
    }
}
