//! The engine end to end on one node: channel events per second from the input topic
//! through validation, the four groupings and their changelogs, to the experiment
//! record, on the embedded log (no HTTP tasks: those are bound by the services).
//!
//! Two workloads: `2-plates`, one experiment's plates one after another (about 600 sites
//! open at a time), and `lab-40-plates`, what a lab holds: 4 experiments of 10 plates
//! shuffled as a whole (plates out of order and interleaved: tens of thousands of sites
//! open at once), 1% of the images sent twice, and one experiment's metadata arriving
//! only halfway through.
//!
//! Run: `cargo bench -p wellspring-nodes --bench pipeline` (with tracing off, the default,
//! and on with every trace sampled; with the status view reading beside it; and on the
//! durable embedded log, fsync before every
//! commit is acknowledged). It ends by printing the durable log's throughput as a ratio
//! to the in-memory log's, from runs of both taken in turn (the goal: at least 0.5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use wellspring_actors::http::{ReqwestTransport, SharedRng};
use wellspring_actors::metrics::Metrics;
use wellspring_actors::supervision::Health;
use wellspring_actors::{FunctionRegistry, Node, NodeEnv, RuntimeConfig};
use wellspring_log::ProducerRecord;
use wellspring_log::{DurableOptions, EmbeddedLog, Fsync, Log, SystemClock, TopicPartition};
use wellspring_nodes::workload::{Message, Workload, WorkloadConfig, record};
use wellspring_protocol::{Dag, SpecFormat};
use wellspring_test_support::dags::four_groupings;

/// Which log a run is on.
#[derive(Clone, Copy)]
enum OnLog {
    Memory,
    /// On disk in a fresh directory, fsynced before every commit is acknowledged.
    Durable,
}

/// A fresh directory for one durable run.
fn fresh_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static RUN: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wellspring-bench-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A workload's records as published, how many of them are channel images, and how many
/// experiment records end a run.
struct Input {
    records: Vec<ProducerRecord>,
    images: usize,
    /// Distinct sites: what the site grouping emits.
    sites: usize,
    experiments: usize,
}

impl Input {
    fn of(messages: &[Message], experiments: usize) -> Input {
        let sites: std::collections::HashSet<String> = messages
            .iter()
            .filter_map(|m| match m {
                Message::Image(image) => Some(image.key.site_key().to_string()),
                _ => None,
            })
            .collect();
        Input {
            records: messages
                .iter()
                .map(|m| record(m, "images", "metadata"))
                .collect(),
            images: messages
                .iter()
                .filter(|m| matches!(m, Message::Image(_)))
                .count(),
            sites: sites.len(),
            experiments,
        }
    }

    /// One experiment of 2 plates, in order, no repeats, its metadata first.
    fn two_plates() -> Input {
        let workload = Workload::build(&WorkloadConfig {
            plates: 2,
            duplicates: 0.0,
            metadata_after: 0,
            ..WorkloadConfig::default()
        })
        .expect("workload");
        Input::of(&workload.messages, 1)
    }

    /// 4 experiments of 10 plates, every image shuffled among all of them, 1% sent twice,
    /// the last experiment's metadata halfway through (the others' first).
    fn lab() -> Input {
        const EXPERIMENTS: usize = 4;
        let mut images = Vec::new();
        let mut metadata = Vec::new();
        for e in 0..EXPERIMENTS {
            let workload = Workload::build(&WorkloadConfig {
                experiment: format!("EXP-LAB-{e}"),
                plates: 10,
                duplicates: 0.01,
                seed: e as u64 + 1,
                ..WorkloadConfig::default()
            })
            .expect("workload");
            for message in workload.messages {
                match message {
                    Message::Image(_) => images.push(message),
                    other => metadata.push(other),
                }
            }
        }
        images.shuffle(&mut StdRng::seed_from_u64(7));
        let late = metadata.pop().expect("the last experiment's metadata");
        let mut messages = metadata;
        let half = images.len() / 2;
        messages.extend(images.drain(..half));
        messages.push(late);
        messages.extend(images);
        Input::of(&messages, EXPERIMENTS)
    }
}

/// One run: a fresh node, the whole workload, until its experiment records are out.
/// With `view`, the status view reads every topic beside the pipeline, on its thread,
/// as on a node (`wellspring run`).
fn run_once(workload: &Input, on: OnLog, view: bool) -> Duration {
    measure_once(workload, on, view).elapsed
}

/// What one run measured.
struct Run {
    elapsed: Duration,
    /// Entries the site grouping wrote to its changelog.
    site_changelog: u64,
}

