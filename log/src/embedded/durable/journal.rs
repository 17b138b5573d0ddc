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
//! state as it stands (compacted, retention applied) is encoded under the state lock and
//! the journal moves on to a fresh `journal-GEN+1.log`; the same background thread then
//! writes the encoded state as `snapshot-GEN+1.snap` and deletes the older files. Until
//! that snapshot is in place, recovery replays the older snapshot and both journals,
//! which hold the same changes.

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
    dir: PathBuf,
    writing: Mutex<Writing>,
    wake: Condvar,
    /// Told when a snapshot is in place (writers held back by one wait on it).
    snapshot_done: Condvar,
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
    /// An encoded snapshot for the background thread to write: `(generation, bytes)`.
    pending_snapshot: Option<(u64, Vec<u8>)>,
    /// A snapshot is pending or being written: no other is started meanwhile.
    snapshot_busy: bool,
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
                pending_snapshot: None,
                snapshot_busy: false,
            }),
            dir: options.dir.clone(),
            wake: Condvar::new(),
            snapshot_done: Condvar::new(),
            synced: sender,
        });
        let thread = {
            let shared = shared.clone();
            let fsync = options.fsync;
            std::thread::Builder::new()
                .name("wellspring-log-sync".into())
                .spawn(move || sync_loop(&shared, fsync))
        };
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(e) => {
                let message: Arc<str> = format!("cannot start the log's sync thread: {e}").into();
                shared.writing.lock().failed = Some(message);
                None
            }
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
        // A journal that outgrows twice its threshold while a snapshot is written waits
        // for it: the disk stays bounded however fast the writes come.
        while w.snapshot_busy
            && w.failed.is_none()
            && w.bytes_since_snapshot >= 2 * self.snapshot_threshold(&w)
        {
            self.shared.snapshot_done.wait(&mut w);
        }
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
            && !w.snapshot_busy
            && w.bytes_since_snapshot >= self.snapshot_threshold(&w)
    }

    /// How much journal calls for a snapshot: the configured size, or twice the last
    /// snapshot when that is more (so rewriting costs at most half of what is written).
    fn snapshot_threshold(&self, w: &Writing) -> u64 {
        self.snapshot_after.max(2 * w.last_snapshot_bytes)
    }

    /// Encodes the log's state as the next generation's snapshot and starts that
    /// generation's journal; the background thread writes the snapshot and deletes the
    /// files before it. The caller holds the state lock, so nothing changes meanwhile.
    pub fn snapshot(
        &self,
        topics: &mut Topics,
        groups: &BTreeMap<String, GroupState>,
        now_ms: i64,
    ) -> Result<(), LogError> {
        topics.clean_up_all(now_ms, |tp| lowest_committed(groups, tp));
        let result = self.start_snapshot(topics, groups);
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

    fn start_snapshot(
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
        w.file = Arc::new(file);
        w.path = segment;
        w.generation = next;
        w.synced = w.written;
        w.bytes_since_snapshot = frame::MAGIC.len() as u64;
        w.last_snapshot_bytes = bytes.len() as u64;
        w.pending_snapshot = Some((next, bytes));
        w.snapshot_busy = true;
        self.shared.synced.send_replace(Synced {
            seq: w.synced,
            failed: None,
        });
        drop(w);
        self.shared.wake.notify_all();
        Ok(())
    }
}

/// Writes snapshot `generation` (to a temporary file, fsynced, renamed into place, the
/// directory fsynced), then deletes the generations before it.
fn write_snapshot_file(dir: &Path, generation: u64, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("snapshot-{generation:020}.tmp"));
    let snapshot = snapshot_path(dir, generation);
    let mut out = File::create(&tmp).map_err(io_error(&tmp, "create"))?;
    out.write_all(bytes)
        .and_then(|()| out.sync_all())
        .map_err(io_error(&tmp, "write"))?;
    std::fs::rename(&tmp, &snapshot).map_err(io_error(&snapshot, "rename into"))?;
    sync_dir(dir)?;
    // The new snapshot holds everything: what came before it can go.
    for old in super::recover::generations_before(dir, generation) {
        for path in [segment_path(dir, old), snapshot_path(dir, old)] {
            if path.exists()
                && let Err(e) = std::fs::remove_file(&path)
            {
                tracing::warn!(file = %path.display(), "cannot delete an old log file: {e}");
            }
        }
    }
    tracing::debug!(generation, bytes = bytes.len(), "log snapshot written");
    Ok(())
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

/// The background thread: fsyncs whatever was written since the last fsync, as soon as
/// there is some (`always`) or every interval (`interval`), and writes pending snapshots.
fn sync_loop(shared: &SyncShared, fsync: Fsync) {
    let mut w = shared.writing.lock();
    loop {
        if let Some((generation, bytes)) = w.pending_snapshot.take() {
            drop(w);
            if let Err(e) = write_snapshot_file(&shared.dir, generation, &bytes) {
                // The journals it would replace stay: nothing is lost, the disk just
                // holds more until the next snapshot.
                tracing::error!("the log's snapshot was not written: {e}");
                let _ =
                    std::fs::remove_file(shared.dir.join(format!("snapshot-{generation:020}.tmp")));
            }
            w = shared.writing.lock();
            w.snapshot_busy = false;
            shared.snapshot_done.notify_all();
            continue;
        }
        if w.shutdown {
            return;
        }
        if fsync != Fsync::Never && w.written > w.synced && w.failed.is_none() {
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
        let idle = (fsync == Fsync::Never || w.written == w.synced || w.failed.is_some())
            && w.pending_snapshot.is_none()
            && !w.shutdown;
        match fsync {
            Fsync::Interval(every) => {
                shared.wake.wait_for(&mut w, every);
            }
            _ if idle => shared.wake.wait(&mut w),
            _ => {}
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
