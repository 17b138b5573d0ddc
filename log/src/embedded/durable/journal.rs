//! The journal: the frames of every change since the last snapshot, appended to the
//! current segment (`journal-GEN.log`), and the thread that makes them durable.
//!
//! A writer appends a frame while it holds the log's state lock (so frames are in the
//! order the changes were made) and gets a sequence number; with `--fsync always` the
//! operation is acknowledged only once the sync thread has fsynced past that number. One
//! fsync covers every frame written before it, so concurrent commits share one (group
//! commit). A write or fsync that fails stops the journal: every later operation fails
//! with the error, and nothing more is acknowledged.
//!
//! Snapshots bound the disk: once the journal has grown past its threshold, the log's
//! state as it stands (compacted, retention applied) is written as `snapshot-GEN+1.snap`
//! beside a fresh `journal-GEN+1.log`, and the older files are deleted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::entry::Entry;
use super::frame;
use super::{DurableOptions, Fsync, StorageError};
use crate::LogError;
use crate::embedded::coordinator::GroupState;
use crate::embedded::storage::Topics;

/// Records per frame in a snapshot.
const SNAPSHOT_CHUNK: usize = 512;

pub(in crate::embedded) struct Journal {
    dir: PathBuf,
    fsync: Fsync,
    snapshot_after: u64,
    shared: Arc<SyncShared>,
    synced: watch::Receiver<Synced>,
    thread: Option<JoinHandle<()>>,
    /// Held for the journal's life: one process per data directory.
    _lock: File,
}

struct SyncShared {
    writing: Mutex<Writing>,
    wake: Condvar,
    synced: watch::Sender<Synced>,
}

struct Writing {
    file: Arc<File>,
    path: PathBuf,
    generation: u64,
    /// Frames written, and frames known durable.
    written: u64,
    synced: u64,
    bytes_since_snapshot: u64,
    last_snapshot_bytes: u64,
    failed: Option<Arc<str>>,
    shutdown: bool,
}

#[derive(Clone, Default)]
struct Synced {
    seq: u64,
    failed: Option<Arc<str>>,
}

pub fn segment_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:020}.log"))
}

pub fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot-{generation:020}.snap"))
}

fn io_error(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_owned();
    move |source| StorageError::Io { what, path, source }
}

/// Makes a directory entry (a new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "sync the directory"))
}

/// Creates an empty segment (its header only, durable).
pub fn create_segment(path: &Path) -> Result<File, StorageError> {
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)
        .map_err(io_error(path, "create"))?;
    file.write_all(frame::MAGIC)
        .and_then(|()| file.sync_data())
        .map_err(io_error(path, "write"))?;
    Ok(file)
}

impl Journal {
    /// The journal appending to segment `generation` (open, already restored from), which
    /// holds `journal_bytes`, after a snapshot of `snapshot_bytes`.
    pub fn start(
        options: &DurableOptions,
        lock: File,
        generation: u64,
        file: File,
        journal_bytes: u64,
        snapshot_bytes: u64,
    ) -> Self {
        let (sender, receiver) = watch::channel(Synced::default());
        let shared = Arc::new(SyncShared {
            writing: Mutex::new(Writing {
                file: Arc::new(file),
                path: segment_path(&options.dir, generation),
                generation,
                written: 0,
                synced: 0,
                bytes_since_snapshot: journal_bytes,
                last_snapshot_bytes: snapshot_bytes,
                failed: None,
                shutdown: false,
            }),
            wake: Condvar::new(),
            synced: sender,
        });
        let thread = (options.fsync != Fsync::Never).then(|| {
            let shared = shared.clone();
            let fsync = options.fsync;
            std::thread::Builder::new()
                .name("wellspring-log-fsync".into())
                .spawn(move || sync_loop(&shared, fsync))
        });
        let thread = match thread {
            Some(Ok(handle)) => Some(handle),
            Some(Err(e)) => {
                let message: Arc<str> = format!("cannot start the fsync thread: {e}").into();
                shared.writing.lock().failed = Some(message);
                None
            }
            None => None,
        };
        Self {
            dir: options.dir.clone(),
            fsync: options.fsync,
            snapshot_after: options.snapshot_after_bytes,
            shared,
            synced: receiver,
            thread,
            _lock: lock,
        }
    }

