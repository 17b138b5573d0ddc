//! The shards of a stage: which partitions it owns, each one's shard actor, restarts and
//! poison records; the rebalance listener of the stage's consumer.
//!
//! Two of the stage's invariants are kept here: a shard is only ever asked about a
//! partition the stage owns (one it was assigned and has not lost), and a partition's
//! committed position only grows.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;
use wellspring_log::{
    Assigned, CommitBatch, LogRecord, Offset, ProducerRecord, RebalanceListener, TopicPartition,
};

use super::error::{CommitError, StageError};
use super::{ShardFactory, ShardFailure, ShardOutput, ShardRequest, StageSettings};
use crate::routing::DeadLetterWriter;
use crate::supervision::{RestartDecision, RestartTracker};

pub(super) enum Slot {
    Running(Recipient<ShardRequest>),
    /// Failed; to be started again at `until`.
    Down {
        until: Instant,
        reason: String,
    },
}

pub(super) struct ShardState {
    pub(super) slot: Slot,
    tracker: RestartTracker,
    /// Where the partition was assigned from, for rewinding when nothing was committed.
    pub(super) assigned_at: Offset,
    /// How far the partition is committed (or, before the first commit, where it was
    /// assigned from): what a shard reports done may only move it forward.
    committed: Offset,
    /// Records that made the shard fail, by offset, with the reason.
    poison: BTreeMap<Offset, String>,
}

/// The shards of a stage; the rebalance listener of its consumer.
pub(super) struct ShardSet {
    pub(super) name: String,
    pub(super) factory: Rc<dyn ShardFactory>,
    pub(super) settings: StageSettings,
    pub(super) dead: DeadLetterWriter,
    pub(super) waker: Arc<Notify>,
    /// The partitions this stage owns: assigned to it and neither revoked nor lost.
    pub(super) shards: BTreeMap<TopicPartition, ShardState>,
    /// Set when a shard cannot go on (its restart budget is spent, or it cannot start
    /// at all): the stage must fail.
    pub(super) escalation: Option<StageError>,
    pub(super) restarts: crate::metrics::Counter,
    /// The partitions this stage owns on this node (for the metrics).
    pub(super) owned: crate::metrics::OwnedShards,
}

impl Drop for ShardSet {
    /// The stage is gone (failed, or stopped): its shards stop too. A shard that others
    /// can still reach (a task-store shard is registered for the API) must not go on
    /// answering from memory that no commit will ever make durable (found by the
    /// simulation harness, seed 97: a submission answered "exists" from a refused write).
    fn drop(&mut self) {
        for (tp, state) in &self.shards {
            self.owned.remove(tp);
            if let Slot::Running(shard) = &state.slot {
                shard.do_send(ShardRequest::Stop);
            }
            self.factory.released(tp);
        }
    }
}

impl ShardSet {
    fn mark_failed(&mut self, tp: &TopicPartition, failure: ShardFailure) {
        let Some(state) = self.shards.get_mut(tp) else {
            return;
        };
        if let Some(offset) = failure.offset {
            state.poison.insert(offset, failure.reason.clone());
        }
        // A newer node's record: restarting this node's shard only meets it again.
        if let Some(newer) = failure.newer {
            state.slot = Slot::Down {
                until: Instant::now() + self.settings.shard_restart.max_backoff,
                reason: failure.reason,
            };
            self.escalation = Some(StageError::NewerRecord(newer));
            return;
        }
        self.restarts.inc();
        match state.tracker.on_failure(Instant::now()) {
            RestartDecision::RestartAfter(delay) => {
                tracing::warn!(stage = %self.name, partition = %tp, reason = %failure.reason, ?delay, "shard failed; restarting after back-off");
                state.slot = Slot::Down {
                    until: Instant::now() + delay,
                    reason: failure.reason,
                };
            }
            RestartDecision::Escalate { failures } => {
                state.slot = Slot::Down {
                    until: Instant::now() + self.settings.shard_restart.max_backoff,
                    reason: failure.reason.clone(),
                };
                self.escalation = Some(StageError::ShardBudget {
                    partition: tp.clone(),
                    failures,
                    window: self.settings.shard_restart.window,
                    last: failure.reason,
                });
            }
        }
    }

