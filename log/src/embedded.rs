//! The embedded log: every topic and consumer group in this process's memory.
//!
//! Its consumer groups behave like Kafka's with the cooperative-sticky assignor and
//! static membership:
//! - a member that joins or leaves triggers a rebalance; partitions that stay put keep
//!   their owner, partitions that move are first revoked from their owner (at its next
//!   poll, through its listener, which commits) and only then assigned to the new one;
//! - a member not heard from within its session timeout is presumed dead: its
//!   partitions move without a commit (it finds them `lost` if it comes back);
//! - a member with an instance id that rejoins while its old self is still registered
//!   takes over the old assignment with no rebalance;
//! - a commit is atomic (outputs and offsets together, as with Kafka transactions and
//!   `read_committed`) and refused for partitions the member no longer owns.
//!
//! Time is tokio's, so under a paused runtime sessions expire in virtual time.
//! Everything is kept in memory; compacted topics drop superseded values as they grow.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::time::{Clock, SystemClock};
use crate::{
    Assigned, Cleanup, CommitBatch, Consumer, ConsumerConfig, Headers, Log, LogError, LogRecord,
    Offset, Producer, ProducerRecord, RebalanceListener, StartFrom, Subscription, TopicPartition,
    TopicSpec, partition_for_key,
};

/// An in-memory log. Cloning gives another handle to the same log.
#[derive(Clone)]
pub struct EmbeddedLog {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every append and group change; waiting consumers watch it.
    changes: Changes,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct State {
    topics: BTreeMap<String, TopicLog>,
    groups: BTreeMap<String, GroupState>,
    next_member: u64,
    round_robin: u32,
}

struct TopicLog {
    spec: TopicSpec,
    partitions: Vec<PartitionLog>,
}

struct PartitionLog {
    /// Sorted by offset; compaction leaves gaps.
    records: Vec<Stored>,
    next_offset: Offset,
    /// Compact when the partition holds this many records (compacted topics only).
    compact_at: usize,
}

#[derive(Clone)]
struct Stored {
    offset: Offset,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Headers,
    timestamp_ms: i64,
}

#[derive(Default)]
struct GroupState {
    members: BTreeMap<u64, MemberState>,
    /// Who holds each partition now. A partition moves only when its holder releases it
    /// (after revoking) or is presumed dead.
    owners: BTreeMap<TopicPartition, u64>,
    committed: HashMap<TopicPartition, Offset>,
    generation: u64,
}

struct MemberState {
    client_id: String,
    instance_id: Option<String>,
    topics: Vec<String>,
    session_timeout: Duration,
    last_seen: Instant,
    /// Where the group wants this member's partitions to be.
    target: BTreeSet<TopicPartition>,
}

/// A snapshot of a consumer group, for tests, tools and the node API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub generation: u64,
    /// `(client id, instance id, partitions held)` per member.
    pub members: Vec<(String, Option<String>, Vec<TopicPartition>)>,
    pub committed: BTreeMap<TopicPartition, Offset>,
    /// The topics the members subscribe to.
    pub topics: BTreeSet<String>,
}

const MIN_COMPACT_AT: usize = 1024;

/// A change counter that wakes every waiting consumer, in the order they started waiting.
///
/// Not tokio's `watch` channel: it spreads its waiters over shards picked at random, so
/// the order in which consumers wake (and a simulated run) would differ from run to run.
#[derive(Default)]
struct Changes {
    version: std::sync::atomic::AtomicU64,
    notify: Notify,
}

