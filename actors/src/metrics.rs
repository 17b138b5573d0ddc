//! The node's metrics: counters, gauges and histograms per DAG node (events in and out,
//! dead letters, retries, panics, HTTP requests in flight and their durations), and each
//! stage's shards (owned partitions, consumer lag, rebalances, restore times).
//!
//! They live in a [`prometheus_client`] registry, exported in the Prometheus text format
//! by [`Metrics::encode`] (the node API's `/metrics`). The actors hold the handles
//! [`Metrics`] gives them ([`Counter`], [`Gauge`], [`Histogram`], [`OwnedShards`]):
//! cheap to update (one atomic add), and read back by the demo's summary and the tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter as Count;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge as Level};
use prometheus_client::metrics::histogram::Histogram as Buckets;
use prometheus_client::registry::Registry;
use wellspring_log::TopicPartition;

/// Every family's name starts with this (`wellspring_in_total`).
pub const PREFIX: &str = "wellspring";

/// The labels of every family kept per DAG node: its DAG and the node (stage) in it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct NodeLabels {
    pub dag: String,
    pub node: String,
}

impl NodeLabels {
    fn new(dag: &str, node: &str) -> Self {
        Self {
            dag: dag.to_owned(),
            node: node.to_owned(),
        }
    }
}

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Count);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down, remembering the highest it reached.
#[derive(Clone, Debug, Default)]
pub struct Gauge {
    value: Level,
    max: Arc<AtomicI64>,
}

impl Gauge {
    pub fn add(&self, n: i64) {
        let now = self.value.inc_by(n) + n;
        self.max.fetch_max(now, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.value.get()
    }

    pub fn max(&self) -> i64 {
        self.max.load(Ordering::Relaxed)
    }
}

/// Bounds for network calls and restores: 1 ms to 2 minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

fn duration_buckets() -> Buckets {
    Buckets::new(DURATION_BUCKETS.iter().copied())
}

/// A distribution of durations in [`DURATION_BUCKETS`] (seconds).
#[derive(Clone, Debug)]
pub struct Histogram(Buckets);

impl Default for Histogram {
    fn default() -> Self {
        Self(duration_buckets())
    }
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
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
    /// Counter per stage: rebalances that moved its partitions.
    pub const REBALANCES: &str = "rebalances";
    /// Histogram per stage: shard restores.
    pub const RESTORE_DURATION: &str = "restore_duration_seconds";
    /// Histograms per stage, one of each per cycle: where a record's time in a stage
    /// goes (waiting for records, its shards at work, the commit that makes it visible).
    pub const STAGE_POLL: &str = "stage_poll_seconds";
    pub const STAGE_PROCESS: &str = "stage_process_seconds";
    pub const STAGE_COMMIT: &str = "stage_commit_seconds";
    /// Gauge per stage: partitions owned here.
    pub const SHARDS: &str = "shards";
    /// Gauge per stage: owned partitions whose shard is restoring its state now.
    pub const SHARDS_RESTORING: &str = "shards_restoring";
    /// Gauge per owned partition: records not yet committed.
    pub const CONSUMER_LAG: &str = "consumer_lag";
    /// Gauge per grouping: partitions it does not own of which this node keeps a warm copy.
    pub const STANDBY_PARTITIONS: &str = "standby_partitions";
    /// Counter per grouping: shards started from a warm copy.
    pub const RESTORES_FROM_STANDBY: &str = "restores_from_standby";
    /// Counter per grouping: shards started by reading their whole changelog.
    pub const RESTORES_FROM_CHANGELOG: &str = "restores_from_changelog";

