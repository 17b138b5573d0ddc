//! A queue shard: the tasks of one partition of the task topic, served from memory and
//! kept on the log.
//!
//! It restores its partition before it serves (the partition is the changelog: one
//! record per task change, compacted). An API call that changes a task is applied in
//! memory, and its answer waits for the stage's next commit: the answer goes out only once
//! the change is durable, and the commit is refused if this node lost the partition
//! meanwhile (a zombie cannot write). Lease expiries and halts run on every stage cycle.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use uuid::Uuid;
use wellspring_log::{Clock, Log, LogRecord, Offset, ProducerRecord, TopicPartition};
use wellspring_protocol::envelope::headers;
use wellspring_protocol::rerun::RerunScope;
use wellspring_protocol::taskstore::{
    DagTaskOrigin, ExtendClaim, GroupStats, NewTask, Report, TaskState, TaskStatus, TaskView,
};
use wellspring_protocol::{DeadLetter, Envelope, MessageId, Value, wire};

use super::groups::GroupTable;
use super::table::{Change, TaskError, TaskTable};
use crate::metrics::Counter;
use crate::routing::NewerRecord;
use crate::stage::restore::restore;
use crate::stage::{
    Ack, CommitError, ShardFactory, ShardFailure, ShardOutput, ShardRequest, StartError,
};
use crate::telemetry;
use opentelemetry::trace::SpanKind;

/// What the API asks of a queue shard.
#[derive(Debug, Message)]
#[rtype(result = "Result<QueueReply, TaskError>")]
pub enum QueueRequest {
    /// `seq` orders the task in its group's queue.
    Submit {
        id: Uuid,
        task: NewTask,
        dag: Option<Box<DagTaskOrigin>>,
        seq: u64,
    },
    /// Where this shard's first claimable task of the groups stands.
    Head {
        groups: Vec<String>,
    },
    Claim {
        groups: Vec<String>,
        client_id: String,
        duration_ms: u64,
    },
    Extend(ExtendClaim),
    Report {
        report: Report,
        success: bool,
    },
    Get(Uuid),
    List {
        group: String,
        status: Option<TaskStatus>,
        limit: usize,
    },
    Stats {
        group: String,
    },
}

#[derive(Debug)]
pub enum Answer {
    /// A task; `changed` is false when a repeated call found it as it was.
    Task {
        task: TaskView,
        changed: bool,
    },
    NoTask,
    /// `(not before, seq)` of the first claimable task, if any.
    Head(Option<(i64, u64)>),
    Tasks(Vec<TaskView>),
    Stats(GroupStats),
}

#[derive(Debug)]
pub struct QueueReply {
    pub answer: Answer,
    /// Resolves once the change the answer reports is durable (`None`: nothing changed).
    pub durable: Option<oneshot::Receiver<Result<(), CommitError>>>,
}

/// Counters of the task store, one set for all groups.
#[derive(Clone, Default)]
pub struct QueueCounters {
    pub submitted: Counter,
    pub claimed: Counter,
    pub succeeded: Counter,
    pub failed: Counter,
    pub dead_lettered: Counter,
    pub expired: Counter,
}

/// Queue shards this node serves, by partition: where the API sends a call.
#[derive(Clone, Default)]
pub struct LocalShards(
    Arc<parking_lot::RwLock<std::collections::BTreeMap<u32, Recipient<QueueRequest>>>>,
);

impl LocalShards {
    pub fn get(&self, partition: u32) -> Option<Recipient<QueueRequest>> {
        self.0.read().get(&partition).cloned()
    }

    pub fn all(&self) -> Vec<(u32, Recipient<QueueRequest>)> {
        self.0.read().iter().map(|(p, r)| (*p, r.clone())).collect()
    }

    fn insert(&self, partition: u32, shard: Recipient<QueueRequest>) {
        self.0.write().insert(partition, shard);
    }

    /// Forgets `shard` as the server of `partition`, unless another shard took over:
    /// a restarted shard registers before its predecessor has stopped, and the
    /// predecessor must not unregister it (found by the simulation harness, seed 81).
    fn remove(&self, partition: u32, shard: &Recipient<QueueRequest>) {
        let mut shards = self.0.write();
        if shards.get(&partition) == Some(shard) {
            shards.remove(&partition);
        }
    }
}

/// Starts queue shards: restores the partition, then serves it.
pub struct QueueShardFactory {
    pub log: Arc<dyn Log>,
    pub groups: GroupTable,
    pub clock: Arc<dyn Clock>,
    pub shards: LocalShards,
    pub counters: QueueCounters,
    pub retention: Duration,
}

