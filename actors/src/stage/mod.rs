//! Stages: one per sharded DAG node (source, grouping, task) on each Wellspring node.
//!
//! A [`StageActor`] is the supervisor of its DAG node on this Wellspring node. It is a
//! member of the DAG node's consumer group and owns the group's consumer. The group gives
//! it partitions; each partition is a shard, served by a shard actor. One cycle:
//!
//! 1. poll the consumer; rebalances call the [`ShardSet`] from inside the poll, which
//!    restores a new shard's state before it processes, and flushes and commits a
//!    revoked shard before it goes;
//! 2. hand each shard its slice of the records (one message per shard per cycle, not per
//!    record) and collect what each produced: outputs, changelog entries, dead letters,
//!    and how far its partition is done;
//! 3. commit it all in one batch: outputs durable, then offsets (atomically where the
//!    log supports it).
//!
//! A shard that fails (a panic in a user function, a lost actor) is restarted after a
//! back-off: its state is restored from the changelog and its partition rewound to the
//! last commit. The record it failed on is remembered as poison and goes to the
//! dead-letter topic on replay, so a bad record never stalls its partition. More
//! failures than the budget allows escalate: the stage fails and its DAG supervisor
//! restarts it. What cannot succeed however often it is retried (a partition that does
//! not exist) is not retried: the stage fails at once as unrecoverable ([`error`]).

pub mod error;
mod generations;
mod grouping;
mod relay;
pub(crate) mod restore;
mod set;
mod shard;
mod source;
mod standby;
mod task;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;
use wellspring_log::{
    CommitBatch, Consumer, ConsumerConfig, LogError, LogRecord, NoListener, Offset, ProducerRecord,
    TopicPartition,
};

use crate::routing::DeadLetterWriter;
use crate::supervision::{ChildLink, Exit, RestartPolicy, StopChild};
use set::{ShardSet, ShardState, Slot};

pub use error::{CommitError, StageError, StartError};
pub use grouping::GroupingFactory;
pub use relay::RelayFactory;
pub use shard::{Halt, RecordProcessor, RetryLater, SyncShard};
pub use source::SourceFactory;
pub use standby::{StandbyMetrics, Standbys};
pub use task::TaskFactory;

/// What a shard produced.
#[derive(Debug, Default)]
pub struct ShardOutput {
    pub outputs: Vec<ProducerRecord>,
    /// The partition is done up to here (the next offset to read), when it advanced.
    pub commit_to: Option<Offset>,
    /// Told whether the commit carrying `outputs` succeeded: answers that must not go out
    /// before what they report is durable (the task store's API).
    pub acks: Vec<Ack>,
    /// Ask again within this long even if no record comes: a timer of the shard's is due
    /// then. (Work that finishes on its own wakes the stage through its waker.)
    pub wake_in: Option<Duration>,
}

/// A callback told the outcome of a commit.
pub struct Ack(Box<dyn FnOnce(Result<(), CommitError>) + Send>);

impl Ack {
    pub fn new(f: impl FnOnce(Result<(), CommitError>) + Send + 'static) -> Self {
        Self(Box::new(f))
    }