    pub fn describe(&self) -> String {
        format!("the embedded log (on disk in {})", self.dir.display())
    }

    /// Appends one change; its sequence number, to wait on with [`Journal::durable`].
    pub fn write(&self, entry: &Entry) -> Result<u64, LogError> {
        let payload = entry.encode()?;
        let mut bytes = Vec::with_capacity(payload.len() + frame::HEADER);
        frame::encode(&payload, &mut bytes);
        let mut w = self.shared.writing.lock();
        if let Some(failed) = &w.failed {
            return Err(stopped(failed));
        }
        if let Err(e) = (&*w.file).write_all(&bytes) {
            let message: Arc<str> = format!("cannot write {}: {e}", w.path.display()).into();
            w.failed = Some(message.clone());
            self.shared.synced.send_replace(Synced {
                seq: w.synced,
                failed: Some(message.clone()),
            });
            return Err(stopped(&message));
        }
        w.written += 1;
        w.bytes_since_snapshot += bytes.len() as u64;
        if self.fsync == Fsync::Always {
            self.shared.wake.notify_one();
        }
        Ok(w.written)
    }

    /// Resolves once change `seq` is on disk (at once unless fsync is `always`).
    pub async fn durable(&self, seq: u64) -> Result<(), LogError> {
        if self.fsync != Fsync::Always {
            return match &self.shared.writing.lock().failed {
                Some(failed) => Err(stopped(failed)),
                None => Ok(()),
            };
        }
        let mut synced = self.synced.clone();
        let state = synced
            .wait_for(|s| s.seq >= seq || s.failed.is_some())
            .await
            .map_err(|_| LogError::Other("the durable log was closed".into()))?
            .clone();
        match state.failed {
            Some(failed) if state.seq < seq => Err(stopped(&failed)),
            _ => Ok(()),
        }
    }

    /// Whether the journal has grown enough since the last snapshot to take one.
    pub fn wants_snapshot(&self) -> bool {
        let w = self.shared.writing.lock();
        w.failed.is_none()
            && w.bytes_since_snapshot >= self.snapshot_after.max(2 * w.last_snapshot_bytes)
    }

    /// Writes the log's state as the next generation's snapshot, starts that
    /// generation's journal, and deletes the files before it. The caller holds the state
    /// lock, so nothing changes meanwhile.
    pub fn snapshot(
        &self,
        topics: &mut Topics,
        groups: &BTreeMap<String, GroupState>,
        now_ms: i64,
    ) -> Result<(), LogError> {
        topics.clean_up_all(now_ms, |tp| lowest_committed(groups, tp));
        let result = self.write_snapshot(topics, groups);
        if let Err(e) = &result {
            let message: Arc<str> = e.to_string().into();
            let mut w = self.shared.writing.lock();
            w.failed = Some(message.clone());
            self.shared.synced.send_replace(Synced {
                seq: w.synced,
                failed: Some(message),
            });
        }
        result.map_err(|e| LogError::Unreachable(e.to_string()))
    }

