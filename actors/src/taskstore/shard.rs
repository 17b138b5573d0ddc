//! A queue shard: the tasks of one partition of the task topic, served from memory and
//! kept on the log.
//!
//! It restores its partition before it serves (the partition is the changelog: one
//! record per task change, compacted). An API call that changes a task is applied in
//! memory, and its answer waits for the stage's next commit: the answer goes out only once
//! the change is durable, and the commit is refused if this node lost the partition
//! meanwhile (a zombie cannot write). Lease expiries and halts run on every stage cycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How often a shard commits the offsets of its own records read back when it writes
/// nothing else (ms).
const READ_BACK_COMMIT_MS: i64 = 100;

/// What the API asks of a queue shard.
#[derive(Debug)]
pub enum QueueRequest {
    /// `seq` orders the task in its group's queue.
    Submit {
        id: Uuid,
        task: NewTask,
        dag: Option<Box<DagTaskOrigin>>,
        seq: u64,
    },
    /// Leases up to `limit` tasks, in queue order (one task: `limit: 1`).
    Claim {
        groups: Vec<String>,
        client_id: String,
        duration_ms: u64,
        limit: usize,
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
    /// Several calls served in turn and answered together ([`Answer::Many`]) once all
    /// their changes are durable: one write and one wait for the lot (the batch calls).
    Many(Vec<QueueRequest>),
}

#[derive(Debug)]
pub enum Answer {
    /// A task; `changed` is false when a repeated call found it as it was.
    Task {
        task: TaskView,
        changed: bool,
    },
    Tasks(Vec<TaskView>),
    Stats(GroupStats),
    /// To [`QueueRequest::Many`]: each call's answer, in order.
    Many(Vec<Result<Answer, TaskError>>),
}

/// A call to a shard and where its answer goes. The shard answers once the change the
/// answer reports is durable, straight from its commit: one hand-over between the
/// shards' thread and the API's per call (an actix reply, then a second wait for the
/// commit, was two).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct QueueCall {
    pub request: QueueRequest,
    pub reply: oneshot::Sender<Result<Answer, TaskError>>,
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

/// Where the front of each group's queue stands in one shard, `(not before, seq)`:
/// the shard publishes it after every change, so that a claim picks the shard with the
/// oldest claimable task without asking each shard in turn (it used to: eight round trips
/// to the shards' thread before every claim). A front read just before a change is at
/// worst a claim sent to a shard that has nothing left, which then tries the next.
#[derive(Clone, Default)]
pub struct QueueHeads(Arc<parking_lot::RwLock<rustc_hash::FxHashMap<String, (i64, u64)>>>);

impl QueueHeads {
    /// The first claimable task of `groups` at `now_ms`, as [`TaskTable::head`] answers.
    pub fn head(&self, groups: &[String], now_ms: i64) -> Option<(i64, u64)> {
        let fronts = self.0.read();
        groups
            .iter()
            .filter_map(|g| fronts.get(g))
            .filter(|(not_before, _)| *not_before <= now_ms)
            .min()
            .copied()
    }

    /// Publishes the table's fronts.
    pub fn publish(&self, table: &TaskTable) {
        let mut fronts = self.0.write();
        for (group, front) in table.fronts() {
            match (front, fronts.get_mut(group)) {
                (Some(front), Some(published)) => *published = front,
                (Some(front), None) => {
                    fronts.insert(group.to_owned(), front);
                }
                (None, _) => {
                    fronts.remove(group);
                }
            }
        }
    }
}

/// A shard this node serves: where calls go, and its queues' fronts.
#[derive(Clone)]
pub struct ServedShard {
    pub shard: Recipient<QueueCall>,
    pub heads: QueueHeads,
}

/// Queue shards this node serves, by partition: where the API sends a call.
#[derive(Clone, Default)]
pub struct LocalShards {
    shards: Arc<parking_lot::RwLock<std::collections::BTreeMap<u32, ServedShard>>>,
    /// Told when the served partitions change (the directory's reader, which announces
    /// them): no polling for a change.
    on_change: Arc<parking_lot::Mutex<Option<Arc<Notify>>>>,
}

impl LocalShards {
    pub fn get(&self, partition: u32) -> Option<Recipient<QueueCall>> {
        self.shards.read().get(&partition).map(|s| s.shard.clone())
    }

