//! A node's view of the shared log, through which the harness kills it and injects log
//! faults.
//!
//! A crash must stop a node at any point, mid-call included, without its actors getting
//! a chance to clean up (no flush, no commit, no leaving the group). Every call a
//! crashed incarnation makes to the log (and to the microservices) therefore never
//! returns: the node is as silent as a dead process, its group sessions run out, and its
//! memory is gone for good (the next incarnation starts empty and restores from the log).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::Notify;
use wellspring_log::{
    CommitBatch, Consumer, ConsumerConfig, Log, LogError, LogRecord, Offset, Producer,
    ProducerRecord, RebalanceListener, TopicPartition, TopicSpec,
};

use crate::config::{FaultRates, InjectedBug};
use crate::history::{EventKind, History};

/// Whether a node incarnation is alive.
#[derive(Debug, Default)]
pub struct Life {
    dead: AtomicBool,
    died: Notify,
}

impl Life {
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.died.notify_waiters();
    }

    /// Resolves once the incarnation is dead: a call in progress ends there, unfinished,
    /// as it would in a killed process.
    pub async fn death(&self) {
        loop {
            let died = self.died.notified();
            tokio::pin!(died);
            died.as_mut().enable();
            if self.is_dead() {
                return;
            }
            died.await;
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Returns at once while alive; never returns once dead.
    pub async fn check(&self) {
        if self.is_dead() {
            std::future::pending::<()>().await;
        }
    }
}

/// The log faults of one incarnation.
pub struct LogFaults {
    pub delay_rate: f64,
    pub redelivery_rate: f64,
    pub bug: Option<InjectedBug>,
    rng: Mutex<StdRng>,
}

impl LogFaults {
    pub fn new(rates: &FaultRates, bug: Option<InjectedBug>, seed: u64) -> Self {
        Self {
            delay_rate: rates.log_delay,
            redelivery_rate: rates.redelivery,
            bug,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    fn draw(&self) -> f64 {
        self.rng.lock().random::<f64>()
    }
}

/// The log as one node incarnation sees it.
#[derive(Clone)]
pub struct NodeLog {
    inner: Arc<dyn Log>,
    node: Arc<str>,
    life: Arc<Life>,
    faults: Arc<LogFaults>,
    history: History,
}

impl NodeLog {
    pub fn new(
        inner: Arc<dyn Log>,
        node: &str,
        life: Arc<Life>,
        faults: LogFaults,
        history: History,
    ) -> Self {
        Self {
            inner,
            node: Arc::from(node),
            life,
            faults: Arc::new(faults),
            history,
        }
    }
}

#[async_trait]
impl Log for NodeLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        self.life.check().await;
        self.inner.ensure_topic(spec).await
    }

    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        self.life.check().await;
        self.inner.partitions(topic).await
    }

    async fn end_offset(&self, partition: &TopicPartition) -> Result<Offset, LogError> {
        self.life.check().await;
        self.inner.end_offset(partition).await
    }

    fn producer(&self) -> Result<Box<dyn Producer>, LogError> {
        Ok(Box::new(NodeProducer {
            inner: self.inner.producer()?,
            life: self.life.clone(),
        }))
    }

    fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, LogError> {
        let grouped = config.group.is_some();
        let name = config
            .group
            .clone()
            .unwrap_or_else(|| config.client_id.clone());
        Ok(Box::new(NodeConsumer {
            inner: self.inner.consumer(config)?,
            log: self.clone(),
            name,
            grouped,
        }))
    }

    fn describe(&self) -> String {
        format!("{} (as node {} sees it)", self.inner.describe(), self.node)
    }

    async fn evict_static_member(&self, instance_id: &str) -> Result<Vec<String>, LogError> {
        self.life.check().await;
        self.inner.evict_static_member(instance_id).await
    }
}

struct NodeProducer {
    inner: Box<dyn Producer>,
    life: Arc<Life>,
}

#[async_trait]
impl Producer for NodeProducer {
    async fn send(
        &self,
        records: Vec<ProducerRecord>,
    ) -> Result<Vec<(TopicPartition, Offset)>, LogError> {
        self.life.check().await;
        self.inner.send(records).await
    }
}

struct NodeConsumer {
    inner: Box<dyn Consumer>,
    log: NodeLog,
    /// The group (or the client, for readers without one): names it in the history.
    name: String,
    grouped: bool,
}

