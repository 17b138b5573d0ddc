//! Who serves which shard of the task store: every node announces the shards it serves
//! and where its API is, on a compacted topic every node reads. A node forwards a call for
//! another node's shard there, and asks the others when its own shards have nothing to
//! claim.
//!
//! Announcements are hints, not the truth: ownership is the consumer group's, and a
//! forwarded call that reaches a node which lost the shard meanwhile is answered `503`
//! (retry). A node that died stops announcing; its announcement ages out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use wellspring_log::{Clock, Log, LogRecord, ProducerRecord};

use super::shard::LocalShards;
use crate::reader::{Follow, Partitions, Reader, ReaderSpec};
use crate::supervision::ChildLink;

/// One node's announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Announcement {
    pub node: String,
    /// Base URL of the node's API, as other nodes reach it.
    pub url: String,
    pub partitions: BTreeSet<u32>,
    /// When it was made (milliseconds since the epoch).
    pub at: i64,
}

/// An announcement older than this is ignored: its node is presumed gone.
pub const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(30);
/// How often a node announces itself even when nothing changed.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Every node's latest announcement.
#[derive(Clone, Default)]
pub struct Directory(Arc<RwLock<BTreeMap<String, Announcement>>>);

impl Directory {
    pub fn upsert(&self, announcement: Announcement) {
        let mut map = self.0.write();
        let newer = map
            .get(&announcement.node)
            .is_none_or(|old| old.at <= announcement.at);
        if newer {
            map.insert(announcement.node.clone(), announcement);
        }
    }

    /// The live announcements (not older than the TTL), newest first.
    pub fn live(&self, now_ms: i64) -> Vec<Announcement> {
        let ttl = ANNOUNCEMENT_TTL.as_millis() as i64;
        let mut live: Vec<Announcement> = self
            .0
            .read()
            .values()
            .filter(|a| now_ms - a.at <= ttl)
            .cloned()
            .collect();
        live.sort_by_key(|a| std::cmp::Reverse(a.at));
        live
    }

    /// Where the API of the node serving `partition` is, other than `me`.
    pub fn owner(&self, partition: u32, me: &str, now_ms: i64) -> Option<Announcement> {
        self.live(now_ms)
            .into_iter()
            .find(|a| a.partitions.contains(&partition) && a.node != me)
    }

    /// Every other live node.
    pub fn others(&self, me: &str, now_ms: i64) -> Vec<Announcement> {
        self.live(now_ms)
            .into_iter()
            .filter(|a| a.node != me)
            .collect()
    }
}

/// Announces this node's shards when they change (and every few seconds), and reads
/// everyone's announcements into the [`Directory`].
pub type Announcer = Reader<Announcing>;

impl Reader<Announcing> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: String,
        url: String,
        topic: String,
        log: Arc<dyn Log>,
        clock: Arc<dyn Clock>,
        shards: LocalShards,
        directory: Directory,
        link: ChildLink,
    ) -> Self {
        let spec = ReaderSpec {
            name: format!("directory-{node}"),
            topic: topic.clone(),
            partitions: Partitions::Only(vec![0]),
            log,
            // A change of the served shards wakes the reader (`wake_with`): the wait only
            // paces the heartbeat.
            wait: Duration::from_secs(1),
        };
        let announcing = Announcing {
            node,
            url,
            topic,
            clock,
            shards,
            directory,
            announced: None,
            last: tokio::time::Instant::now(),
            sending: None,
        };
        Reader::following(spec, announcing, link)
    }
}

/// Reads the announcements, and makes this node's.
pub struct Announcing {
    node: String,
    url: String,
    topic: String,
    clock: Arc<dyn Clock>,
    shards: LocalShards,
    directory: Directory,
    /// The partitions last announced, and when.
    announced: Option<BTreeSet<u32>>,
    last: tokio::time::Instant,
    /// The announcement being written.
    sending: Option<Announcement>,
}

impl Announcing {
    /// The record announcing that this node serves `partitions`.
    fn announce(&mut self, partitions: BTreeSet<u32>, out: &mut Vec<ProducerRecord>) {
        let announcement = Announcement {
            node: self.node.clone(),
            url: self.url.clone(),
            partitions,
            at: self.clock.now_ms(),
        };
        match serde_json::to_vec(&announcement) {
            Ok(json) => out.push(
                ProducerRecord::new(
                    self.topic.as_str(),
                    Some(Bytes::from(self.node.clone())),
                    Some(Bytes::from(json)),
                )
                .to_partition(0),
            ),
            Err(e) => tracing::warn!("could not write this node's announcement: {e}"),
        }
        self.sending = Some(announcement);
    }
}

impl Follow for Announcing {
    const WRITING: &'static str = "announcing this node's shards";

    fn apply(&mut self, records: Vec<LogRecord>, _: &mut Vec<ProducerRecord>) {
        for record in records {
            match record
                .value
                .as_deref()
                .map(serde_json::from_slice::<Announcement>)
            {
                Some(Ok(announcement)) => self.directory.upsert(announcement),
                Some(Err(e)) => tracing::warn!(
                    offset = record.offset,
                    "skipping an unreadable announcement: {e}"
                ),
                None => {}
            }
        }
    }

    fn wake_with(&mut self, waker: Arc<Notify>) {
        self.shards.notify_changes(waker);
    }

    fn polled(&mut self, out: &mut Vec<ProducerRecord>) {
        let serving = self.shards.partitions();
        if self.announced.as_ref() != Some(&serving) || self.last.elapsed() >= HEARTBEAT {
            self.announce(serving, out);
        }
    }

    fn written(&mut self) {
        if let Some(announcement) = self.sending.take() {
            self.announced = Some(announcement.partitions.clone());
            self.last = tokio::time::Instant::now();
            self.directory.upsert(announcement);
        }
    }

    /// Leaving: tell the others at once.
    fn stopping(&mut self, out: &mut Vec<ProducerRecord>) {
        self.announce(BTreeSet::new(), out);
    }
}