    /// What each family means, for the `# HELP` lines (the registry ends it with a
    /// period).
    pub fn help(name: &str) -> &'static str {
        match name {
            "in" => "Records a DAG node read",
            "out" => "Records a DAG node emitted",
            "duplicates" => "Repeated input records a grouping dropped",
            "dead_letters" => "Records sent to the dead-letter topic",
            "incomplete" => "Aggregates reported incomplete after their timeout",
            "retries" => "Task calls retried",
            "panics" => "Panics contained in a DAG node's functions",
            "http_requests" => "HTTP requests sent to microservices",
            "shard_restarts" => "Shard actors restarted after a failure",
            "inflight" => "HTTP requests in flight now",
            "pending" => "Records a task admitted and has not finished",
            "open" => "Aggregates open now (waiting for children)",
            "http_request_duration_seconds" => "Duration of each HTTP call to a microservice",
            "leader" => "1 on the node holding the leader Lease (Kubernetes), else 0",
            "rebalances" => {
                "Times the consumer group moved partitions of a stage to or from this node"
            }
            "restore_duration_seconds" => {
                "Time to restore a shard from its changelog before it runs"
            }
            "stage_poll_seconds" => {
                "A stage's poll of its consumer, each cycle: waiting for records (rebalances and restores inside it included)"
            }
            "stage_process_seconds" => {
                "A stage's shards at work on one cycle's records (or timers), each cycle"
            }
            "stage_commit_seconds" => {
                "A stage's commit of one cycle (outputs, changelog entries, offsets), each cycle that had something to commit"
            }
            "shards" => "Partitions of a stage this node owns",
            "shards_restoring" => {
                "Owned partitions of a stage whose shard is restoring its state (the node is not ready meanwhile)"
            }
            "consumer_lag" => {
                "Records of an owned partition not yet committed (end offset minus committed offset)"
            }
            "standby_partitions" => {
                "Partitions of a grouping this node does not own and keeps a warm copy of (--standby-replicas)"
            }
            "restores_from_standby" => {
                "Shards of a grouping started from this node's warm copy and the changelog entries since"
            }
            "restores_from_changelog" => {
                "Shards of a grouping started by reading their whole changelog (no warm copy here)"
            }
            "submitted" => "Tasks submitted to the task store's shards on this node",
            "claimed" => "Task leases the task store handed out",
            "succeeded" => "Tasks reported succeeded",
            "failed" => "Task attempts reported failed",
            "dead_lettered" => "Tasks dead-lettered after their last attempt",
            "lapsed" => "Task leases that expired, or attempts halted past max-run-time",
            _ => "A Wellspring metric",
        }
    }
}

/// The partitions a stage owns on this node (exported as its `shards` count), how far
/// behind each is, how often the group moved them and how long restores took.
#[derive(Clone, Debug, Default)]
pub struct OwnedShards {
    partitions: Arc<Mutex<BTreeSet<TopicPartition>>>,
    /// Per owned partition: (committed offset, end offset when last looked).
    offsets: Arc<Mutex<BTreeMap<TopicPartition, (u64, u64)>>>,
    /// Owned partitions whose shard is restoring its state now.
    restoring: Arc<Mutex<BTreeSet<TopicPartition>>>,
    /// Rebalance callbacks that moved partitions of this stage (assigned, revoked, lost).
    pub rebalances: Counter,
    /// Time to restore a shard (changelog replay included) before it runs.
    pub restores: Histogram,
    /// Each cycle's poll, processing and commit.
    pub polls: Histogram,
    pub processing: Histogram,
    pub commits: Histogram,
    /// Restores so far, and the time they took in all (for the shards API).
    restore_totals: Arc<Mutex<(u64, Duration)>>,
}

impl OwnedShards {
    pub fn insert(&self, partition: &TopicPartition) {
        self.partitions.lock().insert(partition.clone());
    }

    pub fn remove(&self, partition: &TopicPartition) {
        self.partitions.lock().remove(partition);
        self.offsets.lock().remove(partition);
        self.restoring.lock().remove(partition);
    }

    /// The shard of `partition` starts restoring its state.
    pub fn restoring(&self, partition: &TopicPartition) {
        self.restoring.lock().insert(partition.clone());
    }

    /// The shard of `partition` is restored (or failed to start): no longer restoring.
    pub fn restored(&self, partition: &TopicPartition) {
        self.restoring.lock().remove(partition);
    }

    /// A shard was restored (its changelog replayed) in `took`.
    pub fn restore_took(&self, took: Duration) {
        self.restores.observe(took);
        let mut totals = self.restore_totals.lock();
        totals.0 += 1;
        totals.1 += took;
    }

    /// Restores so far and the time they took in all.
    pub fn restore_totals(&self) -> (u64, Duration) {
        *self.restore_totals.lock()
    }

