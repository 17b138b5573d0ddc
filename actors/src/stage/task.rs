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
//! dropped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::{Notify, oneshot};
use wellspring_log::{LogRecord, Offset, ProducerRecord, TopicPartition};
use wellspring_protocol::{
    Envelope, MessageId, Origin, TaskOutcome, TaskRequest, TaskResult, wire,
};

use super::{ShardFactory, ShardFailure, ShardOutput, ShardRequest};
use crate::http::TaskRunner;
use crate::metrics::{Counter, Gauge};
use crate::routing::{DeadLetterWriter, Router};
use crate::supervision::panic_message;

/// Starts the shards of one external-task node.
pub struct TaskFactory {
    pub dag: Arc<str>,
    pub node: Arc<str>,
    pub runner: Rc<dyn TaskRunner>,
    pub router: Arc<Router>,
    pub dead: DeadLetterWriter,
    pub records_in: Counter,
    pub records_out: Counter,
    pub panics: Counter,
    pub pending: Gauge,
    pub mailbox: usize,
}

#[async_trait(?Send)]
impl ShardFactory for TaskFactory {
    async fn start(
        &self,
        _partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, String> {
        let max_pending = self.runner.max_pending();
        Ok(TaskShard {
            dag: self.dag.clone(),
            node: self.node.clone(),
            runner: self.runner.clone(),
            router: self.router.clone(),
            dead: self.dead.clone(),
            records_in: self.records_in.clone(),
            records_out: self.records_out.clone(),
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
            mailbox: self.mailbox,
        }
        .start()
        .recipient())
    }
}

struct TaskShard {
    dag: Arc<str>,
    node: Arc<str>,
    runner: Rc<dyn TaskRunner>,
    router: Arc<Router>,
    dead: DeadLetterWriter,
    records_in: Counter,
    records_out: Counter,
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
    mailbox: usize,
}

impl TaskShard {
    /// Everything below the first unfinished record: its outputs, and the new watermark.
    fn take_ready(&mut self) -> ShardOutput {
        let Some(next) = self.next_offset else {
            return ShardOutput::default();
        };
        let watermark = self.outstanding.first().copied().unwrap_or(next);
        let rest = self.finished.split_off(&watermark);
        let ready = std::mem::replace(&mut self.finished, rest);
        let outputs = ready.into_values().flatten().collect();
        let commit_to = (self.reported_to != Some(watermark)).then_some(watermark);
        self.reported_to = Some(watermark);
        ShardOutput {
            outputs,
            commit_to,
            acks: Vec::new(),
        }
    }

    /// Admits queued records while fewer than the bound are pending; wakes the stage once
    /// everything it handed over is admitted.
    fn admit_queued(&mut self, ctx: &mut Context<Self>) {
        while self.outstanding.len() < self.max_pending {
            let Some(record) = self.queued.pop_front() else {
                break;
            };
            self.admit(record, ctx);
        }
        if self.queued.is_empty() {
            for waiter in self.admission.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn admit(&mut self, record: LogRecord, ctx: &mut Context<Self>) {
        self.records_in.inc();
        let offset = record.offset;
        self.next_offset = Some(offset + 1);
        let here = Origin {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset,
        };
        let envelope: Envelope = match record.value.as_deref().map(wire::decode) {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                let letter = self.dead.unreadable(
                    format!("unreadable internal record: {e}"),
                    here,
                    record.key.as_deref(),
                    None,
                );
                self.finished.insert(offset, vec![letter]);
                return;
            }
            None => {
                let letter = self.dead.unreadable(
                    "the record has no value".into(),
                    here,
                    record.key.as_deref(),
                    None,
                );
                self.finished.insert(offset, vec![letter]);
                return;
            }
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
        match outcome {
            TaskOutcome::Succeeded { output } => {
                let mut envelope = Envelope::new(
                    MessageId::derive(&self.dag, &self.node, &request.key),
                    request.key.clone(),
                    output,
                );
                envelope.trace = request.trace;
                envelope.origin = request.origin.clone();
                match self.router.route(&envelope, &mut outputs) {
                    Ok(()) => self.records_out.inc(),
                    Err(reason) => outputs.push(self.dead.record(
                        reason,
                        request.origin,
                        Some(request.key),
                        envelope.payload,
                        attempts,
                    )),
                }
            }
            // The task store has it; its output comes through the task's output topic.
            TaskOutcome::Submitted => self.records_out.inc(),
            TaskOutcome::Failed { error } => {
                tracing::debug!(dag = %self.dag, node = %self.node, key = %request.key, %error, "task failed for good");
                outputs.push(self.dead.record(
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
        self.finished.insert(offset, outputs);
        if self.outstanding.first().is_none_or(|first| *first > offset) {
            // The watermark moved: let the stage commit soon.
            self.waker.notify_one();
        }
        self.admit_queued(ctx);
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
                self.admit_queued(ctx);
                if self.queued.is_empty() {
                    return Box::pin(fut::ready(Ok(self.take_ready())));
                }
                // Too much pending: answer once all of it is admitted; meanwhile the
                // stage does not poll (backpressure).
                let (tx, rx) = oneshot::channel();
                self.admission.push(tx);
                Box::pin(
                    async move { rx.await.ok() }
                        .into_actor(self)
                        .map(|_, act, _| Ok(act.take_ready())),
                )
            }
            ShardRequest::Drain => Box::pin(fut::ready(Ok(self.take_ready()))),
            // Stop only once the answer is out: stopping first would drop the pending
            // answer with the context's other futures. Calls still running are
            // abandoned; the partition's next owner repeats them.
            ShardRequest::Revoke => {
                let output = self.take_ready();
                Box::pin(ActorFutureExt::map(
                    fut::ready(Ok(output)),
                    |answer, _, ctx: &mut Context<Self>| {
                        ctx.stop();
                        answer
                    },
                ))
            }
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
