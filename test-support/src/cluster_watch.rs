//! Watching a cluster of node processes from outside: records on topics, and which
//! partitions the live nodes own (from their `/metrics`).

use std::collections::BTreeMap;
use std::time::Duration;

use wellspring_log::{KafkaLog, Log, TopicPartition};

use crate::node_process::NodeProcess;

/// Records on every partition of `topic` so far.
pub async fn records_on(log: &KafkaLog, topic: &str) -> u64 {
    let partitions = match log.partitions(topic).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("partitions of {topic}: {e}");
            return 0;
        }
    };
    let mut total = 0;
    for p in 0..partitions {
        match log.end_offset(&TopicPartition::new(topic, p)).await {
            Ok(end) => total += end,
            Err(e) => eprintln!("end of {topic}/{p}: {e}"),
        }
    }
    total
}

/// Waits until at least `n` records are on `topic`: the cluster is making progress.
pub async fn wait_for_records(log: &KafkaLog, topic: &str, n: u64, why: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let seen = records_on(log, topic).await;
        if seen >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{why}: only {seen} of {n} records on {topic} after 3 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!("{why}: {seen} of {n} records on {topic}");
    }
}

/// A label's value in a Prometheus sample line.
fn label(line: &str, name: &str) -> String {
    line.split(&format!("{name}=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned()
}

/// A Prometheus sample line's value.
fn sample(line: &str) -> i64 {
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a count in {line:?}"))
}

/// Partitions each stage owns and runs on each node (restored), from the nodes'
/// `/metrics`.
pub async fn owned_shards(nodes: &[&NodeProcess]) -> BTreeMap<(String, String), Vec<i64>> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let mut owned: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for node in nodes {
        let Ok(response) = http.get(format!("{}/metrics", node.url)).send().await else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        // A shard still restoring its state is owned, not yet running: it counts as
        // unowned until it runs.
        let restoring: BTreeMap<(String, String), i64> = text
            .lines()
            .filter(|l| l.starts_with("wellspring_shards_restoring{"))
            .map(|line| ((label(line, "dag"), label(line, "node")), sample(line)))
            .collect();
        for line in text.lines().filter(|l| l.starts_with("wellspring_shards{")) {
            let stage = (label(line, "dag"), label(line, "node"));
            let value = sample(line) - restoring.get(&stage).copied().unwrap_or(0);
            owned.entry(stage).or_default().push(value);
        }
    }
    owned
}

/// The topic a stage reads (the reference DAG has no queue tasks, so no relays).
pub fn input_topic(dag: &str, stage: &str) -> String {
    match (dag, stage) {
        ("task-store", _) => "wellspring.tasks".into(),
        (_, "images-channel") => "images_channel".into(),
        (dag, stage) => format!("wellspring.{dag}.{stage}.input"),
    }
}

/// Waits until the live nodes together own every partition of every stage exactly once.
pub async fn wait_until_every_partition_is_owned(
    log: &KafkaLog,
    nodes: &[&NodeProcess],
    why: &str,
) {
    wait_for_ownership(log, nodes, why, false).await
}

/// As [`wait_until_every_partition_is_owned`], and every node owns some partition: a
/// joining node has been given its share (the rebalance it starts has finished).
pub async fn wait_until_every_node_has_a_share(log: &KafkaLog, nodes: &[&NodeProcess], why: &str) {
    wait_for_ownership(log, nodes, why, true).await
}

async fn wait_for_ownership(log: &KafkaLog, nodes: &[&NodeProcess], why: &str, each: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let owned = owned_shards(nodes).await;
        let mut unsettled = Vec::new();
        for ((dag, stage), counts) in &owned {
            let topic = input_topic(dag, stage);
            let partitions = log
                .partitions(&topic)
                .await
                .unwrap_or_else(|e| panic!("{why}: partitions of {topic}: {e}"));
            let total: i64 = counts.iter().sum();
            if total != i64::from(partitions) {
                unsettled.push(format!("{dag}/{stage}: {counts:?} of {partitions}"));
            }
        }
        if each {
            for node in nodes {
                let mine = owned_shards(&[node]).await;
                if !mine.values().flatten().any(|n| *n > 0) {
                    unsettled.push(format!("{} owns nothing yet", node.id));
                }
            }
        }
        if !owned.is_empty() && unsettled.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{why}: not settled after 2 minutes: {unsettled:?}"
        );
        // Often enough for the failover bench to time a hand-over to a tenth of a second.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
