//! The history of a run: what the harness did and saw, in simulated time. Its digest
//! (with the log's contents) is the run's fingerprint: the same seed gives the same one.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// Simulated milliseconds since the run began.
    pub at_ms: u64,
    pub kind: EventKind,
    pub text: String,
}

/// What an event is about: traces keep every fault and lifecycle event, and the others
/// only when they name what went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Injected faults and node starts and stops.
    Fault,
    /// Consumer-group ownership moved.
    Ownership,
    /// Input published, outputs committed, leases taken and reported.
    Data,
}

/// A shared, append-only history (every part of a run writes to it).
#[derive(Clone)]
pub struct History {
    events: Arc<Mutex<Vec<Event>>>,
    start: Instant,
}

impl History {
    pub fn new() -> Self {
        Self {
            events: Arc::default(),
            start: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn record(&self, kind: EventKind, text: impl Into<String>) {
        let event = Event {
            at_ms: self.now_ms(),
            kind,
            text: text.into(),
        };
        self.events.lock().push(event);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    /// The events that explain a violation about `needles`: every fault and node start
    /// and stop, and the other events that name one of them; the last `limit`.
    pub fn trace(&self, needles: &[String], limit: usize) -> Vec<Event> {
        let events = self.events.lock();
        let relevant: Vec<Event> = events
            .iter()
            .filter(|e| e.kind == EventKind::Fault || needles.iter().any(|n| mentions(&e.text, n)))
            .cloned()
            .collect();
        relevant[relevant.len().saturating_sub(limit)..].to_vec()
    }
}

/// Whether `text` names `key` itself (not a key under it: `EXP-1/1` is not in
/// `EXP-1/1/B02`).
fn mentions(text: &str, key: &str) -> bool {
    !key.is_empty()
        && text
            .match_indices(key)
            .any(|(at, _)| !text[at + key.len()..].starts_with('/'))
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

/// A stable 64-bit digest (SipHash with fixed keys: the same input gives the same digest
/// on every run of the same build).
#[derive(Default)]
pub struct Digest(std::hash::DefaultHasher);

impl Digest {
    pub fn add<T: Hash + ?Sized>(&mut self, value: &T) {
        value.hash(&mut self.0);
    }

    pub fn finish(&self) -> u64 {
        self.0.finish()
    }
}

impl Event {
    pub fn render(&self) -> String {
        let kind = match self.kind {
            EventKind::Fault => "fault",
            EventKind::Ownership => "owner",
            EventKind::Data => "data ",
        };
        format!(
            "{:>5}.{:03}s  {kind}  {}",
            self.at_ms / 1000,
            self.at_ms % 1000,
            self.text
        )
    }
}
