//! [`Consumer`] on librdkafka: a group member (one client) or a reader (one client per
//! topic), each client polled on its own thread. Their events become records and
//! listener calls here, in order; seeks mark a partition's records stale until the
//! thread confirms the seek; a hole in what the broker served is read again
//! ([`continuity`](super::continuity)); close revokes and commits, then leaves the group.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};

use super::admin;
use super::call::blocking;
use super::commit::{Committer, MemberClient};
use super::connection::Connection;
use super::context::GroupContext;
use super::continuity::{Continuity, Verdict};
use super::events::{Command, Event};
use super::member::{self, GroupTiming};
use super::poll_thread::{Client, Spawner};
use super::reader;
use crate::{
    CommitBatch, Consumer, ConsumerConfig, LogError, LogRecord, Offset, RebalanceListener,
    StartFrom, Subscription, TopicPartition,
};

pub(super) struct KafkaConsumer {
    connection: Arc<Connection>,
    config: ConsumerConfig,
    /// A group member has one client; a reader one per topic.
    clients: Vec<Client>,
    events: mpsc::Receiver<Event>,
    committer: Committer,
    waker: Arc<Notify>,
    detached: Arc<AtomicBool>,
    assignment: BTreeSet<TopicPartition>,
    /// Partitions whose records are stale until the seek with this number is seen.
    seeking: HashMap<TopicPartition, u64>,
    seeks: u64,
    /// Partitions read to their end (and nothing newer seen since).
    at_end: BTreeSet<TopicPartition>,
    /// A partition reached its end during this poll: a reader waiting to be caught up
    /// is answered now instead of at the poll's deadline.
    reached_end: bool,
    /// Records received beyond what a poll could return.
    pending: VecDeque<LogRecord>,
    /// With transactions off: each partition's next offset, to find and read again what
    /// the broker skipped (`None`: transaction markers take offsets too).
    continuity: Option<Continuity>,
    /// The topics read that have a record at every offset (not compacted): found on the
    /// first poll. Only their holes are read again.
    dense_topics: Option<HashSet<Arc<str>>>,
}

/// Bound on asking which topics are compacted, before a consumer's first poll.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings every client of a consumer has.
fn client_config(connection: &Connection, config: &ConsumerConfig) -> ClientConfig {
    let mut client = connection.settings.client();
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
    client
}

impl KafkaConsumer {
    pub fn start(connection: Arc<Connection>, config: ConsumerConfig) -> Result<Self, LogError> {
        let settings = &connection.settings;
        let (events_tx, events) = mpsc::channel(64);
        let detached = Arc::new(AtomicBool::new(false));
        let client = client_config(&connection, &config);
        let timing = GroupTiming::of(settings, &config);
        let spawner = Spawner {
            brokers: settings.brokers.clone(),
            events: events_tx,
            detached: detached.clone(),
            start_from: config.start_from,
            timeout: timing.revoke_wait,
            client_id: config.client_id.clone(),
        };
        let (clients, producer, assignment) = match &config.subscription {
            Subscription::Topics(topics) => {
                let group = config
                    .group
                    .as_deref()
                    .ok_or_else(|| LogError::NoGroup(config.client_id.clone()))?;
                let joined = member::join(
                    &connection,
                    &config,
                    group,
                    topics,
                    client,
                    &timing,
                    &spawner,
                )?;
                (vec![joined.client], joined.producer, BTreeSet::new())
            }
            Subscription::Assign(list) => {
                let readers = reader::assign(&settings.brokers, &config, list, client, &spawner)?;
                (readers.clients, None, readers.assignment)
            }
        };
        Ok(Self {
            committer: Committer::new(connection.clone(), producer),
            at_end: BTreeSet::new(),
            reached_end: false,
            pending: VecDeque::new(),
            continuity: (!connection.settings.transactions).then(|| {
                let mut continuity = Continuity::default();
                if let Subscription::Assign(list) = &config.subscription {
                    for (tp, offset) in list {
                        if let Some(offset) = offset {
                            continuity.starts(tp, *offset);
                        }
                    }
                }
                continuity
            }),
            dense_topics: None,
            connection,
            config,
            clients,
            events,
            waker: Arc::new(Notify::new()),
            detached,
            assignment,
            seeking: HashMap::new(),
            seeks: 0,
        })
    }

