//! Relay shards: carry records already inside the engine (internal envelopes) from a
//! topic to a node's consumers. A queue task's output topic is read this way: the task
//! store writes a worker's output there, and the relay routes it downstream.

use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;
use tokio::sync::Notify;
use wellspring_log::{LogRecord, ProducerRecord, TopicPartition};

use super::shard::{Halt, RecordProcessor, RetryLater, SyncShard};
use super::{ShardFactory, ShardRequest, StartError};
use crate::metrics::Counter;
use crate::routing::{Downstream, Undecodable, decode_envelope};

pub struct RelayFactory {
    pub name: String,
    pub downstream: Downstream,
    pub panics: Counter,
    pub mailbox: usize,
}

#[async_trait(?Send)]
impl ShardFactory for RelayFactory {
    async fn start(
        &self,
        partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, StartError> {
        Ok(SyncShard::new(
            format!("{}/{partition}", self.name),
            partition.clone(),
            RelayProcessor(self.downstream.clone()),
            Vec::new(),
            waker,
            self.panics.clone(),
            self.mailbox,
        )
        .start()
        .recipient())
    }
}

pub struct RelayProcessor(Downstream);

impl RecordProcessor for RelayProcessor {
    fn process(&mut self, record: &LogRecord, out: &mut Vec<ProducerRecord>) -> Result<(), Halt> {
        let envelope = match decode_envelope(record, &self.0.dead) {
            Ok(envelope) => envelope,
            Err(Undecodable::DeadLetter(letter)) => {
                out.push(letter);
                return Ok(());
            }
            Err(Undecodable::Newer(newer)) => return Err(newer.into()),
        };
        let origin = envelope.origin.clone();
        self.0
            .send(envelope, origin, 0, out)
            .map_err(|e| RetryLater(e.to_string()).into())
    }
}