    /// Starts the shard of `tp`. One that may start later is restarted after a back-off;
    /// one that cannot start at all fails the stage.
    pub(super) async fn start_shard(&mut self, tp: &TopicPartition) -> bool {
        let started = Instant::now();
        self.owned.restoring(tp);
        let start = self.factory.start(tp, self.waker.clone()).await;
        self.owned.restored(tp);
        match start {
            Ok(addr) => {
                if let Some(state) = self.shards.get_mut(tp) {
                    state.slot = Slot::Running(addr);
                }
                // Starting includes restoring the shard's state from its changelog.
                self.owned.restore_took(started.elapsed());
                tracing::info!(stage = %self.name, partition = %tp, restore_ms = started.elapsed().as_millis() as u64, "shard restored and running");
                true
            }
            Err(e) if e.retryable() => {
                self.mark_failed(
                    tp,
                    ShardFailure {
                        offset: None,
                        reason: format!("could not start: {e}"),
                        newer: None,
                    },
                );
                false
            }
            Err(e) => {
                tracing::error!(stage = %self.name, partition = %tp, reason = %e, "shard cannot start, and retrying cannot help");
                if let Some(state) = self.shards.get_mut(tp) {
                    state.slot = Slot::Down {
                        until: Instant::now() + self.settings.shard_restart.max_backoff,
                        reason: e.to_string(),
                    };
                }
                self.escalation = Some(StageError::ShardStart {
                    partition: tp.clone(),
                    source: e,
                });
                false
            }
        }
    }

    /// A commit of this stage was aborted by a rebalance: every shard's memory is past
    /// the last commit, so each stops and starts again from its changelog and the last
    /// committed offset (the next cycle restarts them) while the stage keeps its consumer
    /// and its place in the group. Not a failure: no restart budget is spent.
    pub(super) async fn rewind_all(&mut self, reason: &str) {
        let now = Instant::now();
        for (tp, state) in &mut self.shards {
            if let Slot::Running(addr) = &state.slot {
                let _ = addr.send(ShardRequest::Stop).await;
            }
            state.slot = Slot::Down {
                until: now,
                reason: reason.to_owned(),
            };
            tracing::info!(stage = %self.name, partition = %tp, "shard rewinds to the last commit");
        }
    }

