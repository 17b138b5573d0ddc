//! Task groups: their settings, kept in a compacted topic and read by every node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use wellspring_log::{Log, LogRecord, ProducerRecord};
use wellspring_protocol::taskstore::GroupSettings;

use crate::reader::{Follow, Partitions, Reader, ReaderSpec};
use crate::supervision::ChildLink;

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

    /// The smallest max run time of any group (ms), `i64::MAX` without groups.
    pub fn shortest_max_run_time_ms(&self) -> i64 {
        self.0
            .read()
            .values()
            .map(|g| i64::try_from(g.max_run_time.0).unwrap_or(i64::MAX))
            .min()
            .unwrap_or(i64::MAX)
    }

    pub fn upsert(&self, settings: GroupSettings) {
        self.0.write().insert(settings.name.clone(), settings);
    }
}

/// Applies group settings to the [`GroupTable`].
pub struct Groups(GroupTable);

/// Reads the groups topic into this node's [`GroupTable`], from the beginning.
pub type GroupsReader = Reader<Groups>;

impl Reader<Groups> {
    pub fn new(topic: String, log: Arc<dyn Log>, table: GroupTable, link: ChildLink) -> Self {
        let spec = ReaderSpec {
            name: format!("groups-{topic}"),
            topic,
            partitions: Partitions::Only(vec![0]),
            log,
            wait: Duration::from_secs(1),
        };
        Reader::following(spec, Groups(table), link)
    }
}

impl Follow for Groups {
    fn apply(&mut self, records: Vec<LogRecord>, _: &mut Vec<ProducerRecord>) {
        for record in records {
            match record
                .value
                .as_deref()
                .map(serde_json::from_slice::<GroupSettings>)
            {
                Some(Ok(settings)) => self.0.upsert(settings),
                Some(Err(e)) => {
                    tracing::warn!(topic = %record.topic, offset = record.offset, "skipping unreadable group settings: {e}")
                }
                None => {}
            }
        }
    }
}
