//! The embedded log on disk (`wellspring run --data-dir DIR`): the same topics and
//! groups as in memory, with every change journaled before it is acknowledged, and the
//! whole state restored from the directory when the node starts again.
//!
//! Files in the directory, each a magic header then CRC-checked frames (`frame.rs`), each
//! frame one change (`entry.rs`):
//! - `snapshot-GEN.snap`: the log's whole state when generation GEN began (none for
//!   generation 0);
//! - `journal-GEN.log`: every change since, in order (`journal.rs`);
//! - `LOCK`: held while a process has the directory open.
//!
//! On open (`recover.rs`): the newest snapshot, then the journals from its generation on;
//! a torn tail of the last journal is truncated to its last complete frame, and any other
//! damage stops the node with an error naming the file.

mod entry;
mod frame;
mod journal;
mod recover;

use std::path::PathBuf;
use std::time::Duration;

pub(super) use entry::Entry;
pub(super) use journal::{Journal, lowest_committed};
pub(super) use recover::open;

pub use super::storage::Retention;

/// When the journal is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before every append and commit is acknowledged (concurrent ones share an fsync).
    Always,
    /// Every interval: a crash loses at most the last interval's acknowledged work.
    Interval(Duration),
    /// When the operating system writes back: a crash of the machine (not of the
    /// process) can lose acknowledged work.
    Never,
}

/// Where and how the durable embedded log keeps its data.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub retention: Retention,
    /// Take a snapshot (and drop the journal before it) once the journal holds this many
    /// bytes, or twice the last snapshot if that is more.
    pub snapshot_after_bytes: u64,
}

impl DurableOptions {
    /// Defaults: fsync always, records of `Delete` topics kept 7 days, a snapshot every
    /// 64 MiB of journal.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fsync: Fsync::Always,
            retention: Retention {
                max_age: Some(Duration::from_secs(7 * 24 * 3600)),
                max_bytes: None,
            },
            snapshot_after_bytes: 64 << 20,
        }
    }
}

/// Why a data directory cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged at byte {at}: {why}. The node stops rather than run without what it held; restore the directory from a backup, or move this file away to start without it (and lose what it held)"
    )]
    Corrupt { path: PathBuf, at: u64, why: String },
    #[error(
        "the data directory {dir} is in use by another process (another `wellspring run --data-dir` on it?); stop that one first"
    )]
    Locked { dir: PathBuf },
}
