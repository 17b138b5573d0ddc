//! A group member's transactional producer, and one commit as a Kafka transaction:
//! begin, produce the outputs, deliver them, add the input offsets
//! (`send_offsets_to_transaction`, which the group fences: a member that lost a partition
//! cannot commit for it), commit; any error aborts it. Blocking calls: run them on a
//! blocking thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer as _, PurgeConfig};

use super::producer::base_record;
use super::settings::KafkaSettings;
use crate::ProducerRecord;

/// The transactional producer of member `member` of `group`. One transactional id per
/// member of a group: a restarted member with the same id fences its zombie predecessor.
pub(super) fn transactional_producer(
    settings: &KafkaSettings,
    group: &str,
    member: &str,
) -> Result<BaseProducer, KafkaError> {
    let id = format!("{group}-{member}");
    // A producer without a background thread: the commit polls it for the outputs'
    // delivery itself. A member killed mid-transaction leaves it open, holding back
    // read_committed readers of its output partitions until the coordinator aborts it:
    // after 10 s (as Kafka Streams sets it), not the broker's default minute. Adding a
    // partition to the next transaction is refused (and retried) while the previous one
    // completes: retry soon, not after librdkafka's default 100 ms (the backoff still
    // grows exponentially on repeated failures).
    settings
        .client_with(&[
            ("transaction.timeout.ms", "10000"),
            ("linger.ms", "1"),
            ("retry.backoff.ms", "5"),
        ])
        .set("transactional.id", &id)
        .create()
}

/// One batch to commit in a transaction.
pub(super) struct Transaction {
    /// The outputs, each with the partition it goes to.
    pub outputs: Vec<(ProducerRecord, i32)>,
    pub offsets: TopicPartitionList,
    /// The consumer's group metadata, when there are offsets to commit.
    pub metadata: Option<ConsumerGroupMetadata>,
}

/// Commits `transaction`, first finishing the abort of a failed one if `abort_pending`
/// says one did not complete; a failure aborts this one (or leaves `abort_pending` set
/// for the next commit to finish).
pub(super) fn run(
    producer: &BaseProducer,
    transaction: Transaction,
    timeout: Duration,
    abort_pending: &AtomicBool,
) -> Result<(), KafkaError> {
    if abort_pending.load(Ordering::SeqCst) {
        abort(producer, timeout)?;
        abort_pending.store(false, Ordering::SeqCst);
    }
    let result = commit(producer, &transaction, timeout);
    if let Err(e) = &result {
        tracing::warn!("transaction failed, aborting: {e}");
        if let Err(e) = abort(producer, timeout) {
            // The next commit finishes the abort before it begins.
            tracing::warn!("the abort did not complete yet: {e}");
            abort_pending.store(true, Ordering::SeqCst);
        }
    }
    result
}

fn commit(
    producer: &BaseProducer,
    transaction: &Transaction,
    timeout: Duration,
) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    for (record, partition) in &transaction.outputs {
        let mut base = base_record(record, *partition);
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(10));
                    base = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    // Deliver the outputs, serving their delivery reports here (the commit would
    // otherwise wait for someone to serve them).
    deliver(producer, timeout)?;
    if let Some(metadata) = &transaction.metadata {
        producer.send_offsets_to_transaction(&transaction.offsets, metadata, timeout)?;
    }
    producer.commit_transaction(timeout)
}

/// Waits until every record sent by `producer` is delivered, serving the delivery
/// reports, so that `commit_transaction` (which flushes first) finds nothing to wait for.
///
/// rdkafka's own `flush` and `poll(d)` return only when `d` has passed, even when the
/// reports came at once (a `flush` slice is 100 ms: every transaction took 100 ms), and
/// a `poll` spins through its last millisecond. So this serves whatever is ready without
/// blocking and sleeps briefly between looks: at most 200 µs late, and idle meanwhile.
fn deliver(producer: &BaseProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    // A zero-timeout flush tells the broker threads to send now instead of lingering.
    let _ = producer.flush(Duration::ZERO);
    loop {
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Aborts the producer's current transaction. The abort waits until every record of the
/// transaction has had its delivery report served, and nothing else serves this
/// producer's reports: so the records still queued or in flight are purged and their
/// reports served here first. When the abort still outlasts `timeout`, librdkafka asks
/// for the call to be repeated, which it is, a few times.
fn abort(producer: &BaseProducer, timeout: Duration) -> Result<(), KafkaError> {
    producer.purge(PurgeConfig::default().queue().inflight());
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut attempts = 0;
    loop {
        match producer.abort_transaction(timeout) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => {
                attempts += 1;
                producer.poll(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}
