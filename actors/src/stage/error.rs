//! What can go wrong in a stage and its shards, and whether a retry can help.
//!
//! Each error says what failed and answers `retryable()`. The stage decides on it: a
//! shard whose start can succeed later is restarted after a back-off, one whose start
//! cannot (its changelog partition does not exist) fails the stage at once; a stage that
//! fails for a reason a restart mends exits [`Exit::Failed`] (its supervisor restarts
//! it), one that fails for a reason no restart mends exits [`Exit::Unrecoverable`] (its
//! supervisors give up on it instead of spending their budgets on it).

use std::time::Duration;

use wellspring_log::{LogError, Offset, TopicPartition};

use crate::supervision::{Exit, log_error_is_transient};

/// Why a shard could not start: restoring its state from its partition failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The log refused or failed a step of the restore (`action`: what was done).
    #[error("{action} {partition}: {source}")]
    Log {
        action: &'static str,
        partition: TopicPartition,
        #[source]
        source: LogError,
    },
    /// The state holds an entry a newer node wrote: restoring without it would lose it.
    #[error("{0}")]
    Newer(crate::routing::NewerRecord),
    /// The restore made no progress before the partition's end for too long.
    #[error("restoring {partition} stalled before offset {end}")]
    Stalled {
        partition: TopicPartition,
        end: Offset,
    },
}

impl StartError {
    /// Whether starting the shard again can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            StartError::Log { source, .. } => log_error_is_transient(source),
            StartError::Stalled { .. } => true,
            StartError::Newer(_) => false,
        }
    }
}

/// Why a stage failed (its cycle, or creating its consumer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error("could not create the consumer: {0}")]
    Consumer(#[source] LogError),
    #[error("polling: {0}")]
    Poll(#[source] LogError),
    #[error("reading the committed offset of {partition}: {source}")]
    Committed {
        partition: TopicPartition,
        #[source]
        source: LogError,
    },
    #[error("committing: {0}")]
    Commit(#[source] LogError),
    /// A shard failed more often than its restart budget allows.
    #[error("shard {partition} failed {failures} times within {window:?}; last: {last}")]
    ShardBudget {
        partition: TopicPartition,
        failures: u32,
        window: Duration,
        last: String,
    },
    /// A shard met a record a newer node wrote; this node cannot read it.
    #[error("{0}")]
    NewerRecord(crate::routing::NewerRecord),
    /// A shard cannot start, and starting it again cannot help.
    #[error("shard {partition} cannot start: {source}")]
    ShardStart {
        partition: TopicPartition,
        #[source]
        source: StartError,
    },
}

impl StageError {
    /// Whether restarting the stage can mend it. A spent shard budget can: a restarted
    /// stage restores its shards afresh.
    pub fn retryable(&self) -> bool {
        match self {
            StageError::Consumer(e)
            | StageError::Poll(e)
            | StageError::Committed { source: e, .. }
            | StageError::Commit(e) => log_error_is_transient(e),
            StageError::ShardBudget { .. } => true,
            StageError::NewerRecord(_) => false,
            StageError::ShardStart { source, .. } => source.retryable(),
        }
    }

    /// How the stage ends for its supervisor.
    pub fn exit(&self) -> Exit {
        Exit::failure(self.to_string(), self.retryable())
    }
}

/// Why a commit (and so the answers waiting on it) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The partition moved to another node (a rebalance) before the commit: whoever
    /// asked should ask again, and reaches the partition's new owner.
    #[error("the shard moved to another node during the request; retry")]
    Moved,
    #[error("the log refused the write: {0}")]
    Refused(#[source] LogError),
    /// The shard stopped before its changes were committed.
    #[error("the task shard stopped before the change was written; retry")]
    ShardStopped,
}

impl CommitError {
    pub fn from_log(error: &LogError) -> Self {
        match error {
            LogError::NotAssigned(_) => CommitError::Moved,
            other => CommitError::Refused(other.clone()),
        }
    }

    /// Whether asking again can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            CommitError::Moved | CommitError::ShardStopped => true,
            CommitError::Refused(e) => log_error_is_transient(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_partition_is_permanent_and_an_unreachable_log_is_not() {
        let partition = TopicPartition::new("wellspring.d.n.changelog", 3);
        let missing = StartError::Log {
            action: "reading the end of",
            partition: partition.clone(),
            source: LogError::UnknownPartition {
                topic: "wellspring.d.n.changelog".into(),
                partition: 3,
            },
        };
        assert!(!missing.retryable());
        let unreachable = StartError::Log {
            action: "reading",
            partition: partition.clone(),
            source: LogError::Unreachable("no broker".into()),
        };
        assert!(unreachable.retryable());
        assert!(
            StartError::Stalled {
                partition: partition.clone(),
                end: 10
            }
            .retryable()
        );

        let gone = StageError::ShardStart {
            partition: partition.clone(),
            source: missing,
        };
        assert!(matches!(gone.exit(), Exit::Unrecoverable(why) if why.contains("no partition 3")));
        let spent = StageError::ShardBudget {
            partition,
            failures: 6,
            window: Duration::from_secs(60),
            last: "panic: boom".into(),
        };
        assert!(matches!(spent.exit(), Exit::Failed(why) if why.contains("failed 6 times")));
        assert!(!StageError::Poll(LogError::UnknownTopic("t".into())).retryable());
        assert!(StageError::Commit(LogError::Other("aborted".into())).retryable());
    }
}
