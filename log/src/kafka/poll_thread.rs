//! One librdkafka consumer polled on a thread of its own, turning librdkafka's poll (and
//! the rebalance callbacks it runs) into ordered [`Event`]s for the async side, and
//! carrying out its [`Command`]s (seeks, close).
//!
//! A reader reads one topic per client: librdkafka reports the end of a partition by its
//! number only, so each topic of a reader has a client (and thread) of its own.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::Offset as KafkaOffset;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message as _};
use tokio::sync::mpsc;

use super::call::explain;
use super::context::GroupContext;
use super::events::{Command, Event};
use super::leave::leave_group;
use crate::{Headers, LogError, LogRecord, Offset, StartFrom, TopicPartition};

/// One librdkafka consumer and the thread that polls it.
pub(super) struct Client {
    pub consumer: Arc<BaseConsumer<GroupContext>>,
    pub commands: std_mpsc::Sender<Command>,
    pub thread: Option<std::thread::JoinHandle<()>>,
    /// The topic it reads, for a reader; `None` for a group member.
    pub topic: Option<Arc<str>>,
}

/// Starts the clients of one consumer: each with the same event channel and settings.
pub(super) struct Spawner {
    pub brokers: String,
    pub events: mpsc::Sender<Event>,
    pub detached: Arc<AtomicBool>,
    pub start_from: StartFrom,
    /// The rebalance callbacks' bound (see [`GroupContext::timeout`]).
    pub timeout: Duration,
    /// Names the threads.
    pub client_id: String,
}

impl Spawner {
    /// A client of `config` (reading `topic`, for a reader) and its poll thread.
    pub fn spawn(
        &self,
        config: &ClientConfig,
        topic: Option<Arc<str>>,
    ) -> Result<Client, LogError> {
        let context = GroupContext {
            events: self.events.clone(),
            detached: self.detached.clone(),
            start_from: self.start_from,
            timeout: self.timeout,
        };
        let consumer: Arc<BaseConsumer<GroupContext>> = Arc::new(
            config
                .create_with_context(context)
                .map_err(|e| explain(&e, &self.brokers))?,
        );
        let (commands, commands_rx) = std_mpsc::channel();
        let (polled, events, thread_topic) = (consumer.clone(), self.events.clone(), topic.clone());
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{}", self.client_id))
            .spawn(move || poll_thread(polled, events, commands_rx, thread_topic))
            .map_err(|e| LogError::Other(format!("cannot start the consumer thread: {e}")))?;
        Ok(Client {
            consumer,
            commands,
            thread: Some(thread),
            topic,
        })
    }
}

fn to_record(message: &rdkafka::message::BorrowedMessage<'_>) -> LogRecord {
    let headers: Headers = message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    LogRecord {
        topic: Arc::from(message.topic()),
        partition: message.partition() as u32,
        offset: message.offset().max(0) as Offset,
        key: message.key().map(Bytes::copy_from_slice),
        value: message.payload().map(Bytes::copy_from_slice),
        headers: Arc::new(headers),
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
    }
}

/// The polling thread: turns librdkafka's poll into ordered events.
///
/// `topic` is the one topic a reader reads (`None` for a group member).
fn poll_thread(
    consumer: Arc<BaseConsumer<GroupContext>>,
    events: mpsc::Sender<Event>,
    commands: std_mpsc::Receiver<Command>,
    topic: Option<Arc<str>>,
) {
    let mut batch = Vec::new();
    let mut seeks: Vec<PendingSeek> = Vec::new();
    loop {
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Seek(tp, offset, epoch) => {
                    if !batch.is_empty()
                        && events
                            .blocking_send(Event::Records(std::mem::take(&mut batch)))
                            .is_err()
                    {
                        return;
                    }
                    seeks.retain(|s| s.partition != tp);
                    seeks.push(PendingSeek {
                        partition: tp,
                        offset,
                        epoch,
                        until: Instant::now() + SEEK_PATIENCE,
                    });
                }
                Command::Close(done) => {
                    if topic.is_none() {
                        leave_group(&consumer);
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
        if !seeks.is_empty() && !try_seeks(&consumer, &mut seeks, &events) {
            return;
        }
        // Wait for records only when there is nothing to hand over: records already
        // taken go to the stage as soon as no more are ready.
        let wait = if batch.is_empty() {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                batch.push(to_record(&message));
                if batch.len() < 1000 {
                    continue;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if !batch.is_empty()
                    && events
                        .blocking_send(Event::Records(std::mem::take(&mut batch)))
                        .is_err()
                {
                    return;
                }
                let end = topic
                    .as_ref()
                    .map(|t| Event::End(TopicPartition::new(t.clone(), p as u32)));
                if end.is_some_and(|end| events.blocking_send(end).is_err()) {
                    return;
                }
                continue;
            }
            Some(Err(e)) => {
                let fatal = matches!(&e, KafkaError::Global(code) if matches!(code, RDKafkaErrorCode::Fatal));
                tracing::warn!("Kafka consumer: {e}");
                if fatal {
                    let _ = events.blocking_send(Event::Failed(e.to_string()));
                    return;
                }
            }
            None => {}
        }
        if !batch.is_empty()
            && events
                .blocking_send(Event::Records(std::mem::take(&mut batch)))
                .is_err()
        {
            return;
        }
        if events.is_closed() {
            return;
        }
    }
}

/// How long a seek librdkafka refuses is tried again: a partition whose fetching has not
/// started yet, or is being set up after a rebalance, answers "Erroneous state" for a
/// moment.
const SEEK_PATIENCE: Duration = Duration::from_secs(5);

/// A seek asked for and not carried out yet.
struct PendingSeek {
    partition: TopicPartition,
    offset: Offset,
    epoch: u64,
    until: Instant,
}

/// Tries the pending seeks: each done is announced (`Seeked`), each refused past its
/// patience reported (`SeekFailed`), the rest kept for the next round. False once the
/// consumer side is gone.
fn try_seeks(
    consumer: &BaseConsumer<GroupContext>,
    seeks: &mut Vec<PendingSeek>,
    events: &mpsc::Sender<Event>,
) -> bool {
    let mut kept = Vec::new();
    for seek in seeks.drain(..) {
        let tp = &seek.partition;
        let event = match consumer.seek(
            &tp.topic,
            tp.partition as i32,
            KafkaOffset::Offset(seek.offset as i64),
            Duration::from_secs(1),
        ) {
            Ok(()) => Event::Seeked(seek.partition, seek.epoch),
            Err(e) if Instant::now() < seek.until => {
                tracing::debug!(partition = %tp, "seek refused for now, trying again: {e}");
                kept.push(seek);
                continue;
            }
            Err(e) => Event::SeekFailed(seek.partition, seek.epoch, e.to_string()),
        };
        if events.blocking_send(event).is_err() {
            return false;
        }
    }
    *seeks = kept;
    true
}
