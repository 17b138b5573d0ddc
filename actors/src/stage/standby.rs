//! Standby replicas: warm copies of a grouping's shards that this node does not own,
//! kept by following their changelog partitions, so that a shard this node inherits
//! (its owner was lost or drained) restores from the copy and the few entries written
//! since, in milliseconds, instead of replaying its whole changelog.
//!
//! One follower per grouping node reads every partition of its changelog with a consumer
//! of its own (assigned, outside the consumer group) and applies each entry to that
//! partition's copy exactly as a restore would. The stage takes a copy when it is
//! assigned the partition ([`Standbys::take`]); while it owns it, the follower skips the
//! partition's entries; when the stage lets it go ([`Standbys::release`]), the follower
//! reads the partition again from its beginning into a fresh copy (the owner's state is
//! its own actor's and is not shared).
//!
//! Which node inherits a partition is the broker's group assignor's choice, not
//! Wellspring's: a node with standbys on therefore keeps a copy of every partition it does
//! not own. A copy is only a cache: whatever it holds, the shard reads the changelog from
//! the copy's offset to the end before it serves, as a restore from scratch reads from 0.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use wellspring_log::{
    Consumer, ConsumerConfig, Log, LogRecord, NoListener, Offset, TopicPartition,
};

use super::generations::Generations;
use crate::functions::{CreateFn, FunctionParams};
use crate::metrics::{Counter, Gauge};

/// How long the follower waits for entries in one poll.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// After the follower's consumer fails, it starts over after this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What this node holds of one changelog partition.
enum Held {
    /// Following: the state up to (not including) `next`.
    Warm {
        functions: Generations,
        next: Offset,
    },
    /// This node owns the partition: its shard holds the state.
    Owned,
    /// Released: to be read again from the beginning once the follower has seeked.
    Released,
    /// An entry the copy cannot take (a newer node's format): only a restore from the
    /// changelog decides what happens to this partition.
    Unusable,
}

struct Copies {
    create: CreateFn,
    params: FunctionParams,
    partitions: BTreeMap<u32, Held>,
    /// Warm copies (the `standby_partitions` gauge's share of this grouping).
    warm: Gauge,
    warm_reported: i64,
}

impl Copies {
    fn fresh(&self) -> Held {
        Held::Warm {
            functions: Generations::new(self.create.clone(), self.params),
            next: 0,
        }
    }

    fn report(&mut self) {
        let warm = self
            .partitions
            .values()
            .filter(|c| matches!(c, Held::Warm { .. }))
            .count() as i64;
        self.warm.add(warm - self.warm_reported);
        self.warm_reported = warm;
    }

    /// Applies entries the follower read.
    fn apply(&mut self, records: &[LogRecord], changelog: &str) {
        for record in records {
            let Some(copy) = self.partitions.get_mut(&record.partition) else {
                continue;
            };
            let Held::Warm { functions, next } = copy else {
                continue;
            };
            if record.offset < *next {
                continue;
            }
            *next = record.offset + 1;
            let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
            // An entry a newer node wrote: only a restore decides (it stops the shard).
            if let Err(e) = functions.restore(&key, record.value.as_deref())
                && e.wire().is_some()
            {
                tracing::warn!(
                    changelog,
                    partition = record.partition,
                    offset = record.offset,
                    "a standby copy met an entry it cannot read ({e}); the partition will be restored from its changelog if this node inherits it"
                );
                *copy = Held::Unusable;
            }
        }
    }
}

/// The standby copies of one grouping node's shards on this node.
#[derive(Clone)]
pub struct Standbys {
    copies: Rc<RefCell<Copies>>,
    /// Restores that started from a warm copy, and those that read the whole changelog.
    pub from_standby: Counter,
    pub from_changelog: Counter,
}

/// What the metrics of a grouping's standbys are.
pub struct StandbyMetrics {
    pub warm: Gauge,
    pub from_standby: Counter,
    pub from_changelog: Counter,
}

