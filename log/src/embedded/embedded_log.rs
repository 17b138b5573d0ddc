//! [`EmbeddedLog`]: the embedded log as a [`Log`] (in memory, or on disk with
//! [`EmbeddedLog::open`]), and its producer; its views of groups and topics for tests,
//! tools and the node API.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::consumer::EmbeddedConsumer;
use super::coordinator::GroupView;
use super::durable::{self, DurableOptions, Entry, StorageError};
use super::shared::{Shared, State};
use crate::time::{Clock, SystemClock};
use crate::{
    Consumer, ConsumerConfig, Log, LogError, LogRecord, Offset, Producer, ProducerRecord,
    StartFrom, Subscription, TopicPartition, TopicSpec,
};

/// The embedded log, in memory or on disk. Cloning gives another handle to the same log.
#[derive(Clone)]
pub struct EmbeddedLog {
    shared: Arc<Shared>,
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
            shared: Arc::new(Shared::new(clock)),
        }
    }

    /// The log kept in `options.dir`: restored from what it holds (created empty if it
    /// holds nothing), every change journaled there from now on.
    pub fn open(options: DurableOptions) -> Result<Self, StorageError> {
        Self::open_with_clock(options, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        options: DurableOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StorageError> {
        let mut state = State::default();
        let journal = durable::open(&options, &mut state.topics, &mut state.groups)?;
        state.topics.retention = options.retention;
        let State { topics, groups, .. } = &mut state;
        topics.clean_up_all(clock.now_ms(), |tp| durable::lowest_committed(groups, tp));
        Ok(Self {
            shared: Arc::new(Shared::with_state(clock, state, Some(journal))),
        })
    }

    /// Every committed offset of a group (tools reading a stopped node's log).
    pub fn committed(&self, group: &str) -> BTreeMap<TopicPartition, Offset> {
        self.group_view(group)
            .map(|view| view.committed)
            .unwrap_or_default()
    }

    pub fn group_view(&self, group: &str) -> Option<GroupView> {
        let state = self.shared.state.lock();
        state.groups.get(group).map(|g| g.view())
    }

    /// Every consumer group's name, with a count that changes whenever who holds what in
    /// it may have (its [`GroupView`] is worth taking again only then).
    pub fn groups_with_holdings_changes(&self) -> Vec<(String, u64)> {
        let state = self.shared.state.lock();
        state
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), g.holdings_changes()))
            .collect()
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
            .counts()
            .map(|(name, n)| (name.clone(), n))
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
        let log = state.topics.partition(partition)?;
        Ok(log.read(partition, from, max, false))
    }
}

impl EmbeddedLog {
    /// Creates the topic or checks it (see [`Log::ensure_topic`]); what to wait on before
    /// the creation is acknowledged.
    fn create_topic(&self, spec: &TopicSpec) -> Result<Option<u64>, LogError> {
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
            return Ok(None);
        }
        state.topics.create(spec);
        let seq = self.shared.journal(&mut state, &Entry::topic(spec))?;
        // Groups subscribed to this topic before it existed get its partitions now.
        let State { topics, groups, .. } = &mut *state;
        for group in groups.values_mut() {
            if group.subscribes_to(&spec.name) {
                group.rebalance(topics);
            }
        }
        drop(state);
        self.shared.bump();
        Ok(seq)
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        let seq = self.create_topic(spec)?;
        self.shared.durable(seq).await
    }

    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self
            .shared
            .state
            .lock()
            .topics
            .topic(topic)?
            .partition_count())
    }

    async fn end_offset(&self, partition: &TopicPartition) -> Result<Offset, LogError> {
        Ok(self
            .shared
            .state
            .lock()
            .topics
            .partition(partition)?
            .next_offset)
    }

    fn producer(&self) -> Result<Box<dyn Producer>, LogError> {
        Ok(Box::new(EmbeddedProducer {
            shared: self.shared.clone(),
        }))
    }

    fn describe(&self) -> String {
        match &self.shared.journal {
            Some(journal) => journal.describe(),
            None => "the embedded log (in memory)".into(),
        }
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
            self.shared.bump();
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
                let log = state.topics.partition(tp)?;
                let start = offset.unwrap_or(match config.start_from {
                    StartFrom::Earliest => 0,
                    StartFrom::Latest => log.next_offset,
                });
                positions.insert(tp.clone(), start);
            }
        }
        Ok(Box::new(EmbeddedConsumer::new(
            self.shared.clone(),
            config,
            positions,
        )))
    }
}

struct EmbeddedProducer {
    shared: Arc<Shared>,
}

#[async_trait]
impl Producer for EmbeddedProducer {
    async fn send(
        &self,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<(TopicPartition, Offset)>, LogError> {
        let now = self.shared.clock.now_ms();
        let touched = Shared::topics_of(&records);
        let seq = {
            let mut state = self.shared.state.lock();
            let mut stored = Vec::new();
            let journaled = self.shared.journal.is_some();
            let out = state
                .topics
                .append(records, now, journaled.then_some(&mut stored))?;
            let seq = self.shared.journal_batch(&mut state, &stored, None)?;
            (out, seq)
        };
        self.shared.appended(&touched);
        self.shared.durable(seq.1).await?;
        Ok(seq.0)
    }
}
