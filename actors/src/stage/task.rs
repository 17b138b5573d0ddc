//! Task shards: call an HTTP task for every record of one partition of the task's input
//! topic.
//!
//! Calls run concurrently, never more than the task's `max-inflight` at once on this
//! node (a semaphore shared by the task's shards). They finish out of order, but the
//! partition is committed only up to the first record not yet finished (the watermark),
//! and a finished record's outputs are held until the watermark passes it: outputs and
//! offsets are committed together, so a crash repeats calls but never loses or
//! duplicates an output. When more than a bounded number of records are pending, the
//! shard answers the stage late: the stage stops polling (backpressure), nothing is
//! dropped. An output that cannot be routed now but could later fails the shard at its
//! next request: it restarts from the last commit and the record's call is repeated.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::{Notify, oneshot};
use wellspring_log::{LogRecord, Offset, ProducerRecord, TopicPartition};
use wellspring_protocol::{Envelope, MessageId, TaskOutcome, TaskRequest, TaskResult};

use super::{ShardFactory, ShardFailure, ShardOutput, ShardRequest, StartError};
use crate::http::TaskRunner;
use crate::metrics::{Counter, Gauge};
use crate::routing::{Downstream, NewerRecord, Undecodable, decode_envelope};
use crate::supervision::panic_message;

/// Starts the shards of one external-task node.
pub struct TaskFactory {
    pub dag: Arc<str>,
    pub node: Arc<str>,
    pub runner: Rc<dyn TaskRunner>,
    pub downstream: Downstream,
    pub records_in: Counter,
    pub panics: Counter,
    pub pending: Gauge,
    pub mailbox: usize,
}

#[async_trait(?Send)]
impl ShardFactory for TaskFactory {
    async fn start(
        &self,
        partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, StartError> {
        let max_pending = self.runner.max_pending();
        Ok(TaskShard {
            partition: partition.clone(),
            dag: self.dag.clone(),
            node: self.node.clone(),
            runner: self.runner.clone(),
            downstream: self.downstream.clone(),
            records_in: self.records_in.clone(),
            panics: self.panics.clone(),
            pending: self.pending.clone(),
            waker,
            outstanding: BTreeSet::new(),
            finished: BTreeMap::new(),
            next_offset: None,
            reported_to: None,
            max_pending,
            queued: VecDeque::new(),
            admission: Vec::new(),
            failure: None,
            newer: None,
            mailbox: self.mailbox,
        }
        .start()
        .recipient())
    }
}

struct TaskShard {
    /// The one partition this shard processes.
    partition: TopicPartition,
    dag: Arc<str>,
    node: Arc<str>,
    runner: Rc<dyn TaskRunner>,
    downstream: Downstream,
    records_in: Counter,
    panics: Counter,
    pending: Gauge,
    waker: Arc<Notify>,
    /// Records admitted and not finished.
    outstanding: BTreeSet<Offset>,
    /// Outputs of finished records, until the watermark passes them.
    finished: BTreeMap<Offset, Vec<ProducerRecord>>,
    /// One past the last record admitted.
    next_offset: Option<Offset>,
    /// The watermark last reported to the stage.
    reported_to: Option<Offset>,
    max_pending: usize,
    /// Records handed over but not admitted yet (at most one poll's worth).
    queued: VecDeque<LogRecord>,
    /// The stage waits here until its records are all admitted.
    admission: Vec<oneshot::Sender<()>>,
    /// A finished call whose output must be routed again later: the shard fails with
    /// this at the stage's next request.
    failure: Option<String>,
    /// The failure is a record a newer node wrote (the stage then fails for good).
    newer: Option<NewerRecord>,
    mailbox: usize,
}

impl TaskShard {
    /// Everything below the first unfinished record: its outputs, and the new watermark.
    fn take_ready(&mut self) -> ShardOutput {
        let Some(next) = self.next_offset else {
            return ShardOutput::default();
        };
        let watermark = self.outstanding.first().copied().unwrap_or(next);
        invariant!(
            self.reported_to
                .is_none_or(|reported| watermark >= reported),
            "task shard {}/{} of {}: the watermark moved back from {:?} to {watermark}",
            self.dag,
            self.node,
            self.partition,
            self.reported_to
        );
        let rest = self.finished.split_off(&watermark);
        let ready = std::mem::replace(&mut self.finished, rest);
        let outputs = ready.into_values().flatten().collect();
        let commit_to = (self.reported_to != Some(watermark)).then_some(watermark);
        self.reported_to = Some(watermark);
        // No timers: a finished call wakes the stage itself.
        ShardOutput {
            outputs,
            commit_to,
            ..ShardOutput::default()
        }
    }

