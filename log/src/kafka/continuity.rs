//! Holes in what a broker serves of a partition, found and read again.
//!
//! Without transactions every record of a partition that is not compacted has the next
//! offset: nothing else (no transaction markers, no aborted records) takes one. So a
//! consumer reading such a topic with transactions off expects each partition's records
//! at consecutive offsets, and a record further on means the broker skipped the records
//! in between.
//!
//! Brokers do this: tansu 0.6 and nisshi 0.8.1, when two or more producers append to a
//! partition at once, answer a fetch with a later batch while an earlier one is not
//! readable yet. The follower's position then moves past the earlier batch, which stays
//! in the log unread; read again a moment later, it is there. (In Wellspring that is
//! every `…input` topic of a cluster: each node's upstream stage writes to it. The lost
//! records were a site grouping's inputs: the site never completed.)
//!
//! So a hole is read again from its start. A hole that is still there after
//! [`HOLE_REREADS`] rereads and [`HOLE_PATIENCE`] is taken as real (a compacted topic, or
//! records an outside producer wrote in transactions) and read past, with a warning.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{Offset, TopicPartition};

/// Rereads of the same hole before it may be taken as real.
pub(super) const HOLE_REREADS: u32 = 3;
/// How long the same hole must last before it is taken as real.
pub(super) const HOLE_PATIENCE: Duration = Duration::from_millis(500);

/// What to do with a record, by its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The record follows what came before (or nothing is known yet): take it.
    Take,
    /// Records `from..to` were skipped: drop this record and read again from `from`.
    Reread { from: Offset, to: Offset },
    /// Records `from..to` stayed missing through every reread: take the record and go on.
    ReadPast { from: Offset, to: Offset },
}

/// A hole being read again.
#[derive(Debug, Clone, Copy)]
struct Hole {
    from: Offset,
    to: Offset,
    rereads: u32,
    since: Instant,
}

/// The next offset expected of each partition, and the holes being read again.
#[derive(Debug, Default)]
pub(super) struct Continuity {
    next: HashMap<TopicPartition, Offset>,
    holes: HashMap<TopicPartition, Hole>,
}

impl Continuity {
    /// The partition's next record is at `offset` (assigned from there, or sought).
    pub fn starts(&mut self, partition: &TopicPartition, offset: Offset) {
        self.next.insert(partition.clone(), offset);
    }

    /// The partition is not read any more.
    pub fn forget(&mut self, partition: &TopicPartition) {
        self.next.remove(partition);
        self.holes.remove(partition);
    }

    /// Judges the record of `partition` at `offset`, the next one served.
    pub fn check(&mut self, partition: &TopicPartition, offset: Offset, now: Instant) -> Verdict {
        let Some(next) = self.next.get_mut(partition) else {
            self.next.insert(partition.clone(), offset + 1);
            return Verdict::Take;
        };
        // At the expected offset, or before it (the client started earlier than the
        // position found on assignment): a repeat is harmless, a skip is not.
        if offset <= *next {
            *next = offset + 1;
            self.holes.remove(partition);
            return Verdict::Take;
        }
        let from = *next;
        let fresh = Hole {
            from,
            to: offset,
            rereads: 0,
            since: now,
        };
        let hole = self.holes.entry(partition.clone()).or_insert(fresh);
        if (hole.from, hole.to) != (from, offset) {
            *hole = fresh;
        }
        hole.rereads += 1;
        if hole.rereads > HOLE_REREADS && now.duration_since(hole.since) >= HOLE_PATIENCE {
            self.holes.remove(partition);
            *next = offset + 1;
            return Verdict::ReadPast { from, to: offset };
        }
        Verdict::Reread { from, to: offset }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        TopicPartition::new("in", 3)
    }

    #[test]
    fn consecutive_records_are_taken() {
        let mut c = Continuity::default();
        let now = Instant::now();
        c.starts(&tp(), 10);
        for offset in 10..20 {
            assert_eq!(c.check(&tp(), offset, now), Verdict::Take);
        }
    }

    #[test]
    fn a_skipped_batch_is_read_again_from_where_it_starts() {
        let mut c = Continuity::default();
        let now = Instant::now();
        c.starts(&tp(), 396);
        assert_eq!(
            c.check(&tp(), 407, now),
            Verdict::Reread { from: 396, to: 407 }
        );
        // Read again from 396: the batch is there now.
        c.starts(&tp(), 396);
        for offset in 396..=407 {
            assert_eq!(c.check(&tp(), offset, now), Verdict::Take);
        }
        assert_eq!(
            c.check(&tp(), 409, now),
            Verdict::Reread { from: 408, to: 409 }
        );
    }

    #[test]
    fn a_hole_that_stays_is_read_past_only_after_rereads_and_patience() {
        let mut c = Continuity::default();
        let start = Instant::now();
        c.starts(&tp(), 5);
        // Many rereads at once are not enough: the patience has not passed.
        for _ in 0..10 {
            assert_eq!(c.check(&tp(), 6, start), Verdict::Reread { from: 5, to: 6 });
        }
        // Patience alone is not enough either, on a fresh hole.
        let mut d = Continuity::default();
        d.starts(&tp(), 5);
        assert_eq!(d.check(&tp(), 6, start), Verdict::Reread { from: 5, to: 6 });
        assert_eq!(
            d.check(&tp(), 6, start + HOLE_PATIENCE),
            Verdict::Reread { from: 5, to: 6 }
        );
        // Both: the hole is real (a transaction marker, a compacted record).
        assert_eq!(
            c.check(&tp(), 6, start + HOLE_PATIENCE),
            Verdict::ReadPast { from: 5, to: 6 }
        );
        assert_eq!(c.check(&tp(), 7, start + HOLE_PATIENCE), Verdict::Take);
    }

    #[test]
    fn a_different_hole_starts_its_patience_again() {
        let mut c = Continuity::default();
        let start = Instant::now();
        c.starts(&tp(), 5);
        for _ in 0..=HOLE_REREADS {
            c.check(&tp(), 9, start);
        }
        // Part of the hole came back: what is left is a new hole.
        c.starts(&tp(), 5);
        assert_eq!(c.check(&tp(), 5, start), Verdict::Take);
        assert_eq!(
            c.check(&tp(), 9, start + HOLE_PATIENCE),
            Verdict::Reread { from: 6, to: 9 }
        );
    }

    #[test]
    fn a_partition_with_no_known_start_begins_at_its_first_record() {
        let mut c = Continuity::default();
        let now = Instant::now();
        assert_eq!(c.check(&tp(), 40, now), Verdict::Take);
        assert_eq!(c.check(&tp(), 41, now), Verdict::Take);
        c.forget(&tp());
        assert_eq!(c.check(&tp(), 90, now), Verdict::Take);
    }

    #[test]
    fn a_record_before_the_expected_one_is_taken_and_moves_the_expectation_back() {
        let mut c = Continuity::default();
        let now = Instant::now();
        c.starts(&tp(), 100);
        assert_eq!(c.check(&tp(), 0, now), Verdict::Take);
        assert_eq!(c.check(&tp(), 1, now), Verdict::Take);
        assert_eq!(c.check(&tp(), 3, now), Verdict::Reread { from: 2, to: 3 });
    }
}
