//! The embedded log's consumer: a group member (joined at its first poll, its
//! partitions handed over through the listener as the coordinator moves them) or a
//! reader of given partitions. A poll takes one step of the group protocol, then reads a
//! fair share of each partition, waiting on the log's change counter when there is
//! nothing to read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::coordinator::MemberState;
use super::shared::{Shared, State, Watcher};
use super::storage::{PartitionLog, TopicLog};
use crate::{
    Assigned, CommitBatch, Consumer, ConsumerConfig, LogError, LogRecord, Offset,
    RebalanceListener, StartFrom, Subscription, TopicPartition,
};

pub(super) struct EmbeddedConsumer {
    shared: Arc<Shared>,
    /// Wakes this consumer's wait when its topics are appended to or a group changes.
    watcher: Arc<Watcher>,
    waker: Arc<Notify>,
    /// Member id in the group, once joined.
    member: Option<u64>,
    /// What this consumer has been given, and where it reads next.
    positions: BTreeMap<TopicPartition, Offset>,
    /// Round-robin start, so one busy partition does not starve the others.
    next_partition: usize,
    /// The watcher's wake count when a fetch last read every partition to its end, while
    /// the positions have not moved since: a fetch at that count has nothing to read.
    read_all_at: Option<u64>,
    config: ConsumerConfig,
}

/// The group a consumer of `config` is a member of (none for an assignment).
fn group_of(config: &ConsumerConfig) -> Option<&str> {
    match config.subscription {
        Subscription::Topics(_) => config.group.as_deref(),
        Subscription::Assign(_) => None,
    }
}

/// What the group asks of a member at one poll.
enum GroupStep {
    /// This member was presumed dead and removed: everything it had is lost.
    Lost,
    Revoke(Vec<TopicPartition>),
    Assign(Vec<Assigned>),
    Steady,
}

impl EmbeddedConsumer {
    /// A consumer of `config`; a reader's partitions start at `positions`.
    pub fn new(
        shared: Arc<Shared>,
        config: ConsumerConfig,
        positions: BTreeMap<TopicPartition, Offset>,
    ) -> Self {
        let topics = match &config.subscription {
            Subscription::Topics(topics) => topics.clone(),
            Subscription::Assign(_) => positions.keys().map(|tp| tp.topic.to_string()).collect(),
        };
        let watcher = shared.changes.watch(topics);
        Self {
            shared,
            watcher,
            waker: Arc::new(Notify::new()),
            member: None,
            positions,
            next_partition: 0,
            read_all_at: None,
            config,
        }
    }

    fn group_name(&self) -> Option<&str> {
        group_of(&self.config)
    }

    /// One step of the group protocol for this member.
    fn group_step(&mut self) -> GroupStep {
        // The config alone is borrowed: the member id changes below.
        let Some(group_name) = group_of(&self.config) else {
            return GroupStep::Steady;
        };
        let mut state = self.shared.state.lock();
        let now = Instant::now();
        let State {
            topics,
            groups,
            next_member,
        } = &mut *state;
        // One lookup (the group is made by its first member's join).
        let group = match groups.get_mut(group_name) {
            Some(group) => group,
            None => groups.entry(group_name.to_owned()).or_default(),
        };
        let mut changed = false;
        if group.expire(now) {
            group.rebalance(topics);
            changed = true;
        }
        let id = match self.member {
            Some(id) if group.is_member(id) => id,
            Some(_) => {
                // Removed while we were away: what we had is gone.
                self.member = None;
                drop(state);
                if changed {
                    self.shared.bump();
                }
                return GroupStep::Lost;
            }
            None => {
                let Subscription::Topics(subscribed) = &self.config.subscription else {
                    unreachable!("only group subscriptions reach the join");
                };
                *next_member += 1;
                let id = *next_member;
                let member = MemberState::new(
                    self.config.client_id.clone(),
                    self.config.instance_id.clone(),
                    subscribed.clone(),
                    self.config.session_timeout,
                    now,
                );
                group.join(id, member, topics);
                self.member = Some(id);
                changed = true;
                id
            }
        };
        let Some(target) = group.heartbeat(id, now) else {
            return GroupStep::Steady;
        };
        // The usual case, checked without copying the target: it holds what it should.
        if !changed && target.iter().eq(self.positions.keys()) {
            return GroupStep::Steady;
        }
        let target = target.clone();
        let revoke: Vec<TopicPartition> = self
            .positions
            .keys()
            .filter(|tp| !target.contains(*tp))
            .cloned()
            .collect();
        let step = if !revoke.is_empty() {
            GroupStep::Revoke(revoke)
        } else {
            let mut assign = Vec::new();
            for tp in target.iter().filter(|tp| !self.positions.contains_key(*tp)) {
                let Ok(log) = topics.partition(tp) else {
                    continue;
                };
                if group.claim(id, tp) {
                    let position = group.committed(tp).unwrap_or(match self.config.start_from {
                        StartFrom::Earliest => 0,
                        StartFrom::Latest => log.next_offset,
                    });
                    assign.push(Assigned {
                        partition: tp.clone(),
                        position,
                    });
                }
            }
            if assign.is_empty() {
                GroupStep::Steady
            } else {
                GroupStep::Assign(assign)
            }
        };
        drop(state);
        if changed {
            self.shared.bump();
        }
        step
    }

