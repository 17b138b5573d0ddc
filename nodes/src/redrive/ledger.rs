//! The redrive ledger: a compacted topic keyed by dead-letter id, one entry per dead
//! letter (the latest), read whole before every redrive.
//!
//! Each redrive writes `sending` (with the target partition's end) before it sends the
//! record and `sent` (with the record's offset) after. A crash in between leaves
//! `sending`: the next redrive of that dead letter looks for the record past the end it
//! noted (by its `wellspring-redrive-of` header) and, if it is there, only writes `sent`.
//! So a dead letter is sent back once, crash or not, unless `again` asks for one more.

use std::collections::HashMap;

use bytes::Bytes;
use wellspring_log::{Cleanup, ProducerRecord, TopicSpec};
use wellspring_protocol::redrive::{LedgerEntry, LedgerState};

/// The ledger's topic: one per cluster (dead-letter ids name their DAG's topic).
pub fn topic(prefix: &str) -> TopicSpec {
    TopicSpec::new(format!("{prefix}dead-letter-redrives"), 1, Cleanup::Compact)
}

/// The latest entry of every dead letter redriven so far.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: HashMap<String, LedgerEntry>,
}

impl Ledger {
    /// Applies one record of the ledger topic (in order; later entries win). An
    /// unreadable record (a newer version's) is skipped, keeping the entry before it.
    pub fn apply(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) {
        let Some(key) = key.map(|k| String::from_utf8_lossy(k).into_owned()) else {
            return;
        };
        match value.map(serde_json::from_slice::<LedgerEntry>) {
            Some(Ok(entry)) => {
                self.entries.insert(key, entry);
            }
            Some(Err(e)) => {
                tracing::warn!(%key, "skipping an unreadable redrive ledger entry: {e}")
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }

    pub fn get(&self, dead_letter: &str) -> Option<&LedgerEntry> {
        self.entries.get(dead_letter)
    }
}

/// What to do with one selected dead letter, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send it back; this is redrive number `count`.
    Send { count: u32 },
    /// It went back `count` times already; nothing to do without `again`.
    AlreadySent { count: u32 },
}

/// What the ledger says about one selected dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Known(Outcome),
    /// A redrive that may have sent it before a crash: look for its record from
    /// `entry.from_offset`, then [`settle`].
    Unsure {
        entry: LedgerEntry,
    },
}

/// The decision for a dead letter whose latest ledger entry is `entry`.
pub fn decide(entry: Option<&LedgerEntry>, again: bool) -> Decision {
    match entry {
        None => Decision::Known(Outcome::Send { count: 1 }),
        Some(entry) if entry.state == LedgerState::Sending => Decision::Unsure {
            entry: entry.clone(),
        },
        Some(entry) if again => Decision::Known(Outcome::Send {
            count: entry.count + 1,
        }),
        Some(entry) => Decision::Known(Outcome::AlreadySent { count: entry.count }),
    }
}

/// An unsure redrive once its record was looked for: found at `found`, it was sent (the
/// entry to write says so, and it counts as sent); not found, it never went out and is
/// sent now.
pub fn settle(
    entry: &LedgerEntry,
    found: Option<u64>,
    again: bool,
) -> (Option<LedgerEntry>, Outcome) {
    match found {
        Some(offset) => {
            let outcome = if again {
                Outcome::Send {
                    count: entry.count + 1,
                }
            } else {
                Outcome::AlreadySent { count: entry.count }
            };
            let sent = LedgerEntry {
                state: LedgerState::Sent,
                offset: Some(offset),
                ..entry.clone()
            };
            (Some(sent), outcome)
        }
        None => (None, Outcome::Send { count: entry.count }),
    }
}

/// The ledger record of `entry`.
pub fn record(topic: &str, entry: &LedgerEntry) -> ProducerRecord {
    ProducerRecord {
        topic: topic.into(),
        partition: Some(0),
        key: Some(Bytes::from(entry.dead_letter.clone())),
        value: serde_json::to_vec(entry).ok().map(Bytes::from),
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: LedgerState, count: u32) -> LedgerEntry {
        LedgerEntry {
            dead_letter: "dl-1".into(),
            state,
            topic: "wellspring.lab.features.input".into(),
            partition: 1,
            from_offset: 40,
            offset: (state == LedgerState::Sent).then_some(41),
            count,
            at_ms: 5,
        }
    }

    #[test]
    fn a_dead_letter_goes_back_once_unless_again() {
        let known = |o| Decision::Known(o);
        assert_eq!(decide(None, false), known(Outcome::Send { count: 1 }));
        assert_eq!(decide(None, true), known(Outcome::Send { count: 1 }));
        let sent = entry(LedgerState::Sent, 1);
        assert_eq!(
            decide(Some(&sent), false),
            known(Outcome::AlreadySent { count: 1 })
        );
        assert_eq!(decide(Some(&sent), true), known(Outcome::Send { count: 2 }));
    }

    #[test]
    fn a_redrive_cut_short_is_finished_by_what_is_on_the_log() {
        let sending = entry(LedgerState::Sending, 2);
        let Decision::Unsure { entry: unsure } = decide(Some(&sending), false) else {
            panic!("a sending entry is unsure");
        };
        // The record made it before the crash: recorded as sent, not sent again.
        let (write, decision) = settle(&unsure, Some(44), false);
        let written = write.unwrap();
        assert_eq!(
            (written.state, written.offset, written.count),
            (LedgerState::Sent, Some(44), 2)
        );
        assert_eq!(decision, Outcome::AlreadySent { count: 2 });
        // ... and with `again`, once more.
        assert_eq!(
            settle(&unsure, Some(44), true).1,
            Outcome::Send { count: 3 }
        );
        // It never went out: it goes now, still as redrive number 2.
        assert_eq!(
            settle(&unsure, None, false),
            (None, Outcome::Send { count: 2 })
        );
    }

    #[test]
    fn the_ledger_keeps_the_latest_entry_per_dead_letter() {
        let mut ledger = Ledger::default();
        let first = entry(LedgerState::Sending, 1);
        let second = entry(LedgerState::Sent, 1);
        for e in [&first, &second] {
            let r = record("t", e);
            ledger.apply(r.key.as_deref(), r.value.as_deref());
        }
        assert_eq!(ledger.get("dl-1"), Some(&second));
        ledger.apply(Some(b"dl-1"), Some(b"{not json"));
        assert_eq!(
            ledger.get("dl-1"),
            Some(&second),
            "unreadable entries are skipped"
        );
        ledger.apply(Some(b"dl-1"), None);
        assert_eq!(ledger.get("dl-1"), None, "a tombstone forgets it");
    }
}