impl Changes {
    fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn bump(&self) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

impl Default for EmbeddedLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedLog {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A log that timestamps records with `clock` (virtual time in simulations).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changes: Changes::default(),
                clock,
            }),
        }
    }

    pub fn group_view(&self, group: &str) -> Option<GroupView> {
        let state = self.shared.state.lock();
        let g = state.groups.get(group)?;
        Some(GroupView {
            generation: g.generation,
            members: g
                .members
                .iter()
                .map(|(id, m)| {
                    let held = g
                        .owners
                        .iter()
                        .filter(|(_, owner)| *owner == id)
                        .map(|(tp, _)| tp.clone())
                        .collect();
                    (m.client_id.clone(), m.instance_id.clone(), held)
                })
                .collect(),
            committed: g.committed.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            topics: g
                .members
                .values()
                .flat_map(|m| m.topics.iter().cloned())
                .collect(),
        })
    }

    /// Every consumer group's name.
    pub fn groups(&self) -> Vec<String> {
        self.shared.state.lock().groups.keys().cloned().collect()
    }

    /// Every topic and its partition count, by name.
    pub fn topics(&self) -> Vec<(String, u32)> {
        self.shared
            .state
            .lock()
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), t.partitions.len() as u32))
            .collect()
    }

    /// Every record of a partition from `from` (tools and tests).
    pub fn read(
        &self,
        partition: &TopicPartition,
        from: Offset,
        max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let state = self.shared.state.lock();
        let log = state.partition(partition)?;
        Ok(log.read(partition, from, max))
    }

    fn bump(&self) {
        self.shared.changes.bump();
    }
}

impl State {
    fn topic(&self, name: &str) -> Result<&TopicLog, LogError> {
        self.topics
            .get(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_owned()))
    }

    fn partition(&self, tp: &TopicPartition) -> Result<&PartitionLog, LogError> {
        self.topic(&tp.topic)?
            .partitions
            .get(tp.partition as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            })
    }

    /// Appends records in order; returns where each went.
    fn append(
        &mut self,
        records: Vec<ProducerRecord>,
        now_ms: i64,
    ) -> Result<Vec<(TopicPartition, Offset)>, LogError> {
        // Check everything first so a batch is all-or-nothing.
        let mut placed = Vec::with_capacity(records.len());
        for record in &records {
            let topic = self.topic(&record.topic)?;
            let n = topic.partitions.len() as u32;
            let partition = match (record.partition, &record.key) {
                (Some(p), _) if p < n => p,
                (Some(p), _) => {
                    return Err(LogError::UnknownPartition {
                        topic: record.topic.to_string(),
                        partition: p,
                    });
                }
                (None, Some(key)) => partition_for_key(key, n),
                (None, None) => {
                    self.round_robin = self.round_robin.wrapping_add(1);
                    self.round_robin % n
                }
            };
            placed.push(partition);
        }
        let mut out = Vec::with_capacity(records.len());
        for (record, partition) in records.into_iter().zip(placed) {
            let Some(topic) = self.topics.get_mut(&*record.topic) else {
                return Err(LogError::UnknownTopic(record.topic.to_string()));
            };
            let compact = topic.spec.cleanup == Cleanup::Compact;
            let log = &mut topic.partitions[partition as usize];
            let offset = log.next_offset;
            log.next_offset += 1;
            log.records.push(Stored {
                offset,
                key: record.key,
                value: record.value,
                headers: record.headers,
                timestamp_ms: now_ms,
            });
            if compact && log.records.len() >= log.compact_at {
                log.compact();
            }
            out.push((TopicPartition::new(record.topic, partition), offset));
        }
        Ok(out)
    }
}

impl PartitionLog {
    fn new() -> Self {
        Self {
            records: Vec::new(),
            next_offset: 0,
            compact_at: MIN_COMPACT_AT,
        }
    }

    fn read(&self, tp: &TopicPartition, from: Offset, max: usize) -> Vec<LogRecord> {
        let start = self.records.partition_point(|r| r.offset < from);
        self.records[start..]
            .iter()
            .take(max)
            .map(|r| LogRecord {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: r.offset,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
                timestamp_ms: r.timestamp_ms,
            })
            .collect()
    }

    /// Keeps the latest record of each key (tombstones included, so a reader that saw an
    /// older value still learns of the delete) and every record without a key.
    fn compact(&mut self) {
        let mut latest: HashMap<&Bytes, Offset> = HashMap::new();
        for r in &self.records {
            if let Some(k) = &r.key {
                latest.insert(k, r.offset);
            }
        }
        let keep: Vec<bool> = self
            .records
            .iter()
            .map(|r| {
                r.key
                    .as_ref()
                    .is_none_or(|k| latest.get(k) == Some(&r.offset))
            })
            .collect();
        let mut i = 0;
        self.records.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        self.compact_at = (self.records.len() * 2).max(MIN_COMPACT_AT);
    }
}