#[async_trait(?Send)]
impl ShardFactory for QueueShardFactory {
    async fn start(
        &self,
        partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, StartError> {
        let started = Instant::now();
        let mut table = TaskTable::default();
        let mut newer = None;
        let restored = restore(
            self.log.as_ref(),
            partition,
            format!("restore-{partition}"),
            |record| {
                if let Some(found) = apply(&mut table, record) {
                    newer.get_or_insert(found);
                }
            },
        )
        .await?;
        if let Some(newer) = newer {
            return Err(StartError::Newer(newer));
        }
        let end = restored.end;
        if end > 0 {
            tracing::info!(shard = %partition, tasks = table.len(), took = ?started.elapsed(), "task shard restored");
        }
        let shard = QueueShard {
            partition: partition.clone(),
            table,
            groups: self.groups.clone(),
            clock: self.clock.clone(),
            waker,
            pending: Vec::new(),
            acks: Vec::new(),
            seen_to: end,
            shards: self.shards.clone(),
            counters: self.counters.clone(),
            retention_ms: self.retention.as_millis() as i64,
        }
        .start();
        self.shards
            .insert(partition.partition, shard.clone().recipient());
        Ok(shard.recipient())
    }
}

/// Applies one record of the task topic: a task's state, or a tombstone. A state a
/// newer node wrote is not applied but answered: skipping it would lose the task.
fn apply(table: &mut TaskTable, record: &LogRecord) -> Option<NewerRecord> {
    match (&record.key, &record.value) {
        (_, Some(value)) => match wire::decode::<TaskState>(value) {
            Ok(state) => table.apply(state),
            Err(e) => {
                if let Some(newer) = NewerRecord::of(record, &e) {
                    return Some(newer);
                }
                tracing::warn!(
                    partition = record.partition,
                    offset = record.offset,
                    "skipping an unreadable task record: {e}"
                )
            }
        },
        (Some(key), None) => {
            if let Ok(id) = Uuid::try_parse_ascii(key) {
                table.remove(&id);
            }
        }
        (None, None) => {}
    }
    None
}

pub struct QueueShard {
    partition: TopicPartition,
    table: TaskTable,
    groups: GroupTable,
    clock: Arc<dyn Clock>,
    /// Ends the stage's poll wait so a write is committed at once.
    waker: Arc<Notify>,
    /// Changes applied in memory, to commit with the next stage cycle.
    pending: Vec<ProducerRecord>,
    acks: Vec<Ack>,
    /// The next offset of our partition we have not read back: commits name it, which
    /// is what fences a node that lost the partition.
    seen_to: Offset,
    shards: LocalShards,
    counters: QueueCounters,
    retention_ms: i64,
}

impl QueueShard {
    /// Queues the records of `changes` and returns a receiver told when they are durable.
    fn write(
        &mut self,
        changes: Vec<Change>,
    ) -> Option<oneshot::Receiver<Result<(), CommitError>>> {
        if changes.is_empty() {
            return None;
        }
        for change in changes {
            self.record(change);
        }
        let (tx, rx) = oneshot::channel();
        self.acks.push(Ack::new(move |outcome| {
            let _ = tx.send(outcome);
        }));
        self.waker.notify_one();
        Some(rx)
    }

    fn record(&mut self, change: Change) {
        match change {
            Change::Put(state) => {
                let state = *state;
                if let Some(dag) = &state.dag {
                    self.dag_output(&state, dag);
                }
                self.pending.push(ProducerRecord {
                    topic: self.partition.topic.clone(),
                    partition: Some(self.partition.partition),
                    key: Some(Bytes::from(state.id.to_string())),
                    value: Some(Bytes::from(wire::encode(&state))),
                    headers: Vec::new(),
                });
            }
            Change::Delete(id) => self.pending.push(ProducerRecord {
                topic: self.partition.topic.clone(),
                partition: Some(self.partition.partition),
                key: Some(Bytes::from(id.to_string())),
                value: None,
                headers: Vec::new(),
            }),
        }
    }

