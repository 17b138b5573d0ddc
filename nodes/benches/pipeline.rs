//! The engine end to end on one node: channel events per second from the input topic
//! through validation, the four groupings and their changelogs, to the experiment
//! record, on the embedded log (no HTTP tasks: those are bound by the services).
//!
//! Run: `cargo bench -p wellspring-nodes --bench pipeline` (with tracing off, the default;
//! with the status view reading beside it; and with every trace sampled).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use wellspring_actors::http::{ReqwestTransport, SharedRng};
use wellspring_actors::metrics::Metrics;
use wellspring_actors::supervision::Health;
use wellspring_actors::{FunctionRegistry, Node, NodeEnv, RuntimeConfig};
use wellspring_log::{EmbeddedLog, Log, SystemClock, TopicPartition};
use wellspring_nodes::workload::{Workload, WorkloadConfig, record};
use wellspring_protocol::{Dag, SpecFormat};

const HIERARCHY: &str = r#"
name: bench
settings: {partitions: 4}
topics:
  images: {value-schema: channel_level, partitions: 4}
  metadata: {value-schema: experiment_metadata, partitions: 1}
  experiments: {value-schema: experiment_level}
graph:
  images: {type: topic-stream, topic-name: images}
  metadata: {type: topic-table, topic-name: metadata}
  site: {type: stream-operation, inputs: [images, metadata], function: aggregations/images-site-grouping}
  well: {type: stream-operation, inputs: [site, metadata], function: aggregations/sites-well-grouping}
  plate: {type: stream-operation, inputs: [well, metadata], function: aggregations/wells-plate-grouping}
  experiment: {type: stream-operation, inputs: [plate, metadata], function: aggregations/plates-experiment-grouping}
  out: {type: publish, stream: experiment, topic-name: experiments}
"#;

/// One run: a fresh node, the whole workload, until the experiment record is out.
/// With `view`, the status view reads every topic beside the pipeline, on its thread,
/// as on a node (`wellspring run`).
fn run_once(workload: &Workload, view: bool) -> Duration {
    let system = actix_rt::System::new();
    system.block_on(async {
        let registry = FunctionRegistry::with_builtins();
        let dag =
            Dag::load(HIERARCHY, SpecFormat::Yaml, &registry).expect("the bench DAG is valid");
        let log = EmbeddedLog::new();
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
        let records: Vec<_> = workload
            .messages
            .iter()
            .map(|m| record(m, "images", "metadata"))
            .collect();
        let producer = log.producer().expect("producer");
        let started = Instant::now();
        for chunk in records.chunks(1000) {
            producer.send(chunk.to_vec()).await.expect("publish");
        }
        let partitions = log.partitions("experiments").await.expect("output topic");
        let done = || {
            (0..partitions).any(|p| {
                log.read(&TopicPartition::new("experiments", p), 0, 1)
                    .is_ok_and(|r| !r.is_empty())
            })
        };
        while !done() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let elapsed = started.elapsed();
        if let Some(status) = status {
            status.stop();
        }
        node.shutdown().await;
        elapsed
    })
}

fn pipeline(c: &mut Criterion) {
    let workload = Workload::build(&WorkloadConfig {
        plates: 2,
        duplicates: 0.0,
        metadata_after: 0,
        ..WorkloadConfig::default()
    })
    .expect("workload");
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(workload.image_count() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    // Tracing off (the default): the engine reads one flag per record.
    group.bench_function("four-groupings/2-plates", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| run_once(&workload, false)).sum())
    });
    // The status view reading every topic on the node's thread: its cost to the pipeline.
    group.bench_function("four-groupings/2-plates/status-view", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| run_once(&workload, true)).sum())
    });
    // Tracing on, every trace sampled, spans built and then dropped (no exporter): the
    // cost of the spans themselves.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    opentelemetry::global::set_tracer_provider(provider);
    wellspring_actors::telemetry::enable(true);
    group.bench_function("four-groupings/2-plates/traced", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| run_once(&workload, false)).sum())
    });
    wellspring_actors::telemetry::enable(false);
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    pipeline(&mut criterion);
    criterion.final_summary();
}