impl GroupState {
    /// Recomputes where every partition should be: balanced, and sticky (a partition
    /// stays with its current holder whenever the balance allows).
    fn rebalance(&mut self, topics: &BTreeMap<String, TopicLog>) {
        self.generation += 1;
        let wanted: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.topics.iter())
            .collect();
        let partitions: Vec<TopicPartition> = wanted
            .iter()
            .filter_map(|t| topics.get(*t).map(|log| (t, log.partitions.len())))
            .flat_map(|(t, n)| (0..n as u32).map(move |p| TopicPartition::new(t.as_str(), p)))
            .collect();
        let ids: Vec<u64> = self.members.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let (base, extra) = (partitions.len() / ids.len(), partitions.len() % ids.len());
        let mut extra_left = extra;
        let mut new_target: BTreeMap<u64, BTreeSet<TopicPartition>> = BTreeMap::new();
        let mut taken = BTreeSet::new();
        // Keep what each member has, up to its quota.
        for id in &ids {
            let current: Vec<TopicPartition> = self
                .owners
                .iter()
                .filter(|(_, o)| *o == id)
                .map(|(tp, _)| tp.clone())
                .chain(self.members[id].target.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|tp| partitions.contains(tp))
                .collect();
            let mut quota = base;
            if current.len() > base && extra_left > 0 {
                quota += 1;
                extra_left -= 1;
            }
            let keep: BTreeSet<TopicPartition> = current
                .into_iter()
                .filter(|tp| !taken.contains(tp))
                .take(quota)
                .collect();
            taken.extend(keep.iter().cloned());
            new_target.insert(*id, keep);
        }
        // Hand out the rest to the members with the fewest.
        for tp in partitions.iter().filter(|tp| !taken.contains(*tp)) {
            let Some(id) = ids
                .iter()
                .filter(|id| {
                    let have = new_target[id].len();
                    have < base || (have == base && extra_left > 0)
                })
                .min_by_key(|id| (new_target[id].len(), **id))
                .copied()
            else {
                continue;
            };
            if new_target[&id].len() == base {
                extra_left -= 1;
            }
            new_target.entry(id).or_default().insert(tp.clone());
        }
        for (id, target) in new_target {
            if let Some(m) = self.members.get_mut(&id) {
                m.target = target;
            }
        }
    }

    /// Removes every member that joined as `instance_id`; true if any.
    fn evict(&mut self, instance_id: &str) -> bool {
        let gone: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.instance_id.as_deref() == Some(instance_id))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.members.remove(id);
            self.owners.retain(|_, owner| owner != id);
        }
        !gone.is_empty()
    }

    /// Removes members not heard from within their session timeout; true if any.
    fn expire(&mut self, now: Instant) -> bool {
        let dead: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) > m.session_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            if let Some(m) = self.members.remove(id) {
                tracing::info!(client = %m.client_id, "consumer group member timed out; its partitions move");
            }
            self.owners.retain(|_, owner| owner != id);
        }
        !dead.is_empty()
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        if spec.partitions == 0 {
            return Err(LogError::Other(format!(
                "topic {} needs at least one partition",
                spec.name
            )));
        }
        let mut state = self.shared.state.lock();
        if let Some(existing) = state.topics.get(&spec.name) {
            if existing.spec.partitions != spec.partitions {
                return Err(LogError::TopicMismatch {
                    topic: spec.name.clone(),
                    expected: format!("{} partitions", spec.partitions),
                    found: format!("{} partitions", existing.spec.partitions),
                    fix: "recreate it or configure the same partition count".into(),
                });
            }
            if existing.spec.cleanup != spec.cleanup {
                return Err(LogError::TopicMismatch {
                    topic: spec.name.clone(),
                    expected: format!("cleanup {:?}", spec.cleanup),
                    found: format!("cleanup {:?}", existing.spec.cleanup),
                    fix: "change the topic's cleanup policy".into(),
                });
            }
            return Ok(());
        }
        state.topics.insert(
            spec.name.clone(),
            TopicLog {
                spec: spec.clone(),
                partitions: (0..spec.partitions).map(|_| PartitionLog::new()).collect(),
            },
        );
        // Groups subscribed to this topic before it existed get its partitions now.
        let State { topics, groups, .. } = &mut *state;
        for group in groups.values_mut() {
            if group
                .members
                .values()
                .any(|m| m.topics.contains(&spec.name))
            {
                group.rebalance(topics);
            }
        }
        drop(state);
        self.bump();
        Ok(())
    }

    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.shared.state.lock().topic(topic)?.partitions.len() as u32)
    }

    async fn end_offset(&self, partition: &TopicPartition) -> Result<Offset, LogError> {
        Ok(self.shared.state.lock().partition(partition)?.next_offset)
    }

    fn producer(&self) -> Result<Box<dyn Producer>, LogError> {
        Ok(Box::new(EmbeddedProducer { log: self.clone() }))
    }

    fn describe(&self) -> String {
        "the embedded log (in memory)".into()
    }

    async fn evict_static_member(&self, instance_id: &str) -> Result<Vec<String>, LogError> {
        let mut evicted = Vec::new();
        {
            let mut state = self.shared.state.lock();
            let State { topics, groups, .. } = &mut *state;
            for (name, group) in groups.iter_mut() {
                if group.evict(instance_id) {
                    group.rebalance(topics);
                    evicted.push(name.clone());
                }
            }
        }
        if !evicted.is_empty() {
            tracing::info!(member = %instance_id, groups = ?evicted, "evicted a lost static member; its partitions move");
            self.bump();
        }
        Ok(evicted)
    }

    fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, LogError> {
        if matches!(config.subscription, Subscription::Topics(_)) && config.group.is_none() {
            return Err(LogError::NoGroup(config.client_id.clone()));
        }
        let mut positions = BTreeMap::new();
        if let Subscription::Assign(list) = &config.subscription {
            let state = self.shared.state.lock();
            for (tp, offset) in list {
                let log = state.partition(tp)?;
                let start = offset.unwrap_or(match config.start_from {
                    StartFrom::Earliest => 0,
                    StartFrom::Latest => log.next_offset,
                });
                positions.insert(tp.clone(), start);
            }
        }
        Ok(Box::new(EmbeddedConsumer {
            log: self.clone(),
            seen: 0,
            waker: Arc::new(Notify::new()),
            member: None,
            positions,
            next_partition: 0,
            config,
        }))
    }
}