    /// A DAG's queue task reached its end: its output (or dead letter) goes to the DAG, in
    /// the same commit as the state change.
    fn dag_output(&mut self, state: &TaskState, dag: &DagTaskOrigin) {
        match state.status {
            TaskStatus::Succeeded => {
                let rerun = RerunScope::of_labels(&state.labels);
                let generation = rerun.as_ref().map_or(0, |r| r.generation);
                let mut envelope = Envelope::new(
                    MessageId::derive(&dag.dag, &dag.node, &dag.key).in_generation(generation),
                    dag.key.clone(),
                    state.output.clone().unwrap_or(Value::Null),
                );
                if let Some(rerun) = &rerun {
                    rerun.mark(&mut envelope);
                }
                envelope.trace = dag.trace.clone();
                // The worker's run, as the task store saw it end: the output follows it.
                if telemetry::enabled() {
                    let mut span = telemetry::start(
                        "wellspring.task",
                        SpanKind::Consumer,
                        telemetry::About {
                            actor: "task-store shard",
                            dag: &dag.dag,
                            node: &dag.node,
                            key: &dag.key,
                            attempt: state.attempts,
                        },
                        dag.trace.as_ref(),
                        Vec::new(),
                    );
                    span.set("wellspring.task.id", state.id.to_string());
                    span.set("wellspring.task.group", state.group.clone());
                    if let Some(elapsed) = state.elapsed_time {
                        span.set("wellspring.task.elapsed_time", elapsed as i64);
                    }
                    if let Some(trace) = span.trace() {
                        envelope.trace = Some(trace);
                    }
                }
                envelope.origin = dag.origin.clone();
                self.pending.push(ProducerRecord {
                    topic: Arc::from(dag.output_topic.as_str()),
                    partition: None,
                    key: Some(Bytes::from(dag.key.clone())),
                    value: Some(Bytes::from(wire::encode(&envelope))),
                    headers: vec![(headers::ID.to_owned(), Bytes::from(envelope.id.to_string()))],
                });
            }
            TaskStatus::DeadLettered => {
                let letter = DeadLetter {
                    dag: dag.dag.clone(),
                    node: dag.node.clone(),
                    reason: state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "the task failed".into()),
                    origin: dag.origin.clone(),
                    key: Some(dag.key.clone()),
                    record: dag.input.clone(),
                    attempts: state.attempts,
                };
                self.pending.push(ProducerRecord {
                    topic: Arc::from(dag.dead_letter_topic.as_str()),
                    partition: None,
                    key: Some(Bytes::from(dag.key.clone())),
                    value: Some(Bytes::from(letter.to_value().to_json_string())),
                    headers: vec![(
                        headers::ID.to_owned(),
                        Bytes::from(
                            MessageId::derive(
                                &dag.dag,
                                &dag.node,
                                &format!("dead-letter/{}", dag.key),
                            )
                            .to_string(),
                        ),
                    )],
                });
            }
            TaskStatus::Available | TaskStatus::Leased => {}
        }
    }

    /// Timers, then everything pending, for the stage to commit.
    fn drain(&mut self) -> ShardOutput {
        let now = self.clock.now_ms();
        let groups = self.groups.clone();
        let changes = self
            .table
            .tick(&|name| groups.get(name), now, self.retention_ms);
        for change in &changes {
            if let Change::Put(state) = change {
                self.counters.expired.inc();
                if state.status == TaskStatus::DeadLettered {
                    self.counters.dead_lettered.inc();
                }
            }
        }
        for change in changes {
            self.record(change);
        }
        let outputs = std::mem::take(&mut self.pending);
        ShardOutput {
            // Naming the partition in every write is what makes the log refuse it if the
            // partition moved.
            commit_to: (!outputs.is_empty()).then_some(self.seen_to),
            outputs,
            acks: std::mem::take(&mut self.acks),
        }
    }

    /// A receiver told when the writes now pending are durable (`None`: none pending).
    fn pending_durability(&mut self) -> Option<oneshot::Receiver<Result<(), CommitError>>> {
        if self.pending.is_empty() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.acks.push(Ack::new(move |outcome| {
            let _ = tx.send(outcome);
        }));
        Some(rx)
    }

