//! The two channels between a poll thread and its consumer: the events the thread (and
//! the rebalance callbacks it runs) sends in order, and the commands it is sent.

use std::sync::mpsc as std_mpsc;

use crate::{Assigned, LogRecord, Offset, TopicPartition};

/// What the polling thread tells the async side, in order.
pub(super) enum Event {
    Records(Vec<LogRecord>),
    Assigned {
        partitions: Vec<Assigned>,
        /// The group's committed offset of each partition that has one.
        committed: Vec<(TopicPartition, Offset)>,
    },
    /// Partitions about to go; the thread waits on the sender until they are committed.
    Revoked(Vec<TopicPartition>, std_mpsc::SyncSender<()>),
    Lost(Vec<TopicPartition>, std_mpsc::SyncSender<()>),
    /// Records after this, of this partition, come from the seek numbered so.
    Seeked(TopicPartition, u64),
    /// The seek numbered so could not be carried out (librdkafka kept refusing it): the
    /// partition's records are not where its reader was told they would be.
    SeekFailed(TopicPartition, u64, String),
    /// The consumer reached the end of a partition (it read everything committed).
    End(TopicPartition),
    Failed(String),
}

/// What the async side asks of the polling thread.
pub(super) enum Command {
    Seek(TopicPartition, Offset, u64),
    Close(std_mpsc::SyncSender<()>),
}