struct EmbeddedProducer {
    log: EmbeddedLog,
}

#[async_trait]
impl Producer for EmbeddedProducer {
    async fn send(
        &self,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<(TopicPartition, Offset)>, LogError> {
        let now = self.log.shared.clock.now_ms();
        let out = self.log.shared.state.lock().append(records, now)?;
        self.log.bump();
        Ok(out)
    }
}

struct EmbeddedConsumer {
    log: EmbeddedLog,
    /// The version of [`Changes`] this consumer last looked at.
    seen: u64,
    waker: Arc<Notify>,
    /// Member id in the group, once joined.
    member: Option<u64>,
    /// What this consumer has been given, and where it reads next.
    positions: BTreeMap<TopicPartition, Offset>,
    /// Round-robin start, so one busy partition does not starve the others.
    next_partition: usize,
    config: ConsumerConfig,
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
    fn group_name(&self) -> Option<&str> {
        match self.config.subscription {
            Subscription::Topics(_) => self.config.group.as_deref(),
            Subscription::Assign(_) => None,
        }
    }

    fn join(&mut self, state: &mut State) -> u64 {
        let Subscription::Topics(topics) = &self.config.subscription else {
            unreachable!("only group subscriptions join");
        };
        let group_name = self.config.group.clone().unwrap_or_default();
        state.next_member += 1;
        let id = state.next_member;
        let State {
            topics: logs,
            groups,
            ..
        } = state;
        let group = groups.entry(group_name).or_default();
        let now = Instant::now();
        // A static member replacing its old self takes over its assignment quietly.
        let previous = self.config.instance_id.as_ref().and_then(|instance| {
            group
                .members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(instance))
                .map(|(old, _)| *old)
        });
        let mut member = MemberState {
            client_id: self.config.client_id.clone(),
            instance_id: self.config.instance_id.clone(),
            topics: topics.clone(),
            session_timeout: self.config.session_timeout,
            last_seen: now,
            target: BTreeSet::new(),
        };
        match previous.and_then(|old| group.members.remove(&old).map(|m| (old, m))) {
            Some((old, old_member)) => {
                member.target = old_member.target;
                // The old self may have died holding partitions it was asked to give up:
                // the new one never had them (it has nothing to commit for them), so they
                // are released at once rather than held by a member that does not know
                // it holds them (which would keep them from their new owner for good).
                let target = &member.target;
                group
                    .owners
                    .retain(|tp, owner| *owner != old || target.contains(tp));
                for owner in group.owners.values_mut() {
                    if *owner == old {
                        *owner = id;
                    }
                }
                group.members.insert(id, member);
            }
            None => {
                group.members.insert(id, member);
                group.rebalance(logs);
            }
        }
        self.member = Some(id);
        id
    }

