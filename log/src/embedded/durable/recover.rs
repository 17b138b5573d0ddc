//! Opening a data directory: lock it, find the newest snapshot, replay it and every
//! journal segment after it, truncate a torn tail, refuse corruption (naming the file),
//! and hand the last segment to the [`Journal`] to append to.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::entry::Entry;
use super::frame::{self, Tail};
use super::journal::{Journal, create_segment, segment_path, snapshot_path, sync_dir};
use super::{DurableOptions, StorageError};
use crate::embedded::coordinator::GroupState;
use crate::embedded::storage::Topics;

/// The generations of the files in `dir`: `(journals, snapshots)`, each sorted.
fn generations(dir: &Path) -> Result<(Vec<u64>, Vec<u64>), StorageError> {
    let mut journals = Vec::new();
    let mut snapshots = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| StorageError::Io {
        what: "list",
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let parse = |prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .and_then(|n| n.parse::<u64>().ok())
        };
        if let Some(g) = parse("journal-", ".log") {
            journals.push(g);
        } else if let Some(g) = parse("snapshot-", ".snap") {
            snapshots.push(g);
        } else if parse("snapshot-", ".tmp").is_some() {
            // A snapshot that was never finished: the journals it would replace remain.
            let _ = std::fs::remove_file(entry.path());
        }
    }
    journals.sort_unstable();
    snapshots.sort_unstable();
    Ok((journals, snapshots))
}

/// Generations older than `generation` still on disk (journals or snapshots).
pub fn generations_before(dir: &Path, generation: u64) -> Vec<u64> {
    let Ok((journals, snapshots)) = generations(dir) else {
        return Vec::new();
    };
    let mut old: Vec<u64> = journals
        .into_iter()
        .chain(snapshots)
        .filter(|g| *g < generation)
        .collect();
    old.sort_unstable();
    old.dedup();
    old
}

fn read(path: &Path) -> Result<Vec<u8>, StorageError> {
    std::fs::read(path).map_err(|source| StorageError::Io {
        what: "read",
        path: path.to_owned(),
        source,
    })
}

fn corrupt(path: &Path, at: usize, why: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_owned(),
        at: at as u64,
        why: why.into(),
    }
}

/// Applies every payload of a scanned file.
fn replay(
    path: &Path,
    payloads: &[&[u8]],
    topics: &mut Topics,
    groups: &mut BTreeMap<String, GroupState>,
) -> Result<(), StorageError> {
    for (i, payload) in payloads.iter().enumerate() {
        let entry =
            Entry::decode(payload).map_err(|why| corrupt(path, 0, format!("frame {i}: {why}")))?;
        entry
            .apply(topics, groups)
            .map_err(|e| corrupt(path, 0, format!("frame {i}: {e}")))?;
    }
    Ok(())
}

/// Opens (or creates) the data directory and restores the log it holds.
pub fn open(
    options: &DurableOptions,
    topics: &mut Topics,
    groups: &mut BTreeMap<String, GroupState>,
) -> Result<Journal, StorageError> {
    let dir = &options.dir;
    std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
        what: "create the data directory",
        path: dir.clone(),
        source,
    })?;
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| StorageError::Io {
            what: "open",
            path: lock_path.clone(),
            source,
        })?;
    if lock.try_lock().is_err() {
        return Err(StorageError::Locked { dir: dir.clone() });
    }
    let (journals, snapshots) = generations(dir)?;
    let base = snapshots.last().copied().unwrap_or(0);
    let mut snapshot_bytes = 0;
    if let Some(&generation) = snapshots.last() {
        let path = snapshot_path(dir, generation);
        let bytes = read(&path)?;
        let scan = frame::scan(&bytes).map_err(|why| corrupt(&path, 0, why))?;
        // A snapshot is renamed into place only once whole and on disk: any damage is real.
        match scan.tail {
            Tail::Clean => {}
            Tail::Torn => return Err(corrupt(&path, scan.valid_len, "the snapshot ends early")),
            Tail::Corrupt { at, why } => return Err(corrupt(&path, at, why)),
        }
        replay(&path, &scan.payloads, topics, groups)?;
        snapshot_bytes = bytes.len() as u64;
    }
    let segments: Vec<u64> = journals.into_iter().filter(|g| *g >= base).collect();
    for (i, generation) in segments.iter().enumerate() {
        if *generation != base + i as u64 {
            return Err(corrupt(
                &segment_path(dir, base + i as u64),
                0,
                "this journal segment is missing (the segments after it cannot be replayed without it)",
            ));
        }
    }
    let mut journal_bytes = 0;
    let last = segments.last().copied();
    for &generation in &segments {
        let path = segment_path(dir, generation);
        let bytes = read(&path)?;
        let scan = frame::scan(&bytes).map_err(|why| corrupt(&path, 0, why))?;
        replay(&path, &scan.payloads, topics, groups)?;
        match scan.tail {
            Tail::Clean => {}
            Tail::Torn if Some(generation) == last => {
                truncate(&path, scan.valid_len)?;
                tracing::warn!(
                    file = %path.display(),
                    kept = scan.valid_len,
                    dropped = bytes.len() - scan.valid_len,
                    "the log's last write did not finish before the node stopped; truncated to the last complete commit"
                );
            }
            Tail::Torn => {
                return Err(corrupt(
                    &path,
                    scan.valid_len,
                    "a journal segment ends early, and later segments follow it",
                ));
            }
            Tail::Corrupt { at, why } => return Err(corrupt(&path, at, why)),
        }
        journal_bytes += scan.valid_len.max(frame::MAGIC.len()) as u64;
    }
    let (generation, file) = match last {
        Some(generation) => {
            let path = segment_path(dir, generation);
            let mut file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|source| StorageError::Io {
                    what: "open",
                    path: path.clone(),
                    source,
                })?;
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
                // Cut short while its header was written: start it again.
                std::io::Write::write_all(&mut file, frame::MAGIC).map_err(|source| {
                    StorageError::Io {
                        what: "write",
                        path: path.clone(),
                        source,
                    }
                })?;
            }
            (generation, file)
        }
        None => {
            let file = create_segment(&segment_path(dir, base))?;
            sync_dir(dir)?;
            (base, file)
        }
    };
    for old in generations_before(dir, base) {
        for path in [segment_path(dir, old), snapshot_path(dir, old)] {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(Journal::start(
        options,
        lock,
        generation,
        file,
        journal_bytes,
        snapshot_bytes,
    ))
}

fn truncate(path: &PathBuf, len: usize) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| StorageError::Io {
            what: "open",
            path: path.clone(),
            source,
        })?;
    file.set_len(len as u64)
        .and_then(|()| file.sync_all())
        .map_err(|source| StorageError::Io {
            what: "truncate",
            path: path.clone(),
            source,
        })?;
    drop::<File>(file);
    Ok(())
}
