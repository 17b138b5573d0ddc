//! `--data-dir` and its companions: the embedded log kept on disk (`run`), and a stopped
//! node's log opened to be read (`verify`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use wellspring_log::{DurableOptions, EmbeddedLog, Fsync, Log, Retention, StorageError};

use super::{CliError, flags};

/// When the durable log fsyncs its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsyncPolicy {
    /// Before every append and commit is acknowledged (concurrent ones share an fsync).
    Always,
    /// Every --fsync-interval: a machine crash loses at most that much acknowledged work.
    Interval,
    /// When the operating system writes back: a machine crash can lose acknowledged work
    /// (a crash of the process alone loses nothing).
    Never,
}

#[derive(Args, Debug, Clone)]
pub struct DataDirArgs {
    /// Keep the embedded log on disk in DIR (created if missing): a restarted node
    /// restores its topics, committed offsets and tasks from it. Without it (and without
    /// --kafka) the log lives in memory and is lost when the node stops.
    #[arg(long, value_name = "DIR", env = "WELLSPRING_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When the journal is fsynced (with --data-dir).
    #[arg(long, value_enum, default_value_t = FsyncPolicy::Always)]
    fsync: FsyncPolicy,
    /// How often with --fsync interval.
    #[arg(long, default_value = "100ms", value_parser = flags::duration_at_least(Duration::from_millis(1)))]
    fsync_interval: Duration,
    /// How long records of input and output topics are kept on disk, but never one a
    /// consumer group has yet to process (changelogs and the task store keep the latest
    /// value of each key, however old). 0s keeps them forever.
    #[arg(long, default_value = "7d", value_parser = flags::duration)]
    retention: Duration,
    /// Also drop the oldest records of an input or output topic's partition once it holds
    /// more than this many bytes (processed ones only, as for --retention).
    #[arg(long, value_name = "BYTES")]
    retention_bytes: Option<u64>,
}

impl DataDirArgs {
    fn options(&self, dir: PathBuf) -> DurableOptions {
        let mut options = DurableOptions::new(dir);
        options.fsync = match self.fsync {
            FsyncPolicy::Always => Fsync::Always,
            FsyncPolicy::Interval => Fsync::Interval(self.fsync_interval),
            FsyncPolicy::Never => Fsync::Never,
        };
        options.retention = Retention {
            max_age: (!self.retention.is_zero()).then_some(self.retention),
            max_bytes: self.retention_bytes,
        };
        options
    }

    /// The durable embedded log when --data-dir was given.
    pub fn open(&self) -> Result<Option<Arc<dyn Log>>, CliError> {
        let Some(dir) = &self.data_dir else {
            return Ok(None);
        };
        let log = open_dir(self.options(dir.clone()))?;
        Ok(Some(Arc::new(log)))
    }
}

/// Opens a data directory, in plain words when it cannot be (its error says what to do).
pub fn open_dir(options: DurableOptions) -> Result<EmbeddedLog, CliError> {
    EmbeddedLog::open(options).map_err(|e: StorageError| CliError::could_not_run(e.to_string()))
}
