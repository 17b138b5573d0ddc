//! The metadata table: every experiment's layout, as read from the `topic-table` of
//! experiment metadata. One per node, shared by the DAG's groupings.
//!
//! Readers take a snapshot (an `Arc` of the whole map): a batch sees one consistent
//! table, and a lookup costs no lock. Writers replace the map (copy on write): layouts
//! change rarely. Groupings subscribe to hear when a layout arrives, so aggregates that
//! waited for it complete.

use std::sync::Arc;

use actix::prelude::*;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use wellspring_protocol::{ExperimentId, ExperimentLayout};

use crate::aggregation::Layouts;

pub type LayoutMap = FxHashMap<ExperimentId, Arc<ExperimentLayout>>;

/// A layout arrived or changed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct LayoutArrived {
    pub experiment: ExperimentId,
}

#[derive(Clone, Default)]
pub struct MetadataTable {
    layouts: Arc<RwLock<Arc<LayoutMap>>>,
    subscribers: Arc<Mutex<Vec<Recipient<LayoutArrived>>>>,
}

impl MetadataTable {
    pub fn snapshot(&self) -> Arc<LayoutMap> {
        self.layouts.read().clone()
    }

    /// Stores a layout; tells subscribers if it is new or changed.
    pub fn upsert(&self, layout: ExperimentLayout) {
        let experiment = layout.experiment.clone();
        {
            let mut guard = self.layouts.write();
            if guard.get(&experiment).is_some_and(|old| **old == layout) {
                return;
            }
            let mut map = (**guard).clone();
            map.insert(experiment.clone(), Arc::new(layout));
            *guard = Arc::new(map);
        }
        let mut subscribers = self.subscribers.lock();
        subscribers.retain(|s| s.connected());
        for s in subscribers.iter() {
            s.do_send(LayoutArrived {
                experiment: experiment.clone(),
            });
        }
    }

    pub fn subscribe(&self, recipient: Recipient<LayoutArrived>) {
        self.subscribers.lock().push(recipient);
    }

    pub fn len(&self) -> usize {
        self.layouts.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A snapshot is what aggregators look layouts up in.
pub struct Snapshot(pub Arc<LayoutMap>);

impl Layouts for Snapshot {
    fn layout(&self, experiment: &ExperimentId) -> Option<&ExperimentLayout> {
        self.0.get(experiment).map(|l| &**l)
    }
}
