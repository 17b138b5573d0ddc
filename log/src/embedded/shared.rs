//! What every handle, producer and consumer of one embedded log shares: the topics and
//! groups under one lock (so a commit's outputs and offsets apply together), the clock
//! that timestamps records, and the change counter that wakes waiting consumers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::coordinator::GroupState;
use super::storage::Topics;
use crate::time::Clock;

pub(super) struct Shared {
    pub state: Mutex<State>,
    /// Bumped on every append and group change; waiting consumers watch it.
    pub changes: Changes,
    pub clock: Arc<dyn Clock>,
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
        Self {
            state: Mutex::new(State::default()),
            changes: Changes::default(),
            clock,
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
