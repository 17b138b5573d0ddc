//! Restore time per shard when a node inherits a lost node's groupings: from its warm
//! standby copies (`--standby-replicas 1`) and without them (the whole changelog read).
//!
//! Each round: node A takes a workload of 100 plates, each with one well left out, so
//! that every plate stays open in the plate grouping (100 open plates of state, 23 wells
//! each, on 4 changelog partitions); node B joins (with or without standbys), and once
//! its copies have caught up, A is killed (its actors dropped mid-flight, as a crash
//! would). B's restores of the plate grouping's inherited shards are then timed from its
//! own restore figures (the time between a shard being assigned and it running).
//!
//! Run: `cargo bench -p wellspring-nodes --bench restore` (`-- --rounds N`, default 3;
//! `--broker` on nisshi instead of the embedded log, a fresh one per round, installed
//! into .tools/ if needed). On the embedded log a changelog is compacted as it is
//! written, so a restore from it reads little; the broker's figure is the one that counts.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wellspring_actors::http::{ReqwestTransport, SharedRng};
use wellspring_actors::metrics::{Metrics, names};
use wellspring_actors::supervision::Health;
use wellspring_actors::{FunctionRegistry, Node, NodeEnv, RuntimeConfig};
use wellspring_log::{EmbeddedLog, KafkaLog, KafkaSettings, Log, SystemClock};
use wellspring_nodes::workload::{Message, Workload, WorkloadConfig, record};
use wellspring_protocol::{Dag, SpecFormat};
use wellspring_test_support::broker::Broker;
use wellspring_test_support::dags::four_groupings;

const PLATES: u32 = 100;
const STAGE: &str = "plate";

fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// A node in an actor system of its own, on a thread of its own, so it can be killed.
struct NodeThread {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl NodeThread {
    fn start(log: Arc<dyn Log>, id: &str, metrics: Metrics, standby_replicas: u32) -> Self {
        let (stop, stopped): (Sender<()>, Receiver<()>) = channel();
        let id = id.to_owned();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let registry = FunctionRegistry::with_builtins();
                let dag = Dag::load(&four_groupings("restore"), SpecFormat::Yaml, &registry)
                    .expect("the DAG is valid");
                let env = NodeEnv {
                    log,
                    clock: Arc::new(SystemClock),
                    transport: Arc::new(ReqwestTransport::new().expect("http client")),
                    registry: Arc::new(registry),
                    metrics,
                    health: Health::default(),
                    rng: SharedRng::seeded(1),
                    task_store: None,
                    config: RuntimeConfig {
                        node_id: id,
                        session_timeout: Duration::from_secs(3),
                        max_wait: Duration::from_millis(20),
                        standby_replicas,
                        ..RuntimeConfig::default()
                    },
                };
                let _node = Node::start(env, vec![dag]).await.expect("node starts");
                // Killed: the system is dropped with every actor mid-flight.
                while matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        });
        Self { stop, thread }
    }

    fn kill(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn owned(metrics: &Metrics) -> usize {
    metrics
        .owned_partitions()
        .iter()
        .filter(|(_, node, _)| node == STAGE)
        .map(|(_, _, partitions)| partitions.len())
        .sum()
}

/// One round: the mean restore time of the shards the heir inherited, and how many.
fn round(n: u32, standby: bool, broker: bool) -> (Duration, u64) {
    // A broker of its own per round: the topics and groups start empty.
    let broker = broker.then(Broker::start_for_groups);
    let broker = broker.as_ref().map(|b| b.address.as_str());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let log: Arc<dyn Log> = match broker {
        None => Arc::new(EmbeddedLog::new()),
        Some(address) => {
            let mut settings = KafkaSettings::new(address);
            settings.transactions = false;
            Arc::new(
                runtime
                    .block_on(KafkaLog::connect(settings))
                    .expect("broker reachable"),
            )
        }
    };
    let experiment = format!("EXP-RESTORE-{}-{n}-{standby}", std::process::id());
    let workload = Workload::build(&WorkloadConfig {
        experiment: experiment.clone(),
        plates: PLATES,
        wells: 24,
        duplicates: 0.0,
        metadata_after: 0,
        ..WorkloadConfig::default()
    })
    .expect("workload");
    // One well of every plate left out: every plate stays open.
    let records: Vec<_> = workload
        .messages
        .iter()
        .filter(|m| !matches!(m, Message::Image(image) if image.key.well.to_string() == "B02"))
        .map(|m| record(m, "images", "metadata"))
        .collect();

    let doomed_metrics = Metrics::default();
    let doomed = NodeThread::start(log.clone(), &format!("a-{n}"), doomed_metrics.clone(), 0);
    wait_until("the first node's shards", Duration::from_secs(60), || {
        owned(&doomed_metrics) == 4
    });
    let producer = log.producer().expect("producer");
    runtime.block_on(async {
        for chunk in records.chunks(1000) {
            producer.send(chunk.to_vec()).await.expect("publish");
        }
    });
    wait_until("100 open plates", Duration::from_secs(120), || {
        doomed_metrics.gauge_value("restore", STAGE, names::OPEN) == i64::from(PLATES)
            && doomed_metrics.gauge_value("restore", "well", names::OPEN) == 0
    });

    let heir_metrics = Metrics::default();
    let heir = NodeThread::start(
        log.clone(),
        &format!("b-{n}"),
        heir_metrics.clone(),
        u32::from(standby),
    );
    wait_until("the heir's share", Duration::from_secs(60), || {
        let mine = owned(&heir_metrics);
        mine > 0
            && mine < 4
            && (!standby
                || heir_metrics.gauge_value("restore", STAGE, names::STANDBY_PARTITIONS)
                    == (4 - mine) as i64)
    });
    // The copies read the changelog to its end (a few thousand entries).
    std::thread::sleep(Duration::from_secs(2));
    let stage = heir_metrics.owned_shards("restore", STAGE);
    let (restores_before, took_before) = stage.restore_totals();
    doomed.kill();
    wait_until(
        "the heir owning every shard",
        Duration::from_secs(60),
        || owned(&heir_metrics) == 4 && stage.restoring_now().is_empty(),
    );
    let (restores, took) = stage.restore_totals();
    heir.kill();
    let inherited = restores - restores_before;
    let mean = (took - took_before) / u32::try_from(inherited.max(1)).unwrap_or(1);
    (mean, inherited)
}

fn main() {
    wellspring_allocator::configure();
    let rounds: u32 = flag("--rounds").and_then(|r| r.parse().ok()).unwrap_or(3);
    let broker = std::env::args().any(|a| a == "--broker");
    let on = if broker { "nisshi" } else { "the embedded log" };
    println!("restore per inherited shard of the plate grouping, {PLATES} open plates, on {on}:");
    for standby in [false, true] {
        let mut means = Vec::new();
        for n in 0..rounds {
            let (mean, inherited) = round(n, standby, broker);
            println!(
                "  {} round {n}: {inherited} shards inherited, {:.1} ms each",
                if standby { "standby" } else { "scratch" },
                mean.as_secs_f64() * 1000.0
            );
            means.push(mean);
        }
        means.sort();
        println!(
            "{}: median {:.1} ms per shard",
            if standby {
                "from warm standby copies"
            } else {
                "from the changelog (no standbys)"
            },
            means[means.len() / 2].as_secs_f64() * 1000.0
        );
    }
}

/// The allocator the `wellspring` binary ships with, so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: wellspring_allocator::Allocator = wellspring_allocator::Allocator;