    /// The partitions whose shards are restoring now.
    pub fn restoring_now(&self) -> Vec<TopicPartition> {
        self.restoring.lock().iter().cloned().collect()
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

type Key = (String, String, &'static str);
type Stages = Arc<Mutex<BTreeMap<NodeLabels, OwnedShards>>>;

/// The families of one kind of metric, by name, each registered on first use.
struct Families<M, C = fn() -> M> {
    by_name: BTreeMap<&'static str, Family<NodeLabels, M, C>>,
}

impl<M, C> Default for Families<M, C> {
    fn default() -> Self {
        Self {
            by_name: BTreeMap::new(),
        }
    }
}

impl<M, C> Families<M, C>
where
    Family<NodeLabels, M, C>: EncodeMetric + Clone + Send + Sync + fmt::Debug + 'static,
{
    /// The family `name`, registered in `registry` if it is new.
    fn get(
        &mut self,
        registry: &Mutex<Registry>,
        name: &'static str,
        new: impl FnOnce() -> Family<NodeLabels, M, C>,
    ) -> &Family<NodeLabels, M, C> {
        self.by_name.entry(name).or_insert_with(|| {
            let family = new();
            registry
                .lock()
                .register(name, names::help(name), family.clone());
            family
        })
    }
}

struct Inner {
    registry: Mutex<Registry>,
    counters: Mutex<(BTreeMap<Key, Counter>, Families<Count>)>,
    gauges: Mutex<(BTreeMap<Key, Gauge>, Families<Level>)>,
    histograms: Mutex<(BTreeMap<Key, Histogram>, Families<Buckets>)>,
    stages: Stages,
}

impl Default for Inner {
    fn default() -> Self {
        let stages = Stages::default();
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(StageShardsCollector(stages.clone())));
        Self {
            registry: Mutex::new(registry),
            counters: Mutex::default(),
            gauges: Mutex::default(),
            histograms: Mutex::default(),
            stages,
        }
    }
}

/// The node's metrics; cheap to clone (every clone is the same registry).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The counter `name` of DAG node `node` of `dag` (created at 0 on first use).
    pub fn counter(&self, dag: &str, node: &str, name: &'static str) -> Counter {
        let mut counters = self.inner.counters.lock();
        let (by_key, families) = &mut *counters;
        by_key
            .entry((dag.to_owned(), node.to_owned(), name))
            .or_insert_with(|| {
                let family = families.get(&self.inner.registry, name, Family::default);
                Counter(family.get_or_create_owned(&NodeLabels::new(dag, node)))
            })
            .clone()
    }

    pub fn gauge(&self, dag: &str, node: &str, name: &'static str) -> Gauge {
        let mut gauges = self.inner.gauges.lock();
        let (by_key, families) = &mut *gauges;
        by_key
            .entry((dag.to_owned(), node.to_owned(), name))
            .or_insert_with(|| {
                let family = families.get(&self.inner.registry, name, Family::default);
                Gauge {
                    value: family.get_or_create_owned(&NodeLabels::new(dag, node)),
                    max: Arc::default(),
                }
            })
            .clone()
    }

    /// A histogram of one DAG node, in [`DURATION_BUCKETS`].
    pub fn histogram(&self, dag: &str, node: &str, name: &'static str) -> Histogram {
        let mut histograms = self.inner.histograms.lock();
        let (by_key, families) = &mut *histograms;
        by_key
            .entry((dag.to_owned(), node.to_owned(), name))
            .or_insert_with(|| {
                let family = families.get(&self.inner.registry, name, || {
                    Family::new_with_constructor(duration_buckets)
                });
                Histogram(family.get_or_create_owned(&NodeLabels::new(dag, node)))
            })
            .clone()
    }

    /// A counter's value (0 if it was never created).
    pub fn get(&self, dag: &str, node: &str, name: &'static str) -> u64 {
        self.inner
            .counters
            .lock()
            .0
            .get(&(dag.to_owned(), node.to_owned(), name))
            .map_or(0, Counter::get)
    }

    pub fn gauge_max(&self, dag: &str, node: &str, name: &'static str) -> i64 {
        self.inner
            .gauges
            .lock()
            .0
            .get(&(dag.to_owned(), node.to_owned(), name))
            .map_or(0, Gauge::max)
    }

    /// A gauge's current value (0 if it was never created); reading creates nothing.
    pub fn gauge_value(&self, dag: &str, node: &str, name: &'static str) -> i64 {
        self.inner
            .gauges
            .lock()
            .0
            .get(&(dag.to_owned(), node.to_owned(), name))
            .map_or(0, Gauge::get)
    }

    /// The consumer lag of a stage here, summed over its owned partitions (`None` when
    /// the stage is not on this node); reading creates nothing.
    pub fn stage_lag(&self, dag: &str, node: &str) -> Option<u64> {
        let labels = NodeLabels::new(dag, node);
        let stages = self.inner.stages.lock();
        stages
            .get(&labels)
            .map(|owned| owned.lags().iter().map(|(_, lag)| lag).sum())
    }

    /// Sum of a counter over every node of a DAG.
    pub fn total(&self, dag: &str, name: &'static str) -> u64 {
        self.inner
            .counters
            .lock()
            .0
            .iter()
            .filter(|((d, _, n), _)| d == dag && *n == name)
            .map(|(_, c)| c.get())
            .sum()
    }

    /// The partitions a stage (`dag`, `node`) owns here. A stage registers when it is
    /// built, before it owns anything.
    pub fn owned_shards(&self, dag: &str, node: &str) -> OwnedShards {
        let labels = NodeLabels::new(dag, node);
        if let Some(owned) = self.inner.stages.lock().get(&labels) {
            return owned.clone();
        }
        let owned = OwnedShards {
            rebalances: self.counter(dag, node, names::REBALANCES),
            restores: self.histogram(dag, node, names::RESTORE_DURATION),
            polls: self.histogram(dag, node, names::STAGE_POLL),
            processing: self.histogram(dag, node, names::STAGE_PROCESS),
            commits: self.histogram(dag, node, names::STAGE_COMMIT),
            ..OwnedShards::default()
        };
        self.inner
            .stages
            .lock()
            .entry(labels)
            .or_insert(owned)
            .clone()
    }

    /// `(dag, stage, partitions)` of every stage on this node.
    pub fn owned_partitions(&self) -> Vec<(String, String, Vec<TopicPartition>)> {
        self.inner
            .stages
            .lock()
            .iter()
            .map(|(labels, owned)| (labels.dag.clone(), labels.node.clone(), owned.list()))
            .collect()
    }

    /// Every stage on this node, `(dag, stage, its shards)`.
    pub fn stages(&self) -> Vec<(String, String, OwnedShards)> {
        self.inner
            .stages
            .lock()
            .iter()
            .map(|(labels, owned)| (labels.dag.clone(), labels.node.clone(), owned.clone()))
            .collect()
    }

    /// `(dag, stage, partitions)` of every stage with shards restoring now: while there
    /// are any, the node is not ready.
    pub fn restoring(&self) -> Vec<(String, String, Vec<TopicPartition>)> {
        self.inner
            .stages
            .lock()
            .iter()
            .map(|(labels, owned)| {
                let restoring = owned.restoring_now();
                (labels.dag.clone(), labels.node.clone(), restoring)
            })
            .filter(|(_, _, restoring)| !restoring.is_empty())
            .collect()
    }

    /// Every family in the Prometheus text format (version 0.0.4).
    pub fn encode(&self, out: &mut String) -> fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.inner.registry.lock())
    }
}