    /// Applies a commit batch atomically if this member owns every partition in it; what
    /// to wait on before it is acknowledged (a durable log's journal).
    fn apply_commit(&self, batch: CommitBatch) -> Result<Option<u64>, LogError> {
        let mut state = self.shared.state.lock();
        if !batch.offsets.is_empty() {
            let Some(group_name) = self.group_name() else {
                return Err(LogError::NoGroup(self.config.client_id.clone()));
            };
            match state.groups.get(group_name) {
                Some(group) => group.check_commit(self.member, &batch.offsets)?,
                None => return Err(LogError::NotAssigned(batch.offsets[0].0.clone())),
            }
        }
        let now = self.shared.clock.now_ms();
        let mut stored = Vec::new();
        let journaled = self.shared.journal.is_some();
        state
            .topics
            .append(batch.outputs, now, journaled.then_some(&mut stored))?;
        let group_name = self.group_name().filter(|_| !batch.offsets.is_empty());
        let commit = group_name.map(|g| (g, batch.offsets.as_slice()));
        let seq = self.shared.journal_batch(&mut state, &stored, commit)?;
        if let Some(group) = self.group_name().and_then(|g| state.groups.get_mut(g)) {
            group.commit(batch.offsets);
        }
        Ok(seq)
    }

    /// Applies a commit batch and waits until it is durable.
    async fn commit_durably(&self, batch: CommitBatch) -> Result<(), LogError> {
        let touched = Shared::topics_of(&batch.outputs);
        let seq = self.apply_commit(batch);
        self.shared.appended(&touched);
        self.shared.durable(seq?).await
    }

    fn release(&self, partitions: &[TopicPartition]) {
        let Some(group_name) = self.group_name() else {
            return;
        };
        let mut state = self.shared.state.lock();
        if let (Some(group), Some(id)) = (state.groups.get_mut(group_name), self.member) {
            group.release(id, partitions);
        }
    }

    fn fetch(&mut self, max_records: usize) -> Result<Vec<LogRecord>, LogError> {
        let state = self.shared.state.lock();
        let mut out = Vec::new();
        let wakes = self.watcher.wakes();
        if self.read_all_at == Some(wakes) || self.positions.is_empty() {
            // Nothing appended to these topics since everything was read.
            return Ok(out);
        }
        // Each partition with its position, in the order read this time (round-robin
        // start), and its topic's log looked up once per topic rather than per partition.
        let n = self.positions.len();
        let start = self.next_partition % n;
        self.next_partition = self.next_partition.wrapping_add(1);
        let keys_only = &self.config.keys_only;
        let mut reading: Vec<(&TopicPartition, &mut Offset, &PartitionLog, bool)> =
            Vec::with_capacity(n);
        let mut topic: Option<(&str, &TopicLog, bool)> = None;
        for (tp, position) in self.positions.iter_mut() {
            let (log, only_keys) = match topic {
                Some((name, log, only_keys)) if name == &*tp.topic => (log, only_keys),
                _ => {
                    let log = state.topics.topic(&tp.topic)?;
                    let only_keys = keys_only.iter().any(|t| **t == *tp.topic);
                    topic = Some((&tp.topic, log, only_keys));
                    (log, only_keys)
                }
            };
            let partition = log.partitions().get(tp.partition as usize).ok_or_else(|| {
                LogError::UnknownPartition {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                }
            })?;
            reading.push((tp, position, partition, only_keys));
        }
        reading.rotate_left(start);
        // Room for what will be read, at once, rather than growing (and copying) the batch
        // as partitions are read.
        let available: u64 = reading
            .iter()
            .map(|(_, position, partition, _)| partition.next_offset.saturating_sub(**position))
            .sum();
        out.reserve(
            usize::try_from(available)
                .unwrap_or(usize::MAX)
                .min(max_records),
        );
        // A fair share per partition first, then whatever room is left (only if some
        // partition had more than its share).
        let share = (max_records / n).max(1);
        let mut more = false;
        for pass in 0..2 {
            if pass == 1 && !more {
                break;
            }
            for (tp, position, partition, only_keys) in reading.iter_mut() {
                if out.len() >= max_records {
                    break;
                }
                let room = if pass == 0 {
                    share.min(max_records - out.len())
                } else {
                    max_records - out.len()
                };
                let records = partition.read(tp, **position, room, *only_keys);
                more |= records.len() >= room;
                if let Some(last) = records.last() {
                    **position = last.offset + 1;
                }
                out.extend(records);
            }
        }
        // Every partition read to its end: until the next wake there is nothing to read.
        self.read_all_at = (out.len() < max_records).then_some(wakes);
        Ok(out)
    }
}