    /// Admits queued records while fewer than the bound are pending; wakes the stage once
    /// everything it handed over is admitted.
    fn admit_queued(&mut self, ctx: &mut Context<Self>) {
        // Nothing past a newer node's record is admitted: the shard stops before it.
        while self.outstanding.len() < self.max_pending && self.newer.is_none() {
            let Some(record) = self.queued.pop_front() else {
                break;
            };
            self.admit(record, ctx);
        }
        // A waiting request is answered (with the failure) once nothing more is admitted.
        if self.queued.is_empty() || self.newer.is_some() {
            for waiter in self.admission.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn admit(&mut self, record: LogRecord, ctx: &mut Context<Self>) {
        invariant!(
            record.partition == self.partition.partition && record.topic == self.partition.topic,
            "task shard {}/{} of {} was handed record {} of {}[{}]",
            self.dag,
            self.node,
            self.partition,
            record.offset,
            record.topic,
            record.partition
        );
        self.records_in.inc();
        let offset = record.offset;
        let decoded = decode_envelope(&record, &self.downstream.dead);
        if let Err(Undecodable::Newer(newer)) = decoded {
            // Stop before it: nothing at or past it is committed, and the shard fails.
            tracing::error!(dag = %self.dag, node = %self.node, "{newer}");
            self.failure = Some(newer.to_string());
            self.newer = Some(newer);
            return;
        }
        self.next_offset = Some(offset + 1);
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(Undecodable::DeadLetter(letter)) => {
                self.finished.insert(offset, vec![letter]);
                return;
            }
            Err(Undecodable::Newer(_)) => return,
        };
        self.outstanding.insert(offset);
        self.pending.add(1);
        let runner = self.runner.clone();
        let request = TaskRequest::from_envelope(runner.task_name(), envelope);
        let kept = request.clone();
        let call = async move {
            // A panic in the task's mapping must not unwind the arbiter: it fails this
            // record only.
            std::panic::AssertUnwindSafe(runner.call(request))
                .catch_unwind()
                .await
        };
        ctx.spawn(call.into_actor(self).map(move |result, act, ctx| {
            let result = result.unwrap_or_else(|payload| {
                act.panics.inc();
                TaskResult {
                    request: kept,
                    attempts: 0,
                    outcome: TaskOutcome::Failed {
                        error: format!("panic: {}", panic_message(&*payload)),
                    },
                }
            });
            act.finish(offset, result, ctx);
        }));
    }

    fn finish(&mut self, offset: Offset, result: TaskResult, ctx: &mut Context<Self>) {
        let TaskResult {
            request,
            attempts,
            outcome,
        } = result;
        let mut outputs = Vec::new();
        let mut retry = None;
        match outcome {
            TaskOutcome::Succeeded { output } => {
                let generation = request.rerun.as_ref().map_or(0, |r| r.generation);
                let mut envelope = Envelope::new(
                    MessageId::derive(&self.dag, &self.node, &request.key)
                        .in_generation(generation),
                    request.key.clone(),
                    output,
                );
                if let Some(rerun) = &request.rerun {
                    rerun.mark(&mut envelope);
                }
                envelope.trace = request.trace;
                envelope.origin = request.origin.clone();
                if let Err(e) =
                    self.downstream
                        .send(envelope, request.origin, attempts, &mut outputs)
                {
                    retry = Some(e);
                }
            }
            // The task store has it; its output comes through the task's output topic.
            TaskOutcome::Submitted => self.downstream.records_out.inc(),
            TaskOutcome::Failed { error } => {
                tracing::debug!(dag = %self.dag, node = %self.node, key = %request.key, %error, "task failed for good");
                outputs.push(self.downstream.dead.record(
                    error,
                    request.origin,
                    Some(request.key),
                    request.input,
                    attempts,
                ));
            }
        }
        if self.outstanding.remove(&offset) {
            self.pending.add(-1);
        }
        if let Some(e) = retry {
            self.failure.get_or_insert_with(|| {
                format!("the output of record {offset} must be routed again: {e}")
            });
        }
        if self.failure.is_some() {
            // The shard fails at the stage's next request (or the one waiting for
            // admission) and restarts from the last commit, so this call is repeated.
            for waiter in self.admission.drain(..) {
                let _ = waiter.send(());
            }
            self.waker.notify_one();
            return;
        }
        self.finished.insert(offset, outputs);
        if self.outstanding.first().is_none_or(|first| *first > offset) {
            // The watermark moved: let the stage commit soon.
            self.waker.notify_one();
        }
        self.admit_queued(ctx);
    }
}

impl TaskShard {
    /// What is ready, or the failure that makes the shard restart.
    fn answer(&mut self) -> Result<ShardOutput, ShardFailure> {
        match self.failure.take() {
            // Nothing past the record was reported: the restarted shard calls it again.
            Some(reason) => {
                tracing::warn!(dag = %self.dag, node = %self.node, partition = %self.partition, %reason, "the task shard restarts");
                Err(ShardFailure {
                    offset: None,
                    reason,
                    newer: self.newer.clone(),
                })
            }
            None => Ok(self.take_ready()),
        }
    }

