//! Several nodes as real processes on one broker: they share a stream of plates, and
//! nothing is lost when one is killed with SIGKILL, another stopped with SIGTERM, a new
//! one started mid-stream and the killed one restarted under its name; and with five
//! nodes, when two are killed at once.
//!
//! On nisshi, whose group coordinator hands a lost member's partitions to the others with
//! three or more members (tansu's does not). Nisshi has no transactions: the nodes run
//! with `--no-transactions`, and outputs are effectively once by their ids (what a killed
//! node wrote after its last commit is written again by its successor under the same
//! ids), which is what `verify`'s `ok_by_id` counts.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wellspring_actors::FunctionRegistry;
use wellspring_log::{KafkaLog, KafkaSettings};
use wellspring_nodes::demo;
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_nodes::verify::{VerifyOptions, verify_experiment};
use wellspring_test_support::broker::Broker;
use wellspring_test_support::cluster_watch::{
    records_on, wait_for_records, wait_until_every_node_has_a_share,
    wait_until_every_partition_is_owned,
};
use wellspring_test_support::node_process::{NodeProcess, reference_dag_args};

/// A broker with working groups, the simulated services, and how to start a node.
struct Cluster {
    broker: Broker,
    services: Services,
    args: Vec<String>,
    log: KafkaLog,
}

impl Cluster {
    async fn new() -> Cluster {
        let broker = Broker::start_for_groups();
        let services = Services::start(ServiceConfig::quick()).unwrap();
        let mut args = reference_dag_args(services.variables(), "6s");
        args.extend([
            "--partitions".into(),
            "6".into(),
            "--no-transactions".into(),
        ]);
        let log = KafkaLog::connect(KafkaSettings::new(broker.address.clone()))
            .await
            .unwrap();
        Cluster {
            broker,
            services,
            args,
            log,
        }
    }

    fn start(&self, id: &str) -> NodeProcess {
        NodeProcess::start(
            env!("CARGO_BIN_EXE_wellspring"),
            &self.broker.address,
            id,
            &self.args,
        )
    }

