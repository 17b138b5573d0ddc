//! Channel events per second end to end through a Kafka-compatible broker (tansu) on
//! loopback, one node: the reference DAG (four groupings, four HTTP tasks against the
//! simulated services) from the images topic to the experiment record, every output
//! checked exactly once. Then a site's latency: with images published at a steady rate,
//! how long from a site's last image on the broker to the site's record readable on
//! `images_site` (two hops: the images' stage, then the site grouping).
//!
//! Run: `cargo bench -p wellspring-nodes --bench kafka_pipeline`
//! (installs tansu into .tools/ if needed; `WELLSPRING_TANSU` points at another binary;
//! `--plates N` sets the size of a measured run, default 2; `--rate N` the images per
//! second of the latency run, default 2000; `--broker nisshi` runs on nisshi instead, with
//! commits as `--no-transactions` makes them, outputs first and then offsets;
//! `WELLSPRING_BENCH_KAFKA="name=value,..."` adds librdkafka properties to try).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wellspring_actors::FunctionRegistry;
use wellspring_log::{ConsumerConfig, KafkaLog, KafkaSettings, Log, NoListener, TopicPartition};
use wellspring_nodes::demo;
use wellspring_nodes::run::{self, RunOptions};
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_nodes::verify::{VerifyOptions, verify_experiment};
use wellspring_nodes::workload::{Message, Workload, WorkloadConfig, publish, record};
use wellspring_test_support::broker;

const IMAGES: &str = "images_channel";
const METADATA: &str = "experiment_metadata";
/// The site grouping's output topic in the reference DAG.
const SITES: &str = "images_site";

/// Builds the experiment of `config` and publishes its layout first, so that checkers
/// know what to expect from the start; returns the producer, the records to publish
/// after it, and how many of them are channel images.
async fn layout_published(
    log: &KafkaLog,
    config: &WorkloadConfig,
) -> (Box<dyn wellspring_log::Producer>, Vec<Message>, usize) {
    let workload = Workload::build(config).expect("workload");
    let image_count = workload.image_count();
    let producer = log.producer().expect("producer");
    let layout = Message::Metadata(workload.layout.clone());
    producer
        .send(vec![record(&layout, IMAGES, METADATA)])
        .await
        .expect("layout published");
    let images = workload
        .messages
        .into_iter()
        .filter(|m| !matches!(m, Message::Metadata(_)))
        .collect();
    (producer, images, image_count)
}

/// Publishes one experiment and waits until every output is there exactly once;
/// returns the images sent and the time from the first image to the last output.
async fn run_experiment(
    log: &KafkaLog,
    dag: &wellspring_protocol::Dag,
    config: &WorkloadConfig,
) -> (usize, Duration, Duration) {
    let (producer, images, image_count) = layout_published(log, config).await;
    let options = VerifyOptions {
        wait: Duration::from_secs(600),
        ..VerifyOptions::for_dag(dag, &config.experiment)
    };
    let started = Instant::now();
    let publishing = async {
        publish(producer.as_ref(), &images, IMAGES, METADATA, None, |_| {})
            .await
            .expect("images published");
        started.elapsed()
    };
    let (published_in, verdict) =
        tokio::join!(publishing, verify_experiment(log, &options, |_| {}));
    let elapsed = started.elapsed();
    let verdict = verdict.expect("outputs readable");
    assert!(verdict.ok(), "{}", verdict.render());
    (image_count, published_in, elapsed)
}

/// What the latency run measured.
struct Latency {
    /// Each site's latency, sorted.
    sites: Vec<Duration>,
    expected: usize,
    /// From the last image on the broker to the last site record.
    drain: Duration,
    /// The images per second the publisher kept.
    published_rate: f64,
}

impl Latency {
    fn quantile(&self, q: f64) -> Duration {
        let at = ((self.sites.len() as f64 * q).ceil() as usize).clamp(1, self.sites.len());
        self.sites[at - 1]
    }
}

