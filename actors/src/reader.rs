//! Readers: actors that read a topic from its beginning and follow it, applying every
//! record to a table this node keeps in memory. The metadata table ([`crate::table`]),
//! the task groups and the task-store directory ([`crate::taskstore`]) are each one.
//!
//! A [`Reader`] owns the consumer (an assignment, no group: every node reads every
//! record) and a producer made when first needed; what it does with the records is its
//! [`Follow`]er's. It is a supervised child: it fails when the log fails it (and reports
//! whether a restart can help), and stops when asked.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::Notify;
use wellspring_log::{
    ConsumerConfig, Log, LogError, LogRecord, NoListener, Producer, ProducerRecord, TopicPartition,
};

use crate::supervision::{ChildLink, Exit, StopChild, log_error_is_transient};

/// What a reader does with the records it reads.
pub trait Follow: Unpin + 'static {
    /// What it writes, in words for its errors ("writing dead letters").
    const WRITING: &'static str = "writing";

    /// Applies the records of one poll; what they lead to writing goes to `out`.
    fn apply(&mut self, records: Vec<LogRecord>, out: &mut Vec<ProducerRecord>);
    /// After every poll, records or not: what to write now.
    fn polled(&mut self, _out: &mut Vec<ProducerRecord>) {}
    /// The reader's consumer's waker, given once it is made: notifying it ends the
    /// current wait, so that `polled` runs for a change the log does not carry.
    fn wake_with(&mut self, _waker: Arc<Notify>) {}
    /// What `apply` and `polled` asked to write is durable.
    fn written(&mut self) {}
    /// The reader is asked to stop: what to write before it goes (at most once tried).
    fn stopping(&mut self, _out: &mut Vec<ProducerRecord>) {}
}

/// Which partitions a reader reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitions {
    /// All of them, as many as the topic has when the reader starts.
    All,
    Only(Vec<u32>),
}

/// What a reader reads, and how.
#[derive(Clone)]
pub struct ReaderSpec {
    /// Names the reader's consumer, and the reader in its logs.
    pub name: String,
    pub topic: String,
    pub partitions: Partitions,
    pub log: Arc<dyn Log>,
    /// The longest a poll waits for records (how often `polled` runs when none come and
    /// nothing wakes it).
    pub wait: Duration,
}

/// Why a reader stopped reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReaderError {
    #[error("finding the partitions of {topic}: {source}")]
    Partitions {
        topic: String,
        #[source]
        source: LogError,
    },
    #[error("creating the consumer of {topic}: {source}")]
    Consumer {
        topic: String,
        #[source]
        source: LogError,
    },
    #[error("reading {topic}: {source}")]
    Read {
        topic: String,
        #[source]
        source: LogError,
    },
    #[error("{what}: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: LogError,
    },
}

impl ReaderError {
    /// Whether a restarted reader can get further.
    pub fn retryable(&self) -> bool {
        match self {
            ReaderError::Partitions { source, .. }
            | ReaderError::Consumer { source, .. }
            | ReaderError::Read { source, .. }
            | ReaderError::Write { source, .. } => log_error_is_transient(source),
        }
    }
}

/// A reader of one topic, following it with `F`.
pub struct Reader<F: Follow> {
    spec: ReaderSpec,
    follower: Option<F>,
    link: ChildLink,
    exit: Exit,
    stop: Arc<Notify>,
}

impl<F: Follow> Reader<F> {
    pub fn following(spec: ReaderSpec, follower: F, link: ChildLink) -> Self {
        Self {
            spec,
            follower: Some(follower),
            link,
            exit: Exit::Normal,
            stop: Arc::new(Notify::new()),
        }
    }
}

/// Writes `records` with the reader's producer, made on first use.
async fn write(
    log: &dyn Log,
    producer: &mut Option<Box<dyn Producer>>,
    records: Vec<ProducerRecord>,
) -> Result<(), LogError> {
    let producer = match producer.take() {
        Some(made) => producer.insert(made),
        None => producer.insert(log.producer()?),
    };
    producer.send(records).await.map(|_| ())
}