    /// Partitions whose shard is down and due for a restart.
    pub(super) fn due_restarts(&self) -> Vec<TopicPartition> {
        let now = Instant::now();
        self.shards
            .iter()
            .filter(|(_, s)| matches!(s.slot, Slot::Down { until, .. } if until <= now))
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// The soonest pending restart, so the poll does not sleep past it.
    pub(super) fn next_restart(&self) -> Option<Instant> {
        self.shards
            .values()
            .filter_map(|s| match s.slot {
                Slot::Down { until, .. } => Some(until),
                Slot::Running(_) => None,
            })
            .min()
    }

    pub(super) fn is_running(&self, tp: &TopicPartition) -> bool {
        matches!(self.shards.get(tp).map(|s| &s.slot), Some(Slot::Running(_)))
    }

    /// Sends a request to a running shard; a failure marks it down.
    pub(super) async fn ask(
        &mut self,
        tp: &TopicPartition,
        request: ShardRequest,
    ) -> Option<ShardOutput> {
        let Some(Slot::Running(addr)) = self.shards.get(tp).map(|s| &s.slot) else {
            return None;
        };
        if let ShardRequest::Process(records) = &request {
            for record in records {
                invariant!(
                    record.partition == tp.partition && record.topic == tp.topic,
                    "stage {}: the shard of {tp} was handed record {} of {}[{}]",
                    self.name,
                    record.offset,
                    record.topic,
                    record.partition
                );
            }
        }
        let addr = addr.clone();
        match addr.send(request).await {
            Ok(Ok(output)) => Some(output),
            Ok(Err(failure)) => {
                self.mark_failed(tp, failure);
                None
            }
            Err(mailbox) => {
                self.mark_failed(
                    tp,
                    ShardFailure {
                        offset: None,
                        reason: format!("shard actor is gone: {mailbox}"),
                        newer: None,
                    },
                );
                None
            }
        }
    }

    /// Splits out the records that made this shard fail before: they become dead letters.
    pub(super) fn take_poison(
        &mut self,
        tp: &TopicPartition,
        records: &mut Vec<LogRecord>,
        out: &mut Vec<ProducerRecord>,
    ) -> Option<Offset> {
        let state = self.shards.get_mut(tp)?;
        if state.poison.is_empty() {
            return None;
        }
        let mut last = None;
        records.retain(|r| match state.poison.remove(&r.offset) {
            Some(reason) => {
                out.push(self.dead.unreadable(
                    format!("processing this record failed: {reason}"),
                    r,
                    r.value.as_deref(),
                ));
                last = Some(r.offset + 1);
                false
            }
            None => true,
        });
        last
    }

    /// Adds the partition's new position to a batch to commit; it may only move forward.
    pub(super) fn to_commit(&self, tp: &TopicPartition, offset: Offset, batch: &mut CommitBatch) {
        if let Some(state) = self.shards.get(tp) {
            invariant!(
                offset >= state.committed,
                "stage {}: the shard of {tp} moved its committed position back from {} to {offset}",
                self.name,
                state.committed
            );
        }
        batch.offsets.push((tp.clone(), offset));
    }

    /// The log committed these positions.
    pub(super) fn committed(&mut self, offsets: &[(TopicPartition, Offset)]) {
        for (tp, offset) in offsets {
            if let Some(state) = self.shards.get_mut(tp) {
                state.committed = *offset;
            }
            self.owned.committed(tp, *offset);
        }
    }
}

#[async_trait(?Send)]
impl RebalanceListener for ShardSet {
    async fn on_assigned(&mut self, partitions: &[Assigned]) {
        if !partitions.is_empty() {
            self.owned.rebalances.inc();
        }
        for assigned in partitions {
            self.owned.insert(&assigned.partition);
            self.owned.committed(&assigned.partition, assigned.position);
            tracing::info!(stage = %self.name, partition = %assigned.partition, from = assigned.position, "shard assigned");
            self.shards.insert(
                assigned.partition.clone(),
                ShardState {
                    slot: Slot::Down {
                        until: Instant::now(),
                        reason: "starting".into(),
                    },
                    tracker: RestartTracker::new(self.settings.shard_restart.clone()),
                    assigned_at: assigned.position,
                    committed: assigned.position,
                    poison: BTreeMap::new(),
                },
            );
            self.start_shard(&assigned.partition).await;
        }
    }

    async fn on_revoked(&mut self, partitions: &[TopicPartition]) -> CommitBatch {
        if !partitions.is_empty() {
            self.owned.rebalances.inc();
        }
        let mut batch = CommitBatch::default();
        for tp in partitions {
            if let Some(output) = self.ask(tp, ShardRequest::Revoke).await {
                // The commit of a revoke happens inside the poll, out of our sight: a
                // shard must not hand over acknowledged work here.
                for ack in output.acks {
                    ack.send(Err(CommitError::Moved));
                }
                batch.outputs.extend(output.outputs);
                if let Some(offset) = output.commit_to {
                    self.to_commit(tp, offset, &mut batch);
                }
            }
            self.shards.remove(tp);
            self.owned.remove(tp);
            self.factory.released(tp);
            tracing::info!(stage = %self.name, partition = %tp, "shard revoked");
        }
        batch
    }

