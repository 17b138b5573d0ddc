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

/// A distribution of durations in fixed buckets (seconds), as Prometheus histograms are.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<HistogramCells>,
}

#[derive(Debug)]
struct HistogramCells {
    bounds: &'static [f64],
    /// One count per bound, then the overflow (+Inf).
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

/// Bounds for network calls and restores: 1 ms to 2 minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            inner: Arc::new(HistogramCells {
                bounds: DURATION_BUCKETS,
                counts: (0..=DURATION_BUCKETS.len())
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                sum_micros: AtomicU64::new(0),
            }),
        }
    }
}

impl Histogram {
    pub fn observe(&self, took: std::time::Duration) {
        let seconds = took.as_secs_f64();
        let cells = &self.inner;
        let slot = cells
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(cells.bounds.len());
        cells.counts[slot].fetch_add(1, Ordering::Relaxed);
        cells
            .sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// `(upper bound, cumulative count)` per bucket, the last one +Inf; the sum of the
    /// observations in seconds; their count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let cells = &self.inner;
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(cells.counts.len());
        for (i, count) in cells.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = cells.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        let sum = cells.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, cumulative)
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
    /// Histogram: HTTP calls to microservices, each attempt.
    pub const HTTP_DURATION: &str = "http_request_duration_seconds";

    /// What each family means, for the `# HELP` lines.
    pub fn help(name: &str) -> &'static str {
        match name {
            "in" => "Records a DAG node read.",
            "out" => "Records a DAG node emitted.",
            "duplicates" => "Repeated input records a grouping dropped.",
            "dead_letters" => "Records sent to the dead-letter topic.",
            "incomplete" => "Aggregates reported incomplete after their timeout.",
            "retries" => "Task calls retried.",
            "panics" => "Panics contained in a DAG node's functions.",
            "http_requests" => "HTTP requests sent to microservices.",
            "shard_restarts" => "Shard actors restarted after a failure.",
            "inflight" => "HTTP requests in flight now.",
            "pending" => "Records a task admitted and has not finished.",
            "open" => "Aggregates open now (waiting for children).",
            "http_request_duration_seconds" => "Duration of each HTTP call to a microservice.",
            "leader" => "1 on the node holding the leader Lease (Kubernetes), else 0.",
            _ => "A Wellspring metric.",
        }
    }
}

type Key = (String, String, &'static str);

/// The partitions a stage owns on this node (exported as its `shards` count), how far
/// behind each is, how often the group moved them and how long restores took.
#[derive(Clone, Debug, Default)]
pub struct OwnedShards {
    partitions: Arc<Mutex<BTreeSet<TopicPartition>>>,
    /// Per owned partition: (committed offset, end offset when last looked).
    offsets: Arc<Mutex<BTreeMap<TopicPartition, (u64, u64)>>>,
    /// Rebalance callbacks that moved partitions of this stage (assigned, revoked, lost).
    pub rebalances: Counter,
    /// Time to restore a shard (changelog replay included) before it runs.
    pub restores: Histogram,
}

impl OwnedShards {
    pub fn insert(&self, partition: &TopicPartition) {
        self.partitions.lock().insert(partition.clone());
    }

    pub fn remove(&self, partition: &TopicPartition) {
        self.partitions.lock().remove(partition);
        self.offsets.lock().remove(partition);
    }

    pub fn list(&self) -> Vec<TopicPartition> {
        self.partitions.lock().iter().cloned().collect()
    }

    /// Everything before `offset` is committed.
    pub fn committed(&self, partition: &TopicPartition, offset: u64) {
        let mut offsets = self.offsets.lock();
        let entry = offsets.entry(partition.clone()).or_insert((offset, offset));
        entry.0 = offset;
        entry.1 = entry.1.max(offset);
    }

    /// The partition's end offset, as the log reports it now.
    pub fn end(&self, partition: &TopicPartition, offset: u64) {
        let mut offsets = self.offsets.lock();
        let entry = offsets.entry(partition.clone()).or_insert((0, offset));
        entry.1 = offset;
    }

    /// Records not yet committed, per owned partition (consumer lag).
    pub fn lags(&self) -> Vec<(TopicPartition, u64)> {
        self.offsets
            .lock()
            .iter()
            .map(|(tp, (committed, end))| (tp.clone(), end.saturating_sub(*committed)))
            .collect()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    counters: Arc<Mutex<BTreeMap<Key, Counter>>>,
    gauges: Arc<Mutex<BTreeMap<Key, Gauge>>>,
    histograms: Arc<Mutex<BTreeMap<Key, Histogram>>>,
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

    /// A histogram of one DAG node.
    pub fn histogram(&self, dag: &str, node: &str, name: &'static str) -> Histogram {
        self.histograms
            .lock()
            .entry((dag.to_owned(), node.to_owned(), name))
            .or_default()
            .clone()
    }

    /// `(dag, node, name, histogram)` of every histogram.
    pub fn histograms(&self) -> Vec<(String, String, &'static str, Histogram)> {
        self.histograms
            .lock()
            .iter()
            .map(|((d, n, m), h)| (d.clone(), n.clone(), *m, h.clone()))
            .collect()
    }

    /// `(dag, stage, shard bookkeeping)` of every stage on this node.
    pub fn stages(&self) -> Vec<(String, String, OwnedShards)> {
        self.owned
            .lock()
            .iter()
            .map(|((dag, node), owned)| (dag.clone(), node.clone(), owned.clone()))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(600));
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 600.0305).abs() < 1e-6, "{sum}");
        let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).map(|(_, c)| *c);
        assert_eq!(at(0.001), Some(1));
        assert_eq!(at(0.025), Some(1));
        assert_eq!(at(0.05), Some(2));
        assert_eq!(at(120.0), Some(2));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 3)));
    }

    #[test]
    fn lag_is_the_end_offset_minus_the_committed_one_per_owned_partition() {
        let owned = OwnedShards::default();
        let (a, b) = (TopicPartition::new("in", 0), TopicPartition::new("in", 1));
        owned.insert(&a);
        owned.insert(&b);
        owned.committed(&a, 10);
        owned.end(&a, 25);
        owned.end(&b, 7);
        assert_eq!(owned.lags(), vec![(a.clone(), 15), (b.clone(), 7)]);
        owned.committed(&a, 25);
        owned.remove(&b);
        assert_eq!(owned.lags(), vec![(a, 0)]);
    }
}
