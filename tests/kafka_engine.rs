//! The engine on Kafka: the reference DAG through a real broker (tansu) on loopback.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use wellspring_actors::FunctionRegistry;
use wellspring_log::{ConsumerConfig, KafkaLog, KafkaSettings, Log, NoListener, TopicPartition};
use wellspring_nodes::demo::{self, DemoOptions};
use wellspring_nodes::run::{self, RunOptions};
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_nodes::verify::{VerifyOptions, VerifyReport, verify_experiment};
use wellspring_nodes::workload::{Workload, WorkloadConfig, publish};
use wellspring_protocol::Dag;
use wellspring_test_support::broker::Broker;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn connect(rt: &tokio::runtime::Runtime, broker: &Broker) -> KafkaLog {
    rt.block_on(KafkaLog::connect(KafkaSettings::new(
        broker.address.clone(),
    )))
    .unwrap()
}

/// Every record of a topic, read to its end.
async fn read_all(log: &dyn Log, topic: &str) -> Vec<wellspring_log::LogRecord> {
    let partitions = log.partitions(topic).await.unwrap();
    let assignment: Vec<_> = (0..partitions)
        .map(|p| (TopicPartition::new(topic, p), Some(0)))
        .collect();
    let tps: Vec<TopicPartition> = assignment.iter().map(|(tp, _)| tp.clone()).collect();
    let mut reader = log
        .consumer(ConsumerConfig::assign(
            format!("test-read-{topic}"),
            assignment,
        ))
        .unwrap();
    let mut out = Vec::new();
    while !tps.iter().all(|tp| reader.caught_up(tp)) {
        out.extend(
            reader
                .poll(&mut NoListener, 10_000, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    out
}

fn assert_exactly_once(report: &VerifyReport, repeats_allowed: bool) {
    assert!(report.ok(), "{}", report.render());
    for level in &report.levels {
        assert!(level.duplicated.is_empty(), "{}", report.render());
        if !repeats_allowed {
            assert_eq!(
                level.repeats,
                0,
                "no output id twice on {}: {}",
                level.topic,
                report.render()
            );
        }
    }
}

#[test]
fn the_reference_dag_over_a_plate_emits_every_aggregate_exactly_once_and_dead_letters_bad_records()
{
    let broker = Broker::start();
    let rt = runtime();
    let log = connect(&rt, &broker);
    let options = DemoOptions {
        workload: WorkloadConfig {
            experiment: "EXP-KAFKA-PLATE".into(),
            plates: 1,
            bad_records: 4,
            ..WorkloadConfig::default()
        },
        services: ServiceConfig::quick(),
        stall_timeout: Duration::from_secs(120),
        progress: false,
        ..DemoOptions::default()
    };
    let report = demo::run(options, Some(Arc::new(log.clone()))).unwrap();
    assert!(report.ok(), "{}", report.render());
    assert!(report.log.starts_with("Kafka at"), "{}", report.log);

    // An independent reader of the output topics agrees: every aggregate exactly once.
    let dag = Dag::load(
        demo::REFERENCE_DAG,
        wellspring_protocol::SpecFormat::Yaml,
        &FunctionRegistry::with_builtins(),
    )
    .unwrap();
    let verdict = rt
        .block_on(verify_experiment(
            &log,
            &VerifyOptions::for_dag(&dag, "EXP-KAFKA-PLATE"),
            |_| {},
        ))
        .unwrap();
    // Images sent twice give task outputs with the same id twice (consumers drop them by id).
    assert_exactly_once(&verdict, true);

    // The bad records went to the dead-letter topic with where they came from and why.
    let dead = rt.block_on(read_all(&log, &dag.settings.dead_letter_topic));
    let dead: Vec<serde_json::Value> = dead
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(dead.len(), 4, "{dead:#?}");
    for letter in &dead {
        assert_eq!(letter["source_topic"], "images_channel", "{letter}");
        assert!(
            letter["source_partition"].as_u64().is_some_and(|p| p < 8),
            "{letter}"
        );
        assert!(letter["source_offset"].as_u64().is_some(), "{letter}");
        assert!(
            !letter["reason"].as_str().unwrap_or_default().is_empty(),
            "{letter}"
        );
    }
}

/// A node running the reference DAG against the simulated services, on `log`.
fn start_node(log: &KafkaLog, services: &Services, id: &str) -> run::RunningNode {
    let dag = demo::load_dag(None, &FunctionRegistry::with_builtins(), services).unwrap();
    let options = RunOptions {
        dags: vec![dag],
        node_id: id.into(),
        session_timeout: Duration::from_secs(6),
        ..RunOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    run::start(options, Some(Arc::new(log.clone()))).unwrap()
}

#[test]
fn a_node_stopped_mid_plate_resumes_from_its_commits_and_reads_the_metadata_table_back() {
    let broker = Broker::start();
    let rt = runtime();
    let log = connect(&rt, &broker);
    let services = Services::start(ServiceConfig::quick()).unwrap();
    let workload = Workload::build(&WorkloadConfig {
        experiment: "EXP-KAFKA-RESTART".into(),
        plates: 1,
        duplicates: 0.0,
        ..WorkloadConfig::default()
    })
    .unwrap();
    let (first, second) = workload.messages.split_at(workload.messages.len() / 2);
    let dag = demo::load_dag(None, &FunctionRegistry::with_builtins(), &services).unwrap();
    let options = VerifyOptions {
        wait: Duration::from_secs(240),
        ..VerifyOptions::for_dag(&dag, "EXP-KAFKA-RESTART")
    };

    let node = start_node(&log, &services, "node-a");
    let producer = log.producer().unwrap();
    // The first half (with the layout) goes in; the node is stopped while it works on it.
    rt.block_on(publish(
        producer.as_ref(),
        first,
        "images_channel",
        "experiment_metadata",
        None,
        |_| {},
    ))
    .unwrap();
    rt.block_on(async {
        let site = TopicPartition::new("images_site", 0);
        let mut reader = log
            .consumer(ConsumerConfig::assign("sites-seen", vec![(site, Some(0))]))
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while reader
            .poll(&mut NoListener, 10, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no site record within 2 minutes"
            );
        }
    });
    node.stop().unwrap();
    rt.block_on(publish(
        producer.as_ref(),
        second,
        "images_channel",
        "experiment_metadata",
        None,
        |_| {},
    ))
    .unwrap();

    // Restarted under the same identity: it resumes from the committed offsets, restores
    // its groupings from their changelogs and reads the layout back from the metadata
    // topic (published before it started), so wells, plates and the experiment complete.
    let node = start_node(&log, &services, "node-a");
    let verdict = rt
        .block_on(verify_experiment(&log, &options, |_| {}))
        .unwrap();
    node.stop().unwrap();
    // Nothing lost, and no output id twice: each image was sent once.
    assert_exactly_once(&verdict, false);
}
