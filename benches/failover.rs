//! Failover time on a real broker on loopback: three `wellspring run` processes share the
//! reference DAG while plates stream in at 1,000 images/s; one is killed with SIGKILL,
//! and this measures the time from the kill until the survivors own every partition (the
//! lost shards restored and running again) and until every output of the plates is
//! there; then a second is stopped with SIGTERM (a drain), and this measures the time
//! from the signal until the last node owns every partition.
//!
//! Run: `cargo bench --bench failover` (`-- --rounds N`, default 3; `--session-timeout
//! S`, default 6s; `--standby-replicas N` passed to the nodes). A shard counts as running
//! once its state is restored (`wellspring_shards` less `wellspring_shards_restoring`). On nisshi (installed into .tools/ if needed), whose groups reassign a
//! lost member's partitions, with `--no-transactions` (nisshi has none). `--tansu` runs
//! on tansu with transactions instead (its coordinator does not reassign a killed
//! member's partitions with three members: the round stops after 2 minutes saying which
//! stayed unowned); `--kafka BROKERS` measures on a Kafka cluster of yours (add
//! `--no-transactions` if it has none). `WELLSPRING_BENCH_BINARY=PATH` runs a copy of the
//! binary instead of the one cargo built (for long series beside other builds).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wellspring_actors::FunctionRegistry;
use wellspring_log::{KafkaLog, KafkaSettings};
use wellspring_nodes::demo;
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_nodes::verify::{VerifyOptions, verify_experiment};
use wellspring_test_support::broker::Broker;
use wellspring_test_support::cluster_watch::{
    wait_for_records, wait_until_every_node_has_a_share, wait_until_every_partition_is_owned,
};
use wellspring_test_support::node_process::{NodeProcess, reference_dag_args};

fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn has(flag: &str) -> bool {
    std::env::args().any(|a| a == flag)
}

/// The binary to run: `WELLSPRING_BENCH_BINARY` names a copy (so that a long series of
/// rounds is not disturbed by a rebuild), or the one cargo built with this bench.
fn wellspring_binary() -> String {
    std::env::var("WELLSPRING_BENCH_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_wellspring").to_owned())
}

struct Round {
    running_again: Duration,
    backlog_cleared: Duration,
    drained: Duration,
}