    fn handle_request(&mut self, request: QueueRequest) -> Result<QueueReply, TaskError> {
        // A repeated submission or report changes nothing, but the state it is answered
        // from may not be written yet: it is answered once that is durable, or the caller
        // could act on a task the log never got (found by the simulation harness: a
        // plate's input committed for a submission whose write the log then refused).
        let repeat = matches!(
            request,
            QueueRequest::Submit { .. } | QueueRequest::Report { .. } | QueueRequest::Extend(_)
        );
        let now = self.clock.now_ms();
        let (answer, changes) = match request {
            QueueRequest::Submit { id, task, dag, seq } => {
                let (task, created) = self.table.submit(id, task, dag.map(|d| *d), seq, now)?;
                if created {
                    self.counters.submitted.inc();
                }
                let changes = if created {
                    vec![Change::Put(Box::new(task.clone()))]
                } else {
                    Vec::new()
                };
                (
                    Answer::Task {
                        task: task.view(),
                        changed: created,
                    },
                    changes,
                )
            }
            QueueRequest::Claim {
                groups,
                client_id,
                duration_ms,
            } => match self.table.claim(&groups, &client_id, duration_ms, now) {
                Some(task) => {
                    self.counters.claimed.inc();
                    (
                        Answer::Task {
                            task: task.view(),
                            changed: true,
                        },
                        vec![Change::Put(Box::new(task))],
                    )
                }
                None => (Answer::NoTask, Vec::new()),
            },
            QueueRequest::Head { groups } => {
                (Answer::Head(self.table.head(&groups, now)), Vec::new())
            }
            QueueRequest::Extend(extend) => {
                let task = self.table.extend(
                    &extend.id,
                    &extend.client_id,
                    extend.version,
                    extend.duration.0,
                    now,
                )?;
                (
                    Answer::Task {
                        task: task.view(),
                        changed: true,
                    },
                    vec![Change::Put(Box::new(task))],
                )
            }
            QueueRequest::Report { report, success } => {
                let (task, changed) = if success {
                    self.table.succeed(&report, now)?
                } else {
                    let group = self
                        .table
                        .get(&report.id)
                        .map(|t| t.group.clone())
                        .ok_or(TaskError::NotFound(report.id))?;
                    let settings = self
                        .groups
                        .get(&group)
                        .ok_or(TaskError::UnknownGroup(group))?;
                    self.table.fail(&report, &settings, now)?
                };
                if changed {
                    match task.status {
                        TaskStatus::Succeeded => self.counters.succeeded.inc(),
                        TaskStatus::DeadLettered => {
                            self.counters.failed.inc();
                            self.counters.dead_lettered.inc();
                        }
                        _ => self.counters.failed.inc(),
                    }
                }
                let changes = if changed {
                    vec![Change::Put(Box::new(task.clone()))]
                } else {
                    Vec::new()
                };
                (
                    Answer::Task {
                        task: task.view(),
                        changed,
                    },
                    changes,
                )
            }
            QueueRequest::Get(id) => {
                let task = self.table.get(&id).ok_or(TaskError::NotFound(id))?;
                (
                    Answer::Task {
                        task: task.view(),
                        changed: false,
                    },
                    Vec::new(),
                )
            }
            QueueRequest::List {
                group,
                status,
                limit,
            } => (
                Answer::Tasks(self.table.list(&group, status, limit)),
                Vec::new(),
            ),
            QueueRequest::Stats { group } => {
                (Answer::Stats(self.table.stats(&group, now)), Vec::new())
            }
        };
        let durable = if changes.is_empty() && repeat {
            self.pending_durability()
        } else {
            self.write(changes)
        };
        Ok(QueueReply { answer, durable })
    }
}

impl Actor for QueueShard {
    type Context = Context<Self>;

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.shards
            .remove(self.partition.partition, &ctx.address().recipient());
        for ack in self.acks.drain(..) {
            ack.send(Err(CommitError::ShardStopped));
        }
    }
}

impl Handler<QueueRequest> for QueueShard {
    type Result = Result<QueueReply, TaskError>;

    fn handle(&mut self, request: QueueRequest, _: &mut Self::Context) -> Self::Result {
        self.handle_request(request)
    }
}

impl Handler<ShardRequest> for QueueShard {
    type Result = Result<ShardOutput, ShardFailure>;

    fn handle(&mut self, request: ShardRequest, ctx: &mut Self::Context) -> Self::Result {
        match request {
            ShardRequest::Process(records) => {
                // Our own writes, read back (or, after a takeover, the last writes of the
                // previous owner): apply what is newer.
                for record in &records {
                    invariant!(
                        record.partition == self.partition.partition
                            && record.topic == self.partition.topic,
                        "task-store shard of {} was handed record {} of {}[{}]",
                        self.partition,
                        record.offset,
                        record.topic,
                        record.partition
                    );
                    if let Some(newer) = apply(&mut self.table, record) {
                        tracing::error!(shard = %self.partition, "{newer}");
                        return Err(ShardFailure {
                            offset: None,
                            reason: newer.to_string(),
                            newer: Some(newer),
                        });
                    }
                    self.seen_to = self.seen_to.max(record.offset + 1);
                }
                let mut output = self.drain();
                output.commit_to = Some(self.seen_to);
                Ok(output)
            }
            ShardRequest::Drain => Ok(self.drain()),
            ShardRequest::Revoke | ShardRequest::Stop => {
                // Unwritten changes die with this shard; their callers hear to retry, and
                // the next owner restores from what is on the log.
                self.pending.clear();
                ctx.stop();
                Ok(ShardOutput::default())
            }
        }
    }
}
