//! Relay shards: carry records already inside the engine (internal envelopes) from a
//! topic to a node's consumers. A queue task's output topic is read this way: the task
//! store writes a worker's output there, and the relay routes it downstream.

use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;
use tokio::sync::Notify;
use wellspring_log::{LogRecord, ProducerRecord, TopicPartition};
use wellspring_protocol::{Envelope, Origin, wire};

use super::shard::{RecordProcessor, SyncShard};
use super::{ShardFactory, ShardRequest};
use crate::metrics::Counter;
use crate::routing::{DeadLetterWriter, Router};

pub struct RelayFactory {
    pub name: String,
    pub router: Arc<Router>,
    pub dead: DeadLetterWriter,
    pub records_out: Counter,
    pub panics: Counter,
    pub mailbox: usize,
}

#[async_trait(?Send)]
impl ShardFactory for RelayFactory {
    async fn start(
        &self,
        partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, String> {
        let processor = RelayProcessor {
            router: self.router.clone(),
            dead: self.dead.clone(),
            records_out: self.records_out.clone(),
        };
        Ok(SyncShard::new(
            format!("{}/{partition}", self.name),
            processor,
            Vec::new(),
            waker,
            self.panics.clone(),
            self.mailbox,
        )
        .start()
        .recipient())
    }
}

pub struct RelayProcessor {
    router: Arc<Router>,
    dead: DeadLetterWriter,
    records_out: Counter,
}

impl RecordProcessor for RelayProcessor {
    fn process(&mut self, record: &LogRecord, out: &mut Vec<ProducerRecord>) {
        let here = Origin {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
        };
        let envelope: Envelope = match record.value.as_deref().map(wire::decode) {
            Some(Ok(envelope)) => envelope,
            Some(Err(e)) => {
                out.push(self.dead.unreadable(
                    format!("unreadable internal record: {e}"),
                    here,
                    record.key.as_deref(),
                    None,
                ));
                return;
            }
            None => return,
        };
        match self.router.route(&envelope, out) {
            Ok(()) => self.records_out.inc(),
            Err(reason) => {
                let Envelope {
                    origin,
                    key,
                    payload,
                    ..
                } = envelope;
                out.push(self.dead.record(reason, origin, Some(key), payload, 0));
            }
        }
    }
}