/// Publishes `plates` plates at `rate` images/s while following `images_site`: each
/// site's record is timed from the moment its last image was delivered to the broker.
async fn site_latency(log: &KafkaLog, plates: u32, rate: f64) -> Latency {
    let config = WorkloadConfig {
        experiment: "EXP-LATENCY".into(),
        plates,
        duplicates: 0.0,
        ..WorkloadConfig::default()
    };
    let (producer, images, image_count) = layout_published(log, &config).await;
    let expected = image_count / usize::from(config.channels);
    // Follow the sites' output from where it ends now.
    let partitions = log.partitions(SITES).await.expect("the sites' topic");
    let mut from = Vec::new();
    for p in 0..partitions {
        let tp = TopicPartition::new(SITES, p);
        let end = log.end_offset(&tp).await.expect("end offset");
        from.push((tp, Some(end)));
    }
    let mut reader = log
        .consumer(ConsumerConfig::assign("latency-reader", from))
        .expect("reader");
    let delivered: RefCell<HashMap<String, Instant>> = RefCell::new(HashMap::new());
    let started = Instant::now();
    let publishing = async {
        publish(
            producer.as_ref(),
            &images,
            IMAGES,
            METADATA,
            Some(rate),
            |batch| {
                let now = Instant::now();
                let mut delivered = delivered.borrow_mut();
                for message in batch {
                    if let Message::Image(image) = message {
                        delivered.insert(image.key.site_key().to_string(), now);
                    }
                }
            },
        )
        .await
        .expect("images published");
        Instant::now()
    };
    let reading = async {
        let mut arrived: HashMap<String, Instant> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while arrived.len() < expected && Instant::now() < deadline {
            let records = reader
                .poll(&mut NoListener, 1000, Duration::from_millis(20))
                .await
                .expect("sites readable");
            let now = Instant::now();
            for r in records {
                let key =
                    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
                if key.starts_with("EXP-LATENCY/") {
                    arrived.entry(key).or_insert(now);
                }
            }
        }
        arrived
    };
    let (published_at, arrived) = tokio::join!(publishing, reading);
    let delivered = delivered.into_inner();
    let mut sites: Vec<Duration> = arrived
        .iter()
        .filter_map(|(key, at)| delivered.get(key).map(|d| at.saturating_duration_since(*d)))
        .collect();
    sites.sort();
    let last = arrived.values().max().copied().unwrap_or(published_at);
    Latency {
        sites,
        expected,
        drain: last.saturating_duration_since(published_at),
        published_rate: image_count as f64 / published_at.duration_since(started).as_secs_f64(),
    }
}

/// Each stage's cycles so far: `(poll, process, commit)` as (seconds in all, cycles),
/// by DAG node, read from the node's metrics.
fn stage_times(metrics: &wellspring_actors::metrics::Metrics) -> HashMap<String, [(f64, f64); 3]> {
    let mut text = String::new();
    metrics.encode(&mut text).expect("metrics encode");
    let mut out: HashMap<String, [(f64, f64); 3]> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("wellspring_stage_") else {
            continue;
        };
        let (which, rest) = match rest {
            r if r.starts_with("poll_seconds_") => (0, &r["poll_seconds_".len()..]),
            r if r.starts_with("process_seconds_") => (1, &r["process_seconds_".len()..]),
            r if r.starts_with("commit_seconds_") => (2, &r["commit_seconds_".len()..]),
            _ => continue,
        };
        let sum = rest.starts_with("sum{");
        if !sum && !rest.starts_with("count{") {
            continue;
        }
        let Some(node) = rest
            .split("node=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let entry = &mut out.entry(node.to_owned()).or_default()[which];
        if sum {
            entry.0 = value;
        } else {
            entry.1 = value;
        }
    }
    out
}

fn arg_after<T: std::str::FromStr>(flag: &str) -> Option<T> {
    std::env::args()
        .skip_while(|a| a != flag)
        .nth(1)
        .and_then(|n| n.parse().ok())
}