impl Standbys {
    /// Starts following `changelog` (on the current actix arbiter). The follower stops
    /// when the last clone of the returned value is dropped.
    pub fn follow(
        log: Arc<dyn Log>,
        changelog: Arc<str>,
        client: String,
        create: CreateFn,
        params: FunctionParams,
        metrics: StandbyMetrics,
    ) -> Self {
        let copies = Rc::new(RefCell::new(Copies {
            create,
            params,
            partitions: BTreeMap::new(),
            warm: metrics.warm,
            warm_reported: 0,
        }));
        actix::spawn(follow(Rc::downgrade(&copies), log, changelog, client));
        Self {
            copies,
            from_standby: metrics.from_standby,
            from_changelog: metrics.from_changelog,
        }
    }

    /// This node now owns `partition`: its warm copy and the offset to read on from, if
    /// there is one. Either way the follower stops following it until it is released.
    pub fn take(&self, partition: u32) -> Option<(Generations, Offset)> {
        let mut copies = self.copies.borrow_mut();
        let taken = match copies.partitions.insert(partition, Held::Owned) {
            Some(Held::Warm { functions, next }) => Some((functions, next)),
            _ => None,
        };
        copies.report();
        match &taken {
            Some(_) => self.from_standby.inc(),
            None => self.from_changelog.inc(),
        }
        taken
    }

    /// This node no longer owns `partition`: follow it again, from its beginning.
    pub fn release(&self, partition: u32) {
        let mut copies = self.copies.borrow_mut();
        if let Some(copy) = copies.partitions.get_mut(&partition) {
            *copy = Held::Released;
        }
    }
}

/// The follower: reads every partition of the changelog until its copies are dropped.
async fn follow(
    copies: Weak<RefCell<Copies>>,
    log: Arc<dyn Log>,
    changelog: Arc<str>,
    client: String,
) {
    loop {
        match follow_once(&copies, log.as_ref(), &changelog, &client).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(%changelog, "standby follower failed, starting over in {RETRY_AFTER:?}: {e}");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Follows until the copies are dropped (`Ok`) or the log fails.
async fn follow_once(
    copies: &Weak<RefCell<Copies>>,
    log: &dyn Log,
    changelog: &Arc<str>,
    client: &str,
) -> Result<(), wellspring_log::LogError> {
    let partitions = log.partitions(changelog).await?;
    let Some(held) = copies.upgrade() else {
        return Ok(());
    };
    {
        // A fresh start: every partition not owned is read from its beginning.
        let mut held = held.borrow_mut();
        for partition in 0..partitions {
            let owned = matches!(held.partitions.get(&partition), Some(Held::Owned));
            if !owned {
                let fresh = held.fresh();
                held.partitions.insert(partition, fresh);
            }
        }
        held.report();
    }
    drop(held);
    let mut consumer: Box<dyn Consumer> = log.consumer(ConsumerConfig::assign(
        client,
        (0..partitions)
            .map(|p| (TopicPartition::new(changelog.clone(), p), Some(0)))
            .collect(),
    ))?;
    loop {
        let Some(held) = copies.upgrade() else {
            return Ok(());
        };
        // Released partitions are read again from their beginning.
        let released: Vec<u32> = {
            let mut held = held.borrow_mut();
            let released: Vec<u32> = held
                .partitions
                .iter()
                .filter(|(_, c)| matches!(c, Held::Released))
                .map(|(p, _)| *p)
                .collect();
            for partition in &released {
                let fresh = held.fresh();
                held.partitions.insert(*partition, fresh);
            }
            held.report();
            released
        };
        drop(held);
        for partition in released {
            consumer.seek(&TopicPartition::new(changelog.clone(), partition), 0)?;
        }
        let records = consumer.poll(&mut NoListener, 10_000, POLL_WAIT).await?;
        let Some(held) = copies.upgrade() else {
            return Ok(());
        };
        held.borrow_mut().apply(&records, changelog);
    }
}
