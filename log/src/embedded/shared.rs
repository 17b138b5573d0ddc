//! What every handle, producer and consumer of one embedded log shares: the topics and
//! groups under one lock (so a commit's outputs and offsets apply together), the clock
//! that timestamps records, and the watchers that wake waiting consumers.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::coordinator::GroupState;
use super::durable::{Entry, Journal};
use super::storage::{Stored, Topics};
use crate::time::Clock;
use crate::{LogError, Offset, ProducerRecord, TopicPartition};

pub(super) struct Shared {
    pub state: Mutex<State>,
    /// Wakes waiting consumers on appends to their topics and on group changes.
    pub changes: Changes,
    pub clock: Arc<dyn Clock>,
    /// Where every change is written before it is acknowledged (a durable log only).
    pub journal: Option<Journal>,
}

#[derive(Default)]
pub(super) struct State {
    pub topics: Topics,
    pub groups: BTreeMap<String, GroupState>,
    /// The last member id given out (ids are never reused).
    pub next_member: u64,
}

impl Shared {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_state(clock, State::default(), None)
    }

    pub fn with_state(clock: Arc<dyn Clock>, state: State, journal: Option<Journal>) -> Self {
        Self {
            state: Mutex::new(state),
            changes: Changes::default(),
            clock,
            journal,
        }
    }

    /// Journals a change already applied to `state` (the caller holds its lock), taking
    /// a snapshot when one is due; what to wait on before acknowledging it.
    pub fn journal(&self, state: &mut State, entry: &Entry) -> Result<Option<u64>, LogError> {
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        let seq = journal.write(entry)?;
        if journal.wants_snapshot() {
            let State { topics, groups, .. } = state;
            journal.snapshot(topics, groups, self.clock.now_ms())?;
        }
        Ok(Some(seq))
    }

    /// Journals appended records and (for a commit) a group's new offsets as one change.
    pub fn journal_batch(
        &self,
        state: &mut State,
        stored: &[(TopicPartition, Stored)],
        commit: Option<(&str, &[(TopicPartition, Offset)])>,
    ) -> Result<Option<u64>, LogError> {
        if self.journal.is_none() || (stored.is_empty() && commit.is_none()) {
            return Ok(None);
        }
        let entry = Entry::batch(stored.iter().map(|(tp, r)| (tp, r)), commit);
        self.journal(state, &entry)
    }

    /// Resolves once change `seq` is durable (at once for an in-memory log).
    pub async fn durable(&self, seq: Option<u64>) -> Result<(), LogError> {
        match (&self.journal, seq) {
            (Some(journal), Some(seq)) => journal.durable(seq).await,
            _ => Ok(()),
        }
    }

    /// The topics `records` go to, each once: whose readers to wake once they are in.
    pub fn topics_of(records: &[ProducerRecord]) -> Vec<Arc<str>> {
        let mut topics: Vec<Arc<str>> = Vec::new();
        for record in records {
            // A batch's records mostly share one name's allocation: compared by address
            // first, a record costs no string comparison.
            let seen = topics
                .iter()
                .any(|t| Arc::ptr_eq(t, &record.topic) || *t == record.topic);
            if !seen {
                topics.push(record.topic.clone());
            }
        }
        topics
    }

    /// Wakes the readers of `topics`: records were appended to them.
    pub fn appended(&self, topics: &[Arc<str>]) {
        self.changes.appended(topics.iter().map(|t| &**t));
    }

    /// Wakes every waiting consumer: a group or the topics changed.
    pub fn bump(&self) {
        self.changes.everything();
    }
}

/// Wakes waiting consumers: those that read a topic when records are appended to it, and
/// every one when a group or the topics change.
///
/// Each consumer has its own [`Watcher`]: a log with many stages would otherwise wake
/// every consumer on every append, to find nothing of its own to read. Watchers are woken
/// in the order they were made, so a simulated run replays exactly (tokio's `watch`
/// channel spreads its waiters over shards picked at random).
#[derive(Default)]
pub(super) struct Changes {
    watchers: Mutex<Vec<Weak<Watcher>>>,
}

/// What one consumer waits on. A wake that comes while the consumer is not waiting is
/// kept (a [`Notify`] permit), so none is lost between a read and the wait.
pub(super) struct Watcher {
    topics: Vec<String>,
    pub notify: Notify,
}

impl Changes {
    /// A watcher for appends to `topics` (and every group change).
    pub fn watch(&self, mut topics: Vec<String>) -> Arc<Watcher> {
        topics.sort();
        topics.dedup();
        let watcher = Arc::new(Watcher {
            topics,
            notify: Notify::new(),
        });
        self.watchers.lock().push(Arc::downgrade(&watcher));
        watcher
    }

    /// Records were appended to `topics`: wakes their readers.
    pub fn appended<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut touched: Vec<&str> = topics.into_iter().collect();
        if touched.is_empty() {
            return;
        }
        touched.sort_unstable();
        touched.dedup();
        self.wake(|watcher| {
            touched.iter().any(|t| {
                watcher
                    .topics
                    .binary_search_by(|w| w.as_str().cmp(t))
                    .is_ok()
            })
        });
    }

    /// A group or the set of topics changed: wakes every consumer.
    pub fn everything(&self) {
        self.wake(|_| true);
    }

    fn wake(&self, wants: impl Fn(&Watcher) -> bool) {
        self.watchers.lock().retain(|weak| match weak.upgrade() {
            Some(watcher) => {
                if wants(&watcher) {
                    watcher.notify.notify_one();
                }
                true
            }
            None => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `watcher` has a wake kept for it (and spends it).
    fn woken(watcher: &Watcher) -> bool {
        let notified = watcher.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable()
    }

    #[test]
    fn an_append_wakes_the_readers_of_its_topics_and_a_group_change_everyone() {
        let changes = Changes::default();
        let images = changes.watch(vec!["images".into()]);
        let sites = changes.watch(vec!["sites".into(), "images".into()]);
        let wells = changes.watch(vec!["wells".into()]);
        changes.appended(["images", "images"]);
        assert!(woken(&images) && woken(&sites));
        assert!(!woken(&wells), "no record of its topics came");
        assert!(!woken(&images), "one wake per append, spent once");
        changes.appended(["wells"]);
        assert!(woken(&wells) && !woken(&images) && !woken(&sites));
        changes.everything();
        assert!(woken(&images) && woken(&sites) && woken(&wells));
        // A consumer dropped leaves its watcher behind, and the next wake forgets it.
        drop(sites);
        changes.everything();
        assert_eq!(changes.watchers.lock().len(), 2);
    }
}
