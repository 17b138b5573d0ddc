//! One simulated run: the cluster, the lab's input, the workers and the faults, in
//! virtual time; then the wait for the cluster to settle and the invariants (`checks`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wellspring_actors::FunctionRegistry;
use wellspring_log::time::TokioClock;
use wellspring_log::{EmbeddedLog, Log, LogRecord, TopicPartition};
use wellspring_protocol::{Dag, SpecFormat};

use crate::checks::{Convergence, check_inflight, check_outputs, check_tasks};
use crate::cluster::{Cluster, EPOCH_MS};
use crate::config::SimConfig;
use crate::history::{Digest, Event, EventKind, History};
use crate::lab::Lab;
use crate::workers::{Workers, overlapping_leases};
use wellspring_lab::workload::{self, Message};

/// The DAG every run deploys.
pub const SIM_DAG: &str = include_str!("../dags/sim.yaml");
/// Input is published over this much simulated time.
const PUBLISH_WINDOW: Duration = Duration::from_secs(60);
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How long a preempted node has to stop before it is killed (Kubernetes' default).
const GRACE: Duration = Duration::from_secs(30);
/// At most this many nodes beyond the starting ones join.
const MAX_JOINS: usize = 3;
/// Events shown in a failure's trace.
const TRACE_EVENTS: usize = 60;
/// Violations of one invariant listed in a failure's report.
const VIOLATIONS_SHOWN: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot start the simulated runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("the simulation's setup failed: {0}")]
    Setup(String),
}

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    /// What it is about (keys, task ids): the trace follows them.
    pub subjects: Vec<String>,
}

/// Figures of a run.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    pub experiments: usize,
    pub plates: usize,
    pub images: usize,
    pub bad_records: usize,
    pub node_starts: u32,
    pub faults: usize,
    pub leases: usize,
    pub vanished_workers: usize,
    /// Simulated time of the whole run.
    pub simulated: Duration,
    /// From the last fault (or the last input, if later) until everything settled.
    pub settled_after: Option<Duration>,
    pub log_records: u64,
}

/// What a run did and found.
#[derive(Debug, Clone)]
pub struct SimOutcome {
    pub config: SimConfig,
    /// Fingerprint of the run's history and the log's contents: the same seed gives the
    /// same digest.
    pub digest: u64,
    pub violations: Vec<Violation>,
    pub history: Vec<Event>,
    /// The events that led to the first violation.
    pub trace: Vec<Event>,
    pub stats: SimStats,
}

impl SimOutcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "seed {}: {} ({} experiments, {} plates, {} images, {} faults, {} leases; {:.0} s simulated{}) digest {:016x}",
            self.config.seed,
            if self.passed() { "ok" } else { "FAILED" },
            s.experiments,
            s.plates,
            s.images,
            s.faults,
            s.leases,
            s.simulated.as_secs_f64(),
            s.settled_after
                .map(|d| format!(", settled {:.0} s after the last fault", d.as_secs_f64()))
                .unwrap_or_default(),
            self.digest
        )
    }

    /// What failed, the command that replays it, and the trace that led to it.
    pub fn render_failure(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.summary());
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &self.violations {
            let count = shown.entry(v.invariant).or_default();
            *count += 1;
            if *count <= VIOLATIONS_SHOWN {
                let _ = writeln!(out, "  violated: {}: {}", v.invariant, v.detail);
            }
        }
        for (invariant, count) in shown {
            if count > VIOLATIONS_SHOWN {
                let _ = writeln!(
                    out,
                    "  ... and {} more of: {invariant}",
                    count - VIOLATIONS_SHOWN
                );
            }
        }
        let _ = writeln!(out, "\nreplay: {}", self.config.replay_command());
        let _ = writeln!(
            out,
            "\ntrace (faults, node lives and every event about {}):",
            self.violations
                .first()
                .map(|v| v
                    .subjects
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        for event in &self.trace {
            let _ = writeln!(out, "  {}", event.render());
        }
        out
    }
}

