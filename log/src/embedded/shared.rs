//! What every handle, producer and consumer of one embedded log shares: the topics and
//! groups under one lock (so a commit's outputs and offsets apply together), the clock
//! that timestamps records, and the watchers that wake waiting consumers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    watchers: Mutex<Watchers>,
}

/// Every watcher in creation order, and the watchers of each topic (also in creation
/// order): an append looks up its topics instead of asking every consumer.
#[derive(Default)]
struct Watchers {
    all: Vec<Weak<Watcher>>,
    by_topic: rustc_hash::FxHashMap<String, Vec<(u64, Weak<Watcher>)>>,
    made: u64,
}

/// What one consumer waits on. A wake that comes while the consumer is not waiting is
/// kept (a [`Notify`] permit), so none is lost between a read and the wait.
pub(super) struct Watcher {
    pub notify: Notify,
    /// Counts the wakes: a consumer that read everything at one count knows, at the same
    /// count, that there is nothing new to read (woken first, so never behind the log).
    wakes: AtomicU64,
}

impl Watcher {
    /// How many wakes came so far. Read under the log's state lock before a read: an
    /// append made after it counts after it.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Acquire)
    }

    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::Release);
        self.notify.notify_one();
    }
}

impl Changes {
    /// A watcher for appends to `topics` (and every group change).
    pub fn watch(&self, mut topics: Vec<String>) -> Arc<Watcher> {
        topics.sort();
        topics.dedup();
        let watcher = Arc::new(Watcher {
            notify: Notify::new(),
            wakes: AtomicU64::new(0),
        });
        let mut watchers = self.watchers.lock();
        watchers.made += 1;
        let id = watchers.made;
        watchers.all.push(Arc::downgrade(&watcher));
        for topic in topics {
            watchers
                .by_topic
                .entry(topic)
                .or_default()
                .push((id, Arc::downgrade(&watcher)));
        }
        watcher
    }

    /// Records were appended to `topics`: wakes their readers, each once, in the order
    /// they were made.
    pub fn appended<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut watchers = self.watchers.lock();
        let mut woken: Vec<(u64, Arc<Watcher>)> = Vec::new();
        for topic in topics {
            let Some(readers) = watchers.by_topic.get_mut(topic) else {
                continue;
            };
            readers.retain(|(id, weak)| match weak.upgrade() {
                Some(watcher) => {
                    woken.push((*id, watcher));
                    true
                }
                None => false,
            });
        }
        drop(watchers);
        woken.sort_unstable_by_key(|(id, _)| *id);
        woken.dedup_by_key(|(id, _)| *id);
        for (_, watcher) in woken {
            watcher.wake();
        }
    }

    /// A group or the set of topics changed: wakes every consumer.
    pub fn everything(&self) {
        let mut watchers = self.watchers.lock();
        watchers.all.retain(|weak| match weak.upgrade() {
            Some(watcher) => {
                watcher.wake();
                true
            }
            None => false,
        });
        // The topics' dropped readers go too, and topics nobody reads any more.
        watchers.by_topic.retain(|_, readers| {
            readers.retain(|(_, weak)| weak.strong_count() > 0);
            !readers.is_empty()
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
        assert_eq!(changes.watchers.lock().all.len(), 2);
        let by_topic = &changes.watchers.lock().by_topic;
        assert!(
            !by_topic.contains_key("sites"),
            "a topic nobody reads is forgotten"
        );
        assert_eq!(by_topic["images"].len(), 1);
    }
}