fn main() {
    wellspring_allocator::configure();
    let plates: u32 = arg_after("--plates").unwrap_or(2);
    let rate: f64 = arg_after("--rate").unwrap_or(2000.0);
    // `--broker nisshi`: on nisshi, which has no transactions (commits are outputs first,
    // then offsets, as `--no-transactions` runs); default tansu, transactional.
    let on_nisshi = match arg_after::<String>("--broker").as_deref() {
        None | Some("tansu") => false,
        Some("nisshi") => true,
        Some(other) => panic!("--broker {other}: the bench runs on tansu or nisshi"),
    };
    let through = if on_nisshi {
        "nisshi, without transactions"
    } else {
        "tansu, with transactions"
    };
    let broker = if on_nisshi {
        broker::Broker::start_for_groups()
    } else {
        broker::Broker::start()
    };
    let address = broker.address.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let log = runtime
        .block_on(KafkaLog::connect({
            let mut settings = KafkaSettings::new(address.clone());
            settings.transactions = !on_nisshi;
            // Extra librdkafka properties to try: WELLSPRING_BENCH_KAFKA="a=1,b=2".
            for item in std::env::var("WELLSPRING_BENCH_KAFKA")
                .unwrap_or_default()
                .split(',')
            {
                if let Some((k, v)) = item.split_once('=') {
                    settings.properties.insert(k.into(), v.into());
                }
            }
            settings
        }))
        .expect("broker reachable");
    let services = Services::start(ServiceConfig::quick()).expect("services");
    let registry = FunctionRegistry::with_builtins();
    let dag = demo::load_dag(None, &registry, &services).expect("reference DAG");
    let options = RunOptions {
        dags: vec![dag.clone()],
        node_id: "bench-0".into(),
        ..RunOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let node = run::start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)).expect("node");

    // Warm up: every stage joins its group and has its partitions.
    let warm_up = WorkloadConfig {
        experiment: "EXP-WARM-UP".into(),
        plates: 1,
        wells: 24,
        duplicates: 0.0,
        ..WorkloadConfig::default()
    };
    let (_, _, warm) = runtime.block_on(run_experiment(&log, &dag, &warm_up));
    eprintln!(
        "warm-up (group joins included): {:.1} s",
        warm.as_secs_f64()
    );

    let mut rates = Vec::new();
    for round in 1..=3u32 {
        let config = WorkloadConfig {
            experiment: format!("EXP-BENCH-{round}"),
            plates,
            duplicates: 0.0,
            seed: u64::from(round),
            ..WorkloadConfig::default()
        };
        let (images, published, elapsed) = runtime.block_on(run_experiment(&log, &dag, &config));
        let rate = images as f64 / elapsed.as_secs_f64();
        println!(
            "round {round}: {images} channel images, published in {:.2} s, every output exactly once after {:.2} s: {rate:.0} channel events/s",
            published.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "kafka_pipeline: median {:.0} channel events/s end to end through the broker ({through}; one node, {plates} plate(s) per round)",
        rates[rates.len() / 2]
    );

    let before = stage_times(&node.metrics);
    let latency = runtime.block_on(site_latency(&log, 2, rate));
    let after = stage_times(&node.metrics);
    assert_eq!(
        latency.sites.len(),
        latency.expected,
        "every site of the latency run came out"
    );
    println!(
        "kafka_pipeline: site latency at {rate:.0} images/s (published at {:.0}/s, {} sites): p50 {} ms, p99 {} ms, max {} ms; the last site {} ms after the last image",
        latency.published_rate,
        latency.sites.len(),
        latency.quantile(0.5).as_millis(),
        latency.quantile(0.99).as_millis(),
        latency.quantile(1.0).as_millis(),
        latency.drain.as_millis()
    );
    // Where a cycle's time goes in each stage during the latency run.
    let mut stages: Vec<&String> = after.keys().collect();
    stages.sort();
    for stage in stages {
        let mean = |i: usize| {
            let (sum, count) = after[stage][i];
            let (sum0, count0) = before.get(stage).map_or((0.0, 0.0), |b| b[i]);
            let cycles = count - count0;
            (
                cycles,
                if cycles > 0.0 {
                    (sum - sum0) / cycles * 1e3
                } else {
                    0.0
                },
            )
        };
        let (cycles, poll) = mean(0);
        let (_, process) = mean(1);
        let (commits, commit) = mean(2);
        println!(
            "  stage {stage}: {cycles:.0} cycles, mean poll {poll:.1} ms, processing {process:.1} ms; {commits:.0} commits, mean {commit:.1} ms"
        );
    }
    let _ = node.stop();
}

/// The allocator the `wellspring` binary ships with, so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: wellspring_allocator::Allocator = wellspring_allocator::Allocator;
