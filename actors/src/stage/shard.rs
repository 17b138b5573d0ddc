//! A shard actor around a synchronous record processor (sources and groupings).
//!
//! actix does not catch a panic in a handler (it would unwind the arbiter's thread), so
//! every call into the processor runs under `catch_unwind`. A panic stops the shard (its
//! state may be half-updated) and names the record it happened on; the stage restores
//! the shard from its changelog and sends that record to the dead-letter topic. A
//! processor that cannot process a record now, but could later, says so ([`RetryLater`]):
//! the shard stops the same way, but the record is read again after the restart.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::Notify;
use wellspring_log::{LogRecord, ProducerRecord, TopicPartition};
use wellspring_protocol::ExperimentId;

use super::{ShardFailure, ShardOutput, ShardRequest};
use crate::metadata::LayoutArrived;
use crate::metrics::Counter;
use crate::routing::NewerRecord;
use crate::supervision::panic_message;

/// A record could not be processed now; a retry can help. Its shard restarts from the
/// last commit and reads it again (and if that keeps failing, the restart budgets
/// escalate up the supervision tree).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RetryLater(pub String);

/// Why a processor stops at a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// It can succeed later: the shard restarts from its last commit.
    #[error(transparent)]
    RetryLater(#[from] RetryLater),
    /// A newer node wrote it: no restart of this node helps, so the stage fails for
    /// good and its partitions go to the nodes that read it.
    #[error(transparent)]
    Newer(#[from] NewerRecord),
}

/// Processes the records of one partition, synchronously.
pub trait RecordProcessor: Unpin + 'static {
    /// Processes one record; everything it produces goes to `out`. Bad records become
    /// dead letters in `out`; a record that can succeed later, or that this node cannot
    /// read, is an `Err`.
    fn process(&mut self, record: &LogRecord, out: &mut Vec<ProducerRecord>) -> Result<(), Halt>;
    /// Timers and state changes (changelog entries) since the last call; an `Err` fails
    /// the shard as [`RecordProcessor::process`] does.
    fn drain(&mut self, _out: &mut Vec<ProducerRecord>) -> Result<(), RetryLater> {
        Ok(())
    }
    /// An experiment's layout arrived.
    fn layout_arrived(&mut self, _experiment: &ExperimentId, _out: &mut Vec<ProducerRecord>) {}
    /// How soon [`RecordProcessor::drain`] has timed work (a timeout), if it has any: the
    /// stage asks by then even if no record comes.
    fn due_in(&self) -> Option<Duration> {
        None
    }
}

pub struct SyncShard<P: RecordProcessor> {
    name: String,
    /// The one partition this shard processes.
    partition: TopicPartition,
    processor: P,
    /// Produced outside a request (layouts arriving), delivered with the next one.
    outbox: Vec<ProducerRecord>,
    /// Ends the stage's poll wait when the outbox has something.
    waker: Arc<Notify>,
    panics: Counter,
    mailbox: usize,
}

impl<P: RecordProcessor> SyncShard<P> {
    pub fn new(
        name: String,
        partition: TopicPartition,
        processor: P,
        initial: Vec<ProducerRecord>,
        waker: Arc<Notify>,
        panics: Counter,
        mailbox: usize,
    ) -> Self {
        Self {
            name,
            partition,
            processor,
            outbox: initial,
            waker,
            panics,
            mailbox,
        }
    }

    fn panicked(
        &mut self,
        payload: Box<dyn std::any::Any + Send>,
        offset: Option<u64>,
        ctx: &mut Context<Self>,
    ) -> ShardFailure {
        self.panics.inc();
        let reason = format!("panic: {}", panic_message(&*payload));
        tracing::error!(shard = %self.name, ?offset, %reason, "contained a panic; the shard restarts");
        ctx.stop();
        ShardFailure {
            offset,
            reason,
            newer: None,
        }
    }

