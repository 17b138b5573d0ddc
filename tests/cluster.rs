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