/// The simulation DAG, parsed and checked once per process (every seed runs the same).
fn sim_dag() -> Result<Dag, SimError> {
    static PARSED: std::sync::OnceLock<Result<Dag, String>> = std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| {
            Dag::load(
                SIM_DAG,
                SpecFormat::Yaml,
                &FunctionRegistry::with_builtins(),
            )
            .map_err(|e| format!("the simulation DAG: {e}"))
        })
        .clone()
        .map_err(SimError::Setup)
}

/// Runs one simulation to its end, on a fresh virtual-time actor system.
pub fn run(config: &SimConfig) -> Result<SimOutcome, SimError> {
    let system = crate::virtual_time_system()?;
    system.block_on(simulate(config.clone()))
}

async fn simulate(config: SimConfig) -> Result<SimOutcome, SimError> {
    let history = History::new();
    let log = EmbeddedLog::with_clock(Arc::new(TokioClock::new(EPOCH_MS)));
    let dag = sim_dag()?;
    let lab = Lab::build(config.seed, config.plates).map_err(SimError::Setup)?;
    let mut cluster = Cluster::new(log.clone(), dag.clone(), &config, history.clone());
    for _ in 0..config.nodes.max(1) {
        let id = cluster.new_node_id();
        cluster.start(&id).await.map_err(SimError::Setup)?;
    }
    let publisher = actix_rt::spawn(publish(
        log.clone(),
        lab.messages.clone(),
        history.clone(),
        topic_of(&dag, "topic-stream"),
        topic_of(&dag, "topic-table"),
    ));
    let workers = Workers::start(
        config.workers,
        config.faults.worker_vanish,
        cluster.live.clone(),
        history.clone(),
        config.seed,
    );
    let mut faults = FaultDriver {
        rng: StdRng::seed_from_u64(config.seed ^ 0xfa17),
        pending_starts: Vec::new(),
        last_fault_ms: 0,
        count: 0,
        joined: 0,
    };
    let mut owners = OwnershipWatch::default();
    for _ in 0..config.fault_window.as_secs() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        faults.step(&mut cluster, &config, &history).await?;
        owners.note(&log, &history);
    }
    let _ = publisher.await;
    let publish_end_ms = history.now_ms();
    let settle_from = faults.last_fault_ms.max(publish_end_ms);
    let mut watch = Convergence::default();
    let settled_at = loop {
        owners.note(&log, &history);
        let state = watch.check(&cluster, &log, &lab).await;
        let now = history.now_ms();
        if state.settled() {
            break Ok(now);
        }
        if now.saturating_sub(settle_from) > config.convergence_bound.as_millis() as u64 {
            break Err(state);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    workers.stop();

    let mut violations = Vec::new();
    let settled_after = match settled_at {
        Ok(at) => Some(Duration::from_millis(at.saturating_sub(settle_from))),
        Err(state) => {
            violations.push(Violation {
                invariant: "the cluster converges",
                detail: format!(
                    "not settled {} s after the last fault: {}",
                    config.convergence_bound.as_secs(),
                    state.describe()
                ),
                subjects: state.subjects(),
            });
            None
        }
    };
    let tasks = watch.tasks.take().unwrap_or_default();
    violations.extend(check_outputs(&log, &lab, &dag));
    violations.extend(check_inflight(&cluster, &dag));
    violations.extend(check_tasks(&tasks));
    let worker_log = workers.log.borrow();
    for (a, b) in overlapping_leases(&worker_log.leases) {
        violations.push(Violation {
            invariant: "no task is leased to two workers at once",
            detail: format!(
                "task {} held by {} from {} ms to {} ms and by {} from {} ms",
                a.task, a.client, a.from_ms, a.until_ms, b.client, b.from_ms
            ),
            subjects: vec![a.task.to_string()],
        });
    }
    for incarnation in cluster.up.values() {
        for (component, reason) in incarnation.failed_components() {
            violations.push(Violation {
                invariant: "a node keeps running its DAG",
                detail: format!("{}: {component} failed for good: {reason}", incarnation.id),
                subjects: vec![incarnation.id.clone()],
            });
        }
    }

    let mut digest = Digest::default();
    let events = history.events();
    digest.add(&events);
    let mut log_records = 0;
    for (topic, partitions) in log.topics() {
        for p in 0..partitions {
            for record in log
                .read(&TopicPartition::new(topic.as_str(), p), 0, usize::MAX)
                .unwrap_or_default()
            {
                log_records += 1;
                digest_record(&mut digest, &record);
            }
        }
    }
    let trace = violations
        .first()
        .map(|v| history.trace(&v.subjects, TRACE_EVENTS))
        .unwrap_or_default();
    let stats = SimStats {
        experiments: lab.layouts.len(),
        plates: lab.layouts.iter().map(|l| l.plates.len()).sum(),
        images: lab.images(),
        bad_records: lab.bad_records(),
        node_starts: cluster.incarnations().count() as u32,
        faults: faults.count,
        leases: worker_log.leases.len(),
        vanished_workers: worker_log.vanished,
        simulated: Duration::from_millis(history.now_ms()),
        settled_after,
        log_records,
    };
    drop(worker_log);
    Ok(SimOutcome {
        config,
        digest: digest.finish(),
        violations,
        history: events,
        trace,
        stats,
    })
}

fn digest_record(digest: &mut Digest, record: &LogRecord) {
    digest.add(&*record.topic);
    digest.add(&record.partition);
    digest.add(&record.offset);
    digest.add(&record.key);
    digest.add(&record.value);
    for (name, value) in record.headers.iter() {
        digest.add(name);
        digest.add(value);
    }
    digest.add(&record.timestamp_ms);
}

/// The topic of the DAG's first node of a kind (`topic-stream`: the images).
fn topic_of(dag: &Dag, kind: &str) -> String {
    use wellspring_protocol::spec::NodeKind;
    dag.nodes
        .iter()
        .find_map(|n| match (&n.kind, kind) {
            (NodeKind::TopicStream { topic }, "topic-stream") => Some(topic.clone()),
            (NodeKind::TopicTable { topic }, "topic-table") => Some(topic.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Publishes the lab's messages evenly over the publishing window.
async fn publish(
    log: EmbeddedLog,
    messages: Vec<Message>,
    history: History,
    images_topic: String,
    metadata_topic: String,
) {
    let producer = match log.producer() {
        Ok(p) => p,
        Err(e) => {
            history.record(EventKind::Fault, format!("the lab cannot publish: {e}"));
            return;
        }
    };
    let rounds = (PUBLISH_WINDOW.as_millis() / PUBLISH_EVERY.as_millis()) as usize;
    let per_round = messages.len().div_ceil(rounds).max(1);
    let mut sent = 0;
    for chunk in messages.chunks(per_round) {
        let records = chunk
            .iter()
            .map(|m| workload::record(m, &images_topic, &metadata_topic))
            .collect();
        if let Err(e) = producer.send(records).await {
            history.record(EventKind::Fault, format!("the lab could not publish: {e}"));
        }
        for message in chunk {
            if let Message::Metadata(layout) = message {
                history.record(
                    EventKind::Data,
                    format!("lab publishes the layout of {}", layout.experiment),
                );
            }
        }
        sent += chunk.len();
        if sent % (per_round * 100) < per_round {
            history.record(
                EventKind::Data,
                format!("lab has published {sent} of {} messages", messages.len()),
            );
        }
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
    history.record(
        EventKind::Data,
        format!("lab has published all {} messages", messages.len()),
    );
}

/// Writes each consumer group's ownership to the history when it changes.
#[derive(Default)]
struct OwnershipWatch {
    /// Per group, the log's count of its holdings' changes when last noted, and their
    /// text then.
    last: BTreeMap<String, (u64, String)>,
}

impl OwnershipWatch {
    fn note(&mut self, log: &EmbeddedLog, history: &History) {
        for (group, changes) in log.groups_with_holdings_changes() {
            // Most seconds nothing moved: nothing to fetch or format.
            if self
                .last
                .get(&group)
                .is_some_and(|(last, _)| *last == changes)
            {
                continue;
            }
            let Some(view) = log.group_view(&group) else {
                continue;
            };
            let mut members: Vec<String> = view
                .members
                .iter()
                .map(|(client, instance, held)| {
                    let mut partitions: Vec<String> = held
                        .iter()
                        .map(|tp| {
                            if view.topics.len() > 1 {
                                tp.to_string()
                            } else {
                                tp.partition.to_string()
                            }
                        })
                        .collect();
                    partitions.sort();
                    format!(
                        "{} [{}]",
                        instance.as_deref().unwrap_or(client),
                        partitions.join(",")
                    )
                })
                .collect();
            members.sort();
            let now = members.join(" ");
            if self.last.get(&group).map(|(_, text)| text) != Some(&now) {
                let name = group.strip_prefix("wellspring.").unwrap_or(&group);
                history.record(EventKind::Ownership, format!("group {name}: {now}"));
            }
            self.last.insert(group, (changes, now));
        }
    }
}

struct FaultDriver {
    rng: StdRng,
    /// Nodes to bring back, and when (simulated ms).
    pending_starts: Vec<(u64, String)>,
    last_fault_ms: u64,
    count: usize,
    joined: usize,
}

impl FaultDriver {
    /// One second of the fault window: each kind of fault happens with its rate.
    async fn step(
        &mut self,
        cluster: &mut Cluster,
        config: &SimConfig,
        history: &History,
    ) -> Result<(), SimError> {
        let rates = &config.faults;
        let per_second = |rate: f64| rate / 60.0;
        let now = history.now_ms();
        let due: Vec<String> = self
            .pending_starts
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect();
        self.pending_starts.retain(|(at, _)| *at > now);
        for id in due {
            if cluster.down.contains(&id) {
                cluster.start(&id).await.map_err(SimError::Setup)?;
                self.fault(history);
            }
        }
        if self.rng.random::<f64>() < per_second(rates.crash) && cluster.up.len() > 1 {
            let id = self.pick(cluster);
            cluster.crash(&id, "injected");
            self.maybe_come_back(&id, 1_000, 40_000, history);
            self.fault(history);
        }
        if self.rng.random::<f64>() < per_second(rates.preempt) && cluster.up.len() > 1 {
            let id = self.pick(cluster);
            cluster.stop(&id, GRACE).await;
            self.maybe_come_back(&id, 5_000, 60_000, history);
            self.fault(history);
        }
        if self.rng.random::<f64>() < per_second(rates.restart) && !cluster.up.is_empty() {
            let id = self.pick(cluster);
            cluster.stop(&id, GRACE).await;
            cluster.start(&id).await.map_err(SimError::Setup)?;
            self.fault(history);
        }
        if self.rng.random::<f64>() < per_second(rates.join) && self.joined < MAX_JOINS {
            let id = cluster.new_node_id();
            cluster.start(&id).await.map_err(SimError::Setup)?;
            self.joined += 1;
            self.fault(history);
        }
        Ok(())
    }

    fn pick(&mut self, cluster: &Cluster) -> String {
        let ids = cluster.up_ids();
        ids[self.rng.random_range(0..ids.len())].clone()
    }

    /// Most lost pods are rescheduled; some nodes are gone for good.
    fn maybe_come_back(&mut self, id: &str, min_ms: u64, max_ms: u64, history: &History) {
        if self.rng.random_bool(0.8) {
            let at = history.now_ms() + self.rng.random_range(min_ms..=max_ms);
            self.pending_starts.push((at, id.to_owned()));
        }
    }

    fn fault(&mut self, history: &History) {
        self.count += 1;
        self.last_fault_ms = history.now_ms();
    }
}