    /// The group member's client (a reader's first), for commits and group metadata.
    fn member(&self) -> Result<&Arc<BaseConsumer<GroupContext>>, LogError> {
        self.clients.first().map(|c| &c.consumer).ok_or_else(|| {
            LogError::Other(format!("{} reads no partitions", self.config.client_id))
        })
    }

    /// Makes `batch.outputs` durable and commits `batch.offsets` for owned partitions.
    async fn commit_batch(&mut self, batch: CommitBatch) -> Result<(), LogError> {
        let member = MemberClient {
            consumer: self.clients.first().map(|c| &c.consumer),
            client_id: &self.config.client_id,
        };
        self.committer.commit(batch, &self.assignment, member).await
    }

    /// Keeps a record the poll thread handed over if it belongs to an assigned
    /// partition, is not stale, and follows the partition's last record (else the
    /// partition is read again from where the hole starts).
    fn accept(&mut self, record: LogRecord) -> Result<Option<LogRecord>, LogError> {
        let tp = record.topic_partition();
        if !self.assignment.contains(&tp) || self.seeking.contains_key(&tp) {
            return Ok(None);
        }
        if let (Some(continuity), Some(dense)) = (&mut self.continuity, &self.dense_topics)
            && dense.contains(&tp.topic)
        {
            match continuity.check(&tp, record.offset, std::time::Instant::now()) {
                Verdict::Take => {}
                Verdict::Reread { from, to } => {
                    tracing::debug!(client = %self.config.client_id, partition = %tp, from, to, "the broker skipped records; reading them again");
                    self.reread(&tp, from)?;
                    return Ok(None);
                }
                Verdict::ReadPast { from, to } => {
                    tracing::warn!(client = %self.config.client_id, partition = %tp, from, to, "offsets {from}..{to} of {tp} stayed missing through every reread; reading on past them");
                }
            }
        }
        self.at_end.remove(&tp);
        Ok(Some(record))
    }