    /// A stream of plates, paced, out of order, with repeats.
    fn generate(&self, experiment: &str, plates: u32, rate: u32) -> Child {
        Command::new(env!("CARGO_BIN_EXE_wellspring"))
            .args(["generate", "--kafka", &self.broker.address])
            .args(["--experiment", experiment, "--plates", &plates.to_string()])
            .args([
                "--wells",
                "40",
                "--rate",
                &rate.to_string(),
                "--no-progress",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Every expected aggregate exactly once by id, every task output present, no dead
    /// letters.
    async fn verify(&self, experiment: &str) {
        let registry = FunctionRegistry::with_builtins();
        let dag = demo::load_dag(None, &registry, &self.services).unwrap();
        let options = VerifyOptions {
            wait: Duration::from_secs(300),
            ..VerifyOptions::for_dag(&dag, experiment)
        };
        let report = verify_experiment(&self.log, &options, |_| {})
            .await
            .unwrap();
        let rendered = report.render();
        assert!(report.dead_letters.is_empty(), "{rendered}");
        assert!(report.ok_by_id(), "{rendered}");
        eprintln!("{rendered}");
    }
}

async fn finished(generator: Child) {
    let status = tokio::task::spawn_blocking(move || {
        let mut generator = generator;
        generator.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "the generator published everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_a_stream_and_lose_nothing_when_killed_stopped_or_added() {
    const EXPERIMENT: &str = "EXP-CLUSTER";
    let cluster = Cluster::new().await;
    let log = &cluster.log;
    let mut nodes = vec![
        cluster.start("wellspring-0"),
        cluster.start("wellspring-1"),
        cluster.start("wellspring-2"),
    ];
    wait_until_every_node_has_a_share(log, &nodes.iter().collect::<Vec<_>>(), "three nodes").await;
    let generator = cluster.generate(EXPERIMENT, 4, 200);

    // (a) Mid-stream, one node dies without warning; the others take its shards over.
    wait_for_records(log, "images_site", 40, "sites before the kill").await;
    nodes[0].kill();
    let after_kill = records_on(log, "images_site").await;
    wait_until_every_partition_is_owned(log, &[&nodes[1], &nodes[2]], "after the kill").await;
    wait_for_records(log, "images_site", after_kill + 40, "sites after the kill").await;

    // (b) Another is stopped as Kubernetes stops a pod: it drains, commits and leaves.
    assert!(
        nodes[1].terminate().success(),
        "a SIGTERMed node exits cleanly"
    );
    wait_until_every_partition_is_owned(log, &[&nodes[2]], "after the stop").await;

    // (c) A new node joins mid-stream and is given a share.
    nodes.push(cluster.start("wellspring-3"));
    wait_until_every_node_has_a_share(log, &[&nodes[2], &nodes[3]], "after the join").await;

    // (d) The killed node comes back under its name (a pod its StatefulSet rescheduled)
    // and is given a share again.
    nodes[0] = cluster.start("wellspring-0");
    let live = [&nodes[0], &nodes[2], &nodes[3]];
    wait_until_every_node_has_a_share(log, &live, "after the restart").await;

    finished(generator).await;
    cluster.verify(EXPERIMENT).await;
    for index in [0, 2, 3] {
        assert!(
            nodes[index].terminate().success(),
            "node {index} stops cleanly"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_lose_nothing_when_two_are_killed_at_once() {
    const EXPERIMENT: &str = "EXP-CLUSTER-5";
    let cluster = Cluster::new().await;
    let log = &cluster.log;
    let mut nodes: Vec<NodeProcess> = (0..5)
        .map(|i| cluster.start(&format!("wellspring-{i}")))
        .collect();
    wait_until_every_node_has_a_share(log, &nodes.iter().collect::<Vec<_>>(), "five nodes").await;
    let generator = cluster.generate(EXPERIMENT, 3, 300);

    wait_for_records(log, "images_site", 40, "sites before the kill").await;
    nodes[1].kill();
    nodes[3].kill();
    let after_kill = records_on(log, "images_site").await;
    let survivors = [&nodes[0], &nodes[2], &nodes[4]];
    wait_until_every_partition_is_owned(log, &survivors, "after two were killed").await;
    wait_for_records(log, "images_site", after_kill + 40, "sites after the kill").await;

    finished(generator).await;
    cluster.verify(EXPERIMENT).await;
    for index in [0, 2, 4] {
        assert!(
            nodes[index].terminate().success(),
            "node {index} stops cleanly"
        );
    }
}

/// Version 2 of the reference DAG: the image-metrics task called with another URL, and
/// a QC task on wells added (published to `well_qc`).
fn reference_v2() -> String {
    let mut text = include_str!("../examples/reference-dag.yaml").to_owned();
    for (from, to) in [
        ("version: 1 ", "version: 2 "),
        (
            "\"${image-metrics-url}/v1/image-metrics\"",
            "\"${image-metrics-url}/v1/image-metrics?model=2\"",
        ),
        (
            "  experiments:         {value-schema: experiment_level}\n",
            "  experiments:         {value-schema: experiment_level}\n  well_qc:             {value-schema: well_thumbnail}\n",
        ),
        (
            "tasks:\n",
            "tasks:\n  well-qc:\n    type: http\n    url: \"${well-thumbnails-url}/v1/well-thumbnails\"\n    input-schema: well_level\n    output-schema: well_thumbnail\n    retries: 5\n    backoff: {initial: 50ms, max: 2s}\n",
        ),
    ] {
        assert!(text.contains(from), "{from:?} is not in the reference spec");
        text = text.replacen(from, to, 1);
    }
    text.push_str(
        "  well-qc:                {type: external-task, stream: images-well, task-name: well-qc}\n  well-qc-output:         {type: publish, stream: well-qc, topic-name: well_qc}\n",
    );
    text
}

/// A cluster rolls from version 1 to 2 node by node in the middle of a plate: nothing
/// is lost or doubled, and the node version 2 adds has its output for every well of the
/// experiment, those aggregated before it existed included: each node of version 2
/// backfills it over the experiments still open as it starts, so the last one to start
/// covers what the last node of version 1 emitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_in_the_middle_of_a_plate_loses_nothing_and_backfills_the_new_node() {
    const EXPERIMENT: &str = "EXP-ROLL";
    let cluster = Cluster::new().await;
    let log = &cluster.log;
    let v2 = std::env::temp_dir().join(format!("wellspring-roll-{}.yaml", std::process::id()));
    std::fs::write(&v2, reference_v2()).unwrap();
    let v2_args: Vec<String> = cluster
        .args
        .iter()
        .map(|a| {
            if a == "examples/reference-dag.yaml" {
                v2.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let start_v2 = |id: &str| {
        NodeProcess::start(
            env!("CARGO_BIN_EXE_wellspring"),
            &cluster.broker.address,
            id,
            &v2_args,
        )
    };
    let mut nodes = vec![cluster.start("wellspring-0"), cluster.start("wellspring-1")];
    wait_until_every_node_has_a_share(log, &nodes.iter().collect::<Vec<_>>(), "two nodes").await;
    let generator = cluster.generate(EXPERIMENT, 2, 200);

    // Mid-plate: node 0, then node 1, drained and started again with version 2.
    wait_for_records(log, "images_well", 10, "wells before the roll").await;
    assert!(nodes[0].terminate().success());
    nodes[0] = start_v2("wellspring-0");
    wait_until_every_node_has_a_share(log, &nodes.iter().collect::<Vec<_>>(), "one node rolled")
        .await;
    let rolled_at = records_on(log, "images_well").await;
    wait_for_records(log, "images_well", rolled_at + 5, "wells during the roll").await;
    assert!(nodes[1].terminate().success());
    nodes[1] = start_v2("wellspring-1");
    wait_until_every_node_has_a_share(log, &nodes.iter().collect::<Vec<_>>(), "both rolled").await;

    finished(generator).await;
    cluster.verify(EXPERIMENT).await;
    // The new node's output for every well of the experiment, by the ids it gives them.
    // The wells `generate` images (the synthetic layout's).
    let layout = wellspring_protocol::synthetic::layout(EXPERIMENT, 2, 40, 1, 1).unwrap();
    let wells: std::collections::BTreeSet<String> = layout
        .plates
        .iter()
        .flat_map(|p| {
            p.wells
                .iter()
                .map(|w| format!("{EXPERIMENT}/{}/{w}", p.plate))
        })
        .collect();
    assert_eq!(wells.len(), 80);
    let expected: std::collections::BTreeSet<String> = wells
        .iter()
        .map(|key| {
            wellspring_protocol::MessageId::derive("microscopy-reference", "well-qc", key)
                .to_string()
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let ids = ids_on(log, "well_qc").await;
        let missing: Vec<&String> = expected.difference(&ids).collect();
        if missing.is_empty() {
            assert!(ids.is_subset(&expected), "only the experiment's wells");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "well-qc outputs missing for {} of 80 wells",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for node in &mut nodes {
        assert!(node.terminate().success(), "node {} stops cleanly", node.id);
    }
    let _ = std::fs::remove_file(&v2);
}

/// The `wellspring-id` of every record on `topic`.
async fn ids_on(log: &KafkaLog, topic: &str) -> std::collections::BTreeSet<String> {
    use wellspring_log::{ConsumerConfig, Log, NoListener, TopicPartition};
    let mut out = std::collections::BTreeSet::new();
    let Ok(partitions) = log.partitions(topic).await else {
        return out;
    };
    for p in 0..partitions {
        let partition = TopicPartition::new(topic, p);
        let mut reader = log
            .consumer(ConsumerConfig::assign(
                format!("ids-{topic}-{p}"),
                vec![(partition.clone(), Some(0))],
            ))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let records = reader
                .poll(&mut NoListener, 10_000, Duration::from_millis(200))
                .await
                .unwrap();
            if records.is_empty() && reader.caught_up(&partition) {
                break;
            }
            for record in &records {
                if let Some(id) = record.header("wellspring-id") {
                    out.insert(String::from_utf8_lossy(id).into_owned());
                }
            }
            assert!(std::time::Instant::now() < deadline, "reading {topic}");
        }
    }
    out
}

#[test]
fn a_node_on_a_broker_without_transactions_names_the_flag() {
    let broker = Broker::start_for_groups();
    let output = Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args([
            "run",
            "--kafka",
            &broker.address,
            "--http-addr",
            "127.0.0.1:0",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("do not support transactions") && stderr.contains("--no-transactions"),
        "{stderr}"
    );
}