/// Each stage's `shards` and per-partition `consumer_lag`, read from [`OwnedShards`] at
/// each scrape (partitions come and go with rebalances).
#[derive(Debug)]
struct StageShardsCollector(Stages);

/// The labels of a partition's lag.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    dag: String,
    node: String,
    topic: String,
    partition: u32,
}

impl Collector for StageShardsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stages = self.0.lock().clone();
        let help = |name| format!("{}.", names::help(name));
        let mut shards = encoder.encode_descriptor(
            names::SHARDS,
            &help(names::SHARDS),
            None,
            MetricType::Gauge,
        )?;
        for (labels, owned) in &stages {
            let owned = i64::try_from(owned.list().len()).unwrap_or(i64::MAX);
            ConstGauge::new(owned).encode(shards.encode_family(labels)?)?;
        }
        let mut restoring = encoder.encode_descriptor(
            names::SHARDS_RESTORING,
            &help(names::SHARDS_RESTORING),
            None,
            MetricType::Gauge,
        )?;
        for (labels, owned) in &stages {
            let now = i64::try_from(owned.restoring_now().len()).unwrap_or(i64::MAX);
            ConstGauge::new(now).encode(restoring.encode_family(labels)?)?;
        }
        let mut lags = encoder.encode_descriptor(
            names::CONSUMER_LAG,
            &help(names::CONSUMER_LAG),
            None,
            MetricType::Gauge,
        )?;
        for (labels, owned) in &stages {
            for (tp, lag) in owned.lags() {
                let partition = PartitionLabels {
                    dag: labels.dag.clone(),
                    node: labels.node.clone(),
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                };
                let lag = i64::try_from(lag).unwrap_or(i64::MAX);
                ConstGauge::new(lag).encode(lags.encode_family(&partition)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &Metrics) -> String {
        let mut text = String::new();
        metrics.encode(&mut text).unwrap();
        text
    }

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let metrics = Metrics::default();
        let h = metrics.histogram("d", "n", names::HTTP_DURATION);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(600));
        let text = exposition(&metrics);
        let family = "wellspring_http_request_duration_seconds";
        for line in [
            format!("{family}_bucket{{dag=\"d\",node=\"n\",le=\"0.001\"}} 1"),
            format!("{family}_bucket{{dag=\"d\",node=\"n\",le=\"0.025\"}} 1"),
            format!("{family}_bucket{{dag=\"d\",node=\"n\",le=\"0.05\"}} 2"),
            format!("{family}_bucket{{dag=\"d\",node=\"n\",le=\"120\"}} 2"),
            format!("{family}_bucket{{dag=\"d\",node=\"n\",le=\"+Inf\"}} 3"),
            format!("{family}_count{{dag=\"d\",node=\"n\"}} 3"),
        ] {
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{family}_sum{{dag=\"d\",node=\"n\"}} ")))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 600.0305).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn counters_and_gauges_are_one_per_key_and_exported_with_their_labels() {
        let metrics = Metrics::default();
        metrics.counter("lab", "site", names::IN).add(2);
        metrics.counter("lab", "site", names::IN).inc();
        metrics.counter("lab", "well", names::IN).inc();
        let open = metrics.gauge("lab", "site", names::OPEN);
        open.add(5);
        open.add(-3);
        assert_eq!(metrics.get("lab", "site", names::IN), 3);
        assert_eq!(metrics.total("lab", names::IN), 4);
        assert_eq!(metrics.get("lab", "nowhere", names::IN), 0);
        assert_eq!(metrics.gauge_max("lab", "site", names::OPEN), 5);
        let text = exposition(&metrics);
        for line in [
            "# HELP wellspring_in_total Records a DAG node read.",
            "# TYPE wellspring_in_total counter",
            "wellspring_in_total{dag=\"lab\",node=\"site\"} 3",
            "wellspring_in_total{dag=\"lab\",node=\"well\"} 1",
            "# TYPE wellspring_open gauge",
            "wellspring_open{dag=\"lab\",node=\"site\"} 2",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn lag_is_the_end_offset_minus_the_committed_one_per_owned_partition() {
        let metrics = Metrics::default();
        let owned = metrics.owned_shards("lab", "site");
        let (a, b) = (TopicPartition::new("in", 0), TopicPartition::new("in", 1));
        owned.insert(&a);
        owned.insert(&b);
        owned.committed(&a, 10);
        owned.end(&a, 25);
        owned.end(&b, 7);
        assert_eq!(owned.lags(), vec![(a.clone(), 15), (b.clone(), 7)]);
        owned.rebalances.inc();
        let text = exposition(&metrics);
        for line in [
            "wellspring_shards{dag=\"lab\",node=\"site\"} 2",
            "wellspring_consumer_lag{dag=\"lab\",node=\"site\",topic=\"in\",partition=\"0\"} 15",
            "wellspring_consumer_lag{dag=\"lab\",node=\"site\",topic=\"in\",partition=\"1\"} 7",
            "wellspring_rebalances_total{dag=\"lab\",node=\"site\"} 1",
            "wellspring_restore_duration_seconds_count{dag=\"lab\",node=\"site\"} 0",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
        owned.committed(&a, 25);
        owned.remove(&b);
        assert_eq!(owned.lags(), vec![(a, 0)]);
        let text = exposition(&metrics);
        assert!(
            !text.contains("partition=\"1\""),
            "a partition that left is not exported: {text}"
        );
        // The same stage asked again is the same bookkeeping.
        assert_eq!(metrics.owned_shards("lab", "site").list().len(), 1);
    }
}