/// The published aggregate topics: commits of these are written to the history, so a
/// trace shows when each aggregate came out and from which node.
const TRACED_TOPICS: [&str; 4] = ["images_site", "images_well", "images_plate", "experiments"];

impl NodeConsumer {
    /// The aggregates a batch brings out, as history lines.
    fn traced_outputs(&self, batch: &CommitBatch) -> Vec<String> {
        batch
            .outputs
            .iter()
            .filter(|r| TRACED_TOPICS.contains(&&*r.topic))
            .map(|record| {
                let key = record
                    .key
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                format!("{} commits {} {key}", self.log.node, record.topic)
            })
            .collect()
    }

    fn note(&self, lines: Vec<String>) {
        for line in lines {
            self.log.history.record(EventKind::Data, line);
        }
    }
}

#[async_trait(?Send)]
impl Consumer for NodeConsumer {
    async fn poll(
        &mut self,
        listener: &mut dyn RebalanceListener,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<LogRecord>, LogError> {
        let life = self.log.life.clone();
        life.check().await;
        let faults = &self.log.faults;
        if self.grouped && faults.delay_rate > 0.0 && faults.draw() < faults.delay_rate {
            let delay = FaultRates::MAX_LOG_DELAY.mul_f64(faults.draw());
            tokio::time::sleep(delay).await;
            life.check().await;
        }
        // A node killed while it waits stops there: its consumer takes no further step
        // of the group protocol (a zombie member rejoining under the node's static id
        // would fence its successor, and be fenced back, for ever) and never sees what
        // the poll brought.
        tokio::select! {
            biased;
            _ = life.death() => std::future::pending().await,
            records = self.inner.poll(listener, max_records, max_wait) => records,
        }
    }

    async fn commit(&mut self, batch: CommitBatch) -> Result<(), LogError> {
        let life = self.log.life.clone();
        life.check().await;
        let faults = self.log.faults.clone();
        if faults.redelivery_rate > 0.0 && faults.draw() < faults.redelivery_rate {
            self.log.history.record(
                EventKind::Fault,
                format!(
                    "{} {}: the log refuses a commit of {} records (the input will be read again)",
                    self.log.node,
                    self.name,
                    batch.outputs.len()
                ),
            );
            // Half of them as a rebalance that aborts the commit (the stage rewinds its
            // shards in place), half as a refusal (the stage fails and restarts).
            return Err(if faults.draw() < 0.5 {
                LogError::CommitAborted("simulated: the group moved on mid-commit".into())
            } else {
                LogError::Other("simulated: the log refused the commit".into())
            });
        }
        match faults.bug {
            Some(InjectedBug::CommitInputBeforeState) if !batch.outputs.is_empty() => {
                // The bug: offsets first, outputs (and changelog) a moment later.
                let CommitBatch { outputs, offsets } = batch;
                self.inner
                    .commit(CommitBatch {
                        outputs: Vec::new(),
                        offsets,
                    })
                    .await?;
                let producer = self.log.inner.producer()?;
                let late = CommitBatch {
                    outputs,
                    offsets: Vec::new(),
                };
                self.note(self.traced_outputs(&late));
                actix_rt::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    if !life.is_dead() {
                        let _ = producer.send(late.outputs).await;
                    }
                });
                Ok(())
            }
            _ => {
                let lines = self.traced_outputs(&batch);
                self.inner.commit(batch).await?;
                self.note(lines);
                Ok(())
            }
        }
    }

    fn seek(&mut self, partition: &TopicPartition, offset: Offset) -> Result<(), LogError> {
        self.inner.seek(partition, offset)
    }

    async fn committed(&self, partition: &TopicPartition) -> Result<Option<Offset>, LogError> {
        self.log.life.check().await;
        self.inner.committed(partition).await
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.inner.assignment()
    }

    fn caught_up(&self, partition: &TopicPartition) -> bool {
        self.inner.caught_up(partition)
    }

    fn waker(&self) -> Arc<Notify> {
        self.inner.waker()
    }

    async fn close(&mut self, listener: &mut dyn RebalanceListener) -> Result<(), LogError> {
        self.log.life.check().await;
        self.inner.close(listener).await
    }
}
