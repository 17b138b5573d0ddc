//! The operator commands on Kafka, as a user runs them: `run --kafka`, `generate` and
//! `verify`, against a real broker (tansu) on loopback.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::time::Duration;

use wellspring_log::{
    Cleanup, ConsumerConfig, KafkaLog, KafkaSettings, Log, NoListener, TopicPartition, TopicSpec,
};
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_test_support::broker::Broker;
use wellspring_test_support::node_process::{NodeProcess, reference_dag_args};

fn wellspring(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "error")
        .env_remove("WELLSPRING_KAFKA")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `wellspring run --kafka` with the reference DAG pointed at `services`.
fn run_node(broker: &Broker, services: &Services) -> NodeProcess {
    NodeProcess::start(
        env!("CARGO_BIN_EXE_wellspring"),
        &broker.address,
        "cli-node",
        &reference_dag_args(services.variables(), "6s"),
    )
}

#[test]
fn generate_then_verify_against_a_running_node_and_verify_names_what_is_duplicated() {
    let broker = Broker::start();
    let services = Services::start(ServiceConfig::quick()).unwrap();
    let mut node = run_node(&broker, &services);

    let out = wellspring(&[
        "generate",
        "--kafka",
        &broker.address,
        "--experiment",
        "EXP-CLI",
        "--wells",
        "24",
        "--bad-records",
        "2",
        "--no-progress",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("published experiment EXP-CLI: 1 plate(s)") && said.contains("576 distinct"),
        "{said}"
    );
    assert!(said.contains("wellspring verify --kafka"), "{said}");

    let out = wellspring(&[
        "verify",
        "--kafka",
        &broker.address,
        "--experiment",
        "EXP-CLI",
        "--wait",
        "3m",
        "--no-progress",
    ]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}{}", text(&out.stderr));
    assert!(
        report.contains("sites                   96        96        0          0")
            && report.contains(": OK"),
        "{report}"
    );

    // A site record written twice is a duplicated aggregate, reported by key.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let duplicated = rt.block_on(async {
        let log = KafkaLog::connect(KafkaSettings::new(broker.address.clone()))
            .await
            .unwrap();
        let tp = TopicPartition::new("images_site", 0);
        let mut reader = log
            .consumer(ConsumerConfig::assign("copy", vec![(tp.clone(), Some(0))]))
            .unwrap();
        let mut site = Vec::new();
        while site.is_empty() {
            site = reader
                .poll(&mut NoListener, 1, Duration::from_millis(200))
                .await
                .unwrap();
        }
        let site = site.remove(0);
        let copy = wellspring_log::ProducerRecord {
            topic: site.topic.clone(),
            partition: None,
            key: site.key.clone(),
            value: site.value.clone(),
            headers: site.headers.to_vec(),
        };
        log.producer().unwrap().send(vec![copy]).await.unwrap();
        String::from_utf8(site.key.unwrap().to_vec()).unwrap()
    });
    let out = wellspring(&[
        "verify",
        "--kafka",
        &broker.address,
        "--experiment",
        "EXP-CLI",
        "--no-progress",
    ]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("duplicated sites {duplicated}"))
            && report.contains("RESULT: FAILED"),
        "{report}"
    );

    // SIGTERM: the node flushes, commits and stops.
    assert!(node.terminate().success());
}

#[test]
fn kafka_problems_are_reported_plainly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("127.0.0.1:{port}");
    let out = wellspring(&["run", "--kafka", &nowhere, "--http-addr", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("no answer from the Kafka brokers at {nowhere}")),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("check --kafka"),
        "{}",
        text(&out.stderr)
    );

    let out = wellspring(&["verify", "--experiment", "EXP-1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("works on a Kafka cluster: give --kafka BROKERS"),
        "{}",
        text(&out.stderr)
    );

    // A changelog with the wrong number of partitions: its shards could not be restored.
    let broker = Broker::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = KafkaLog::connect(KafkaSettings::new(broker.address.clone()))
            .await
            .unwrap();
        let spec = TopicSpec::new(
            "wellspring.microscopy-reference.images-site.changelog",
            3,
            Cleanup::Compact,
        );
        log.ensure_topic(&spec).await.unwrap();
    });
    let out = wellspring(&[
        "run",
        "--kafka",
        &broker.address,
        "--dag",
        "examples/reference-dag.yaml",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("wellspring.microscopy-reference.images-site.changelog exists with 3 partitions but Wellspring needs 8 partitions"),
        "{err}"
    );
    let out = wellspring(&[
        "verify",
        "--kafka",
        &broker.address,
        "--experiment",
        "EXP-NONE",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no layout of experiment EXP-NONE on experiment_metadata"),
        "{}",
        text(&out.stderr)
    );
}
