//! Task groups: their settings, kept in a compacted topic and read by every node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::RwLock;
use wellspring_log::{ConsumerConfig, Log, NoListener, TopicPartition};
use wellspring_protocol::taskstore::GroupSettings;

use crate::supervision::{ChildLink, Exit, StopChild};

/// Every group's settings, by name.
#[derive(Clone, Default)]
pub struct GroupTable(Arc<RwLock<BTreeMap<String, GroupSettings>>>);

impl GroupTable {
    pub fn get(&self, name: &str) -> Option<GroupSettings> {
        self.0.read().get(name).cloned()
    }

    pub fn all(&self) -> Vec<GroupSettings> {
        self.0.read().values().cloned().collect()
    }

    pub fn upsert(&self, settings: GroupSettings) {
        self.0.write().insert(settings.name.clone(), settings);
    }
}

/// Reads the groups topic into this node's [`GroupTable`], from the beginning.
pub struct GroupsReader {
    pub topic: String,
    pub log: Arc<dyn Log>,
    pub table: GroupTable,
    pub link: ChildLink,
    exit: Exit,
    stop: Arc<tokio::sync::Notify>,
}

impl GroupsReader {
    pub fn new(topic: String, log: Arc<dyn Log>, table: GroupTable, link: ChildLink) -> Self {
        Self {
            topic,
            log,
            table,
            link,
            exit: Exit::Normal,
            stop: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

async fn read(
    topic: String,
    log: Arc<dyn Log>,
    table: GroupTable,
    stop: Arc<tokio::sync::Notify>,
) -> Result<(), String> {
    let mut consumer = log
        .consumer(ConsumerConfig::assign(
            format!("groups-{topic}"),
            vec![(TopicPartition::new(topic.as_str(), 0), Some(0))],
        ))
        .map_err(|e| e.to_string())?;
    let mut listener = NoListener;
    loop {
        // Biased (stop first): a fixed order, so a simulated run replays exactly.
        let records = tokio::select! {
            biased;
            _ = stop.notified() => return Ok(()),
            records = consumer.poll(&mut listener, 1000, Duration::from_secs(1)) => records.map_err(|e| e.to_string())?,
        };
        for record in records {
            match record
                .value
                .as_deref()
                .map(serde_json::from_slice::<GroupSettings>)
            {
                Some(Ok(settings)) => table.upsert(settings),
                Some(Err(e)) => {
                    tracing::warn!(topic = %topic, offset = record.offset, "skipping unreadable group settings: {e}")
                }
                None => {}
            }
        }
    }
}

impl Actor for GroupsReader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let reading = read(
            self.topic.clone(),
            self.log.clone(),
            self.table.clone(),
            self.stop.clone(),
        );
        ctx.spawn(reading.into_actor(self).map(|result, act, ctx| {
            if let Err(reason) = result {
                tracing::error!(topic = %act.topic, %reason, "reading task groups failed");
                act.exit = Exit::Failed(reason);
            }
            ctx.stop();
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.report(self.exit.clone());
    }
}

impl Handler<StopChild> for GroupsReader {
    type Result = ();

    fn handle(&mut self, _: StopChild, _: &mut Self::Context) {
        self.stop.notify_one();
    }
}
