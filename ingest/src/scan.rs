//! Scanning a folder an imager writes: which files are there, which have stopped
//! changing, and which were already published.
//!
//! A file is *stable* once its size and modification time have stayed the same for the
//! settle time: an imager (or a copy from the acquisition PC) still writing it changes
//! one or the other. The published files are kept in a state file, one path (below the
//! folder) a line, appended after each batch is acknowledged: a rescan publishes nothing
//! new, and a lost state file costs only a republish, which the engine drops (the record
//! key is the image's channel key, read from the file's location).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A file as one look at it saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    size: u64,
    modified: Option<SystemTime>,
}

/// Why a folder cannot be scanned or its state kept.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read the folder {path}: {reason}")]
    Folder { path: String, reason: String },
    #[error("cannot read or write the state file {path}: {reason}")]
    State { path: String, reason: String },
}

/// What a folder holds: its files (paths below it, sorted), every file but hidden ones
/// and the state file, and what could not be read below it.
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    /// Folders or files below the root that could not be read (permissions, a link
    /// loop), in words: reported, and the rest of the folder is still scanned.
    pub unreadable: Vec<String>,
}

/// Lists the folder `root`, leaving out `skip` (the state file); fails only when `root`
/// itself cannot be read.
pub fn list_files(root: &Path, skip: Option<&Path>) -> Result<Listing, ScanError> {
    let mut listing = Listing::default();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.depth() == 0 => {
                return Err(ScanError::Folder {
                    path: root.display().to_string(),
                    reason: e.to_string(),
                });
            }
            Err(e) => {
                listing.unreadable.push(e.to_string());
                continue;
            }
        };
        if !entry.file_type().is_file() || Some(entry.path()) == skip {
            continue;
        }
        let relative = entry.path().strip_prefix(root).unwrap_or(entry.path());
        listing.files.push(relative.to_path_buf());
    }
    Ok(listing)
}

/// Which files have stopped changing.
#[derive(Debug)]
pub struct Stability {
    settle: Duration,
    /// Each file's last look and since when it has looked that way.
    looks: HashMap<PathBuf, (Look, Instant)>,
}

impl Stability {
    pub fn new(settle: Duration) -> Self {
        Self {
            settle,
            looks: HashMap::new(),
        }
    }

    /// Looks at `relative` (below `root`) now: whether it has stayed the same (and is not
    /// empty) for the settle time. A file that vanished is forgotten.
    pub fn is_stable(&mut self, root: &Path, relative: &Path) -> bool {
        let now = Instant::now();
        let Ok(metadata) = std::fs::metadata(root.join(relative)) else {
            self.looks.remove(relative);
            return false;
        };
        let look = Look {
            size: metadata.len(),
            modified: metadata.modified().ok(),
        };
        let since = match self.looks.get(relative) {
            Some((previous, since)) if *previous == look => *since,
            _ => {
                self.looks.insert(relative.to_path_buf(), (look, now));
                now
            }
        };
        look.size > 0 && now.duration_since(since) >= self.settle
    }

    /// Forgets a file (once published, it is not looked at again).
    pub fn forget(&mut self, relative: &Path) {
        self.looks.remove(relative);
    }
}

/// The files already published, kept in a file.
#[derive(Debug)]
pub struct State {
    path: Option<PathBuf>,
    published: HashSet<PathBuf>,
    /// The file ends in a torn line: the next append starts a new one.
    torn: bool,
}

impl State {
    /// A state that lives in memory only (a dry run reads the file but never writes it).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            published: HashSet::new(),
            torn: false,
        }
    }

    /// The state kept at `path` (read now when it exists; created at the first publish).
    pub fn open(path: &Path, writable: bool) -> Result<Self, ScanError> {
        let error = |e: std::io::Error| ScanError::State {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut published = HashSet::new();
        let mut torn = false;
        match File::open(path) {
            Ok(file) => {
                let mut reader = BufReader::new(file);
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).map_err(error)? == 0 {
                        break;
                    }
                    torn = !line.ends_with('\n');
                    let line = line.trim_end_matches('\n');
                    // A torn last line (a crash while appending) is a path not yet published.
                    if let Some(done) = line.strip_suffix('\t') {
                        published.insert(PathBuf::from(done));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(e)),
        }
        Ok(Self {
            path: writable.then(|| path.to_path_buf()),
            published,
            torn,
        })
    }

    pub fn is_published(&self, relative: &Path) -> bool {
        self.published.contains(relative)
    }

    pub fn published(&self) -> impl Iterator<Item = &PathBuf> {
        self.published.iter()
    }

    /// Records `files` as published, on disk (synced) before it returns.
    pub fn mark_published(&mut self, files: &[PathBuf]) -> Result<(), ScanError> {
        if let Some(path) = &self.path {
            let error = |e: std::io::Error| ScanError::State {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(error)?;
            let mut text = String::new();
            if self.torn {
                text.push('\n');
            }
            for relative in files {
                text.push_str(&relative.to_string_lossy());
                // The tab ends a complete line: a torn line is not taken as published.
                text.push_str("\t\n");
            }
            file.write_all(text.as_bytes()).map_err(error)?;
            file.sync_data().map_err(error)?;
            self.torn = false;
        }
        self.published.extend(files.iter().cloned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wellspring-scan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_file_is_stable_once_it_stops_changing() {
        let dir = folder("stable");
        let file = Path::new("a.tif");
        std::fs::write(dir.join(file), b"12").unwrap();
        let mut stability = Stability::new(Duration::from_millis(50));
        assert!(!stability.is_stable(&dir, file), "just seen");
        std::thread::sleep(Duration::from_millis(60));
        std::fs::write(dir.join(file), b"1234").unwrap();
        assert!(!stability.is_stable(&dir, file), "it grew");
        std::thread::sleep(Duration::from_millis(60));
        assert!(stability.is_stable(&dir, file));
        std::fs::write(dir.join("empty.tif"), b"").unwrap();
        let mut immediate = Stability::new(Duration::ZERO);
        assert!(immediate.is_stable(&dir, file));
        assert!(!immediate.is_stable(&dir, Path::new("empty.tif")), "empty");
        assert!(!immediate.is_stable(&dir, Path::new("gone.tif")));
    }

    #[test]
    fn the_state_survives_a_reopen_and_a_torn_line() {
        let dir = folder("state");
        let path = dir.join("state");
        let mut state = State::open(&path, true).unwrap();
        state
            .mark_published(&[PathBuf::from("P/a.tif"), PathBuf::from("b c.tif")])
            .unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"torn.ti").unwrap();
        let mut reopened = State::open(&path, true).unwrap();
        reopened.mark_published(&[PathBuf::from("d.tif")]).unwrap();
        let reopened = State::open(&path, true).unwrap();
        assert!(reopened.is_published(Path::new("d.tif")));
        assert!(reopened.is_published(Path::new("P/a.tif")));
        assert!(reopened.is_published(Path::new("b c.tif")));
        assert!(!reopened.is_published(Path::new("torn.ti")));
        let listed = list_files(&dir, Some(&path)).unwrap();
        assert!(listed.files.is_empty(), "{listed:?}");
        assert!(list_files(&dir.join("missing"), None).is_err());
    }
}