    /// The processor can go on later: the shard stops, and is restarted from the last
    /// commit (nothing is poison).
    fn retry_later(
        &mut self,
        why: RetryLater,
        offset: Option<u64>,
        ctx: &mut Context<Self>,
    ) -> ShardFailure {
        tracing::warn!(shard = %self.name, ?offset, reason = %why, "cannot go on now; the shard restarts from its last commit");
        ctx.stop();
        ShardFailure {
            offset: None,
            reason: format!("to be retried: {why}"),
            newer: None,
        }
    }

    /// A newer node's record: the shard stops before it, nothing committed past it.
    fn newer(&mut self, newer: NewerRecord, ctx: &mut Context<Self>) -> ShardFailure {
        tracing::error!(shard = %self.name, "{newer}");
        ctx.stop();
        ShardFailure {
            offset: None,
            reason: newer.to_string(),
            newer: Some(newer),
        }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) -> Result<Vec<ProducerRecord>, ShardFailure> {
        let mut out = std::mem::take(&mut self.outbox);
        match catch_unwind(AssertUnwindSafe(|| self.processor.drain(&mut out))) {
            Ok(Ok(())) => Ok(out),
            Ok(Err(why)) => Err(self.retry_later(why, None, ctx)),
            Err(payload) => Err(self.panicked(payload, None, ctx)),
        }
    }
}

impl<P: RecordProcessor> Actor for SyncShard<P> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // A bounded mailbox: senders wait when it is full (backpressure, never drops).
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl<P: RecordProcessor> Handler<ShardRequest> for SyncShard<P> {
    type Result = Result<ShardOutput, ShardFailure>;

    fn handle(&mut self, request: ShardRequest, ctx: &mut Self::Context) -> Self::Result {
        match request {
            ShardRequest::Process(records) => {
                let mut commit_to = None;
                for record in &records {
                    invariant!(
                        record.partition == self.partition.partition
                            && record.topic == self.partition.topic,
                        "shard {} of {} was handed record {} of {}[{}]",
                        self.name,
                        self.partition,
                        record.offset,
                        record.topic,
                        record.partition
                    );
                    let outbox = &mut self.outbox;
                    let processor = &mut self.processor;
                    match catch_unwind(AssertUnwindSafe(|| processor.process(record, outbox))) {
                        Ok(Ok(())) => {}
                        Ok(Err(Halt::RetryLater(why))) => {
                            return Err(self.retry_later(why, Some(record.offset), ctx));
                        }
                        Ok(Err(Halt::Newer(newer))) => return Err(self.newer(newer, ctx)),
                        Err(payload) => {
                            return Err(self.panicked(payload, Some(record.offset), ctx));
                        }
                    }
                    commit_to = Some(record.offset + 1);
                }
                Ok(ShardOutput {
                    outputs: self.drain(ctx)?,
                    commit_to,
                    wake_in: self.processor.due_in(),
                    ..ShardOutput::default()
                })
            }
            ShardRequest::Drain => Ok(ShardOutput {
                outputs: self.drain(ctx)?,
                wake_in: self.processor.due_in(),
                ..ShardOutput::default()
            }),
            ShardRequest::Revoke => {
                let outputs = self.drain(ctx)?;
                ctx.stop();
                Ok(ShardOutput {
                    outputs,
                    ..ShardOutput::default()
                })
            }
            ShardRequest::Stop => {
                ctx.stop();
                Ok(ShardOutput::default())
            }
        }
    }
}

impl<P: RecordProcessor> Handler<LayoutArrived> for SyncShard<P> {
    type Result = ();

    fn handle(&mut self, msg: LayoutArrived, ctx: &mut Self::Context) {
        let outbox = &mut self.outbox;
        let processor = &mut self.processor;
        match catch_unwind(AssertUnwindSafe(|| {
            processor.layout_arrived(&msg.experiment, outbox)
        })) {
            Ok(()) => {
                if !self.outbox.is_empty() {
                    self.waker.notify_one();
                }
            }
            Err(payload) => {
                // The stage finds the shard gone at its next request and restarts it.
                let _ = self.panicked(payload, None, ctx);
            }
        }
    }
}