    pub fn all(&self) -> Vec<(u32, Recipient<QueueCall>)> {
        self.shards
            .read()
            .iter()
            .map(|(p, s)| (*p, s.shard.clone()))
            .collect()
    }

    /// The partitions served.
    pub fn partitions(&self) -> std::collections::BTreeSet<u32> {
        self.shards.read().keys().copied().collect()
    }

    /// Every served shard with its fronts.
    pub fn served(&self) -> Vec<ServedShard> {
        self.shards.read().values().cloned().collect()
    }

    /// Notifies `waker` whenever the served partitions change (replacing an earlier one).
    pub fn notify_changes(&self, waker: Arc<Notify>) {
        *self.on_change.lock() = Some(waker);
    }

    fn changed(&self) {
        if let Some(waker) = &*self.on_change.lock() {
            waker.notify_one();
        }
    }

    fn insert(&self, partition: u32, shard: ServedShard) {
        let added = self.shards.write().insert(partition, shard).is_none();
        if added {
            self.changed();
        }
    }

    /// Forgets `shard` as the server of `partition`, unless another shard took over:
    /// a restarted shard registers before its predecessor has stopped, and the
    /// predecessor must not unregister it (found by the simulation harness, seed 81).
    fn remove(&self, partition: u32, shard: &Recipient<QueueCall>) {
        let removed = {
            let mut shards = self.shards.write();
            let ours = shards.get(&partition).map(|s| &s.shard) == Some(shard);
            ours && shards.remove(&partition).is_some()
        };
        if removed {
            self.changed();
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
        let heads = QueueHeads::default();
        heads.publish(&table);
        let shard = QueueShard {
            partition: partition.clone(),
            heads: heads.clone(),
            table,
            groups: self.groups.clone(),
            clock: self.clock.clone(),
            waker,
            pending: Vec::new(),
            acks: Vec::new(),
            seen_to: end,
            // Unknown: what the restore read may be past the group's committed offset.
            confirmed_to: Arc::new(AtomicU64::new(0)),
            committed_at_ms: i64::MIN,
            shards: self.shards.clone(),
            counters: self.counters.clone(),
            retention_ms: self.retention.as_millis() as i64,
        }
        .start();
        self.shards.insert(
            partition.partition,
            ServedShard {
                shard: shard.clone().recipient(),
                heads,
            },
        );
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
    /// The fronts of `table`'s queues, published after every change.
    heads: QueueHeads,
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
    /// The `seen_to` the log last confirmed committing (set by the commit's `Ack`: a
    /// refused commit leaves it), and when this shard last asked for a commit.
    confirmed_to: Arc<AtomicU64>,
    committed_at_ms: i64,
    shards: LocalShards,
    counters: QueueCounters,
    retention_ms: i64,
}

impl QueueShard {
    /// Queues the records of `changes` for the next commit.
    fn write(&mut self, changes: Vec<Change>) {
        for change in changes {
            self.record(change);
        }
        self.heads.publish(&self.table);
        self.waker.notify_one();
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
        let settings = |name: &str| groups.get(name);
        let shortest_run_ms = groups.shortest_max_run_time_ms();
        let changes = self
            .table
            .tick(&settings, shortest_run_ms, now, self.retention_ms);
        for change in &changes {
            if let Change::Put(state) = change {
                self.counters.expired.inc();
                if state.status == TaskStatus::DeadLettered {
                    self.counters.dead_lettered.inc();
                }
            }
        }
        if !changes.is_empty() {
            for change in changes {
                self.record(change);
            }
            self.heads.publish(&self.table);
        }
        let outputs = std::mem::take(&mut self.pending);
        let commit_to = self.commit_to(!outputs.is_empty());
        let due = self
            .table
            .due_ms(&settings, shortest_run_ms, now, self.retention_ms);
        ShardOutput {
            commit_to,
            outputs,
            acks: std::mem::take(&mut self.acks),
            // The stage sleeps until a lease or a read-back commit is due (calls wake it).
            wake_in: [due, self.read_back_due_ms()]
                .into_iter()
                .flatten()
                .min()
                .map(|at| {
                    Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                }),
        }
    }

    /// When the records read back since the last confirmed commit are to be committed.
    fn read_back_due_ms(&self) -> Option<i64> {
        (self.seen_to > self.confirmed_to.load(Ordering::Relaxed))
            .then(|| self.committed_at_ms.saturating_add(READ_BACK_COMMIT_MS))
    }

    /// The offset to commit with this cycle's output. Always with writes: naming the
    /// partition in every write is what makes the log refuse it if the partition moved.
    /// Our own records read back, alone, at most every [`READ_BACK_COMMIT_MS`]: their
    /// offsets fence nothing, and committing them at once was a stage cycle after every
    /// write, which each next call waited behind (submissions took 455 µs, 405 without).
    fn commit_to(&mut self, writes: bool) -> Option<Offset> {
        let now = self.clock.now_ms();
        let read_back = self.read_back_due_ms().is_some_and(|due| now >= due);
        if !(writes || read_back) {
            return None;
        }
        self.committed_at_ms = now;
        let (offset, confirmed) = (self.seen_to, self.confirmed_to.clone());
        self.acks.push(Ack::new(move |outcome| {
            if outcome.is_ok() {
                confirmed.fetch_max(offset, Ordering::Relaxed);
            }
        }));
        Some(offset)
    }

    /// Serves a call: its answer, and whether it must wait for the next commit (it
    /// changed something, or it repeats a call whose change is not written yet).
    fn handle_request(&mut self, request: QueueRequest) -> Result<(Answer, bool), TaskError> {
        let now = self.clock.now_ms();
        let mut changes = Vec::new();
        let mut repeat = false;
        let answer = match request {
            QueueRequest::Many(requests) => Answer::Many(
                requests
                    .into_iter()
                    .map(|request| self.serve(request, now, &mut changes, &mut repeat))
                    .collect(),
            ),
            request => self.serve(request, now, &mut changes, &mut repeat)?,
        };
        let wait = if changes.is_empty() {
            repeat && !self.pending.is_empty()
        } else {
            self.write(changes);
            true
        };
        Ok((answer, wait))
    }

    /// Serves one call: its answer, with the changes to make durable added to `changes`.
    /// `repeat` is set by a call whose answer must wait for what is pending even when it
    /// changes nothing: a repeated submission or report changes nothing, but the state it
    /// is answered from may not be written yet, or the caller could act on a task the log
    /// never got (found by the simulation harness: a plate's input committed for a
    /// submission whose write the log then refused).
    fn serve(
        &mut self,
        request: QueueRequest,
        now: i64,
        changes: &mut Vec<Change>,
        repeat: &mut bool,
    ) -> Result<Answer, TaskError> {
        *repeat |= matches!(
            request,
            QueueRequest::Submit { .. } | QueueRequest::Report { .. } | QueueRequest::Extend(_)
        );
        let (answer, changed) = match request {
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
                limit,
            } => {
                let mut leased = Vec::new();
                while leased.len() < limit
                    && let Some(task) = self.table.claim(&groups, &client_id, duration_ms, now)
                {
                    self.counters.claimed.inc();
                    leased.push(task);
                }
                let views = leased.iter().map(TaskState::view).collect();
                (
                    Answer::Tasks(views),
                    leased
                        .into_iter()
                        .map(|t| Change::Put(Box::new(t)))
                        .collect(),
                )
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
            QueueRequest::Many(_) => {
                return Err(TaskError::Invalid("a batch cannot hold a batch".into()));
            }
        };
        changes.extend(changed);
        Ok(answer)
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

impl Handler<QueueCall> for QueueShard {
    type Result = ();

    fn handle(&mut self, call: QueueCall, _: &mut Self::Context) {
        let QueueCall { request, reply } = call;
        match self.handle_request(request) {
            Ok((answer, true)) => self.acks.push(Ack::new(move |outcome| {
                let answer = outcome
                    .map(|()| answer)
                    .map_err(|e| TaskError::Unavailable(e.to_string()));
                let _ = reply.send(answer);
            })),
            done => {
                let _ = reply.send(done.map(|(answer, _)| answer));
            }
        }
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
                if !records.is_empty() {
                    self.heads.publish(&self.table);
                }
                Ok(self.drain())
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