async fn follow<F: Follow>(
    spec: ReaderSpec,
    mut follower: F,
    stop: Arc<Notify>,
) -> Result<(), ReaderError> {
    let log = spec.log.as_ref();
    let partitions = match &spec.partitions {
        Partitions::All => {
            let count =
                log.partitions(&spec.topic)
                    .await
                    .map_err(|source| ReaderError::Partitions {
                        topic: spec.topic.clone(),
                        source,
                    })?;
            (0..count).collect()
        }
        Partitions::Only(partitions) => partitions.clone(),
    };
    let assignment = partitions
        .into_iter()
        .map(|p| (TopicPartition::new(spec.topic.as_str(), p), Some(0)))
        .collect();
    let mut consumer = log
        .consumer(ConsumerConfig::assign(spec.name.clone(), assignment))
        .map_err(|source| ReaderError::Consumer {
            topic: spec.topic.clone(),
            source,
        })?;
    follower.wake_with(consumer.waker());
    let mut producer = None;
    let mut out = Vec::new();
    let mut listener = NoListener;
    loop {
        // Biased (stop first): a fixed order, so a simulated run replays exactly.
        let records = tokio::select! {
            biased;
            _ = stop.notified() => {
                follower.stopping(&mut out);
                if !out.is_empty() {
                    // Leaving anyway: a failed last word changes nothing.
                    let _ = write(log, &mut producer, out).await;
                }
                return Ok(());
            }
            records = consumer.poll(&mut listener, 1000, spec.wait) => records,
        }
        .map_err(|source| ReaderError::Read {
            topic: spec.topic.clone(),
            source,
        })?;
        follower.apply(records, &mut out);
        follower.polled(&mut out);
        if !out.is_empty() {
            write(log, &mut producer, std::mem::take(&mut out))
                .await
                .map_err(|source| ReaderError::Write {
                    what: F::WRITING,
                    source,
                })?;
            follower.written();
        }
    }
}

impl<F: Follow> Actor for Reader<F> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(follower) = self.follower.take() else {
            return;
        };
        let reading = follow(self.spec.clone(), follower, self.stop.clone());
        ctx.spawn(reading.into_actor(self).map(|result, act, ctx| {
            if let Err(e) = result {
                tracing::error!(reader = %act.spec.name, reason = %e, retryable = e.retryable(), "reader failed");
                act.exit = Exit::failure(e.to_string(), e.retryable());
            }
            ctx.stop();
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.report(self.exit.clone());
    }
}

impl<F: Follow> Handler<StopChild> for Reader<F> {
    type Result = ();

    fn handle(&mut self, _: StopChild, _: &mut Self::Context) {
        self.stop.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use wellspring_log::{Cleanup, EmbeddedLog, TopicSpec};

    use super::*;

    /// Counts the `polled` calls, and keeps the waker it is given.
    struct Counting {
        polls: Rc<Cell<u32>>,
        waker: Rc<RefCell<Option<Arc<Notify>>>>,
    }

    impl Follow for Counting {
        fn apply(&mut self, _: Vec<LogRecord>, _: &mut Vec<ProducerRecord>) {}
        fn polled(&mut self, _: &mut Vec<ProducerRecord>) {
            self.polls.set(self.polls.get() + 1);
        }
        fn wake_with(&mut self, waker: Arc<Notify>) {
            *self.waker.borrow_mut() = Some(waker);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_waker_a_follower_is_given_ends_the_readers_wait() {
        let log = EmbeddedLog::new();
        log.ensure_topic(&TopicSpec::new("t", 1, Cleanup::Delete))
            .await
            .expect("topic");
        let spec = ReaderSpec {
            name: "r".into(),
            topic: "t".into(),
            partitions: Partitions::All,
            log: Arc::new(log),
            wait: Duration::from_secs(3600),
        };
        let (polls, waker) = (Rc::new(Cell::new(0)), Rc::new(RefCell::new(None)));
        let follower = Counting {
            polls: polls.clone(),
            waker: waker.clone(),
        };
        let stop = Arc::new(Notify::new());
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let reading = tokio::task::spawn_local(follow(spec, follower, stop.clone()));
                // Started, and waiting its hour for records that do not come.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let before = polls.get();
                let handed = waker.borrow().clone();
                handed
                    .expect("the reader hands its waker over")
                    .notify_one();
                tokio::time::timeout(Duration::from_secs(60), async {
                    while polls.get() == before {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
                .await
                .expect("polled runs when woken, not at the end of the wait");
                stop.notify_one();
                reading
                    .await
                    .expect("joined")
                    .expect("the reader stops cleanly");
            })
            .await;
    }
}