    fn write_snapshot(
        &self,
        topics: &Topics,
        groups: &BTreeMap<String, GroupState>,
    ) -> Result<(), StorageError> {
        let mut bytes = frame::MAGIC.to_vec();
        for entry in snapshot_entries(topics, groups) {
            let payload = entry.encode().map_err(|e| StorageError::Io {
                what: "encode a snapshot for",
                path: self.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            frame::encode(&payload, &mut bytes);
        }
        let mut w = self.shared.writing.lock();
        let next = w.generation + 1;
        // Everything written so far is durable before the journal moves on.
        w.file.sync_data().map_err(io_error(&w.path, "fsync"))?;
        let segment = segment_path(&self.dir, next);
        let file = create_segment(&segment)?;
        sync_dir(&self.dir)?;
        let tmp = self.dir.join(format!("snapshot-{next:020}.tmp"));
        let snapshot = snapshot_path(&self.dir, next);
        let mut out = File::create(&tmp).map_err(io_error(&tmp, "create"))?;
        out.write_all(&bytes)
            .and_then(|()| out.sync_all())
            .map_err(io_error(&tmp, "write"))?;
        std::fs::rename(&tmp, &snapshot).map_err(io_error(&snapshot, "rename into"))?;
        sync_dir(&self.dir)?;
        let old = w.generation;
        w.file = Arc::new(file);
        w.path = segment;
        w.generation = next;
        w.synced = w.written;
        w.bytes_since_snapshot = frame::MAGIC.len() as u64;
        w.last_snapshot_bytes = bytes.len() as u64;
        self.shared.synced.send_replace(Synced {
            seq: w.synced,
            failed: None,
        });
        drop(w);
        // The new snapshot holds everything: what came before it can go.
        for generation in super::recover::generations_before(&self.dir, next) {
            for path in [
                segment_path(&self.dir, generation),
                snapshot_path(&self.dir, generation),
            ] {
                if path.exists()
                    && let Err(e) = std::fs::remove_file(&path)
                {
                    tracing::warn!(file = %path.display(), "cannot delete an old log file: {e}");
                }
            }
        }
        tracing::debug!(
            generation = next,
            previous = old,
            bytes = bytes.len(),
            "log snapshot written"
        );
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        {
            let mut w = self.shared.writing.lock();
            w.shutdown = true;
            // Whatever the fsync policy, a clean stop leaves everything on disk.
            if w.failed.is_none()
                && let Err(e) = w.file.sync_data()
            {
                tracing::warn!(file = %w.path.display(), "cannot fsync the log on close: {e}");
            }
        }
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The lowest offset any group committed in `tp`: retention keeps everything from there.
pub(in crate::embedded) fn lowest_committed(
    groups: &BTreeMap<String, GroupState>,
    tp: &crate::TopicPartition,
) -> Option<crate::Offset> {
    groups.values().filter_map(|g| g.committed(tp)).min()
}

fn stopped(failed: &str) -> LogError {
    LogError::Unreachable(format!(
        "the durable log stopped: {failed}; restart the node once the disk is fixed"
    ))
}

/// The sync thread: fsyncs whatever was written since the last fsync, as soon as there is
/// some (`always`) or every interval (`interval`).
fn sync_loop(shared: &SyncShared, fsync: Fsync) {
    let mut w = shared.writing.lock();
    loop {
        if w.shutdown {
            return;
        }
        if w.written > w.synced && w.failed.is_none() {
            let (file, target, path) = (w.file.clone(), w.written, w.path.clone());
            drop(w);
            let result = file.sync_data();
            w = shared.writing.lock();
            match result {
                Ok(()) => w.synced = w.synced.max(target),
                Err(e) => w.failed = Some(format!("cannot fsync {}: {e}", path.display()).into()),
            }
            shared.synced.send_replace(Synced {
                seq: w.synced,
                failed: w.failed.clone(),
            });
        }
        match fsync {
            Fsync::Interval(every) => {
                shared.wake.wait_for(&mut w, every);
            }
            _ => {
                if w.written == w.synced && !w.shutdown {
                    shared.wake.wait(&mut w);
                }
            }
        }
    }
}

/// The state as entries: each topic, its records and high watermarks, then each group's
/// committed offsets.
fn snapshot_entries<'a>(
    topics: &'a Topics,
    groups: &'a BTreeMap<String, GroupState>,
) -> impl Iterator<Item = Entry> + 'a {
    let topic_entries = topics.iter().flat_map(|topic| {
        let name = topic.spec.name.clone();
        std::iter::once(Entry::topic(&topic.spec)).chain(
            topic
                .partitions()
                .iter()
                .enumerate()
                .flat_map(move |(p, log)| {
                    let tp = crate::TopicPartition::new(name.as_str(), p as u32);
                    let stored: Vec<_> = log.stored().collect();
                    let chunks: Vec<Entry> = stored
                        .chunks(SNAPSHOT_CHUNK)
                        .map(|chunk| Entry::batch(chunk.iter().map(|r| (&tp, *r)), None))
                        .collect();
                    chunks.into_iter().chain(std::iter::once(Entry::NextOffset {
                        topic: tp.topic.to_string(),
                        partition: tp.partition,
                        next_offset: log.next_offset,
                    }))
                }),
        )
    });
    let group_entries = groups.iter().filter_map(|(name, group)| {
        let offsets: Vec<_> = group
            .committed_offsets()
            .map(|(tp, o)| (tp.clone(), o))
            .collect();
        (!offsets.is_empty()).then(|| Entry::batch([], Some((name.as_str(), &offsets))))
    });
    topic_entries.chain(group_entries)
}
