//! What every handle, producer and consumer of one embedded log shares: the topics and
//! groups under one lock (so a commit's outputs and offsets apply together), the clock
//! that timestamps records, and the change counter that wakes waiting consumers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::coordinator::GroupState;
use super::durable::{Entry, Journal};
use super::storage::{Stored, Topics};
use crate::time::Clock;
use crate::{LogError, Offset, TopicPartition};

pub(super) struct Shared {
    pub state: Mutex<State>,
    /// Bumped on every append and group change; waiting consumers watch it.
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

    /// Wakes every waiting consumer: something changed.
    pub fn bump(&self) {
        self.changes.bump();
    }
}

/// A change counter that wakes every waiting consumer, in the order they started waiting.
///
/// Not tokio's `watch` channel: it spreads its waiters over shards picked at random, so
/// the order in which consumers wake (and a simulated run) would differ from run to run.
#[derive(Default)]
pub(super) struct Changes {
    version: AtomicU64,
    pub notify: Notify,
}

impl Changes {
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}