#[async_trait(?Send)]
impl Consumer for EmbeddedConsumer {
    async fn poll(
        &mut self,
        listener: &mut dyn RebalanceListener,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<LogRecord>, LogError> {
        let deadline = Instant::now() + max_wait;
        // Wake at least this often while waiting, to stay alive and notice dead peers.
        let heartbeat = (self.config.session_timeout / 4).max(Duration::from_millis(1));
        let watcher = self.watcher.clone();
        loop {
            // Armed before the group step and the read, so that a change while they run
            // ends the wait. A wake kept from before is stale (what it was for is read
            // now): it is spent, and a fresh wait armed.
            let changed = watcher.notify.notified();
            tokio::pin!(changed);
            if changed.as_mut().enable() {
                changed.set(watcher.notify.notified());
                changed.as_mut().enable();
            }
            match self.group_step() {
                GroupStep::Lost => {
                    self.read_all_at = None;
                    let lost: Vec<TopicPartition> =
                        std::mem::take(&mut self.positions).into_keys().collect();
                    if !lost.is_empty() {
                        tracing::warn!(client = %self.config.client_id, partitions = lost.len(), "partitions lost: this member was presumed dead");
                        listener.on_lost(&lost).await;
                    }
                    continue;
                }
                GroupStep::Revoke(partitions) => {
                    self.read_all_at = None;
                    let batch = listener.on_revoked(&partitions).await;
                    let result = self.apply_commit(batch);
                    self.release(&partitions);
                    for tp in &partitions {
                        self.positions.remove(tp);
                    }
                    self.shared.bump();
                    self.shared.durable(result?).await?;
                    continue;
                }
                GroupStep::Assign(assigned) => {
                    self.read_all_at = None;
                    listener.on_assigned(&assigned).await;
                    for a in assigned {
                        let held = self.positions.insert(a.partition.clone(), a.position);
                        debug_assert!(
                            held.is_none(),
                            "{} was assigned to {} while it already held it: an assignment holds a partition once",
                            a.partition,
                            self.config.client_id
                        );
                    }
                    continue;
                }
                GroupStep::Steady => {}
            }
            let records = self.fetch(max_records)?;
            let now = Instant::now();
            if !records.is_empty() || now >= deadline {
                return Ok(records);
            }
            // Also when a silent peer's session runs out, so that its partitions move
            // as soon as they may.
            let expiry = self.group_name().and_then(|g| {
                let state = self.shared.state.lock();
                state.groups.get(g).and_then(|g| g.next_expiry())
            });
            let wake = expiry.map_or(deadline.min(now + heartbeat), |at| {
                deadline.min(now + heartbeat).min(at.max(now))
            });
            // Biased: polled in a fixed order, so a simulated run replays exactly.
            tokio::select! {
                biased;
                _ = changed => {}
                _ = self.waker.notified() => return Ok(Vec::new()),
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn commit(&mut self, batch: CommitBatch) -> Result<(), LogError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.commit_durably(batch).await
    }

    fn seek(&mut self, partition: &TopicPartition, offset: Offset) -> Result<(), LogError> {
        match self.positions.get_mut(partition) {
            Some(position) => {
                *position = offset;
                self.read_all_at = None;
                Ok(())
            }
            None => Err(LogError::NotAssigned(partition.clone())),
        }
    }

    async fn committed(&self, partition: &TopicPartition) -> Result<Option<Offset>, LogError> {
        let state = self.shared.state.lock();
        Ok(self
            .config
            .group
            .as_deref()
            .and_then(|g| state.groups.get(g))
            .and_then(|g| g.committed(partition)))
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    fn caught_up(&self, partition: &TopicPartition) -> bool {
        let Some(position) = self.positions.get(partition) else {
            return false;
        };
        let state = self.shared.state.lock();
        state
            .topics
            .partition(partition)
            .is_ok_and(|log| *position >= log.next_offset)
    }

    fn waker(&self) -> Arc<Notify> {
        self.waker.clone()
    }

    async fn close(&mut self, listener: &mut dyn RebalanceListener) -> Result<(), LogError> {
        let partitions: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        let mut result = Ok(None);
        if !partitions.is_empty() {
            let batch = listener.on_revoked(&partitions).await;
            result = self.apply_commit(batch);
        }
        self.positions.clear();
        if let (Some(group_name), Some(id)) =
            (self.group_name().map(str::to_owned), self.member.take())
        {
            let mut state = self.shared.state.lock();
            let State { topics, groups, .. } = &mut *state;
            if let Some(group) = groups.get_mut(&group_name) {
                group.leave(id, topics);
            }
        }
        self.shared.bump();
        self.shared.durable(result?).await
    }
}