fn measure_once(workload: &Input, on: OnLog, view: bool) -> Run {
    let dir = fresh_dir();
    let run = run_on(workload, on, view, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    run
}

fn run_on(workload: &Input, on: OnLog, view: bool, dir: &std::path::Path) -> Run {
    let system = actix_rt::System::new();
    system.block_on(async {
        let registry = FunctionRegistry::with_builtins();
        let dag = Dag::load(&four_groupings("bench"), SpecFormat::Yaml, &registry)
            .expect("the bench DAG is valid");
        let log = match on {
            OnLog::Memory => EmbeddedLog::new(),
            OnLog::Durable => {
                let mut options = DurableOptions::new(dir);
                options.fsync = Fsync::Always;
                EmbeddedLog::open(options).expect("the bench's data directory opens")
            }
        };
        let env = NodeEnv {
            log: Arc::new(log.clone()),
            clock: Arc::new(SystemClock),
            transport: Arc::new(ReqwestTransport::new().expect("http client")),
            registry: Arc::new(registry),
            metrics: Metrics::default(),
            health: Health::default(),
            rng: SharedRng::seeded(1),
            task_store: None,
            config: RuntimeConfig {
                node_id: "bench".into(),
                max_wait: Duration::from_millis(5),
                ..RuntimeConfig::default()
            },
        };
        let metrics = env.metrics.clone();
        let node = Node::start(env, vec![dag.clone()])
            .await
            .expect("node starts");
        let status = view.then(|| {
            wellspring_nodes::status::StatusView::start(
                &[dag],
                "bench",
                metrics,
                Arc::new(log.clone()),
            )
        });
        let producer = log.producer().expect("producer");
        let started = Instant::now();
        for chunk in workload.records.chunks(1000) {
            producer.send(chunk.to_vec()).await.expect("publish");
        }
        let partitions = log.partitions("experiments").await.expect("output topic");
        let done = || {
            let out: usize = (0..partitions)
                .map(|p| {
                    log.read(
                        &TopicPartition::new("experiments", p),
                        0,
                        workload.experiments,
                    )
                    .map_or(0, |r| r.len())
                })
                .sum();
            out >= workload.experiments
        };
        while !done() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let elapsed = started.elapsed();
        let changelog = "wellspring.bench.site.changelog";
        let mut site_changelog = 0;
        for p in 0..log.partitions(changelog).await.unwrap_or(0) {
            site_changelog += log
                .end_offset(&TopicPartition::new(changelog, p))
                .await
                .unwrap_or(0);
        }
        node.shutdown().await;
        // The reader lets go of the log before the next run starts (else the run's
        // whole log is freed on its thread while the next one runs).
        if let Some(status) = status {
            status.stop_and_wait();
        }
        Run {
            elapsed,
            site_changelog,
        }
    })
}

fn pipeline(c: &mut Criterion) {
    let workload = Input::two_plates();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(workload.images as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    // Tracing off (the default): the engine reads one flag per record.
    group.bench_function("four-groupings/2-plates", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| run_once(&workload, OnLog::Memory, false))
                .sum()
        })
    });
    // The status view reading every topic beside the pipeline: its cost.
    group.bench_function("four-groupings/2-plates/status-view", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| run_once(&workload, OnLog::Memory, true))
                .sum()
        })
    });
    // The durable embedded log, fsync before every commit is acknowledged.
    group.bench_function("four-groupings/2-plates/durable-fsync-always", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| run_once(&workload, OnLog::Durable, false))
                .sum()
        })
    });
    // Tracing on, every trace sampled, spans built and then dropped (no exporter): the
    // cost of the spans themselves.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    opentelemetry::global::set_tracer_provider(provider);
    wellspring_actors::telemetry::enable(true);
    group.bench_function("four-groupings/2-plates/traced", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| run_once(&workload, OnLog::Memory, false))
                .sum()
        })
    });
    wellspring_actors::telemetry::enable(false);
    group.finish();

    let lab = Input::lab();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(lab.images as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(60));
    group.bench_function("four-groupings/lab-40-plates", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| run_once(&lab, OnLog::Memory, false))
                .sum()
        })
    });
    group.finish();
}

/// Medians of `runs` runs of two set-ups taken in turn (so that both see the same
/// machine, whatever else it is doing), as throughputs in channel images/s.
fn in_turn(runs: usize, first: (OnLog, bool), second: (OnLog, bool)) -> (f64, f64) {
    let workload = Input::two_plates();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(run_once(&workload, first.0, first.1));
        b.push(run_once(&workload, second.0, second.1));
    }
    let images = workload.images as f64;
    let median = |runs: &mut Vec<Duration>| {
        runs.sort();
        images / runs[runs.len() / 2].as_secs_f64()
    };
    (median(&mut a), median(&mut b))
}

/// The durable log's throughput over the in-memory log's.
fn durable_ratio(runs: usize) {
    let (memory, durable) = in_turn(runs, (OnLog::Memory, false), (OnLog::Durable, false));
    println!(
        "durable embedded log (fsync always) vs in memory: {durable:.0} vs {memory:.0} channel images/s, ratio {:.2} (median of {runs} runs each, taken in turn)",
        durable / memory
    );
}

/// The status view's cost: the pipeline's throughput with the view reading beside it
/// over its throughput without.
fn view_cost(runs: usize) {
    let (without, with) = in_turn(runs, (OnLog::Memory, false), (OnLog::Memory, true));
    println!(
        "status view: {with:.0} vs {without:.0} channel images/s with and without it, cost {:.1} % (median of {runs} runs each, taken in turn)",
        (1.0 - with / without) * 100.0
    );
}

/// How many changelog entries the site grouping writes per site: a site whose channels
/// arrive in different commits is written (whole, with every channel so far) in each.
fn site_changelog_per_site() {
    for (name, workload) in [
        ("2 plates", Input::two_plates()),
        ("lab, 40 plates", Input::lab()),
    ] {
        let run = measure_once(&workload, OnLog::Memory, false);
        println!(
            "site changelog, {name}: {:.2} entries per site ({} for {} sites)",
            run.site_changelog as f64 / workload.sites as f64,
            run.site_changelog,
            workload.sites
        );
    }
}

fn main() {
    wellspring_allocator::configure();
    let mut criterion = Criterion::default().configure_from_args();
    pipeline(&mut criterion);
    criterion.final_summary();
    // `--test` (cargo test --benches) checks that the bench runs, no more.
    let runs = if std::env::args().any(|a| a == "--test") {
        1
    } else {
        5
    };
    durable_ratio(runs);
    view_cost(runs * 4);
    site_changelog_per_site();
}

/// The allocator the `wellspring` binary ships with, so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: wellspring_allocator::Allocator = wellspring_allocator::Allocator;