    pub fn send(self, outcome: Result<(), CommitError>) {
        (self.0)(outcome)
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// Why a shard failed. Either way it restarts (after a back-off, within its budget).
#[derive(Debug, Clone)]
pub struct ShardFailure {
    /// The record it failed on when reading it again cannot help (it panicked): the
    /// record goes to the dead-letter topic on replay. `None`: replay it all (the shard
    /// died, or a record asked to be read again).
    pub offset: Option<Offset>,
    pub reason: String,
    /// It stopped before a record a newer node wrote: no restart helps.
    pub newer: Option<crate::routing::NewerRecord>,
}

/// What a stage asks of a shard.
#[derive(Debug, Message)]
#[rtype(result = "Result<ShardOutput, ShardFailure>")]
pub enum ShardRequest {
    /// Process these records of the shard's partition (in offset order).
    Process(Vec<LogRecord>),
    /// Report what finished since the last request (timers, async work, layouts).
    Drain,
    /// The partition moves away: report what is done, then stop.
    Revoke,
    /// Stop now; nothing will be committed for this shard.
    Stop,
}

/// Starts the shard of one partition (restoring its state first if it has any).
#[async_trait(?Send)]
pub trait ShardFactory {
    async fn start(
        &self,
        partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, StartError>;

    /// This node no longer owns `partition` (revoked, lost, or its stage stopped).
    fn released(&self, _partition: &TopicPartition) {}
}

/// How a stage reads and commits.
#[derive(Debug, Clone)]
pub struct StageSettings {
    pub max_records: usize,
    pub max_wait: Duration,
    pub shard_restart: RestartPolicy,
}

/// The consumer and its shards: what a cycle works on.
struct StageLoop {
    consumer: Box<dyn Consumer>,
    shards: ShardSet,
    /// Reads the owned partitions' end offsets (for the lag metric).
    log: Arc<dyn wellspring_log::Log>,
    ends_read_at: Option<Instant>,
    /// When the first of the shards' timers is due, as they said at the last cycle: the
    /// poll waits no longer than that.
    next_due: Option<Instant>,
}

/// How often a stage reads its partitions' end offsets (one call per owned partition).
const LAG_REFRESH: Duration = Duration::from_secs(2);

impl StageLoop {
    /// Reads the end offset of every owned partition, every [`LAG_REFRESH`].
    async fn refresh_ends(&mut self) {
        if self
            .ends_read_at
            .is_some_and(|at| at.elapsed() < LAG_REFRESH)
        {
            return;
        }
        self.ends_read_at = Some(Instant::now());
        for tp in self.shards.owned.list() {
            if let Ok(end) = self.log.end_offset(&tp).await {
                self.shards.owned.end(&tp, end);
            }
        }
    }

    /// One poll-process-commit cycle.
    async fn cycle(&mut self) -> Result<(), StageError> {
        self.refresh_ends().await;
        let settings = self.shards.settings.clone();
        // No fixed cadence: the poll ends when records come, when a shard's work
        // finishes (its waker), or when a timer or a shard's restart is due.
        let wait = [self.shards.next_restart(), self.next_due]
            .into_iter()
            .flatten()
            .map(|at| at.saturating_duration_since(Instant::now()))
            .fold(settings.max_wait, Duration::min);
        let polling = Instant::now();
        let records = self
            .consumer
            .poll(&mut self.shards, settings.max_records, wait)
            .await
            .map_err(StageError::Poll)?;
        self.shards.owned.polls.observe(polling.elapsed());
        let processing = Instant::now();
        if let Some(why) = self.shards.escalation.take() {
            return Err(why);
        }

        let mut batch = CommitBatch::default();
        let mut acks = Vec::new();
        // Restart shards whose back-off is over: restore, then rewind to the last commit.
        // This cycle's records of a restarted partition were read before the rewind: the
        // new shard reads them again from the commit, in order.
        let restarted = self.shards.due_restarts();
        for tp in &restarted {
            if let Some(ShardState {
                slot: Slot::Down { reason, .. },
                ..
            }) = self.shards.shards.get(tp)
            {
                tracing::info!(stage = %self.shards.name, partition = %tp, after = %reason, "starting shard");
            }
            if self.shards.start_shard(tp).await {
                let committed =
                    self.consumer
                        .committed(tp)
                        .await
                        .map_err(|source| StageError::Committed {
                            partition: tp.clone(),
                            source,
                        })?;
                let from = committed
                    .unwrap_or_else(|| self.shards.shards.get(tp).map_or(0, |s| s.assigned_at));
                if let Err(e) = self.consumer.seek(tp, from) {
                    tracing::warn!(partition = %tp, "could not rewind a restarted shard: {e}");
                }
            }
        }

        let mut by_partition: BTreeMap<TopicPartition, Vec<LogRecord>> = BTreeMap::new();
        for record in records {
            by_partition
                .entry(record.topic_partition())
                .or_default()
                .push(record);
        }
        // What the log says this member owns, to check the stage's view against.
        let assignment = cfg!(debug_assertions).then(|| self.consumer.assignment());
        let partitions: Vec<TopicPartition> = self.shards.shards.keys().cloned().collect();
        // A shard restarted just now is first asked at the next cycle, which comes at
        // once: what its timers want is known only then.
        let mut next_due = (!restarted.is_empty()).then(Instant::now);
        for tp in partitions {
            let mut records = by_partition.remove(&tp).unwrap_or_default();
            if !self.shards.is_running(&tp) || restarted.contains(&tp) {
                // Dropped: the partition is rewound when its shard restarts (or was
                // rewound just now).
                continue;
            }
            if let Some(assignment) = &assignment {
                invariant!(
                    records.is_empty() || assignment.contains(&tp),
                    "stage {}: records of {tp} are handed to its shard, but the consumer is not assigned {tp} (assigned: {assignment:?})",
                    self.shards.name
                );
            }
            let mut poison_outputs = Vec::new();
            let poison_to = self
                .shards
                .take_poison(&tp, &mut records, &mut poison_outputs);
            let request = if records.is_empty() {
                ShardRequest::Drain
            } else {
                ShardRequest::Process(records)
            };
            let Some(output) = self.shards.ask(&tp, request).await else {
                continue;
            };
            if let Some(wake_in) = output.wake_in {
                let due = Instant::now() + wake_in;
                next_due = Some(next_due.map_or(due, |first| first.min(due)));
            }
            batch.outputs.extend(poison_outputs);
            // The first shard's outputs become the batch (no copy of the largest vector).
            if batch.outputs.is_empty() {
                batch.outputs = output.outputs;
            } else {
                batch.outputs.extend(output.outputs);
            }
            acks.extend(output.acks);
            let commit_to = match (output.commit_to, poison_to) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if let Some(offset) = commit_to {
                self.shards.to_commit(&tp, offset, &mut batch);
            }
        }
        self.next_due = next_due;
        self.shards.owned.processing.observe(processing.elapsed());
        if let Some(why) = self.shards.escalation.take() {
            return Err(why);
        }
        if batch.is_empty() {
            for ack in acks {
                ack.send(Ok(()));
            }
            return Ok(());
        }
        let offsets: Vec<(TopicPartition, Offset)> = batch.offsets.clone();
        let committing = Instant::now();
        let result = self.consumer.commit(batch).await;
        self.shards.owned.commits.observe(committing.elapsed());
        if result.is_ok() {
            self.shards.committed(&offsets);
        }
        let outcome = result.as_ref().map(|_| ()).map_err(CommitError::from_log);
        for ack in acks {
            ack.send(outcome.clone());
        }
        match result {
            Ok(()) => Ok(()),
            // A rebalance took a partition while we worked: its new owner redoes the work
            // from the last commit. Nothing of the batch was written, yet every shard in
            // it handed over its state changes: each redoes its work from the last commit
            // (going on from memory would commit offsets past state never written).
            Err(LogError::NotAssigned(tp)) => {
                tracing::info!(stage = %self.shards.name, partition = %tp, "commit refused after a rebalance; the new owner takes over, and every shard redoes its work from the last commit");
                self.shards
                    .rewind_all("the last commit was refused after a rebalance")
                    .await;
                Ok(())
            }
            // The group moved on mid-commit: redo from the last commit, in place. (A stage
            // restart would rejoin as a replacement static member, which the coordinator
            // hands the old assignment without a rebalance: partitions this member was
            // giving up in a cooperative rebalance would then be nobody's.)
            Err(LogError::CommitAborted(why)) => {
                tracing::info!(stage = %self.shards.name, reason = %why, "commit aborted by a rebalance; every shard redoes its work from the last commit");
                self.shards
                    .rewind_all("the last commit was aborted by a rebalance")
                    .await;
                Ok(())
            }
            Err(e) => Err(StageError::Commit(e)),
        }
    }
}

/// Everything a stage needs to run; cheap to clone for restarts.
#[derive(Clone)]
pub struct StageSpec {
    /// `dag/node`.
    pub name: String,
    pub consumer: ConsumerConfig,
    pub settings: StageSettings,
    pub log: Arc<dyn wellspring_log::Log>,
    pub factory: Rc<dyn ShardFactory>,
    pub dead: DeadLetterWriter,
    pub restarts: crate::metrics::Counter,
    /// Partitions owned on this node (`shards` in the metrics).
    pub owned: crate::metrics::OwnedShards,
}

/// The supervisor of one DAG node on this Wellspring node.
pub struct StageActor {
    spec: StageSpec,
    link: ChildLink,
    state: Option<StageLoop>,
    waker: Option<Arc<Notify>>,
    stop_requested: bool,
    exit: Exit,
}

impl StageActor {
    pub fn new(spec: StageSpec, link: ChildLink) -> Self {
        Self {
            spec,
            link,
            state: None,
            waker: None,
            stop_requested: false,
            exit: Exit::Normal,
        }
    }

    fn fail(&mut self, error: StageError, ctx: &mut Context<Self>) {
        if error.retryable() {
            tracing::error!(stage = %self.spec.name, reason = %error, "stage failed");
        } else {
            tracing::error!(stage = %self.spec.name, reason = %error, "stage failed, and no restart can mend it");
        }
        self.exit = error.exit();
        let Some(state) = self.state.take() else {
            ctx.stop();
            return;
        };
        // The stage leaves its group, committing nothing, before the supervisor starts it
        // again: the restarted stage then joins as a new member and the group rebalances.
        // (Dropped without leaving, its successor would take its place as the same static
        // member, and keep the assignment of the moment: partitions it was giving up in a
        // cooperative rebalance would be left to nobody.)
        let StageLoop {
            mut consumer,
            shards,
            ..
        } = state;
        drop(shards);
        let name = self.spec.name.clone();
        ctx.wait(
            async move {
                if let Err(e) = consumer.close(&mut NoListener).await {
                    tracing::warn!(stage = %name, "leaving the group after a failure: {e}");
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
    }

    fn shutdown(&mut self, ctx: &mut Context<Self>) {
        let Some(mut state) = self.state.take() else {
            ctx.stop();
            return;
        };
        let name = self.spec.name.clone();
        tracing::info!(stage = %name, "stage stopping: committing and leaving its group");
        ctx.wait(
            async move {
                if let Err(e) = state.consumer.close(&mut state.shards).await {
                    tracing::warn!(stage = %name, "leaving the group: {e}");
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct RunCycle;

impl Actor for StageActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let consumer = match self.spec.log.consumer(self.spec.consumer.clone()) {
            Ok(c) => c,
            Err(e) => return self.fail(StageError::Consumer(e), ctx),
        };
        let waker = consumer.waker();
        self.waker = Some(waker.clone());
        self.state = Some(StageLoop {
            consumer,
            shards: ShardSet {
                name: self.spec.name.clone(),
                factory: self.spec.factory.clone(),
                settings: self.spec.settings.clone(),
                dead: self.spec.dead.clone(),
                waker,
                shards: BTreeMap::new(),
                escalation: None,
                restarts: self.spec.restarts.clone(),
                owned: self.spec.owned.clone(),
            },
            log: self.spec.log.clone(),
            ends_read_at: None,
            next_due: None,
        });
        ctx.notify(RunCycle);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.report(self.exit.clone());
    }
}

impl Handler<RunCycle> for StageActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: RunCycle, _: &mut Self::Context) -> Self::Result {
        let Some(mut state) = self.state.take() else {
            return Box::pin(fut::ready(()));
        };
        Box::pin(
            async move {
                let result = state.cycle().await;
                (state, result)
            }
            .into_actor(self)
            .map(|(state, result), act, ctx| {
                act.state = Some(state);
                match result {
                    Err(reason) => act.fail(reason, ctx),
                    Ok(()) if act.stop_requested => act.shutdown(ctx),
                    Ok(()) => ctx.notify(RunCycle),
                }
            }),
        )
    }
}

impl Handler<StopChild> for StageActor {
    type Result = ();

    fn handle(&mut self, _: StopChild, ctx: &mut Self::Context) {
        self.stop_requested = true;
        match &self.waker {
            // A cycle is running: end its wait; it shuts down when it finishes.
            Some(waker) if self.state.is_none() => waker.notify_one(),
            _ => self.shutdown(ctx),
        }
    }
}
