//! Counters and gauges per DAG node: events in and out, dead letters, retries, panics,
//! HTTP requests in flight. Cheap to update (one atomic add); read by the demo's summary
//! and the node API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use wellspring_log::TopicPartition;

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, remembering the highest it reached.
#[derive(Clone, Debug, Default)]
pub struct Gauge {
    value: Arc<AtomicI64>,
    max: Arc<AtomicI64>,
}

impl Gauge {
    pub fn add(&self, n: i64) {
        let now = self.value.fetch_add(n, Ordering::Relaxed) + n;
        self.max.fetch_max(now, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> i64 {
        self.max.load(Ordering::Relaxed)
    }
}

/// Metric names, one place.
pub mod names {
    /// Records a node read.
    pub const IN: &str = "in";
    /// Records a node emitted.
    pub const OUT: &str = "out";
    pub const DUPLICATES: &str = "duplicates";
    pub const DEAD_LETTERS: &str = "dead_letters";
    pub const INCOMPLETE: &str = "incomplete";
    pub const RETRIES: &str = "retries";
    pub const PANICS: &str = "panics";
    pub const HTTP_REQUESTS: &str = "http_requests";
    pub const SHARD_RESTARTS: &str = "shard_restarts";
    /// Gauge: HTTP requests in flight.
    pub const INFLIGHT: &str = "inflight";
    /// Gauge: records a task has admitted and not finished.
    pub const PENDING: &str = "pending";
    /// Gauge: open aggregates.
    pub const OPEN: &str = "open";
}

type Key = (String, String, &'static str);

/// The partitions a stage owns on this node (exported as its `shards` count).
#[derive(Clone, Debug, Default)]
pub struct OwnedShards {
    partitions: Arc<Mutex<BTreeSet<TopicPartition>>>,
}

impl OwnedShards {
    pub fn insert(&self, partition: &TopicPartition) {
        self.partitions.lock().insert(partition.clone());
    }

    pub fn remove(&self, partition: &TopicPartition) {
        self.partitions.lock().remove(partition);
    }

    pub fn list(&self) -> Vec<TopicPartition> {
        self.partitions.lock().iter().cloned().collect()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    counters: Arc<Mutex<BTreeMap<Key, Counter>>>,
    gauges: Arc<Mutex<BTreeMap<Key, Gauge>>>,
    owned: Arc<Mutex<BTreeMap<(String, String), OwnedShards>>>,
}

impl Metrics {
    pub fn counter(&self, dag: &str, node: &str, name: &'static str) -> Counter {
        self.counters
            .lock()
            .entry((dag.to_owned(), node.to_owned(), name))
            .or_default()
            .clone()
    }

    pub fn gauge(&self, dag: &str, node: &str, name: &'static str) -> Gauge {
        self.gauges
            .lock()
            .entry((dag.to_owned(), node.to_owned(), name))
            .or_default()
            .clone()
    }

    /// A counter's value (0 if it was never created).
    pub fn get(&self, dag: &str, node: &str, name: &'static str) -> u64 {
        self.counters
            .lock()
            .get(&(dag.to_owned(), node.to_owned(), name))
            .map_or(0, Counter::get)
    }

    pub fn gauge_max(&self, dag: &str, node: &str, name: &'static str) -> i64 {
        self.gauges
            .lock()
            .get(&(dag.to_owned(), node.to_owned(), name))
            .map_or(0, Gauge::max)
    }

    /// Sum of a counter over every node of a DAG.
    pub fn total(&self, dag: &str, name: &'static str) -> u64 {
        self.counters
            .lock()
            .iter()
            .filter(|((d, _, n), _)| d == dag && *n == name)
            .map(|(_, c)| c.get())
            .sum()
    }

    /// The partitions a stage (`dag`, `node`) owns here. A stage registers when it is
    /// built, before it owns anything.
    pub fn owned_shards(&self, dag: &str, node: &str) -> OwnedShards {
        self.owned
            .lock()
            .entry((dag.to_owned(), node.to_owned()))
            .or_default()
            .clone()
    }

    /// `(dag, stage, partitions)` of every stage on this node.
    pub fn owned_partitions(&self) -> Vec<(String, String, Vec<TopicPartition>)> {
        self.owned
            .lock()
            .iter()
            .map(|((dag, node), owned)| (dag.clone(), node.clone(), owned.list()))
            .collect()
    }

    /// `(dag, node, name, value)` of every gauge.
    pub fn gauge_values(&self) -> Vec<(String, String, &'static str, i64)> {
        self.gauges
            .lock()
            .iter()
            .map(|((d, n, m), g)| (d.clone(), n.clone(), *m, g.get()))
            .collect()
    }

    /// `(dag, node, name, value)` of every counter.
    pub fn counters(&self) -> Vec<(String, String, &'static str, u64)> {
        self.counters
            .lock()
            .iter()
            .map(|((d, n, m), c)| (d.clone(), n.clone(), *m, c.get()))
            .collect()
    }
}
