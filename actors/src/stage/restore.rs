//! Restoring a shard's state: its partition of a changelog (a grouping's changelog, the
//! task topic) read from the beginning to what is committed, before the shard serves.

use std::time::Duration;

use tokio::time::Instant;
use wellspring_log::{ConsumerConfig, Log, LogRecord, NoListener, Offset, TopicPartition};

use super::error::StartError;

/// A restore that makes no progress for this long fails (and is retried).
const RESTORE_STALL: Duration = Duration::from_secs(30);

/// What a restore read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Records applied.
    pub(crate) records: u64,
    /// The partition's end offset when the restore began.
    pub(crate) end: Offset,
}

/// Reads `partition` from its beginning until everything committed is read, giving each
/// record to `apply`; `client` names the reading consumer.
pub(crate) async fn restore(
    log: &dyn Log,
    partition: &TopicPartition,
    client: String,
    apply: impl FnMut(&LogRecord),
) -> Result<Restored, StartError> {
    restore_from(log, partition, 0, client, apply).await
}

/// Reads `partition` from `from` (a warm copy's position, or 0) until everything
/// committed is read, giving each record to `apply`.
pub(crate) async fn restore_from(
    log: &dyn Log,
    partition: &TopicPartition,
    from: Offset,
    client: String,
    mut apply: impl FnMut(&LogRecord),
) -> Result<Restored, StartError> {
    let failed = |action: &'static str| {
        move |source| StartError::Log {
            action,
            partition: partition.clone(),
            source,
        }
    };
    let end = log
        .end_offset(partition)
        .await
        .map_err(failed("reading the end of"))?;
    let mut restored = Restored { records: 0, end };
    if end <= from {
        return Ok(restored);
    }
    let mut reader = log
        .consumer(ConsumerConfig::assign(
            client,
            vec![(partition.clone(), Some(from))],
        ))
        .map_err(failed("creating a consumer of"))?;
    let mut last_progress = Instant::now();

    // Until everything committed is read (offsets alone cannot tell: Kafka's transaction
    // markers take offsets no record is delivered for).
    while !reader.caught_up(partition) {
        let records = reader
            .poll(&mut NoListener, 10_000, Duration::from_millis(200))
            .await
            .map_err(failed("reading"))?;
        if records.is_empty() {
            if last_progress.elapsed() > RESTORE_STALL {
                return Err(StartError::Stalled {
                    partition: partition.clone(),
                    end,
                });
            }
            continue;
        }
        for record in &records {
            apply(record);
        }
        restored.records += records.len() as u64;
        last_progress = Instant::now();
    }
    Ok(restored)
}