    /// Answers now; stops once the answer is out when asked to or when it failed
    /// (stopping first would drop the pending answer with the context's other futures).
    fn reply(&mut self, stop: bool) -> ResponseActFuture<Self, Result<ShardOutput, ShardFailure>> {
        let answer = self.answer();
        let stop = stop || answer.is_err();
        Box::pin(ActorFutureExt::map(
            fut::ready(answer),
            move |answer, _, ctx: &mut Context<Self>| {
                if stop {
                    ctx.stop();
                }
                answer
            },
        ))
    }
}

impl Actor for TaskShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<ShardRequest> for TaskShard {
    type Result = ResponseActFuture<Self, Result<ShardOutput, ShardFailure>>;

    fn handle(&mut self, request: ShardRequest, ctx: &mut Self::Context) -> Self::Result {
        match request {
            ShardRequest::Process(records) => {
                self.queued.extend(records);
                if self.failure.is_none() {
                    self.admit_queued(ctx);
                }
                if self.queued.is_empty() || self.failure.is_some() {
                    return self.reply(false);
                }
                // Too much pending: answer once all of it is admitted; meanwhile the
                // stage does not poll (backpressure).
                let (tx, rx) = oneshot::channel();
                self.admission.push(tx);
                Box::pin(
                    async move { rx.await.ok() }
                        .into_actor(self)
                        .map(|_, act, ctx| {
                            let answer = act.answer();
                            if answer.is_err() {
                                ctx.stop();
                            }
                            answer
                        }),
                )
            }
            ShardRequest::Drain => self.reply(false),
            // Calls still running are abandoned; the partition's next owner repeats them.
            ShardRequest::Revoke => self.reply(true),
            ShardRequest::Stop => Box::pin(ActorFutureExt::map(
                fut::ready(Ok(ShardOutput::default())),
                |answer, _, ctx: &mut Context<Self>| {
                    ctx.stop();
                    answer
                },
            )),
        }
    }
}
