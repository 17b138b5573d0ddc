//! Whole-topic reads and plain sends for the node's operator calls (redrive, re-run,
//! backfill): read a partition from an offset until the log says it is at the end,
//! append records, and say in words what the log refused.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wellspring_log::{
    ConsumerConfig, Log, LogError, LogRecord, NoListener, Offset, ProducerRecord, TopicPartition,
};

/// A read that makes no progress for this long fails (the log is not answering).
pub const READ_STALL: Duration = Duration::from_secs(30);

/// Why a read or a send did not complete.
#[derive(Debug, thiserror::Error)]
pub enum LogIoError {
    #[error("the log refused {action} {topic}: {source}")]
    Log {
        action: &'static str,
        topic: String,
        // Boxed: the error travels through every `?` of the workers.
        #[source]
        source: Box<LogError>,
    },
    #[error("reading {partition} made no progress for {}s (is the log reachable?)", READ_STALL.as_secs())]
    Stalled { partition: TopicPartition },
}

/// The error of `action` on `topic`.
pub fn log_error<'a>(
    action: &'static str,
    topic: &'a str,
) -> impl FnOnce(LogError) -> LogIoError + 'a {
    move |source| LogIoError::Log {
        action,
        topic: topic.to_owned(),
        source: Box::new(source),
    }
}

/// Reads and sends on one log, as consumer `client`.
pub struct LogIo {
    pub log: Arc<dyn Log>,
    pub client: String,
}

impl LogIo {
    /// Reads `partition` from `from` to its end, giving each record to `each`.
    pub async fn read(
        &self,
        partition: &TopicPartition,
        from: Offset,
        mut each: impl FnMut(&LogRecord),
    ) -> Result<(), LogIoError> {
        let mut reader = self
            .log
            .consumer(ConsumerConfig::assign(
                self.client.clone(),
                vec![(partition.clone(), Some(from))],
            ))
            .map_err(log_error("a reader of", &partition.topic))?;
        let mut progress = Instant::now();
        // Until the consumer says it is at the end and holds nothing more (an empty poll):
        // not to the end offset asked first, which a broker may answer from metadata a
        // moment old, and whose last offsets can be Kafka's transaction markers, which no
        // record is delivered for.
        loop {
            let records = reader
                .poll(&mut NoListener, 10_000, Duration::from_millis(200))
                .await
                .map_err(log_error("reading", &partition.topic))?;
            if records.is_empty() {
                if reader.caught_up(partition) {
                    break;
                }
                if progress.elapsed() > READ_STALL {
                    return Err(LogIoError::Stalled {
                        partition: partition.clone(),
                    });
                }
                continue;
            }
            records.iter().for_each(&mut each);
            progress = Instant::now();
        }
        Ok(())
    }

    /// The partitions of `topic`, `None` when it does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Option<u32>, LogIoError> {
        match self.log.partitions(topic).await {
            Ok(n) => Ok(Some(n)),
            Err(LogError::UnknownTopic(_)) => Ok(None),
            Err(e) => Err(log_error("listing the partitions of", topic)(e)),
        }
    }

    /// How many records `topic`'s partitions end at, together (what a whole read reads
    /// at most, for progress).
    pub async fn total(&self, topic: &str, partitions: u32) -> Result<u64, LogIoError> {
        let mut total = 0;
        for p in 0..partitions {
            total += self
                .log
                .end_offset(&TopicPartition::new(topic, p))
                .await
                .map_err(log_error("reading the end of", topic))?;
        }
        Ok(total)
    }

    /// Appends `records`; where each landed.
    pub async fn send(
        &self,
        records: Vec<ProducerRecord>,
        what: &'static str,
        topic: &str,
    ) -> Result<Vec<(TopicPartition, Offset)>, LogIoError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let producer = self
            .log
            .producer()
            .map_err(log_error("a producer for", topic))?;
        producer.send(records).await.map_err(log_error(what, topic))
    }
}