async fn round(n: u32, session: &str, services: &Services, kafka: Option<&str>) -> Round {
    // A broker of its own per round, unless measuring on a given cluster.
    let tansu = has("--tansu");
    let own = kafka.is_none().then(|| {
        if tansu {
            Broker::start()
        } else {
            Broker::start_for_groups()
        }
    });
    let address = kafka.map_or_else(
        || own.as_ref().map(|b| b.address.clone()).unwrap_or_default(),
        str::to_owned,
    );
    let mut args = reference_dag_args(services.variables(), session);
    args.extend(["--partitions".into(), "6".into()]);
    if let Some(standbys) = flag("--standby-replicas") {
        args.extend(["--standby-replicas".into(), standbys]);
    }
    // `--kafka-config NAME=VALUE`, passed on to every node (repeat for more).
    let given: Vec<String> = std::env::args().collect();
    for pair in given.windows(2).filter(|w| w[0] == "--kafka-config") {
        args.extend(["--kafka-config".into(), pair[1].clone()]);
    }
    if has("--no-transactions") || (kafka.is_none() && !tansu) {
        args.push("--no-transactions".into());
    }
    let binary = wellspring_binary();
    let start = |id: &str| NodeProcess::start(&binary, &address, id, &args);
    let mut doomed = start("wellspring-0");
    let mut stopped = start("wellspring-1");
    let survivor = start("wellspring-2");
    let log = KafkaLog::connect(KafkaSettings::new(address.clone()))
        .await
        .expect("broker reachable");
    wait_until_every_node_has_a_share(&log, &[&doomed, &stopped, &survivor], "three nodes").await;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let experiment = format!("EXP-FAILOVER-{now}-{n}");
    let mut generator = Command::new(&binary)
        .args(["generate", "--kafka", &address])
        .args(["--experiment", &experiment, "--plates", "2"])
        .args(["--rate", "1000", "--no-progress"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("generator starts");
    wait_for_records(&log, "images_site", 100, "sites before the kill").await;
    doomed.kill();
    let killed = Instant::now();
    wait_until_every_partition_is_owned(&log, &[&stopped, &survivor], "after the kill").await;
    let running_again = killed.elapsed();

    // Mid-stream still, a drain: the stopped node commits and leaves its groups, so its
    // partitions move without waiting out a session.
    // Timed until the last node runs every partition, not until the drained process has
    // exited (it tears its clients down after it has handed its partitions over).
    let signalled = Instant::now();
    stopped.send_terminate();
    wait_until_every_partition_is_owned(&log, &[&survivor], "after the drain").await;
    let drained = signalled.elapsed();
    let exited = tokio::task::spawn_blocking(move || stopped.wait_for_exit().success())
        .await
        .unwrap_or(false);
    assert!(exited, "a SIGTERMed node exits cleanly");

    let registry = FunctionRegistry::with_builtins();
    let dag = demo::load_dag(None, &registry, services).expect("reference DAG");
    let options = VerifyOptions {
        wait: Duration::from_secs(300),
        ..VerifyOptions::for_dag(&dag, &experiment)
    };
    let report = verify_experiment(&log, &options, |_| {})
        .await
        .expect("outputs readable");
    let backlog_cleared = killed.elapsed();
    if let Some(lowest) = report.levels.iter().find(|l| !l.missing.is_empty()) {
        let trail = trail_of_missing(&log, &lowest.missing).await;
        if let Ok(dir) = std::env::var("WELLSPRING_TEST_NODE_LOGS") {
            let path = format!("{dir}/round-{n}-missing.txt");
            let _ = std::fs::write(&path, &trail);
            eprintln!("the records naming the missing keys are in {path}");
        }
        panic!("{}\n{trail}", report.render());
    }
    let _ = tokio::task::spawn_blocking(move || generator.wait()).await;
    Round {
        running_again,
        backlog_cleared,
        drained,
    }
}

/// The topics an image passes through to its site aggregate in the reference DAG, in
/// order: the source, the site grouping's input (the repartition hop), its changelog, its
/// output.
const SITE_PATH: [&str; 4] = [
    "images_channel",
    "wellspring.microscopy-reference.images-site.input",
    "wellspring.microscopy-reference.images-site.changelog",
    "images_site",
];

/// After a round that lost aggregates: every record on the site path that names one of
/// the `missing` keys (in its key or its value), with its partition, offset and headers,
/// so that the hop where an aggregate was lost shows (read while the round's broker is up).
async fn trail_of_missing(log: &KafkaLog, missing: &[String]) -> String {
    use std::fmt::Write as _;
    use wellspring_log::{Log, TopicPartition};
    let io = wellspring_nodes::log_io::LogIo {
        log: std::sync::Arc::new(log.clone()),
        client: "failover-trail".into(),
    };
    let mut out = String::new();
    let names: Vec<&String> = missing.iter().take(20).collect();
    let _ = writeln!(out, "records naming {names:?}:");
    for topic in SITE_PATH {
        let partitions = match io.partitions(topic).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                let _ = writeln!(out, "{topic}: no such topic");
                continue;
            }
            Err(e) => {
                let _ = writeln!(out, "{topic}: {e}");
                continue;
            }
        };
        for p in 0..partitions {
            let partition = TopicPartition::new(topic, p);
            let end = log.end_offset(&partition).await.unwrap_or(0);
            let mut lines = Vec::new();
            let read = io
                .read(&partition, 0, |record| {
                    let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
                    let value =
                        String::from_utf8_lossy(record.value.as_deref().unwrap_or_default());
                    if names
                        .iter()
                        .any(|m| key.contains(m.as_str()) || value.contains(m.as_str()))
                    {
                        let headers: Vec<String> = record
                            .headers
                            .iter()
                            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                            .collect();
                        let shown: String = value.chars().take(240).collect();
                        lines.push(format!(
                            "  {topic}[{p}]@{} key={key} headers={headers:?} value={shown}",
                            record.offset
                        ));
                    }
                })
                .await;
            let _ = writeln!(out, "{topic}[{p}] (end {end}): {} records", lines.len());
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
            if let Err(e) = read {
                let _ = writeln!(out, "  read failed: {e}");
            }
        }
    }
    out
}

fn main() {
    let rounds: u32 = flag("--rounds").and_then(|n| n.parse().ok()).unwrap_or(3);
    let session = flag("--session-timeout").unwrap_or_else(|| "6s".into());
    let kafka = flag("--kafka");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let services = Services::start(ServiceConfig::quick()).expect("services");
    let mut results = Vec::new();
    for n in 1..=rounds {
        let r = runtime.block_on(round(n, &session, &services, kafka.as_deref()));
        println!(
            "round {n}: SIGKILL -> every lost shard running on the survivors after {:.1} s; \
             the plates' every output there after {:.1} s; SIGTERM -> every partition on \
             the last node after {:.2} s",
            r.running_again.as_secs_f64(),
            r.backlog_cleared.as_secs_f64(),
            r.drained.as_secs_f64()
        );
        results.push(r);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "failover (session timeout {session}, {}): median {:.1} s until the lost shards run again, {:.1} s until the backlog is cleared; drain: median {:.2} s until the partitions run elsewhere",
        flag("--standby-replicas").map_or_else(
            || "no standby replicas".to_owned(),
            |n| format!("--standby-replicas {n}")
        ),
        median(
            results
                .iter()
                .map(|r| r.running_again.as_secs_f64())
                .collect()
        ),
        median(
            results
                .iter()
                .map(|r| r.backlog_cleared.as_secs_f64())
                .collect()
        ),
        median(results.iter().map(|r| r.drained.as_secs_f64()).collect())
    );
}