    /// Asks the poll thread to read `partition` from `offset`; its records are stale
    /// until the thread confirms. Records already taken stay: they are before `offset`.
    fn reread(&mut self, partition: &TopicPartition, offset: Offset) -> Result<(), LogError> {
        self.seeks += 1;
        self.seeking.insert(partition.clone(), self.seeks);
        if let Some(continuity) = &mut self.continuity {
            continuity.starts(partition, offset);
        }
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

    /// Finds which of the topics read are not compacted (once, before the first
    /// records): a compacted topic's offsets have holes nothing will fill. Not known
    /// (the brokers do not say), no topic's holes are read again.
    async fn find_dense_topics(&mut self) {
        if self.continuity.is_none() || self.dense_topics.is_some() {
            return;
        }
        let topics: Vec<String> = match &self.config.subscription {
            Subscription::Topics(topics) => topics.clone(),
            Subscription::Assign(list) => {
                let topics: BTreeSet<&str> = list.iter().map(|(tp, _)| &*tp.topic).collect();
                topics.into_iter().map(str::to_owned).collect()
            }
        };
        let asked: Vec<&str> = topics.iter().map(String::as_str).collect();
        let timeout = self.connection.settings.timeout.min(DESCRIBE_TIMEOUT);
        let dense = match admin::compacted(&self.connection, &asked, timeout).await {
            Ok(compacted) => topics
                .iter()
                .zip(compacted)
                .filter(|(_, compacted)| !compacted)
                .map(|(topic, _)| Arc::from(topic.as_str()))
                .collect(),
            Err(e) => {
                tracing::warn!(client = %self.config.client_id, "cannot tell which topics are compacted ({e}): records a broker skips are not read again");
                HashSet::new()
            }
        };
        self.dense_topics = Some(dense);
    }

    /// Partitions that are not this member's any more.
    fn release(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.assignment.remove(tp);
            if let Some(continuity) = &mut self.continuity {
                continuity.forget(tp);
            }
        }
        self.committer.released(partitions);
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
                    if let Some(r) = self.accept(record)? {
                        out.push(r);
                    }
                }
            }
            Event::Assigned {
                partitions,
                committed,
            } => {
                listener.on_assigned(&partitions).await;
                if let Some(continuity) = &mut self.continuity {
                    // Where the client starts is known for a partition with a commit;
                    // one without starts where its first record is.
                    for (tp, offset) in &committed {
                        continuity.starts(tp, *offset);
                    }
                }
                for a in partitions {
                    let fresh = self.assignment.insert(a.partition.clone());
                    debug_assert!(
                        fresh,
                        "{} was assigned to {} while it already held it: an assignment holds a partition once",
                        a.partition, self.config.client_id
                    );
                }
                self.committer.assigned(committed);
            }
            Event::Revoked(partitions, ack) => {
                // Hand over records already read of those partitions: they are not ours.
                out.retain(|r| !partitions.contains(&r.topic_partition()));
                self.pending
                    .retain(|r| !partitions.contains(&r.topic_partition()));
                let batch = listener.on_revoked(&partitions).await;
                let result = self.commit_batch(batch).await;
                self.release(&partitions);
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
                self.release(&partitions);
                let _ = ack.send(());
            }
            Event::Seeked(tp, epoch) => {
                if self.seeking.get(&tp) == Some(&epoch) {
                    self.seeking.remove(&tp);
                }
            }
            Event::SeekFailed(tp, epoch, reason) => {
                if self.seeking.get(&tp) == Some(&epoch) {
                    self.seeking.remove(&tp);
                    // Reading on would skip what lies between the commit and the fetch
                    // position: the consumer's user must start again from the commit.
                    if self.assignment.contains(&tp) {
                        return Err(LogError::Other(format!(
                            "could not rewind {tp} to its last commit ({reason}); the reader starts again from the commit"
                        )));
                    }
                }
            }
            Event::End(partition) => {
                if self.assignment.contains(&partition) && !self.seeking.contains_key(&partition) {
                    self.reached_end |= self.at_end.insert(partition);
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
}

#[async_trait(?Send)]
impl Consumer for KafkaConsumer {
    async fn poll(
        &mut self,
        listener: &mut dyn RebalanceListener,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.committer.ensure_transactions().await?;
        self.find_dense_topics().await;
        let mut out: Vec<LogRecord> = Vec::new();
        // Records taken before: they were checked then; only an assignment lost since
        // makes them not ours (a seek drops the partition's pending records itself).
        while out.len() < max_records {
            let Some(record) = self.pending.pop_front() else {
                break;
            };
            if self.assignment.contains(&record.topic_partition()) {
                out.push(record);
            }
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        self.reached_end = false;
        loop {
            // Take whatever is already there without waiting.
            while out.len() < max_records {
                match self.events.try_recv() {
                    Ok(event) => self.handle(event, listener, &mut out).await?,
                    Err(_) => break,
                }
            }
            if !out.is_empty() || self.reached_end || tokio::time::Instant::now() >= deadline {
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
        self.pending.retain(|r| r.topic_partition() != *partition);
        self.reread(partition, offset)
    }

    async fn committed(&self, partition: &TopicPartition) -> Result<Option<Offset>, LogError> {
        let consumer = self.member()?.clone();
        let timeout = self.connection.settings.timeout;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&partition.topic, partition.partition as i32);
        let committed = blocking(move || consumer.committed_offsets(tpl, timeout))
            .await?
            .map_err(|e| self.connection.explain(&e))?;
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
        let closing = std::time::Instant::now();
        let partitions: Vec<TopicPartition> = self.assignment.iter().cloned().collect();
        let mut result = Ok(());
        if !partitions.is_empty() && self.config.group.is_some() {
            let batch = listener.on_revoked(&partitions).await;
            result = self.commit_batch(batch).await;
        }
        self.release(&partitions);
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
        tracing::info!(client = %self.config.client_id, group = ?self.config.group, took_ms = closing.elapsed().as_millis() as u64, "consumer closed (its group left)");
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