    async fn on_lost(&mut self, partitions: &[TopicPartition]) {
        if !partitions.is_empty() {
            self.owned.rebalances.inc();
        }
        for tp in partitions {
            self.owned.remove(tp);
            if let Some(Slot::Running(addr)) = self.shards.remove(tp).map(|s| s.slot) {
                let _ = addr.send(ShardRequest::Stop).await;
            }
            self.factory.released(tp);
            tracing::warn!(stage = %self.name, partition = %tp, "shard lost (this member was presumed dead)");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::{Counter, OwnedShards};
    use crate::stage::StartError;
    use crate::supervision::RestartPolicy;

    struct NoShards;

    #[async_trait(?Send)]
    impl ShardFactory for NoShards {
        async fn start(
            &self,
            partition: &TopicPartition,
            _: Arc<Notify>,
        ) -> Result<Recipient<ShardRequest>, StartError> {
            Err(StartError::Stalled {
                partition: partition.clone(),
                end: 0,
            })
        }
    }

    /// Answers every request with nothing.
    struct Idle;

    impl Actor for Idle {
        type Context = Context<Self>;
    }

    impl Handler<ShardRequest> for Idle {
        type Result = Result<ShardOutput, ShardFailure>;

        fn handle(&mut self, _: ShardRequest, _: &mut Self::Context) -> Self::Result {
            Ok(ShardOutput::default())
        }
    }

    /// A stage's shards, owning `partitions` from the offsets given (none running).
    fn owning(partitions: &[(TopicPartition, Offset)]) -> ShardSet {
        let mut set = ShardSet {
            name: "d/n".into(),
            factory: Rc::new(NoShards),
            settings: StageSettings {
                max_records: 10,
                max_wait: Duration::from_millis(10),
                shard_restart: RestartPolicy::default(),
            },
            dead: DeadLetterWriter {
                dag: "d".into(),
                node: "n".into(),
                topic: "dead".into(),
                counter: Counter::default(),
            },
            waker: Arc::new(Notify::new()),
            shards: BTreeMap::new(),
            escalation: None,
            restarts: Counter::default(),
            owned: OwnedShards::default(),
        };
        for (tp, at) in partitions {
            set.shards.insert(
                tp.clone(),
                ShardState {
                    slot: Slot::Down {
                        until: Instant::now(),
                        reason: "not started".into(),
                    },
                    tracker: RestartTracker::new(RestartPolicy::default()),
                    assigned_at: *at,
                    committed: *at,
                    poison: BTreeMap::new(),
                },
            );
        }
        set
    }

    fn record(tp: &TopicPartition, offset: Offset) -> LogRecord {
        LogRecord {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset,
            key: None,
            value: None,
            headers: Default::default(),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn a_committed_position_moves_forward_or_stays() {
        let tp = TopicPartition::new("in", 0);
        let mut set = owning(&[(tp.clone(), 10)]);
        let mut batch = CommitBatch::default();
        set.to_commit(&tp, 10, &mut batch);
        set.to_commit(&tp, 12, &mut batch);
        set.committed(&batch.offsets);
        assert_eq!(set.shards[&tp].committed, 12);
    }

    #[test]
    #[should_panic(expected = "the shard of in[0] moved its committed position back from 12 to 11")]
    fn a_committed_position_moving_back_is_caught() {
        let tp = TopicPartition::new("in", 0);
        let mut set = owning(&[(tp.clone(), 10)]);
        set.committed(&[(tp.clone(), 12)]);
        set.to_commit(&tp, 11, &mut CommitBatch::default());
    }

    #[test]
    #[should_panic(expected = "the shard of in[0] was handed record 7 of in[1]")]
    fn a_record_of_another_partition_handed_to_a_shard_is_caught() {
        let tp = TopicPartition::new("in", 0);
        let other = TopicPartition::new("in", 1);
        actix_rt::System::new().block_on(async move {
            let mut set = owning(&[(tp.clone(), 0)]);
            if let Some(state) = set.shards.get_mut(&tp) {
                state.slot = Slot::Running(Idle.start().recipient());
            }
            assert!(
                set.ask(&tp, ShardRequest::Process(vec![record(&tp, 3)]))
                    .await
                    .is_some(),
                "its own records are handed over"
            );
            set.ask(&tp, ShardRequest::Process(vec![record(&other, 7)]))
                .await;
        });
    }
}
