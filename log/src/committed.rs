//! A consumer group's committed offsets, where they are kept: in the embedded log's group
//! coordinator, and in a Kafka member's own bookkeeping of what it committed.
//!
//! A committed offset is the next record to read, and it only grows: the engine commits
//! what it finished, and a partition's next owner resumes where the last commit left
//! off. A commit that moves it back would make the group read again what it already
//! processed. [`CommittedOffsets::advance`] asserts this (`debug_assert!`: on in test
//! builds and in the simulation harness, off in release builds).

use std::collections::HashMap;

use crate::{Offset, TopicPartition};

#[derive(Debug, Clone, Default)]
pub(crate) struct CommittedOffsets {
    offsets: HashMap<TopicPartition, Offset>,
}

impl CommittedOffsets {
    pub fn get(&self, partition: &TopicPartition) -> Option<Offset> {
        self.offsets.get(partition).copied()
    }

    /// Asserts (in debug builds) that committing `offset` would not move the
    /// partition's committed offset back.
    pub fn check(&self, partition: &TopicPartition, offset: Offset) {
        if let Some(&previous) = self.offsets.get(partition) {
            debug_assert!(
                offset >= previous,
                "the committed offset of {partition} went back from {previous} to {offset}: a committed offset only grows"
            );
        }
    }

    /// Records `offset` as the partition's committed offset.
    ///
    /// Panics in debug builds if that moves it back (see [`CommittedOffsets::check`]).
    pub fn advance(&mut self, partition: TopicPartition, offset: Offset) {
        self.check(&partition, offset);
        self.offsets.insert(partition, offset);
    }

    /// Forgets the partition (this member no longer owns it: what it learns next time
    /// comes from the group).
    pub fn forget(&mut self, partition: &TopicPartition) {
        self.offsets.remove(partition);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TopicPartition, Offset)> {
        self.offsets.iter().map(|(tp, o)| (tp, *o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_offset_advances_and_may_stay() {
        let mut committed = CommittedOffsets::default();
        let tp = TopicPartition::new("in", 3);
        committed.advance(tp.clone(), 5);
        committed.advance(tp.clone(), 5);
        committed.advance(tp.clone(), 9);
        assert_eq!(committed.get(&tp), Some(9));
        committed.forget(&tp);
        // A partition that comes back starts from what the group says.
        committed.advance(tp.clone(), 2);
        assert_eq!(committed.get(&tp), Some(2));
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "the committed offset of in[3] went back from 9 to 4")]
    fn a_committed_offset_that_goes_back_is_caught() {
        let mut committed = CommittedOffsets::default();
        committed.advance(TopicPartition::new("in", 3), 9);
        committed.advance(TopicPartition::new("in", 3), 4);
    }
}