    /// One step of the group protocol for this member.
    fn group_step(&mut self) -> GroupStep {
        let Some(group_name) = self.group_name().map(str::to_owned) else {
            return GroupStep::Steady;
        };
        let log = self.log.clone();
        let mut state = log.shared.state.lock();
        let now = Instant::now();
        let mut changed = false;
        {
            let State { topics, groups, .. } = &mut *state;
            if let Some(group) = groups.get_mut(&group_name)
                && group.expire(now)
            {
                group.rebalance(topics);
                changed = true;
            }
        }
        let id = match self.member {
            Some(id)
                if state
                    .groups
                    .get(&group_name)
                    .is_some_and(|g| g.members.contains_key(&id)) =>
            {
                id
            }
            Some(_) => {
                // Removed while we were away: what we had is gone.
                self.member = None;
                drop(state);
                if changed {
                    self.log.bump();
                }
                return GroupStep::Lost;
            }
            None => {
                let id = self.join(&mut state);
                changed = true;
                id
            }
        };
        let State { topics, groups, .. } = &mut *state;
        let group = groups.entry(group_name).or_default();
        let Some(me) = group.members.get_mut(&id) else {
            return GroupStep::Steady;
        };
        me.last_seen = now;
        let target = me.target.clone();
        let revoke: Vec<TopicPartition> = self
            .positions
            .keys()
            .filter(|tp| !target.contains(*tp))
            .cloned()
            .collect();
        let step =
            if !revoke.is_empty() {
                GroupStep::Revoke(revoke)
            } else {
                let mut assign = Vec::new();
                for tp in target.iter().filter(|tp| !self.positions.contains_key(*tp)) {
                    let free = group.owners.get(tp).is_none_or(|owner| *owner == id);
                    let Some(log) = topics
                        .get(&*tp.topic)
                        .and_then(|t| t.partitions.get(tp.partition as usize))
                    else {
                        continue;
                    };
                    if free {
                        group.owners.insert(tp.clone(), id);
                        let position = group.committed.get(tp).copied().unwrap_or(
                            match self.config.start_from {
                                StartFrom::Earliest => 0,
                                StartFrom::Latest => log.next_offset,
                            },
                        );
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
            self.log.bump();
        }
        step
    }

    /// Applies a commit batch atomically if this member owns every partition in it.
    fn apply_commit(&self, batch: CommitBatch) -> Result<(), LogError> {
        let mut state = self.log.shared.state.lock();
        if !batch.offsets.is_empty() {
            let Some(group_name) = self.group_name() else {
                return Err(LogError::NoGroup(self.config.client_id.clone()));
            };
            let group = state.groups.get(group_name);
            for (tp, _) in &batch.offsets {
                let owns = match (group, self.member) {
                    (Some(g), Some(id)) => {
                        g.members.contains_key(&id) && g.owners.get(tp) == Some(&id)
                    }
                    _ => false,
                };
                if !owns {
                    return Err(LogError::NotAssigned(tp.clone()));
                }
            }
        }
        let now = self.log.shared.clock.now_ms();
        state.append(batch.outputs, now)?;
        if let Some(group) = self.group_name().and_then(|g| state.groups.get_mut(g)) {
            for (tp, offset) in batch.offsets {
                group.committed.insert(tp, offset);
            }
        }
        Ok(())
    }

    fn release(&self, partitions: &[TopicPartition]) {
        let Some(group_name) = self.group_name() else {
            return;
        };
        let mut state = self.log.shared.state.lock();
        if let (Some(group), Some(id)) = (state.groups.get_mut(group_name), self.member) {
            for tp in partitions {
                if group.owners.get(tp) == Some(&id) {
                    group.owners.remove(tp);
                }
            }
        }
    }

    fn fetch(&mut self, max_records: usize) -> Result<Vec<LogRecord>, LogError> {
        let state = self.log.shared.state.lock();
        let mut out = Vec::new();
        let partitions: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        if partitions.is_empty() {
            return Ok(out);
        }
        let n = partitions.len();
        let start = self.next_partition % n;
        self.next_partition = self.next_partition.wrapping_add(1);
        // A fair share per partition first, then whatever room is left.
        let share = (max_records / n).max(1);
        for pass in 0..2 {
            for i in 0..n {
                if out.len() >= max_records {
                    break;
                }
                let tp = &partitions[(start + i) % n];
                let Some(position) = self.positions.get_mut(tp) else {
                    continue;
                };
                let room = if pass == 0 {
                    share.min(max_records - out.len())
                } else {
                    max_records - out.len()
                };
                let records = state.partition(tp)?.read(tp, *position, room);
                if let Some(last) = records.last() {
                    *position = last.offset + 1;
                }
                out.extend(records);
            }
        }
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
        loop {
            self.seen = self.log.shared.changes.version();
            match self.group_step() {
                GroupStep::Lost => {
                    let lost: Vec<TopicPartition> =
                        std::mem::take(&mut self.positions).into_keys().collect();
                    if !lost.is_empty() {
                        tracing::warn!(client = %self.config.client_id, partitions = lost.len(), "partitions lost: this member was presumed dead");
                        listener.on_lost(&lost).await;
                    }
                    continue;
                }
                GroupStep::Revoke(partitions) => {
                    let batch = listener.on_revoked(&partitions).await;
                    let result = self.apply_commit(batch);
                    self.release(&partitions);
                    for tp in &partitions {
                        self.positions.remove(tp);
                    }
                    self.log.bump();
                    result?;
                    continue;
                }
                GroupStep::Assign(assigned) => {
                    listener.on_assigned(&assigned).await;
                    for a in assigned {
                        self.positions.insert(a.partition, a.position);
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
            let wake = deadline.min(now + heartbeat);
            let changed = self.log.shared.changes.notify.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.log.shared.changes.version() != self.seen {
                continue;
            }
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
        let result = self.apply_commit(batch);
        self.log.bump();
        result
    }

    fn seek(&mut self, partition: &TopicPartition, offset: Offset) -> Result<(), LogError> {
        match self.positions.get_mut(partition) {
            Some(position) => {
                *position = offset;
                Ok(())
            }
            None => Err(LogError::NotAssigned(partition.clone())),
        }
    }

    async fn committed(&self, partition: &TopicPartition) -> Result<Option<Offset>, LogError> {
        let state = self.log.shared.state.lock();
        Ok(self
            .config
            .group
            .as_deref()
            .and_then(|g| state.groups.get(g))
            .and_then(|g| g.committed.get(partition).copied()))
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    fn caught_up(&self, partition: &TopicPartition) -> bool {
        let Some(position) = self.positions.get(partition) else {
            return false;
        };
        let state = self.log.shared.state.lock();
        state
            .partition(partition)
            .is_ok_and(|log| *position >= log.next_offset)
    }

    fn waker(&self) -> Arc<Notify> {
        self.waker.clone()
    }

    async fn close(&mut self, listener: &mut dyn RebalanceListener) -> Result<(), LogError> {
        let partitions: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        let mut result = Ok(());
        if !partitions.is_empty() {
            let batch = listener.on_revoked(&partitions).await;
            result = self.apply_commit(batch);
        }
        self.positions.clear();
        if let (Some(group_name), Some(id)) =
            (self.group_name().map(str::to_owned), self.member.take())
        {
            let mut state = self.log.shared.state.lock();
            let State { topics, groups, .. } = &mut *state;
            if let Some(group) = groups.get_mut(&group_name) {
                group.members.remove(&id);
                group.owners.retain(|_, owner| *owner != id);
                group.rebalance(topics);
            }
        }
        self.log.bump();
        result
    }
}
