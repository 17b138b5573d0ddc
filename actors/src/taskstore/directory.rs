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

use actix::prelude::*;
use bytes::Bytes;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use wellspring_log::{
    Clock, ConsumerConfig, Log, NoListener, Producer, ProducerRecord, TopicPartition,
};

use super::shard::LocalShards;
use crate::supervision::{ChildLink, Exit, StopChild};

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
pub struct Announcer {
    pub node: String,
    pub url: String,
    pub topic: String,
    pub log: Arc<dyn Log>,
    pub clock: Arc<dyn Clock>,
    pub shards: LocalShards,
    pub directory: Directory,
    pub link: ChildLink,
    exit: Exit,
    stop: Arc<tokio::sync::Notify>,
}

impl Announcer {
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
        Self {
            node,
            url,
            topic,
            log,
            clock,
            shards,
            directory,
            link,
            exit: Exit::Normal,
            stop: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

struct Announcing {
    node: String,
    url: String,
    topic: String,
    log: Arc<dyn Log>,
    clock: Arc<dyn Clock>,
    shards: LocalShards,
    directory: Directory,
}

impl Announcing {
    async fn announce(
        &self,
        producer: &dyn Producer,
        partitions: BTreeSet<u32>,
    ) -> Result<(), String> {
        let announcement = Announcement {
            node: self.node.clone(),
            url: self.url.clone(),
            partitions,
            at: self.clock.now_ms(),
        };
        let json = serde_json::to_vec(&announcement).map_err(|e| e.to_string())?;
        producer
            .send(vec![
                ProducerRecord::new(
                    self.topic.as_str(),
                    Some(Bytes::from(self.node.clone())),
                    Some(Bytes::from(json)),
                )
                .to_partition(0),
            ])
            .await
            .map_err(|e| format!("announcing this node's shards: {e}"))?;
        self.directory.upsert(announcement);
        Ok(())
    }

    async fn run(self, stop: Arc<tokio::sync::Notify>) -> Result<(), String> {
        let producer = self.log.producer().map_err(|e| e.to_string())?;
        let mut reader = self
            .log
            .consumer(ConsumerConfig::assign(
                format!("directory-{}", self.node),
                vec![(TopicPartition::new(self.topic.as_str(), 0), Some(0))],
            ))
            .map_err(|e| e.to_string())?;
        let mut listener = NoListener;
        let mut announced: Option<BTreeSet<u32>> = None;
        let mut last = tokio::time::Instant::now();
        loop {
            // Biased (stop first): a fixed order, so a simulated run replays exactly.
            let records = tokio::select! {
                biased;
                _ = stop.notified() => {
                    // Leaving: tell the others at once.
                    let _ = self.announce(producer.as_ref(), BTreeSet::new()).await;
                    return Ok(());
                }
                records = reader.poll(&mut listener, 1000, Duration::from_millis(250)) => records.map_err(|e| e.to_string())?,
            };
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
            let serving: BTreeSet<u32> = self.shards.all().into_iter().map(|(p, _)| p).collect();
            if announced.as_ref() != Some(&serving) || last.elapsed() >= HEARTBEAT {
                self.announce(producer.as_ref(), serving.clone()).await?;
                announced = Some(serving);
                last = tokio::time::Instant::now();
            }
        }
    }
}

impl Actor for Announcer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let announcing = Announcing {
            node: self.node.clone(),
            url: self.url.clone(),
            topic: self.topic.clone(),
            log: self.log.clone(),
            clock: self.clock.clone(),
            shards: self.shards.clone(),
            directory: self.directory.clone(),
        };
        ctx.spawn(
            announcing
                .run(self.stop.clone())
                .into_actor(self)
                .map(|result, act, ctx| {
                    if let Err(reason) = result {
                        tracing::error!(%reason, "the task-store directory failed");
                        act.exit = Exit::Failed(reason);
                    }
                    ctx.stop();
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.report(self.exit.clone());
    }
}

impl Handler<StopChild> for Announcer {
    type Result = ();

    fn handle(&mut self, _: StopChild, _: &mut Self::Context) {
        self.stop.notify_one();
    }
}
