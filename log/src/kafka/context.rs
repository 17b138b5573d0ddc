//! librdkafka's rebalance callbacks, handed to the async side.
//!
//! librdkafka calls them inside its poll, on the poll thread. A revocation blocks that
//! thread until the async side has flushed and committed the departing shards (so the
//! partitions move only after); an assignment reaches the async side, with where each
//! partition will be read from, before any record of the new partitions (so shards
//! restore first).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset as KafkaOffset, TopicPartitionList};
use tokio::sync::mpsc;

use super::events::Event;
use crate::{Assigned, Offset, StartFrom, TopicPartition};

/// Hands librdkafka's rebalance callbacks to the async side.
pub(super) struct GroupContext {
    pub events: mpsc::Sender<Event>,
    /// Set when the consumer is closed or dropped: librdkafka's own close runs the
    /// callbacks again, with nobody left to answer them.
    pub detached: Arc<AtomicBool>,
    pub start_from: StartFrom,
    /// Bound on waiting for a revocation's commit, and on the calls of an assignment.
    pub timeout: Duration,
}

impl ClientContext for GroupContext {}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition() as u32))
        .collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.detached.load(Ordering::Acquire) {
            return;
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            if partitions.is_empty() {
                return;
            }
            let (ack, done) = std_mpsc::sync_channel(1);
            let event = if consumer.assignment_lost() {
                Event::Lost(partitions, ack)
            } else {
                Event::Revoked(partitions, ack)
            };
            if self.events.blocking_send(event).is_ok() {
                // Wait (bounded) until the shards flushed and committed.
                let _ = done.recv_timeout(self.timeout);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.detached.load(Ordering::Acquire) {
            return;
        }
        if let Rebalance::Assign(tpl) = rebalance {
            if tpl.count() == 0 {
                return;
            }
            let stored = consumer
                .committed_offsets((*tpl).clone(), self.timeout)
                .ok();
            let mut partitions = Vec::new();
            let mut committed = Vec::new();
            for element in tpl.elements() {
                let tp = TopicPartition::new(element.topic(), element.partition() as u32);
                let stored = stored
                    .as_ref()
                    .and_then(|c| c.find_partition(element.topic(), element.partition()))
                    .and_then(|e| match e.offset() {
                        KafkaOffset::Offset(o) if o >= 0 => Some(o as Offset),
                        _ => None,
                    });
                if let Some(offset) = stored {
                    committed.push((tp.clone(), offset));
                }
                let position = stored.unwrap_or_else(|| match self.start_from {
                    StartFrom::Earliest => consumer
                        .fetch_watermarks(element.topic(), element.partition(), self.timeout)
                        .map_or(0, |(low, _)| low.max(0) as Offset),
                    StartFrom::Latest => consumer
                        .fetch_watermarks(element.topic(), element.partition(), self.timeout)
                        .map_or(0, |(_, high)| high.max(0) as Offset),
                });
                partitions.push(Assigned {
                    partition: tp,
                    position,
                });
            }
            let _ = self.events.blocking_send(Event::Assigned {
                partitions,
                committed,
            });
        }
    }
}
