//! Channel events per second end to end through a Kafka-compatible broker (tansu) on
//! loopback, one node: the reference DAG (four groupings, four HTTP tasks against the
//! simulated services) from the images topic to the experiment record, every output
//! checked exactly once.
//!
//! Run: `cargo bench -p wellspring-nodes --bench kafka_pipeline`
//! (installs tansu into .tools/ if needed; `WELLSPRING_TANSU` points at another binary;
//! `--plates N` sets the size of a measured run, default 2;
//! `WELLSPRING_BENCH_KAFKA="name=value,..."` adds librdkafka properties to try).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wellspring_actors::FunctionRegistry;
use wellspring_log::{KafkaLog, KafkaSettings, Log};
use wellspring_nodes::demo;
use wellspring_nodes::run::{self, RunOptions};
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_nodes::verify::{VerifyOptions, verify_experiment};
use wellspring_nodes::workload::{Message, Workload, WorkloadConfig, publish, record};
use wellspring_test_support::broker;

const IMAGES: &str = "images_channel";
const METADATA: &str = "experiment_metadata";

/// Publishes one experiment and waits until every output is there exactly once;
/// returns the images sent and the time from the first image to the last output.
async fn run_experiment(
    log: &KafkaLog,
    dag: &wellspring_protocol::Dag,
    config: &WorkloadConfig,
) -> (usize, Duration, Duration) {
    let workload = Workload::build(config).expect("workload");
    let producer = log.producer().expect("producer");
    // The layout first, so the checker knows what to expect from the start.
    let layout = Message::Metadata(workload.layout.clone());
    producer
        .send(vec![record(&layout, IMAGES, METADATA)])
        .await
        .expect("layout published");
    let images: Vec<Message> = workload
        .messages
        .iter()
        .filter(|m| !matches!(m, Message::Metadata(_)))
        .cloned()
        .collect();
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
    (workload.image_count(), published_in, elapsed)
}

fn main() {
    let plates: u32 = std::env::args()
        .skip_while(|a| a != "--plates")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let broker = broker::Broker::start();
    let address = broker.address.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let log = runtime
        .block_on(KafkaLog::connect({
            let mut settings = KafkaSettings::new(address.clone());
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
        "kafka_pipeline: median {:.0} channel events/s end to end through the broker (one node, {plates} plate(s) per round)",
        rates[rates.len() / 2]
    );
    let _ = node.stop();
}
